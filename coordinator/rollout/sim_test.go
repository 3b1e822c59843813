package rollout

import (
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// replaySeed replays one seed of the seeded simulations: a failure prints
// the command that does it.
var (
	replaySeed = flag.Int64("seed", -1, "run the seeded simulations (TestSimulation, TestPolicySimulation) for this seed only")
	seedCount  = flag.Int("seeds", 0, "run the seeded simulations over this many seeds (0: each its own default)")
)

// simSeeds is the seeds a simulation runs: 0..n-1 (n from -seeds when
// given), or the one given with -seed. With -short, and under the race detector, a fifth of them: the
// simulations are single-goroutine pure code, where the detector finds
// nothing and runs some fifteen times slower (`make unit` runs them all).
func simSeeds(n int) []uint64 {
	if *replaySeed >= 0 {
		return []uint64{uint64(*replaySeed)}
	}
	if *seedCount > 0 {
		n = *seedCount
	}
	if testing.Short() || raceEnabled {
		n /= 5
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i)
	}
	return out
}

// seedFatalf fails test with the seed and how to replay it alone.
func seedFatalf(t *testing.T, seed uint64) func(string, ...any) {
	return func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: %s\nreplay: go test ./coordinator/rollout -run '^%s$' -seed %d -v", seed, fmt.Sprintf(format, args...), t.Name(), seed)
	}
}

// simAgent is a crude model of one host's agent for one service.
type simAgent struct {
	labels    map[string]string
	selected  bool
	connected bool
	gen       int64  // generation of the assignment it has
	version   string // version of that assignment
	spec      *v1.ServiceSpec
	current   string // version it runs
	curSpec   *v1.ServiceSpec
	prev      string // version it ran before (a late revert goes back to it)
	prevSpec  *v1.ServiceSpec
	phase     v1.Phase
	ticks     int  // ticks left before the install (or removal) ends
	willFail  bool // the install of the current assignment fails
	removing  bool // the assignment is a removal
	report    *v1.ServiceReport
	// refused: assignments refused as replays; replaced: assignments taken
	// that replace a generation no coordinator issued.
	refused, replaced int
}

// madeUpGeneration is a generation no coordinator of the fleet issued
// above counter, the service's: sometimes 2^63-1, the highest.
func madeUpGeneration(counter int64, rng *rand.Rand) int64 {
	if rng.IntN(3) == 0 {
		return math.MaxInt64
	}
	return counter + MaxGenerationAhead + 1 + rng.Int64N(1<<40)
}

// simParams are a seed's fault rates.
type simParams struct {
	pAct, pFail, pLate, pDown, pUp float64
}

// simProgress is the phases an install goes through before its checks end.
var simProgress = []v1.Phase{v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING,
	v1.Phase_PHASE_SWITCHING, v1.Phase_PHASE_STARTING, pChecking}

// assign gives the agent what Desired says (ok=false: nothing) with its
// spec if it is connected and it is new. As the real agent does, it
// installs again (restarts) what it runs when the spec changes what hosts
// run (specdiff), and takes it without a restart otherwise.
//
// A removal stops it and removes it (REMOVING, then REMOVED running
// nothing); a removed agent takes any later assignment. An older
// generation than the one it has is refused (a replay), unless it names
// that one as the generation it replaces (Want.Replaces).
func (a *simAgent) assign(w Want, sp *v1.ServiceSpec, ok bool, rng *rand.Rand, prm simParams) {
	v, g := w.Version, w.Generation
	if !ok || !a.connected || (g == a.gen && v == a.version && w.Remove == a.removing) {
		return
	}
	if g < a.gen && w.Replaces != a.gen && a.phase != v1.Phase_PHASE_REMOVED {
		a.refused++
		return
	}
	if w.Replaces != 0 {
		a.replaced++
	}
	a.gen, a.version, a.spec, a.removing = g, v, sp, w.Remove
	if w.Remove {
		a.phase, a.ticks = v1.Phase_PHASE_REMOVING, 1+rng.IntN(3)
		return
	}
	if v == a.current && !specdiff.HostAffecting(a.curSpec, sp) {
		a.phase, a.ticks, a.curSpec = pHealthy, 0, sp
	} else {
		a.phase, a.ticks, a.willFail = simProgress[0], 1+rng.IntN(4), rng.Float64() < prm.pFail
	}
}

// act lets the link flap and the install move on, fail, or (rarely) revert
// late, and records the report a connected agent sends.
func (a *simAgent) act(svc string, rng *rand.Rand, prm simParams) {
	if a.connected && rng.Float64() < prm.pDown {
		a.connected = false
	} else if !a.connected && rng.Float64() < prm.pUp {
		a.connected = true
	}
	if rng.Float64() < prm.pAct {
		switch {
		case a.removing && a.ticks > 0:
			if a.ticks--; a.ticks == 0 {
				a.phase, a.current, a.curSpec, a.prev, a.prevSpec = v1.Phase_PHASE_REMOVED, "", nil, "", nil
			}
		case a.ticks > 0:
			a.ticks--
			a.phase = simProgress[min(len(simProgress)-1, len(simProgress)-1-a.ticks)]
			if a.ticks == 0 {
				if a.willFail {
					a.phase = []v1.Phase{pReverted, pFailed}[rng.IntN(2)]
				} else {
					a.phase, a.prev, a.prevSpec, a.current, a.curSpec = pHealthy, a.current, a.curSpec, a.version, a.spec
				}
			}
		case a.phase == pHealthy && (a.current != a.prev || specdiff.HostAffecting(a.curSpec, a.prevSpec)) && rng.Float64() < prm.pLate:
			a.phase, a.current, a.curSpec = pReverted, a.prev, a.prevSpec
		}
	}
	if a.connected {
		a.report = &v1.ServiceReport{Service: svc, Generation: a.gen, Phase: a.phase,
			CurrentVersion: a.current, TargetVersion: a.version, Reason: "sim " + a.phase.String()}
	}
}

