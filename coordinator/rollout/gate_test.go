package rollout

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestPreviewAgreesWithBegin: the plan a preview shows is the plan the
// rollout started right after it has (same hosts, same spec), whatever the
// fleet and the policy.
func TestPreviewAgreesWithBegin(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 18))
		hosts := zoned(rng.IntN(30), []string{"a", "b", "c"}[:rng.IntN(4)]...)
		pol := &v1.RolloutPolicy{Canary: uint32(rng.IntN(3)), NoCanary: rng.IntN(4) == 0, MaxParallel: uint32(rng.IntN(4))}
		for p := uint32(0); p < 100 && rng.IntN(3) > 0; {
			p += 1 + uint32(rng.IntN(60))
			pol.Waves = append(pol.Waves, min(p, 100))
		}
		svc := newSvc(pol, map[string]string{"role": "web"})
		f := fleet{}
		for _, h := range hosts {
			if rng.IntN(5) == 0 {
				f[h.ID] = Observation{}
			}
		}
		p := Preview(svc, toV, hosts, f.obs, Decision{Action: ActionStart, Version: toV}, Hold{}, t0)
		r, _, _ := Begin(svc, toV, hosts, f.obs, t0)
		if fmt.Sprint(planIDs(p.Rollout)) != fmt.Sprint(planIDs(r)) || p.Rollout.GetId() != r.GetId() || p.Rollout.GetGeneration() != r.GetGeneration() {
			t.Fatalf("seed %d: preview %s %v gen %d, rollout %s %v gen %d", seed, p.Rollout.GetId(), planIDs(p.Rollout), p.Rollout.GetGeneration(), r.GetId(), planIDs(r), r.GetGeneration())
		}
		for _, id := range p.Unknown {
			if f.obs(id).Connected {
				t.Fatalf("seed %d: %s is connected but previewed as unknown", seed, id)
			}
		}
	}
}

// TestRollbackNotHeld: a rollback is an operator's repair: a blackout
// does not hold its waves.
func TestRollbackNotHeld(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{MaxParallel: 1}, nil)
	hosts := zoned(8)
	r := NewRollback("000001", svc, "v0", hosts, t0)
	f := fleet{}
	r, _ = StepHeld(r, f.obs, t0, "blackout b1")
	if r.GetHeld() != "" || countState(r, v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING) == 0 {
		t.Fatalf("rollback held: %q, %d updating", r.GetHeld(), countState(r, v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING))
	}
}

// TestGatedHoldsWhatChangesHosts: a hold turns start, supersede and leave
// into a wait with its reason and leaves the rest alone.
func TestGatedHoldsWhatChangesHosts(t *testing.T) {
	h := Hold{Clock: "blackout b1 until then: why"}
	for _, a := range []Action{ActionStart, ActionSupersede, ActionLeave} {
		if g := Gated(Decision{Action: a, Version: "v2"}, h); g.Action != ActionWait || g.Reason != h.Clock || g.Version != "v2" {
			t.Errorf("Gated(%s) = %s", a, g)
		}
	}
	for _, a := range []Action{ActionNone, ActionWait, ActionRecordSpec} {
		if g := Gated(Decision{Action: a, Reason: "x"}, h); g.Action != a || g.Reason != "x" {
			t.Errorf("Gated(%s) = %s", a, g)
		}
	}
}

// TestHoldingBlackouts: a blackout holds from its start (inclusive) to its
// end (exclusive), and wakes the caller at each.
func TestHoldingBlackouts(t *testing.T) {
	svc := newSvc(nil, nil)
	b := &v1.Blackout{Id: "b1", From: timestamppb.New(t0.Add(time.Hour)), To: timestamppb.New(t0.Add(2 * time.Hour)), Reason: "close"}
	g := Gates{Blackouts: []*v1.Blackout{b}}
	for _, c := range []struct {
		at   time.Duration
		held bool
		wake time.Duration
	}{{0, false, time.Hour}, {time.Hour, true, 2 * time.Hour}, {2 * time.Hour, false, -1}} {
		h := Holding(svc, g, toV, t0.Add(c.at))
		wantWake := time.Time{}
		if c.wake >= 0 {
			wantWake = t0.Add(c.wake)
		}
		if (h.Clock != "") != c.held || !h.Wake.Equal(wantWake) {
			t.Errorf("at +%s: hold %q wake %s, want held %v wake %s", c.at, h.Clock, h.Wake, c.held, wantWake)
		}
	}
	// An override for the release lifts it; for another it does not.
	svc.Status = proto.Clone(svc.GetStatus()).(*v1.ServiceStatus)
	svc.Status.HoldOverride = &v1.HoldOverride{Version: toV, Reason: "fix"}
	if h := Holding(svc, g, toV, t0.Add(time.Hour)); h.Reason() != "" {
		t.Errorf("overridden %s still held: %s", toV, h.Reason())
	}
	if h := Holding(svc, g, "v3", t0.Add(time.Hour)); h.Reason() == "" {
		t.Errorf("v3 not held although the override names %s", toV)
	}
}

func TestOverrideRefusals(t *testing.T) {
	svc := newSvc(nil, nil)
	for _, c := range []struct{ version, reason, want string }{
		{toV, "", "reason: must be set"},
		{toV, string(make([]byte, MaxOverrideReason+1)), fmt.Sprintf("reason: %d bytes, more than %d", MaxOverrideReason+1, MaxOverrideReason)},
		{"", "why", "service: web has no release"},
	} {
		if _, err := Override(svc, c.version, c.reason, "admin", t0); err == nil || err.Error()[:len(c.want)] != c.want {
			t.Errorf("Override(%q, %d bytes) = %v, want %q", c.version, len(c.reason), err, c.want)
		}
	}
}

