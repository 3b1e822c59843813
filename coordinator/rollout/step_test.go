package rollout

import (
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

// A failed host's reason is kept in the rollout record clipped to
// maxHostReason (a part of 500 failed hosts stays far under etcd's request
// size); its event keeps the whole reason.
func TestStepClipsStoredReason(t *testing.T) {
	r := plan3(nil)
	r, _ = step(t, r, fleet{}, t0)
	long := strings.Repeat("x", 4000)
	out, res := step(t, r, fleet{"host-000": {Connected: true, Report: &v1.ServiceReport{Generation: r.Generation, Phase: pFailed, Reason: long}}}, t0.Add(time.Second))
	h := hostOf(out, "host-000")
	if h.State != hostFail || len(h.Reason) > maxHostReason+len("…") || !strings.HasPrefix(h.Reason, long[:maxHostReason]) {
		t.Fatalf("host-000: %v with a reason of %d bytes, want FAILED with the first %d", h.State, len(h.Reason), maxHostReason)
	}
	for _, e := range res.Events {
		if e.Kind == EventHostFailed && !strings.Contains(e.Message, long) {
			t.Fatalf("host_failed event lost the whole reason: %d bytes", len(e.Message))
		}
	}
}