func (a *simAgent) observation() Observation {
	return Observation{Connected: a.connected, Report: a.report}
}

// TestSimulation drives Step through random fleets, policies and faults
// and checks the engine's invariants after every Step.
func TestSimulation(t *testing.T) {
	seeds := simSeeds(200)
	outcomes := map[v1.RolloutState]int{}
	stage := map[string]int{}
	for _, seed := range seeds {
		outcomes[simulate(t, seed, stage)]++
		if t.Failed() {
			return
		}
	}
	t.Logf("outcomes over %d seeds: %v; staging steps %v", len(seeds), outcomes, stage)
	// The parameters must exercise both ends.
	if len(seeds) > 1 && (outcomes[rOK] == 0 || outcomes[rFailed] == 0) {
		t.Errorf("simulation never reached one of SUCCEEDED/FAILED: %v", outcomes)
	}
	// And staging both held by the canary wave and admitting hosts, and
	// (only over the default seeds or more: a fifth of them, -short and
	// -race, or fewer given with -seeds, need not) keeping an admission
	// below a holder that is out.
	kept := stage["kept"] > 0 || len(seeds) < 200
	if len(seeds) > 1 && (stage["canary wave"] == 0 || stage["admitted"] == 0 || !kept) {
		t.Errorf("simulation never staged, never held staging for the canary, or never kept an admission below a holder that is out: %v", stage)
	}
}

