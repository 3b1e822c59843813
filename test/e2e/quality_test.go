package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// qualitySpec: health checks that a degraded release still passes, and
// analysis rules that catch it: error ratio, p99 latency against 3x the
// baseline, restarts.
const qualitySpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 2s
healthy_deadline: 30s
analysis:
  metrics_url: "http://127.0.0.1:${host.label.port}/metrics"
  interval: 1s
  window: 5s
  watch: 60s
  rules:
    - name: errors
      error_ratio: {metric: http_requests_total, max: 0.05, min_requests: 10}
    - name: latency
      latency: {metric: http_request_duration_seconds, quantile: 0.99, max_seconds: 0.2, min_samples: 10}
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: %s
  progress_deadline: 3m
alerts:
  webhook_url: %q
`

// hook is a webhook receiver that refuses the first `refuse` deliveries.
type hook struct {
	mu     sync.Mutex
	calls  int
	refuse int
	alerts []map[string]any
	ct     string // the last delivery's Content-Type
	srv    *httptest.Server
}

func newHook(t *testing.T, refuse int) *hook {
	h := &hook{refuse: refuse}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.calls++
		if h.calls <= h.refuse {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		var a map[string]any
		h.ct = r.Header.Get("Content-Type")
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &a); err == nil {
			h.alerts = append(h.alerts, a)
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hook) received() []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]map[string]any(nil), h.alerts...)
}

func (h *hook) contentType() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ct
}

// everRan reports which hosts ever ran version.
func (e *env) everRan(version string) []string {
	var out []string
	for _, id := range e.fleet.AgentIDs() {
		if e.ran(id, "web", version) {
			out = append(out, id)
		}
	}
	return out
}

// failsOnCanary releases a degraded version and checks the rollout fails on
// the canary alone, with the reason naming the rule, and the fleet stays on
// `good`.
func (e *env) failsOnCanary(version string, files map[string]string, rule string) *v1.Rollout {
	e.t.Helper()
	if code := e.release("web", version, files); code != 1 {
		e.t.Fatalf("rollout of degraded %s: watch exit %d, want 1: %v", version, code, e.rollout("web"))
	}
	r := e.rollout("web")
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	if !strings.Contains(r.GetReason(), rule) || !strings.Contains(r.GetReason(), canary) {
		e.t.Errorf("%s failure reason does not name the rule %q and the canary %s: %q", version, rule, canary, r.GetReason())
	}
	if ran := e.everRan(version); len(ran) != 1 || ran[0] != canary {
		e.t.Errorf("%s ran on %v, want only the canary %s", version, ran, canary)
	}
	return r
}

func TestQualityGatesRevertOnTheCanaryAndAlert(t *testing.T) {
	h := newHook(t, 2) // the webhook is down for its first two deliveries
	e := newFleetEnv(t, 4)
	e.apply("web", fmt.Sprintf(qualitySpec, "2s", h.srv.URL))
	load := e.fleet.StartLoad(e.ctx, "quality", 1, 50*time.Millisecond)
	defer load.Stop()
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")

	// v2 answers 20% of requests with 500 while /healthz says ok.
	r := e.failsOnCanary("v2", map[string]string{"ERROR_RATE": "0.2"}, "errors")
	e.allOn("v1")
	e.waitFor(60*time.Second, "the alert delivered past the refusals", func() (bool, string) {
		as := h.received()
		return len(as) == 1, fmt.Sprint(as)
	})
	a := h.received()[0]
	if a["rollout_id"] != r.GetId() || a["to_version"] != "v2" || a["frozen"] != true {
		t.Errorf("alert: %v", a)
	}
	svc := e.cli(0, "service", "get", "web").Stdout
	if !strings.Contains(svc, "frozen:") || !strings.Contains(svc, "yes") {
		t.Errorf("service not frozen after the failure:\n%s", svc)
	}

	// v3 is slow (300 ms on every request, p99 limit 200 ms).
	e.cli(0, "service", "unfreeze", "web")
	e.failsOnCanary("v3", map[string]string{"LATENCY": "300ms"}, "latency")
	e.allOn("v1")

	// A good v4 goes out after an unfreeze.
	e.cli(0, "service", "unfreeze", "web")
	if code := e.release("web", "v4", nil); code != 0 {
		t.Fatalf("v4: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v4")
	hist := e.cli(0, "rollout", "history", "web").Stdout
	for _, want := range []string{rollout.EventAlertSent, rollout.EventRolloutFailed, rollout.EventServiceUnfrozen} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %s:\n%s", want, hist)
		}
	}
}

// A release that degrades only after it reported healthy, while a later
// wave bakes: the canary's agent reverts it, the rollout fails, and every
// host that moved goes back to the last good release.
func TestDegradationAfterHealthyFailsTheRollout(t *testing.T) {
	h := newHook(t, 0)
	e := newFleetEnv(t, 4)
	e.apply("web", fmt.Sprintf(qualitySpec, "8s", h.srv.URL))
	load := e.fleet.StartLoad(e.ctx, "quality", 1, 50*time.Millisecond)
	defer load.Stop()
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	// v2 is fine for 12 s, then errors: the canary is healthy and baked
	// (min healthy 2 s + bake 8 s) before it degrades during wave 1.
	if code := e.release("web", "v2", map[string]string{"ERROR_RATE": "0.3", "DEGRADE_AFTER": "12s"}); code != 1 {
		t.Fatalf("v2: watch exit %d, want 1: %v", code, e.rollout("web"))
	}
	r := e.rollout("web")
	canary := r.GetWaves()[0].GetHosts()[0]
	if canary.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED || !strings.Contains(canary.GetReason(), "errors") {
		t.Errorf("canary %s: %v %q", canary.GetHostId(), canary.GetState(), canary.GetReason())
	}
	if r.GetWaves()[0].GetDoneAt() == nil || r.GetWaves()[1].GetStartedAt() == nil {
		t.Errorf("the canary wave never finished before the failure: %v", r.GetWaves())
	}
	e.allOn("v1")
	for _, w := range r.GetWaves()[2:] {
		for _, hp := range w.GetHosts() {
			if e.ran(hp.GetHostId(), "web", "v2") {
				t.Errorf("host %s of a later wave ran v2", hp.GetHostId())
			}
		}
	}
}

const promqlSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 3s
healthy_deadline: 60s
analysis:
  prometheus_url: %q
  interval: 1s
  window: 5s
  watch: 30s
  rules:
    - name: prom-errors
      promql:
        query: '(sum(rate(http_requests_total{instance="127.0.0.1:${host.label.port}",path="/",code=~"5.."}[5s])) or vector(0)) / sum(rate(http_requests_total{instance="127.0.0.1:${host.label.port}",path="/"}[5s]))'
        max: 0.05
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
`

// A PromQL rule, evaluated by the agent against a real Prometheus server
// that scrapes every host's service, reverts a release with errors.
func TestPromQLRuleRevertsTheCanary(t *testing.T) {
	requirePrometheus(t)
	e := newFleetEnv(t, 3)
	var targets []string
	for _, id := range e.fleet.AgentIDs() {
		targets = append(targets, fmt.Sprintf("127.0.0.1:%d", e.fleet.Agents[id].Port))
	}
	prom, promURL, err := startPrometheus(e, targets)
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Stop(10 * time.Second)
	e.apply("web", fmt.Sprintf(promqlSpec, promURL))
	load := e.fleet.StartLoad(e.ctx, "quality", 1, 50*time.Millisecond)
	defer load.Stop()
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.failsOnCanary("v2", map[string]string{"ERROR_RATE": "0.3"}, "prom-errors")
	e.allOn("v1")
}
