package supervise

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// The test binary doubles as the supervised child: with
// GO_WANT_HELPER_PROCESS=1 it runs helperMain instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("GO_WANT_HELPER_PROCESS") == "1" {
		helperMain(os.Getenv("HELPER_MODE"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helperMain(mode string) {
	switch mode {
	case "serve": // runs until SIGTERM, then exits 0
		serveUntilTerm()
	case "crash":
		fmt.Println("crashing")
		os.Exit(3)
	case "crash-once": // crashes on the first run, serves afterwards
		mark := filepath.Join(os.Getenv("HOME"), "crashed")
		if _, err := os.Stat(mark); err != nil {
			_ = os.WriteFile(mark, nil, 0o644)
			fmt.Println("crashing")
			os.Exit(3)
		}
		serveUntilTerm()
	case "ignore-term": // ignores SIGTERM; only SIGKILL ends it
		signal.Ignore(syscall.SIGTERM)
		fmt.Printf("ready pid=%d\n", os.Getpid())
		for {
			time.Sleep(time.Hour)
		}
	case "grandchild": // spawns a SIGTERM-ignoring grandchild in its group
		exe, err := os.Executable()
		if err != nil {
			os.Exit(2)
		}
		c := exec.Command(exe)
		c.Env = append(os.Environ(), "HELPER_MODE=ignore-term")
		c.Stdout = os.Stdout
		if err := c.Start(); err != nil {
			os.Exit(2)
		}
		fmt.Printf("grandchild pid=%d\n", c.Process.Pid)
		serveUntilTerm()
	case "daemon": // starts a "serve" in its own group and exits: not our child
		exe, err := os.Executable()
		if err != nil {
			os.Exit(2)
		}
		c := exec.Command(exe)
		c.Env = append(os.Environ(), "HELPER_MODE=serve")
		c.Stdout = os.Stdout
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			os.Exit(2)
		}
		os.Exit(0)
	case "pidfile-first": // says, first, which group its PID file names; crashes on the first run
		pgid := 0
		if rec, err := ReadPIDFile(os.Getenv("CHECK_PID_FILE")); err == nil {
			pgid = rec.PGID
		}
		fmt.Printf("first pid=%d pidfile=%d\n", os.Getpid(), pgid)
		mark := filepath.Join(os.Getenv("HOME"), "crashed")
		if _, err := os.Stat(mark); err != nil {
			_ = os.WriteFile(mark, nil, 0o644)
			os.Exit(3)
		}
		serveUntilTerm()
	case "hog": // allocates and touches memory, 1 MiB at a time, up to 1 GiB
		var keep [][]byte
		fmt.Printf("ready pid=%d\n", os.Getpid())
		for range 1024 {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
		}
		fmt.Printf("hog survived with %d MiB\n", len(keep))
		serveUntilTerm()
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		os.Exit(2)
	}
}

func serveUntilTerm() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	fmt.Printf("ready pid=%d home=%s foo=%s\n", os.Getpid(), os.Getenv("HOME"), os.Getenv("FOO"))
	<-ch
	fmt.Printf("SIGTERM pid=%d\n", os.Getpid())
	os.Exit(0)
}

// --- helpers ---

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t))
}

// helperEnv is the environment that makes the test binary run helperMain.
// GORACE stops a -race child from sleeping 1s on exit.
func helperEnv(mode string, extra ...string) []string {
	return append([]string{"GO_WANT_HELPER_PROCESS=1", "HELPER_MODE=" + mode, "GORACE=atexit_sleep_ms=0"}, extra...)
}

func helperConfig(t *testing.T, mode string) Config {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return Config{
		Service:    "helper",
		Dir:        dir,
		Command:    []string{exe},
		Env:        helperEnv(mode, "FOO=bar"),
		LogPath:    filepath.Join(dir, "service.log"),
		PIDFile:    filepath.Join(dir, "service.pid"),
		StopGrace:  5 * time.Second,
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
	}
}

var pidRE = regexp.MustCompile(`(ready|grandchild) pid=(\d+)`)

