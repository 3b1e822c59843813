package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// failingAfter is a check script that fails once flag exists.
func failingAfter(flag string) string {
	return fmt.Sprintf("#!/bin/sh\nif [ -e %q ]; then echo 'flag set' >&2; exit 1; fi\nexit 0\n", flag)
}

// passingAfter is a check script that passes once flag exists.
func passingAfter(flag string) string {
	return fmt.Sprintf("#!/bin/sh\nif [ -e %q ]; then exit 0; fi\necho 'not yet' >&2\nexit 1\n", flag)
}

// starts counts the service's starts in its log (run.sh says "started").
func starts(t *testing.T, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "started port=")
}

// waitStarts waits until the service's log shows want starts (a process
// logs its start a moment after the agent has recorded its pid) and fails
// if it shows more.
func waitStarts(t *testing.T, dataDir string, want int) {
	t.Helper()
	// Generous: a release that starts slowly under load (one that fills
	// 64 MiB in a shell, in a VM on a busy host) is not a failure.
	testkit.EventuallyErr(t, 3*time.Minute, fmt.Sprintf("%d starts in the service log", want), func() error {
		if got := starts(t, dataDir); got < want {
			return fmt.Errorf("%d starts logged", got)
		}
		return nil
	})
	if got := starts(t, dataDir); got != want {
		t.Fatalf("%d starts in the service log, want %d", got, want)
	}
}

// reportsSince returns the reports of the test service from index n on.
func reportsSince(fc *fakeCoordinator, n int) []*v1.ServiceReport {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var out []*v1.ServiceReport
	for _, r := range fc.reports[n:] {
		if r.GetService() == testSvc {
			out = append(out, r)
		}
	}
	return out
}

func reportCount(fc *fakeCoordinator) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return len(fc.reports)
}

// TestServicesOutliveTheAgent: the agent's shutdown (SIGTERM: its context
// ends) leaves the service running; the next agent adopts it (same pid, no
// restart, no phase change), keeps supervising it (a crash is restarted)
// and keeps watching it (a failing check during the watch reverts).
func TestServicesOutliveTheAgent(t *testing.T) {
	fc := newFakeCoordinator(t)
	flag := filepath.Join(t.TempDir(), "fail")
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": failingAfter(flag)})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	fc.assign(testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "v1 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.Analysis = &v1.Analysis{Watch: durationpb.New(time.Hour)} // watched for the whole test
	fc.assign(a2)
	fc.waitFor(t, "v2 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	pid := readPID(t, pidFile)
	n := 2 // v1, then v2
	waitStarts(t, dataDir, n)

	cancel()
	waitDone(t, done)
	if !alive(pid) {
		t.Fatal("v2 died with the agent")
	}
	rec, err := supervise.ReadPIDFile(pidFile)
	if err != nil || rec.PGID != pid || rec.Release != "2.0.0" || rec.Epoch == 0 {
		t.Fatalf("pid file after shutdown: %+v, %v; want pid %d of release 2.0.0 with its epoch", rec, err, pid)
	}

	nr := reportCount(fc)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	fc.waitFor(t, "healthy report of the new agent", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	if got := readPID(t, pidFile); got != pid || !alive(pid) {
		t.Fatalf("adopting restarted the service: pid %d, was %d", got, pid)
	}
	waitStarts(t, dataDir, n) // none across the agent restart
	for _, r := range reportsSince(fc, nr) {
		if r.GetPhase() != v1.Phase_PHASE_HEALTHY {
			t.Fatalf("the new agent reported %v (%s): an adopted healthy release keeps its phase", r.GetPhase(), r.GetReason())
		}
	}

	// A crash of the adopted process is seen and restarted.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var restarted int
	testkit.EventuallyErr(t, time.Minute, "the adopted process restarted after its crash", func() error {
		rec, err := supervise.ReadPIDFile(pidFile)
		if err != nil {
			return err
		}
		if rec.PGID == pid || !alive(rec.PGID) {
			return fmt.Errorf("pid file names %d", rec.PGID)
		}
		restarted = rec.PGID
		return nil
	})
	waitStarts(t, dataDir, n+1) // one after the crash

	// It is still watched: a failing check reverts it to v1.
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fc.waitFor(t, "v2 reverted during its watch", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0") && strings.Contains(r.GetReason(), "health checks failing")
	})
	waitGone(t, restarted) // stopped by the revert
	cancel2()
	waitDone(t, done2)
}

// TestAgentRestartWhileCheckingIsNotAFailure: the agent stops while a good
// release is being checked; the next agent adopts it, checks it afresh and
// reports it HEALTHY. Nothing is reverted, nothing restarted.
func TestAgentRestartWhileCheckingIsNotAFailure(t *testing.T) {
	fc := newFakeCoordinator(t)
	ready := filepath.Join(t.TempDir(), "ready")
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": passingAfter(ready)})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	fc.assign(testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "v1 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.HealthyDeadline = durationpb.New(time.Hour) // its checks pass when the test says so
	fc.assign(a2)
	fc.waitFor(t, "v2 checking", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_CHECKING, "2.0.0")
	})
	pid := readPID(t, pidFile)
	n := 2 // v1, then v2
	waitStarts(t, dataDir, n)
	cancel()
	waitDone(t, done)

	nr := reportCount(fc)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	fc.waitFor(t, "v2 checked by the new agent", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 2, v1.Phase_PHASE_CHECKING, "2.0.0")
	})
	if err := os.WriteFile(ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fc.waitFor(t, "v2 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs[nr:], testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_HEALTHY, "2.0.0") && r.GetLastGoodVersion() == "2.0.0" && r.GetReason() == ""
	})
	if got := readPID(t, pidFile); got != pid || !alive(pid) {
		t.Fatalf("the checked release was restarted: pid %d, was %d", got, pid)
	}
	waitStarts(t, dataDir, n) // none across the agent restart
	for _, r := range reportsSince(fc, nr) {
		switch r.GetPhase() {
		case v1.Phase_PHASE_REVERTING, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
			t.Fatalf("agent restart reported %v: %s", r.GetPhase(), r.GetReason())
		}
	}
	cancel2()
	waitDone(t, done2)
}

