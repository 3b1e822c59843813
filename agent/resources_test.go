package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/agent/supervise"
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
