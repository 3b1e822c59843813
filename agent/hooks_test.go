package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// hookScript is every hook of the hook tests' releases: it appends a
// marker line to $MARKERS with what it is, where it runs and its
// environment, prints a line to the service log, and fails (fail-NAME in
// its release) or hangs (hang-NAME) when told to.
const hookScript = `#!/bin/sh
echo "hook $FLEETWAVE_HOOK of $(cat VERSION) pid $$"
echo "$FLEETWAVE_HOOK version=$FLEETWAVE_VERSION file=$(cat VERSION) dir=$(pwd) service=$FLEETWAVE_SERVICE op=$FLEETWAVE_OPERATION previous=${FLEETWAVE_PREVIOUS_VERSION-unset} next=${FLEETWAVE_NEXT_VERSION-unset} host=$FLEETWAVE_HOST_ID color=$COLOR" >> "$MARKERS"
if [ -e "fail-$FLEETWAVE_HOOK" ]; then
	echo "smoke test: GET /checkout answered 500"
	echo "giving up" >&2
	exit 3
fi
if [ -e "hang-$FLEETWAVE_HOOK" ]; then
	echo "hung $$" >> "$MARKERS"
	exec sleep 300
fi
`

// hookRunScript is the service of the hook tests: it logs its start with
// its release and sleeps.
const hookRunScript = "#!/bin/sh\necho \"started $(cat VERSION)\"\nexec sleep 300\n"

// hookRelease serves a release of the hook tests (extra: files such as
// fail-validate) and returns its assignment, with every hook.
func hookRelease(t *testing.T, fc *fakeCoordinator, version string, gen int64, markers string, extra ...string) *v1.Assignment {
	t.Helper()
	files := map[string]string{"run.sh": hookRunScript, "check.sh": goodCheck, "hook.sh": hookScript, "VERSION": version + "\n"}
	for _, f := range extra {
		files[f] = ""
	}
	art := tarGz(t, files)
	d := fc.addArtifact(art)
	a := testAssignment(version, gen, d, int64(len(art)), "")
	a.Spec.Run.Command = []string{"./run.sh"}
	a.Spec.Run.Env = map[string]string{"MARKERS": markers, "COLOR": "blue-${host.id}"}
	hook := func() *v1.Hook {
		return &v1.Hook{Command: []string{"./hook.sh"}, Timeout: durationpb.New(time.Minute)}
	}
	a.Spec.Hooks = &v1.Hooks{AfterInstall: hook(), BeforeStart: hook(), AfterStart: hook(), Validate: hook(), BeforeStop: hook()}
	return a
}

// markerLines reads the hooks' markers.
func markerLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// newHookAgent starts an agent for the hook tests.
func newHookAgent(t *testing.T) (*fakeCoordinator, Config, string) {
	t.Helper()
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	return fc, cfg, filepath.Join(t.TempDir(), "markers")
}

