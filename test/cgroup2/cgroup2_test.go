// Package cgroup2 runs the agent's cgroup tests on a cgroup v2 (unified)
// hierarchy: most hosts today mount cgroup v2 only, while the machines the
// rest of the suite runs on may mount v1 (their tests then cover v1). The
// tests run in a virtual machine (qemu, software emulation: no /dev/kvm
// needed) booting the machine's Debian kernel with an initramfs of
// busybox and the tests' own binaries; its init mounts cgroup2 at
// /sys/fs/cgroup and nothing else, so every test takes the agent's v2
// path. `make cgroup2` runs it (`make deps` installs qemu, the kernel
// and busybox); with FLEETWAVE_REQUIRE_CGROUP2=1 (CI) a missing tool
// fails the test instead of skipping it.
package cgroup2

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

// suite is one package's test binary run in the machine.
type suite struct {
	name, pkg string
	run       string   // -test.run
	mustPass  []string // tests that must run and pass (not skip) on v2
}

// The agent's tests that create cgroups: all of the supervisor's, and the
// agent's that put services in cgroups with limits (resize in place,
// adoption, the kernel killing at memory_max) or hand a socket over
// between two instances' cgroups.
var suites = []suite{
	{name: "supervise", pkg: "./agent/supervise", run: ".", mustPass: []string{
		"TestCgroupLimitsWritten", "TestMemoryHogKilledAtLimit", "TestForkBombHeldAtTasksMax",
		"TestStopEndsDaemonizedGrandchild", "TestTwoInstancesSideBySide", "TestStopTermsDaemonsFirst",
		"TestRemoveStale", "TestHookLeavesNothingOutsideCgroup", "TestRemoveStaleLeavesForeignCgroups",
		"TestSetLimitsInPlace", "TestSetLimitsUsedByRestart",
		"TestSetLimitsOnAnInstanceWithoutControllers", "TestOpenCgroupsRefusesParentWithProcesses", "TestOOMKillWithoutMemoryMaxIsAnExit",
		"TestPIDFileWrittenBeforeCgroupServiceCodeRuns",
	}},
	{name: "agent", pkg: "./agent",
		run: "^(TestMemoryLimitKillRevertsAndIsReported|TestExecCheckLeavesNothingOutsideCgroup|TestCheckResourcesMessageBounded|" +
			"TestResourcesChangeAppliedInPlace|TestResourcesReappliedOnAdoption|TestMemoryMaxLoweredBelowUseReverts|TestHandoverZeroDowntime)$",
		mustPass: []string{
			"TestMemoryLimitKillRevertsAndIsReported", "TestExecCheckLeavesNothingOutsideCgroup", "TestCheckResourcesMessageBounded",
			"TestResourcesChangeAppliedInPlace", "TestResourcesReappliedOnAdoption", "TestMemoryMaxLoweredBelowUseReverts",
			"TestHandoverZeroDowntime",
		}},
}

// vmTimeout bounds the whole machine run (boot and every suite): software
// emulation is slow, and a hung guest must not hold CI.
const vmTimeout = 20 * time.Minute

// TestAgentCgroupsOnV2 boots the machine, runs the suites there and
// checks that each ran on cgroup v2 with the memory, cpu and pids
// controllers, exited 0, and passed every test of mustPass (a test that
// skipped because cgroups were unusable fails here).
func TestAgentCgroupsOnV2(t *testing.T) {
	qemu, kernel, busybox := tools(t)
	dir := t.TempDir()
	root, err := testfleet.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"bin/busybox": busybox}
	for _, s := range suites {
		bin := filepath.Join(dir, s.name+".test")
		cmd := exec.CommandContext(t.Context(), "go", "test", "-c", "-o", bin, s.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH=amd64") // static: the machine has no libc
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go test -c %s: %v\n%s", s.pkg, err, out)
		}
		files["t/"+s.name+".test"] = bin
	}
	initrd := filepath.Join(dir, "initrd.gz")
	if err := writeInitramfs(initrd, initScript(suites), files); err != nil {
		t.Fatal(err)
	}

	// Within the test's own deadline (go test -timeout), so that the
	// failure says what the machine printed.
	within := vmTimeout
	if d, ok := t.Deadline(); ok {
		within = min(within, time.Until(d)-30*time.Second)
	}
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	console := filepath.Join(dir, "console.log")
	out, err := os.Create(console)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
		"-nographic", "-no-reboot", "-nic", "none", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=1")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // not left running if the test is killed
	start := time.Now()
	runErr := cmd.Run()
	b, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the machine ran for %v (kernel %s)", time.Since(start).Round(time.Second), filepath.Base(kernel))
	if runErr != nil {
		t.Fatalf("qemu: %v; console:\n%s", runErr, tail(b, 200))
	}
	if err := check(string(b), suites); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, failures(b))
	}
}

