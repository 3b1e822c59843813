package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// TestPrepareRunsBeforeEveryStart: Config.Prepare sees every command
// before it starts, the first and each restart, and may change its
// environment; started gets the pid that runs.
func TestPrepareRunsBeforeEveryStart(t *testing.T) {
	cfg := helperConfig(t, "crash-once")
	var (
		mu      sync.Mutex
		n       int
		started []int
	)
	cfg.Prepare = func(cmd *exec.Cmd) (func(int), error) {
		mu.Lock()
		n++
		cmd.Env = append(cmd.Env, fmt.Sprintf("FOO=prepared-%d", n))
		mu.Unlock()
		return func(pid int) {
			mu.Lock()
			started = append(started, pid)
			mu.Unlock()
		}, nil
	}
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer stop(t, s)
	pid := waitReady(t, cfg.LogPath, 1)[0]
	if log := readFile(t, cfg.LogPath); !strings.Contains(log, "foo=prepared-2") {
		t.Fatalf("the restart did not run prepared (log %q)", log)
	}
	mu.Lock()
	defer mu.Unlock()
	if n != 2 || len(started) != 2 || started[1] != pid || started[0] <= 0 {
		t.Fatalf("prepared %d times, started %v; want 2 and the serving pid %d last", n, started, pid)
	}
}

// TestPrepareErrorFailsStart: an error from Prepare fails the start and
// names it; nothing runs.
func TestPrepareErrorFailsStart(t *testing.T) {
	cfg := helperConfig(t, "serve")
	cfg.Prepare = func(*exec.Cmd) (func(int), error) { return nil, errors.New("no sockets today") }
	s := New(cfg, testLogger(t))
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), "no sockets today") {
		t.Fatalf("Start = %v, want the Prepare error", err)
	}
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after a failed start: %v", err)
	}
}

// TestMovePIDFile: the record moves to the new path (never in both, never
// in neither), a restart writes it there, and Stop removes it there.
func TestMovePIDFile(t *testing.T) {
	cfg := helperConfig(t, "serve")
	cfg.PIDFile = filepath.Join(t.TempDir(), "web.next.pid")
	s := New(cfg, testLogger(t))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	pid := waitReady(t, cfg.LogPath, 1)[0]
	main := filepath.Join(filepath.Dir(cfg.PIDFile), "web.pid")
	if err := s.MovePIDFile(main); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old pid file after the move: %v", err)
	}
	if rec, err := ReadPIDFile(main); err != nil || rec.PGID != pid {
		t.Fatalf("moved pid file: %+v, %v; want pid %d", rec, err, pid)
	}
	if s.PIDFile() != main {
		t.Fatalf("PIDFile() = %q", s.PIDFile())
	}
	// A crash: the restart is recorded at the new path.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pid2 := waitReady(t, cfg.LogPath, 2)[1]
	testkit.EventuallyErr(t, 20*time.Second, "the restart recorded at the new path", func() error {
		rec, err := ReadPIDFile(main)
		if err != nil {
			return err
		}
		if rec.PGID != pid2 {
			return fmt.Errorf("names %d, want %d", rec.PGID, pid2)
		}
		return nil
	})
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old pid file written again: %v", err)
	}
	stop(t, s)
	if _, err := os.Stat(main); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after Stop: %v, want removed", err)
	}
}

func writeScript(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestRunHook: a hook runs from its directory with the service's
// environment, its output appended to the service log; a failing exit
// names its status; one that overruns its timeout is killed with its whole
// group.
func TestRunHook(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "service.log")
	if err := os.WriteFile(logPath, []byte("before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeScript(t, dir, "ok.sh", `echo "hook in $(pwd) foo=$FOO"; echo "to stderr" >&2`)
	writeScript(t, dir, "fail.sh", "exit 7\n")
	writeScript(t, dir, "hang.sh", "sleep 300 &\necho \"child $!\"\nwait\n")
	h := Hook{Service: "web", Name: "pre_stop", Dir: dir, Env: []string{"FOO=bar"}, LogPath: logPath, Timeout: time.Minute}

	h.Command = []string{"./ok.sh"}
	if err := RunHook(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if got, want := readFile(t, logPath), fmt.Sprintf("before\nhook in %s foo=bar\nto stderr\n", dir); got != want {
		t.Fatalf("log %q, want %q", got, want)
	}

	h.Command = []string{"./fail.sh"}
	if err := RunHook(context.Background(), h); err == nil || !strings.Contains(err.Error(), "pre_stop of web: exit status 7") {
		t.Fatalf("failing hook: %v", err)
	}

	h.Command = []string{"./hang.sh"}
	h.Timeout = 200 * time.Millisecond
	start := time.Now()
	err := RunHook(context.Background(), h)
	if err == nil || !strings.Contains(err.Error(), "timed out after 200ms: killed") {
		t.Fatalf("hanging hook: %v", err)
	}
	if d := time.Since(start); d < h.Timeout {
		t.Fatalf("killed after %v, before its timeout", d)
	}
	var child int
	for _, l := range strings.Split(readFile(t, logPath), "\n") {
		if n, ok := strings.CutPrefix(l, "child "); ok {
			child, _ = strconv.Atoi(n)
		}
	}
	if child == 0 || pidAlive(child) {
		t.Fatalf("the hook's child %d outlived the hook", child)
	}

	h.Command = []string{"./missing.sh"}
	if err := RunHook(context.Background(), h); err == nil || !strings.Contains(err.Error(), "missing.sh") {
		t.Fatalf("missing hook: %v", err)
	}
}

// TestRunHookTail: the end of a hook's output comes back (at most
// TailBytes), also when it fails or times out, and all of it is in the
// service log.
func TestRunHookTail(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "service.log")
	writeScript(t, dir, "chatty.sh", "i=0\nwhile [ $i -lt 100 ]; do echo \"line $i\"; i=$((i+1)); done\necho 'ERROR: boom' >&2\nexit 3\n")
	writeScript(t, dir, "slow.sh", "echo 'waiting for the database'\nexec sleep 300\n")
	h := Hook{Service: "web", Name: "after_install", Dir: dir, LogPath: logPath, Timeout: time.Minute, TailBytes: 64}

	h.Command = []string{"./chatty.sh"}
	out, err := RunHookTail(context.Background(), h)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("err = %v", err)
	}
	if len(out) > 64 || !strings.HasSuffix(out, "line 99\nERROR: boom\n") {
		t.Fatalf("tail %q: want at most 64 bytes ending with the last lines", out)
	}
	if log := readFile(t, logPath); !strings.HasPrefix(log, "line 0\n") || !strings.HasSuffix(log, "line 99\nERROR: boom\n") {
		t.Fatalf("log %q: want all of the output", log)
	}

	h.Command, h.Timeout = []string{"./slow.sh"}, 100*time.Millisecond
	out, err = RunHookTail(context.Background(), h)
	if err == nil || !strings.Contains(err.Error(), "timed out after 100ms: killed") || out != "waiting for the database\n" {
		t.Fatalf("timed out hook: %q, %v", out, err)
	}
}
