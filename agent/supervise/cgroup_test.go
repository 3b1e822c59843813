package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/rs/zerolog"
)

// testCgroups opens cgroups below a parent of this test's own, removed at
// the end (every test's cgroups must be gone by then: checked). It skips
// when the machine has no usable cgroups, saying why.
func testCgroups(t *testing.T) *Cgroups {
	t.Helper()
	parent := fmt.Sprintf("fleetwave-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	c := OpenCgroups(parent)
	if !c.Usable() {
		t.Skipf("cgroups unusable on this machine: %s", c.Reason())
	}
	t.Cleanup(func() {
		for _, d := range cgroupDirs(c) { // a failed test's (the tests check there are none)
			_ = os.Remove(d)
		}
		for _, d := range c.dirs() {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove the test's cgroup %s: %v", d, err)
			}
		}
	})
	return c
}

// dirs are the directories of the parent cgroup (one per v1 controller).
func (c *Cgroups) dirs() []string {
	if c.mode == CgroupV2 {
		return []string{filepath.Join(c.root, c.parent)}
	}
	var out []string
	for _, n := range v1Controllers {
		out = append(out, filepath.Join(cgroupRoot, string(n), c.parent))
	}
	return out
}

// cgroupDirs lists every cgroup below the parent, deepest first.
func cgroupDirs(c *Cgroups) []string {
	var out []string
	for _, d := range c.dirs() {
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() && p != d {
				out = append([]string{p}, out...)
			}
			return nil
		})
	}
	return out
}

// cgroupFile reads a file of the cgroup at path: v1name in controller's
// hierarchy on v1, v2name on v2.
func cgroupFile(t *testing.T, c *Cgroups, controller, v1name, v2name, path string) string {
	t.Helper()
	f := filepath.Join(cgroupRoot, controller, path, v1name)
	if c.mode == CgroupV2 {
		f = filepath.Join(c.root, path, v2name)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatalf("read %s: %v", f, err)
	}
	return strings.TrimSpace(string(b))
}

// cgroupOf is the cgroup (from the hierarchy's root) pid runs in, in the
// memory controller's hierarchy on v1.
func cgroupOf(t *testing.T, c *Cgroups, pid int) string {
	t.Helper()
	g := c.find(pid)
	if g == nil {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		t.Fatalf("pid %d is not in a cgroup below %s:\n%s", pid, c.parent, b)
	}
	return g.path
}

func shellConfig(t *testing.T, script string) Config {
	t.Helper()
	dir := t.TempDir()
	return Config{
		Service:    "svc",
		Dir:        dir,
		Command:    []string{"/bin/sh", "-c", script},
		LogPath:    filepath.Join(dir, "service.log"),
		PIDFile:    filepath.Join(dir, "service.pid"),
		StopGrace:  5 * time.Second,
		MinBackoff: time.Hour, // one run: no restart in these tests
		MaxBackoff: time.Hour,
	}
}

// daemon starts a process that leaves the process group (setsid) and
// ignores SIGTERM: only its cgroup still holds it.
const daemon = `setsid sh -c 'trap "" TERM; exec sleep 600' </dev/null`

var grandchildRE = regexp.MustCompile(`grandchild pid=(\d+)`)

// TestCgroupLimitsWritten: each instance runs in its own cgroup below the
// agent's, entered before the service's own code runs (the gate), with
// memory_max, cpu_weight (v1: cpu.shares as systemd maps it) and
// tasks_max written; the stop removes it.
func TestCgroupLimitsWritten(t *testing.T) {
	c := testCgroups(t)
	cfg := helperConfig(t, "serve")
	cfg.Cgroups = c
	cfg.Limits = Limits{MemoryMax: 64 << 20, CPUWeight: 200, TasksMax: 64}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	path := cgroupOf(t, c, pid)
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(c.Parent()) + `/helper/[0-9a-f]{12}$`).MatchString(path) {
		t.Fatalf("cgroup %s, want %s/helper/<instance>", path, c.Parent())
	}
	if got := cgroupFile(t, c, "memory", "memory.limit_in_bytes", "memory.max", path); got != strconv.Itoa(64<<20) {
		t.Errorf("memory limit %s, want %d", got, 64<<20)
	}
	if c.Mode() == CgroupV1 {
		if got := cgroupFile(t, c, "cpu", "cpu.shares", "", path); got != "2048" {
			t.Errorf("cpu.shares %s, want 2048 (weight 200)", got)
		}
	} else if got := cgroupFile(t, c, "", "", "cpu.weight", path); got != "200" {
		t.Errorf("cpu.weight %s, want 200", got)
	}
	if got := cgroupFile(t, c, "pids", "pids.max", "pids.max", path); got != "64" {
		t.Errorf("pids.max %s, want 64", got)
	}
	stop(t, s)
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left after Stop: %v", left)
	}
}

