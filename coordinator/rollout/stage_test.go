package rollout

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestStageScenarios replays testdata/stage/*.txt: which waiting hosts of a
// rollout with stage_ahead stage its target, and from which holders
// (PlanStage). Commands:
//
//	rollout waves=(N,...) [state=progressing|succeeded|failed|superseded|waiting] [rollback] [remove] [config] [off] [paused] [sources=N] [nocanary]
//	    a rollout v1 → v2 whose wave i has N hosts, named h<wave>-<i>, all
//	    PENDING with a peer address, wave 0 its canary wave (nocanary: a
//	    plain wave, as with no_canary); off: stage_ahead false; config: v2 → v2
//	noaddr H...          the hosts have no peer address
//	state H=pending|updating|done|failed...
//	staged H...          the hosts report the target's artifact staged
//	unstaged H...        they no longer do
//	out H...             the hosts cannot stage now (disconnected, or their staging failed)
//	in H...              they can again
//	plan                 print PlanStage: holders, admitted hosts and their sources
//	grow                 each admitted host reports staged, then plan
func TestStageScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/stage", func(t *testing.T, path string) {
		var r *v1.Rollout
		hosts := map[string]PeerHost{}
		staged := map[string]bool{}
		out := map[string]bool{}
		nSources := DefaultSources
		find := func(id string) *v1.HostProgress {
			for _, w := range r.GetWaves() {
				for _, h := range w.GetHosts() {
					if h.GetHostId() == id {
						return h
					}
				}
			}
			t.Fatalf("%s: no host %s", path, id)
			return nil
		}
		plan := func() *StagePlan { return PlanStage(r, "aa", hosts, staged, out, nSources) }
		show := func(p *StagePlan) string {
			if p == nil {
				return "no staging\n"
			}
			var b strings.Builder
			fmt.Fprintf(&b, "holders %d, staged %d, admitted %d of %d waiting\n", len(p.Holders), p.Staged, p.Admitted(), p.Waiting)
			if p.Out > 0 {
				fmt.Fprintf(&b, "out %d\n", p.Out)
			}
			if p.Kept > 0 {
				fmt.Fprintf(&b, "kept %d (below a holder that is out)\n", p.Kept)
			}
			if p.CanaryWave {
				b.WriteString("canary wave in flight: nothing admitted\n")
			}
			for _, w := range r.GetWaves() {
				for _, h := range w.GetHosts() {
					ok, src := p.Stage(h.GetHostId())
					if !ok {
						continue
					}
					if staged[h.GetHostId()] && h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING {
						fmt.Fprintf(&b, "  %s staged\n", h.GetHostId())
						continue
					}
					if len(src) == 0 {
						fmt.Fprintf(&b, "  %s ← origin\n", h.GetHostId())
						continue
					}
					fmt.Fprintf(&b, "  %s ← %s\n", h.GetHostId(), strings.Join(peerIDs(src), " "))
				}
			}
			return b.String()
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			switch d.Cmd {
			case "rollout":
				r = &v1.Rollout{FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
					Policy: &v1.RolloutPolicy{StageAhead: true}}
				clear(hosts)
				clear(staged)
				clear(out)
				nSources = DefaultSources
				noCanary := false
				for _, a := range d.CmdArgs {
					switch a.Key {
					case "waves":
						for wi, v := range a.Vals {
							n, err := strconv.Atoi(v)
							if err != nil {
								t.Fatal(err)
							}
							w := &v1.Wave{Index: uint32(wi), Canary: wi == 0}
							for i := range n {
								id := fmt.Sprintf("h%d-%d", wi, i)
								w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: id, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
								hosts[id] = PeerHost{Address: id + ":7000"}
							}
							r.Waves = append(r.Waves, w)
						}
					case "state":
						r.State = map[string]v1.RolloutState{
							"progressing": v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
							"succeeded":   v1.RolloutState_ROLLOUT_STATE_SUCCEEDED,
							"failed":      v1.RolloutState_ROLLOUT_STATE_FAILED,
							"superseded":  v1.RolloutState_ROLLOUT_STATE_SUPERSEDED,
							"waiting":     v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL,
						}[a.Vals[0]]
					case "rollback":
						r.Rollback = true
					case "remove":
						r.Remove = true
					case "config":
						r.FromVersion = "v2"
					case "off":
						r.Policy.StageAhead = false
					case "paused":
						r.Paused = true
					case "sources":
						nSources, _ = strconv.Atoi(a.Vals[0])
					case "nocanary":
						noCanary = true
					default:
						t.Fatalf("rollout: unknown argument %s", a.Key)
					}
				}
				if noCanary && len(r.Waves) > 0 {
					r.Waves[0].Canary = false
				}
				return ""
			case "noaddr":
				for _, a := range d.CmdArgs {
					delete(hosts, a.Key)
				}
				return ""
			case "state":
				for _, a := range d.CmdArgs {
					find(a.Key).State = map[string]v1.HostRolloutState{
						"pending":  v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING,
						"updating": v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING,
						"done":     v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE,
						"failed":   v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED,
					}[a.Vals[0]]
				}
				return ""
			case "staged", "unstaged":
				for _, a := range d.CmdArgs {
					find(a.Key)
					staged[a.Key] = d.Cmd == "staged"
				}
				return ""
			case "out", "in":
				for _, a := range d.CmdArgs {
					find(a.Key)
					out[a.Key] = d.Cmd == "out"
				}
				return ""
			case "plan":
				return show(plan())
			case "grow":
				p := plan()
				for _, w := range r.GetWaves() {
					for _, h := range w.GetHosts() {
						if ok, _ := p.Stage(h.GetHostId()); ok && h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING {
							staged[h.GetHostId()] = true
						}
					}
				}
				p = plan()
				return fmt.Sprintf("holders %d, admitted %d of %d waiting\n", len(p.Holders), p.Admitted(), p.Waiting)
			}
			t.Fatalf("unknown command %s", d.Cmd)
			return ""
		})
	})
}

// A wave of N hosts holds the artifact after O(log N) rounds (each round:
// every admitted host stages), with every holder the first source of at
// most StageFanout hosts (its children in the tree), nothing staged while
// the canary is in its wave, and the coordinator serving no root once the
// canary is done (it is the tree's first holder). Before staging waited
// for the canary, its StageFanout children were roots served by the
// coordinator while it installed.
func TestStageGrowsLogarithmically(t *testing.T) {
	for _, n := range []int{1, 10, 100, 1000, 10000} {
		r := &v1.Rollout{FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
			Policy: &v1.RolloutPolicy{StageAhead: true}}
		w := &v1.Wave{}
		hosts := map[string]PeerHost{"canary": {Address: "canary:1"}}
		for i := range n {
			id := fmt.Sprintf("h%05d", i)
			w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: id, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
			hosts[id] = PeerHost{Address: id + ":1"}
		}
		canary := &v1.HostProgress{HostId: "canary", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING}
		r.Waves = []*v1.Wave{{Canary: true, Hosts: []*v1.HostProgress{canary}}, w}
		if p := PlanStage(r, "aa", hosts, map[string]bool{}, nil, DefaultSources); p.Admitted() != 0 || !p.CanaryWave {
			t.Fatalf("n=%d: %d admitted while the canary is in its wave (canary wave %v), want 0", n, p.Admitted(), p.CanaryWave)
		}
		canary.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
		staged := map[string]bool{}
		rounds, origin := 0, 0
		for {
			p := PlanStage(r, "aa", hosts, staged, nil, DefaultSources)
			if p.Waiting == 0 {
				break
			}
			rounds++
			if rounds > 20 {
				t.Fatalf("n=%d: not all staged after 20 rounds (%d waiting)", n, p.Waiting)
			}
			load := map[string]int{}
			for _, hp := range w.Hosts {
				ok, src := p.Stage(hp.GetHostId())
				if !ok {
					continue
				}
				if staged[hp.GetHostId()] {
					continue
				}
				if len(src) == 0 {
					origin++
				} else {
					load[src[0].ID]++
				}
				staged[hp.GetHostId()] = true
			}
			for h, l := range load {
				if l > StageFanout {
					t.Fatalf("n=%d round %d: holder %s is first source of %d hosts, over %d", n, rounds, h, l, StageFanout)
				}
			}
		}
		// The tree grows StageFanout-fold a round from the canary: after
		// round k it holds 1 + F + … + F^k hosts.
		limit := 0
		for held, level := 1, 1; held < n+1; limit++ {
			level *= StageFanout
			held += level
		}
		if rounds > limit {
			t.Errorf("n=%d: %d rounds, want at most %d", n, rounds, limit)
		}
		if origin != 0 {
			t.Errorf("n=%d: %d hosts staged from the origin, want 0 (the canary is the root)", n, origin)
		}
		t.Logf("n=%d: %d rounds, %d from the origin", n, rounds, origin)
	}
}

// BenchmarkPlanStage: the engine's share of one recomputation of the hub's
// table while a rollout stages (every report whose staged_sha256 changes
// causes one): n plan hosts, a tenth of them staged.
func BenchmarkPlanStage(b *testing.B) {
	for _, n := range []int{2000, 10000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			r := &v1.Rollout{FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
				Policy: &v1.RolloutPolicy{StageAhead: true}}
			w := &v1.Wave{}
			hosts, staged := map[string]PeerHost{}, map[string]bool{}
			for i := range n {
				id := fmt.Sprintf("h%05d", i)
				w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: id, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
				hosts[id] = PeerHost{Address: id + ":1"}
				staged[id] = i%10 == 0
			}
			r.Waves = []*v1.Wave{w}
			for b.Loop() {
				p := PlanStage(r, "aa", hosts, staged, nil, DefaultSources)
				for _, hp := range w.Hosts {
					p.Stage(hp.GetHostId())
				}
			}
		})
	}
}

// Admitted hosts keep the source they started their staging with (the
// agent does not restart a fetch in flight when its sources shift), and
// finish one at a time, in a seeded random order; a new plan follows every
// finish. No holder may then be the first source of more in-flight
// stagings than the peers' default upload slots (--peer-max-uploads 8):
// a host refused there tries its next source and, at the end of its list,
// the coordinator. (Holders ordered by wave then id, with the admitted
// list's tail wrapping to holder 0, put up to hundreds on the canary.)
func TestStageInFlightLoadPerHolder(t *testing.T) {
	const peerMaxUploads = 8
	for _, seed := range []uint64{1, 2, 3} {
		for _, n := range []int{200, 1000} {
			r := &v1.Rollout{FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
				Policy: &v1.RolloutPolicy{StageAhead: true}}
			w := &v1.Wave{}
			hosts := map[string]PeerHost{"canary": {Address: "canary:1"}}
			for i := range n {
				id := fmt.Sprintf("h%05d", i)
				w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: id, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
				hosts[id] = PeerHost{Address: id + ":1"}
			}
			r.Waves = []*v1.Wave{{Hosts: []*v1.HostProgress{{HostId: "canary", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE}}}, w}
			rng := rand.New(rand.NewPCG(seed, uint64(n)))
			staged := map[string]bool{}
			source := map[string]string{} // in-flight host → the holder it fetches from ("" the coordinator)
			worst, worstHolder := 0, ""
			for len(staged) < n {
				p := PlanStage(r, "aa", hosts, staged, nil, DefaultSources)
				for _, hp := range w.Hosts {
					id := hp.GetHostId()
					if _, busy := source[id]; busy || staged[id] {
						continue
					}
					if ok, src := p.Stage(id); ok {
						source[id] = ""
						if len(src) > 0 {
							source[id] = src[0].ID
						}
					}
				}
				load := map[string]int{}
				var inFlight []string
				for id, s := range source {
					inFlight = append(inFlight, id)
					if s != "" {
						load[s]++
					}
				}
				for h, l := range load {
					if l > worst {
						worst, worstHolder = l, h
					}
				}
				if len(inFlight) == 0 {
					t.Fatalf("seed %d n=%d: nothing in flight, %d of %d staged", seed, n, len(staged), n)
				}
				sort.Strings(inFlight)
				done := inFlight[rng.IntN(len(inFlight))]
				delete(source, done)
				staged[done] = true
			}
			if worst > peerMaxUploads {
				t.Errorf("seed %d n=%d: holder %s was the first source of %d stagings in flight at once, over %d", seed, n, worstHolder, worst, peerMaxUploads)
			}
		}
	}
}

// TestStagePlanLost: a plan is out of date when a host it counts on
// disconnects: an admitted host not staged yet, or a holder; not when a
// staged host that is no holder, or a host it does not admit, does.
func TestStagePlanLost(t *testing.T) {
	r := &v1.Rollout{FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Policy: &v1.RolloutPolicy{StageAhead: true}}
	hosts := map[string]PeerHost{}
	w := &v1.Wave{}
	for i := range 10 {
		id := fmt.Sprintf("h%d", i)
		w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: id, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
		hosts[id] = PeerHost{Address: id + ":1"}
	}
	r.Waves = []*v1.Wave{{Hosts: []*v1.HostProgress{{HostId: "canary", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE}}}, w}
	hosts["canary"] = PeerHost{Address: "canary:1"}
	delete(hosts, "h9") // staged without a peer address: no holder
	p := PlanStage(r, "aa", hosts, map[string]bool{"h9": true}, nil, DefaultSources)
	// Admitted: h0..h3 (the canary's children); holder: the canary.
	for _, tc := range []struct {
		gone string
		want bool
	}{{"", false}, {"canary", true}, {"h0", true}, {"h3", true}, {"h4", false}, {"h9", false}} {
		if got := p.Lost(func(id string) bool { return id != tc.gone }); got != tc.want {
			t.Errorf("%q disconnected: Lost %v, want %v", tc.gone, got, tc.want)
		}
	}
	if (*StagePlan)(nil).Lost(func(string) bool { return false }) {
		t.Error("a nil plan lost a host")
	}
}

// TestStagePlanFound: a plan made while a waiting host or a holder was out
// is out of date once it can stage or serve again (the hub replans): a
// host reconnecting, not one whose staging failed (canStage says), nor a
// host the plan did not leave out, nor anyone while the canary wave is in
// flight (nobody stages then, whoever comes back). Before, a host that
// reconnected staged nothing until another host's report changed the plan.
func TestStagePlanFound(t *testing.T) {
	r := &v1.Rollout{FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Policy: &v1.RolloutPolicy{StageAhead: true}}
	hosts := map[string]PeerHost{}
	canary := &v1.HostProgress{HostId: "canary", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE}
	w := &v1.Wave{}
	for i := range 10 {
		id := fmt.Sprintf("h%d", i)
		w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: id, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
		hosts[id] = PeerHost{Address: id + ":1"}
	}
	r.Waves = []*v1.Wave{{Canary: true, Hosts: []*v1.HostProgress{canary}}, w}
	hosts["canary"] = PeerHost{Address: "canary:1"}
	out := map[string]bool{"h1": true, "h5": true}
	staged := map[string]bool{"h2": true}
	p := PlanStage(r, "aa", hosts, staged, out, DefaultSources)
	if ok, _ := p.Stage("h1"); ok {
		t.Fatal("h1 admitted while out")
	}
	for _, tc := range []struct {
		back string
		want bool
	}{{"", false}, {"h1", true}, {"h5", true}, {"h0", false}, {"h2", false}, {"canary", false}} {
		if got := p.Found(func(id string) bool { return id == tc.back }); got != tc.want {
			t.Errorf("%q can stage again: Found %v, want %v", tc.back, got, tc.want)
		}
	}
	// A holder that was out (the canary, DONE) is found when it is back:
	// its children get it as their source again.
	out["canary"] = true
	p = PlanStage(r, "aa", hosts, staged, out, DefaultSources)
	if !p.Found(func(id string) bool { return id == "canary" }) {
		t.Error("the canary back: not found")
	}
	if p.Kept == 0 {
		t.Error("the canary out: its children lost their admission")
	}
	// While the canary wave is in flight nobody is found.
	canary.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	p = PlanStage(r, "aa", hosts, staged, out, DefaultSources)
	if p.Found(func(string) bool { return true }) {
		t.Error("found a host while the canary wave is in flight")
	}
	if (*StagePlan)(nil).Found(func(string) bool { return true }) {
		t.Error("a nil plan found a host")
	}
}
