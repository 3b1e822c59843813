package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// hogScript reads 256 MiB into the shell's memory (a command
// substitution), far past the 16Mi limit the test gives it.
const hogScript = "#!/bin/sh\necho \"started port=$PORT\"\nx=$(head -c 268435456 /dev/zero | tr '\\0' a)\necho survived\nexec sleep 300\n"

// TestMemoryLimitKillRevertsAndIsReported: a release whose process goes
// past resources.memory_max is killed by the kernel each time it starts;
// the crash loop reverts the host to the last good release, and the
// reason the host reports says the process was killed at its memory
// limit. The Hello says which cgroups confine the host's services.
func TestMemoryLimitKillRevertsAndIsReported(t *testing.T) {
	parent := fmt.Sprintf("fleetwave-agent-test-%d", os.Getpid())
	if c := supervise.OpenCgroups(parent); !c.Usable() {
		t.Skipf("cgroups unusable on this machine: %s", c.Reason())
	}
	t.Cleanup(func() { removeCgroupParent(t, parent) })
	fc := newFakeCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": hogScript, "check.sh": goodCheck})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, CgroupParent: parent}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	fc.waitFor(t, "hello", 10*time.Second, func(h []*v1.Hello, _ []*v1.ServiceReport) bool { return len(h) == 1 })
	fc.mu.Lock()
	hello := fc.hellos[0]
	fc.mu.Unlock()
	if got := hello.GetCgroups(); !strings.HasSuffix(got, " /"+parent) || (!strings.HasPrefix(got, "v1 ") && !strings.HasPrefix(got, "v2 ")) {
		t.Fatalf("hello.cgroups %q, want the mode and /%s", got, parent)
	}

	a1 := testAssignment("1.0.0", 1, d1, int64(len(v1Art)), "")
	a1.Spec.Resources = &v1.Resources{MemoryMax: "16Mi", TasksMax: 32}
	fc.assign(a1)
	fc.waitFor(t, "v1 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pid := readPID(t, filepath.Join(dataDir, "run", testSvc+".pid"))
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil || !strings.Contains(string(cg), "/"+parent+"/"+testSvc+"/") {
		t.Fatalf("v1 (pid %d) runs in %q (%v), want a cgroup below /%s/%s", pid, cg, err, parent, testSvc)
	}

	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.Resources = &v1.Resources{MemoryMax: "16Mi"}
	a2.Spec.MinHealthyTime = durationpb.New(10 * time.Second) // the crash loop comes first
	a2.Spec.HealthyDeadline = durationpb.New(time.Minute)
	fc.assign(a2)
	fc.waitFor(t, "v2 reverted", 2*time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	fc.mu.Lock()
	r := lastReport(fc.reports, testSvc)
	fc.mu.Unlock()
	if !strings.Contains(r.GetReason(), "crash loop") || !strings.Contains(r.GetReason(), "killed at its memory limit (resources.memory_max 16777216 bytes") {
		t.Fatalf("reason %q, want a crash loop of kills at the memory limit", r.GetReason())
	}
	if log, _ := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log")); strings.Contains(string(log), "survived") {
		t.Fatalf("the hog survived its limit:\n%s", log)
	}
	cancel()
	waitDone(t, done)
}

// removeCgroupParent removes a test's cgroup parent once the services are
// stopped (each stop removed its own cgroup; the service's is removed when
// empty).
func removeCgroupParent(t *testing.T, parent string) {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer"} {
		dir := filepath.Join(root, parent)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			continue
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() {
				t.Errorf("cgroup %s left behind", filepath.Join(dir, e.Name()))
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	}
}

// TestResourcesRefusedWithoutCgroups: limits this host cannot enforce are
// refused with the field and the reason; a cpu weight alone is not.
func TestResourcesRefusedWithoutCgroups(t *testing.T) {
	none := supervise.OpenCgroups("/") // an invalid parent: unusable
	if none.Usable() {
		t.Fatal("OpenCgroups(/) usable")
	}
	for _, tc := range []struct {
		r    *v1.Resources
		want string // "" = accepted
	}{
		{nil, ""},
		{&v1.Resources{CpuWeight: 100}, ""},
		{&v1.Resources{MemoryMax: "64Mi"}, "spec.resources.memory_max: cannot be enforced on this host (cgroup parent \"/\""},
		{&v1.Resources{TasksMax: 10, CpuWeight: 5}, "spec.resources.tasks_max: cannot be enforced on this host"},
		{&v1.Resources{MemoryMax: "64MB"}, `spec.resources.memory_max: "64MB": want a whole number of bytes`},
		{&v1.Resources{MemoryMax: "1Ki"}, `spec.resources.memory_max: "1Ki" is outside 1Mi..1Pi`},
		{&v1.Resources{CpuWeight: 10001}, "spec.resources.cpu_weight: 10001 is outside 1..10000"},
		{&v1.Resources{TasksMax: 1 << 23}, "spec.resources.tasks_max: 8388608 is more than 4194304"},
	} {
		err := checkResources(tc.r, none)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.r, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want %q", tc.r, err, tc.want)
		}
	}
}

