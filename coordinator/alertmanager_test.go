package coordinator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func receiverForTest(t *testing.T, token string) (*alertReceiver, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Coordinator{log: zerolog.Nop()}
	return c.newAlertReceiver(p)
}

func TestAlertReceiverTokenFile(t *testing.T) {
	for token, want := range map[string]string{
		"short":                         "the token is 5 bytes, want at least 16",
		"":                              "the token is 0 bytes",
		"0123456789abcdef 0123456789":   "holds white space",
		strings.Repeat("x", 4097):       "the token is 4097 bytes, more than 4096",
		"0123456789abcdef0123456789\n":  "",
		"  0123456789abcdef0123456789 ": "",
	} {
		_, err := receiverForTest(t, token)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) || (err != nil && !strings.HasPrefix(err.Error(), "alertmanager-token-file: ")) {
			t.Errorf("token %.20q: %v, want %q", token, err, want)
		}
	}
	c := &Coordinator{log: zerolog.Nop()}
	if _, err := c.newAlertReceiver(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "alertmanager-token-file: ") {
		t.Errorf("missing file: %v", err)
	}
	cfg := Config{AlertmanagerTokenFile: "/x"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `alertmanager-token-file: "/x": the receiver is served on http-listen, which is off`) {
		t.Errorf("Validate without http-listen: %v", err)
	}
}

func serve(a *alertReceiver, token, body string) (int, AlertmanagerAnswer, http.Header) {
	req := httptest.NewRequest(http.MethodPost, AlertmanagerPath, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	a.ServeHTTP(w, req)
	var ans AlertmanagerAnswer
	_ = json.Unmarshal(w.Body.Bytes(), &ans)
	return w.Code, ans, w.Header()
}

// At most AlertmanagerBurst posts at once, then AlertmanagerRate a second
// (time is the receiver's clock, set by the test).
func TestAlertReceiverRateLimit(t *testing.T) {
	const token = "0123456789abcdef0123456789"
	a, err := receiverForTest(t, token)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	for i := range AlertmanagerBurst {
		if code, ans, _ := serve(a, token, `{"version":"3"}`); code != http.StatusBadRequest || !strings.Contains(ans.Error, `version: "3" is not 4`) {
			t.Fatalf("post %d: %d %+v", i, code, ans)
		}
	}
	code, ans, h := serve(a, token, `{"version":"4"}`)
	if code != http.StatusTooManyRequests || h.Get("Retry-After") != "1" || !strings.Contains(ans.Error, "more than 5 notifications a second") {
		t.Fatalf("post over the burst: %d %+v %v", code, ans, h)
	}
	now = now.Add(time.Second)
	for i := range AlertmanagerRate {
		if code, _, _ := serve(a, token, `{"version":"4","status":"resolved","alerts":[]}`); code != http.StatusOK {
			t.Fatalf("post %d a second later: %d", i, code)
		}
	}
	if code, _, _ := serve(a, token, `{"version":"4"}`); code != http.StatusTooManyRequests {
		t.Fatalf("post over the rate: %d", code)
	}
}

// Alerts past AlertmanagerMaxAlerts are not read; the answer counts them.
func TestAlertReceiverMaxAlerts(t *testing.T) {
	const token = "0123456789abcdef0123456789"
	a, err := receiverForTest(t, token)
	if err != nil {
		t.Fatal(err)
	}
	alerts := strings.Repeat(`{"status":"resolved","labels":{"alertname":"A"}},`, AlertmanagerMaxAlerts+7)
	code, ans, h := serve(a, token, `{"version":"4","status":"resolved","alerts":[`+strings.TrimSuffix(alerts, ",")+`]}`)
	if code != http.StatusOK || ans.Ignored != 7 || ans.Firing != 0 || ans.Aborted == nil || h.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %+v %v", code, ans, h)
	}
}