func simulate(t *testing.T, seed uint64, stage map[string]int) v1.RolloutState {
	rng := rand.New(rand.NewPCG(seed, 0xf1ee7))
	fatalf := seedFatalf(t, seed)

	// Fleet.
	n := 1 + rng.IntN(300)
	zones := []string{"a", "b", "c"}[:1+rng.IntN(3)]
	hosts := make([]Host, n)
	for i := range hosts {
		l := map[string]string{"role": "web"}
		if rng.IntN(10) < 3 {
			l["role"] = "db"
		}
		if rng.IntN(10) < 9 {
			l[ZoneLabel] = zones[rng.IntN(len(zones))]
		}
		hosts[i] = Host{ID: fmt.Sprintf("h%03d", i), Labels: l}
	}
	selector := []map[string]string{nil, {"role": "web"}, {"zone": "a"}, {"role": "web", "zone": "a"}, {"role": "db"}}[rng.IntN(5)]

	// Policy.
	pol := &v1.RolloutPolicy{
		Canary:      uint32(rng.IntN(4)),
		NoCanary:    rng.IntN(4) == 0,
		MaxParallel: uint32(rng.IntN(8)),
		MaxFailures: uint32(rng.IntN(3)),
	}
	for p := uint32(0); p < 100 && rng.IntN(3) > 0; {
		p += 1 + uint32(rng.IntN(60))
		pol.Waves = append(pol.Waves, min(p, 100))
	}
	if rng.IntN(2) == 0 {
		pol.Bake = dur(time.Duration(rng.IntN(300)) * time.Second)
	}
	if rng.IntN(2) == 0 {
		pol.ProgressDeadline = dur(time.Duration(1+rng.IntN(10)) * time.Minute)
	}
	if rng.IntN(5) == 0 {
		pol.Mode = spec.ModeManual
	}
	pol.ApproveEachWave = rng.IntN(4) == 0
	pol.MaxUnavailablePerZone = []string{"", "", "1", "2", "10%", "50%"}[rng.IntN(6)]
	if rng.IntN(3) == 0 {
		pol.ZoneOrder = spec.ZoneOrderOneAtATime
	}
	pol.StageAhead = rng.IntN(2) == 0
	pauses := rng.IntN(3) == 0 // a person pauses and resumes now and then
	eff := effective(WithDefaults(pol))
	prm := simParams{
		pAct:  0.3 + 0.6*rng.Float64(),
		pFail: []float64{0, 0, 0.01, 0.05, 0.2}[rng.IntN(5)],
		pLate: []float64{0, 0, 0.0005, 0.002}[rng.IntN(4)],
		pDown: []float64{0, 0.005, 0.02}[rng.IntN(3)],
		pUp:   0.1 + 0.5*rng.Float64(),
	}

	svc := &v1.Service{
		Spec:   &v1.ServiceSpec{Name: "svc", Selector: selector, Rollout: pol},
		Status: &v1.ServiceStatus{StableVersion: "v1", StableGeneration: int64(rng.IntN(5))},
	}
	agents := make(map[string]*simAgent, n)
	for _, h := range hosts {
		a := &simAgent{labels: h.Labels, selected: Selects(selector, h.Labels), connected: rng.IntN(10) > 0,
			gen: svc.Status.StableGeneration, version: "v1", current: "v1", prev: "v1", phase: pHealthy}
		a.report = &v1.ServiceReport{Service: "svc", Generation: a.gen, Phase: a.phase, CurrentVersion: a.current}
		agents[h.ID] = a
	}

	shuffled := append([]Host(nil), hosts...)
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	now := t0
	r := New("r1", svc, "v2", shuffled, now)
	plan := planIDs(r)

	// Plan: exactly the selected hosts, once.
	inPlan := map[string]bool{}
	for _, w := range plan {
		if len(w) == 0 {
			fatalf("empty wave in plan %v", plan)
		}
		for _, id := range w {
			if inPlan[id] {
				fatalf("%s planned twice", id)
			}
			inPlan[id] = true
			if !agents[id].selected {
				fatalf("%s is in the plan but not selected by %v", id, selector)
			}
		}
	}
	for id, a := range agents {
		if a.selected && !inPlan[id] {
			fatalf("selected host %s missing from the plan", id)
		}
	}
	// Zones one at a time: each wave holds one zone, and a zone's waves
	// follow each other (no zone comes back after another started).
	if pol.ZoneOrder == spec.ZoneOrderOneAtATime {
		done := map[string]bool{}
		last := "\x00"
		for i, w := range r.GetWaves() {
			z := w.GetHosts()[0].GetZone()
			for _, h := range w.GetHosts() {
				if h.GetZone() != z || h.GetZone() != agents[h.GetHostId()].labels[ZoneLabel] {
					fatalf("zone_order one_at_a_time: wave %d mixes zones (%s in %q)", i, h.GetHostId(), z)
				}
			}
			if z != last {
				if done[z] {
					fatalf("zone_order one_at_a_time: zone %q comes back at wave %d", z, i)
				}
				done[last], last = true, z
			}
		}
	}

	if r.State == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		out, res := Step(r, func(string) Observation { return Observation{Connected: true} }, now)
		if out != r || res.Changed {
			fatalf("Step moved a rollout waiting for approval")
		}
		now = now.Add(time.Duration(rng.IntN(3600)) * time.Second)
		var err error
		if r, err = Approve(r, 0, now); err != nil {
			fatalf("approve: %v", err)
		}
	}

	obs := func(id string) Observation {
		a := agents[id]
		if a == nil {
			fatalf("Step asked about %s, not a host of the fleet", id)
		}
		return Observation{Connected: a.connected, Report: a.report}
	}
	// Staging ahead (stage_ahead): every host has a peer address but one
	// in ten; staged are the hosts that report the target staged.
	stageHosts := map[string]PeerHost{}
	for _, h := range hosts {
		if rng.IntN(10) > 0 {
			stageHosts[h.ID] = PeerHost{Address: h.ID + ":1", Labels: h.Labels}
		}
	}
	staged := map[string]bool{}
	const maxSteps = 20000
	for stepN := 0; !Terminal(r); stepN++ {
		if stepN >= maxSteps {
			fatalf("not terminal after %d steps: %v", maxSteps, r.State)
		}
		// The coordinator pushes assignments to connected hosts.
		desired := DesiredFunc(svc, r)
		for _, h := range hosts {
			a := agents[h.ID]
			want, ok := desired(h.ID, a.labels, a.report)
			v, g := want.Version, want.Generation
			if v == "v2" && !a.selected {
				fatalf("unselected host %s desired %s", h.ID, v)
			}
			if v == "v2" && hostOf(r, h.ID).GetState() == pending {
				fatalf("pending host %s desired %s", h.ID, v)
			}
			sp, _ := SpecFor(svc, r, v, g)
			a.assign(want, sp, ok, rng, prm)
		}
		// out: the hosts whose link is down (the hub's not connected).
		down := map[string]bool{}
		for _, h := range hosts {
			if !agents[h.ID].connected {
				down[h.ID] = true
			}
		}
		sp := checkStage(fatalf, stepN, r, stageHosts, staged, down)
		switch {
		case sp == nil || sp.Waiting == 0:
		case sp.CanaryWave:
			stage["canary wave"]++
		case sp.Admitted() > 0:
			stage["admitted"]++
		}
		if sp != nil && sp.Kept > 0 {
			stage["kept"]++
		}
		for _, h := range hosts {
			// A connected host admitted to stage finishes now and then.
			if ok, _ := sp.Stage(h.ID); ok && agents[h.ID].connected && rng.Float64() < prm.pAct {
				staged[h.ID] = true
			}
		}
		// Agents act and links flap.
		for _, h := range hosts {
			agents[h.ID].act("svc", rng, prm)
		}
		// Time passes (sometimes not at all, sometimes a lot).
		switch rng.IntN(30) {
		case 0, 1, 2:
		case 3:
			now = now.Add(time.Duration(rng.IntN(600)) * time.Second)
		default:
			now = now.Add(time.Duration(rng.IntN(20)) * time.Second)
		}

		// A person approves waiting waves and pauses or resumes now and then.
		for i, w := range r.GetWaves() {
			if w.GetWaitingApproval() && rng.IntN(3) == 0 {
				var err error
				if r, err = Approve(r, uint32(i), now); err != nil {
					fatalf("step %d: approve wave %d: %v", stepN, i, err)
				}
			}
		}
		if pauses && r.GetState() == rProg && rng.IntN(20) == 0 {
			var err error
			if r.GetPaused() {
				r, err = Resume(r, now)
			} else {
				r, err = Pause(r)
			}
			if err != nil {
				fatalf("step %d: pause/resume: %v", stepN, err)
			}
		}

		before := proto.Clone(r).(*v1.Rollout)
		out, res := Step(r, obs, now)
		if !proto.Equal(before, r) {
			fatalf("step %d: Step mutated its input", stepN)
		}
		if res.Changed != (out != r) || res.Changed == proto.Equal(out, r) {
			fatalf("step %d: Changed=%v but out==in %v, equal %v", stepN, res.Changed, out == r, proto.Equal(out, r))
		}
		if err := checkProgressOnly(r, out, res); err != nil {
			fatalf("step %d: %v", stepN, err)
		}
		checkStep(fatalf, stepN, r, out, res, eff, plan, now)
		checkGates(fatalf, stepN, r, out)
		r = out
	}

	// A terminal rollout never moves again.
	if out, res := Step(r, obs, now.Add(time.Hour)); out != r || res.Changed {
		fatalf("Step moved a %v rollout", r.State)
	}
	// Conclude, then every host's assignment.
	svc.Status = Conclude(svc.Status, r)
	desired := DesiredFunc(svc, r)
	for _, h := range hosts {
		a := agents[h.ID]
		want, ok := desired(h.ID, a.labels, nil)
		v, g := want.Version, want.Generation
		if w2, ok2 := Desired(svc, r, h.ID, a.labels, nil); w2 != want || ok2 != ok {
			fatalf("Desired and DesiredFunc disagree for %s", h.ID)
		}
		switch {
		case !a.selected:
			if ok {
				fatalf("unselected %s desired (%s, %d)", h.ID, v, g)
			}
		case r.State == rFailed:
			if !ok || v != r.FromVersion || g != r.Generation+1 {
				fatalf("after failure %s desired (%q, %d, %v), want (%q, %d)", h.ID, v, g, ok, r.FromVersion, r.Generation+1)
			}
		case r.State == rOK:
			if !ok || v != r.ToVersion || g != r.Generation {
				fatalf("after success %s desired (%q, %d, %v)", h.ID, v, g, ok)
			}
		}
	}
	if r.State == rFailed && !svc.Status.Frozen {
		fatalf("service not frozen after a failed rollout")
	}
	return r.State
}