// TestExecCheckLeavesNothingOutsideCgroup: an exec check runs as the
// service's user, which can rewrite the release's check script; one that
// starts a setsid'd daemon (out of the check's process group, which a
// timeout kills) must not leave it running outside any cgroup, unlimited
// and never stopped. The check runs in a cgroup of its own below the
// service's, with the service's limits, emptied and removed when it ends.
func TestExecCheckLeavesNothingOutsideCgroup(t *testing.T) {
	parent := fmt.Sprintf("fleetwave-agent-check-%d", os.Getpid())
	cgs := supervise.OpenCgroups(parent)
	if !cgs.Usable() {
		t.Skipf("cgroups unusable on this machine: %s", cgs.Reason())
	}
	t.Cleanup(func() { removeCgroupParent(t, parent) })
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "daemon.pid")
	cgFile := filepath.Join(dir, "daemon.cgroup")
	script := "setsid sh -c 'cat /proc/self/cgroup > " + cgFile + "; exec sleep 300' </dev/null >/dev/null 2>&1 &\necho $! > " + pidFile + "\n" +
		"while [ ! -s " + cgFile + " ]; do :; done\nexit 0\n"
	if err := os.WriteFile(filepath.Join(dir, "check.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a := &agent{cgroups: cgs}
	c := &v1.Check{Name: "daemonizes", Timeout: durationpb.New(time.Minute),
		Kind: &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"/bin/sh", "./check.sh"}}}}
	p, err := a.newProber(testSvc, &v1.Resources{TasksMax: 16}, c, dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := p.Probe(context.Background())
	if !r.OK {
		t.Fatalf("probe: %+v", r)
	}
	b, _ := os.ReadFile(pidFile)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("daemon pid %q: %v", b, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	cg, _ := os.ReadFile(cgFile)
	if !strings.Contains(string(cg), "/"+parent+"/"+testSvc+"/") {
		t.Errorf("the check's daemon ran in %q, not below /%s/%s", cg, parent, testSvc)
	}
	if alive(pid) {
		t.Fatalf("the check's setsid'd daemon %d still runs after the check ended", pid)
	}
}

// TestCheckResourcesMessageBounded: the agent's own check of memory_max
// names a value of any length (leading zeros parse) truncated.
func TestCheckResourcesMessageBounded(t *testing.T) {
	for _, v := range []string{strings.Repeat("9", 100000), strings.Repeat("0", 100000) + "1"} {
		err := checkResources(&v1.Resources{MemoryMax: v}, supervise.OpenCgroups("/"))
		if err == nil || !strings.HasPrefix(err.Error(), "spec.resources.memory_max: ") || len(err.Error()) > 1000 {
			t.Errorf("memory_max of %d bytes: error %.200q (%d bytes), want one naming the field, bounded", len(v), err, len(fmt.Sprint(err)))
		}
	}
}

// serviceLimits reads the memory limit and the cpu weight (v1: cpu.shares)
// of the cgroup pid runs in, in mode (supervise.CgroupV1 or CgroupV2).
func serviceLimits(t *testing.T, mode string, pid int) (mem, cpu string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatalf("cgroup of pid %d: %v", pid, err)
	}
	var memDir, cpuDir string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls := strings.Split(parts[1], ",")
		switch {
		case mode == supervise.CgroupV2 && parts[0] == "0":
			memDir, cpuDir = filepath.Join("/sys/fs/cgroup", parts[2]), filepath.Join("/sys/fs/cgroup", parts[2])
		case mode == supervise.CgroupV1 && slices.Contains(ctrls, "memory"):
			memDir = filepath.Join("/sys/fs/cgroup/memory", parts[2])
		case mode == supervise.CgroupV1 && slices.Contains(ctrls, "cpu"):
			cpuDir = filepath.Join("/sys/fs/cgroup", parts[1], parts[2])
		}
	}
	memFile, cpuFile := filepath.Join(memDir, "memory.max"), filepath.Join(cpuDir, "cpu.weight")
	if mode == supervise.CgroupV1 {
		memFile, cpuFile = filepath.Join(memDir, "memory.limit_in_bytes"), filepath.Join(cpuDir, "cpu.shares")
	}
	read := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		return strings.TrimSpace(string(b))
	}
	return read(memFile), read(cpuFile)
}

