package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestFetchRefusedWhenTheDiskIsShort: on a real 16 MiB filesystem (a
// tmpfs; needs root) an artifact of 8 MiB (24 MiB needed) is refused
// before anything is downloaded: the host reports FAILED naming the free
// space, and the running release is untouched. Older releases than the
// newest --keep-releases are pruned, current and last good kept.
func TestFetchRefusedWhenTheDiskIsShort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) }) // last: after the services stopped
	fc := newFakeCoordinator(t)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: filepath.Join(dir, "data"), KeepReleases: 1}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	pidFile := filepath.Join(cfg.DataDir, "run", testSvc+".pid")
	for gen, v := range []string{"1.0.0", "2.0.0", "3.0.0"} {
		art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "VERSION": v})
		fc.assign(testAssignment(v, int64(gen+1), fc.addArtifact(art), int64(len(art)), ""))
		fc.waitFor(t, v+" healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			return reportIs(lastReport(rs, testSvc), int64(gen+1), v1.Phase_PHASE_HEALTHY, v)
		})
	}
	// Kept: the newest staged (3.0.0, also current and last good) and the
	// release a revert in its watch would go back to (2.0.0).
	testkitReleases := func() []string {
		es, _ := os.ReadDir(filepath.Join(cfg.DataDir, "releases", testSvc))
		var out []string
		for _, e := range es {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	fc.waitFor(t, "1.0.0 pruned", time.Minute, func([]*v1.Hello, []*v1.ServiceReport) bool {
		got := testkitReleases()
		return len(got) == 2 && got[0] == "2.0.0" && got[1] == "3.0.0"
	})
	pid := readPID(t, pidFile)

	big := testAssignment("4.0.0", 4, strings.Repeat("ab", 32), 8<<20, "")
	fc.assign(big)
	var reason string
	fc.waitFor(t, "4.0.0 refused", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		reason = r.GetReason()
		return r.GetGeneration() == 4 && r.GetPhase() == v1.Phase_PHASE_FAILED
	})
	if !strings.Contains(reason, "fetch 4.0.0: not enough free space on the filesystem of "+cfg.DataDir) ||
		!strings.Contains(reason, "need 24.0 MiB (3 × the artifact's 8.0 MiB") {
		t.Fatalf("reason %q", reason)
	}
	if got := currentLink(t, cfg.DataDir); got != "3.0.0" || readPID(t, pidFile) != pid || !alive(pid) {
		t.Fatalf("current -> %q, pid %d (was %d)", got, readPID(t, pidFile), pid)
	}
}
