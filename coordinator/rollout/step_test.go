package rollout

import (
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

const (
	pending   = v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING
	updating  = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	hostDone  = v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
	hostFail  = v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED
	rProg     = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	rOK       = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	rFailed   = v1.RolloutState_ROLLOUT_STATE_FAILED
	wPending  = v1.WaveState_WAVE_STATE_PENDING
	wProg     = v1.WaveState_WAVE_STATE_PROGRESSING
	wBaking   = v1.WaveState_WAVE_STATE_BAKING
	wDone     = v1.WaveState_WAVE_STATE_DONE
	wFailed   = v1.WaveState_WAVE_STATE_FAILED
	pHealthy  = v1.Phase_PHASE_HEALTHY
	pReverted = v1.Phase_PHASE_REVERTED
	pFailed   = v1.Phase_PHASE_FAILED
	pChecking = v1.Phase_PHASE_CHECKING
)

// plan3 is 5 hosts in zone a: canary host-000, wave 1 host-001..002, wave 2
// host-003..004.
func plan3(pol *v1.RolloutPolicy) *v1.Rollout {
	if pol == nil {
		pol = &v1.RolloutPolicy{}
	}
	if len(pol.Waves) == 0 {
		pol.Waves = []uint32{60, 100}
	}
	return New("r1", newSvc(pol, nil), toV, zoned(5, "a"), t0)
}

func TestStepAssignsUpToMaxParallel(t *testing.T) {
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 2, Waves: []uint32{60, 100}}, nil), toV, zoned(5, "a"), t0)
	r, res := step(t, r, fleet{}, t0)
	if !res.Changed {
		t.Fatalf("first Step changed nothing")
	}
	want := []v1.HostRolloutState{updating, updating, pending, pending, pending}
	for i, id := range []string{"host-000", "host-001", "host-002", "host-003", "host-004"} {
		if got := hostOf(r, id).State; got != want[i] {
			t.Errorf("%s = %v, want %v", id, got, want[i])
		}
	}
	if got := kinds(res.Events); !reflect.DeepEqual(got, []string{EventHostAssigned, EventHostAssigned}) {
		t.Errorf("events = %v", got)
	}
	if h := hostOf(r, "host-000"); !h.StartedAt.AsTime().Equal(t0) {
		t.Errorf("started_at = %v", h.StartedAt.AsTime())
	}
	if want := t0.Add(DefaultProgressDeadline); !res.NextWake.Equal(want) {
		t.Errorf("NextWake = %v, want %v (progress deadline)", res.NextWake, want)
	}
	// Nothing new: same pointer, not changed.
	out, res := step(t, r, fleet{}, t0.Add(time.Second))
	if out != r || res.Changed || len(res.Events) != 0 {
		t.Errorf("idle Step changed the rollout: %+v", res)
	}
}