// TestHooksRunInOrderFromTheirRelease: a first install runs after_install,
// before_start, after_start and validate of its release; the next one runs
// the new release's after_install before the switch, the old release's
// before_stop from the old release's directory (with the new one as next),
// then the new release's before_start, after_start and validate, each from
// its own directory with the service's environment and the FLEETWAVE_*
// variables; the service starts after before_start.
func TestHooksRunInOrderFromTheirRelease(t *testing.T) {
	fc, cfg, markers := newHookAgent(t)
	fc.assign(hookRelease(t, fc, "1.0.0", 1, markers))
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	fc.assign(hookRelease(t, fc, "2.0.0", 2, markers))
	fc.waitFor(t, "2.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	dir := func(v string) string { return filepath.Join(cfg.DataDir, "releases", testSvc, v) }
	common := " service=" + testSvc + " op=install "
	want := []string{
		"after_install version=1.0.0 file=1.0.0 dir=" + dir("1.0.0") + common + "previous= next=unset",
		"before_start version=1.0.0 file=1.0.0 dir=" + dir("1.0.0") + common + "previous= next=unset",
		"after_start version=1.0.0 file=1.0.0 dir=" + dir("1.0.0") + common + "previous= next=unset",
		"validate version=1.0.0 file=1.0.0 dir=" + dir("1.0.0") + common + "previous= next=unset",
		"after_install version=2.0.0 file=2.0.0 dir=" + dir("2.0.0") + common + "previous=1.0.0 next=unset",
		// The release being stopped runs its own before_stop.
		"before_stop version=1.0.0 file=1.0.0 dir=" + dir("1.0.0") + common + "previous=unset next=2.0.0",
		"before_start version=2.0.0 file=2.0.0 dir=" + dir("2.0.0") + common + "previous=1.0.0 next=unset",
		"after_start version=2.0.0 file=2.0.0 dir=" + dir("2.0.0") + common + "previous=1.0.0 next=unset",
		"validate version=2.0.0 file=2.0.0 dir=" + dir("2.0.0") + common + "previous=1.0.0 next=unset",
	}
	got := markerLines(t, markers)
	if len(got) != len(want) {
		t.Fatalf("markers:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if w := want[i] + " host=" + testHostID + " color=blue-" + testHostID; got[i] != w {
			t.Errorf("marker %d:\n got %s\nwant %s", i, got[i], w)
		}
	}
	// In the service log: each hook's output where it ran, the service's
	// start after before_start (its first line may come after after_start
	// began: the process runs, not necessarily printed yet).
	log, err := os.ReadFile(filepath.Join(cfg.DataDir, "logs", testSvc+".log"))
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) int {
		i := strings.Index(string(log), s)
		if i < 0 {
			t.Fatalf("service log has no %q:\n%s", s, log)
		}
		return i
	}
	if !(at("hook before_stop of 1.0.0") < at("hook before_start of 2.0.0") &&
		at("hook before_start of 2.0.0") < at("started 2.0.0") && at("hook before_start of 2.0.0") < at("hook after_start of 2.0.0") &&
		at("hook after_start of 2.0.0") < at("hook validate of 2.0.0")) {
		t.Fatalf("service log out of order:\n%s", log)
	}
}

// TestFailingHookReverts: a release whose validate fails is reverted by
// the host, the reason naming the hook, its exit status and the end of
// its output, and the stop of the failed release runs its own
// before_stop; a release whose after_install fails is never switched to:
// the host reports FAILED and the last good release's process runs on.
func TestFailingHookReverts(t *testing.T) {
	fc, cfg, markers := newHookAgent(t)
	pidFile := filepath.Join(cfg.DataDir, "run", testSvc+".pid")
	fc.assign(hookRelease(t, fc, "1.0.0", 1, markers))
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})

	fc.assign(hookRelease(t, fc, "2.0.0", 2, markers, "fail-validate"))
	var reason string
	fc.waitFor(t, "2.0.0 reverted", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		reason = r.GetReason()
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	for _, want := range []string{"hook validate of 2.0.0 failed: exit status 3", "smoke test: GET /checkout answered 500 | giving up"} {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q does not say %q", reason, want)
		}
	}
	if got := currentLink(t, cfg.DataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	stop := "before_stop version=2.0.0 file=2.0.0 dir=" + filepath.Join(cfg.DataDir, "releases", testSvc, "2.0.0") +
		" service=" + testSvc + " op=revert previous=unset next=1.0.0"
	if got := markerLines(t, markers); !strings.Contains(strings.Join(got, "\n"), stop) {
		t.Fatalf("the failed release's before_stop did not run from its release:\n%s\nwant a line starting %s", strings.Join(got, "\n"), stop)
	}
	pid := readPID(t, pidFile)

	fc.assign(hookRelease(t, fc, "3.0.0", 3, markers, "fail-after_install"))
	fc.waitFor(t, "3.0.0 failed", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		reason = r.GetReason()
		return r.GetGeneration() == 3 && r.GetPhase() == v1.Phase_PHASE_FAILED
	})
	if !strings.Contains(reason, "hook after_install of 3.0.0 failed: exit status 3") {
		t.Errorf("reason %q", reason)
	}
	if got := currentLink(t, cfg.DataDir); got != "1.0.0" || readPID(t, pidFile) != pid || !alive(pid) {
		t.Fatalf("after a failed after_install: current -> %q, pid %d (was %d)", got, readPID(t, pidFile), pid)
	}
}

