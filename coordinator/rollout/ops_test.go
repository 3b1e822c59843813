package rollout

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestApprove(t *testing.T) {
	r := New("r1", newSvc(&v1.RolloutPolicy{Mode: spec.ModeManual}, nil), toV, zoned(3, "a"), t0)
	before := proto.Clone(r)
	now := t0.Add(time.Hour)
	out, err := Approve(r, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r, before) {
		t.Fatalf("Approve mutated its input")
	}
	if out.State != rProg || out.Waves[0].State != wProg || !out.StartedAt.AsTime().Equal(now) ||
		!out.LastProgressAt.AsTime().Equal(now) || !out.Waves[0].StartedAt.AsTime().Equal(now) {
		t.Fatalf("approved rollout = %v", out)
	}
	out, _ = step(t, out, fleet{}, now)
	if hostOf(out, "host-000").State != updating {
		t.Errorf("canary not assigned after approval")
	}

	for _, bad := range []*v1.Rollout{out, Fail(out, "x", now), nil} {
		_, err := Approve(bad, 0, now)
		if !errors.Is(err, ErrState) {
			t.Errorf("Approve(%v) err = %v, want ErrState", bad.GetState(), err)
		}
		if bad != nil && !strings.Contains(err.Error(), stateName(bad.GetState())) {
			t.Errorf("error %q does not name the state", err)
		}
	}
}

func TestFailAndSupersede(t *testing.T) {
	r := plan3(&v1.RolloutPolicy{MaxParallel: 1})
	r, _ = step(t, r, fleet{}, t0)
	before := proto.Clone(r)
	now := t0.Add(time.Minute)
	out := Fail(r, "aborted by alice", now)
	if !proto.Equal(r, before) {
		t.Fatalf("Fail mutated its input")
	}
	if out.State != rFailed || out.Reason != "aborted by alice" || !out.FinishedAt.AsTime().Equal(now) || out.Waves[0].State != wFailed {
		t.Fatalf("Fail gave %v %q wave %v", out.State, out.Reason, out.Waves[0].State)
	}
	if again := Fail(out, "again", now.Add(time.Minute)); again != out {
		t.Errorf("Fail of a failed rollout changed it")
	}
	if s := Supersede(out, "v3", now); s != out {
		t.Errorf("Supersede of a failed rollout changed it")
	}
	sup := Supersede(r, "replaced by v3", now)
	if sup.State != v1.RolloutState_ROLLOUT_STATE_SUPERSEDED || sup.Reason != "replaced by v3" || !Terminal(sup) {
		t.Errorf("Supersede gave %v", sup.State)
	}
	manual := New("r1", newSvc(&v1.RolloutPolicy{Mode: spec.ModeManual}, nil), toV, zoned(3, "a"), t0)
	if f := Fail(manual, "rejected", now); f.State != rFailed {
		t.Errorf("Fail of a waiting rollout = %v", f.State)
	}
	if Fail(nil, "x", now) != nil {
		t.Errorf("Fail(nil) != nil")
	}
}