// logPIDs returns the pids of "ready pid=N" (or "grandchild pid=N") lines.
func logPIDs(t *testing.T, path, kind string) []int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var pids []int
	for _, m := range pidRE.FindAllStringSubmatch(string(data), -1) {
		if m[1] == kind {
			n, _ := strconv.Atoi(m[2])
			pids = append(pids, n)
		}
	}
	return pids
}

func waitReady(t *testing.T, logPath string, n int) []int {
	t.Helper()
	var pids []int
	testkit.Eventually(t, 20*time.Second, fmt.Sprintf("%d ready line(s) in %s", n, logPath), func() bool {
		pids = logPIDs(t, logPath, "ready")
		return len(pids) >= n
	})
	return pids
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	state, _, ok := readStat(strconv.Itoa(pid))
	return ok && state != 'Z' && state != 'X'
}

func checkNoGoroutineLeak(t *testing.T, base int) {
	t.Helper()
	testkit.EventuallyErr(t, 10*time.Second, "goroutines back to the count before start", func() error {
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d > %d goroutines\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

func stop(t *testing.T, s *Supervisor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// --- tests ---

func TestStartStop(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := helperConfig(t, "serve")
	// A child that obeys SIGTERM ends the stop at once: were the grace
	// waited out, Stop would not return within stop's 20 s.
	cfg.StopGrace = time.Hour
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := s.Start(); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second Start = %v, want ErrAlreadyStarted", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]

	rec, err := ReadPIDFile(cfg.PIDFile)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	if want, err := identify(pid); err != nil || rec != want {
		t.Fatalf("pid file holds %+v, want %+v (%v)", rec, want, err)
	}
	if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
		t.Fatalf("child pgid = %d, %v; want its own group %d", pgid, err, pid)
	}
	logData, _ := os.ReadFile(cfg.LogPath)
	if !strings.Contains(string(logData), "home="+cfg.Dir+" foo=bar") {
		t.Fatalf("child env not as configured; log: %q", logData)
	}

	stop(t, s)
	if !strings.Contains(readFile(t, cfg.LogPath), fmt.Sprintf("SIGTERM pid=%d\n", pid)) {
		t.Fatalf("child %d did not exit on SIGTERM; log: %q", pid, readFile(t, cfg.LogPath))
	}
	if pidAlive(pid) {
		t.Fatalf("pid %d still alive after Stop", pid)
	}
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after clean stop: %v, want removed", err)
	}
	stop(t, s) // second Stop is a no-op
	if err := s.Start(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop = %v, want ErrStopped", err)
	}
	select {
	case e := <-s.Exits():
		t.Fatalf("unexpected Exit event on clean stop: %+v", e)
	default:
	}
	if s.Restarts() != 0 {
		t.Fatalf("Restarts = %d, want 0", s.Restarts())
	}
	checkNoGoroutineLeak(t, base)
}

// TestPIDFileWrittenBeforeServiceCodeRuns: the first line of every
// instance, the first start's and a restart's, finds the PID file naming
// it, without cgroups (TestPIDFileWrittenBeforeCgroupServiceCodeRuns: with
// them). The supervisor is held right after the gate opens until that
// line is in the log: were the file written after the gate, the line would
// find no file or the crashed instance's.
func TestPIDFileWrittenBeforeServiceCodeRuns(t *testing.T) {
	cfg := helperConfig(t, "pidfile-first")
	checkPIDFileFirst(t, cfg)
}

func TestPIDFileWrittenBeforeCgroupServiceCodeRuns(t *testing.T) {
	cfg := helperConfig(t, "pidfile-first")
	cfg.Cgroups = testCgroups(t)
	checkPIDFileFirst(t, cfg)
}

func checkPIDFileFirst(t *testing.T, cfg Config) {
	t.Helper()
	cfg.Env = append(cfg.Env, "CHECK_PID_FILE="+cfg.PIDFile)
	s := New(cfg, testLogger(t))
	firstRE := regexp.MustCompile(`first pid=(\d+) pidfile=(\d+)`)
	// It runs in the supervisor's goroutine: no t.Fatal there.
	s.gateOpened = func(pid int) {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			b, _ := os.ReadFile(cfg.LogPath)
			for _, m := range firstRE.FindAllStringSubmatch(string(b), -1) {
				if m[1] == strconv.Itoa(pid) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Errorf("no first line of %d in 20 s; log: %q", pid, b)
				return
			}
		}
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	waitReady(t, cfg.LogPath, 1)
	lines := firstRE.FindAllStringSubmatch(readFile(t, cfg.LogPath), -1)
	if len(lines) != 2 {
		t.Fatalf("%d first lines, want 2 (the crash, the restart); log: %q", len(lines), readFile(t, cfg.LogPath))
	}
	for _, m := range lines {
		if m[1] != m[2] {
			t.Errorf("instance %s first found the PID file naming %s, want itself", m[1], m[2])
		}
	}
}

// TestStartRefusedWithoutItsPIDFile: a start whose PID file cannot be
// written fails, and none of the service's code ran (the next agent could
// not find it and would start a second one).
func TestStartRefusedWithoutItsPIDFile(t *testing.T) {
	cfg := helperConfig(t, "serve")
	cfg.PIDFile = filepath.Join(cfg.Dir, "no-such-dir", "service.pid")
	s := New(cfg, testLogger(t))
	err := s.Start()
	if err == nil || !strings.Contains(err.Error(), cfg.PIDFile) {
		t.Fatalf("Start = %v, want an error naming %s", err, cfg.PIDFile)
	}
	if b, _ := os.ReadFile(cfg.LogPath); len(b) != 0 {
		t.Fatalf("the service ran: its log holds %q", b)
	}
	stop(t, s)
}

// TestStartRefusedWhenItsUserCannotExecute: with run.user's credential, a
// program that user cannot execute (its mode, or a directory on its path it
// cannot search) fails the start with the reason (fs.ErrPermission), as
// an exec without the gate did, rather than a crash loop of the gate's
// shell exiting 126; one it can execute runs as that user. Needs root.
func TestStartRefusedWhenItsUserCannotExecute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running as another user needs root")
	}
	const nobody = 65534
	top := t.TempDir()
	// wrap is what socket activation does (agent/sockets Prepare): the
	// command becomes a /bin/sh that execs the program.
	wrap := func(cmd *exec.Cmd) (func(int), error) {
		cmd.Args = append([]string{"sh", "-c", `exec "$0" "$@"`, cmd.Path}, cmd.Args[1:]...)
		cmd.Path = "/bin/sh"
		return nil, nil
	}
	for _, c := range []struct {
		name          string
		dirMode, mode os.FileMode
		wantErr, wrap bool
	}{
		{name: "executable", dirMode: 0o755, mode: 0o755},
		{name: "executable, under a wrapper", dirMode: 0o755, mode: 0o755, wrap: true},
		{name: "owner only", dirMode: 0o755, mode: 0o700, wantErr: true},
		{name: "owner only, under a wrapper", dirMode: 0o755, mode: 0o700, wantErr: true, wrap: true},
		{name: "a directory on its path not searchable", dirMode: 0o700, mode: 0o755, wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(top, strings.NewReplacer(" ", "-", ",", "").Replace(c.name))
			bin := filepath.Join(root, "bin")
			if err := os.MkdirAll(bin, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{filepath.Dir(top), top, root} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(bin, c.dirMode); err != nil {
				t.Fatal(err)
			}
			prog := filepath.Join(bin, "run")
			if err := os.WriteFile(prog, []byte("#!/bin/sh\necho \"ran as $(id -u)\"\nexec sleep 100\n"), c.mode); err != nil {
				t.Fatal(err)
			}
			logPath := filepath.Join(root, "out.log")
			cfg := Config{Service: "as-nobody", Dir: root, Command: []string{prog}, LogPath: logPath,
				StopGrace: 5 * time.Second, Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
			if c.wrap {
				cfg.Prepare = wrap
			}
			s := New(cfg, testLogger(t))
			err := s.Start()
			defer stop(t, s)
			if !c.wantErr {
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				testkit.Eventually(t, 10*time.Second, "the program's line", func() bool {
					b, _ := os.ReadFile(logPath)
					return string(b) == fmt.Sprintf("ran as %d\n", nobody)
				})
				return
			}
			if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), prog) || !strings.Contains(err.Error(), "not executable by uid 65534") {
				t.Fatalf("Start = %v, want fs.ErrPermission naming %s and the user", err, prog)
			}
			if b, _ := os.ReadFile(logPath); len(b) != 0 {
				t.Fatalf("log %q, want nothing: the program must not have run", b)
			}
			if n := s.Restarts(); n != 0 {
				t.Fatalf("%d restarts after a refused start", n)
			}
		})
	}
}