// TestTimedOutHookIsKilledAndReverts: an after_start that overruns its
// timeout is killed (its process is gone) and the host reverts, saying so.
func TestTimedOutHookIsKilledAndReverts(t *testing.T) {
	fc, cfg, markers := newHookAgent(t)
	fc.assign(hookRelease(t, fc, "1.0.0", 1, markers))
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	a2 := hookRelease(t, fc, "2.0.0", 2, markers, "hang-after_start")
	a2.Spec.Hooks.AfterStart.Timeout = durationpb.New(300 * time.Millisecond)
	fc.assign(a2)
	var reason string
	fc.waitFor(t, "2.0.0 reverted", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		reason = r.GetReason()
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	if !strings.Contains(reason, "hook after_start of 2.0.0 failed: timed out after 300ms: killed") {
		t.Errorf("reason %q", reason)
	}
	// On a loaded machine the 300 ms can run out before the script has
	// written its "hung" line: what must hold either way is that no process
	// of that hook is left anywhere (found by its environment).
	for _, l := range markerLines(t, markers) {
		if n, ok := strings.CutPrefix(l, "hung "); ok {
			if pid, _ := strconv.Atoi(n); pid == 0 || alive(pid) {
				t.Fatalf("the hung hook (pid %s) is still running", n)
			}
		}
	}
	if left := processesWithEnv(t, "MARKERS="+markers, "FLEETWAVE_HOOK=after_start"); len(left) > 0 {
		t.Fatalf("processes of the timed-out hook are still running: %v", left)
	}
	if got := currentLink(t, cfg.DataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
}

// TestFailingBeforeStopKeepsTheOldRelease: an install whose old release's
// before_stop fails (from the old release's directory, with the spec it
// was installed with) fails the install: the old process is not
// signalled and keeps running (the same pid), the new release never
// starts (its before_start never runs), `current` points at the old
// release again, and the host reports REVERTED naming the hook, its
// release, its exit status and the last lines of its output. Real
// processes and files.
func TestFailingBeforeStopKeepsTheOldRelease(t *testing.T) {
	fc, cfg, markers := newHookAgent(t)
	pidFile := filepath.Join(cfg.DataDir, "run", testSvc+".pid")
	fc.assign(hookRelease(t, fc, "1.0.0", 1, markers, "fail-before_stop"))
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pid := readPID(t, pidFile)

	fc.assign(hookRelease(t, fc, "2.0.0", 2, markers))
	var r *v1.ServiceReport
	fc.waitFor(t, "2.0.0 reverted", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r = lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	for _, want := range []string{"2.0.0", "hook before_stop of 1.0.0 failed (1.0.0 keeps running): exit status 3", "last output: ", "smoke test: GET /checkout answered 500 | giving up"} {
		if !strings.Contains(r.GetReason(), want) {
			t.Errorf("reason %q does not say %q", r.GetReason(), want)
		}
	}
	if r.GetLastGoodVersion() != "1.0.0" {
		t.Errorf("last good %q", r.GetLastGoodVersion())
	}
	if got := currentLink(t, cfg.DataDir); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
	if now := readPID(t, pidFile); now != pid || !alive(pid) {
		t.Fatalf("the old process (pid %d) did not keep running: pid file says %d, alive %v", pid, now, alive(pid))
	}
	lines := markerLines(t, markers)
	stop := "before_stop version=1.0.0 file=1.0.0 dir=" + filepath.Join(cfg.DataDir, "releases", testSvc, "1.0.0") +
		" service=" + testSvc + " op=install previous=unset next=2.0.0"
	var stops int
	for _, l := range lines {
		if strings.HasPrefix(l, stop) {
			stops++
		}
		if strings.HasPrefix(l, "before_start version=2.0.0") || strings.HasPrefix(l, "after_start version=2.0.0") {
			t.Errorf("2.0.0 was started: %s", l)
		}
	}
	if stops != 1 {
		t.Fatalf("the old release's before_stop ran %d times, want once from its release:\n%s\nwant a line starting %s", stops, strings.Join(lines, "\n"), stop)
	}
	log, err := os.ReadFile(filepath.Join(cfg.DataDir, "logs", testSvc+".log"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), "started 2.0.0") || strings.Count(string(log), "started 1.0.0") != 1 {
		t.Fatalf("service log: the old release restarted or the new one started:\n%s", log)
	}
}

// processesWithEnv lists the live processes whose environment holds every
// one of vars (NAME=value).
func processesWithEnv(t *testing.T, vars ...string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		env := map[string]bool{}
		for _, kv := range strings.Split(string(b), "\x00") {
			env[kv] = true
		}
		all := true
		for _, v := range vars {
			all = all && env[v]
		}
		if all && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