func TestCPUShares(t *testing.T) {
	for w, want := range map[uint32]uint64{1: 10, 100: 1024, 200: 2048, 10000: 102400} {
		if got := CPUShares(w); got != want {
			t.Errorf("CPUShares(%d) = %d, want %d", w, got, want)
		}
	}
}

// TestMemoryHogKilledAtLimit: a process allocating past memory_max is
// killed by the kernel, and its exit says it was killed at its memory
// limit.
func TestMemoryHogKilledAtLimit(t *testing.T) {
	c := testCgroups(t)
	cfg := helperConfig(t, "hog")
	cfg.Cgroups = c
	cfg.Limits = Limits{MemoryMax: 64 << 20}
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	e := nextExit(t, s)
	var oom *OOMError
	if !errors.As(e.Err, &oom) || oom.MemoryMax != 64<<20 {
		t.Fatalf("exit %v, want an OOMError at 64Mi; log:\n%s", e.Err, readFile(t, cfg.LogPath))
	}
	var ee *ExitError
	if !errors.As(e.Err, &ee) || ee.Signal != syscall.SIGKILL {
		t.Errorf("exit %v, want SIGKILL under the OOMError", e.Err)
	}
	if !strings.Contains(e.Err.Error(), "killed at its memory limit") {
		t.Errorf("exit reads %q", e.Err)
	}
	if strings.Contains(readFile(t, cfg.LogPath), "hog survived") {
		t.Fatalf("the hog allocated 1 GiB under a 64 MiB limit")
	}
	stop(t, s)
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left: %v", left)
	}
}

// TestForkBombHeldAtTasksMax: a bounded fork bomb (at most 200 processes,
// each leaving the process group and ignoring SIGTERM, should the limit
// fail) is held at tasks_max: its forks fail, the service's main process
// lives on, and stopping the service ends every one of them.
func TestForkBombHeldAtTasksMax(t *testing.T) {
	c := testCgroups(t)
	const tasksMax = 16
	cfg := shellConfig(t, `( i=0; while [ $i -lt 200 ]; do `+daemon+` & i=$((i+1)); done ); echo "bomb ended status $?"; echo ready pid=$$; exec sleep 600`)
	cfg.Cgroups = c
	cfg.Limits = Limits{TasksMax: tasksMax}
	cfg.StopGrace = 500 * time.Millisecond // the bomb's processes ignore SIGTERM
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	log := readFile(t, cfg.LogPath)
	if !(strings.Contains(log, "Cannot fork") || strings.Contains(log, "can't fork")) || strings.Contains(log, "bomb ended status 0") { // dash, busybox
		t.Fatalf("the fork bomb's forks did not fail; log:\n%s", log)
	}
	g := c.find(pid)
	if g == nil {
		t.Fatalf("pid %d in no cgroup of ours", pid)
	}
	pids := g.pids()
	if len(pids) > tasksMax || len(pids) < tasksMax-2 {
		t.Fatalf("%d processes in the cgroup, want at most tasks_max %d (and the bomb near it)", len(pids), tasksMax)
	}
	if !pidAlive(pid) {
		t.Fatalf("the service's main process %d died", pid)
	}
	stop(t, s)
	for _, p := range pids {
		if pidAlive(p) {
			t.Errorf("pid %d of the fork bomb alive after Stop", p)
		}
	}
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left: %v", left)
	}
}