func TestDesired(t *testing.T) {
	pol := &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{100}, MaxParallel: 1}
	svc := newSvc(pol, map[string]string{"role": "web"})
	hosts := zoned(3, "a")
	r := New("r1", svc, toV, hosts, t0)
	r, _ = step(t, r, fleet{}, t0) // host-000 UPDATING, others PENDING
	web := map[string]string{"role": "web"}
	db := map[string]string{"role": "db"}
	gen := r.Generation

	healthy := &v1.ServiceReport{Service: "web", Generation: stableGen, Phase: pHealthy, CurrentVersion: fromV}
	removing := &v1.ServiceReport{Service: "web", Generation: 9, Phase: v1.Phase_PHASE_REMOVING}
	removed := &v1.ServiceReport{Service: "web", Generation: 9, Phase: v1.Phase_PHASE_REMOVED}
	// A removal of the service: host-000 reached, the others not yet.
	rmSvc := proto.Clone(svc).(*v1.Service)
	rmSvc.Status.Removing = true
	rm := NewRemoval("r2", rmSvc, hosts, t0)
	rm, _ = step(t, rm, fleet{}, t0)
	deleted := proto.Clone(svc).(*v1.Service)
	deleted.Status = Conclude(rmSvc.Status, end(rm, rOK, "", t0))
	stable, none := Want{Version: fromV, Generation: stableGen}, Want{}
	// Generations no coordinator issued (a compromised one's), and the
	// highest one that one could have.
	madeUp := &v1.ServiceReport{Service: "web", Generation: math.MaxInt64, Phase: pHealthy, CurrentVersion: fromV}
	reach := &v1.ServiceReport{Service: "web", Generation: stableGen + MaxGenerationAhead, Phase: pHealthy, CurrentVersion: fromV}
	beyond := &v1.ServiceReport{Service: "web", Generation: stableGen + MaxGenerationAhead + 1, Phase: pHealthy, CurrentVersion: fromV}
	cases := []struct {
		name   string
		svc    *v1.Service
		r      *v1.Rollout
		host   string
		labels map[string]string
		rep    *v1.ServiceReport
		want   Want
		ok     bool
	}{
		{"moving host gets target", svc, r, "host-000", web, nil, Want{Version: toV, Generation: gen}, true},
		{"in plan, labels changed since", svc, r, "host-000", db, nil, Want{Version: toV, Generation: gen}, true},
		{"pending host gets stable", svc, r, "host-001", web, nil, stable, true},
		{"new host gets stable", svc, r, "host-new", web, nil, stable, true},
		{"unselected host", svc, r, "host-x", db, nil, none, false},
		{"unselected host that has it removes it", svc, r, "host-x", db, healthy, Want{Remove: true, Generation: gen + 1}, true},
		{"unselected host that has it, no rollout", svc, nil, "host-x", db, healthy, Want{Remove: true, Generation: stableGen + 1}, true},
		{"unselected host removing it", svc, r, "host-x", db, removing, Want{Remove: true, Generation: 9}, true},
		{"unselected host that removed it", svc, r, "host-x", db, removed, none, false},
		{"no rollout", svc, nil, "host-000", web, nil, stable, true},
		{"terminal rollout ignored", svc, Fail(r, "x", t0), "host-000", web, nil, stable, true},
		{"nothing released", &v1.Service{Spec: svc.Spec, Status: &v1.ServiceStatus{}}, nil, "host-000", web, nil, none, false},
		{"nil service", nil, nil, "host-000", web, nil, none, false},
		{"removal reached the host", rmSvc, rm, "host-000", web, healthy, Want{Remove: true, Generation: rm.GetGeneration()}, true},
		{"removal not yet at the host", rmSvc, rm, "host-001", web, healthy, stable, true},
		{"removal: a host outside its plan that has it", rmSvc, rm, "host-new", web, healthy, Want{Remove: true, Generation: rm.GetGeneration() + 1}, true},
		{"removal: a host outside its plan without it", rmSvc, rm, "host-new", web, nil, none, false},
		{"failed removal: reached host stays removed", rmSvc, Fail(rm, "x", t0), "host-000", web, removed, Want{Remove: true, Generation: rm.GetGeneration()}, true},
		{"failed removal: the others keep stable", rmSvc, Fail(rm, "x", t0), "host-001", web, healthy, stable, true},
		{"deleted: a host that has it", deleted, end(rm, rOK, "", t0), "host-001", web, healthy, Want{Remove: true, Generation: rm.GetGeneration() + 1}, true},
		{"deleted: a host that removed it", deleted, end(rm, rOK, "", t0), "host-000", web, removed, none, false},
		{"made-up generation: replaced", svc, nil, "host-000", web, madeUp, Want{Version: fromV, Generation: stableGen, Replaces: math.MaxInt64}, true},
		{"made-up generation, moving host: replaced", svc, r, "host-000", web, madeUp, Want{Version: toV, Generation: gen, Replaces: math.MaxInt64}, true},
		{"generation a coordinator could have issued: kept", svc, nil, "host-000", web, reach, stable, true},
		{"generation just beyond: replaced", svc, nil, "host-000", web, beyond, Want{Version: fromV, Generation: stableGen, Replaces: beyond.Generation}, true},
		{"unselected host, made-up generation: removed replacing it", svc, nil, "host-x", db, madeUp, Want{Remove: true, Generation: stableGen + 1, Replaces: math.MaxInt64}, true},
		{"unselected host, generation within reach: removed above it", svc, nil, "host-x", db, reach, Want{Remove: true, Generation: reach.Generation + 1}, true},
		{"deleted: a host with a made-up generation", deleted, end(rm, rOK, "", t0), "host-001", web, madeUp, Want{Remove: true, Generation: rm.GetGeneration() + 1, Replaces: math.MaxInt64}, true},
	}
	for _, c := range cases {
		w, ok := Desired(c.svc, c.r, c.host, c.labels, c.rep)
		if w != c.want || ok != c.ok {
			t.Errorf("%s: Desired = %v, %v; want %v, %v", c.name, w, ok, c.want, c.ok)
		}
		w, ok = DesiredFunc(c.svc, c.r)(c.host, c.labels, c.rep)
		if w != c.want || ok != c.ok {
			t.Errorf("%s: DesiredFunc = %v, %v; want %v, %v", c.name, w, ok, c.want, c.ok)
		}
	}

	// A failed host of a running rollout keeps its target (the agent has
	// already reverted for that generation).
	f := fleet{}
	r2 := New("r1", newSvc(&v1.RolloutPolicy{NoCanary: true, MaxFailures: 1}, nil), toV, hosts, t0)
	r2, _ = step(t, r2, f, t0)
	f.report(r2, "host-000", pReverted, "x")
	r2, _ = step(t, r2, f, t0)
	if w, _ := Desired(svc, r2, "host-000", web, nil); hostOf(r2, "host-000").State != hostFail || w.Version != toV {
		t.Errorf("failed host desired %v", w)
	}
}

