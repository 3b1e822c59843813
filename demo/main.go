// Command demo is `make demo`: it builds Fleetwave, starts a coordinator
// (embedded etcd) and six agents in zones a and b in a temporary directory,
// and, under a load it generates, rolls the demo service out as v1, then v2
// in waves, then a v3 whose health check fails and a v4 that answers 20% of
// requests with 500 (each reverted on the canary, alerting the demo's
// webhook receiver), then after an unfreeze a fixed v5. It prints what
// happens and cleans up.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

const spec = `name: web
selector: {role: web}
run:
  command: ["./demoapp"]
  sockets: [{name: http, listen: "127.0.0.1:${host.label.port}"}]   # handed from release to release
  ready: notify                   # the agent waits for READY=1 before it stops the old release
  ready_timeout: 5s
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
    interval: 250ms
    timeout: 1s
min_healthy_time: 2s
healthy_deadline: 8s
analysis:
  metrics_url: "http://127.0.0.1:${host.label.port}/metrics"
  interval: 1s
  window: 5s
  watch: 30s
  rules:
    - name: errors
      error_ratio: {metric: http_requests_total, max: 0.05, min_requests: 10}
    - name: latency
      latency: {metric: http_request_duration_seconds, quantile: 0.99, max_seconds: 0.25, min_samples: 10}
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: 3s
  progress_deadline: 5m
  mode: auto
  stage_ahead: true
alerts:
  webhook_url: "%s"
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// bold is set when stdout is a terminal, so redirected output has no
// escape codes.
var bold = func() bool {
	fi, err := os.Stdout.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}()

func say(format string, a ...any) {
	if bold {
		fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", a...)
		return
	}
	fmt.Printf("\n==> "+format+"\n", a...)
}

func run(ctx context.Context) (err error) {
	dir, err := os.MkdirTemp("", "fleetwave-demo-")
	if err != nil {
		return err
	}
	if os.Getenv("FLEETWAVE_DEMO_KEEP") == "" {
		defer os.RemoveAll(dir)
	}
	say("building binaries into %s", filepath.Join(dir, "bin"))
	bin, err := testfleet.Build(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	say("starting a coordinator with embedded etcd, mutual TLS on (certificates made on the fly in %s)", filepath.Join(dir, "pki"))
	f, err := testfleet.NewFleetWith(ctx, bin, dir, testfleet.Options{TLS: true})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping the fleet")
		f.Close()
	}()
	fmt.Println("coordinator at", f.Addr, "; logs in", filepath.Join(dir, "logs"), "(removed at exit unless FLEETWAVE_DEMO_KEEP=1)")
	say("starting 6 agents in zones a and b")
	for i := range 6 {
		a, err := f.AddAgent(fmt.Sprintf("host-%d", i+1), []string{"a", "b"}[i%2])
		if err != nil {
			return err
		}
		fmt.Printf("  %s zone=%s service port %d\n", a.ID, a.Zone, a.Port)
	}
	if err := f.WaitConnected(ctx, 30*time.Second); err != nil {
		return err
	}
	cli := func(args ...string) error {
		fmt.Printf("$ fleetwave %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin.CLI, append(append([]string{"--coordinator", f.Addr}, f.CLIFlags()...), args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		return cmd.Run()
	}
	// The demo's webhook receiver: where alerts go when a rollout fails.
	hook, err := startHook()
	if err != nil {
		return err
	}
	defer hook.Close()
	specText := fmt.Sprintf(spec, "http://"+hook.Addr().String()+"/alerts")
	specPath := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(specPath, []byte(specText), 0o644); err != nil {
		return err
	}
	say("applying the service spec")
	fmt.Print(specText)
	say("generating load: 4 clients per host, each a request every 50 ms on a new connection")
	const first = "release v1: the first rollout, canary first (a host fails requests until v1 first starts on it)"
	load := f.StartLoad(ctx, first, 4, 50*time.Millisecond)
	defer func() {
		say("requests per step (failed = no answer: refused, reset or timed out; 5xx = the release's own errors)")
		steps := load.Stop()
		for _, s := range steps {
			fmt.Println(" ", s.String())
		}
		// Past the first rollout every step must lose nothing: the
		// handover's promise, checked on every run of the demo.
		if err == nil {
			if lost := testfleet.Failures(steps[1:]); lost != "" {
				err = fmt.Errorf("requests failed after v1 was out:\n%s", lost)
			}
		}
	}()
	// step begins a step of the demo: the load's counts so far are
	// printed and a new count begins.
	step := func(format string, a ...any) {
		c := load.Current()
		fmt.Printf("  load during %q: %d requests, %d failed, %d answered 5xx\n", c.Name, c.Requests, c.Failed, c.ServerErrors)
		name := fmt.Sprintf(format, a...)
		load.Step(name)
		say("%s", name)
	}
	if err := cli("service", "apply", "-f", specPath); err != nil {
		return err
	}
	if err := showDashboard(ctx, f); err != nil {
		return err
	}
	release := func(version string, extra map[string]string) error {
		art := filepath.Join(dir, version+".tar.gz")
		if err := testfleet.Artifact(art, bin.DemoApp, version, extra); err != nil {
			return err
		}
		if err := cli("release", "create", "web", "--version", version, "--artifact", art); err != nil {
			return err
		}
		return cli("rollout", "watch", "web")
	}
	versions := func() {
		ids := f.AgentIDs()
		sort.Strings(ids)
		var parts []string
		for _, id := range ids {
			parts = append(parts, fmt.Sprintf("%s=%s", id, orDash(f.Version(ctx, id))))
		}
		fmt.Println("  /version on each host:", strings.Join(parts, " "))
	}

	say(first)
	if err := release("v1", nil); err != nil {
		return fmt.Errorf("v1 rollout: %w", err)
	}
	versions()
	step("release v2: rolls across the fleet in waves (canary, 50%%, 100%%)")
	if err := release("v2", nil); err != nil {
		return fmt.Errorf("v2 rollout: %w", err)
	}
	versions()
	step("restarting every agent (SIGTERM, then start, as systemctl restart does): the services keep running")
	for _, id := range f.AgentIDs() {
		a := f.Agents[id]
		a.Stop(10 * time.Second)
		if err := a.Restart(); err != nil {
			return err
		}
	}
	if err := f.WaitConnected(ctx, 30*time.Second); err != nil {
		return err
	}
	versions()
	step("release v3 is broken: its health check fails")
	if err := release("v3", map[string]string{"FAIL_HEALTH": "1"}); err == nil {
		return fmt.Errorf("v3 rollout succeeded, but v3 is broken")
	}
	fmt.Println("  the rollout failed (as it should): the canary reverted v3 locally")
	versions()
	if err := cli("service", "list"); err != nil {
		return err
	}
	if err := cli("hosts"); err != nil {
		return err
	}
	step("a person looks and unfreezes the service")
	if err := cli("service", "unfreeze", "web"); err != nil {
		return err
	}
	step("release v4 passes its health check but answers 20%% of requests with 500")
	if err := release("v4", map[string]string{"ERROR_RATE": "0.2"}); err == nil {
		return fmt.Errorf("v4 rollout succeeded, but v4 answers 20%% errors")
	}
	fmt.Println("  the rollout failed (as it should): the canary's agent measured the errors and reverted v4")
	versions()
	hook.wait(ctx, 30*time.Second)
	step("a person looks, unfreezes, and a fixed v5 goes out")
	if err := cli("service", "unfreeze", "web"); err != nil {
		return err
	}
	if err := release("v5", nil); err != nil {
		return fmt.Errorf("v5 rollout: %w", err)
	}
	versions()
	if err := cli("rollout", "history", "web", "--id", "000004"); err != nil {
		return err
	}
	say("done: v3 and v4 never left the canary and were never retried; the fleet runs v5")
	if os.Getenv("FLEETWAVE_DEMO_HOLD") != "" {
		say("the fleet and its dashboard stay up at %s until Ctrl-C (FLEETWAVE_DEMO_HOLD)", f.DashboardURL)
		<-ctx.Done()
	}
	return nil
}

// showDashboard prints the dashboard's address and an admin token to log
// in with: the coordinator serves it on --http-listen, with the demo's own
// CA, so the browser warns once about the certificate.
func showDashboard(ctx context.Context, f *testfleet.Fleet) error {
	cmd := exec.CommandContext(ctx, f.Bin.CLI, append(append([]string{"--coordinator", f.Addr}, f.CLIFlags()...), "token", "create", "demo", "--role", "admin", "--ttl", "24h")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("token for the dashboard: %w\n%s", err, out)
	}
	_, secret, ok := strings.Cut(string(out), "secret (shown only now): ")
	if !ok {
		return fmt.Errorf("token for the dashboard: no secret in %q", out)
	}
	say("the dashboard: %s (log in with the token below; the certificate is the demo's own CA, %s)", f.DashboardURL, filepath.Join(f.PKI, "ca.pem"))
	fmt.Println("  token:", strings.TrimSpace(secret))
	fmt.Println("  open", f.DashboardURL+"services/web", "to watch each rollout live; FLEETWAVE_DEMO_HOLD=1 keeps it up after the demo")
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// alertHook prints every alert it receives.
type alertHook struct {
	net.Listener
	got chan struct{}
}

func startHook() (*alertHook, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &alertHook{Listener: ln, got: make(chan struct{}, 16)}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var pretty bytes.Buffer
		if json.Indent(&pretty, b, "    ", "  ") != nil {
			pretty.Write(b)
		}
		fmt.Printf("\n  >>> the demo's webhook receiver got an alert:\n    %s\n", pretty.String())
		select {
		case h.got <- struct{}{}:
		default:
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	return h, nil
}

// wait waits for an alert to arrive (it is sent in the background).
func (h *alertHook) wait(ctx context.Context, d time.Duration) {
	select {
	case <-h.got:
	case <-time.After(d):
		fmt.Println("  (no alert arrived within", d, ")")
	case <-ctx.Done():
	}
}
