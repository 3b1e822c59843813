package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// TestStopServices stops a service an agent left running with its
// release's stop grace (from the state: SIGKILL once it passed, for a
// service that ignores SIGTERM), and refuses while an agent holds the data
// dir.
func TestStopServices(t *testing.T) {
	dataDir := t.TempDir()
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	asg := testAssignment("1.0.0", 1, strings.Repeat("a", 64), 10, "") // stop_grace 2s
	st, err := state.Open(filepath.Join(dataDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(&lifecycle.Snapshot{Service: testSvc, Phase: v1.Phase_PHASE_HEALTHY, Generation: 1,
		Current: asg, LastGood: asg, Target: asg, CurrentOK: true}); err != nil {
		t.Fatal(err)
	}
	svc := exec.Command("/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := svc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Read(make([]byte, 6)); err != nil { // "ready": the trap is set
		t.Fatal(err)
	}
	var waitErr error
	reaped := make(chan struct{})
	go func() { waitErr = svc.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = syscall.Kill(-svc.Process.Pid, syscall.SIGKILL); <-reaped })
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	if _, err := supervise.WritePIDRecord(pidFile, svc.Process.Pid, "1.0.0", 1); err != nil {
		t.Fatal(err)
	}

	unlock, err := lockDataDir(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := StopServices(context.Background(), dataDir, "", zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "stop the agent first") {
		t.Fatalf("StopServices while an agent holds the data dir: %v", err)
	}
	unlock()
	if !alive(svc.Process.Pid) {
		t.Fatal("the refused stop signalled the service")
	}

	start := time.Now()
	if err := StopServices(context.Background(), dataDir, "", testLogger(t)); err != nil {
		t.Fatalf("StopServices: %v", err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("stopped after %v: the release's stop grace is 2s", took)
	}
	testkit.Eventually(t, time.Minute, "the service reaped", func() bool {
		select {
		case <-reaped:
			return true
		default:
			return false
		}
	})
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("service ended with %v, want SIGKILL after its grace", waitErr)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file: %v, want removed", err)
	}
	// Nothing left: a second run has nothing to do.
	if err := StopServices(context.Background(), dataDir, "", zerolog.Nop()); err != nil {
		t.Fatalf("second StopServices: %v", err)
	}
}
