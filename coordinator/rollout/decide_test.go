package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

func TestDecide(t *testing.T) {
	rels := []Release{{"v1", 10}, {"v3", 30}, {"v2", 20}} // any order: v3 is the newest
	ro := func(st v1.RolloutState, to string, rollback bool) *v1.Rollout {
		return &v1.Rollout{Id: "000004", State: st, ToVersion: to, Rollback: rollback}
	}
	const (
		waiting = v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL
		unspec  = v1.RolloutState_ROLLOUT_STATE_UNSPECIFIED
		super   = v1.RolloutState_ROLLOUT_STATE_SUPERSEDED
	)
	svc := func(stable string, frozen bool, onNew string) *v1.Service {
		return &v1.Service{Spec: &v1.ServiceSpec{Name: "web", Rollout: &v1.RolloutPolicy{OnNewRelease: onNew}},
			Status: &v1.ServiceStatus{StableVersion: stable, Frozen: frozen, FrozenReason: "canary reverted"}}
	}
	tests := []struct {
		name     string
		svc      *v1.Service
		r        *v1.Rollout
		created  int64
		rels     []Release
		want     Action
		version  string
		reasonIn string
	}{
		{"no release", svc("", false, ""), nil, 0, nil, ActionNone, "", "no release"},
		{"first release", svc("", false, ""), nil, 0, rels, ActionStart, "v3", ""},
		{"no rollout, newest is stable", svc("v3", false, ""), nil, 0, rels, ActionNone, "", "stable"},
		{"newer than the last rollout", svc("v2", false, ""), ro(rOK, "v2", false), 25, rels, ActionStart, "v3", ""},
		{"nothing since the last rollout", svc("v2", false, ""), ro(rOK, "v2", false), 35, rels, ActionNone, "", "no release since rollout 000004"},
		{"failed release not retried", svc("v2", false, ""), ro(rFailed, "v3", false), 35, rels, ActionNone, "", ""},
		{"rollback not undone by an older release", svc("v1", false, ""), ro(rOK, "v1", true), 35, rels, ActionNone, "", ""},
		{"release after a rollback", svc("v1", false, ""), ro(rOK, "v1", true), 25, rels, ActionStart, "v3", ""},
		{"after a supersede the newest starts", svc("v1", false, ""), ro(super, "v2", false), 25, rels, ActionStart, "v3", ""},
		{"frozen: waits for unfreeze", svc("v1", true, ""), ro(rFailed, "v2", false), 25, rels, ActionWait, "v3", "frozen: canary reverted"},
		{"frozen, nothing newer", svc("v1", true, ""), ro(rFailed, "v3", false), 35, rels, ActionNone, "", ""},
		{"waiting for approval: superseded", svc("v1", false, spec.OnNewReleaseQueue), ro(waiting, "v2", false), 25, rels, ActionSupersede, "v3", "superseded by release v3 before approval"},
		{"waiting for approval, newest", svc("v1", false, ""), ro(waiting, "v3", false), 35, rels, ActionNone, "", "is the newest"},
		{"progressing: superseded by default", svc("v1", false, ""), ro(rProg, "v2", false), 25, rels, ActionSupersede, "v3", "superseded by release v3"},
		{"progressing: supersede policy", svc("v1", false, spec.OnNewReleaseSupersede), ro(rProg, "v2", false), 25, rels, ActionSupersede, "v3", ""},
		{"progressing: queue policy", svc("v1", false, spec.OnNewReleaseQueue), ro(rProg, "v2", false), 25, rels, ActionWait, "v3", "queued behind rollout 000004 to v2"},
		{"progressing rollback runs to its end", svc("v1", false, ""), ro(rProg, "v1", true), 25, rels, ActionWait, "v3", "rollback 000004"},
		{"progressing while frozen", svc("v1", true, ""), ro(rProg, "v2", false), 25, rels, ActionWait, "v3", "frozen"},
		{"progressing, newest", svc("v1", false, ""), ro(rProg, "v3", false), 35, rels, ActionNone, "", ""},
		{"odd state waits", svc("v1", false, ""), ro(unspec, "v2", false), 25, rels, ActionWait, "v3", "UNSPECIFIED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := proto.Clone(tt.svc)
			d := Decide(tt.svc, tt.r, tt.created, tt.rels)
			if d.Action != tt.want || d.Version != tt.version || !strings.Contains(d.Reason, tt.reasonIn) {
				t.Errorf("Decide = %v, want %v %q with a reason containing %q", d, tt.want, tt.version, tt.reasonIn)
			}
			if !proto.Equal(before, tt.svc) {
				t.Errorf("Decide mutated the service")
			}
		})
	}
}

