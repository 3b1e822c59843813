package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestConfigChangeRestartsWithTheNewSpec: the release that runs, assigned
// again with a spec that changes what runs (its env), is restarted with
// it; one whose checks then fail is reverted to the same release with the
// spec it ran before; a spec that changes only the rollout policy is taken
// without a restart. Real processes.
func TestConfigChangeRestartsWithTheNewSpec(t *testing.T) {
	fc := newFakeCoordinator(t)
	// The service writes its MODE into the release directory; the check
	// fails while the running process's MODE is "bad".
	art := tarGz(t, map[string]string{
		"run.sh":   "#!/bin/sh\necho \"started mode=$MODE\"\necho \"$MODE\" > mode\nexec sleep 300\n",
		"check.sh": "#!/bin/sh\n[ \"$(cat mode)\" != bad ]\n",
	})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	assign := func(gen int64, mode string, maxParallel uint32) {
		a := testAssignment("1.0.0", gen, digest, int64(len(art)), "")
		a.Spec.Run.Env["MODE"] = mode
		a.Spec.HealthyDeadline = durationpb.New(3 * time.Second)
		a.Spec.Rollout = &v1.RolloutPolicy{MaxParallel: maxParallel}
		a.SpecRevision = gen
		fc.assign(a)
	}
	waitReport := func(what string, gen int64, phase v1.Phase) {
		t.Helper()
		fc.waitFor(t, what, 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			return reportIs(lastReport(rs, testSvc), gen, phase, "1.0.0")
		})
	}
	modes := func() string {
		b, _ := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log"))
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if m, ok := strings.CutPrefix(l, "started mode="); ok {
				out = append(out, m)
			}
		}
		return strings.Join(out, " ")
	}

	assign(1, "a", 1)
	waitReport("healthy with mode a", 1, v1.Phase_PHASE_HEALTHY)
	pidA := readPID(t, pidFile)

	// Same release, new env: restarted with it.
	assign(2, "b", 1)
	waitReport("healthy with mode b", 2, v1.Phase_PHASE_HEALTHY)
	pidB := readPID(t, pidFile)
	if pidB == pidA || alive(pidA) {
		t.Fatalf("not restarted for a new env: pid %d -> %d (old alive %v)", pidA, pidB, alive(pidA))
	}
	if got := modes(); got != "a b" {
		t.Fatalf("starts by mode: %q, want \"a b\"", got)
	}

	// A spec whose process fails its check: reverted to mode b.
	assign(3, "bad", 1)
	waitReport("reverted to mode b", 3, v1.Phase_PHASE_REVERTED)
	if got := modes(); got != "a b bad b" {
		t.Fatalf("starts by mode: %q, want \"a b bad b\"", got)
	}
	if got := currentLink(t, dataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	pidB2 := readPID(t, pidFile)

	// The coordinator assigns the last good spec again (a newer generation)
	// with another rollout policy: nothing hosts run changes, no restart.
	assign(4, "b", 5)
	waitReport("healthy at generation 4", 4, v1.Phase_PHASE_HEALTHY)
	if pid := readPID(t, pidFile); pid != pidB2 || !alive(pid) {
		t.Fatalf("restarted for a spec that changes nothing hosts run: pid %d -> %d", pidB2, pid)
	}
	if got := modes(); got != "a b bad b" {
		t.Fatalf("starts by mode: %q", got)
	}
	cancel()
	waitDone(t, done)
}
