package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// blockingStage returns a stage hook that holds the stage of version until
// its context ends, and channels that say when it started and ended.
func blockingStage(version string) (hook func(context.Context, string, string), started, ended chan struct{}) {
	started, ended = make(chan struct{}, 4), make(chan struct{}, 4)
	hook = func(ctx context.Context, _, v string) {
		if v != version {
			return
		}
		started <- struct{}{}
		<-ctx.Done()
		ended <- struct{}{}
	}
	return hook, started, ended
}

// A stage (unpacking a large or hostile archive) must not hold up a newer
// assignment: it is cancelled as soon as a newer release is waiting, and
// the abandoned install is not a failure. Before, Stage took no context:
// the newer release waited for the unpacking to end (minutes for the
// archive of issue 13).
func TestNewerAssignmentCancelsStage(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	opts := testOptions()
	var hook func(context.Context, string, string)
	var started, ended chan struct{}
	hook, started, ended = blockingStage("1.0.0")
	opts.stageHook = hook
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)

	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))
	recv(t, "the v1 stage to start", started, 20*time.Second)
	fc.assign(testAssignment("2.0.0", 2, d, int64(len(art)), ""))
	recv(t, "the v1 stage to be cancelled", ended, 20*time.Second)
	fc.waitFor(t, "v2 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	fc.mu.Lock()
	for _, r := range fc.reports {
		if r.GetPhase() == v1.Phase_PHASE_FAILED {
			t.Errorf("cancelled stage reported as a failure: %v", r)
		}
	}
	fc.mu.Unlock()
	cancel()
	waitDone(t, done)
}

// The agent's shutdown does not wait for a stage either.
func TestShutdownCancelsStage(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	opts := testOptions()
	hook, started, ended := blockingStage("1.0.0")
	var stages atomic.Int32
	opts.stageHook = func(ctx context.Context, svc, v string) { stages.Add(1); hook(ctx, svc, v) }
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))
	recv(t, "the stage to start", started, 20*time.Second)
	cancel()
	recv(t, "the stage to be cancelled", ended, 20*time.Second)
	waitDone(t, done)
	if n := stages.Load(); n != 1 {
		t.Fatalf("%d stages, want 1", n)
	}
}
