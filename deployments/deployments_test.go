// Package deployments holds the systemd units, example configs and the
// compose file. Its test checks that every command line in them is one the
// real binaries accept, so the examples cannot drift from the flags.
package deployments

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

// accepts runs a binary with args and -h: the flag package parses every
// flag before -h, so an unknown or malformed flag fails with exit status 2.
func accepts(t *testing.T, bin string, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(append([]string{}, args...), "-h")...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
}

// build builds the binaries once for the package's tests.
var build = sync.OnceValues(func() (*testfleet.Binaries, error) {
	dir, err := os.MkdirTemp("", "fleetwave-deployments-")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return testfleet.Build(ctx, dir)
})

func TestMain(m *testing.M) {
	code := m.Run()
	if b, err := build(); err == nil && b != nil {
		os.RemoveAll(b.Dir)
	}
	os.Exit(code)
}

func binaries(t *testing.T) *testfleet.Binaries {
	t.Helper()
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestExamplesUseRealFlags(t *testing.T) {
	bin := binaries(t)
	binFor := map[string]string{"fleetwave-coordinator": bin.Coordinator, "fleetwave-agent": bin.Agent}

	// The env files: one OPTS variable each, with shell line continuations.
	optsRE := regexp.MustCompile(`(?s)^[A-Z_]+_OPTS="(.*)"\s*$`)
	for file, b := range map[string]string{"examples/coordinator.env": bin.Coordinator, "examples/agent.env": bin.Agent} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var body []string
		for _, l := range strings.Split(string(data), "\n") {
			if !strings.HasPrefix(l, "#") && strings.TrimSpace(l) != "" {
				body = append(body, l)
			}
		}
		m := optsRE.FindStringSubmatch(strings.Join(body, "\n"))
		if m == nil {
			t.Fatalf("%s: no OPTS=\"...\" line", file)
		}
		args := strings.Fields(strings.ReplaceAll(m[1], "\\\n", " "))
		if len(args) < 4 {
			t.Fatalf("%s: options %q", file, args)
		}
		accepts(t, b, args)
	}

	// The compose file: every fleetwave command.
	data, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command []string `json:"command"`
		} `json:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	seen := map[string]int{}
	for name, svc := range compose.Services {
		if len(svc.Command) == 0 {
			continue
		}
		if name == "pki" {
			// sh -c: the CLI's tls init and gossip keygen.
			if !strings.Contains(strings.Join(svc.Command, " "), "fleetwave tls init") {
				t.Errorf("pki service does not run tls init: %v", svc.Command)
			}
			continue
		}
		b, ok := binFor[svc.Command[0]]
		if !ok {
			t.Errorf("compose service %s runs %q", name, svc.Command[0])
			continue
		}
		seen[svc.Command[0]]++
		accepts(t, b, svc.Command[1:])
	}
	if seen["fleetwave-coordinator"] < 2 || seen["fleetwave-agent"] < 2 || len(compose.Services) < 4+seen["fleetwave-coordinator"]+seen["fleetwave-agent"] {
		t.Errorf("compose file runs %v of %d services; want 3 etcd, 2+ coordinators, agents", seen, len(compose.Services))
	}

	// The systemd units read their options from the env files.
	for _, unit := range []string{"systemd/fleetwave-coordinator.service", "systemd/fleetwave-agent.service"} {
		data, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "EnvironmentFile=/etc/fleetwave/") || !strings.Contains(string(data), "_OPTS") {
			t.Errorf("%s does not take its options from /etc/fleetwave/*.env", unit)
		}
	}
}

// stopCmdRE finds the documented command that stops an agent's services.
var stopCmdRE = regexp.MustCompile(`fleetwave-agent (stop-services --data-dir (\S+))`)

// TestAgentUnitLeavesServicesRunning: services outlive the agent, so the
// unit must make systemd signal the agent alone (KillMode=process, else a
// restart of the agent kills every service in its cgroup), and the
// command the unit and the README document for stopping the services must
// stop them with the real binary.
func TestAgentUnitLeavesServicesRunning(t *testing.T) {
	data, err := os.ReadFile("systemd/fleetwave-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	var section string
	var killModes []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "#") || l == "":
		case strings.HasPrefix(l, "["):
			section = l
		case strings.HasPrefix(l, "KillMode="):
			killModes = append(killModes, section+" "+l)
		}
	}
	if len(killModes) != 1 || killModes[0] != "[Service] KillMode=process" {
		t.Errorf("fleetwave-agent.service: KillMode directives %q, want exactly [Service] KillMode=process", killModes)
	}
	unitCmd := stopCmdRE.FindStringSubmatch(string(data))
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if unitCmd == nil || !strings.Contains(string(readme), unitCmd[0]) {
		t.Fatalf("the stop command: the unit documents %q; want it documented in the README too", unitCmd)
	}

	// A data dir with a service an agent left running: a process group its
	// PID file proves.
	bin := binaries(t)
	dataDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dataDir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	svc := exec.Command("sleep", "600")
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	reaped := make(chan struct{})
	go func() { waitErr = svc.Wait(); close(reaped) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-svc.Process.Pid, syscall.SIGKILL)
		<-reaped
	})
	pidFile := filepath.Join(dataDir, "run", "web.pid")
	if _, err := supervise.WritePIDRecord(pidFile, svc.Process.Pid, "1.0.0", 1); err != nil {
		t.Fatal(err)
	}
	args := strings.Fields(strings.Replace(unitCmd[1], unitCmd[2], dataDir, 1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin.Agent, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fleetwave-agent %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// stop-services returned once the service had exited; only its reaping
	// (by this test) may still be under way: a failure deadline, not a
	// measure.
	select {
	case <-reaped:
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("service ended with %v, want SIGTERM", waitErr)
		}
	case <-time.After(time.Minute):
		t.Fatalf("fleetwave-agent %s returned with the service still running\n%s", strings.Join(args, " "), out)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file after stop-services: %v", err)
	}
}