// TestResourcesChangeAppliedInPlace: the release that runs, assigned again
// with a spec that changes only its resources (memory_max and cpu_weight
// raised), is resized in place: the same process (same PID, one start in
// its log) gets the new limits in its cgroup (memory.max and cpu.weight,
// v1 memory.limit_in_bytes and cpu.shares, read back), is checked under
// the new spec and becomes HEALTHY, the report saying in_place. A further
// resize with a check that fails is reverted in place: the same process
// again, with the last good limits written back. Real processes, real
// cgroups (skipped without usable ones).
func TestResourcesChangeAppliedInPlace(t *testing.T) {
	parent := fmt.Sprintf("fleetwave-agent-test-%d", os.Getpid())
	cgs := supervise.OpenCgroups(parent)
	if !cgs.Usable() {
		t.Skipf("cgroups unusable on this machine: %s", cgs.Reason())
	}
	t.Cleanup(func() { removeCgroupParent(t, parent) })
	cpuOf := func(w uint32) string {
		if cgs.Mode() == supervise.CgroupV1 {
			return strconv.FormatUint(supervise.CPUShares(w), 10)
		}
		return strconv.FormatUint(uint64(w), 10)
	}
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "broken.sh": badCheck})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, CgroupParent: parent}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	assign := func(gen int64, mem string, cpu uint32, check string, deadline time.Duration) {
		a := testAssignment("1.0.0", gen, digest, int64(len(art)), "")
		a.Spec.Resources = &v1.Resources{MemoryMax: mem, CpuWeight: cpu}
		a.Spec.Checks[0].GetExec().Command = []string{"./" + check + ".sh"}
		if deadline > 0 {
			a.Spec.HealthyDeadline = durationpb.New(deadline)
		}
		a.SpecRevision = gen
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
	limits := func(what string, pid int, mem uint64, cpu uint32) {
		t.Helper()
		if gotMem, gotCPU := serviceLimits(t, cgs.Mode(), pid); gotMem != strconv.FormatUint(mem, 10) || gotCPU != cpuOf(cpu) {
			t.Fatalf("%s: memory limit %s cpu %s, want %d %s", what, gotMem, gotCPU, mem, cpuOf(cpu))
		}
	}
	samePID := func(what string, want int) {
		t.Helper()
		if got := readPID(t, pidFile); got != want || !alive(want) {
			t.Fatalf("%s: pid %d -> %d (old alive %v): restarted", what, want, got, alive(want))
		}
		if n := starts(t, dataDir); n != 1 {
			t.Fatalf("%s: %d starts in the log, want 1", what, n)
		}
	}

	assign(1, "64Mi", 100, "check", 0)
	waitReport("healthy", 0, 1, v1.Phase_PHASE_HEALTHY)
	pid := readPID(t, pidFile)
	waitStarts(t, dataDir, 1)
	limits("at start", pid, 64<<20, 100)

	// memory_max and cpu_weight raised: in place.
	nr := reportCount(fc)
	assign(2, "128Mi", 500, "check", 0)
	if r := waitReport("healthy resized in place", nr, 2, v1.Phase_PHASE_HEALTHY); !r.GetInPlace() {
		t.Fatalf("resized: report %v does not say in_place", r)
	}
	samePID("resized in place", pid)
	limits("resized in place", pid, 128<<20, 500)

	// Raised again with a check that fails: reverted in place, the last
	// good limits written back.
	nr = reportCount(fc)
	assign(3, "256Mi", 800, "broken", 2*time.Second)
	r := waitReport("reverted in place", nr, 3, v1.Phase_PHASE_REVERTED)
	if !r.GetInPlace() || !strings.Contains(r.GetReason(), "not healthy within 2s") {
		t.Fatalf("reverted: report in_place %v reason %q, want in place and the check's failure", r.GetInPlace(), r.GetReason())
	}
	samePID("reverted in place", pid)
	limits("reverted in place", pid, 128<<20, 500)
	cancel()
	waitDone(t, done)
}