func TestRelativeCommandAndLogAppend(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"run home=$HOME foo=$FOO\"\nexec sleep 100\n"
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "out.log")
	if err := os.WriteFile(logPath, []byte("previous\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Service: "sh", Dir: dir, Command: []string{"./run.sh"}, Env: []string{"FOO=baz"},
		LogPath: logPath, StopGrace: 5 * time.Second}, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	want := "previous\nrun home=" + dir + " foo=baz\n"
	testkit.Eventually(t, 10*time.Second, "script output", func() bool {
		data, _ := os.ReadFile(logPath)
		return string(data) == want
	})
	stop(t, s)
}

func TestCrashRestartsWithBackoff(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := helperConfig(t, "crash")
	cfg.MinBackoff = 20 * time.Millisecond
	cfg.MaxBackoff = 80 * time.Millisecond
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var exits []Exit
	timeout := time.After(20 * time.Second)
	for len(exits) < 5 {
		select {
		case e := <-s.Exits():
			exits = append(exits, e)
		case <-timeout:
			t.Fatalf("got %d exits, want 5", len(exits))
		}
	}
	stop(t, s)
	wantGap := []time.Duration{20, 40, 80, 80}
	for i, e := range exits {
		var ee *ExitError
		if !errors.As(e.Err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("exit %d: Err = %v, want exit status 3", i, e.Err)
		}
		if e.Restarts != i {
			t.Fatalf("exit %d: Restarts = %d, want %d", i, e.Restarts, i)
		}
		if i > 0 {
			gap := e.At.Sub(exits[i-1].At)
			if want := wantGap[i-1] * time.Millisecond; gap < want {
				t.Fatalf("exit %d came %v after the previous one, want >= backoff %v", i, gap, want)
			}
		}
	}
	if s.Restarts() < 4 {
		t.Fatalf("Restarts = %d, want >= 4", s.Restarts())
	}
	n := s.Restarts()
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after stop: %v, want removed", err)
	}
	data, _ := os.ReadFile(cfg.LogPath)
	// Every run appends; the last run may have been stopped before printing.
	if c := strings.Count(string(data), "crashing"); c < 5 || c < n || c > n+1 {
		t.Fatalf("log has %d crash lines after %d restarts", c, n)
	}
	checkNoGoroutineLeak(t, base)
}

