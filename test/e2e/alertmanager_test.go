package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/fleetwave/fleetwave/coordinator"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// alertSpec: a long bake keeps the rollout in flight; the policy names the
// alert that stops it.
const alertSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 1s
healthy_deadline: 10s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
  bake: %s
  progress_deadline: 2m
  abort_on_alerts: [HighErrorRate]
`

// amPayload is an Alertmanager webhook notification (payload version 4)
// as Alertmanager sends it, with one alert of each labels given.
func amPayload(version, status string, alerts ...map[string]string) []byte {
	type alert struct {
		Status       string            `json:"status"`
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations"`
		StartsAt     time.Time         `json:"startsAt"`
		EndsAt       time.Time         `json:"endsAt"`
		GeneratorURL string            `json:"generatorURL"`
		Fingerprint  string            `json:"fingerprint"`
	}
	p := map[string]any{"version": version, "groupKey": `{}:{alertname="HighErrorRate"}`, "truncatedAlerts": 0, "status": status,
		"receiver": "fleetwave", "groupLabels": map[string]string{}, "commonLabels": map[string]string{}, "commonAnnotations": map[string]string{},
		"externalURL": "http://alertmanager:9093"}
	var as []alert
	for i, l := range alerts {
		as = append(as, alert{Status: status, Labels: l, Annotations: map[string]string{"summary": "errors above 5%"},
			StartsAt: time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC), GeneratorURL: "http://prometheus:9090/graph", Fingerprint: fmt.Sprintf("%016x", i)})
	}
	p["alerts"] = as
	b, _ := json.Marshal(p)
	return b
}

// post sends body to the receiver as Alertmanager's webhook_config does,
// with the bearer token (none if empty); it returns the status and answer.
func post(t *testing.T, url, token string, body []byte) (int, coordinator.AlertmanagerAnswer) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Alertmanager/0.28.1")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var ans coordinator.AlertmanagerAnswer
	if err := json.Unmarshal(b, &ans); err != nil {
		t.Fatalf("answer %d is not JSON: %v: %s", resp.StatusCode, err, b)
	}
	return resp.StatusCode, ans
}