func TestStepHostDoneAndNextAssigned(t *testing.T) {
	r := plan3(nil) // max_parallel 1
	f := fleet{}
	r, _ = step(t, r, f, t0)
	now := t0.Add(time.Minute)
	f.report(r, "host-000", pHealthy, "")
	r, res := step(t, r, f, now)
	h := hostOf(r, "host-000")
	if h.State != hostDone || !h.DoneAt.AsTime().Equal(now) || h.Phase != pHealthy {
		t.Fatalf("canary = %v done_at %v phase %v, want DONE at %v HEALTHY", h.State, h.DoneAt.AsTime(), h.Phase, now)
	}
	if !r.LastProgressAt.AsTime().Equal(now) {
		t.Errorf("last_progress_at = %v, want %v", r.LastProgressAt.AsTime(), now)
	}
	if r.Waves[0].State != wDone || r.Waves[1].State != wProg || !r.Waves[1].StartedAt.AsTime().Equal(now) {
		t.Errorf("waves = %v %v, want DONE PROGRESSING", r.Waves[0].State, r.Waves[1].State)
	}
	if hostOf(r, "host-001").State != updating || hostOf(r, "host-002").State != pending {
		t.Errorf("wave 1 should have exactly host-001 updating")
	}
	want := []string{EventHostDone, EventWaveDone, EventWaveStarted, EventHostAssigned}
	if got := kinds(res.Events); !reflect.DeepEqual(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
}

func TestStepStaleReportsIgnored(t *testing.T) {
	r := plan3(nil)
	r, _ = step(t, r, fleet{}, t0)
	cases := map[string]*v1.ServiceReport{
		"older generation healthy on target":   {Generation: r.Generation - 1, Phase: pHealthy, CurrentVersion: toV},
		"older generation reverted":            {Generation: r.Generation - 1, Phase: pReverted, Reason: "old"},
		"newer generation failed":              {Generation: r.Generation + 1, Phase: pFailed, Reason: "new"},
		"right generation, still old version":  {Generation: r.Generation, Phase: pHealthy, CurrentVersion: fromV},
		"right generation, other service name": {Service: "other", Generation: r.Generation, Phase: pReverted},
	}
	for name, rep := range cases {
		t.Run(name, func(t *testing.T) {
			out, res := step(t, r, fleet{"host-000": {Connected: true, Report: rep}}, t0.Add(time.Second))
			if h := hostOf(out, "host-000"); h.State != updating {
				t.Errorf("host-000 = %v after a stale report, want UPDATING", h.State)
			}
			if hasEvent(res.Events, EventHostDone, "") || hasEvent(res.Events, EventHostFailed, "") {
				t.Errorf("events after a stale report: %v", kinds(res.Events))
			}
		})
	}
}

func TestStepPhaseRecorded(t *testing.T) {
	r := plan3(nil)
	r, _ = step(t, r, fleet{}, t0)
	f := fleet{}
	f.report(r, "host-000", pChecking, "")
	r2, res := step(t, r, f, t0.Add(time.Second))
	if !res.Changed || hostOf(r2, "host-000").Phase != pChecking || hostOf(r2, "host-000").State != updating {
		t.Fatalf("phase not recorded: %v", hostOf(r2, "host-000"))
	}
	if r3, res := step(t, r2, f, t0.Add(2*time.Second)); r3 != r2 || res.Changed {
		t.Errorf("same phase again changed the rollout")
	}
}

func TestStepCanaryFailureFailsRollout(t *testing.T) {
	for _, ph := range []v1.Phase{pReverted, pFailed} {
		t.Run(ph.String(), func(t *testing.T) {
			r := New("r1", newSvc(&v1.RolloutPolicy{Waves: []uint32{100}}, nil), toV,
				[]Host{{ID: "host-a", Labels: map[string]string{"zone": "a"}}, {ID: "host-b", Labels: map[string]string{"zone": "b"}}}, t0)
			r, _ = step(t, r, fleet{}, t0)
			f := fleet{}
			f.report(r, "host-a", ph, `health check "http" failing: connection refused`)
			now := t0.Add(time.Minute)
			r, res := step(t, r, f, now)
			want := `wave 0 (canary): 1 host(s) failed, budget 0: host-a: health check "http" failing: connection refused`
			if r.State != rFailed || r.Reason != want {
				t.Fatalf("state %v reason %q, want FAILED %q", r.State, r.Reason, want)
			}
			if !r.FinishedAt.AsTime().Equal(now) || r.Waves[0].State != wFailed || r.Waves[0].Failures != 1 {
				t.Errorf("finished_at %v wave %v failures %d", r.FinishedAt.AsTime(), r.Waves[0].State, r.Waves[0].Failures)
			}
			if h := hostOf(r, "host-a"); h.State != hostFail || !strings.Contains(h.Reason, "connection refused") {
				t.Errorf("host-a = %v %q", h.State, h.Reason)
			}
			if hostOf(r, "host-b").State != pending || r.Waves[1].State != wPending {
				t.Errorf("wave 1 moved after the canary failed")
			}
			if !hasEvent(res.Events, EventHostFailed, "host-a") || !hasEvent(res.Events, EventRolloutFailed, "") {
				t.Errorf("events = %v", kinds(res.Events))
			}
			if !res.NextWake.IsZero() {
				t.Errorf("NextWake = %v on a failed rollout", res.NextWake)
			}
			// A failed rollout never advances.
			f.report(r, "host-b", pHealthy, "")
			if out, res := step(t, r, f, now.Add(time.Hour)); out != r || res.Changed || len(res.Events) != 0 {
				t.Errorf("Step moved a failed rollout")
			}
		})
	}
}

func TestStepReasonWithoutReportReason(t *testing.T) {
	r := plan3(nil)
	r, _ = step(t, r, fleet{}, t0)
	f := fleet{}
	f.report(r, "host-000", pReverted, "")
	r, _ = step(t, r, f, t0)
	if !strings.Contains(r.Reason, "host-000: phase reverted without a reason") {
		t.Errorf("reason = %q", r.Reason)
	}
}

func TestStepBudgetToleratesFailures(t *testing.T) {
	// No canary, one wave of 4, budget 1, two at a time.
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 2, MaxFailures: 1}, nil), toV, zoned(4, "a"), t0)
	f := fleet{}
	r, _ = step(t, r, f, t0) // 000, 001 updating
	f.report(r, "host-000", pReverted, "crash loop")
	r, res := step(t, r, f, t0.Add(time.Second))
	if r.State != rProg || r.Waves[0].Failures != 1 {
		t.Fatalf("state %v failures %d, want PROGRESSING 1", r.State, r.Waves[0].Failures)
	}
	// The failed host frees its slot: host-002 is assigned in the same Step.
	if hostOf(r, "host-002").State != updating || hostOf(r, "host-003").State != pending {
		t.Errorf("slot of the failed host not reused: 002=%v 003=%v", hostOf(r, "host-002").State, hostOf(r, "host-003").State)
	}
	if !hasEvent(res.Events, EventHostFailed, "host-000") || !hasEvent(res.Events, EventHostAssigned, "host-002") {
		t.Errorf("events = %v", kinds(res.Events))
	}
	f.report(r, "host-001", pHealthy, "")
	f.report(r, "host-002", pHealthy, "")
	r, _ = step(t, r, f, t0.Add(2*time.Second))
	f.report(r, "host-003", pHealthy, "")
	r, res = step(t, r, f, t0.Add(3*time.Second))
	if r.State != rOK || !r.FinishedAt.AsTime().Equal(t0.Add(3*time.Second)) {
		t.Fatalf("state %v, want SUCCEEDED within budget", r.State)
	}
	if !hasEvent(res.Events, EventRolloutSucceeded, "") {
		t.Errorf("events = %v", kinds(res.Events))
	}

	// A second failure in the same wave is over budget.
	r = New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 2, MaxFailures: 1}, nil), toV, zoned(4, "a"), t0)
	f = fleet{}
	r, _ = step(t, r, f, t0)
	f.report(r, "host-000", pReverted, "crash loop")
	f.report(r, "host-001", pFailed, "checksum mismatch")
	r, _ = step(t, r, f, t0.Add(time.Second))
	want := "wave 0: 2 host(s) failed, budget 1: host-000: crash loop; host-001: checksum mismatch"
	if r.State != rFailed || r.Reason != want {
		t.Errorf("state %v reason %q, want FAILED %q", r.State, r.Reason, want)
	}
	if hostOf(r, "host-002").State != pending || hostOf(r, "host-003").State != pending {
		t.Errorf("hosts moved in the failing Step")
	}
}