func TestCrashOnceThenRuns(t *testing.T) {
	cfg := helperConfig(t, "crash-once")
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	select {
	case e := <-s.Exits():
		if e.Err == nil || e.Restarts != 0 {
			t.Fatalf("exit = %+v, want a crash before any restart", e)
		}
	default:
		t.Fatal("no Exit event for the first crash")
	}
	if s.Restarts() != 1 {
		t.Fatalf("Restarts = %d, want 1", s.Restarts())
	}
	// The restarted process may log before the supervisor has written its
	// pid file.
	testkit.EventuallyErr(t, within, "the pid file names the restarted process", func() error {
		rec, err := ReadPIDFile(cfg.PIDFile)
		if err != nil || rec.PGID != pid {
			return fmt.Errorf("pid file = %+v, %v; want the restarted pid %d", rec, err, pid)
		}
		return nil
	})
	stop(t, s)
}

func TestStopKillsChildIgnoringSIGTERM(t *testing.T) {
	cfg := helperConfig(t, "ignore-term")
	cfg.StopGrace = 300 * time.Millisecond
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	start := time.Now()
	stop(t, s)
	if d := time.Since(start); d < cfg.StopGrace {
		t.Fatalf("Stop returned after %v, before the grace %v: SIGTERM should have been ignored", d, cfg.StopGrace)
	}
	if pidAlive(pid) {
		t.Fatalf("pid %d survived Stop", pid)
	}
	select {
	case e := <-s.Exits():
		t.Fatalf("unexpected Exit event on stop: %+v", e)
	default:
	}
}