// Posts without the token draw on their own bucket: a flood of them past
// the burst does not make Alertmanager's notifications wait (before, one
// bucket for all posts let anyone who reaches the port starve the
// receiver with 429s).
func TestAlertReceiverRefusedPostsDoNotStarve(t *testing.T) {
	const token = "0123456789abcdef0123456789"
	a, err := receiverForTest(t, token)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	a.c.failures = newFailureLog(time.Hour, maxFailureKinds)
	// The interval's first refusal is written; later ones are counted.
	a.c.failures.admit(&v1.AuditEntry{Actor: alertmanagerActor, Method: "POST " + AlertmanagerPath, Result: "Unauthenticated"}, now)
	for i := range AlertmanagerBurst {
		if code, _, _ := serve(a, "wrong-token-0123456789", `{"version":"4"}`); code != http.StatusUnauthorized {
			t.Fatalf("refused post %d: %d", i, code)
		}
	}
	if code, _, _ := serve(a, "wrong-token-0123456789", `{"version":"4"}`); code != http.StatusTooManyRequests {
		t.Fatalf("refused post over the burst: %d, want 429", code)
	}
	for i := range AlertmanagerBurst {
		if code, ans, _ := serve(a, token, `{"version":"4","status":"resolved","alerts":[]}`); code != http.StatusOK {
			t.Fatalf("post %d with the token after the flood: %d %+v", i, code, ans)
		}
	}
}

// Alert names and labels come from whoever holds the receiver's token:
// the receiver (firingAlerts) makes them printable and bounded before the
// engine puts them in the rollout's reason, which events, the audit log
// and `fleetwave` print (before, a label "x\n[fake] rollout
// succeeded\x1b[2J" went through as is). The labels are decoded from JSON
// as a post is.
func TestFiringAlertsPrintable(t *testing.T) {
	body := `{"version":"4","alerts":[
		{"status":"firing","labels":{"alertname":"HighErrorRate","instance\r\n":"x\n[fake] rollout succeeded\u001b[2J\u2028\u0000","bad":"\ud800","huge":"` + strings.Repeat("v", 5000) + `"}},
		{"status":"firing","labels":{"alertname":"HighErrorRate` + strings.Repeat("x", 200) + `"}},
		{"status":"resolved","labels":{"alertname":"HighErrorRate"}},
		{"status":"firing","labels":{"severity":"page"}}]}`
	var n amNotification
	if err := json.Unmarshal([]byte(body), &n); err != nil {
		t.Fatal(err)
	}
	firing := firingAlerts(n.Alerts)
	if len(firing) != 2 {
		t.Fatalf("%d firing alerts with an alertname, want 2: %v", len(firing), firing)
	}
	for _, a := range firing {
		for k, v := range a.Labels {
			if len(k) > AlertmanagerMaxLabel+len("…") || len(v) > AlertmanagerMaxLabel+len("…") {
				t.Errorf("label %.40q=%.40q: %d and %d bytes, more than %d", k, v, len(k), len(v), AlertmanagerMaxLabel)
			}
			for _, c := range k + v {
				if !unicode.IsPrint(c) {
					t.Errorf("label %q=%q holds %U", k, v, c)
				}
			}
		}
	}
	if got := firing[0].Labels["instance??"]; got != "x?[fake] rollout succeeded?[2J??" {
		t.Errorf("instance label %q", got)
	}
	// A name cut to the bound is marked and matches no policy's name.
	if name := firing[1].Name(); !strings.HasSuffix(name, "…") || len(name) != AlertmanagerMaxLabel+len("…") {
		t.Errorf("long alertname %q", name)
	}
	pol := &v1.RolloutPolicy{AbortOnAlerts: []string{"HighErrorRate"}}
	r := &v1.Rollout{Id: "000001", Service: "web", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING, Policy: pol}
	why, ok := rollout.AlertAbort(r, firing)
	if !ok {
		t.Fatal("not aborted")
	}
	for _, c := range why {
		if !unicode.IsPrint(c) {
			t.Fatalf("reason holds %U: %q", c, why)
		}
	}
	if !strings.Contains(why, `instance??=x?[fake] rollout succeeded?[2J??`) || len(why) > 1000 {
		t.Errorf("reason (%d bytes) %q", len(why), why)
	}
}