func TestStepFailedHostFreesSlot(t *testing.T) {
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 1, MaxFailures: 5}, nil), toV, zoned(3, "a"), t0)
	f := fleet{}
	r, _ = step(t, r, f, t0)
	f.report(r, "host-000", pFailed, "disk full")
	r, _ = step(t, r, f, t0)
	if hostOf(r, "host-000").State != hostFail || hostOf(r, "host-001").State != updating || hostOf(r, "host-002").State != pending {
		t.Errorf("states = %v %v %v", hostOf(r, "host-000").State, hostOf(r, "host-001").State, hostOf(r, "host-002").State)
	}
}

func TestStepBakeAndNextWave(t *testing.T) {
	bake := 5 * time.Minute
	r := plan3(&v1.RolloutPolicy{Bake: dur(bake)})
	f := fleet{}
	r, _ = step(t, r, f, t0)
	done := t0.Add(time.Minute)
	f.report(r, "host-000", pHealthy, "")
	r, res := step(t, r, f, done)
	w := r.Waves[0]
	if w.State != wBaking || !w.BakeUntil.AsTime().Equal(done.Add(bake)) {
		t.Fatalf("wave 0 = %v bake_until %v, want BAKING until %v", w.State, w.BakeUntil.AsTime(), done.Add(bake))
	}
	if !res.NextWake.Equal(done.Add(bake)) || !hasEvent(res.Events, EventWaveBaking, "") {
		t.Errorf("NextWake %v events %v", res.NextWake, kinds(res.Events))
	}
	if hostOf(r, "host-001").State != pending {
		t.Fatalf("wave 1 started while wave 0 bakes")
	}
	// Bake longer than nothing happening is no progress-deadline problem,
	// and just before the end nothing moves.
	before := done.Add(bake - time.Nanosecond)
	if out, res := step(t, r, f, before); out != r || res.Changed || !res.NextWake.Equal(done.Add(bake)) {
		t.Fatalf("Step before bake end changed %v NextWake %v", res.Changed, res.NextWake)
	}
	end := done.Add(bake)
	r, res = step(t, r, f, end)
	if r.Waves[0].State != wDone || r.Waves[1].State != wProg || hostOf(r, "host-001").State != updating {
		t.Fatalf("after bake: waves %v %v host-001 %v", r.Waves[0].State, r.Waves[1].State, hostOf(r, "host-001").State)
	}
	if !r.LastProgressAt.AsTime().Equal(end) || !res.NextWake.Equal(end.Add(DefaultProgressDeadline)) {
		t.Errorf("last_progress_at %v NextWake %v: the deadline should restart with the wave", r.LastProgressAt.AsTime(), res.NextWake)
	}
	want := []string{EventWaveDone, EventWaveStarted, EventHostAssigned}
	if got := kinds(res.Events); !reflect.DeepEqual(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
}

func TestStepLastWaveBakesBeforeSuccess(t *testing.T) {
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, Bake: dur(time.Minute)}, nil), toV, zoned(1, "a"), t0)
	f := fleet{}
	r, _ = step(t, r, f, t0)
	f.report(r, "host-000", pHealthy, "")
	r, _ = step(t, r, f, t0)
	if r.State != rProg || r.Waves[0].State != wBaking {
		t.Fatalf("state %v wave %v, want PROGRESSING BAKING", r.State, r.Waves[0].State)
	}
	r, _ = step(t, r, f, t0.Add(time.Minute))
	if r.State != rOK {
		t.Fatalf("state %v after the last bake, want SUCCEEDED", r.State)
	}
}

