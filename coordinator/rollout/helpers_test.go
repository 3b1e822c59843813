package rollout

import (
	"fmt"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

const (
	stableGen = int64(4)
	fromV     = "v1"
	toV       = "v2"
)

func newSvc(pol *v1.RolloutPolicy, selector map[string]string) *v1.Service {
	return &v1.Service{
		Spec:   &v1.ServiceSpec{Name: "web", Selector: selector, Rollout: pol},
		Status: &v1.ServiceStatus{StableVersion: fromV, StableGeneration: stableGen, LastRolloutId: "old", RolloutSeq: 7},
	}
}

// zoned returns n hosts host-000.. with zone labels cycling over zones (none
// if zones is empty).
func zoned(n int, zones ...string) []Host {
	hs := make([]Host, n)
	for i := range hs {
		l := map[string]string{"role": "web"}
		if len(zones) > 0 {
			l[ZoneLabel] = zones[i%len(zones)]
		}
		hs[i] = Host{ID: fmt.Sprintf("host-%03d", i), Labels: l}
	}
	return hs
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// fleet is a map-backed observation source; hosts not in it are connected
// with no report.
type fleet map[string]Observation

func (f fleet) obs(id string) Observation {
	if o, ok := f[id]; ok {
		return o
	}
	return Observation{Connected: true}
}

// report records that id reports phase for r's generation; HEALTHY runs
// to_version, anything else from_version.
func (f fleet) report(r *v1.Rollout, id string, phase v1.Phase, reason string) {
	cur := r.GetFromVersion()
	if phase == v1.Phase_PHASE_HEALTHY {
		cur = r.GetToVersion()
	}
	f[id] = Observation{Connected: true, Report: &v1.ServiceReport{
		Service: r.GetService(), Generation: r.GetGeneration(), Phase: phase,
		CurrentVersion: cur, TargetVersion: r.GetToVersion(), Reason: reason,
	}}
}

// step runs Step and checks that the input was not mutated and that Changed
// agrees with the output.
func step(t *testing.T, r *v1.Rollout, f fleet, now time.Time) (*v1.Rollout, Result) {
	t.Helper()
	before := proto.Clone(r)
	out, res := Step(r, f.obs, now)
	if !proto.Equal(before, r) {
		t.Fatalf("Step mutated its input")
	}
	if res.Changed != (out != r) {
		t.Fatalf("Changed=%v but output is input: %v", res.Changed, out == r)
	}
	if res.Changed == proto.Equal(out, r) {
		t.Fatalf("Changed=%v but output equal to input: %v", res.Changed, proto.Equal(out, r))
	}
	if err := checkProgressOnly(r, out, res); err != nil {
		t.Fatal(err)
	}
	return out, res
}

// checkProgressOnly checks Result.ProgressOnly: set exactly when the step
// changed only progress (hosts' phases and in_place, hosts UPDATING made
// DONE with done_at, the rollout's last_progress_at), and then with no
// event but host_done.
func checkProgressOnly(in, out *v1.Rollout, res Result) error {
	if !res.Changed {
		if res.ProgressOnly {
			return fmt.Errorf("ProgressOnly without a change")
		}
		return nil
	}
	a, b := proto.Clone(in).(*v1.Rollout), proto.Clone(out).(*v1.Rollout)
	for i, w := range b.GetWaves() {
		for j, h := range w.GetHosts() {
			if i >= len(a.GetWaves()) || j >= len(a.GetWaves()[i].GetHosts()) {
				continue
			}
			ah := a.GetWaves()[i].GetHosts()[j]
			if ah.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING && h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
				ah.State, ah.DoneAt = h.GetState(), h.GetDoneAt()
			}
		}
	}
	a.LastProgressAt = b.GetLastProgressAt()
	for _, r := range []*v1.Rollout{a, b} {
		for _, w := range r.GetWaves() {
			for _, h := range w.GetHosts() {
				h.Phase = v1.Phase_PHASE_UNSPECIFIED
				h.InPlace = false
			}
		}
	}
	if only := proto.Equal(a, b); only != res.ProgressOnly {
		return fmt.Errorf("ProgressOnly=%v but the step changed only progress: %v", res.ProgressOnly, only)
	}
	if res.ProgressOnly {
		for _, ev := range res.Events {
			if ev.Kind != EventHostDone {
				return fmt.Errorf("ProgressOnly with a %s event", ev.Kind)
			}
		}
	}
	return nil
}

func planIDs(r *v1.Rollout) [][]string {
	var out [][]string
	for _, w := range r.GetWaves() {
		var ids []string
		for _, h := range w.GetHosts() {
			ids = append(ids, h.GetHostId())
		}
		out = append(out, ids)
	}
	return out
}

func waveSizes(r *v1.Rollout) []int {
	var out []int
	for _, w := range r.GetWaves() {
		out = append(out, len(w.GetHosts()))
	}
	return out
}

func hostOf(r *v1.Rollout, id string) *v1.HostProgress {
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetHostId() == id {
				return h
			}
		}
	}
	return nil
}

func kinds(evs []Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

func hasEvent(evs []Event, kind, host string) bool {
	for _, e := range evs {
		if e.Kind == kind && (host == "" || e.Host == host) {
			return true
		}
	}
	return false
}

func countState(r *v1.Rollout, st v1.HostRolloutState) int {
	n := 0
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetState() == st {
				n++
			}
		}
	}
	return n
}

// hasFirst reports whether host stages from a parent holder in the tree
// (else from a window of holders, or the origin).
func (p *StagePlan) hasFirst(host string) bool {
	_, ok := p.first[host]
	return ok
}
