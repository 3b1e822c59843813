package agent

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// buildAgent builds the fleetwave-agent binary for tests that kill it.
func buildAgent(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	bin := filepath.Join(t.TempDir(), "fleetwave-agent")
	out, err := exec.Command(goBin, "build", "-o", bin, "github.com/fleetwave/fleetwave/cmd/fleetwave-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestAgentKilledWhileCheckingRecovers kills the agent with SIGKILL while a
// new (bad) release is being checked. The restarted agent kills the orphaned
// process, starts the release again and checks it afresh: its own failure,
// not the restart, reverts it.
func TestAgentKilledWhileCheckingRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the agent binary")
	}
	bin := buildAgent(t)
	fc := newFakeCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": badCheck})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	lw := &testWriter{t: t}
	t.Cleanup(func() { lw.mu.Lock(); lw.done = true; lw.mu.Unlock() })
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--insecure", "--coordinator", fc.addr, "--host-id", testHostID, "--labels", "port=8081",
			"--data-dir", dataDir, "--log-level", "debug")
		cmd.Stderr = lw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}

	first := start()
	fc.assign(testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "v1 healthy", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.HealthyDeadline = durationpb.New(time.Minute) // still checking when killed
	fc.assign(a2)
	fc.waitFor(t, "v2 checking", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_CHECKING, "2.0.0")
	})
	orphan := readPID(t, pidFile)
	if err := first.Process.Kill(); err != nil { // SIGKILL: no cleanup at all
		t.Fatal(err)
	}
	first.Wait()
	if !alive(orphan) {
		t.Fatal("v2 died with the agent; the test would prove nothing")
	}

	fc.mu.Lock()
	n := len(fc.reports)
	fc.mu.Unlock()
	second := start()
	fc.waitFor(t, "reverted after restart", 3*time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs[n:], testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0") && r.GetLastGoodVersion() == "1.0.0" &&
			strings.Contains(r.GetReason(), "2.0.0: not healthy within 1m0s")
	})
	waitGone(t, orphan)
	if got := currentLink(t, dataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	running := readPID(t, pidFile)
	if !alive(running) || running == orphan {
		t.Fatalf("v1 not restarted: pid %d", running)
	}
	// SIGTERM: clean stop, exit 0, service stopped.
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	waitGone(t, running)
}