func TestConclude(t *testing.T) {
	st := &v1.ServiceStatus{StableVersion: fromV, StableGeneration: stableGen, LastRolloutId: "old", RolloutSeq: 7}
	before := proto.Clone(st)
	r := plan3(nil)
	gen := r.Generation
	r.Id = "r9"

	if got := Conclude(st, r); got != st {
		t.Errorf("Conclude of a running rollout did not return st itself")
	}
	if got := Conclude(st, nil); got != st {
		t.Errorf("Conclude(nil rollout) did not return st itself")
	}

	ok := proto.Clone(r).(*v1.Rollout)
	ok.State = rOK
	got := Conclude(st, ok)
	want := &v1.ServiceStatus{StableVersion: toV, StableGeneration: gen, LastRolloutId: "r9", RolloutSeq: 7, StableSpec: r.GetSpec()}
	if r.GetSpec() == nil {
		t.Fatal("New did not copy the spec into the rollout")
	}
	if !proto.Equal(got, want) {
		t.Errorf("SUCCEEDED: %v, want %v", got, want)
	}
	// The spec the rollout was planned with goes with its target; others run
	// the stable spec (a failed rollout's rollback runs the old spec).
	live := &v1.Service{Spec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./new"}}}, SpecRevision: 9,
		Status: &v1.ServiceStatus{StableSpec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./old"}}}, StableSpecRevision: 3}}
	if s, rev := SpecFor(live, r, toV, gen); !proto.Equal(s, r.GetSpec()) || rev != r.GetSpecRevision() {
		t.Errorf("SpecFor target = %v (revision %d), want the rollout's copy", s, rev)
	}
	if s, rev := SpecFor(live, r, fromV, gen+1); s.GetRun().GetCommand()[0] != "./old" || rev != 3 {
		t.Errorf("SpecFor stable = %v (revision %d), want the stable spec (3)", s, rev)
	}
	live.Status.StableSpec = nil
	if s, rev := SpecFor(live, nil, fromV, 1); s.GetRun().GetCommand()[0] != "./new" || rev != 9 {
		t.Errorf("SpecFor without copies = %v (revision %d), want the live spec (9)", s, rev)
	}

	failed := Fail(r, "wave 0 (canary): boom", t0)
	got = Conclude(st, failed)
	want = &v1.ServiceStatus{StableVersion: fromV, StableGeneration: gen + 1, Frozen: true,
		FrozenReason: "wave 0 (canary): boom", LastRolloutId: "r9", RolloutSeq: 7}
	if !proto.Equal(got, want) {
		t.Errorf("FAILED: %v, want %v", got, want)
	}

	sup := Supersede(r, "v3", t0)
	got = Conclude(st, sup)
	want = &v1.ServiceStatus{StableVersion: fromV, StableGeneration: gen + 1, LastRolloutId: "r9", RolloutSeq: 7}
	if !proto.Equal(got, want) {
		t.Errorf("SUPERSEDED: %v, want %v", got, want)
	}
	if !proto.Equal(st, before) {
		t.Errorf("Conclude mutated st")
	}
	if got := Conclude(nil, ok); got.StableVersion != toV || got.LastRolloutId != "r9" {
		t.Errorf("Conclude(nil st) = %v", got)
	}
	// The next rollout after a failure uses a newer generation still.
	svc := newSvc(nil, nil)
	svc.Status = Conclude(st, failed)
	if next := New("r10", svc, "v3", zoned(2, "a"), t0); next.Generation != gen+2 || next.FromVersion != fromV {
		t.Errorf("next rollout generation %d from %q", next.Generation, next.FromVersion)
	}
}

func TestRestored(t *testing.T) {
	mk := func(from string, states ...v1.HostRolloutState) *v1.Rollout {
		r := &v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_FAILED, FromVersion: from, ToVersion: "v2"}
		w := &v1.Wave{}
		for i, st := range states {
			w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: fmt.Sprintf("h%d", i), State: st})
		}
		r.Waves = []*v1.Wave{w}
		return r
	}
	const (
		pending  = v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING
		updating = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
		failed   = v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED
		done     = v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
	)
	rep := func(cur string, ph v1.Phase) Observation {
		return Observation{Connected: true, Report: &v1.ServiceReport{CurrentVersion: cur, Phase: ph}}
	}
	tests := []struct {
		name string
		r    *v1.Rollout
		obs  map[string]Observation
		want bool
	}{
		{"all moved hosts back on v1", mk("v1", failed, done, pending), map[string]Observation{
			"h0": rep("v1", v1.Phase_PHASE_REVERTED), "h1": rep("v1", v1.Phase_PHASE_HEALTHY)}, true},
		{"pending hosts never moved", mk("v1", failed, pending), map[string]Observation{
			"h0": rep("v1", v1.Phase_PHASE_HEALTHY), "h1": rep("v2", v1.Phase_PHASE_HEALTHY)}, true},
		{"one still on the target", mk("v1", failed, done), map[string]Observation{
			"h0": rep("v1", v1.Phase_PHASE_REVERTED), "h1": rep("v2", v1.Phase_PHASE_HEALTHY)}, false},
		{"one still reverting", mk("v1", failed, updating), map[string]Observation{
			"h0": rep("v1", v1.Phase_PHASE_REVERTED), "h1": rep("v1", v1.Phase_PHASE_REVERTING)}, false},
		{"one unreachable", mk("v1", failed, done), map[string]Observation{
			"h0": rep("v1", v1.Phase_PHASE_REVERTED), "h1": {Connected: false, Report: &v1.ServiceReport{CurrentVersion: "v1", Phase: v1.Phase_PHASE_HEALTHY}}}, false},
		{"on some third release", mk("v1", done), map[string]Observation{"h0": rep("v0", v1.Phase_PHASE_HEALTHY)}, false},
		{"first release failed: anything but the target", mk("", failed), map[string]Observation{"h0": rep("", v1.Phase_PHASE_FAILED)}, true},
		{"no report yet", mk("v1", failed), map[string]Observation{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := func(id string) Observation { return tt.obs[id] }
			if got := Restored(tt.r, obs); got != tt.want {
				t.Errorf("Restored = %v, want %v", got, tt.want)
			}
		})
	}
	ok := mk("v1", failed)
	allBack := func(string) Observation { return rep("v1", v1.Phase_PHASE_HEALTHY) }
	ok.RestoredAt = timestamppb.Now()
	if Restored(ok, allBack) {
		t.Error("a rollout already restored is restored again")
	}
	running := mk("v1", failed)
	running.State = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	if Restored(running, allBack) {
		t.Error("a rollout still progressing counts as restored")
	}
}