func TestStepLateRevertFailsDuringBake(t *testing.T) {
	r := plan3(&v1.RolloutPolicy{Bake: dur(time.Minute), MaxParallel: 2})
	f := fleet{}
	now := t0
	r, _ = step(t, r, f, now)
	// Walk canary and wave 1 to done; wave 1 then bakes.
	for r.Waves[1].State != wBaking {
		f.healthyUpdating(r)
		now = now.Add(time.Minute)
		r, _ = step(t, r, f, now)
		if r.State != rProg {
			t.Fatalf("rollout %v: %s", r.State, r.Reason)
		}
	}
	// The canary, done long ago, reverts: its wave's budget is exceeded.
	f.report(r, "host-000", pReverted, "latency p99 worse than baseline")
	r, res := step(t, r, f, now.Add(10*time.Second))
	if r.State != rFailed || r.Waves[0].State != wFailed || r.Waves[0].Failures != 1 {
		t.Fatalf("state %v wave0 %v failures %d, want FAILED", r.State, r.Waves[0].State, r.Waves[0].Failures)
	}
	if !strings.HasPrefix(r.Reason, "wave 0 (canary): 1 host(s) failed, budget 0: host-000: latency") {
		t.Errorf("reason = %q", r.Reason)
	}
	if r.Waves[1].State != wBaking || r.Waves[2].State != wPending || hostOf(r, "host-003").State != pending {
		t.Errorf("later waves moved: %v %v", r.Waves[1].State, r.Waves[2].State)
	}
	for _, e := range res.Events {
		if e.Kind == EventHostFailed && e.Wave != 0 {
			t.Errorf("host_failed event names wave %d, want 0", e.Wave)
		}
	}
}

func TestStepDoneHostRevertWithinBudget(t *testing.T) {
	// Budget 1: a revert of a done host counts but does not fail.
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 2, MaxFailures: 1, Waves: []uint32{50, 100}}, nil), toV, zoned(4, "a"), t0)
	f := fleet{}
	r, _ = step(t, r, f, t0)
	f.healthyUpdating(r)
	r, _ = step(t, r, f, t0)
	if r.Waves[0].State != wDone {
		t.Fatalf("wave 0 = %v", r.Waves[0].State)
	}
	f.report(r, "host-001", pReverted, "crash")
	r, _ = step(t, r, f, t0)
	if r.State != rProg || r.Waves[0].Failures != 1 || hostOf(r, "host-001").State != hostFail || r.Waves[0].State != wDone {
		t.Fatalf("state %v failures %d", r.State, r.Waves[0].Failures)
	}
}