func TestStopKillsWholeGroup(t *testing.T) {
	cfg := helperConfig(t, "grandchild")
	cfg.StopGrace = 300 * time.Millisecond
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	// Two ready lines: the child (serve) and the grandchild (ignore-term).
	waitReady(t, cfg.LogPath, 2)
	gc := logPIDs(t, cfg.LogPath, "grandchild")
	if len(gc) != 1 {
		t.Fatalf("grandchild pids = %v", gc)
	}
	rec, err := ReadPIDFile(cfg.PIDFile)
	if err != nil {
		t.Fatal(err)
	}
	leader := rec.PGID
	if pgid, err := syscall.Getpgid(gc[0]); err != nil || pgid != leader {
		t.Fatalf("grandchild pgid = %d, %v; want %d", pgid, err, leader)
	}
	stop(t, s)
	testkit.Eventually(t, 20*time.Second, "grandchild to die", func() bool { return !pidAlive(gc[0]) })
	if pidAlive(leader) {
		t.Fatalf("leader %d alive after Stop", leader)
	}
}

func TestCrashKillsOrphans(t *testing.T) {
	// A leader that dies leaves its group behind; the supervisor kills the
	// leftovers before restarting.
	dir := t.TempDir()
	script := "#!/bin/sh\nsleep 100 &\necho \"orphan pid=$!\"\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "out.log")
	s := New(Config{Service: "sh", Dir: dir, Command: []string{"./run.sh"}, LogPath: logPath,
		MinBackoff: time.Hour}, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	select {
	case <-s.Exits():
	case <-time.After(10 * time.Second):
		t.Fatal("no Exit event")
	}
	m := regexp.MustCompile(`orphan pid=(\d+)`).FindStringSubmatch(readFile(t, logPath))
	if m == nil {
		t.Fatalf("no orphan pid in log %q", readFile(t, logPath))
	}
	orphan, _ := strconv.Atoi(m[1])
	testkit.Eventually(t, 20*time.Second, "orphan to die", func() bool { return !pidAlive(orphan) })
	stop(t, s) // stops while waiting out the backoff
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestMissingBinary(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := helperConfig(t, "serve")
	cfg.Command = []string{"./no-such-binary"}
	s := New(cfg, testLogger(t))
	err := s.Start()
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Start = %v, want ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), "./no-such-binary") {
		t.Fatalf("error %q does not name the command", err)
	}
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file exists after failed start: %v", err)
	}
	stop(t, s)
	checkNoGoroutineLeak(t, base)

	s = New(Config{Service: "x", Dir: t.TempDir(), LogPath: filepath.Join(t.TempDir(), "l")}, testLogger(t))
	if err := s.Start(); !errors.Is(err, ErrNoCommand) {
		t.Fatalf("Start with no command = %v, want ErrNoCommand", err)
	}
}

