// Command demo is `make demo`: it builds Fleetwave, starts a coordinator
// (embedded etcd) and six agents in zones a and b in a temporary directory,
// and rolls the demo service out as v1, then v2 in waves, then a broken v3
// that the canary reverts, then (after an unfreeze) a fixed v4. It prints
// what happens and cleans up.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/testfleet"
)

const spec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
    interval: 250ms
    timeout: 1s
min_healthy_time: 2s
healthy_deadline: 8s
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: 3s
  progress_deadline: 5m
  mode: auto
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

func run(ctx context.Context) error {
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
	say("starting a coordinator with embedded etcd")
	f, err := testfleet.NewFleet(ctx, bin, dir)
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
	if err := testfleet.WaitFor(ctx, 30*time.Second, "agents connected", func() (bool, string) {
		hs, err := testfleet.Hosts(ctx, f.Addr)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, h := range hs {
			if h.GetConnected() {
				n++
			}
		}
		return n == 6, fmt.Sprintf("%d/6", n)
	}); err != nil {
		return err
	}
	cli := func(args ...string) error {
		fmt.Printf("$ fleetwave %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin.CLI, append([]string{"--coordinator", f.Addr}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		return cmd.Run()
	}
	specPath := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		return err
	}
	say("applying the service spec")
	fmt.Print(spec)
	if err := cli("service", "apply", "-f", specPath); err != nil {
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

	say("release v1: the first rollout, canary first")
	if err := release("v1", nil); err != nil {
		return fmt.Errorf("v1 rollout: %w", err)
	}
	versions()
	say("release v2: rolls across the fleet in waves (canary, 50%%, 100%%)")
	if err := release("v2", nil); err != nil {
		return fmt.Errorf("v2 rollout: %w", err)
	}
	versions()
	say("release v3 is broken: its health check fails")
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
	say("a person looks, unfreezes the service, and a fixed v4 goes out")
	if err := cli("service", "unfreeze", "web"); err != nil {
		return err
	}
	if err := release("v4", nil); err != nil {
		return fmt.Errorf("v4 rollout: %w", err)
	}
	versions()
	say("done: v3 never left the canary and was never retried; the fleet runs v4")
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
