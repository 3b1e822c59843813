package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// testLogger logs to t.Log until the test ends (late lines are dropped).
func testLogger(t *testing.T) zerolog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return zerolog.New(zerolog.ConsoleWriter{Out: w, NoColor: true, TimeFormat: "15:04:05.000"}).With().Timestamp().Logger()
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

const (
	runScript  = "#!/bin/sh\necho \"started port=$PORT\"\nexec sleep 300\n"
	goodCheck  = "#!/bin/sh\nexit 0\n"
	badCheck   = "#!/bin/sh\necho broken >&2\nexit 1\n"
	testSvc    = "web"
	testHostID = "host-1"
)

// testAssignment runs ./run.sh and checks with ./check.sh.
func testAssignment(version string, gen int64, sha string, size int64, url string) *v1.Assignment {
	return &v1.Assignment{
		Service:    testSvc,
		Generation: gen,
		Release: &v1.Release{Service: testSvc, Version: version, Artifact: &v1.Artifact{
			Sha256: sha, Size: size, Url: url,
		}},
		Spec: &v1.ServiceSpec{
			Name: testSvc,
			Run: &v1.RunSpec{
				Command:   []string{"./run.sh", "--id=${host.id}"},
				Env:       map[string]string{"PORT": "${host.label.port}"},
				StopGrace: durationpb.New(2 * time.Second),
			},
			Checks: []*v1.Check{{
				Name:     "script",
				Kind:     &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"./check.sh"}}},
				Interval: durationpb.New(100 * time.Millisecond),
				Timeout:  durationpb.New(2 * time.Second),
			}},
			MinHealthyTime:  durationpb.New(300 * time.Millisecond),
			HealthyDeadline: durationpb.New(20 * time.Second), // generous: CI machines stall
		},
	}
}

func reportIs(r *v1.ServiceReport, gen int64, phase v1.Phase, current string) bool {
	return r != nil && r.GetGeneration() == gen && r.GetPhase() == phase && r.GetCurrentVersion() == current
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	rec, err := supervise.ReadPIDFile(path)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	return rec.PGID
}

// alive reports whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// waitGone waits for process pid to be gone (or a zombie).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	testkit.Eventually(t, 20*time.Second, fmt.Sprintf("process %d to be gone", pid), func() bool { return !alive(pid) })
}

func waitDone(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func currentLink(t *testing.T, dataDir string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dataDir, "releases", testSvc, "current"))
	if err != nil {
		t.Fatalf("current link: %v", err)
	}
	return target
}