func TestStepProgressDeadline(t *testing.T) {
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 2}, nil), toV, zoned(3, "a"), t0)
	f := fleet{}
	r, _ = step(t, r, f, t0)
	f.report(r, "host-000", pChecking, "")
	f["host-001"] = Observation{Connected: false}
	r, res := step(t, r, f, t0.Add(time.Minute))
	if r.State != rProg || !res.NextWake.Equal(t0.Add(10*time.Minute)) {
		t.Fatalf("state %v NextWake %v", r.State, res.NextWake)
	}
	// Just before the deadline nothing happens.
	if out, res := step(t, r, f, t0.Add(10*time.Minute-time.Nanosecond)); out != r || res.Changed {
		t.Fatalf("Step before the deadline changed the rollout")
	}
	r, res = step(t, r, f, t0.Add(10*time.Minute))
	want := "progress deadline 10m0s exceeded: 2 host(s) updating: host-000 (checking), host-001 (no report yet, unknown)"
	if r.State != rFailed || r.Reason != want {
		t.Fatalf("state %v reason %q, want FAILED %q", r.State, r.Reason, want)
	}
	if r.Waves[0].State != wFailed || hostOf(r, "host-002").State != pending || !hasEvent(res.Events, EventRolloutFailed, "") {
		t.Errorf("wave %v host-002 %v events %v", r.Waves[0].State, hostOf(r, "host-002").State, kinds(res.Events))
	}

	// A custom deadline, and progress pushes it back.
	r = New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, ProgressDeadline: dur(time.Minute)}, nil), toV, zoned(2, "a"), t0)
	f = fleet{}
	r, _ = step(t, r, f, t0)
	f.report(r, "host-000", pHealthy, "")
	r, res = step(t, r, f, t0.Add(50*time.Second))
	if r.State != rProg || !res.NextWake.Equal(t0.Add(110*time.Second)) {
		t.Fatalf("state %v NextWake %v, want deadline pushed to +110s", r.State, res.NextWake)
	}
	r, _ = step(t, r, f, t0.Add(110*time.Second))
	if r.State != rFailed || !strings.HasPrefix(r.Reason, "progress deadline 1m0s exceeded: 1 host(s) updating: host-001") {
		t.Errorf("state %v reason %q", r.State, r.Reason)
	}
}

func TestStepUnknown(t *testing.T) {
	r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 1}, nil), toV, zoned(2, "a"), t0)
	f := fleet{}
	r, _ = step(t, r, f, t0)
	f["host-000"] = Observation{Connected: false}
	r, res := step(t, r, f, t0.Add(time.Second))
	h := hostOf(r, "host-000")
	if !h.Unknown || h.State != updating || r.State != rProg {
		t.Fatalf("host-000 unknown=%v state %v rollout %v", h.Unknown, h.State, r.State)
	}
	if !hasEvent(res.Events, EventHostUnknown, "host-000") {
		t.Errorf("events = %v", kinds(res.Events))
	}
	// Unknown holds its slot: host-001 is not assigned.
	if hostOf(r, "host-001").State != pending {
		t.Errorf("unknown host released its max_parallel slot")
	}
	// Still down: no second event, no change.
	if out, res := step(t, r, f, t0.Add(2*time.Second)); out != r || res.Changed || len(res.Events) != 0 {
		t.Errorf("second Step with the host still down: changed %v events %v", res.Changed, kinds(res.Events))
	}
	// Back, then healthy.
	f["host-000"] = Observation{Connected: true}
	r, res = step(t, r, f, t0.Add(3*time.Second))
	if hostOf(r, "host-000").Unknown || !hasEvent(res.Events, EventHostBack, "host-000") {
		t.Errorf("host not back: %v", kinds(res.Events))
	}
	f.report(r, "host-000", pHealthy, "")
	r, _ = step(t, r, f, t0.Add(4*time.Second))
	if hostOf(r, "host-000").State != hostDone || hostOf(r, "host-001").State != updating {
		t.Errorf("after return: %v %v", hostOf(r, "host-000").State, hostOf(r, "host-001").State)
	}
	// A done host that goes away is marked unknown too, and is not failed.
	f["host-000"] = Observation{Connected: false, Report: f["host-000"].Report}
	r, _ = step(t, r, f, t0.Add(5*time.Second))
	if h := hostOf(r, "host-000"); !h.Unknown || h.State != hostDone {
		t.Errorf("done host down: unknown=%v state %v", h.Unknown, h.State)
	}
	// A report received before the stream dropped still counts.
	f.report(r, "host-001", pHealthy, "")
	f["host-001"] = Observation{Connected: false, Report: f["host-001"].Report}
	r, _ = step(t, r, f, t0.Add(6*time.Second))
	if r.State != rOK {
		t.Errorf("state %v, want SUCCEEDED", r.State)
	}
}