// TestStopEndsDaemonizedGrandchild: a grandchild that left the process
// group (setsid) and ignores SIGTERM is ended by Stop through the cgroup,
// also when the process was detached and found again by a later agent.
func TestStopEndsDaemonizedGrandchild(t *testing.T) {
	for _, adopted := range []bool{false, true} {
		t.Run(fmt.Sprintf("adopted=%v", adopted), func(t *testing.T) {
			c := testCgroups(t)
			s, cfg, pid, gc := startWithDaemon(t, c, 200*time.Millisecond)
			if cgroupOf(t, c, gc) != cgroupOf(t, c, pid) {
				t.Fatalf("grandchild in %s, service in %s", cgroupOf(t, c, gc), cgroupOf(t, c, pid))
			}
			if adopted {
				detach(t, s)
				f, err := FindRunning(cfg.PIDFile, c, testLogger(t))
				if err != nil || f == nil {
					t.Fatalf("FindRunning = %v, %v", f, err)
				}
				if f.p.cg == nil {
					t.Fatalf("the found process's cgroup was not found again")
				}
				if err := f.Stop(cfg.StopGrace, testLogger(t)); err != nil {
					t.Fatalf("Found.Stop: %v", err)
				}
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), within)
				defer cancel()
				if err := s.Stop(ctx); err != nil {
					t.Fatalf("Stop: %v", err)
				}
			}
			if pidAlive(gc) || pidAlive(pid) {
				t.Fatalf("alive after stop: grandchild %v, service %v", pidAlive(gc), pidAlive(pid))
			}
			if left := cgroupDirs(c); len(left) > 0 {
				t.Fatalf("cgroups left: %v", left)
			}
		})
	}
}

// TestLimitsWithoutCgroupsRefused: memory or tasks limits on a host
// without usable cgroups fail the start (nothing runs); a cpu weight alone
// runs.
func TestLimitsWithoutCgroupsRefused(t *testing.T) {
	none := &Cgroups{mode: CgroupNone, reason: "test: none"}
	for _, l := range []Limits{{MemoryMax: 64 << 20}, {TasksMax: 10}} {
		cfg := helperConfig(t, "serve")
		cfg.Cgroups, cfg.Limits = none, l
		s := New(cfg, testLogger(t))
		err := s.Start()
		if !errors.Is(err, ErrCgroupsUnusable) || !strings.Contains(err.Error(), "test: none") {
			t.Fatalf("Start with %+v = %v, want ErrCgroupsUnusable with the reason", l, err)
		}
	}
	cfg := helperConfig(t, "serve")
	cfg.Cgroups, cfg.Limits = none, Limits{CPUWeight: 50}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start with a cpu weight alone: %v", err)
	}
	waitReady(t, cfg.LogPath, 1)
	stop(t, s)
}

// TestOpenCgroupsRefusesBadParent: the parent must be a relative path
// below the root.
func TestOpenCgroupsRefusesBadParent(t *testing.T) {
	for _, p := range []string{"", "/", "..", "a/../../b", "/fleetwave", "a//b", "a/", "./a", strings.Repeat("a", MaxCgroupParent+1)} {
		if c := OpenCgroups(p); c.Usable() || !strings.Contains(c.Reason(), "cgroup parent") || CheckCgroupParent(p) == nil {
			t.Errorf("OpenCgroups(%q): mode %s, reason %q", p, c.Mode(), c.Reason())
		}
	}
	for _, p := range []string{"fleetwave", "ops/fleetwave", "a.b-c_d"} {
		if err := CheckCgroupParent(p); err != nil {
			t.Errorf("CheckCgroupParent(%q) = %v", p, err)
		}
	}
}

// BenchmarkStartToExit measures a start of /bin/true until its exit is
// delivered: in a process group alone, and in its own cgroup (created,
// the gate opened, the cgroup removed after the exit).
func BenchmarkStartToExit(b *testing.B) {
	for _, withCgroup := range []bool{false, true} {
		b.Run(map[bool]string{false: "process-group", true: "cgroup"}[withCgroup], func(b *testing.B) {
			var c *Cgroups
			if withCgroup {
				c = OpenCgroups(fmt.Sprintf("fleetwave-bench-%d", os.Getpid()))
				if !c.Usable() {
					b.Skipf("cgroups unusable: %s", c.Reason())
				}
				defer func() {
					for _, d := range c.dirs() {
						_ = os.Remove(d)
					}
				}()
			}
			dir := b.TempDir()
			for b.Loop() {
				s := New(Config{Service: "bench", Dir: dir, Command: []string{"/bin/true"}, LogPath: filepath.Join(dir, "log"),
					MinBackoff: time.Hour, MaxBackoff: time.Hour, Cgroups: c}, zerolog.Nop())
				if err := s.Start(); err != nil {
					b.Fatal(err)
				}
				<-s.Exits()
				_ = s.Stop(context.Background())
			}
		})
	}
}