// TestServiceLogsRotate: a chatty service's log is rotated by size while
// it runs (copy-truncate: the service is not restarted), keeping
// ServiceLogKeep old files.
func TestServiceLogsRotate(t *testing.T) {
	fc := newFakeCoordinator(t)
	chatty := "#!/bin/sh\necho \"started port=$PORT\"\nwhile :; do echo 'line line line line line line line line line line line line'; sleep 0.002; done\n"
	art := tarGz(t, map[string]string{"run.sh": chatty, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	dataDir := t.TempDir()
	const limit, keep = 4096, 2
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, ServiceLogMaxBytes: limit, ServiceLogKeep: keep}
	opts := testOptions()
	opts.logRotate = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pid := readPID(t, filepath.Join(dataDir, "run", testSvc+".pid"))
	log := filepath.Join(dataDir, "logs", testSvc+".log")
	testkit.Eventually(t, time.Minute, "two rotated files", func() bool {
		_, err := os.Stat(log + ".2")
		return err == nil
	})
	if _, err := os.Stat(log + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s.3: %v, want none (keep %d)", log, err, keep)
	}
	// A rotation may be under way (.1 renamed to .2, the log not yet
	// copied to .1): wait for both.
	testkit.EventuallyErr(t, time.Minute, "two rotated files of at least the limit", func() error {
		for _, p := range []string{log + ".1", log + ".2"} {
			fi, err := os.Stat(p)
			if err != nil || fi.Size() < limit {
				return fmt.Errorf("%s: %v, %v; want a rotated log of at least %d bytes", p, fi, err, limit)
			}
		}
		return nil
	})
	if got := readPID(t, filepath.Join(dataDir, "run", testSvc+".pid")); got != pid || !alive(pid) {
		t.Fatalf("rotation restarted the service: pid %d, was %d", got, pid)
	}
	cancel()
	waitDone(t, done)
}