// TestResourcesReappliedOnAdoption: the agent stops while a resize in
// place is checked (the new limits written, then changed behind its back,
// as if the write had not happened before the stop); the next agent
// adopts the same process and writes the limits of the spec it checks
// again, and the resize ends HEALTHY in place with them. Real processes,
// real cgroups (skipped without usable ones).
func TestResourcesReappliedOnAdoption(t *testing.T) {
	parent := fmt.Sprintf("fleetwave-agent-test-%d", os.Getpid())
	cgs := supervise.OpenCgroups(parent)
	if !cgs.Usable() {
		t.Skipf("cgroups unusable on this machine: %s", cgs.Reason())
	}
	t.Cleanup(func() { removeCgroupParent(t, parent) })
	fc := newFakeCoordinator(t)
	flag := filepath.Join(t.TempDir(), "pass")
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "gated.sh": passingAfter(flag)})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, CgroupParent: parent}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	assign := func(gen int64, mem, check string) {
		a := testAssignment("1.0.0", gen, digest, int64(len(art)), "")
		a.Spec.Resources = &v1.Resources{MemoryMax: mem}
		a.Spec.Checks[0].GetExec().Command = []string{"./" + check + ".sh"}
		a.Spec.HealthyDeadline = durationpb.New(time.Minute)
		a.SpecRevision = gen
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
	memOf := func(pid int) string {
		mem, _ := serviceLimits(t, cgs.Mode(), pid)
		return mem
	}

	assign(1, "64Mi", "check")
	waitReport("healthy", 0, 1, v1.Phase_PHASE_HEALTHY)
	pid := readPID(t, pidFile)
	assign(2, "128Mi", "gated")
	waitReport("checking the resize in place", 0, 2, v1.Phase_PHASE_CHECKING)
	testkit.Eventually(t, 30*time.Second, "the new memory limit written", func() bool { return memOf(pid) == strconv.Itoa(128<<20) })
	cancel()
	waitDone(t, done)

	// Behind the agent's back: the old limit, as if the write had not
	// happened before the agent stopped.
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	var dir string
	for _, line := range strings.Split(string(b), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 {
			if cgs.Mode() == supervise.CgroupV2 && parts[0] == "0" {
				dir = filepath.Join("/sys/fs/cgroup", parts[2], "memory.max")
			} else if cgs.Mode() == supervise.CgroupV1 && slices.Contains(strings.Split(parts[1], ","), "memory") {
				dir = filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes")
			}
		}
	}
	if err := os.WriteFile(dir, []byte(strconv.Itoa(64<<20)), 0); err != nil {
		t.Fatalf("write %s: %v", dir, err)
	}
	if memOf(pid) != strconv.Itoa(64<<20) {
		t.Fatalf("memory limit %s, want the old one written back by the test", memOf(pid))
	}

	nr := reportCount(fc)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	waitReport("the new agent checking in place", nr, 2, v1.Phase_PHASE_CHECKING)
	if got := readPID(t, pidFile); got != pid || !alive(pid) {
		t.Fatalf("pid %d -> %d: not adopted", pid, got)
	}
	// The adoption writes the limits again (ActAdopt.Limits); the report
	// of the adopted check is not ordered after that write.
	testkit.EventuallyErr(t, 30*time.Second, "the new limit written again on adoption", func() error {
		if got := memOf(pid); got != strconv.Itoa(128<<20) {
			return fmt.Errorf("adopted in the middle of a resize: memory limit %s, want %d written again", got, 128<<20)
		}
		return nil
	})
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := waitReport("healthy in place", nr, 2, v1.Phase_PHASE_HEALTHY); !r.GetInPlace() {
		t.Fatalf("report %v does not say in_place", r)
	}
	if got := readPID(t, pidFile); got != pid || starts(t, dataDir) != 1 || memOf(pid) != strconv.Itoa(128<<20) {
		t.Fatalf("pid %d -> %d, %d starts, memory limit %s", pid, got, starts(t, dataDir), memOf(pid))
	}
	cancel2()
	waitDone(t, done2)
}