func TestAgentEndToEnd(t *testing.T) {
	fc := newFakeCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": badCheck})
	d1 := fc.addArtifact(v1Art)
	d2 := fc.addArtifact(v2Art) // served by URL below; the digest is the same
	var httpGets atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpGets.Add(1)
		if r.URL.Path != "/v2.tar.gz" {
			http.NotFound(w, r)
			return
		}
		w.Write(v2Art)
	}))
	defer hs.Close()

	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	fc.waitFor(t, "hello", 10*time.Second, func(h []*v1.Hello, _ []*v1.ServiceReport) bool { return len(h) == 1 })
	fc.mu.Lock()
	hello := fc.hellos[0]
	fc.mu.Unlock()
	if hello.GetHostId() != testHostID || hello.GetAgentVersion() != "test" || hello.GetLabels()["port"] != "8081" || len(hello.GetServices()) != 0 {
		t.Fatalf("hello %v", hello)
	}

	// v1 from the coordinator's store becomes healthy.
	fc.assign(testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 1, v1.Phase_PHASE_HEALTHY, "1.0.0") && r.GetLastGoodVersion() == "1.0.0"
	})
	if got := currentLink(t, dataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	if !alive(readPID(t, pidFile)) {
		t.Fatal("v1 not running")
	}
	logData, _ := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log"))
	if !strings.Contains(string(logData), "started port=8081") {
		t.Fatalf("service log %q: env not expanded", logData)
	}

	// v2 from a URL fails its check: reverted to v1.
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), hs.URL+"/v2.tar.gz")
	a2.Spec.HealthyDeadline = durationpb.New(2 * time.Second)
	fc.assign(a2)
	fc.waitFor(t, "v2 reverted", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0") && r.GetLastGoodVersion() == "1.0.0" && r.GetTargetVersion() == "2.0.0"
	})
	fc.mu.Lock()
	r := lastReport(fc.reports, testSvc)
	fc.mu.Unlock()
	if !strings.Contains(r.GetReason(), "2.0.0: not healthy within 2s") || !strings.Contains(r.GetReason(), "script") {
		t.Fatalf("reason %q", r.GetReason())
	}
	if got := currentLink(t, dataDir); got != "1.0.0" {
		t.Fatalf("current -> %q after revert", got)
	}
	if httpGets.Load() == 0 {
		t.Fatal("v2 was not fetched from its URL")
	}
	revertedPID := readPID(t, pidFile)

	// An invalid assignment is reported FAILED naming the field; nothing changes.
	bad := testAssignment("3.0.0", 3, "not-a-digest", 10, "")
	fc.assign(bad)
	fc.waitFor(t, "invalid reported", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 3, v1.Phase_PHASE_FAILED, "1.0.0") && strings.Contains(r.GetReason(), "release.artifact.sha256")
	})

	// Rollback to the running release: healthy at once, no restart.
	fc.assign(testAssignment("1.0.0", 4, d1, int64(len(v1Art)), ""))
	fc.waitFor(t, "rollback healthy", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 4, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if pid := readPID(t, pidFile); pid != revertedPID {
		t.Fatalf("restarted for a repeat of the running release: pid %d -> %d", revertedPID, pid)
	}
	// The failed 2.0.0 stays unpacked: it is among the newest
	// --keep-releases (3); pruning is tested in TestPruneInBackgroundBeforeNextFetch
	// and TestFetchRefusedWhenTheDiskIsShort.

	// Shutdown leaves the service running, with its PID file.
	cancel()
	waitDone(t, done)
	if !alive(revertedPID) {
		t.Fatal("the service died with the agent")
	}
	if pid := readPID(t, pidFile); pid != revertedPID {
		t.Fatalf("pid file names %d after shutdown, want %d", pid, revertedPID)
	}

	// Restart: Hello carries v1 as current and last good; the running v1 is
	// adopted, not restarted, and stays healthy.
	fc.mu.Lock()
	nHellos, nReports := len(fc.hellos), len(fc.reports)
	fc.mu.Unlock()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	fc.waitFor(t, "hello after restart", 10*time.Second, func(h []*v1.Hello, _ []*v1.ServiceReport) bool { return len(h) > nHellos })
	fc.mu.Lock()
	h2 := fc.hellos[nHellos]
	fc.mu.Unlock()
	if len(h2.GetServices()) != 1 || h2.GetServices()[0].GetCurrentVersion() != "1.0.0" ||
		h2.GetServices()[0].GetLastGoodVersion() != "1.0.0" || h2.GetServices()[0].GetGeneration() != 4 ||
		h2.GetServices()[0].GetPhase() != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("hello after restart: %v", h2)
	}
	fc.waitFor(t, "healthy after restart", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nReports:], testSvc), 4, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if pid := readPID(t, pidFile); pid != revertedPID || !alive(pid) {
		t.Fatalf("v1 restarted by the new agent: pid %d, was %d", pid, revertedPID)
	}
	cancel2()
	waitDone(t, done2)
}

func TestAgentReconnectsAndCyclesCoordinators(t *testing.T) {
	// The first address refuses connections; the agent must move on to the
	// second and say Hello there.
	dead := newFakeCoordinator(t)
	dead.srv.Stop()
	fc := newFakeCoordinator(t)
	cfg := Config{Insecure: true, Coordinators: []string{dead.addr, fc.addr}, HostID: testHostID, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "hello on the second coordinator", 10*time.Second, func(h []*v1.Hello, _ []*v1.ServiceReport) bool { return len(h) >= 1 })
	// Breaking the stream makes the agent come back with a new Hello.
	fc.srv.Stop()
	fc2 := newFakeCoordinatorAt(t, fc.addr)
	fc2.waitFor(t, "hello after reconnect", 10*time.Second, func(h []*v1.Hello, _ []*v1.ServiceReport) bool { return len(h) >= 1 })
	cancel()
	waitDone(t, done)
}

func TestRunRejectsBadConfigAndSharedDataDir(t *testing.T) {
	if err := Run(context.Background(), Config{HostID: "h", DataDir: t.TempDir()}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "coordinators") {
		t.Fatalf("err %v", err)
	}
	dir := t.TempDir()
	unlock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	err = Run(context.Background(), Config{Insecure: true, Coordinators: []string{"127.0.0.1:1"}, HostID: "h", DataDir: dir}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("err %v", err)
	}
}

func TestRunRejectsCorruptState(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state", "web.json")
	if err := os.WriteFile(path, []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), Config{Insecure: true, Coordinators: []string{"127.0.0.1:1"}, HostID: "h", DataDir: dir}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("err %v", err)
	}
}
