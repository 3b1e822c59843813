package e2e

import (
	"context"
	"fmt"
	"github.com/fleetwave/fleetwave/internal/testkit/promcheck"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleetwave/fleetwave/agent/analysis/fetch"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// promtool lints the exposition served at url.
func promtool(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	body, code, err := testfleet.HTTPGet(ctx, url)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, code, err)
	}
	promcheck.Check(t, []byte(body))
}

// After a few rollouts with the real binaries: fleetwave stats shows the
// expected counts and plausible durations, the event stream has them, and
// both /metrics endpoints pass promtool and are scraped by a real
// Prometheus.
func TestStatsEventsAndMetrics(t *testing.T) {
	requirePrometheus(t)
	e := newEnv(t, 3, "web", "1s")
	start := time.Now()

	// Follow the event stream from the start, as a person would.
	evFile := filepath.Join(e.dir, "events.jsonl")
	out, err := os.Create(evFile)
	if err != nil {
		t.Fatal(err)
	}
	follow := exec.CommandContext(e.ctx, bins.CLI, append(append([]string{"--coordinator", e.fleet.Addr}, e.fleet.CLIFlags()...), "-o", "json", "events", "web", "--follow")...)
	follow.Stdout, follow.Stderr = out, out
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill(); _ = follow.Wait(); out.Close() })

	commit := func(v string, ago time.Duration) []string {
		return []string{"--commit", "c0ffee" + v, "--commit-time", start.Add(-ago).UTC().Format(time.RFC3339)}
	}
	for _, r := range []struct {
		version string
		ago     time.Duration
		extra   map[string]string
		want    int
	}{
		{"v1", 2 * time.Hour, nil, 0},
		{"v2", 30 * time.Minute, nil, 0},
		{"v3", 10 * time.Minute, map[string]string{"FAIL_HEALTH": "1"}, 1},
	} {
		args := append([]string{"release", "create", "web", "--version", r.version, "--artifact", e.artifact(r.version, r.extra)}, commit(r.version, r.ago)...)
		e.cli(0, args...)
		if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != r.want {
			t.Fatalf("rollout of %s: watch exit %d, want %d", r.version, code, r.want)
		}
	}
	e.allOn("v2")
	// The failed rollout records when every host was back on v2.
	e.waitFor(30*time.Second, "restored_at recorded", func() (bool, string) {
		r := e.rollout("web")
		return r.GetRestoredAt() != nil, fmt.Sprintf("%s %v", r.GetState(), r.GetRestoredAt())
	})

	res := e.cli(0, "stats", "web", "-o", "json")
	var st v1.GetStatsResponse
	if err := protojson.Unmarshal([]byte(res.Stdout), &st); err != nil {
		t.Fatalf("stats json: %v\n%s", err, res.Stdout)
	}
	if len(st.GetServices()) != 1 {
		t.Fatalf("stats for %d services: %s", len(st.GetServices()), res.Stdout)
	}
	s := st.GetServices()[0]
	if s.GetSucceeded() != 2 || s.GetFailed() != 1 || s.GetRolledBack() != 0 {
		t.Errorf("counts: succeeded %d failed %d rolled back %d, want 2, 1, 0", s.GetSucceeded(), s.GetFailed(), s.GetRolledBack())
	}
	if r := s.GetChangeFailureRate(); r < 0.33 || r > 0.34 {
		t.Errorf("change failure rate %.3f, want 1/3", r)
	}
	lt := s.GetLeadTime()
	elapsed := time.Since(start)
	// Lead times: about 30 min and 2 h plus the rollouts' own time.
	if lt.GetCount() != 2 || lt.GetMedian().AsDuration() < 30*time.Minute || lt.GetMedian().AsDuration() > 30*time.Minute+elapsed ||
		lt.GetP90().AsDuration() < 2*time.Hour || lt.GetP90().AsDuration() > 2*time.Hour+elapsed {
		t.Errorf("lead time %v (elapsed %s)", lt, elapsed)
	}
	if ro := s.GetRollout(); ro.GetCount() != 2 || ro.GetMedian().AsDuration() <= 0 || ro.GetMedian().AsDuration() > elapsed {
		t.Errorf("rollout durations %v", ro)
	}
	if ttr := s.GetTimeToRestore(); ttr.GetCount() != 1 || ttr.GetMedian().AsDuration() <= 0 || ttr.GetMedian().AsDuration() > elapsed {
		t.Errorf("time to restore %v", ttr)
	}
	if s.GetLeadTimeBand() != "elite" || s.GetOverallBand() == "" { // median of {30m, 2h} by nearest rank is 30m
		t.Errorf("bands: lead time %q overall %q", s.GetLeadTimeBand(), s.GetOverallBand())
	}
	table := e.cli(0, "stats", "web").Stdout
	for _, want := range []string{"lead time", "change failure rate", "33.3%", "time to restore"} {
		if !strings.Contains(table, want) {
			t.Errorf("stats table lacks %q:\n%s", want, table)
		}
	}
	t.Logf("fleetwave stats web:\n%s", table)

	// The followed stream saw every rollout's creation and end, in order.
	e.waitFor(15*time.Second, "followed events", func() (bool, string) {
		b, _ := os.ReadFile(evFile)
		return strings.Count(string(b), `"kind":"rollout_succeeded"`) == 2 && strings.Contains(string(b), `"kind":"fleet_restored"`), string(b)
	})
	b, _ := os.ReadFile(evFile)
	var kinds []string
	var last int64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m v1.WatchEventsResponse
		if err := protojson.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("event line %q: %v", line, err)
		}
		if m.GetRevision() < last {
			t.Errorf("revision %d after %d", m.GetRevision(), last)
		}
		last = m.GetRevision()
		kinds = append(kinds, m.GetEvent().GetKind())
	}
	joined := strings.Join(kinds, " ")
	for _, want := range []string{rollout.EventRolloutCreated, rollout.EventWaveStarted, rollout.EventHostDone, rollout.EventWaveDone,
		rollout.EventRolloutSucceeded, rollout.EventHostFailed, rollout.EventRolloutFailed, rollout.EventFleetRestored} {
		if !strings.Contains(joined, want) {
			t.Errorf("event stream lacks %s: %s", want, joined)
		}
	}
	if i, j := strings.Index(joined, rollout.EventRolloutFailed), strings.Index(joined, rollout.EventFleetRestored); i < 0 || j < i {
		t.Errorf("fleet_restored before rollout_failed: %s", joined)
	}

	// Metrics: valid exposition on both, and a real Prometheus scrapes them.
	targets := []string{e.fleet.MetricsAddr}
	for _, id := range e.fleet.AgentIDs() {
		targets = append(targets, e.fleet.Agents[id].MetricsAddr)
	}
	for _, t0 := range targets {
		promtool(t, e.ctx, "http://"+t0+"/metrics")
	}
	prom, promURL, err := startPrometheus(e, targets)
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Stop(10 * time.Second)
	client := &http.Client{Timeout: 5 * time.Second}
	queries := map[string]float64{
		`sum(fleetwave_coordinator_rollouts_total{service="web",result="succeeded"})`:  2,
		`sum(fleetwave_coordinator_rollouts_total{service="web",result="failed"})`:     1,
		`sum(fleetwave_coordinator_connected_agents)`:                                  3,
		`sum(fleetwave_coordinator_hosts{service="web",version="v2",phase="healthy"})`: 3,
		`count(fleetwave_agent_phase{service="web",phase="healthy"} == 1)`:             3,
		`sum(fleetwave_coordinator_lead_time_seconds_count{service="web"})`:            2,
	}
	for q, want := range queries {
		err := testfleet.WaitFor(e.ctx, 60*time.Second, "prometheus: "+q, func() (bool, string) {
			v, ok, err := fetch.QueryPromQL(e.ctx, client, promURL, q)
			if err != nil || !ok {
				return false, fmt.Sprintf("ok=%v err=%v", ok, err)
			}
			return v == want, fmt.Sprintf("%v, want %v", v, want)
		})
		if err != nil {
			t.Errorf("%v\n%s", err, prom.Tail(2000))
		}
	}
	// The canary that reverted v3 counted the revert.
	err = testfleet.WaitFor(e.ctx, 30*time.Second, "agent revert counted", func() (bool, string) {
		v, ok, err := fetch.QueryPromQL(e.ctx, client, promURL, `sum(fleetwave_agent_reverts_total{service="web"})`)
		return err == nil && ok && v >= 1, fmt.Sprintf("%v ok=%v err=%v", v, ok, err)
	})
	if err != nil {
		t.Error(err)
	}
}
