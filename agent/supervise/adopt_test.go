package supervise

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// within is the failure deadline of the waits below (not an expected time).
const within = 30 * time.Second

func detach(t *testing.T, s *Supervisor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := s.Detach(ctx); err != nil {
		t.Fatalf("Detach: %v", err)
	}
}

func nextExit(t *testing.T, s *Supervisor) Exit {
	t.Helper()
	var e Exit
	testkit.Eventually(t, within, "an exit", func() bool {
		select {
		case e = <-s.Exits():
			return true
		default:
			return false
		}
	})
	return e
}

// TestDetachThenAdopt: Detach leaves the process running with its PID file
// (release and epoch recorded); FindRunning and Adopt take it over without
// a restart; the adopted process's crash is seen and restarted; Stop stops
// it and removes the file.
func TestDetachThenAdopt(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := helperConfig(t, "serve")
	cfg.Release, cfg.Epoch = "1.2.3", 7
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	detach(t, s)
	stop(t, s) // after Detach, Stop waits for the detach and stops nothing
	if !pidAlive(pid) {
		t.Fatalf("pid %d died with Detach", pid)
	}
	checkNoGoroutineLeak(t, base)
	rec, err := ReadPIDFile(cfg.PIDFile)
	if err != nil {
		t.Fatalf("pid file after Detach: %v", err)
	}
	if rec.PGID != pid || rec.Release != "1.2.3" || rec.Epoch != 7 {
		t.Fatalf("pid file holds %+v, want pgid %d release 1.2.3 epoch 7", rec, pid)
	}

	f, err := FindRunning(cfg.PIDFile, nil, testLogger(t))
	if err != nil || f == nil {
		t.Fatalf("FindRunning = %v, %v; want the detached process", f, err)
	}
	if f.Record != rec || !f.Running() {
		t.Fatalf("found %+v running=%v, want %+v running", f.Record, f.Running(), rec)
	}
	cfg2 := cfg
	cfg2.Epoch = 8
	s2 := New(cfg2, testLogger(t))
	if err := s2.Adopt(f); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if err := s2.Adopt(f); err == nil {
		t.Fatal("a Found adopted twice")
	}
	if got := logPIDs(t, cfg.LogPath, "ready"); len(got) != 1 {
		t.Fatalf("adoption restarted the process: ready lines %v", got)
	}
	// A crash of the adopted process (a child of this test process here,
	// so its status is known) is seen and restarted with the new config.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := nextExit(t, s2)
	var ee *ExitError
	if !errors.As(e.Err, &ee) || ee.Signal != syscall.SIGKILL {
		t.Fatalf("exit of the adopted child: %v, want killed by SIGKILL", e.Err)
	}
	pid2 := waitReady(t, cfg.LogPath, 2)[1]
	testkit.EventuallyErr(t, within, "pid file of the restarted process", func() error {
		rec, err := ReadPIDFile(cfg.PIDFile)
		if err != nil {
			return err
		}
		if rec.PGID != pid2 || rec.Release != "1.2.3" || rec.Epoch != 8 {
			return errors.New("holds " + strconv.Itoa(rec.PGID))
		}
		return nil
	})
	stop(t, s2)
	if pidAlive(pid2) {
		t.Fatalf("pid %d alive after Stop", pid2)
	}
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after Stop: %v, want removed", err)
	}
	checkNoGoroutineLeak(t, base)
}

// startDaemon starts a "serve" helper that is not a child of this process
// (its parent exits at once), as a service left by a dead agent is.
func startDaemon(t *testing.T) (pid int, logPath string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logPath = filepath.Join(t.TempDir(), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	c := exec.Command(exe)
	c.Env = helperEnv("daemon")
	c.Stdout = logf
	if err := c.Run(); err != nil {
		t.Fatalf("daemon helper: %v", err)
	}
	pid = waitReady(t, logPath, 1)[0]
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
		t.Fatalf("daemon pgid %d, %v; want %d", pgid, err, pid)
	}
	return pid, logPath
}

// TestAdoptNonChild: a process that is not our child is watched through
// its pidfd: its exit is seen (status unknown) and it is restarted.
func TestAdoptNonChild(t *testing.T) {
	pid, _ := startDaemon(t)
	cfg := helperConfig(t, "serve")
	if _, err := WritePIDRecord(cfg.PIDFile, pid, "2.0.0", 3); err != nil {
		t.Fatal(err)
	}
	f, err := FindRunning(cfg.PIDFile, nil, testLogger(t))
	if err != nil || f == nil {
		t.Fatalf("FindRunning = %v, %v", f, err)
	}
	s := New(cfg, testLogger(t))
	if err := s.Adopt(f); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if e := nextExit(t, s); !errors.Is(e.Err, ErrExitUnknown) {
		t.Fatalf("exit of an adopted non-child: %v, want ErrExitUnknown", e.Err)
	}
	pid2 := waitReady(t, cfg.LogPath, 1)[0]
	if pid2 == pid {
		t.Fatal("not restarted")
	}
	stop(t, s)
	if pidAlive(pid2) {
		t.Fatalf("pid %d alive after Stop", pid2)
	}
}

