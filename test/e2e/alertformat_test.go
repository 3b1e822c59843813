package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// slackSpec: alerts in Slack's format for every rollout's end.
const slackSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms, timeout: 1s}
min_healthy_time: 1s
healthy_deadline: 6s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
  progress_deadline: 2m
alerts:
  webhook_url: %q
  format: slack
  min_severity: info
`

// A Slack-format webhook gets one message per rollout's end with
// min_severity info: the success of v1, then the failure of a broken v2
// naming its failed host, as {"text": ...} with Content-Type JSON.
func TestSlackAlertsForEveryRollout(t *testing.T) {
	h := newHook(t, 0)
	e := newFleetEnv(t, 2)
	// A template that does not run on an alert is refused at apply.
	bad := strings.Replace(fmt.Sprintf(slackSpec, h.srv.URL), "format: slack", "format: template\n  template: '{{.Nope}}'", 1)
	badPath := filepath.Join(e.dir, "bad.yaml")
	if err := os.WriteFile(badPath, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.fleet.CLI(e.ctx, "service", "apply", "-f", badPath)
	if r.Code == 0 {
		t.Fatal("a spec with a bad template was applied")
	}
	if !strings.Contains(r.Stderr, "alerts.template") || !strings.Contains(r.Stderr, "Nope") {
		t.Errorf("bad template: %s", r.Stderr)
	}

	e.apply("web", fmt.Sprintf(slackSpec, h.srv.URL))
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	if code := e.release("web", "v2", map[string]string{"FAIL_HEALTH": "1"}); code == 0 {
		t.Fatal("broken v2 reported success")
	}
	canary := e.rollout("web").GetWaves()[0].GetHosts()[0].GetHostId()
	e.waitFor(60*time.Second, "two Slack messages", func() (bool, string) {
		as := h.received()
		return len(as) == 2, fmt.Sprint(as)
	})
	as := h.received()
	ok, failed := as[0]["text"].(string), as[1]["text"].(string)
	if len(as[0]) != 1 || !strings.HasPrefix(ok, ":white_check_mark: *web*: rollout 000001 ((none) → v1) succeeded") {
		t.Errorf("success message: %v", as[0])
	}
	if !strings.HasPrefix(failed, ":red_circle: *web*: rollout 000002 (v1 → v2) FAILED: ") || !strings.Contains(failed, "*Failed hosts:*\n• `"+canary+"`: ") ||
		!strings.Contains(failed, "fleetwave service unfreeze web") {
		t.Errorf("failure message: %q", failed)
	}
	if ct := h.contentType(); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	b, _ := json.Marshal(as)
	t.Logf("received: %s", b)
}
