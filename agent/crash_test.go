package agent

import (
	"context"
	"os"
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

// agentProc starts the real agent binary on a data dir, again and again.
type agentProc struct {
	t       *testing.T
	bin     string
	fc      *fakeCoordinator
	dataDir string
	lw      *testWriter
}

func newAgentProc(t *testing.T, bin string, fc *fakeCoordinator) *agentProc {
	lw := &testWriter{t: t}
	t.Cleanup(func() { lw.mu.Lock(); lw.done = true; lw.mu.Unlock() })
	p := &agentProc{t: t, bin: bin, fc: fc, dataDir: t.TempDir(), lw: lw}
	t.Cleanup(func() { stopServices(t, p.dataDir) }) // after every agent is gone (cleanups run last-in first-out)
	return p
}

func (p *agentProc) start() *exec.Cmd {
	cmd := exec.Command(p.bin, "--insecure", "--coordinator", p.fc.addr, "--host-id", testHostID, "--labels", "port=8081",
		"--data-dir", p.dataDir, "--log-level", "debug")
	cmd.Stderr = p.lw
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// kill9 kills the agent with SIGKILL: no clean-up at all.
func (p *agentProc) kill9(cmd *exec.Cmd) {
	if err := cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	cmd.Wait()
}

func (p *agentProc) pidFile() string { return filepath.Join(p.dataDir, "run", testSvc+".pid") }

// TestAgentKilledKeepsServices: kill -9 of the real agent binary, while a
// release is healthy and while a new one is being checked, leaves the
// service running; the restarted agent adopts the very same process (no
// restart) and the new release becomes healthy; SIGTERM leaves it running
// too; `fleetwave-agent stop-services` stops it.
func TestAgentKilledKeepsServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the agent binary")
	}
	bin := buildAgent(t)
	fc := newFakeCoordinator(t)
	ready := filepath.Join(t.TempDir(), "ready")
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": passingAfter(ready)})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	p := newAgentProc(t, bin, fc)

	first := p.start()
	fc.assign(testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "v1 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pid1 := readPID(t, p.pidFile())
	p.kill9(first)
	if !alive(pid1) {
		t.Fatal("v1 died with the agent")
	}
	nr := reportCount(fc)
	second := p.start()
	fc.waitFor(t, "v1 healthy, reported by the restarted agent", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if got := readPID(t, p.pidFile()); got != pid1 || !alive(pid1) {
		t.Fatalf("v1 restarted after kill -9 of the agent: pid %d, was %d", got, pid1)
	}

	// kill -9 while v2 is being checked: adopted, checked again, healthy.
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.HealthyDeadline = durationpb.New(time.Hour) // its checks pass when the test says so
	fc.assign(a2)
	fc.waitFor(t, "v2 checking", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_CHECKING, "2.0.0")
	})
	pid2 := readPID(t, p.pidFile())
	p.kill9(second)
	nr = reportCount(fc)
	third := p.start()
	fc.waitFor(t, "v2 checked by the restarted agent", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 2, v1.Phase_PHASE_CHECKING, "2.0.0")
	})
	if err := os.WriteFile(ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fc.waitFor(t, "v2 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	if got := readPID(t, p.pidFile()); got != pid2 || !alive(pid2) {
		t.Fatalf("v2 restarted after kill -9 of the agent: pid %d, was %d", got, pid2)
	}
	for _, r := range reportsSince(fc, nr) {
		switch r.GetPhase() {
		case v1.Phase_PHASE_REVERTING, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
			t.Fatalf("the restart failed a good release: %v %s", r.GetPhase(), r.GetReason())
		}
	}

	// SIGTERM: a clean exit, the service stays.
	if err := third.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := third.Wait(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	if !alive(pid2) {
		t.Fatal("v2 died with the agent's SIGTERM")
	}

	// The explicit stop.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "stop-services", "--data-dir", p.dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("stop-services: %v\n%s", err, out)
	}
	if alive(pid2) {
		t.Fatalf("v2 (pid %d) alive after stop-services\n%s", pid2, out)
	}
	if _, err := os.Stat(p.pidFile()); !os.IsNotExist(err) {
		t.Fatalf("pid file after stop-services: %v", err)
	}
}