// checkStep checks the invariants of one Step from in to out.
func checkStep(fatalf func(string, ...any), stepN int, in, out *v1.Rollout, res Result, pol policy, plan [][]string, now time.Time) {
	if Terminal(in) || in.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		if out != in || res.Changed || len(res.Events) > 0 || !res.NextWake.IsZero() {
			fatalf("step %d: a %v rollout moved", stepN, in.State)
		}
		return
	}
	if got := planIDs(out); len(got) != len(plan) {
		fatalf("step %d: plan changed", stepN)
	}
	assignedEv := map[string]bool{}
	for _, e := range res.Events {
		if e.Kind == EventHostAssigned {
			assignedEv[e.Host] = true
		}
	}
	overBudget := false
	for i, w := range out.Waves {
		wi := in.Waves[i]
		started := w.State != wPending
		// Waves start in order: every earlier wave is DONE (or, in a failed
		// rollout, FAILED by a late revert).
		if started {
			for j := range i {
				s := out.Waves[j].State
				if s != wDone && !(out.State == rFailed && s == wFailed) {
					fatalf("step %d: wave %d is %v while earlier wave %d is %v", stepN, i, w.State, j, s)
				}
			}
		}
		nUpd, nFailed := 0, 0
		for k, h := range w.Hosts {
			if h.HostId != plan[i][k] {
				fatalf("step %d: plan changed at wave %d", stepN, i)
			}
			hi := wi.Hosts[k]
			if !started && h.State != pending {
				fatalf("step %d: host %s of unstarted wave %d is %v", stepN, h.HostId, i, h.State)
			}
			switch h.State {
			case updating:
				nUpd++
			case hostFail:
				nFailed++
			}
			// Legal transitions only.
			ok := hi.State == h.State ||
				(hi.State == pending && h.State == updating) ||
				(hi.State == updating && (h.State == hostDone || h.State == hostFail)) ||
				(hi.State == hostDone && h.State == hostFail)
			if !ok {
				fatalf("step %d: host %s went %v -> %v", stepN, h.HostId, hi.State, h.State)
			}
			if hi.State == pending && h.State == updating {
				if !assignedEv[h.HostId] {
					fatalf("step %d: %s assigned without an event", stepN, h.HostId)
				}
				delete(assignedEv, h.HostId)
				// Nothing moves in a Step that fails the rollout, and only
				// the current wave moves hosts.
				if out.State != rProg || w.State != wProg {
					fatalf("step %d: %s assigned in a %v rollout, wave %v", stepN, h.HostId, out.State, w.State)
				}
			}
		}
		if nUpd > pol.maxParallel {
			fatalf("step %d: wave %d has %d hosts updating, max_parallel %d", stepN, i, nUpd, pol.maxParallel)
		}
		if int(w.Failures) != nFailed {
			fatalf("step %d: wave %d failures %d but %d hosts failed", stepN, i, w.Failures, nFailed)
		}
		if w.Failures > pol.maxFailures {
			overBudget = true
		}
		if w.State == wDone && nUpd > 0 {
			fatalf("step %d: done wave %d has updating hosts", stepN, i)
		}
	}
	if len(assignedEv) > 0 {
		fatalf("step %d: host_assigned events without a move: %v", stepN, assignedEv)
	}
	// max_unavailable_per_zone: a host the Step moves never takes its zone
	// over the limit (hosts failing or dropping on their own may).
	if lim := ZoneLimits(out); lim != nil {
		unavailable := map[string]int{}
		for _, w := range out.Waves {
			for _, h := range w.Hosts {
				if Unavailable(h) {
					unavailable[h.GetZone()]++
				}
			}
		}
		for i, w := range out.Waves {
			for k, h := range w.Hosts {
				if in.Waves[i].Hosts[k].State == pending && h.State == updating && unavailable[h.GetZone()] > lim[h.GetZone()] {
					fatalf("step %d: %s assigned with %d host(s) of zone %q unavailable, max_unavailable_per_zone %s = %d",
						stepN, h.HostId, unavailable[h.GetZone()], h.GetZone(), out.GetPolicy().GetMaxUnavailablePerZone(), lim[h.GetZone()])
				}
			}
		}
	}
	if overBudget && out.State != rFailed {
		fatalf("step %d: a wave is over budget but the rollout is %v", stepN, out.State)
	}
	switch out.State {
	case rOK:
		for i, w := range out.Waves {
			if w.State != wDone {
				fatalf("step %d: SUCCEEDED with wave %d %v", stepN, i, w.State)
			}
		}
		if !res.NextWake.IsZero() {
			fatalf("step %d: NextWake on a terminal rollout", stepN)
		}
	case rFailed:
		if out.Reason == "" || !out.FinishedAt.AsTime().Equal(now) {
			fatalf("step %d: FAILED without reason/finished_at", stepN)
		}
	case rProg:
		waiting := out.GetPaused() // nothing time-based runs while paused or waiting for a person
		for _, w := range out.GetWaves() {
			waiting = waiting || w.GetWaitingApproval()
		}
		if waiting && res.NextWake.IsZero() {
			break
		}
		if res.NextWake.IsZero() || !res.NextWake.After(now) {
			fatalf("step %d: progressing rollout with NextWake %v at %v", stepN, res.NextWake, now)
		}
	default:
		fatalf("step %d: state %v", stepN, out.State)
	}
}

