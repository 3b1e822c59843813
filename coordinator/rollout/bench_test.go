package rollout

import (
	"fmt"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// bench10k returns a rollout over 10,000 hosts in 4 zones, all of them
// assigned (one wave, max_parallel 10,000), and observations where every
// host reports phase for the rollout's generation.
func bench10k(b *testing.B, phase v1.Phase) (*v1.Rollout, func(string) Observation) {
	b.Helper()
	hosts := make([]Host, 10_000)
	for i := range hosts {
		hosts[i] = Host{ID: fmt.Sprintf("host-%05d", i), Labels: map[string]string{ZoneLabel: string(rune('a' + i%4))}}
	}
	pol := &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{100}, MaxParallel: 10_000}
	r := New("r1", newSvc(pol, nil), toV, hosts, t0)
	r, res := Step(r, nil, t0)
	if countState(r, updating) != len(hosts) || !res.Changed {
		b.Fatalf("setup: %d hosts updating", countState(r, updating))
	}
	cur := fromV
	if phase == pHealthy {
		cur = toV
	}
	rep := &v1.ServiceReport{Service: r.Service, Generation: r.Generation, Phase: phase, CurrentVersion: cur}
	return r, func(string) Observation { return Observation{Connected: true, Report: rep} }
}

// BenchmarkStep10k is one Step with 10,000 hosts all reporting healthy:
// every host becomes done and the rollout succeeds.
func BenchmarkStep10k(b *testing.B) {
	r, obs := bench10k(b, pHealthy)
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		out, _ := Step(r, obs, now)
		if out.State != rOK {
			b.Fatalf("state %v", out.State)
		}
	}
}

// BenchmarkStep10kNoChange is one Step with 10,000 hosts whose reports
// change nothing (the common case between transitions): no clone.
func BenchmarkStep10kNoChange(b *testing.B) {
	r, obs := bench10k(b, pChecking)
	r, _ = Step(r, obs, t0) // record the phase once
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		out, res := Step(r, obs, now)
		if res.Changed || out != r {
			b.Fatalf("changed")
		}
	}
}

// BenchmarkStep10kSome is one Step with 10,000 hosts of which 500 report
// healthy (the rest checking, recorded): a step during a wave, progress
// only. Copy on write copies those 500 hosts, not the rollout.
func BenchmarkStep10kSome(b *testing.B) {
	r, checking := bench10k(b, pChecking)
	r, _ = Step(r, checking, t0) // record the phase once
	healthy := &v1.ServiceReport{Service: r.Service, Generation: r.Generation, Phase: pHealthy, CurrentVersion: toV}
	ok := map[string]bool{}
	for i := 0; i < 10_000; i += 20 {
		ok[fmt.Sprintf("host-%05d", i)] = true
	}
	obs := func(id string) Observation {
		if ok[id] {
			return Observation{Connected: true, Report: healthy}
		}
		return checking(id)
	}
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		out, res := Step(r, obs, now)
		if !res.ProgressOnly || countState(out, v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE) != 500 {
			b.Fatalf("progress only %v, %d done", res.ProgressOnly, countState(out, v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE))
		}
	}
}
