package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

const dashboardSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms, timeout: 1s}
min_healthy_time: 1s
healthy_deadline: 8s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
  approve_each_wave: true
  progress_deadline: 5m
`

// chromiumPath finds Debian's chromium (make deps installs it). In CI
// (CI=true) a missing browser fails the test instead of skipping it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found: make deps installs Debian's chromium package; the dashboard's browser test must run in CI")
	}
	t.Skip("chromium not found (make deps installs Debian's chromium package)")
	return ""
}

// spkiHash is the base64 SHA-256 of a PEM certificate's public key, for
// chromium's --ignore-certificate-errors-spki-list: the browser trusts the
// coordinator's certificate (from the test's own CA) and nothing else.
func spkiHash(t *testing.T, certFile string) string {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// browser drives one headless chromium tab against the dashboard.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string
	shot string // screenshot directory
}

// run runs steps; the waits among them end at timeout.
func (b *browser) run(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fail(what, err)
	}
}

// fail saves a screenshot and the page, and fails the test.
func (b *browser) fail(what string, err error) {
	b.t.Helper()
	hctx, hcancel := context.WithTimeout(b.ctx, 5*time.Second)
	html, _ := chromedp.Run(hctx, chromedp.OuterHTML(chromedp.CSS("body")))
	hcancel()
	b.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
	b.t.Fatalf("browser: %s: %v\npage:\n%s", what, err, html)
}

// value runs one action that returns a value.
func value[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.fail(what, err)
	}
	return v
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.shot, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", p)
}

func (b *browser) login(token string) {
	b.t.Helper()
	b.run("log in", 30*time.Second,
		chromedp.Navigate(b.base+"login"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#who")))
}

// post submits a form from the page with fetch (same origin, the
// session's cookie) and returns the response's status.
func (b *browser) post(path string, form map[string]string) int {
	b.t.Helper()
	var pairs []string
	for k, v := range form {
		pairs = append(pairs, fmt.Sprintf("[%q, %q]", k, v))
	}
	js := fmt.Sprintf(`fetch(%q, {method: "POST", body: new URLSearchParams([%s]), redirect: "manual"}).then(r => r.status)`, path, strings.Join(pairs, ", "))
	return value(b, "POST "+path, chromedp.Evaluate[int](js, chromedp.EvalAwaitPromise))
}

// The dashboard in a real browser against the real coordinator and agents
// during real rollouts: the canary cell turns healthy, a deployer clicks
// approve and the rollout moves, a failing release turns red with its
// reason, a viewer sees no buttons and the server refuses a forged POST.
func TestDashboardInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	f, err := testfleet.NewFleetWith(ctx, bins, dir, testfleet.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, fleet: f, dir: dir}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			e.dumpLogs()
		}
	})
	for i := range 3 {
		if _, err := f.AddAgent(fmt.Sprintf("host-%d", i+1), []string{"a", "b"}[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitConnected(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	e.apply("web", dashboardSpec)
	token := func(name, role string) string {
		out := e.cli(0, "token", "create", name, "--role", role).Stdout
		_, secret, ok := strings.Cut(out, "secret (shown only now): ")
		if !ok {
			t.Fatalf("token create: no secret in:\n%s", out)
		}
		return strings.TrimSpace(secret)
	}
	deployer, viewer := token("dep", "deployer"), token("vera", "viewer")

	shots := t.ArtifactDir()
	t.Logf("screenshots in %s", shots)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // the tests may run as root
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("ignore-certificate-errors-spki-list", spkiHash(t, filepath.Join(f.PKI, "coordinator-c1.pem"))),
		chromedp.UserDataDir(filepath.Join(dir, "chromium")),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	// The first run on the tab's own context starts the browser: a run on
	// a shorter-lived child would close it when the child ends.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b := &browser{t: t, ctx: bctx, base: f.DashboardURL, shot: shots}

	// Not logged in: the page sends the browser to the login.
	b.run("redirect to login", 60*time.Second, chromedp.Navigate(b.base+"services/web"), chromedp.WaitVisible(chromedp.CSS("#token")))
	loc := value(b, "location", chromedp.Location())
	if !strings.Contains(loc, "/login?next=") {
		t.Errorf("not logged in: at %s, want the login", loc)
	}
	b.run("wrong token", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS("#token"), "not-a-token"),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#error")))

	// 1. The deployer watches v1 roll out: the canary turns healthy, the
	// next wave waits; the deployer clicks approve and the rollout moves.
	b.login(deployer)
	b.run("open the rollout page", 30*time.Second, chromedp.Navigate(b.base+"services/web"), chromedp.WaitVisible(chromedp.CSS("#no-rollout")),
		chromedp.WaitVisible(chromedp.CSS(`#live[data-state="open"]`)))
	e.cli(0, "release", "create", "web", "--version", "v1", "--artifact", e.artifact("v1", nil))
	b.run("canary turns healthy", 90*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`.wave[data-wave="0"] .cell[data-state="healthy"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#action-approve`)))
	pending := value(b, "next wave waits", chromedp.Evaluate[int](`document.querySelectorAll('.wave[data-wave="1"] .cell[data-state="pending"]').length`))
	if pending != 2 {
		t.Errorf("wave 1 has %d pending cells while it waits for approval, want 2", pending)
	}
	b.screenshot("1-canary-healthy-waiting-approval")
	t.Logf("MEASURE rollout page of 3 hosts: %d bytes of HTML, of which the board %d",
		value(b, "page size", chromedp.Evaluate[int](`document.documentElement.outerHTML.length`)),
		value(b, "board size", chromedp.Evaluate[int](`document.getElementById('board').innerHTML.length`)))
	b.run("approve", 90*time.Second,
		chromedp.Click(chromedp.CSS("#action-approve")),
		chromedp.WaitVisible(chromedp.CSS(`.summary[data-state="succeeded"]`)))
	healthy := value(b, "every cell healthy", chromedp.Evaluate[int](`document.querySelectorAll('.cell[data-state="healthy"]').length`))
	if healthy != 3 {
		t.Errorf("%d healthy cells after the rollout succeeded, want 3", healthy)
	}
	b.run("events shown", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#events li[data-kind="rollout_approved"]`)))
	b.screenshot("2-approved-succeeded")
	e.allOn("v1")
	audit := e.cli(0, "audit", "--limit", "50").Stdout
	if !strings.Contains(audit, "token:dep") || !strings.Contains(audit, "ApproveRollout") {
		t.Errorf("the approval from the dashboard is not in the audit log with its caller:\n%s", audit)
	}

	// 2. A failing release turns its canary red, with the reason.
	e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", map[string]string{"FAIL_HEALTH": "1"}))
	b.run("canary turns red", 90*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`.summary[data-state="failed"]`)),
		chromedp.WaitVisible(chromedp.CSS(`.wave[data-wave="0"] .cell[data-state="failed"] .reason`)))
	reason := value(b, "failure reason", chromedp.Text(chromedp.CSS(`.wave[data-wave="0"] .cell[data-state="failed"] .reason`)))
	if !strings.Contains(reason, "http") {
		t.Errorf("the failed canary's reason %q does not name its failing check", reason)
	}
	if next := value(b, "what to do now", chromedp.Text(chromedp.CSS("#next"))); !strings.Contains(next, "unfreezes") {
		t.Errorf("after the failure the page says %q, want what to do (unfreeze after a fix)", next)
	}
	b.screenshot("3-failed-canary")
	newest := func() *v1.Rollout {
		t.Helper()
		cc, err := f.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		resp, err := v1.NewOperatorServiceClient(cc).GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetRollout()
	}
	failed := newest()

	// The other pages: services with their figures, hosts, history.
	b.run("services page", 30*time.Second, chromedp.Navigate(b.base), chromedp.WaitVisible(chromedp.CSS(`#services svg.chart`)))
	b.screenshot("5-services")
	b.run("hosts page", 30*time.Second, chromedp.Navigate(b.base+"hosts"), chromedp.WaitVisible(chromedp.CSS(`#hosts tr[data-host="host-3"]`)))
	if n := value(b, "connected hosts", chromedp.Evaluate[int](`document.querySelectorAll('#hosts .tag.ok').length`)); n != 3 {
		t.Errorf("hosts page shows %d connected hosts, want 3", n)
	}
	b.run("history filtered", 30*time.Second, chromedp.Navigate(b.base+"services/web/history?kind=host_failed"),
		chromedp.WaitVisible(chromedp.CSS(`#history li[data-kind="host_failed"]`)))

	// 3. A viewer sees the same page without a button, and the server
	// refuses a POST the page never offered.
	b.run("log out", 30*time.Second, chromedp.Click(chromedp.CSS(`header button`)), chromedp.WaitVisible(chromedp.CSS("#token")))
	b.login(viewer)
	b.run("viewer's rollout page", 30*time.Second, chromedp.Navigate(b.base+"services/web"),
		chromedp.WaitVisible(chromedp.CSS(`.summary[data-state="failed"]`)))
	buttons := value(b, "count buttons", chromedp.Evaluate[int](`document.querySelectorAll('#board button, #board form').length`))
	if buttons != 0 {
		t.Errorf("a viewer sees %d buttons or forms on the rollout page, want none", buttons)
	}
	b.screenshot("4-viewer-no-buttons")
	if code := b.post("/services/web/rollback", map[string]string{"csrf": "forged"}); code != 403 {
		t.Errorf("POST with a forged CSRF token: status %d, want 403", code)
	}
	csrf := value(b, "read the session's CSRF token", chromedp.Value(chromedp.CSS(`header input[name="csrf"]`)))
	if code := b.post("/services/web/rollback", map[string]string{"csrf": csrf}); code != 403 {
		t.Errorf("a viewer's POST of rollback with its own CSRF token: status %d, want 403 (the gRPC API refuses the role)", code)
	}
	if r := newest(); r.GetId() != failed.GetId() || r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED {
		t.Errorf("after the refused POSTs the newest rollout is %s (%s), want the failed %s", r.GetId(), r.GetState(), failed.GetId())
	}
	audit = e.cli(0, "audit", "--limit", "50").Stdout
	if !strings.Contains(audit, "token:vera") || !strings.Contains(audit, "PermissionDenied") {
		t.Errorf("the viewer's refused rollback is not in the audit log:\n%s", audit)
	}
}
