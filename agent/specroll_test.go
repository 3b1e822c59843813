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

// TestJudgingOnlyChangeKeepsTheProcess: the release that runs, assigned
// again with a spec that changes only how it is judged (its checks,
// min_healthy_time, healthy_deadline), is installed in place: the same
// process (same PID, one start in its log) is checked under the new spec,
// CHECKING -> HEALTHY, across an agent restart in the middle too; a new
// check that fails reverts in place (same PID, the last good spec's check
// runs again: REVERTED); a change of run.env with it still restarts. The
// reports say which installs were in place (in_place), across the agent
// restart too. Real processes.
func TestJudgingOnlyChangeKeepsTheProcess(t *testing.T) {
	fc := newFakeCoordinator(t)
	flag := filepath.Join(t.TempDir(), "pass")
	art := tarGz(t, map[string]string{
		"run.sh":    runScript,
		"check.sh":  goodCheck,
		"gated.sh":  passingAfter(flag),
		"broken.sh": badCheck,
	})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	assign := func(gen int64, check string, mod func(*v1.Assignment)) {
		a := testAssignment("1.0.0", gen, digest, int64(len(art)), "")
		a.Spec.Checks[0].Name = check
		a.Spec.Checks[0].GetExec().Command = []string{"./" + check + ".sh"}
		a.SpecRevision = gen
		if mod != nil {
			mod(a)
		}
		fc.assign(a)
	}
	waitReport := func(what string, from int, gen int64, phase v1.Phase) *v1.ServiceReport {
		t.Helper()
		var got *v1.ServiceReport
		fc.waitFor(t, what, time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			got = lastReport(rs[min(from, len(rs)):], testSvc)
			return reportIs(got, gen, phase, "1.0.0")
		})
		return got
	}
	samePID := func(what string, want int) {
		t.Helper()
		if got := readPID(t, pidFile); got != want || !alive(want) {
			t.Fatalf("%s: pid %d -> %d (old alive %v): restarted", what, want, got, alive(want))
		}
		waitStarts(t, dataDir, 1)
	}

	assign(1, "check", nil)
	waitReport("healthy", 0, 1, v1.Phase_PHASE_HEALTHY)
	pid := readPID(t, pidFile)
	waitStarts(t, dataDir, 1)

	// Another check (passing only once flag exists) and other durations:
	// in place, CHECKING under the new check with the same process.
	assign(2, "gated", func(a *v1.Assignment) {
		a.Spec.MinHealthyTime = durationpb.New(500 * time.Millisecond)
		a.Spec.HealthyDeadline = durationpb.New(time.Minute)
	})
	r := waitReport("checking the new check in place", 0, 2, v1.Phase_PHASE_CHECKING)
	fc.waitFor(t, "the new check failing", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r = lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_CHECKING, "1.0.0") && len(r.GetChecks()) == 1 &&
			r.GetChecks()[0].GetName() == "gated" && !r.GetChecks()[0].GetOk()
	})
	samePID("checking in place", pid)

	// The agent restarts in the middle: the next one adopts the process
	// and checks it under the new spec.
	cancel()
	waitDone(t, done)
	nr := reportCount(fc)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	waitReport("the new agent checking in place", nr, 2, v1.Phase_PHASE_CHECKING)
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := waitReport("healthy in place", nr, 2, v1.Phase_PHASE_HEALTHY); !r.GetInPlace() {
		t.Fatalf("healthy in place after an agent restart: report %v does not say in_place (the state file keeps it)", r)
	}
	samePID("healthy in place after an agent restart", pid)

	// A new check that fails: reverted in place, the last good check
	// (gated) runs again.
	nr = reportCount(fc)
	assign(3, "broken", func(a *v1.Assignment) { a.Spec.HealthyDeadline = durationpb.New(2 * time.Second) })
	r = waitReport("reverted in place", nr, 3, v1.Phase_PHASE_REVERTED)
	if !strings.Contains(r.GetReason(), "not healthy within 2s") || len(r.GetChecks()) != 1 || r.GetChecks()[0].GetName() != "gated" || !r.GetChecks()[0].GetOk() {
		t.Fatalf("reverted with reason %q checks %v: want the broken check's failure and the gated check passing", r.GetReason(), r.GetChecks())
	}
	if !r.GetInPlace() {
		t.Fatalf("reverted in place: report %v does not say in_place", r)
	}
	samePID("reverted in place", pid)

	// A judging change together with run.env: restarted.
	assign(4, "check", func(a *v1.Assignment) { a.Spec.Run.Env["MODE"] = "b" })
	if r := waitReport("healthy with a new env", nr, 4, v1.Phase_PHASE_HEALTHY); r.GetInPlace() {
		t.Fatalf("restarted with a new env: report %v says in_place", r)
	}
	if got := readPID(t, pidFile); got == pid || alive(pid) {
		t.Fatalf("not restarted for a new env: pid %d -> %d (old alive %v)", pid, got, alive(pid))
	}
	waitStarts(t, dataDir, 2)
	cancel2()
	waitDone(t, done2)
}
