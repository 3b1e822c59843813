package rollout

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestScenarioTwoZonesSucceeds walks 10 hosts over 2 zones, canary 1, waves
// [50,100], max_parallel 2, to SUCCEEDED, every updating host becoming
// healthy one Step after it is assigned.
func TestScenarioTwoZonesSucceeds(t *testing.T) {
	var hosts []Host
	for i := range 10 {
		z := "a"
		if i >= 5 {
			z = "b"
		}
		hosts = append(hosts, Host{ID: fmt.Sprintf("%s%d", z, i%5), Labels: map[string]string{"zone": z}})
	}
	pol := &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: 2, Bake: dur(time.Minute)}
	svc := newSvc(pol, nil)
	r := New("r1", svc, toV, hosts, t0)
	wantPlan := [][]string{{"a0"}, {"b0", "a1", "b1", "a2"}, {"b2", "a3", "b3", "a4", "b4"}}
	if got := planIDs(r); !reflect.DeepEqual(got, wantPlan) {
		t.Fatalf("plan = %v, want %v", got, wantPlan)
	}

	f := fleet{}
	now := t0
	var assigned []string
	var waveEvents []string
	for steps := 0; r.State == rProg; steps++ {
		if steps > 100 {
			t.Fatalf("not done after 100 steps: %v", r)
		}
		var res Result
		r, res = step(t, r, f, now)
		for _, e := range res.Events {
			switch e.Kind {
			case EventHostAssigned:
				assigned = append(assigned, e.Host)
			case EventWaveStarted, EventWaveBaking, EventWaveDone:
				waveEvents = append(waveEvents, fmt.Sprintf("%s %d", e.Kind, e.Wave))
			case EventHostFailed, EventRolloutFailed:
				t.Fatalf("unexpected %s: %s", e.Kind, e.Message)
			}
		}
		cur := -1
		for i, w := range r.Waves {
			if w.State != wDone {
				cur = i
				break
			}
		}
		for i, w := range r.Waves {
			n := 0
			for _, h := range w.Hosts {
				if h.State == updating {
					n++
				}
				if h.State != pending && i != cur && w.State != wDone {
					t.Fatalf("host %s of wave %d moved while wave %d is current", h.HostId, i, cur)
				}
			}
			if n > 2 {
				t.Fatalf("wave %d has %d hosts updating, max_parallel 2", i, n)
			}
		}
		f.healthyUpdating(r)
		if !res.NextWake.IsZero() && res.NextWake.After(now) && r.Waves[cur].State == wBaking {
			now = res.NextWake
		} else {
			now = now.Add(10 * time.Second)
		}
	}
	if r.State != rOK {
		t.Fatalf("state %v: %s", r.State, r.Reason)
	}
	var flat []string
	for _, w := range wantPlan {
		flat = append(flat, w...)
	}
	if !reflect.DeepEqual(assigned, flat) {
		t.Errorf("assignment order %v, want plan order %v", assigned, flat)
	}
	wantWave := []string{"wave_baking 0", "wave_done 0", "wave_started 1", "wave_baking 1", "wave_done 1", "wave_started 2", "wave_baking 2", "wave_done 2"}
	if !reflect.DeepEqual(waveEvents, wantWave) {
		t.Errorf("wave events %v, want %v", waveEvents, wantWave)
	}
	st := Conclude(svc.Status, r)
	svc.Status = st
	for _, h := range hosts {
		if v, g, ok := Desired(svc, r, h.ID, h.Labels); !ok || v != toV || g != r.Generation {
			t.Errorf("%s desired (%q, %d, %v) after success", h.ID, v, g, ok)
		}
	}
}

// TestScenarioCanaryReverts: the canary reverts, the rollout fails, no other
// host was ever assigned, and after Conclude every host is told last good
// with a newer generation.
func TestScenarioCanaryReverts(t *testing.T) {
	hosts := zoned(10, "a", "b")
	pol := &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: 2}
	svc := newSvc(pol, nil)
	r := New("r1", svc, toV, hosts, t0)
	f := fleet{}
	now := t0
	everAssigned := map[string]bool{}
	phases := []v1.Phase{v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_STARTING, pChecking, v1.Phase_PHASE_REVERTING, pReverted}
	for i := 0; r.State == rProg; i++ {
		if i > len(phases) {
			t.Fatalf("rollout did not fail: %v", r)
		}
		var res Result
		r, res = step(t, r, f, now)
		for _, e := range res.Events {
			if e.Kind == EventHostAssigned {
				everAssigned[e.Host] = true
			}
		}
		for _, h := range hosts {
			if v, _, _ := Desired(svc, r, h.ID, h.Labels); v == toV && h.ID != "host-000" {
				t.Fatalf("%s was told %s while only the canary may move", h.ID, toV)
			}
		}
		if i < len(phases) {
			f.report(r, "host-000", phases[i], "health check \"http\" failing: 503")
		}
		now = now.Add(20 * time.Second)
	}
	if r.State != rFailed {
		t.Fatalf("state %v", r.State)
	}
	if len(everAssigned) != 1 || !everAssigned["host-000"] {
		t.Errorf("assigned hosts %v, want only the canary host-000", everAssigned)
	}
	if countState(r, pending) != 9 {
		t.Errorf("%d hosts pending, want 9", countState(r, pending))
	}
	st := Conclude(svc.Status, r)
	if !st.Frozen || st.FrozenReason != r.Reason {
		t.Errorf("status not frozen with the reason: %v", st)
	}
	svc.Status = st
	for _, h := range hosts {
		if v, g, ok := Desired(svc, r, h.ID, h.Labels); !ok || v != fromV || g != r.Generation+1 {
			t.Errorf("%s desired (%q, %d, %v), want (%q, %d)", h.ID, v, g, ok, fromV, r.Generation+1)
		}
	}
}
