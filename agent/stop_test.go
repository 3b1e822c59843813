package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/procenv"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestStopServices stops a service an agent left running with its
// release's stop grace (from the state: SIGKILL once it passed, for a
// service that ignores SIGTERM), and refuses while an agent holds the data
// dir.
func TestStopServices(t *testing.T) {
	dataDir := t.TempDir()
	for _, d := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	asg := testAssignment("1.0.0", 1, strings.Repeat("a", 64), 10, "") // stop_grace 2s
	st, err := state.Open(filepath.Join(dataDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(&lifecycle.Snapshot{Service: testSvc, Phase: v1.Phase_PHASE_HEALTHY, Generation: 1,
		Current: asg, LastGood: asg, Target: asg, CurrentOK: true}); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	svc, reaped := startGroup(t, "trap '' TERM; echo ready; while :; do sleep 1; done", nil, nil, &waitErr)
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	if _, err := supervise.WritePIDRecord(pidFile, svc.Process.Pid, "1.0.0", 1); err != nil {
		t.Fatal(err)
	}

	unlock, err := lockDataDir(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := StopServices(context.Background(), Config{DataDir: dataDir, HostID: testHostID}, true, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "stop the agent first") {
		t.Fatalf("StopServices while an agent holds the data dir: %v", err)
	}
	unlock()
	if !alive(svc.Process.Pid) {
		t.Fatal("the refused stop signalled the service")
	}

	start := time.Now()
	if err := StopServices(context.Background(), Config{DataDir: dataDir, HostID: testHostID}, true, testLogger(t)); err != nil {
		t.Fatalf("StopServices: %v", err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("stopped after %v: the release's stop grace is 2s", took)
	}
	testkit.Eventually(t, time.Minute, "the service reaped", func() bool {
		select {
		case <-reaped:
			return true
		default:
			return false
		}
	})
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("service ended with %v, want SIGKILL after its grace", waitErr)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file: %v, want removed", err)
	}
	// Nothing left: a second run has nothing to do.
	if err := StopServices(context.Background(), Config{DataDir: dataDir, HostID: testHostID}, true, zerolog.Nop()); err != nil {
		t.Fatalf("second StopServices: %v", err)
	}
}

// startGroup starts script (/bin/sh -c) in its own process group with env
// added and as cred (nil: this process's user), waits until it printed
// "ready", kills the group at the test's end, and returns it with a
// channel closed once it is reaped (its wait error in *waitErr when not
// nil).
func startGroup(t *testing.T, script string, env []string, cred *syscall.Credential, waitErr *error) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	svc := exec.Command("/bin/sh", "-c", script)
	svc.Env = append(os.Environ(), env...)
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	out, err := svc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Read(make([]byte, 6)); err != nil { // "ready": its traps are set
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() {
		err := svc.Wait()
		if waitErr != nil {
			*waitErr = err
		}
		close(reaped)
	}()
	t.Cleanup(func() { _ = syscall.Kill(-svc.Process.Pid, syscall.SIGKILL); <-reaped })
	return svc, reaped
}

// drainScript is a before_stop hook (./drain.sh ${host.id}) that records
// its argument, working directory and environment in $OUT/hook.env, says
// "hook-output" (to the service log), records when it ended in
// $OUT/hook.end and leaves the mark $OUT/drained.
const drainScript = `#!/bin/sh
{ echo "arg=$1"; echo "pwd=$(pwd)"; env | grep -E '^(FLEETWAVE_|PORT=)'; } > "$OUT/hook.env"
echo hook-output
date +%s%N > "$OUT/hook.end"
touch "$OUT/drained"
`

// drainedService is a service that, at SIGTERM, writes to $OUT/term
// whether $OUT/drained was there ("drained" or "undrained") and when
// (nanoseconds), then exits.
const drainedService = `trap 'if [ -e "$OUT/drained" ]; then echo drained; else echo undrained; fi > "$OUT/term.tmp"; date +%s%N >> "$OUT/term.tmp"; mv "$OUT/term.tmp" "$OUT/term"; exit 0' TERM
echo ready
while :; do sleep 1 & wait $!; done
`

// stopFixture is a data dir left by an agent: the state records the
// assignment release(out) (release 1.0.0, current and last good), its
// release dir holds drain.sh, and drainedService runs as its process (its
// PID file written), with OUT=out. It returns the data dir, out, and a
// channel closed once the service is reaped.
func stopFixture(t *testing.T, release func(out string) *v1.Assignment) (dataDir, out string, reaped <-chan struct{}) {
	t.Helper()
	dataDir, out = t.TempDir(), t.TempDir()
	asg := release(out)
	rel := filepath.Join(dataDir, "releases", testSvc, "1.0.0")
	for _, d := range []string{filepath.Join(dataDir, "run"), filepath.Join(dataDir, "state"), filepath.Join(dataDir, "logs"), rel} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rel, "drain.sh"), []byte(drainScript), 0o755); err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(filepath.Join(dataDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(&lifecycle.Snapshot{Service: testSvc, Phase: v1.Phase_PHASE_HEALTHY, Generation: asg.GetGeneration(),
		Current: asg, LastGood: asg, Target: asg, CurrentOK: true}); err != nil {
		t.Fatal(err)
	}
	svc, done := startGroup(t, drainedService, []string{"OUT=" + out}, nil, nil)
	if _, err := supervise.WritePIDRecord(filepath.Join(dataDir, "run", testSvc+".pid"), svc.Process.Pid, "1.0.0", 1); err != nil {
		t.Fatal(err)
	}
	return dataDir, out, done
}

// drainAssignment is release 1.0.0 with ./drain.sh ${host.id} as its
// before_stop (alias: as run.pre_stop), timeout, and shutdown_delay.
func drainAssignment(out string, alias bool, timeout, delay time.Duration, cmd ...string) *v1.Assignment {
	asg := testAssignment("1.0.0", 3, strings.Repeat("a", 64), 10, "")
	asg.Spec.Run.Env = map[string]string{"PORT": "${host.label.port}", "OUT": out}
	if delay > 0 {
		asg.Spec.Run.ShutdownDelay = durationpb.New(delay)
	}
	if len(cmd) == 0 {
		cmd = []string{"./drain.sh", "${host.id}"}
	}
	var to *durationpb.Duration
	if timeout > 0 {
		to = durationpb.New(timeout)
	}
	if alias {
		asg.Spec.Run.PreStop = &v1.PreStop{Command: cmd, Timeout: to}
	} else {
		asg.Spec.Hooks = &v1.Hooks{BeforeStop: &v1.Hook{Command: cmd, Timeout: to}}
	}
	return asg
}

// waitTerm waits for the service's SIGTERM record: whether the drain's
// mark was there, and when (Unix nanoseconds).
func waitTerm(t *testing.T, out string, reaped <-chan struct{}) (drained bool, at int64) {
	t.Helper()
	testkit.Eventually(t, time.Minute, "the service reaped", func() bool {
		select {
		case <-reaped:
			return true
		default:
			return false
		}
	})
	b, err := os.ReadFile(filepath.Join(out, "term"))
	if err != nil {
		t.Fatalf("the service did not record its SIGTERM: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("term record %q", b)
	}
	at, err = strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f[0] == "drained", at
}

// TestStopServicesDrains: stop-services runs the running release's
// before_stop (hooks.before_stop, or its alias run.pre_stop) as a deploy
// does (from the release dir, ${host.*} expanded, the service's env and
// FLEETWAVE_* with FLEETWAVE_OPERATION=stop and an empty
// FLEETWAVE_NEXT_VERSION, its output in the service log), then waits the
// shutdown_delay, and only then sends SIGTERM: the service sees the hook's
// mark, at least the delay after the hook ended.
func TestStopServicesDrains(t *testing.T) {
	for _, alias := range []bool{false, true} {
		t.Run(map[bool]string{false: "hooks.before_stop", true: "run.pre_stop"}[alias], func(t *testing.T) {
			const delay = 400 * time.Millisecond
			dataDir, out, reaped := stopFixture(t, func(out string) *v1.Assignment { return drainAssignment(out, alias, 0, delay) })
			cfg := Config{DataDir: dataDir, HostID: testHostID, Labels: map[string]string{"port": "8123"}}
			if err := StopServices(context.Background(), cfg, true, testLogger(t)); err != nil {
				t.Fatalf("StopServices: %v", err)
			}
			drained, termAt := waitTerm(t, out, reaped)
			if !drained {
				t.Fatal("SIGTERM came before the before_stop hook ended")
			}
			env, err := os.ReadFile(filepath.Join(out, "hook.env"))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"arg=" + testHostID, "pwd=" + filepath.Join(dataDir, "releases", testSvc, "1.0.0"),
				"PORT=8123", "FLEETWAVE_SERVICE=" + testSvc, "FLEETWAVE_HOOK=before_stop", "FLEETWAVE_OPERATION=stop",
				"FLEETWAVE_VERSION=1.0.0", "FLEETWAVE_NEXT_VERSION=", "FLEETWAVE_HOST_ID=" + testHostID, "FLEETWAVE_GENERATION=3"} {
				if !slices.Contains(strings.Split(string(env), "\n"), want) {
					t.Errorf("hook environment lacks %q:\n%s", want, env)
				}
			}
			if log, err := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log")); err != nil || !strings.Contains(string(log), "hook-output") {
				t.Errorf("service log %q, %v: want the hook's output", log, err)
			}
			b, err := os.ReadFile(filepath.Join(out, "hook.end"))
			if err != nil {
				t.Fatal(err)
			}
			hookEnd, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Duration(termAt - hookEnd); d < delay {
				t.Errorf("SIGTERM %v after the hook ended, want at least the shutdown_delay %v", d, delay)
			}
		})
	}
}

// TestStopServicesHookFailsStillStops: a before_stop that fails, or
// outlives its timeout (its process group killed), is logged and the
// service is stopped all the same, after the shutdown_delay.
func TestStopServicesHookFailsStillStops(t *testing.T) {
	for _, tt := range []struct {
		name    string
		timeout time.Duration
		script  string
	}{
		{"exit 3", 0, `echo "$$" > "$OUT/hook.pid"; exit 3`},
		{"timeout", time.Second, `echo "$$" > "$OUT/hook.pid"; exec sleep 300`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dataDir, out, reaped := stopFixture(t, func(out string) *v1.Assignment {
				return drainAssignment(out, false, tt.timeout, 100*time.Millisecond, "/bin/sh", "-c", tt.script)
			})
			cfg := Config{DataDir: dataDir, HostID: testHostID, Labels: map[string]string{"port": "8123"}}
			if err := StopServices(context.Background(), cfg, true, testLogger(t)); err != nil {
				t.Fatalf("StopServices: %v", err)
			}
			if drained, _ := waitTerm(t, out, reaped); drained {
				t.Fatal("the failing hook left its mark")
			}
			b, err := os.ReadFile(filepath.Join(out, "hook.pid"))
			if err != nil {
				t.Fatalf("the hook did not run: %v", err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			if alive(pid) {
				t.Fatalf("the hook (pid %d) still runs", pid)
			}
		})
	}
}

// TestStopServicesNoDrain: without drain (--no-drain) no hook runs and the
// service gets SIGTERM at once.
func TestStopServicesNoDrain(t *testing.T) {
	dataDir, out, reaped := stopFixture(t, func(out string) *v1.Assignment {
		return drainAssignment(out, false, 0, time.Hour)
	})
	// No host id, no labels: not needed without a drain.
	if err := StopServices(context.Background(), Config{DataDir: dataDir}, false, testLogger(t)); err != nil {
		t.Fatalf("StopServices: %v", err)
	}
	if drained, _ := waitTerm(t, out, reaped); drained {
		t.Fatal("the before_stop ran")
	}
	if _, err := os.Stat(filepath.Join(out, "hook.env")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("hook.env: %v, want no hook run", err)
	}
}

// TestStopServicesBadHostIdentity: draining needs a valid host id and
// labels (the hooks' ${host.*}); bad ones are refused naming the field and
// value, before anything is stopped.
func TestStopServicesBadHostIdentity(t *testing.T) {
	dataDir, _, _ := stopFixture(t, func(out string) *v1.Assignment { return drainAssignment(out, false, 0, 0) })
	pid := readPID(t, filepath.Join(dataDir, "run", testSvc+".pid"))
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{DataDir: dataDir, HostID: "bad id"}, `host_id`},
		{Config{DataDir: dataDir, HostID: testHostID, Labels: map[string]string{"port": "a b"}}, `labels`},
	} {
		err := StopServices(context.Background(), tt.cfg, true, zerolog.Nop())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error naming %s", tt.cfg, err, tt.want)
		}
	}
	if !alive(pid) {
		t.Fatal("a refused stop stopped the service")
	}
}

