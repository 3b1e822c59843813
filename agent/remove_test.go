package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestRemoveStopsTheServiceAndRemovesItsFiles: a removal stops the
// process and removes the service's releases, `current`, PID file and
// state; the log stays. A release assigned afterwards, at a lower
// generation, installs. Real processes.
func TestRemoveStopsTheServiceAndRemovesItsFiles(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	fc.assign(testAssignment("1.0.0", 1, digest, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pid := readPID(t, pidFile)
	stateFile := filepath.Join(dataDir, "state", testSvc+".json")
	if _, err := os.Stat(stateFile); err != nil {
		t.Fatalf("state before the removal: %v", err)
	}

	fc.assign(&v1.Assignment{Service: testSvc, Generation: 5, Remove: true})
	fc.waitFor(t, "removed", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 5, v1.Phase_PHASE_REMOVED, "")
	})
	if alive(pid) {
		t.Errorf("the service (pid %d) still runs", pid)
	}
	for _, p := range []string{filepath.Join(dataDir, "releases", testSvc), pidFile, stateFile} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after the removal (%v)", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, "logs", testSvc+".log")); err != nil {
		t.Errorf("the service log is gone: %v", err)
	}

	// Removed: a release assigned later installs, whatever its generation.
	fc.assign(testAssignment("1.0.0", 2, digest, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy again", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if p := readPID(t, pidFile); !alive(p) || p == pid {
		t.Errorf("after the new install: pid %d (removed one %d)", p, pid)
	}
	cancel()
	waitDone(t, done)
}