// TestTwoInstancesSideBySide: the two processes of a handover (one
// service, two supervisors) run in a cgroup each; stopping the first
// leaves the second and the service's cgroup; stopping the second removes
// everything.
func TestTwoInstancesSideBySide(t *testing.T) {
	c := testCgroups(t)
	var sups []*Supervisor
	var pids []int
	for range 2 {
		cfg := helperConfig(t, "serve")
		cfg.Cgroups = c
		s := New(cfg, testLogger(t))
		if err := s.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		sups = append(sups, s)
		pids = append(pids, waitReady(t, cfg.LogPath, 1)[0])
	}
	first, second := cgroupOf(t, c, pids[0]), cgroupOf(t, c, pids[1])
	if first == second || filepath.Dir(first) != filepath.Dir(second) {
		t.Fatalf("instances in %s and %s, want two cgroups of one service", first, second)
	}
	stop(t, sups[0])
	if !pidAlive(pids[1]) || cgroupOf(t, c, pids[1]) != second {
		t.Fatalf("the second instance did not survive the first's stop")
	}
	if left := cgroupDirs(c); len(left) != 2*len(c.dirs()) {
		t.Fatalf("after the first stop: %v, want the second instance's and the service's cgroups", left)
	}
	stop(t, sups[1])
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left: %v", left)
	}
}

// TestStopTermsDaemonsFirst: a process that left the process group gets
// SIGTERM with the group and may end on its own within the grace; the stop
// does not wait the grace out when everything ended.
func TestStopTermsDaemonsFirst(t *testing.T) {
	c := testCgroups(t)
	cfg := shellConfig(t, `setsid sh -c 'trap "echo daemon terminated; exit 0" TERM; echo daemon trapping; while :; do sleep 0.05; done' </dev/null & echo ready pid=$$; exec sleep 600`)
	cfg.Cgroups = c
	cfg.StopGrace = time.Hour // were it waited out, stop's 20 s would fail the test
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitReady(t, cfg.LogPath, 1)
	testkit.Eventually(t, within, "the daemon's trap set", func() bool { return strings.Contains(readFile(t, cfg.LogPath), "daemon trapping") })
	stop(t, s)
	if !strings.Contains(readFile(t, cfg.LogPath), "daemon terminated") {
		t.Fatalf("the daemon did not get SIGTERM; log:\n%s", readFile(t, cfg.LogPath))
	}
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left: %v", left)
	}
}