// checkGates checks what pause and per-wave approval promise: a paused
// rollout moves no host, starts or ends no wave and does not succeed (a
// failure still fails it); a wave after the first waits for approval.
func checkGates(fatalf func(string, ...any), stepN int, in, out *v1.Rollout) {
	if in.GetPaused() {
		if out.GetState() == rOK {
			fatalf("step %d: a paused rollout succeeded", stepN)
		}
		for i, w := range out.GetWaves() {
			iw := in.GetWaves()[i]
			if w.GetState() != iw.GetState() && w.GetState() != v1.WaveState_WAVE_STATE_FAILED {
				fatalf("step %d: paused, wave %d went %v -> %v", stepN, i, iw.GetState(), w.GetState())
			}
			for j, h := range w.GetHosts() {
				if iw.GetHosts()[j].GetState() == pending && h.GetState() != pending {
					fatalf("step %d: paused, host %s moved", stepN, h.GetHostId())
				}
			}
		}
	}
	if out.GetPolicy().GetApproveEachWave() {
		for i, w := range out.GetWaves() {
			if i > 0 && w.GetState() != v1.WaveState_WAVE_STATE_PENDING && !w.GetApproved() {
				fatalf("step %d: wave %d is %v without approval", stepN, i, w.GetState())
			}
		}
	}
}

// TestPolicySimulation drives the whole policy through random services:
// releases arrive at random times (during rollouts too), a person approves,
// pauses, resumes, aborts, rolls back and unfreezes now and then, agents
// install, fail, revert and lose their streams. The world (world_test.go)
// acts as the leader does and checks after every action: Step's invariants,
// what Decide and RollbackTarget say against the world, one rollout in
// flight, generations that only grow and name one version each, no release
// started twice or lost. At the end releases stop and the person helps
// every rollout along: the service must settle with nothing pending.
func TestPolicySimulation(t *testing.T) {
	seeds := simSeeds(100)
	seen := map[string]int{}
	for _, seed := range seeds {
		simulatePolicy(t, seed, seen)
		if t.Failed() {
			return
		}
	}
	t.Logf("over %d seeds: %v", len(seeds), seen)
	// The parameters must exercise every part of the policy.
	for _, k := range []string{"start", "supersede", "wait", "record-spec", "SUCCEEDED", "FAILED", "SUPERSEDED", "rollback", "rollback refused", "unfreeze", "abort", "approve",
		"spec host", "spec coordinator", "spec back", "config start", "config succeeded", "config failed",
		"delete", "delete refused", "recreate", "relabel", "removal succeeded", "removal failed",
		"spec selector", "leave", "leave succeeded", "leave failed", "held", "wave held", "progress deferred",
		"generation ahead", "generation made up", "refused", "replaced"} {
		// Only over every seed: a fifth of them (-short, -race) need not
		// reach the rarer ends (a failed removal, a service created anew).
		if len(seeds) > 1 && !testing.Short() && !raceEnabled && seen[k] == 0 {
			t.Errorf("the simulation never saw %q: %v", k, seen)
		}
	}
}

