package e2e

import (
	"strings"
	"testing"
	"time"
)

// compareSpec: the per-host latency rule is a loose safety net (it would
// not fail either release); analysis.compare judges the canary against
// the hosts still on the stable release over the same 2 s windows, on the
// median. The canary wave bakes long enough for every look. The allowed
// increase is +10%: on a busy test machine scheduling delays add to every
// request, so a release 30% slower measures less than +30%.
const compareSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 1s
healthy_deadline: 30s
analysis:
  metrics_url: "http://127.0.0.1:${host.label.port}/metrics"
  interval: 250ms
  window: 2s
  watch: 90s
  rules:
    - name: p50
      latency: {metric: http_request_duration_seconds, quantile: 0.5, max_seconds: 5, min_samples: 10}
  compare: {against: baseline_hosts, windows: 8, min_samples: 20, max_increase: 0.1}
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: 24s
  progress_deadline: 3m
`

// Every release takes 50 ms a request, twice that from 3 requests in
// flight (under load); the slow release takes 2.6 times as long under load:
// 30% slower than the stable release, and only under load. Their latency
// buckets are 1.25x apart (the default ones, 2-2.5x apart, blur a 30%
// change of a quantile: docs/BENCHMARKS.md).
var (
	stableFiles = map[string]string{"LATENCY": "50ms", "LOAD_FACTOR": "3 2", "FINE_BUCKETS": ""}
	slowFiles   = map[string]string{"LATENCY": "50ms", "LOAD_FACTOR": "3 2.6", "FINE_BUCKETS": ""}
)

// TestCompareFailsSlowCanaryNotTheSpike: all hosts see the same traffic
// spike, which doubles every host's latency. A release with the stable
// one's behaviour (A/A) passes the comparison; a release 30% slower under
// load is failed by it, on the canary alone, with a reason that names the
// rule, both groups, the test and the effect size.
func TestCompareFailsSlowCanaryNotTheSpike(t *testing.T) {
	e := newFleetEnv(t, 4)
	e.apply("web", compareSpec)
	base := e.fleet.StartLoad(e.ctx, "base", 1, 50*time.Millisecond)
	defer base.Stop()
	if code := e.release("web", "v1", stableFiles); code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")

	spike := e.fleet.StartLoad(e.ctx, "spike", 5, 10*time.Millisecond)
	defer spike.Stop()

	// A/A: the same behaviour as v1 under another version.
	if code := e.release("web", "v2", stableFiles); code != 0 {
		t.Fatalf("A/A release v2 failed the rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	events := e.cli(0, "events", "web").Stdout
	if !strings.Contains(events, "comparison_judged") || !strings.Contains(events, "Mann-Whitney") {
		t.Errorf("the A/A rollout was not compared (no conclusive look):\n%s", events)
	}
	for _, l := range strings.Split(events, "\n") {
		if strings.Contains(l, "comparison_judged") && strings.Contains(l, "look 8 of 8") {
			t.Logf("A/A, last look: %s", l)
		}
	}

	// 30% slower under load: failed by the comparison on the canary.
	code := e.release("web", "v3", slowFiles)
	r := e.rollout("web")
	if code != 1 {
		t.Fatalf("slow release v3: watch exit %d, want 1: %v", code, r)
	}
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	t.Logf("slow release: %s", r.GetReason())
	for _, want := range []string{"canary worse than baseline hosts", `rule "p50": p50 latency`, "on 1 canary host vs", "baseline hosts", "Mann-Whitney p=", "> allowed +10%"} {
		if !strings.Contains(r.GetReason(), want) {
			t.Errorf("failure reason does not say %q: %s", want, r.GetReason())
		}
	}
	if ran := e.everRan("v3"); len(ran) != 1 || ran[0] != canary {
		t.Errorf("v3 ran on %v, want only the canary %s", ran, canary)
	}
	e.allOn("v2")
}