// An alert Alertmanager posts firing aborts the rollout whose policy names
// it: the hosts that moved go back, the service is frozen, and the abort is
// an event and an audit entry. Posts without the token, of another payload
// version, or about other alerts or services change nothing.
func TestAlertmanagerAlertAbortsRollout(t *testing.T) {
	token := "am-0123456789abcdef0123456789abcdef"
	tokenFile := filepath.Join(t.TempDir(), "am-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newFleetEnvWith(t, 3, testfleet.Options{CoordinatorArgs: []string{"--alertmanager-token-file", tokenFile}})
	url := strings.TrimSuffix(e.fleet.DashboardURL, "/") + coordinator.AlertmanagerPath
	e.apply("web", fmt.Sprintf(alertSpec, "0s"))
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")

	// A firing alert with no rollout in flight aborts nothing.
	// Its labels carry control characters (the receiver makes them
	// printable before they reach the rollout's reason) and a huge value
	// (cut).
	fire := amPayload("4", "firing", map[string]string{"alertname": "HighErrorRate", "service": "web", "severity": "page",
		"instance": "h1\n[fake] rollout succeeded\x1b[2J", "zz": strings.Repeat("z", 10000)})
	if code, ans := post(t, url, token, fire); code != http.StatusOK || len(ans.Aborted) != 0 || ans.Firing != 1 {
		t.Fatalf("no rollout in flight: %d %+v", code, ans)
	}

	// v2's canary bakes for 10 minutes: the rollout stays in flight.
	e.apply("web", fmt.Sprintf(alertSpec, "10m"))
	e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil))
	e.waitFor(60*time.Second, "v2's canary baking", func() (bool, string) {
		r := e.rollout("web")
		return r.GetToVersion() == "v2" && r.GetWaves()[0].GetState() == v1.WaveState_WAVE_STATE_BAKING, fmt.Sprint(r.GetState(), r.GetWaves())
	})
	canary := e.rollout("web").GetWaves()[0].GetHosts()[0].GetHostId()

	for _, tc := range []struct {
		name, token string
		body        []byte
		code        int
	}{
		{"no token", "", fire, http.StatusUnauthorized},
		{"wrong token", token + "x", fire, http.StatusUnauthorized},
		{"payload version 3", token, amPayload("3", "firing", map[string]string{"alertname": "HighErrorRate"}), http.StatusBadRequest},
		{"not JSON", token, []byte("alertname=HighErrorRate"), http.StatusBadRequest},
		{"over 1 MiB", token, append(fire[:len(fire)-1], []byte(`,"x":"`+strings.Repeat("x", coordinator.AlertmanagerMaxBody)+`"}`)...), http.StatusRequestEntityTooLarge},
		{"another alert", token, amPayload("4", "firing", map[string]string{"alertname": "DiskFull"}), http.StatusOK},
		{"another service", token, amPayload("4", "firing", map[string]string{"alertname": "HighErrorRate", "service": "api"}), http.StatusOK},
		{"resolved", token, amPayload("4", "resolved", map[string]string{"alertname": "HighErrorRate"}), http.StatusOK},
	} {
		code, ans := post(t, url, tc.token, tc.body)
		if code != tc.code || len(ans.Aborted) != 0 {
			t.Errorf("%s: %d %+v, want %d and nothing aborted", tc.name, code, ans, tc.code)
		}
		if r := e.rollout("web"); r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
			t.Fatalf("%s: rollout %v: %s", tc.name, r.GetState(), r.GetReason())
		}
	}

	code, ans := post(t, url, token, fire)
	if code != http.StatusOK || len(ans.Aborted) != 1 || ans.Aborted[0].Service != "web" || !strings.Contains(ans.Aborted[0].Reason, "HighErrorRate") {
		t.Fatalf("firing HighErrorRate: %d %+v", code, ans)
	}
	r := e.rollout("web")
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(r.GetReason(), "aborted by alertmanager: alert HighErrorRate") {
		t.Fatalf("rollout %v: %q", r.GetState(), r.GetReason())
	}
	for _, c := range r.GetReason() {
		if !unicode.IsPrint(c) {
			t.Fatalf("the reason holds %U: %q", c, r.GetReason())
		}
	}
	if !strings.Contains(r.GetReason(), "instance=h1?[fake] rollout succeeded?[2J") || len(r.GetReason()) > 1000 {
		t.Errorf("reason (%d bytes) not made printable and bounded by the receiver: %q", len(r.GetReason()), r.GetReason())
	}
	if !e.ran(canary, "web", "v2") {
		t.Errorf("the canary %s never ran v2", canary)
	}
	e.allOn("v1")
	// Posted again (Alertmanager repeats a notification): nothing more.
	if code, ans := post(t, url, token, fire); code != http.StatusOK || len(ans.Aborted) != 0 {
		t.Errorf("repeated notification: %d %+v", code, ans)
	}

	var got struct {
		Status struct {
			Frozen bool `json:"frozen"`
		} `json:"status"`
	}
	svc := e.cli(0, "service", "get", "web", "-o", "json").Stdout
	if err := json.Unmarshal([]byte(svc), &got); err != nil || !got.Status.Frozen {
		t.Errorf("service not frozen after the abort (%v):\n%s", err, svc)
	}
	hist := e.cli(0, "rollout", "history", "web").Stdout
	if !strings.Contains(hist, rollout.EventRolloutAborted) || !strings.Contains(hist, "alertmanager") {
		t.Errorf("history lacks the abort by alertmanager:\n%s", hist)
	}
	audit := e.cli(0, "audit", "-o", "json").Stdout
	if !strings.Contains(audit, coordinator.AlertmanagerPath) || !strings.Contains(audit, "Unauthenticated") || !strings.Contains(audit, "HighErrorRate") {
		t.Errorf("audit lacks the receiver's abort and refusal:\n%s", audit)
	}
}