func TestBegin(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2}, nil)
	before := proto.Clone(svc)
	r, st, res := Begin(svc, toV, zoned(3, "a"), fleet{}.obs, t0)
	if !proto.Equal(before, svc) {
		t.Fatalf("Begin mutated the service")
	}
	if r.GetId() != "000008" || st.GetRolloutSeq() != 8 || st.GetLastRolloutId() != "000008" || st.GetStableVersion() != fromV {
		t.Errorf("rollout %s, status %v: want id 000008 named by the status, stable unchanged", r.GetId(), st)
	}
	if hostOf(r, "host-000").GetState() != updating || !res.Changed || res.NextWake.IsZero() {
		t.Errorf("canary %v, changed %v, next wake %v: the first Step is taken", hostOf(r, "host-000").GetState(), res.Changed, res.NextWake)
	}
	want := []string{EventRolloutCreated, EventHostAssigned}
	if got := kinds(res.Events); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events %v, want %v", got, want)
	}
	if msg := res.Events[0].Message; msg != "v1 → v2, waves [1 2], progressing" {
		t.Errorf("creation message %q", msg)
	}

	// A rollout over no host ends at once and concludes the status.
	none := newSvc(nil, map[string]string{"role": "db"})
	r, st, res = Begin(none, toV, zoned(3, "a"), nil, t0)
	if r.GetState() != rOK || st.GetStableVersion() != toV || st.GetLastRolloutId() != r.GetId() || len(res.Events) != 1 {
		t.Errorf("no hosts: %v, status %v, events %v", r.GetState(), st, kinds(res.Events))
	}
	// A rollback's creation event says so.
	if r, _, res := BeginRollback(svc, fromV, zoned(8, "a"), nil, t0); !r.GetRollback() || res.Events[0].Kind != EventRollbackCreated || countState(r, updating) != 2 {
		t.Errorf("rollback: rollback=%v events %v updating %d", r.GetRollback(), kinds(res.Events), countState(r, updating))
	}
}

func TestRollbackTarget(t *testing.T) {
	rels := []Release{{"v1", 1}, {"v2", 2}, {"v3", 3}, {"v4", 4}}
	ro := func(to string, st v1.RolloutState) *v1.Rollout {
		return &v1.Rollout{Id: "r-" + to, ToVersion: to, State: st, Reason: "why " + to}
	}
	svc := func(stable string) *v1.Service {
		return &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}, Status: &v1.ServiceStatus{StableVersion: stable}}
	}
	history := []*v1.Rollout{ro("v1", rOK), ro("v2", rOK), ro("v3", rFailed)}
	tests := []struct {
		name      string
		svc       *v1.Service
		rollouts  []*v1.Rollout
		active    *v1.Rollout
		requested string
		want      string
		errIn     string
	}{
		{"default: the good release before the stable one", svc("v2"), history, nil, "", "v1", ""},
		{"default in flight: the stable release", svc("v2"), append(history, ro("v4", rProg)), ro("v4", rProg), "", "v2", ""},
		{"in flight to the stable release: the one before", svc("v2"), append(history, ro("v2", rProg)), ro("v2", rProg), "", "v1", ""},
		{"an ended active rollout is not in flight", svc("v2"), history, ro("v3", rFailed), "", "v1", ""},
		{"requested", svc("v2"), history, nil, "v1", "v1", ""},
		{"no earlier good release", svc("v1"), []*v1.Rollout{ro("v1", rOK)}, nil, "", "", "no earlier good release"},
		{"never released", svc("v2"), history, nil, "v9", "", `no release "v9"`},
		{"already runs", svc("v2"), history, nil, "v2", "", "already runs v2"},
		{"stable while in flight is fine", svc("v2"), append(history, ro("v4", rProg)), ro("v4", rProg), "v2", "v2", ""},
		{"never onto a failed release", svc("v2"), history, nil, "v3", "", "v3 failed in rollout r-v3 (why v3); refusing"},
		{"a release that failed before but succeeded since", svc("v2"), []*v1.Rollout{ro("v3", rFailed), ro("v3", rOK), ro("v2", rOK)}, nil, "v3", "v3", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RollbackTarget(tt.svc, tt.rollouts, tt.active, rels, tt.requested)
			if tt.errIn != "" {
				if !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), tt.errIn) {
					t.Fatalf("RollbackTarget = %q, %v; want ErrRollback containing %q", got, err, tt.errIn)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("RollbackTarget = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// A step that only records progress (hosts' reported phases, hosts done
// while their wave goes on) says so; one that also decides something
// (the canary done, so the next wave starts; the wave's last host done,
// so the rollout succeeds) does not.
func TestStepProgressOnly(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2}, nil)
	r, _, _ := Begin(svc, toV, zoned(3, "a"), fleet{}.obs, t0)
	f := fleet{}
	f.report(r, "host-000", v1.Phase_PHASE_FETCHING, "")
	out, res := step(t, r, f, t0.Add(time.Second))
	if !res.Changed || !res.ProgressOnly || hostOf(out, "host-000").GetPhase() != v1.Phase_PHASE_FETCHING {
		t.Fatalf("phase FETCHING recorded: changed %v, progress only %v, phase %v", res.Changed, res.ProgressOnly, hostOf(out, "host-000").GetPhase())
	}
	f.report(out, "host-000", v1.Phase_PHASE_HEALTHY, "")
	out2, res := step(t, out, f, t0.Add(2*time.Second))
	if !res.Changed || res.ProgressOnly || hostOf(out2, "host-000").GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
		t.Fatalf("canary healthy: changed %v, progress only %v, state %v", res.Changed, res.ProgressOnly, hostOf(out2, "host-000").GetState())
	}
	if _, res := step(t, out2, f, t0.Add(2*time.Second)); res.Changed || res.ProgressOnly {
		t.Fatalf("nothing new: changed %v, progress only %v", res.Changed, res.ProgressOnly)
	}
	// The second wave (host-001 and host-002, both updating): one done is
	// progress only, with its host_done event and the rollout's progress.
	f.report(out2, "host-001", v1.Phase_PHASE_HEALTHY, "")
	t3 := t0.Add(3 * time.Second)
	out3, res := step(t, out2, f, t3)
	if !res.Changed || !res.ProgressOnly || hostOf(out3, "host-001").GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE ||
		!out3.GetLastProgressAt().AsTime().Equal(t3) || len(res.Events) != 1 || res.Events[0].Kind != EventHostDone {
		t.Fatalf("one host of the wave done: changed %v, progress only %v, state %v, last progress %v, events %+v",
			res.Changed, res.ProgressOnly, hostOf(out3, "host-001").GetState(), out3.GetLastProgressAt().AsTime(), res.Events)
	}
	// Not written (the leader defers it): the next step from the same
	// input derives it again, the last host with it, and decides.
	f.report(out2, "host-002", v1.Phase_PHASE_HEALTHY, "")
	out4, res := step(t, out2, f, t0.Add(4*time.Second))
	if !res.Changed || res.ProgressOnly || out4.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || len(res.Events) < 3 {
		t.Fatalf("last host done: changed %v, progress only %v, state %v, events %+v", res.Changed, res.ProgressOnly, out4.GetState(), res.Events)
	}
}