func TestStepUnchangedStates(t *testing.T) {
	base := plan3(nil)
	for _, st := range []v1.RolloutState{
		v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_FAILED,
		v1.RolloutState_ROLLOUT_STATE_SUPERSEDED, v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL,
		v1.RolloutState_ROLLOUT_STATE_UNSPECIFIED,
	} {
		r := proto.Clone(base).(*v1.Rollout)
		r.State = st
		if out, res := step(t, r, fleet{}, t0.Add(time.Hour)); out != r || res.Changed || len(res.Events) != 0 || !res.NextWake.IsZero() {
			t.Errorf("%v: Step changed something: %+v", st, res)
		}
	}
	var nilR *v1.Rollout
	if out, res := Step(nilR, fleet{}.obs, t0); out != nil || res.Changed {
		t.Errorf("Step(nil) = %v %+v", out, res)
	}
}

func TestStepOddRecordsDoNotPanic(t *testing.T) {
	r := plan3(nil)
	r.Policy = nil
	r.LastProgressAt = nil
	r.Waves = append(r.Waves, &v1.Wave{Index: 3, State: wPending}) // empty wave
	out, _ := step(t, r, nil, t0)
	if out.State != rProg || hostOf(out, "host-000").State != updating {
		t.Errorf("state %v", out.State)
	}
	r = plan3(nil)
	r.Waves[1].State = wFailed
	r.Waves[0].State = wDone
	out, _ = step(t, r, fleet{}, t0)
	if out.State != rFailed {
		t.Errorf("a failed wave in a progressing rollout gave %v", out.State)
	}
}

// Gossip is a hint: "dead" marks a host whose stream still looks up unknown
// at once; an alive host with its stream down stays unknown (with a reason
// that says so); no gossip state fails, reverts or moves a host.
func TestStepGossipHint(t *testing.T) {
	tests := []struct {
		name        string
		obs         Observation
		wantUnknown bool
		wantMsg     string
	}{
		{"stream up, gossip alive", Observation{Connected: true, Gossip: "alive"}, false, ""},
		{"stream up, gossip off", Observation{Connected: true}, false, ""},
		{"stream up, gossip suspect", Observation{Connected: true, Gossip: "suspect"}, false, ""},
		{"stream up, gossip dead", Observation{Connected: true, Gossip: "dead"}, true, "gossip says the host is dead"},
		{"stream up, gossip left", Observation{Connected: true, Gossip: "left"}, true, "gossip says the host is left"},
		{"stream down, gossip alive", Observation{Connected: false, Gossip: "alive"}, true, "alive in gossip (reconnecting?)"},
		{"stream down, gossip dead", Observation{Connected: false, Gossip: "dead"}, true, "dead in gossip"},
		{"stream down, gossip off", Observation{Connected: false}, true, "agent stream down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxParallel: 1}, nil), toV, zoned(2, "a"), t0)
			f := fleet{}
			r, _ = step(t, r, f, t0)
			f["host-000"] = tt.obs
			r, res := step(t, r, f, t0.Add(time.Second))
			h := hostOf(r, "host-000")
			if h.Unknown != tt.wantUnknown || h.State != updating || r.State != rProg {
				t.Fatalf("unknown=%v state %v rollout %v; want unknown=%v, still updating and progressing", h.Unknown, h.State, r.State, tt.wantUnknown)
			}
			var msg string
			for _, ev := range res.Events {
				if ev.Kind == EventHostUnknown {
					msg = ev.Message
				}
			}
			if tt.wantUnknown && !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("unknown event %q, want it to contain %q", msg, tt.wantMsg)
			}
			if hostOf(r, "host-001").State != pending {
				t.Errorf("host-001 moved: %v", hostOf(r, "host-001").State)
			}
		})
	}
}
