package sim

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// offlineFleet is a fleet whose hosts are never started: tests drive their
// state machines directly, without a coordinator.
func offlineFleet(cfg Config) *Fleet {
	cfg.defaults()
	f := &Fleet{cfg: cfg, log: zerolog.Nop(), ctx: context.Background(), healthy: map[svcVersion]int{}, changed: make(chan struct{})}
	f.failRate.Store(math.Float64bits(cfg.FailRate))
	for i := range cfg.Hosts {
		f.hosts = append(f.hosts, newHost(f, i))
	}
	return f
}

// outcomes assigns v1, v2, v3 and then v1 again to every host, each
// install given time to end, and lists what every host reported.
func outcomes(seed int64) []string {
	f := offlineFleet(Config{Hosts: 60, Seed: seed, FailRate: 0.3, RevertRate: 0.2,
		InstallDelay: time.Second, InstallJitter: time.Second, CheckJitter: time.Second})
	var out []string
	t0 := time.Unix(1_000_000, 0)
	for _, h := range f.hosts {
		for k, v := range []string{"v1", "v2", "v3", "v1"} {
			now := t0.Add(time.Duration(k) * time.Minute)
			h.assign(&v1.Assignment{Service: "web", Generation: int64(k + 1), Release: &v1.Release{Service: "web", Version: v}}, now)
			h.advance(now.Add(10 * time.Second))
			r := h.status["web"]
			out = append(out, fmt.Sprintf("%s %s g%d %s cur=%s good=%s", h.id, v, r.GetGeneration(), r.GetPhase(), r.GetCurrentVersion(), r.GetLastGoodVersion()))
		}
	}
	return out
}

func TestSeedFixesOutcomes(t *testing.T) {
	a, b, c := outcomes(1), outcomes(1), outcomes(2)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave different outcomes")
	}
	if slices.Equal(a, c) {
		t.Fatal("different seeds gave the same outcomes")
	}
	count := map[string]int{}
	for i, line := range a {
		for _, p := range []v1.Phase{v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REVERTED} {
			if strings.Contains(line, " "+p.String()+" ") {
				count[p.String()]++
			}
		}
		// The fourth assignment goes back to v1: a host that ran v1 healthy
		// never fails it.
		if i%4 == 3 && strings.Contains(a[i-3], "PHASE_HEALTHY cur=v1") && !strings.Contains(line, "PHASE_HEALTHY cur=v1") {
			t.Errorf("going back to a known good release failed: %s", line)
		}
	}
	if count["PHASE_HEALTHY"] == 0 || count["PHASE_FAILED"] == 0 || count["PHASE_REVERTED"] == 0 {
		t.Errorf("outcomes %v: want healthy, failed and reverted hosts", count)
	}
}