func TestAfterCycle(t *testing.T) {
	others := map[string][]string{"api": {"db"}, "db": {"cache"}, "cache": nil, "jobs": {"web"}}
	if c := AfterCycle("web", []string{"api"}, others); c != nil {
		t.Errorf("web after api: cycle %v", c)
	}
	if c := AfterCycle("cache", []string{"web", "api"}, others); fmt.Sprint(c) != "[cache api db cache]" {
		t.Errorf("cache after web, api: cycle %v, want [cache api db cache]", c)
	}
	if c := AfterCycle("web", []string{"jobs"}, others); fmt.Sprint(c) != "[web jobs web]" {
		t.Errorf("web after jobs: cycle %v", c)
	}
}

// TestHoldingAfterCycle: a cycle of rollout.after that apply could not
// refuse (two specs applied at the same time) holds with a reason naming
// it and what to do, not "waits ... no rollout yet" forever; the
// override lets the release through.
func TestHoldingAfterCycle(t *testing.T) {
	svc := newSvc(nil, nil)
	svc.Spec.Rollout = &v1.RolloutPolicy{After: []string{"api"}}
	g := Gates{Upstream: map[string]*v1.Rollout{"api": nil}, Cycle: []string{"web", "api", "web"}}
	h := Holding(svc, g, toV, t0)
	want := "rollout.after closes a cycle: web → api → web (specs applied at the same time): apply one of them without it, or fleetwave rollout override; waits for service api (after): it has no rollout yet"
	if h.After != want || h.Clock != "" {
		t.Errorf("Holding with a cycle: after %q clock %q, want after %q", h.After, h.Clock, want)
	}
	o, err := Override(svc, toV, "break the cycle", "admin", t0)
	if err != nil {
		t.Fatal(err)
	}
	svc.Status = &v1.ServiceStatus{HoldOverride: o}
	if h := Holding(svc, g, toV, t0); h.Reason() != "" {
		t.Errorf("the override does not lift the cycle: %q", h.Reason())
	}
}

// TestAfterUpstreamRolledBack: an upstream whose newest rollout is a
// rollback that succeeded (an operator undid its release) holds the
// service: the order is about the upstream's release rolling out, and
// "succeeded" would otherwise let web's v2 out on top of api's v1.
func TestAfterUpstreamRolledBack(t *testing.T) {
	svc := newSvc(nil, nil)
	svc.Spec.Rollout = &v1.RolloutPolicy{After: []string{"api"}}
	back := &v1.Rollout{Id: "000005", Service: "api", ToVersion: "a1", Rollback: true, State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED}
	h := Holding(svc, Gates{Upstream: map[string]*v1.Rollout{"api": back}}, toV, t0)
	want := "held by service api (after): its newest rollout 000005 rolled it back to a1; a rollout of api must succeed first"
	if h.After != want {
		t.Errorf("upstream rolled back: after %q, want %q", h.After, want)
	}
	back.Rollback = false
	if h := Holding(svc, Gates{Upstream: map[string]*v1.Rollout{"api": back}}, toV, t0); h.After != "" {
		t.Errorf("upstream succeeded: after %q, want none", h.After)
	}
}

// TestHoldingWindowsFromGates: the engine evaluates the windows the caller
// parsed (Gates.Windows) and resolves no time zone itself (the purity
// check forbids spec.ParseWindow(s) and time.LoadLocation here). Windows
// the caller did not parse hold rather than roll out unwindowed, and a
// parse error holds with it.
func TestHoldingWindowsFromGates(t *testing.T) {
	win := &v1.DeployWindow{Days: "wed", Start: "06:00", End: "07:00", TimeZone: "Europe/Berlin"}
	svc := newSvc(&v1.RolloutPolicy{Windows: []*v1.DeployWindow{win}}, nil)
	ws, err := spec.ParseWindows(svc.GetSpec().GetRollout().GetWindows())
	if err != nil {
		t.Fatal(err)
	}
	g := Gates{Windows: ws}
	// t0 is Wednesday 05:06:07 UTC, 06:06:07 in Berlin (CET): open.
	if h := Holding(svc, g, toV, t0); h.Clock != "" || !h.Wake.Equal(time.Date(2026, 3, 4, 6, 0, 0, 0, time.UTC)) {
		t.Errorf("inside the window: clock %q, wake %s", h.Clock, h.Wake)
	}
	if h := Holding(svc, g, toV, t0.Add(time.Hour)); !strings.Contains(h.Clock, "outside the deploy windows (wed 06:00-07:00 Europe/Berlin); next opens 2026-03-11T05:00:00Z") {
		t.Errorf("after the window: clock %q", h.Clock)
	}
	if h := Holding(svc, Gates{}, toV, t0); h.Clock != "deploy windows not parsed: the spec has 1, the gates 0" {
		t.Errorf("windows not parsed: clock %q", h.Clock)
	}
	bad := Gates{WindowsErr: errors.New(`rollout.windows[0].time_zone: "Mars/Olympus" is not an IANA time zone`)}
	if h := Holding(svc, bad, toV, t0); h.Clock != `deploy windows unreadable: rollout.windows[0].time_zone: "Mars/Olympus" is not an IANA time zone` {
		t.Errorf("windows unreadable: clock %q", h.Clock)
	}
}