// TestFoundStop stops a found process (SIGTERM) and removes its PID file;
// Release leaves it running.
func TestFoundStop(t *testing.T) {
	pid, _ := startDaemon(t)
	pidFile := filepath.Join(t.TempDir(), "svc.pid")
	if _, err := WritePIDRecord(pidFile, pid, "1.0.0", 1); err != nil {
		t.Fatal(err)
	}
	f, err := FindRunning(pidFile, nil, testLogger(t))
	if err != nil || f == nil {
		t.Fatalf("FindRunning = %v, %v", f, err)
	}
	f.Release()
	if !pidAlive(pid) {
		t.Fatal("Release stopped the process")
	}
	f, err = FindRunning(pidFile, nil, testLogger(t))
	if err != nil || f == nil {
		t.Fatalf("FindRunning after Release = %v, %v", f, err)
	}
	if err := f.Stop(time.Hour, testLogger(t)); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	testkit.Eventually(t, within, "the found process gone", func() bool { return !pidAlive(pid) })
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after Stop: %v, want removed", err)
	}
	if err := f.Stop(time.Second, testLogger(t)); err == nil {
		t.Fatal("second Stop of the same Found succeeded")
	}
}

// TestFindRunningFindsNothingUnproven: no file, garbage, an old bare pgid,
// a dead leader, a reused pid and another boot find nothing; every file but
// the missing one is removed, and no live process is signalled.
func TestFindRunningFindsNothingUnproven(t *testing.T) {
	pid, exited := startStale(t, "serve")
	rec, err := identify(pid)
	if err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		content string
	}{
		{"garbage", "hello\n"},
		{"old bare pgid", strconv.Itoa(pid) + "\n"},
		{"dead leader", string(PIDRecord{PGID: dead.Process.Pid, BootID: rec.BootID, StartTime: 1}.marshal())},
		{"pid reused", string(PIDRecord{PGID: pid, BootID: rec.BootID, StartTime: rec.StartTime + 1}.marshal())},
		{"other boot", string(PIDRecord{PGID: pid, BootID: "00000000-0000-0000-0000-00000000000f", StartTime: rec.StartTime}.marshal())},
		{"bad release", string(rec.marshal()) + "release a b\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "svc.pid")
			if err := os.WriteFile(pidFile, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := FindRunning(pidFile, nil, testLogger(t))
			if err != nil || f != nil {
				t.Fatalf("FindRunning = %+v, %v; want nothing", f, err)
			}
			if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pid file: %v, want removed", err)
			}
		})
	}
	if f, err := FindRunning(filepath.Join(t.TempDir(), "missing.pid"), nil, testLogger(t)); f != nil || err != nil {
		t.Fatalf("FindRunning without a file = %v, %v", f, err)
	}
	select {
	case err := <-exited:
		t.Fatalf("a live process was signalled: %v", err)
	default:
	}
}

// TestPIDRecordRoundTrip: release and epoch survive the file; files
// without them (older agents) still parse.
func TestPIDRecordRoundTrip(t *testing.T) {
	r := PIDRecord{PGID: 42, BootID: "b", StartTime: 9, Release: "1.0.0-rc.1", Epoch: 12}
	got, err := parsePIDFile(r.marshal())
	if err != nil || got != r {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, r)
	}
	old := []byte("fleetwave-pid 2\npgid 42\nboot_id b\nstart_time 9\n")
	got, err = parsePIDFile(old)
	if err != nil || got != (PIDRecord{PGID: 42, BootID: "b", StartTime: 9}) {
		t.Fatalf("file without release: %+v, %v", got, err)
	}
	if _, err := parsePIDFile(append(old, "epoch x\n"...)); !errors.Is(err, ErrInvalidPIDFile) {
		t.Fatalf("bad epoch: %v, want ErrInvalidPIDFile", err)
	}
	if _, err := WritePIDRecord(filepath.Join(t.TempDir(), "p"), os.Getpid(), "has space", 1); err == nil {
		t.Fatal("WritePIDRecord took a release with a space")
	}
}

// TestOutputGoesToTheLogFile: the process's stdout and stderr are the log
// file itself, opened O_APPEND (no pipe through the supervisor, so the
// output does not depend on it and survives it).
func TestOutputGoesToTheLogFile(t *testing.T) {
	cfg := helperConfig(t, "serve")
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer stop(t, s)
	pid := waitReady(t, cfg.LogPath, 1)[0]
	for _, fd := range []string{"1", "2"} {
		target, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd))
		if err != nil {
			t.Fatal(err)
		}
		if target != cfg.LogPath {
			t.Fatalf("fd %s of the process is %q, want the log file %q", fd, target, cfg.LogPath)
		}
		info, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "fdinfo", fd))
		if err != nil {
			t.Fatal(err)
		}
		var flags int64
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				flags, err = strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		if flags&syscall.O_APPEND == 0 {
			t.Fatalf("fd %s flags %o: not O_APPEND", fd, flags)
		}
	}
}