// holdScript holds about 64 MiB in the shell's memory (a variable) and
// keeps running.
const holdScript = "#!/bin/sh\nx=$(head -c 67108864 /dev/zero | tr '\\0' a)\necho \"started port=$PORT\"\nsleep 300 &\nwait\n"

// TestMemoryMaxLoweredBelowUseReverts: memory_max lowered in place below
// what the running process uses. On cgroup v1 the kernel refuses the
// write (it cannot reclaim enough): the install fails and is reverted in
// place, the same process with its old limit read back. On v2 the kernel
// OOM-kills the process (restarted under the new limit, killed again):
// the crash loop reverts it with a restart under the old limit. Either
// way the host ends REVERTED on the old limit. Real processes, real
// cgroups (skipped without usable ones).
func TestMemoryMaxLoweredBelowUseReverts(t *testing.T) {
	parent := fmt.Sprintf("fleetwave-agent-test-%d", os.Getpid())
	cgs := supervise.OpenCgroups(parent)
	if !cgs.Usable() {
		t.Skipf("cgroups unusable on this machine: %s", cgs.Reason())
	}
	t.Cleanup(func() { removeCgroupParent(t, parent) })
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": holdScript, "check.sh": goodCheck})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, CgroupParent: parent}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	assign := func(gen int64, mem string) {
		a := testAssignment("1.0.0", gen, digest, int64(len(art)), "")
		a.Spec.Resources = &v1.Resources{MemoryMax: mem}
		a.Spec.MinHealthyTime = durationpb.New(5 * time.Second) // a crash loop (v2) comes first
		a.Spec.HealthyDeadline = durationpb.New(time.Minute)
		a.SpecRevision = gen
		fc.assign(a)
	}
	assign(1, "256Mi")
	fc.waitFor(t, "healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	waitStarts(t, dataDir, 1)
	pid := readPID(t, pidFile)

	nr := reportCount(fc)
	assign(2, "16Mi")
	var r *v1.ServiceReport
	fc.waitFor(t, "reverted", 2*time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r = lastReport(rs[min(nr, len(rs)):], testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	now := readPID(t, pidFile)
	if mem, _ := serviceLimits(t, cgs.Mode(), now); mem != strconv.Itoa(256<<20) {
		t.Fatalf("reverted: memory limit %s, want %d back", mem, 256<<20)
	}
	if cgs.Mode() == supervise.CgroupV1 {
		// The write was refused: in place, the same process.
		if now != pid || !alive(pid) || !r.GetInPlace() || !strings.Contains(r.GetReason(), "setting resource limits") {
			t.Fatalf("v1: pid %d -> %d, in_place %v, reason %q: want the same process reverted in place on the refused write", pid, now, r.GetInPlace(), r.GetReason())
		}
	} else if now == pid || r.GetInPlace() || !strings.Contains(r.GetReason(), "memory limit") {
		// v2: killed at the new limit, reverted with a restart.
		t.Fatalf("v2: pid %d -> %d, in_place %v, reason %q: want a restart after kills at the memory limit", pid, now, r.GetInPlace(), r.GetReason())
	}
	cancel()
	waitDone(t, done)
}