// TestStopServicesCancelDuringHook: ctx ending (a SIGTERM or SIGINT) while
// the before_stop runs kills the hook's process group, skips the
// shutdown_delay (an hour) and stops the service at once: nothing is left
// half stopped, and StopServices returns nil (every service stopped).
func TestStopServicesCancelDuringHook(t *testing.T) {
	dataDir, out, reaped := stopFixture(t, func(out string) *v1.Assignment {
		return drainAssignment(out, false, 4*time.Minute, time.Hour, "/bin/sh", "-c", `echo "$$" > "$OUT/hook.pid.tmp"; mv "$OUT/hook.pid.tmp" "$OUT/hook.pid"; exec sleep 300`)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := Config{DataDir: dataDir, HostID: testHostID, Labels: map[string]string{"port": "8123"}}
	done := make(chan error, 1)
	go func() { done <- StopServices(ctx, cfg, true, testLogger(t)) }()
	var hookPID int
	testkit.Eventually(t, time.Minute, "the hook running", func() bool {
		b, err := os.ReadFile(filepath.Join(out, "hook.pid"))
		if err != nil {
			return false
		}
		hookPID, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	if _, err := os.Stat(filepath.Join(out, "term")); err == nil {
		t.Fatal("SIGTERM during the hook")
	}
	cancel()
	var err error
	testkit.Eventually(t, time.Minute, "StopServices to return", func() bool {
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	})
	if err != nil {
		t.Fatalf("StopServices: %v", err)
	}
	if drained, _ := waitTerm(t, out, reaped); drained {
		t.Fatal("the hook left its mark")
	}
	if alive(hookPID) {
		t.Fatalf("the hook (pid %d) still runs", hookPID)
	}
}

// TestStopServicesHandoverDrainsOnce: a service found in a handover (its
// <service>.pid and <service>.next.pid both running the same release, as
// an agent stopped in a handover of a judging-only change leaves it) is
// drained once: its before_stop runs once (not once per process, two at
// once), then both processes are stopped.
func TestStopServicesHandoverDrainsOnce(t *testing.T) {
	hook := `echo run >> "$OUT/runs"; mkdir "$OUT/running" || echo overlap >> "$OUT/overlap"; sleep 0.3; rmdir "$OUT/running"; touch "$OUT/drained"`
	dataDir, out, reaped := stopFixture(t, func(out string) *v1.Assignment {
		return drainAssignment(out, false, 0, 0, "/bin/sh", "-c", hook)
	})
	nextOut := t.TempDir()
	next, nextReaped := startGroup(t, drainedService, []string{"OUT=" + nextOut}, nil, nil)
	if _, err := supervise.WritePIDRecord(filepath.Join(dataDir, "run", testSvc+nextPIDSuffix), next.Process.Pid, "1.0.0", 2); err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: dataDir, HostID: testHostID, Labels: map[string]string{"port": "8123"}}
	if err := StopServices(context.Background(), cfg, true, testLogger(t)); err != nil {
		t.Fatalf("StopServices: %v", err)
	}
	if drained, _ := waitTerm(t, out, reaped); !drained {
		t.Error("the process of <service>.pid got SIGTERM before the drain")
	}
	// The hook's mark is in out; the other process records in nextOut.
	testkit.Eventually(t, time.Minute, "the process of <service>.next.pid reaped", func() bool {
		select {
		case <-nextReaped:
			return true
		default:
			return false
		}
	})
	if _, err := os.Stat(filepath.Join(nextOut, "term")); err != nil {
		t.Errorf("the process of <service>.next.pid did not record its SIGTERM: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "runs")); err != nil || strings.Count(string(b), "run") != 1 {
		t.Errorf("before_stop runs %q, %v: want one", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "overlap")); err == nil {
		t.Errorf("two before_stop hooks ran at once: %q", b)
	}
}

// TestStopServicesUntrustedStateNoDrain: stop-services runs as root while
// an agent may run as another user (its data dir that user's): a state it
// did not write itself, or one others may write, is not trusted to choose
// what runs (a before_stop without run.user would run as root, its
// release's ./drain.sh rewritable by that user). The service is stopped
// without a drain, with the default stop grace, and the log says why.
func TestStopServicesUntrustedStateNoDrain(t *testing.T) {
	for _, tt := range []struct {
		name   string
		root   bool // needs root (chown)
		change func(t *testing.T, dataDir string)
	}{
		{"state file owned by another user", true, func(t *testing.T, dataDir string) {
			chown(t, filepath.Join(dataDir, "state", testSvc+".json"))
		}},
		{"state dir owned by another user", true, func(t *testing.T, dataDir string) {
			chown(t, filepath.Join(dataDir, "state"))
		}},
		{"data dir owned by another user", true, func(t *testing.T, dataDir string) {
			chown(t, dataDir)
		}},
		{"state file writable by others", false, func(t *testing.T, dataDir string) {
			chmod(t, filepath.Join(dataDir, "state", testSvc+".json"), 0o666)
		}},
		{"state dir writable by its group", false, func(t *testing.T, dataDir string) {
			chmod(t, filepath.Join(dataDir, "state"), 0o775)
		}},
		{"state file a link", false, func(t *testing.T, dataDir string) {
			path := filepath.Join(dataDir, "state", testSvc+".json")
			if err := os.Rename(path, path+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(path+".real", path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a file to another user")
			}
			dataDir, out, reaped := stopFixture(t, func(out string) *v1.Assignment { return drainAssignment(out, false, 0, 0) })
			tt.change(t, dataDir)
			var log strings.Builder
			cfg := Config{DataDir: dataDir, HostID: testHostID, Labels: map[string]string{"port": "8123"}}
			if err := StopServices(context.Background(), cfg, true, zerolog.New(&syncWriter{w: &log})); err != nil {
				t.Fatalf("StopServices: %v", err)
			}
			if drained, _ := waitTerm(t, out, reaped); drained {
				t.Fatal("the before_stop of an untrusted state ran")
			}
			if _, err := os.Stat(filepath.Join(out, "hook.env")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("hook.env: %v, want no hook run", err)
			}
			if !strings.Contains(log.String(), "state not trusted") {
				t.Errorf("the log does not say the state is not trusted:\n%s", log.String())
			}
		})
	}
}

// chown gives path to nobody (uid and gid 65534).
func chown(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// syncWriter writes to w, one writer at a time.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// stop-services (root) stops a process group only when whoever could have
// written its PID file could have signalled it: before, a PID file in the
// run dir of an agent running as another user, naming any process of the
// host with its real start time, had root stop it.
func TestStopServicesPIDFileAuthority(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (processes of another user, chown)")
	}
	for _, tc := range []struct {
		name      string
		fileOwner int // -1: root's, as written
		fileMode  os.FileMode
		runMode   os.FileMode
		stopped   bool
		why       string
	}{
		{"the process's own user", 65534, 0o644, 0o755, true, ""},
		{"root's file", -1, 0o644, 0o755, true, ""},
		{"another user's file", 65533, 0o644, 0o755, false, "owned by uid 65533, which may not signal"},
		{"a file others may write", -1, 0o666, 0o755, false, "writable by others than its owner"},
		{"a run dir others may write", -1, 0o644, 0o777, false, "writable by others than its owner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			run := filepath.Join(dataDir, "run")
			if err := os.MkdirAll(run, 0o755); err != nil {
				t.Fatal(err)
			}
			svc, reaped := startGroup(t, "echo ready; while :; do sleep 1 & wait $!; done", nil, &syscall.Credential{Uid: 65534, Gid: 65534}, nil)
			pidFile := filepath.Join(run, testSvc+".pid")
			if _, err := supervise.WritePIDRecord(pidFile, svc.Process.Pid, "1.0.0", 1); err != nil {
				t.Fatal(err)
			}
			if tc.fileOwner >= 0 {
				if err := os.Lchown(pidFile, tc.fileOwner, tc.fileOwner); err != nil {
					t.Fatal(err)
				}
			}
			chmod(t, pidFile, tc.fileMode)
			chmod(t, run, tc.runMode)
			err := StopServices(context.Background(), Config{DataDir: dataDir, HostID: testHostID}, false, testLogger(t))
			if tc.stopped {
				if err != nil {
					t.Fatalf("StopServices: %v", err)
				}
				<-reaped
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("StopServices: %v, want an error saying %q", err, tc.why)
			}
			if !alive(svc.Process.Pid) {
				t.Fatal("the process was signalled")
			}
		})
	}
}

// TestStopServicesHookEnvironmentIsTheDeploys: a hook run by
// stop-services gets the environment a deploy gave it, whatever the
// environment of the shell that runs stop-services: here a PATH whose
// first directory has an `sh` of its own and a variable of the caller.
// The same command (`sh -c 'env ...'`, a bare name) records its
// environment as before_start of the deploy and as before_stop of
// stop-services: equal but for what says which hook and operation it is,
// PATH procenv.Path in both, the caller's sh never run.
func TestStopServicesHookEnvironmentIsTheDeploys(t *testing.T) {
	fc := newFakeCoordinator(t)
	dataDir, out := t.TempDir(), t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081", "zone": "z1"}, DataDir: dataDir}
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	asg := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	asg.Spec.Run.Env["OUT"] = out
	asg.Spec.Run.Env["ZONE"] = "${host.label.zone}"
	record := func() *v1.Hook {
		return &v1.Hook{Command: []string{"sh", "-c", `env | LC_ALL=C sort > "$OUT/$FLEETWAVE_HOOK.env"`}, Timeout: durationpb.New(time.Minute)}
	}
	asg.Spec.Hooks = &v1.Hooks{BeforeStart: record(), BeforeStop: record()}
	fc.assign(asg)
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	cancel()
	waitDone(t, done)

	// The operator's shell: its own sh first in PATH, a variable of its own.
	own := t.TempDir()
	if err := os.WriteFile(filepath.Join(own, "sh"), []byte("#!/bin/sh\ntouch \"$OUT/caller-sh-ran\"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", own+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("FLEETWAVE_TEST_CALLER", "leaked")
	if err := StopServices(context.Background(), Config{DataDir: dataDir, HostID: cfg.HostID, Labels: cfg.Labels}, true, zerolog.New(zerolog.NewTestWriter(t))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "caller-sh-ran")); err == nil {
		t.Fatal("stop-services ran the hook's sh from the caller's PATH")
	}
	envOf := func(hook string) map[string]string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(out, hook+".env"))
		if err != nil {
			t.Fatalf("%s did not run: %v", hook, err)
		}
		m := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			k, v, _ := strings.Cut(line, "=")
			m[k] = v
		}
		return m
	}
	deploy, stop := envOf("before_start"), envOf("before_stop")
	if deploy["PATH"] != procenv.Path || stop["PATH"] != procenv.Path {
		t.Fatalf("PATH: deploy %q, stop-services %q; want %q in both", deploy["PATH"], stop["PATH"], procenv.Path)
	}
	if stop["FLEETWAVE_OPERATION"] != "stop" || deploy["FLEETWAVE_OPERATION"] != "install" || stop["ZONE"] != "z1" || stop["FLEETWAVE_HOST_ID"] != testHostID {
		t.Fatalf("stop-services hook environment: %v", stop)
	}
	// What says which hook and operation it is differs, by design.
	for _, k := range []string{"FLEETWAVE_HOOK", "FLEETWAVE_OPERATION", "FLEETWAVE_PREVIOUS_VERSION", "FLEETWAVE_NEXT_VERSION"} {
		delete(deploy, k)
		delete(stop, k)
	}
	if fmt.Sprint(deploy) != fmt.Sprint(stop) { // sorted by key

		t.Fatalf("hook environment\n deploy:        %v\n stop-services: %v", deploy, stop)
	}
}

// An exec check gets the environment of the service's process and hooks
// (README, "The environment of a service's processes"): run.env, whose
// PATH also finds the check's program, as it finds the service's.
func TestExecCheckEnvironmentIsTheService(t *testing.T) {
	fc := newFakeCoordinator(t)
	dataDir, bin := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "fw-env-check"), []byte("#!/bin/sh\ntest \"$ZONE\" = z1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081", "zone": "z1"}, DataDir: dataDir}
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	asg := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	asg.Spec.Run.Env["ZONE"] = "${host.label.zone}"
	asg.Spec.Run.Env["PATH"] = bin + ":" + procenv.Path
	asg.Spec.Checks[0].Kind = &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"fw-env-check"}}}
	fc.assign(asg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	cancel()
	waitDone(t, done)
}