// tools finds qemu, a kernel and a static busybox, or skips (fails under
// FLEETWAVE_REQUIRE_CGROUP2=1) naming what is missing.
func tools(t *testing.T) (qemu, kernel, busybox string) {
	t.Helper()
	var missing []string
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		missing = append(missing, "qemu-system-x86_64 (Debian's qemu-system-x86)")
	}
	kernel = os.Getenv("FLEETWAVE_VM_KERNEL")
	if kernel == "" {
		kernel = bootKernel()
	}
	if kernel == "" {
		missing = append(missing, "a kernel in /boot (Debian's linux-image-amd64) or FLEETWAVE_VM_KERNEL")
	} else if f, err := os.Open(kernel); err != nil {
		missing = append(missing, fmt.Sprintf("a readable kernel (%v)", err))
	} else {
		_ = f.Close()
	}
	busybox, err = exec.LookPath("busybox")
	if err == nil {
		err = static(busybox)
	}
	if err != nil {
		missing = append(missing, fmt.Sprintf("a static busybox (Debian's busybox-static): %v", err))
	}
	if len(missing) > 0 {
		msg := "missing " + strings.Join(missing, "; ") + " (make deps installs them)"
		if os.Getenv("FLEETWAVE_REQUIRE_CGROUP2") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return qemu, kernel, busybox
}