// A host a rollout assigns takes the assignment, whatever generation it
// reports: one within reach of the counter is planned over (planAbove),
// any other above the rollout's is replaced, also between the two (found
// by an attack review: a report just beyond reach of the counter, or one
// within reach of a generation another host's report raised the rollout
// to, was neither, and the host refused the rollout's assignment).
func TestRolloutHostsTakeTheirAssignment(t *testing.T) {
	pol := &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{100}, MaxParallel: 10}
	svc := newSvc(pol, map[string]string{"role": "web"})
	hosts := zoned(3, "a")
	web := map[string]string{"role": "web"}
	rep := func(g int64) Observation {
		return Observation{Connected: true, Report: &v1.ServiceReport{Service: "web", Generation: g, Phase: pHealthy, CurrentVersion: fromV}}
	}
	for _, f := range []fleet{
		{"host-000": rep(stableGen + MaxGenerationAhead)},
		{"host-000": rep(stableGen + MaxGenerationAhead + 1)},
		{"host-001": rep(stableGen + MaxGenerationAhead), "host-000": rep(stableGen + MaxGenerationAhead + 500)},
		{"host-000": rep(math.MaxInt64)},
		{"host-000": rep(stableGen - 1)},
	} {
		r, _, _ := Begin(svc, toV, hosts, f.obs, t0)
		for _, h := range hosts {
			rep := f[h.ID].Report
			w, ok := Desired(svc, r, h.ID, web, rep)
			if takes := w.Generation > rep.GetGeneration() || w.Replaces == rep.GetGeneration(); !ok || !takes || w.Version != toV {
				t.Errorf("reports %v: %s (reporting generation %d) is assigned %v, %v: refused as a replay", f, h.ID, rep.GetGeneration(), w, ok)
			}
			if w.Replaces != 0 && w.Replaces <= w.Generation {
				t.Errorf("%s is assigned %v: replaces a generation not above its own", h.ID, w)
			}
		}
	}
}