// TestAgentKilledWhileCheckingBadRelease: kill -9 of the agent while a bad
// release is being checked. The restarted agent adopts it and checks it
// afresh; its own failure, not the restart, reverts it to the last good
// release, which is started and checked.
func TestAgentKilledWhileCheckingBadRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the agent binary")
	}
	bin := buildAgent(t)
	fc := newFakeCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": badCheck})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	p := newAgentProc(t, bin, fc)

	first := p.start()
	fc.assign(testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "v1 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.HealthyDeadline = durationpb.New(3 * time.Second)
	fc.assign(a2)
	fc.waitFor(t, "v2 checking", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_CHECKING, "2.0.0")
	})
	pid2 := readPID(t, p.pidFile())
	p.kill9(first)
	nr := reportCount(fc)
	second := p.start()
	fc.waitFor(t, "reverted after restart", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs[nr:], testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0") && r.GetLastGoodVersion() == "1.0.0" &&
			strings.Contains(r.GetReason(), "2.0.0: not healthy within 3s")
	})
	waitGone(t, pid2)
	if got := currentLink(t, p.dataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	if running := readPID(t, p.pidFile()); !alive(running) || running == pid2 {
		t.Fatalf("v1 not running: pid %d", running)
	}
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
}

// TestAgentKilledDuringConfigInstall: kill -9 of the real agent while a
// config install (the running release, a spec that changes its env) is
// being checked. The restarted agent adopts the process that runs the new
// spec (it is not started again) and finishes the install: healthy with
// the new spec. Then a spec whose check fails, killed while it is checked:
// the restarted agent reverts it, exactly once, to the same release with
// the spec it ran before. Each spec's process is started once.
func TestAgentKilledDuringConfigInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the agent binary")
	}
	bin := buildAgent(t)
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{
		"run.sh":   "#!/bin/sh\necho \"started mode=$MODE\"\necho \"$MODE\" > mode\nexec sleep 300\n",
		"check.sh": "#!/bin/sh\n[ \"$(cat mode)\" != bad ] && [ ! -e ../../hold ]\n",
	})
	digest := fc.addArtifact(art)
	p := newAgentProc(t, bin, fc)
	hold := filepath.Join(p.dataDir, "hold") // the check fails while it exists
	assign := func(gen int64, mode string) {
		a := testAssignment("1.0.0", gen, digest, int64(len(art)), "")
		a.Spec.Run.Env["MODE"] = mode
		a.Spec.HealthyDeadline = durationpb.New(20 * time.Second)
		if mode == "bad" {
			a.Spec.HealthyDeadline = durationpb.New(3 * time.Second)
		}
		a.SpecRevision = gen
		fc.assign(a)
	}
	modes := func() string {
		b, _ := os.ReadFile(filepath.Join(p.dataDir, "logs", testSvc+".log"))
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if m, ok := strings.CutPrefix(l, "started mode="); ok {
				out = append(out, m)
			}
		}
		return strings.Join(out, " ")
	}

	first := p.start()
	assign(1, "a")
	fc.waitFor(t, "healthy with mode a", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})

	// Mode b is checked (held unhealthy by the hold file) when the agent dies.
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	assign(2, "b")
	fc.waitFor(t, "mode b checking", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_CHECKING, "1.0.0")
	})
	pidB := readPID(t, p.pidFile())
	p.kill9(first)
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	nr := reportCount(fc)
	second := p.start()
	fc.waitFor(t, "mode b healthy after the restart", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 2, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if pid := readPID(t, p.pidFile()); pid != pidB || !alive(pid) {
		t.Fatalf("mode b's process %d was not adopted: now %d", pidB, pid)
	}
	if got := modes(); got != "a b" {
		t.Fatalf("starts by mode: %q, want \"a b\"", got)
	}

	// A bad spec, checked when the agent dies: reverted once to mode b.
	assign(3, "bad")
	fc.waitFor(t, "mode bad checking", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 3, v1.Phase_PHASE_CHECKING, "1.0.0")
	})
	pidBad := readPID(t, p.pidFile())
	p.kill9(second)
	nr = reportCount(fc)
	third := p.start()
	fc.waitFor(t, "reverted to mode b after the restart", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs[nr:], testSvc)
		return reportIs(r, 3, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	waitGone(t, pidBad)
	if got := modes(); got != "a b bad b" {
		t.Fatalf("starts by mode: %q, want \"a b bad b\"", got)
	}
	if got := currentLink(t, p.dataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	if err := third.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := third.Wait(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
}