// WithProgress records what a deferred progress-only Step would (hosts
// done, phases) and nothing it would decide (a host failed, a host
// unreachable), so that a rollout ending from its stored copy keeps it.
func TestWithProgress(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 4}, nil)
	r0, _, _ := Begin(svc, toV, zoned(5, "a", "b", "c", "d", "e"), fleet{}.obs, t0)
	f := fleet{}
	f.report(r0, "host-000", v1.Phase_PHASE_HEALTHY, "") // the canary
	r, _ := step(t, r0, f, t0.Add(time.Second/2))
	for _, id := range []string{"host-001", "host-002", "host-003", "host-004"} {
		if st := hostOf(r, id).GetState(); st != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
			t.Fatalf("%s %v after the canary, want updating", id, st)
		}
	}
	f.report(r, "host-001", v1.Phase_PHASE_HEALTHY, "")
	f.report(r, "host-002", v1.Phase_PHASE_CHECKING, "")
	f.report(r, "host-003", v1.Phase_PHASE_FAILED, "boom")
	f["host-004"] = Observation{Connected: false}
	t1 := t0.Add(time.Second)
	before := proto.Clone(r).(*v1.Rollout)
	got, evs := WithProgress(r, f.obs, t1)
	if !proto.Equal(before, r) {
		t.Fatal("WithProgress mutated its input")
	}
	if hostOf(got, "host-001").GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE || !hostOf(got, "host-001").GetDoneAt().AsTime().Equal(t1) ||
		!got.GetLastProgressAt().AsTime().Equal(t1) {
		t.Errorf("host done: %v done at %v, last progress %v", hostOf(got, "host-001").GetState(), hostOf(got, "host-001").GetDoneAt().AsTime(), got.GetLastProgressAt().AsTime())
	}
	if hostOf(got, "host-002").GetPhase() != v1.Phase_PHASE_CHECKING {
		t.Errorf("phase: %v", hostOf(got, "host-002").GetPhase())
	}
	if h := hostOf(got, "host-003"); h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING || got.GetWaves()[1].GetFailures() != 0 {
		t.Errorf("a failure is a decision, not progress: %v, %d failures", h.GetState(), got.GetWaves()[1].GetFailures())
	}
	if hostOf(got, "host-004").GetUnknown() {
		t.Error("an unreachable host is a decision, not progress")
	}
	if len(evs) != 1 || evs[0].Kind != EventHostDone || evs[0].Host != "host-001" {
		t.Errorf("events %+v, want host_done of host-001", evs)
	}
	// An abort from it keeps the host done.
	if out := Fail(got, "aborted", t1); hostOf(out, "host-001").GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
		t.Errorf("aborted: host-001 %v", hostOf(out, "host-001").GetState())
	}
	// Nothing to record: the rollout itself; an ended one is left alone.
	if again, evs := WithProgress(got, f.obs, t1.Add(time.Second)); again != got || len(evs) != 0 {
		t.Errorf("nothing new: changed %v, events %+v", again != got, evs)
	}
	ended := Fail(r, "x", t1)
	if out, evs := WithProgress(ended, f.obs, t1); out != ended || len(evs) != 0 {
		t.Error("an ended rollout got progress")
	}
}