// bootKernel is the kernel in /boot: the running one's when it is there,
// else the one of the highest version (Debian's linux-image-amd64
// installs one; "" when none).
func bootKernel() string {
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b []byte
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		if k := "/boot/vmlinuz-" + string(b); fileExists(k) {
			return k
		}
	}
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	slices.SortFunc(ks, compareVersions)
	if len(ks) == 0 {
		return ""
	}
	return ks[len(ks)-1]
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// compareVersions orders names by their runs of digits as numbers
// (vmlinuz-6.1.0-9 before vmlinuz-6.1.0-48), the rest as text.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Or(cmp.Compare(len(na), len(nb)), strings.Compare(na, nb)); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitRun(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// static reports an error unless path is an executable without an
// interpreter (a dynamic one would need the host's libc in the machine).
func static(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// initScript is the machine's /init: it mounts cgroup2 (only) at
// /sys/fs/cgroup, prints the controllers, runs each suite in its own
// session (the tests look at their parent's process group: init's is 0)
// and prints a marker with its exit status, then powers off.
func initScript(ss []suite) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
echo "FLEETWAVE-CGROUP $(awk '$2 == "/sys/fs/cgroup" {print $3}' /proc/mounts) controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
cd /tmp
`)
	for _, s := range ss {
		// The shell leads its session and group and waits for the test
		// (the command after it keeps it from exec'ing the test).
		fmt.Fprintf(&b, "setsid sh -c '/t/%s.test -test.v -test.count=1 -test.timeout=10m -test.run \"%s\" 2>&1; exit $?'\n", s.name, s.run)
		fmt.Fprintf(&b, "echo \"FLEETWAVE-SUITE %s exit=$?\"\n", s.name)
	}
	b.WriteString("poweroff -f\n")
	return b.String()
}

// writeInitramfs writes a gzipped newc cpio archive with /init, the
// directories the script mounts on, and files (archive path: host path).
func writeInitramfs(path, init string, files map[string]string) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	w := cpio.NewWriter(zw)
	for _, d := range []string{"bin", "t", "proc", "sys", "dev", "tmp", "etc", "usr"} {
		if err := w.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755}); err != nil {
			return err
		}
	}
	add := func(name string, data []byte, mode cpio.FileMode) error {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	if err := add("init", []byte(init), 0o755); err != nil {
		return err
	}
	if err := add("etc/passwd", []byte("root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		data, err := os.ReadFile(files[n])
		if err != nil {
			return err
		}
		if err := add(n, data, 0o755); err != nil {
			return err
		}
	}
	if err := errors.Join(w.Close(), zw.Close()); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

var (
	cgroupLine = regexp.MustCompile(`FLEETWAVE-CGROUP (\S+) controllers: (.*)`)
	suiteLine  = regexp.MustCompile(`FLEETWAVE-SUITE (\S+) exit=(\d+)`)
	resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)
)

// check reads the console: the hierarchy was cgroup2 with memory, cpu and
// pids; every suite exited 0 and every test it must pass passed.
func check(console string, ss []suite) error {
	console = strings.ReplaceAll(console, "\r", "")
	m := cgroupLine.FindStringSubmatch(console)
	if m == nil {
		return errors.New("the machine did not say which cgroup hierarchy it mounted")
	}
	if m[1] != "cgroup2" {
		return fmt.Errorf("/sys/fs/cgroup is %q, want cgroup2", m[1])
	}
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !slices.Contains(strings.Fields(m[2]), c) {
			return fmt.Errorf("cgroup2 has no %s controller (%q)", c, m[2])
		}
	}
	results := map[string]string{} // "suite/test": PASS, FAIL or SKIP
	exits := map[string]string{}
	pending := map[string]string{} // the next suite's, before its marker
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if r := resultLine.FindStringSubmatch(line); r != nil && !strings.Contains(r[2], "/") {
			pending[r[2]] = r[1]
		}
		if s := suiteLine.FindStringSubmatch(line); s != nil {
			exits[s[1]] = s[2]
			for k, v := range pending {
				results[s[1]+"/"+k] = v
			}
			clear(pending)
		}
	}
	var errs []error
	for _, s := range ss {
		switch e, ok := exits[s.name]; {
		case !ok:
			errs = append(errs, fmt.Errorf("suite %s did not finish", s.name))
		case e != "0":
			errs = append(errs, fmt.Errorf("suite %s exited %s", s.name, e))
		}
		for _, name := range s.mustPass {
			if r := results[s.name+"/"+name]; r != "PASS" {
				errs = append(errs, fmt.Errorf("%s %s: %q, want PASS", s.name, name, r))
			}
		}
	}
	return errors.Join(errs...)
}

// failures is the console's failed tests with their output, or its tail.
func failures(b []byte) string {
	lines := strings.Split(strings.ReplaceAll(string(b), "\r", ""), "\n")
	var out []string
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "--- FAIL") || strings.HasPrefix(l, "FLEETWAVE-") {
			out = append(out, lines[max(0, i-40):i+1]...)
		}
	}
	if len(out) == 0 {
		return string(tail(b, 200))
	}
	return strings.Join(out, "\n")
}

// tail is the last n lines of b.
func tail(b []byte, n int) []byte {
	lines := bytes.Split(b, []byte("\n"))
	return bytes.Join(lines[max(0, len(lines)-n):], []byte("\n"))
}

// TestCompareVersions: the kernel of the highest version is taken, not
// the last by text.
func TestCompareVersions(t *testing.T) {
	ks := []string{"/boot/vmlinuz-6.1.0-48-amd64", "/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-5.10.0-30-amd64", "/boot/vmlinuz-6.10.0-1-amd64"}
	slices.SortFunc(ks, compareVersions)
	want := []string{"/boot/vmlinuz-5.10.0-30-amd64", "/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-48-amd64", "/boot/vmlinuz-6.10.0-1-amd64"}
	if !slices.Equal(ks, want) {
		t.Fatalf("sorted %v, want %v", ks, want)
	}
}

// TestCheck: the console's verdict fails a suite that did not finish or
// exited non-zero, a test that must pass and skipped or is missing, and a
// hierarchy that is not cgroup2 with memory, cpu and pids.
func TestCheck(t *testing.T) {
	ss := []suite{{name: "a", mustPass: []string{"TestX", "TestY"}}}
	ok := "FLEETWAVE-CGROUP cgroup2 controllers: cpuset cpu io memory pids\r\n--- PASS: TestX (0.1s)\r\n--- PASS: TestY (0.1s)\r\nFLEETWAVE-SUITE a exit=0\r\n"
	if err := check(ok, ss); err != nil {
		t.Fatalf("a passing console: %v", err)
	}
	for name, console := range map[string]string{
		"skipped":    strings.Replace(ok, "--- PASS: TestY", "--- SKIP: TestY", 1),
		"missing":    strings.Replace(ok, "--- PASS: TestY (0.1s)\r\n", "", 1),
		"exit 1":     strings.Replace(ok, "exit=0", "exit=1", 1),
		"unfinished": strings.Replace(ok, "FLEETWAVE-SUITE a exit=0\r\n", "", 1),
		"cgroup v1":  strings.Replace(ok, "FLEETWAVE-CGROUP cgroup2", "FLEETWAVE-CGROUP cgroup", 1),
		"no pids":    strings.Replace(ok, " pids", "", 1),
	} {
		if err := check(console, ss); err == nil {
			t.Errorf("%s: passed", name)
		}
	}
}