// TestRemoveStale: an empty instance cgroup older than the age is removed
// (with its service's cgroup when that is empty); a fresh empty one and an
// old one with a process are kept.
func TestRemoveStale(t *testing.T) {
	c := testCgroups(t)
	old := time.Now().Add(-time.Hour)
	age := func(g *cgroup) {
		t.Helper()
		dir := filepath.Join(cgroupRoot, "memory", g.path)
		if c.Mode() == CgroupV2 {
			dir = filepath.Join(c.root, g.path)
		}
		if err := os.Chtimes(dir, old, old); err != nil {
			t.Fatal(err)
		}
	}
	stale, err := c.create("gone", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	age(stale)
	fresh, err := c.create("fresh", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := helperConfig(t, "serve")
	cfg.Cgroups = c
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	running := c.find(waitReady(t, cfg.LogPath, 1)[0])
	age(running)

	removed, err := c.RemoveStale(StaleCgroupAge, time.Now())
	if err != nil || len(removed) != 1 || removed[0] != stale.path {
		t.Fatalf("RemoveStale = %v, %v; want only %s", removed, err, stale.path)
	}
	for _, d := range cgroupDirs(c) {
		if strings.Contains(d, "/gone") {
			t.Errorf("%s left", d)
		}
	}
	if c.find(waitReady(t, cfg.LogPath, 1)[0]) == nil {
		t.Fatal("the running process's cgroup was removed")
	}
	stop(t, s)
	if err := fresh.remove(); err != nil {
		t.Fatal(err)
	}
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left: %v", left)
	}
}

// TestHookLeavesNothingOutsideCgroup: a hook runs as the service's user,
// which can rewrite the release's hook script; one that starts a setsid'd
// daemon (out of the hook's process group, which is killed when it ends)
// must not leave it running outside any cgroup, unlimited and never
// stopped. With Cgroups the hook runs in a cgroup of its own below the
// service's, emptied and removed when it ends.
func TestHookLeavesNothingOutsideCgroup(t *testing.T) {
	c := testCgroups(t)
	dir := t.TempDir()
	pidFile, cgFile := filepath.Join(dir, "daemon.pid"), filepath.Join(dir, "daemon.cgroup")
	script := "setsid sh -c 'cat /proc/self/cgroup > " + cgFile + "; exec sleep 300' </dev/null >/dev/null 2>&1 &\necho $! > " + pidFile + "\n" +
		"while [ ! -s " + cgFile + " ]; do :; done\n"
	if err := os.WriteFile(filepath.Join(dir, "hook.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := RunHookTail(context.Background(), Hook{Service: "web", Name: "after_start", Dir: dir,
		Command: []string{"/bin/sh", "./hook.sh"}, LogPath: filepath.Join(dir, "log"), Timeout: time.Minute,
		Cgroups: c, Limits: Limits{TasksMax: 16}})
	if err != nil {
		t.Fatalf("hook: %v", err)
	}
	b, _ := os.ReadFile(pidFile)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("daemon pid %q: %v", b, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if cg, _ := os.ReadFile(cgFile); !strings.Contains(string(cg), c.Parent()+"/web/") {
		t.Errorf("the hook's daemon ran in %q, not below %s/web", cg, c.Parent())
	}
	if pidAlive(pid) {
		t.Fatalf("the hook's setsid'd daemon %d still runs after the hook ended", pid)
	}
	if d := cgroupDirs(c); len(d) > 0 {
		t.Errorf("cgroups left behind: %v", d)
	}
}

// TestHookTimeoutCoversItsGate: a hook's timeout bounds its start too. A
// gate's shell that never answers (here one that stops itself first; on a
// host, one starved, or stopped by the service's user, whose process it
// is) used to hold the hook for the gate's own minute before its timeout
// began.
func TestHookTimeoutCoversItsGate(t *testing.T) {
	c := testCgroups(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hook.sh"), []byte("echo ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	stoppedShell := filepath.Join(dir, "stopped-sh")
	if err := os.WriteFile(stoppedShell, []byte("#!/bin/sh\nkill -STOP $$\nexec /bin/sh \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	gateShell = stoppedShell
	defer func() { gateShell = "/bin/sh" }()
	stopped := make(chan int, 1)
	testHookGateStarted = func(pid int) { stopped <- pid }
	defer func() { testHookGateStarted = nil }()
	out, err := RunHookTail(context.Background(), Hook{Service: "web", Name: "after_start", Dir: dir,
		Command: []string{"/bin/sh", "./hook.sh"}, LogPath: filepath.Join(dir, "log"), Timeout: 200 * time.Millisecond,
		Cgroups: c})
	if err == nil || err.Error() != "timed out after 200ms while starting: killed" {
		t.Fatalf("hook: %q, %v; want timed out while starting", out, err)
	}
	if pid := <-stopped; pidAlive(pid) {
		t.Errorf("the gate's shell %d still runs", pid)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "log")); len(log) > 0 {
		t.Errorf("the hook ran: %q", log)
	}
	if d := cgroupDirs(c); len(d) > 0 {
		t.Errorf("cgroups left behind: %v", d)
	}
}

// TestRemoveStaleLeavesForeignCgroups: with a --cgroup-parent shared with
// something else (systemd's "system.slice"), RemoveStale removes only
// what looks like the agent's own (a service name, then a 12 hex digit
// instance): not an empty cgroup of another unit, nor that unit's cgroup.
// And a service name with path characters makes no cgroup at all.
func TestRemoveStaleLeavesForeignCgroups(t *testing.T) {
	c := testCgroups(t)
	var foreign []string
	for _, d := range c.dirs() {
		p := filepath.Join(d, "other.service", "payload")
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		foreign = append(foreign, p)
	}
	t.Cleanup(func() {
		for _, p := range foreign {
			_ = os.Remove(p)
			_ = os.Remove(filepath.Dir(p))
		}
	})
	removed, err := c.RemoveStale(StaleCgroupAge, time.Now().Add(time.Hour))
	if err != nil || len(removed) != 0 {
		t.Errorf("RemoveStale = %v, %v; want nothing removed", removed, err)
	}
	for _, p := range foreign {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("foreign cgroup %s: %v", p, err)
		}
	}
	for _, name := range []string{"../../escape", "a/b", "..", "", "Web"} {
		if g, err := c.create(name, Limits{}); err == nil {
			_ = g.remove()
			t.Errorf("create(%q) made %s, want an error", name, g.path)
		}
	}
}

// readLimits reads the memory limit, the cpu weight (v1: cpu.shares) and
// pids.max of the cgroup at path.
func readLimits(t *testing.T, c *Cgroups, path string) (mem, cpu, tasks string) {
	t.Helper()
	mem = cgroupFile(t, c, "memory", "memory.limit_in_bytes", "memory.max", path)
	cpu = cgroupFile(t, c, "cpu", "cpu.shares", "cpu.weight", path)
	tasks = cgroupFile(t, c, "pids", "pids.max", "pids.max", path)
	return mem, cpu, tasks
}

// cpuValue is what the cpu file of a cgroup says for weight w (v1:
// cpu.shares).
func cpuValue(c *Cgroups, w uint32) string {
	if c.Mode() == CgroupV1 {
		return strconv.FormatUint(CPUShares(w), 10)
	}
	return strconv.FormatUint(uint64(w), 10)
}

// TestSetLimitsInPlace: SetLimits writes the new limits to the cgroup of
// the process that runs, which keeps running (the same pid, the same
// cgroup); unset limits are written as none (v1 memory: the kernel's
// unlimited, page-rounded max; cpu: the default weight); and they can be
// written back.
func TestSetLimitsInPlace(t *testing.T) {
	c := testCgroups(t)
	cfg := helperConfig(t, "serve")
	cfg.Cgroups = c
	cfg.Limits = Limits{MemoryMax: 64 << 20, CPUWeight: 200, TasksMax: 64}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	pid := waitReady(t, cfg.LogPath, 1)[0]
	path := cgroupOf(t, c, pid)
	if mem, cpu, tasks := readLimits(t, c, path); mem != strconv.Itoa(64<<20) || cpu != cpuValue(c, 200) || tasks != "64" {
		t.Fatalf("limits at start: memory %s cpu %s tasks %s", mem, cpu, tasks)
	}
	if err := s.SetLimits(Limits{MemoryMax: 256 << 20, CPUWeight: 500, TasksMax: 128}); err != nil {
		t.Fatalf("SetLimits: %v", err)
	}
	if mem, cpu, tasks := readLimits(t, c, path); mem != strconv.Itoa(256<<20) || cpu != cpuValue(c, 500) || tasks != "128" {
		t.Errorf("limits after SetLimits: memory %s cpu %s tasks %s, want %d %s 128", mem, cpu, tasks, 256<<20, cpuValue(c, 500))
	}
	if !pidAlive(pid) || cgroupOf(t, c, pid) != path {
		t.Fatalf("pid %d not running in %s any more: restarted", pid, path)
	}
	// Unset: no limit.
	if err := s.SetLimits(Limits{}); err != nil {
		t.Fatalf("SetLimits(none): %v", err)
	}
	mem, cpu, tasks := readLimits(t, c, path)
	if n, err := strconv.ParseUint(mem, 10, 64); mem != "max" && (err != nil || n < 1<<60) {
		t.Errorf("memory limit %s after SetLimits(none), want none", mem)
	}
	if cpu != cpuValue(c, 100) || tasks != "max" {
		t.Errorf("cpu %s tasks %s after SetLimits(none), want %s max", cpu, tasks, cpuValue(c, 100))
	}
	// Back to the first ones (a revert in place).
	if err := s.SetLimits(cfg.Limits); err != nil {
		t.Fatalf("SetLimits back: %v", err)
	}
	if mem, cpu, tasks := readLimits(t, c, path); mem != strconv.Itoa(64<<20) || cpu != cpuValue(c, 200) || tasks != "64" {
		t.Errorf("limits written back: memory %s cpu %s tasks %s", mem, cpu, tasks)
	}
	if s.Restarts() != 0 || !pidAlive(pid) {
		t.Errorf("%d restarts, pid %d alive %v: want the same process throughout", s.Restarts(), pid, pidAlive(pid))
	}
}

// TestSetLimitsUsedByRestart: limits set while the process runs are the
// ones its restart's new cgroup is created with.
func TestSetLimitsUsedByRestart(t *testing.T) {
	c := testCgroups(t)
	cfg := helperConfig(t, "serve")
	cfg.Cgroups = c
	cfg.Limits = Limits{MemoryMax: 64 << 20}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	pid := waitReady(t, cfg.LogPath, 1)[0]
	if err := s.SetLimits(Limits{MemoryMax: 96 << 20, CPUWeight: 300}); err != nil {
		t.Fatalf("SetLimits: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pids := waitReady(t, cfg.LogPath, 2)
	path := cgroupOf(t, c, pids[1])
	if mem, cpu, _ := readLimits(t, c, path); mem != strconv.Itoa(96<<20) || cpu != cpuValue(c, 300) {
		t.Errorf("restarted in %s with memory %s cpu %s, want %d %s", path, mem, cpu, 96<<20, cpuValue(c, 300))
	}
}

// TestSetLimitsWithoutCgroups: without usable cgroups a memory or tasks
// limit is refused, as at a start; a cpu weight alone is not applied.
func TestSetLimitsWithoutCgroups(t *testing.T) {
	cfg := helperConfig(t, "serve")
	cfg.Cgroups = nil
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	if err := s.SetLimits(Limits{MemoryMax: 64 << 20}); !errors.Is(err, ErrCgroupsUnusable) {
		t.Errorf("memory limit without cgroups: %v, want ErrCgroupsUnusable", err)
	}
	if err := s.SetLimits(Limits{TasksMax: 10}); !errors.Is(err, ErrCgroupsUnusable) {
		t.Errorf("tasks limit without cgroups: %v, want ErrCgroupsUnusable", err)
	}
	if err := s.SetLimits(Limits{CPUWeight: 300}); err != nil {
		t.Errorf("cpu weight alone without cgroups: %v", err)
	}
}

// TestSetLimitsOnAnInstanceWithoutControllers (cgroup v2): an instance
// made by an agent from before every controller was enabled down to it
// (its service's cgroup.subtree_control had only memory: the controllers
// of the limits it started with), and adopted since, has no cpu.weight or
// pids.max; a resize in place enables them and writes every limit, on
// the same process.
func TestSetLimitsOnAnInstanceWithoutControllers(t *testing.T) {
	c := testCgroups(t)
	if c.Mode() != CgroupV2 {
		t.Skipf("cgroup v2 only (this machine: %s)", c.Mode())
	}
	cfg := helperConfig(t, "serve")
	cfg.Cgroups = c
	cfg.Limits = Limits{MemoryMax: 64 << 20}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	pid := waitReady(t, cfg.LogPath, 1)[0]
	path := cgroupOf(t, c, pid)
	// The older agent's layout: cpu and pids off below the service.
	if err := writeCgroupFile(filepath.Join(c.root, filepath.Dir(path)), "cgroup.subtree_control", "-cpu -pids"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.root, path, "cpu.weight")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cpu.weight of the instance with cpu off below its service: %v, want none (the test's premise)", err)
	}
	if err := s.SetLimits(Limits{MemoryMax: 96 << 20, CPUWeight: 300, TasksMax: 64}); err != nil {
		t.Fatalf("SetLimits: %v", err)
	}
	if mem, cpu, tasks := readLimits(t, c, path); mem != strconv.Itoa(96<<20) || cpu != "300" || tasks != "64" {
		t.Errorf("limits after SetLimits: memory %s cpu %s tasks %s, want %d 300 64", mem, cpu, tasks, 96<<20)
	}
	if s.Restarts() != 0 || !pidAlive(pid) || cgroupOf(t, c, pid) != path {
		t.Errorf("%d restarts, pid %d alive %v: want the same process in %s", s.Restarts(), pid, pidAlive(pid), path)
	}
}

// TestOpenCgroupsRefusesParentWithProcesses (cgroup v2): a parent that
// holds processes of its own (as the agent's own systemd unit would) can
// give no instance a limit (the kernel's no-internal-process rule): it is
// unusable from the start, saying why, not at each service's start.
func TestOpenCgroupsRefusesParentWithProcesses(t *testing.T) {
	c := testCgroups(t)
	if c.Mode() != CgroupV2 {
		t.Skipf("cgroup v2 only (this machine: %s)", c.Mode())
	}
	parent := c.parent[1:] + "-busy"
	dir := filepath.Join(c.root, parent)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sleep.Process.Kill()
		_ = sleep.Wait()
		_ = os.Remove(dir)
	})
	if err := writeCgroupFile(dir, "cgroup.procs", strconv.Itoa(sleep.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	got := OpenCgroups(parent)
	if got.Usable() || !strings.Contains(got.Reason(), "a parent must hold no processes of its own") || !strings.Contains(got.Reason(), "busy") {
		t.Fatalf("OpenCgroups(%s) with a process in it: usable %v, reason %q", parent, got.Usable(), got.Reason())
	}
}

// TestOOMKillWithoutMemoryMaxIsAnExit: a process of a release without
// memory_max that the kernel's OOM killer ends (here its cgroup's memory
// limit written by hand, standing in for the host running out of memory)
// exited; it was not "killed at its memory limit": the release has none.
func TestOOMKillWithoutMemoryMaxIsAnExit(t *testing.T) {
	c := testCgroups(t)
	fifo := filepath.Join(t.TempDir(), "go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := shellConfig(t, `echo ready pid=$$; read x < `+fifo+`; x=$(head -c 268435456 /dev/zero | tr '\0' a); echo survived; exec sleep 600`)
	cfg.Cgroups = c
	cfg.Limits = Limits{TasksMax: 64}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	pid := waitReady(t, cfg.LogPath, 1)[0]
	// Written through a cgroup found again (as an adopting agent would),
	// not the supervisor's: its instance keeps no memory_max.
	g := c.find(pid)
	if g == nil {
		t.Fatalf("pid %d in no cgroup of ours", pid)
	}
	if err := g.update(Limits{MemoryMax: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fifo, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := nextExit(t, s)
	var oom *OOMError
	var ee *ExitError
	if errors.As(e.Err, &oom) || !errors.As(e.Err, &ee) || ee.Signal != syscall.SIGKILL {
		t.Fatalf("exit %v, want a plain SIGKILL exit, not an OOMError; log:\n%s", e.Err, readFile(t, cfg.LogPath))
	}
	if strings.Contains(readFile(t, cfg.LogPath), "survived") {
		t.Fatal("the process allocated 256 MiB under the 16 MiB written: the test's premise")
	}
}

// TestStopPinsTheLeadersPid: a daemon that left the process group and
// ignores SIGTERM holds a stop open for its grace after the leader exited.
// Until the stop is done the leader's pid, the group's number, stays taken
// (its zombie), so that the SIGKILL at the end of the grace reaches no
// process that took the number over. Found by an attack review: the
// leader was reaped at once, and an unrelated process group leader that got
// the freed pid (the service can cycle pids to place one) was SIGKILLed.
// Where ns_last_pid can be written, an unrelated group leader is aimed at
// that pid during the grace and must not get it nor be killed.
func TestStopPinsTheLeadersPid(t *testing.T) {
	c := testCgroups(t)
	s, _, pid, gc := startWithDaemon(t, c, within) // the grace ended early below by killing the daemon
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*within)
		defer cancel()
		stopped <- s.Stop(ctx)
	}()
	testkit.Eventually(t, within, "the leader exited on SIGTERM", func() bool { return !pidAlive(pid) })
	if state, _, ok := readStat(strconv.Itoa(pid)); !ok || state != 'Z' {
		t.Fatalf("leader %d exited, the stop is in its grace, and its pid is free (found %v, state %q): a process can take it and be SIGKILLed with its group", pid, ok, state)
	}
	var victim *exec.Cmd
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err == nil {
		victim = exec.Command("/bin/sleep", "600")
		victim.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // an unrelated group leader
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
		if victim.Process.Pid == pid {
			t.Errorf("an unrelated process got the stopped leader's pid %d during the grace", pid)
		}
	}
	// The daemon ends (as at the end of the grace): the stop is done.
	if err := syscall.Kill(gc, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if victim != nil {
		_ = victim.Process.Signal(syscall.SIGTERM)
		_ = victim.Wait()
		if ws := victim.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Errorf("the unrelated process group leader %d ended %v, not by the test's SIGTERM", victim.Process.Pid, victim.ProcessState)
		}
	}
	if state, _, ok := readStat(strconv.Itoa(pid)); ok && state == 'Z' {
		t.Errorf("leader %d not reaped after the stop", pid)
	}
	if left := cgroupDirs(c); len(left) > 0 {
		t.Fatalf("cgroups left: %v", left)
	}
}

// startWithDaemon starts a supervised shell in cgroups c, with grace, that
// leaves behind a daemon (in its own session, ignoring SIGTERM: only its
// cgroup still holds it), and returns the supervisor, its config, the
// leader's pid and the daemon's, killed at the end of the test.
func startWithDaemon(t *testing.T, c *Cgroups, grace time.Duration) (*Supervisor, Config, int, int) {
	t.Helper()
	cfg := shellConfig(t, daemon+` & echo "grandchild pid=$!"; echo ready pid=$$; exec sleep 600`)
	cfg.Cgroups = c
	cfg.StopGrace = grace
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	m := grandchildRE.FindStringSubmatch(readFile(t, cfg.LogPath))
	if m == nil {
		t.Fatalf("no grandchild pid in the log")
	}
	gc, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { _ = syscall.Kill(gc, syscall.SIGKILL) }) // a failed test's
	testkit.Eventually(t, within, "the daemon in its own session, ignoring SIGTERM (exec'd sleep)", func() bool {
		pg, err := syscall.Getpgid(gc)
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", gc))
		return err == nil && pg == gc && strings.TrimSpace(string(comm)) == "sleep"
	})
	return s, cfg, pid, gc
}
