package rollout

import (
	"errors"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestPauseStartsNothingNewButCountsFailures(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 2, ProgressDeadline: dur(time.Minute)}, nil)
	f := fleet{}
	r := New("r1", svc, toV, zoned(6), t0)
	r, _ = step(t, r, f, t0)
	if n := countState(r, updating); n != 2 {
		t.Fatalf("%d updating before pause, want 2", n)
	}
	p, err := Pause(r)
	if err != nil || !p.GetPaused() || r.GetPaused() {
		t.Fatalf("Pause: %v %v (input mutated: %v)", p, err, r.GetPaused())
	}
	// The two moving hosts finish; nobody new starts, even long after the
	// progress deadline.
	f.healthyUpdating(p)
	p, _ = step(t, p, f, t0.Add(time.Hour))
	if countState(p, hostDone) != 2 || countState(p, updating) != 0 || p.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Fatalf("paused step: done %d updating %d state %v", countState(p, hostDone), countState(p, updating), p.GetState())
	}
	// A later revert of a done host still fails the rollout while paused.
	f.report(p, "host-000", v1.Phase_PHASE_REVERTED, "metrics worse")
	failed, _ := step(t, p, f, t0.Add(time.Hour))
	if failed.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED {
		t.Fatalf("revert while paused: state %v", failed.GetState())
	}
	// Resume: the deadline starts afresh and the next hosts move.
	delete(f, "host-000")
	f.report(p, "host-000", v1.Phase_PHASE_HEALTHY, "")
	res, err := Resume(p, t0.Add(time.Hour))
	if err != nil || res.GetPaused() {
		t.Fatalf("Resume: %v %v", res, err)
	}
	res, _ = step(t, res, f, t0.Add(time.Hour+time.Second))
	if res.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING || countState(res, updating) != 2 {
		t.Fatalf("after resume: state %v updating %d", res.GetState(), countState(res, updating))
	}
	if _, err := Pause(failed); !errors.Is(err, ErrState) {
		t.Errorf("Pause of a failed rollout: %v", err)
	}
	if _, err := Resume(failed, t0); !errors.Is(err, ErrState) {
		t.Errorf("Resume of a failed rollout: %v", err)
	}
}

func TestRollbackIsFastButPolicyAware(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{Canary: 2, Waves: []uint32{10, 50, 100}, MaxParallel: 1, Bake: dur(time.Minute), Mode: spec.ModeManual}, map[string]string{"role": "web"})
	svc.Status.StableSpec = &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./old"}}}
	hosts := append(zoned(12, "a", "b"), Host{ID: "db-1", Labels: map[string]string{"role": "db"}})
	r := NewRollback("r9", svc, fromV, hosts, t0)
	if !r.GetRollback() || r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Fatalf("rollback: rollback=%v state %v (manual mode must not make it wait)", r.GetRollback(), r.GetState())
	}
	if got := waveSizes(r); len(got) != 1 || got[0] != 12 {
		t.Fatalf("rollback waves %v, want one wave of the 12 selected hosts", got)
	}
	p := r.GetPolicy()
	if p.GetMaxParallel() != 3 || p.GetBake().AsDuration() != 0 || p.GetMaxFailures() != 12 {
		t.Fatalf("rollback policy %v: want max_parallel 3 (a quarter), no bake, budget 12", p)
	}
	if r.GetSpec().GetRun().GetCommand()[0] != "./old" || r.GetSpec().GetSelector()["role"] != "web" {
		t.Fatalf("rollback to the stable release runs with %v, want the stable spec with the live selector", r.GetSpec())
	}
	f := fleet{}
	r, _ = step(t, r, f, t0)
	if n := countState(r, updating); n != 3 {
		t.Fatalf("%d hosts moving at once, want 3", n)
	}
}

func TestApproveEachWave(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: 4, ApproveEachWave: true, ProgressDeadline: dur(time.Minute)}, nil)
	f := fleet{}
	r := New("r1", svc, toV, zoned(4), t0)
	r, _ = step(t, r, f, t0)
	f.healthyUpdating(r)
	r, res := step(t, r, f, t0)
	// The canary is done; wave 1 waits for a person, with no deadline.
	if w := r.GetWaves()[1]; !w.GetWaitingApproval() || w.GetState() != v1.WaveState_WAVE_STATE_PENDING || !hasEvent(res.Events, EventWaveWaitingApproval, "") {
		t.Fatalf("wave 1 after the canary: %v, events %v", w, kinds(res.Events))
	}
	if r2, _ := step(t, r, f, t0.Add(time.Hour)); r2.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING || countState(r2, updating) != 0 {
		t.Fatalf("waiting wave moved or failed: %v", r2.GetState())
	}
	if _, err := Approve(r, 2, t0); !errors.Is(err, ErrState) {
		t.Errorf("approving a wave that does not wait: %v", err)
	}
	a, err := Approve(r, 1, t0.Add(time.Hour))
	if err != nil || !a.GetWaves()[1].GetApproved() || a.GetWaves()[1].GetWaitingApproval() {
		t.Fatalf("approve wave 1: %v %v", a.GetWaves()[1], err)
	}
	a, _ = step(t, a, f, t0.Add(time.Hour))
	if countState(a, updating) != 1 {
		t.Fatalf("after approval %d hosts moving, want wave 1's one host", countState(a, updating))
	}
	// Wave 2 waits too; approve without a number takes whatever waits.
	f.healthyUpdating(a)
	a, _ = step(t, a, f, t0.Add(time.Hour))
	if !a.GetWaves()[2].GetWaitingApproval() {
		t.Fatalf("wave 2 does not wait: %v", a.GetWaves()[2])
	}
	if a, err = Approve(a, 0, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	a, _ = step(t, a, f, t0.Add(2*time.Hour))
	f.healthyUpdating(a)
	a, _ = step(t, a, f, t0.Add(2*time.Hour))
	if a.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout %v, want succeeded", a.GetState())
	}
}