func simulatePolicy(t *testing.T, seed uint64, seen map[string]int) {
	rng := rand.New(rand.NewPCG(seed, 0x5e1ec7))
	fatalf := seedFatalf(t, seed)

	n := 1 + rng.IntN(40)
	zones := []string{"a", "b", "c"}[:1+rng.IntN(3)]
	hosts := make([]Host, n)
	for i := range hosts {
		l := map[string]string{"role": "web"}
		if rng.IntN(10) < 2 {
			l["role"] = "db"
		}
		if rng.IntN(10) < 9 {
			l[ZoneLabel] = zones[rng.IntN(len(zones))]
		}
		hosts[i] = Host{ID: fmt.Sprintf("h%02d", i), Labels: l}
	}
	selector := []map[string]string{nil, {"role": "web"}, {"zone": "a"}}[rng.IntN(3)]
	pol := &v1.RolloutPolicy{
		Canary:       uint32(rng.IntN(3)),
		NoCanary:     rng.IntN(4) == 0,
		MaxParallel:  uint32(rng.IntN(6)),
		MaxFailures:  uint32(rng.IntN(2)),
		OnNewRelease: []string{"", spec.OnNewReleaseSupersede, spec.OnNewReleaseQueue}[rng.IntN(3)],
	}
	for p := uint32(0); p < 100 && rng.IntN(3) > 0; {
		p += 1 + uint32(rng.IntN(60))
		pol.Waves = append(pol.Waves, min(p, 100))
	}
	if rng.IntN(2) == 0 {
		pol.Bake = dur(time.Duration(rng.IntN(120)) * time.Second)
	}
	if rng.IntN(2) == 0 {
		pol.ProgressDeadline = dur(time.Duration(1+rng.IntN(5)) * time.Minute)
	}
	if rng.IntN(4) == 0 {
		pol.Mode = spec.ModeManual
	}
	pol.ApproveEachWave = rng.IntN(5) == 0
	prm := simParams{
		pAct:  0.3 + 0.6*rng.Float64(),
		pFail: []float64{0, 0.02, 0.1, 0.3}[rng.IntN(4)],
		pLate: []float64{0, 0.001, 0.005}[rng.IntN(3)],
		pDown: []float64{0, 0.005, 0.02}[rng.IntN(3)],
		pUp:   0.1 + 0.5*rng.Float64(),
	}
	pRelease := []float64{0.01, 0.03, 0.1}[rng.IntN(3)] // a release per tick
	pOperator := []float64{0, 0.01, 0.05}[rng.IntN(3)]  // an operator call per tick

	// The service runs v1 with spec 1; specs are applied now and then: some
	// change what hosts run (CFG), some only the policy or the alerts.
	sp1 := &v1.ServiceSpec{Name: "svc", Selector: selector, Rollout: pol, Run: &v1.RunSpec{Command: []string{"./app"}, Env: map[string]string{"CFG": "0"}}}
	svc := &v1.Service{Spec: sp1, SpecRevision: 1,
		Status: &v1.ServiceStatus{StableVersion: "v1", StableGeneration: int64(rng.IntN(5)), StableSpec: sp1, StableSpecRevision: 1}}
	w := newWorld(svc, hosts, t0, fatalf)
	// The leader defers progress-only steps (progressWriteEvery, 500 ms);
	// some runs defer them long, past many ticks.
	w.deferProgress = []time.Duration{0, 500 * time.Millisecond, 30 * time.Second}[rng.IntN(3)]
	w.release("v1")
	agents := map[string]*simAgent{}
	// Some hosts report generations the leader's records do not know: a
	// little above its counter (an etcd restored from a backup), or made
	// up by a compromised coordinator, now and then during the run too.
	pAhead := []float64{0, 0, 0.1, 0.3}[rng.IntN(4)]
	pMadeUp := []float64{0, 0, 0.002, 0.01}[rng.IntN(4)] // per tick
	for _, h := range hosts {
		a := &simAgent{labels: h.Labels, connected: rng.IntN(10) > 0, gen: svc.Status.StableGeneration,
			version: "v1", spec: sp1, current: "v1", curSpec: sp1, prev: "v1", prevSpec: sp1, phase: pHealthy}
		switch x := rng.Float64(); {
		case x < pAhead/3:
			a.gen = madeUpGeneration(a.gen, rng)
		case x < pAhead:
			a.gen += 1 + rng.Int64N(MaxGenerationAhead)
		}
		if a.gen != svc.Status.StableGeneration {
			seen["generation ahead"]++
			a.report = &v1.ServiceReport{Service: "svc", Generation: a.gen, Phase: a.phase, CurrentVersion: a.current}
		}
		agents[h.ID] = a
	}
	pSpec := []float64{0, 0.01, 0.03}[rng.IntN(3)]        // a spec applied per tick
	pRelabel := []float64{0, 0, 0.005, 0.02}[rng.IntN(4)] // a host's labels change per tick
	deletes := rng.IntN(2)                                // whether the person may delete the service
	pBlackout := []float64{0, 0, 0.01}[rng.IntN(3)]       // a blackout created per tick
	applySpec := func() {
		next := proto.Clone(w.svc.GetSpec()).(*v1.ServiceSpec)
		switch k := rng.IntN(5); {
		case k == 4: // which hosts run it: those left out are removed in waves
			next.Selector = []map[string]string{nil, {"role": "web"}, {"zone": "a"}}[rng.IntN(3)]
			seen["spec selector"]++
		case k < 2: // what hosts run
			next.Run.Env["CFG"] = strconv.Itoa(rng.IntN(4))
			seen["spec host"]++
		case k < 3: // the policy only
			next.Rollout.MaxParallel = uint32(rng.IntN(6))
			seen["spec coordinator"]++
		default: // back to what the stable release runs (or ran first), with new alerts
			run := w.svc.GetStatus().GetStableSpec().GetRun()
			if run == nil {
				run = sp1.GetRun()
			}
			next.Run = proto.Clone(run).(*v1.RunSpec)
			next.Alerts = &v1.Alerts{WebhookUrl: "http://hooks/" + strconv.Itoa(rng.IntN(100))}
			seen["spec back"]++
		}
		w.apply(next)
	}
	versions := 1
	op := func(what string, err error) {
		if err != nil {
			seen[what+" refused"]++
			return
		}
		seen[what]++
	}
	tick := func(drain bool) {
		// Assignments reach connected agents; agents act; reports arrive.
		cur, _ := w.current()
		desired := DesiredFunc(w.svc, cur)
		for _, h := range hosts {
			want, ok := desired(h.ID, h.Labels, agents[h.ID].report)
			v, g := want.Version, want.Generation
			sp, _ := SpecFor(w.svc, cur, v, g)
			agents[h.ID].assign(want, sp, ok, rng, prm)
		}
		if !drain && rng.Float64() < pMadeUp {
			// A compromised coordinator sends a host what it has at a
			// made-up generation: the host takes it (nothing changes).
			a := agents[hosts[rng.IntN(len(hosts))].ID]
			if a.connected && a.phase != v1.Phase_PHASE_REMOVED {
				a.gen = madeUpGeneration(a.gen, rng)
				seen["generation made up"]++
			}
		}
		for _, h := range hosts {
			a := agents[h.ID]
			a.act("svc", rng, prm)
			w.obs[h.ID] = a.observation()
		}
		// Time passes (sometimes not at all, sometimes a lot).
		switch rng.IntN(30) {
		case 0, 1, 2:
		case 3:
			w.now = w.now.Add(time.Duration(rng.IntN(300)) * time.Second)
		default:
			w.now = w.now.Add(time.Duration(rng.IntN(20)) * time.Second)
		}
		// A release, a spec, a host relabelled, and a person. Releases and
		// specs of a service being deleted are refused (the operator API);
		// a spec applied to a deleted one creates it anew.
		st := w.svc.GetStatus()
		if !drain && rng.Float64() < pRelease && !st.GetRemoving() && !st.GetRemoved() {
			versions++
			w.release(fmt.Sprintf("v%d", versions))
		}
		if !drain && rng.Float64() < pSpec && !st.GetRemoving() {
			applySpec()
		}
		if !drain && rng.Float64() < pRelabel {
			h := &hosts[rng.IntN(len(hosts))]
			l := maps.Clone(h.Labels)
			l["role"] = map[string]string{"web": "db", "db": "web"}[l["role"]]
			h.Labels, agents[h.ID].labels = l, l
			seen["relabel"]++
		}
		// A coordinator-wide blackout now and then; the drain ends them.
		if !drain && rng.Float64() < pBlackout {
			from := w.now.Add(time.Duration(rng.IntN(120)) * time.Second)
			w.gates.Blackouts = append(w.gates.Blackouts, &v1.Blackout{Id: fmt.Sprintf("b%d", len(w.gates.Blackouts)),
				From: timestamppb.New(from), To: timestamppb.New(from.Add(time.Duration(1+rng.IntN(600)) * time.Second))})
		}
		if drain {
			w.gates.Blackouts = nil
		}
		cur = w.active()
		waiting := cur.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL ||
			slices.ContainsFunc(cur.GetWaves(), func(wv *v1.Wave) bool { return wv.GetWaitingApproval() })
		switch {
		case waiting && (drain || rng.IntN(10) == 0):
			op("approve", w.approve(0))
		case drain && cur.GetPaused():
			op("resume", w.resume())
		case drain && w.svc.GetStatus().GetFrozen():
			w.unfreeze()
			seen["unfreeze"]++
		case drain && st.GetRemoving() && cur == nil:
			op("delete again", w.deleteService(false))
		case drain && st.GetRemoved():
			// Created anew, and released: it must settle like any service.
			applySpec()
			versions++
			w.release(fmt.Sprintf("v%d", versions))
			seen["recreate"]++
		case !drain && rng.Float64() < pOperator:
			switch k := rng.IntN(10 + deletes); {
			case k < 3:
				op("pause", w.pause())
			case k < 6:
				op("resume", w.resume())
			case k < 7:
				op("abort", w.abort("sim"))
			case k == 10:
				force := rng.IntN(2) == 0
				if err := w.deleteService(force); err != nil {
					seen["delete refused"]++
				} else {
					seen["delete"]++
				}
			case k < 9:
				to := ""
				if rng.IntN(2) == 0 {
					to = fmt.Sprintf("v%d", 1+rng.IntN(versions+1)) // sometimes not a release
				}
				op("rollback", w.rollback(to))
			case k == 9:
				w.unfreeze()
				seen["unfreeze"]++
			}
		}
		w.reconcile()
	}

	ticks := 100 + rng.IntN(400)
	for range ticks {
		tick(false)
	}
	// Drain: no more releases, faults or operator whims; every rollout is
	// helped along. The service must settle.
	prm.pFail, prm.pLate, prm.pDown, prm.pUp = 0, 0, 0, 1
	settled := false
	for i := 0; i < 5000 && !settled; i++ {
		tick(true)
		cur, created := w.deciding()
		d := Decide(w.svc, cur, created, w.releases)
		st := w.svc.GetStatus()
		settled = w.active() == nil && !st.GetFrozen() && !st.GetRemoving() && !st.GetRemoved() && d.Action == ActionNone
	}
	if !settled {
		cur, _ := w.current()
		fatalf("the service did not settle: %v, frozen %v, releases %v", cur, w.svc.GetStatus().GetFrozen(), w.releases)
	}
	// Settled: the newest rollout, if it succeeded and was not a rollback,
	// is what runs, and every selected host is told the stable release.
	cur, _ := w.deciding()
	if cur.GetState() == rOK && w.svc.GetStatus().GetStableVersion() != cur.GetToVersion() {
		fatalf("rollout %s to %s succeeded but %s is stable", cur.GetId(), cur.GetToVersion(), w.svc.GetStatus().GetStableVersion())
	}
	newest, _ := w.current()
	desired := DesiredFunc(w.svc, newest)
	st := w.svc.GetStatus()
	for _, h := range hosts {
		a := agents[h.ID]
		want, ok := desired(h.ID, h.Labels, a.report)
		v, g := want.Version, want.Generation
		// No host is kept from its assignment by a generation no
		// coordinator issued; one a coordinator could have issued keeps
		// a host on what it runs only until a rollout over it.
		if a.connected && madeUp(a.gen, g) && ok && (a.phase != v1.Phase_PHASE_REMOVED || want.Remove) {
			fatalf("settled, %s holds generation %d, made up, and is told %v", h.ID, a.gen, want)
		}
		seen["refused"] += a.refused
		seen["replaced"] += a.replaced
		// A host left out by the selector removes the service if it has it.
		// (Created anew, its first release may have failed: nothing is stable.)
		stable := st.GetStableVersion()
		if sel := Selects(w.svc.GetSpec().GetSelector(), h.Labels); sel && stable != "" && (!ok || v != stable) || sel && stable == "" && ok && !want.Remove || !sel && ok && !want.Remove {
			fatalf("settled, %s (selected %v) is told %v, stable %s", h.ID, sel, want, st.GetStableVersion())
		}
		if want.Remove {
			continue
		}
		if sp, rev := SpecFor(w.svc, newest, v, g); ok && (rev != st.GetStableSpecRevision() || !proto.Equal(sp, st.GetStableSpec())) {
			fatalf("settled, %s is told spec %d, the stable spec is %d", h.ID, rev, st.GetStableSpecRevision())
		}
	}
	// Settled, the live spec is the stable one, or one that changes what
	// hosts run and was tried (failed, or undone by a rollback): none is lost
	// and none that changes nothing on hosts stays unrecorded.
	if !maps.Equal(Placement(w.svc), w.svc.GetSpec().GetSelector()) && st.GetStableSpec() != nil {
		fatalf("settled, the hosts are placed by %v, the selector is %v", Placement(w.svc), w.svc.GetSpec().GetSelector())
	}
	cur, _ = w.deciding()
	if rev := w.svc.GetSpecRevision(); rev != st.GetStableSpecRevision() && st.GetStableVersion() != "" {
		if !specdiff.HostAffecting(st.GetStableSpec(), w.svc.GetSpec()) || rev > w.applied[cur.GetId()] {
			fatalf("settled with spec %d, stable spec %d (host changes %v), newest rollout %s applied %d",
				rev, st.GetStableSpecRevision(), specdiff.HostChanges(st.GetStableSpec(), w.svc.GetSpec()), cur.GetId(), w.applied[cur.GetId()])
		}
		seen["spec not rolled out"]++
	}
	w.checkStored(0)
	for k, v := range w.stats {
		seen[k] += v
	}
}