func TestStopConcurrentWithCrashes(t *testing.T) {
	base := runtime.NumGoroutine()
	for i := range 5 {
		cfg := helperConfig(t, "crash")
		cfg.MinBackoff = time.Millisecond
		cfg.MaxBackoff = 2 * time.Millisecond
		s := New(cfg, testLogger(t))
		if err := s.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		// Let it crash and restart a little, then stop from two goroutines.
		testkit.Eventually(t, 10*time.Second, "a restart", func() bool { return s.Restarts() >= i%3 })
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if err := s.Stop(context.Background()); err != nil {
					t.Errorf("Stop: %v", err)
				}
			})
		}
		wg.Wait()
		n := s.Restarts()
		// The run loop has ended, so nothing can restart any more.
		select {
		case <-s.done:
		default:
			t.Fatal("run loop still running after Stop returned")
		}
		if s.Restarts() != n {
			t.Fatalf("restarted after Stop: %d -> %d", n, s.Restarts())
		}
	}
	checkNoGoroutineLeak(t, base)
}

func TestStopContextExpires(t *testing.T) {
	cfg := helperConfig(t, "ignore-term")
	cfg.StopGrace = 500 * time.Millisecond
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop with short ctx = %v, want DeadlineExceeded", err)
	}
	stop(t, s) // the stop carried on; a second Stop waits for it
	if pidAlive(pid) {
		t.Fatalf("pid %d alive after Stop", pid)
	}
}

func TestExitsDropsOldest(t *testing.T) {
	s := New(Config{}, zerolog.Nop())
	for i := range exitsBuffer + 5 {
		s.emit(Exit{Restarts: i})
	}
	if got := len(s.exits); got != exitsBuffer {
		t.Fatalf("buffered %d exits, want %d", got, exitsBuffer)
	}
	if e := <-s.Exits(); e.Restarts != 5 {
		t.Fatalf("oldest kept exit = %d, want 5", e.Restarts)
	}
}

// startStale starts the helper in its own process group, as an earlier
// agent would have, reaping it in the background.
func startStale(t *testing.T, mode string) (pid int, exited <-chan error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "stale.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	c := exec.Command(exe)
	c.Env = helperEnv(mode)
	c.Stdout = logf
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	reaped := make(chan struct{})
	go func() { ch <- c.Wait(); close(reaped) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-reaped
	})
	waitReady(t, logPath, 1)
	return c.Process.Pid, ch
}

// TestFindRunningRejectsBadFiles: a PID file that does not parse, or
// names pgid 1 or the agent's own group, finds nothing and is removed.
func TestFindRunningRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	boot, err := currentBootID()
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{"", "abc", "-5", "1", "0", strconv.Itoa(syscall.Getpgrp()),
		"fleetwave-pid 2\npgid 1\nboot_id " + boot + "\nstart_time 5",
		"fleetwave-pid 2\npgid 4242\nstart_time 5",
		"fleetwave-pid 2\npgid 4242\nboot_id " + boot + "\nstart_time x",
		"fleetwave-pid 2\npgid 4242\nboot_id " + boot,
		"fleetwave-pid 3\npgid 4242\nboot_id " + boot + "\nstart_time 5",
		"fleetwave-pid 2\npgid " + strconv.Itoa(syscall.Getpgrp()) + "\nboot_id " + boot + "\nstart_time 5",
	} {
		p := filepath.Join(dir, "bad.pid")
		if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if f, err := FindRunning(p, nil, testLogger(t)); f != nil || err != nil {
			t.Fatalf("FindRunning(%q) = %+v, %v; want nothing", content, f, err)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("bad pid file %q not removed: %v", content, err)
		}
	}
}

func TestWritePIDFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.pid")
	for _, pid := range []int{os.Getpid(), os.Getppid()} {
		rec, err := WritePIDFile(p, pid)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadPIDFile(p)
		if err != nil || got != rec || got.PGID != pid || got.BootID == "" || got.StartTime == 0 {
			t.Fatalf("pid file = %+v %v, want %+v for pid %d", got, err, rec, pid)
		}
		if !strings.HasPrefix(readFile(t, p), pidFileMagic+"\n") {
			t.Fatalf("pid file is not versioned: %q", readFile(t, p))
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("dir has %d entries, want only the pid file (no temp files left)", len(entries))
	}
	if _, err := WritePIDFile(filepath.Join(dir, "no", "such", "x.pid"), os.Getpid()); err == nil {
		t.Fatal("WritePIDFile into a missing dir succeeded")
	}
}