func stagePlanOf(r *v1.Rollout, hosts map[string]PeerHost, staged, out map[string]bool) *StagePlan {
	return PlanStage(r, "sha-v2", hosts, staged, out, DefaultSources)
}

// checkStage checks PlanStage's invariants on the rollout as it is: only
// a rollout that Stages plans; nothing is admitted while a host of the
// canary wave (Wave.canary) is PENDING or UPDATING; only waiting (PENDING) hosts
// are admitted;
// at most StageOrigin are admitted without sources (the roots) besides
// the kept ones (a holder above them in the tree is out: they keep the
// admission it gave them, StagePlan.Kept, named a window of holders or
// none); every
// admitted host's first source is an ancestor of it in the plan-order tree
// (so a holder serves its own subtree, StageFanout children unless some
// serve nobody, whatever order hosts finish in); a host is never its own
// source; sources are holders; no out host (not connected) is admitted or
// a holder, so a plan just made is never Lost (else the hub would replan
// at every check); and staging never stalls: once the canary wave is done,
// while a host waits, one is admitted or a future holder (an UPDATING
// host with a peer address, not out) is installing.
func checkStage(fatalf func(string, ...any), stepN int, r *v1.Rollout, hosts map[string]PeerHost, staged, out map[string]bool) *StagePlan {
	p := stagePlanOf(r, hosts, staged, out)
	if !Stages(r) {
		if p != nil {
			fatalf("step %d: a staging plan for a rollout that does not stage (%v)", stepN, r.GetState())
		}
		return nil
	}
	holders := map[string]bool{}
	for _, h := range p.Holders {
		holders[h.ID] = true
	}
	pos := map[string]int{}
	for _, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			if _, ok := pos[hp.GetHostId()]; !ok {
				pos[hp.GetHostId()] = len(pos)
			}
		}
	}
	canary := false
	for _, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			if st := hp.GetState(); w.GetCanary() && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED {
				canary = true
			}
		}
	}
	if canary != p.CanaryWave {
		fatalf("step %d: canary wave in flight %v, the plan says %v", stepN, canary, p.CanaryWave)
	}
	roots, kept := 0, 0
	byPos := make([]*v1.HostProgress, len(pos))
	for _, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			if byPos[pos[hp.GetHostId()]] == nil {
				byPos[pos[hp.GetHostId()]] = hp
			}
		}
	}
	// lostAbove: a holder with a peer address that is out is above q.
	lostAbove := func(q int) bool {
		for q > 0 {
			q = (q - 1) / StageFanout
			a := byPos[q]
			id := a.GetHostId()
			if (a.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE || staged[id]) && hosts[id].Address != "" && out[id] {
				return true
			}
		}
		return false
	}
	for _, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			ok, src := p.Stage(hp.GetHostId())
			if !ok {
				continue
			}
			if canary && !staged[hp.GetHostId()] {
				fatalf("step %d: %s admitted to stage while the canary wave is in flight", stepN, hp.GetHostId())
			}
			if !staged[hp.GetHostId()] && hp.GetState() != pending {
				fatalf("step %d: %s admitted to stage in state %v", stepN, hp.GetHostId(), hp.GetState())
			}
			for _, s := range src {
				if s.ID == hp.GetHostId() || !holders[s.ID] {
					fatalf("step %d: %s named %s as a source (holders %v)", stepN, hp.GetHostId(), s.ID, holders)
				}
			}
			if staged[hp.GetHostId()] {
				continue
			}
			below := lostAbove(pos[hp.GetHostId()])
			if len(src) == 0 || below && !p.hasFirst(hp.GetHostId()) {
				if below {
					kept++
				} else {
					roots++
				}
				continue
			}
			ancestor := false
			for q := pos[hp.GetHostId()]; q > 0 && !ancestor; {
				q = (q - 1) / StageFanout
				ancestor = q == pos[src[0].ID]
			}
			if !ancestor {
				fatalf("step %d: %s's first source %s is not above it in the tree", stepN, hp.GetHostId(), src[0].ID)
			}
		}
	}
	if kept < p.Kept {
		fatalf("step %d: the plan keeps %d hosts below a holder that is out, %d are", stepN, p.Kept, kept)
	}
	if roots > StageOrigin {
		fatalf("step %d: %d hosts admitted without sources, over StageOrigin %d", stepN, roots, StageOrigin)
	}
	if p.Lost(func(id string) bool { return !out[id] }) {
		fatalf("step %d: a plan just made counts on a host that is out (%v)", stepN, out)
	}
	for _, h := range p.Holders {
		if out[h.ID] {
			fatalf("step %d: holder %s is out", stepN, h.ID)
		}
	}
	if !canary && p.Waiting > 0 && p.Admitted() == 0 {
		future := false
		for _, w := range r.GetWaves() {
			for _, hp := range w.GetHosts() {
				id := hp.GetHostId()
				if hp.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING && hosts[id].Address != "" && !out[id] {
					future = true
				}
			}
		}
		if !future {
			fatalf("step %d: %d hosts wait to stage, none is admitted and no future holder installs", stepN, p.Waiting)
		}
	}
	return p
}
