package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/procenv"
	"golang.org/x/sys/unix"
)

// Hook is a command run for a service outside its supervised process: a
// lifecycle hook of its spec (after_install, before_start, after_start,
// validate, before_stop).
type Hook struct {
	Service string   // for errors
	Name    string   // what it is, for errors ("before_stop")
	Dir     string   // working directory (the release dir it belongs to)
	Command []string // already expanded; Command[0] starting with "./" is relative to Dir
	Env     []string // KEY=VALUE, appended to procenv.Env (PATH, HOME=Dir), as for the service: the same run by the agent or by stop-services
	LogPath string   // stdout and stderr appended here (created 0644)
	Timeout time.Duration
	// Credential, if set, runs the hook as that user and group (the
	// service's run.user; the agent must be root).
	Credential *syscall.Credential
	// Cgroups, if usable, runs the hook in a cgroup of its own below the
	// service's (<parent>/<Service>/<id>) with Limits, emptied and removed
	// when the hook ends: nothing it starts, also what leaves its process
	// group, outlives it (Cgroups.StartIn).
	Cgroups *Cgroups
	Limits  Limits
	// TailBytes: RunHookTail returns at most this many bytes of the end of
	// the hook's output (default DefaultHookTail).
	TailBytes int
}

// DefaultHookTail is how much of the end of a hook's output RunHookTail
// keeps when Hook.TailBytes is not set.
const DefaultHookTail = 2048

// hookKillWait bounds the wait for a hook's process group to go after
// SIGKILL (a member stuck in uninterruptible sleep), and then for the last
// of its output.
const hookKillWait = 5 * time.Second

// RunHook is RunHookTail without the output's tail, its error naming the
// hook and the service.
func RunHook(ctx context.Context, h Hook) error {
	if _, err := RunHookTail(ctx, h); err != nil {
		return fmt.Errorf("%s of %s: %w", h.Name, h.Service, err)
	}
	return nil
}

// RunHookTail runs h in its own process group, its output appended to
// h.LogPath, and waits for it. When h.Timeout passes or ctx ends first, the
// whole group gets SIGKILL and it returns an error saying so. A non-zero
// exit is an error naming the status. Nothing of the hook's group is left
// running when it returns (its group is killed once its leader has exited
// too). It returns the end of the hook's output (at most h.TailBytes) in
// either case. Its errors say what went wrong, not which hook.
//
// The output goes through the agent (a pipe it copies to the log), so that
// its end can be reported: a hook whose agent is killed meets a closed
// pipe at its next write.
func RunHookTail(ctx context.Context, h Hook) (string, error) {
	if len(h.Command) == 0 || h.Command[0] == "" {
		return "", ErrNoCommand
	}
	logf, err := os.OpenFile(h.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640) // no other user reads a service's output
	if err != nil {
		return "", fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	env := procenv.Env(h.Dir, h.Env)
	name, err := procenv.Program(h.Command[0], h.Dir, env)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(name, h.Command[1:]...)
	cmd.Dir = h.Dir
	cmd.Env = env
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close()
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: h.Credential}
	// The timeout counts from here: a start held in its gate (the shell
	// stopped or starved) is part of the hook's time.
	hookCtx := ctx
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		hookCtx, cancel = context.WithTimeout(ctx, h.Timeout)
		defer cancel()
	}
	end := func() {}
	if h.Cgroups.Usable() {
		end, err = h.Cgroups.StartIn(hookCtx, h.Service, h.Limits, cmd)
	} else {
		err = cmd.Start()
	}
	w.Close() // the hook's copies are its own
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return "", fmt.Errorf("timed out after %s while starting: killed", h.Timeout)
		}
		return "", fmt.Errorf("exec %q: %w", h.Command[0], err)
	}
	n := h.TailBytes
	if n <= 0 {
		n = DefaultHookTail
	}
	tail := &tailBuffer{max: n}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(tailWriter{log: logf, tail: tail}, r)
	}()
	pgid := cmd.Process.Pid
	// The hook's exit is waited for without reaping it: its zombie holds
	// its pid, the group's number, until the group is killed below, so that
	// the kill reaches no process that took the number over (proc's doc).
	exited := make(chan error, 1)
	go func() {
		var info unix.Siginfo
		exited <- waitidRetry(unix.P_PID, pgid, &info, unix.WEXITED|unix.WNOWAIT)
	}()
	var why string
	select {
	case err = <-exited:
	case <-hookCtx.Done():
		why = fmt.Sprintf("timed out after %s", h.Timeout)
		if ctx.Err() != nil {
			why = ctx.Err().Error()
		}
	}
	reaped := err != nil
	if reaped {
		// Its exit could not be waited for without reaping: not pinned.
		err = cmd.Wait()
	}
	// Whatever the hook left behind in its group goes with it.
	_ = killGroup(pgid, syscall.SIGKILL)
	if why != "" && !reaped {
		// The leader itself too, should it have left its group (through
		// its pidfd: not a number).
		_ = cmd.Process.Kill()
		<-exited
	}
	if !reaped {
		err = cmd.Wait() // how it ended; reaped now
	}
	if why != "" {
		waitGroupGone(pgid, time.Now().Add(hookKillWait))
	}
	end() // and whatever left its group, in its cgroup
	// The group is gone, and with it the writers of the pipe, unless a
	// process left the group holding it: read what is left, not forever.
	_ = r.SetReadDeadline(time.Now().Add(hookKillWait))
	<-copied
	out := tail.String()
	if why != "" {
		return out, fmt.Errorf("%s: killed", why)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out, errors.New(ee.ProcessState.String())
	}
	return out, err
}

// tailWriter copies a hook's output to the service log (a failed write
// there does not stop the hook) and keeps its end.
type tailWriter struct {
	log  io.Writer
	tail *tailBuffer
}

func (t tailWriter) Write(p []byte) (int, error) {
	_, _ = t.log.Write(p)
	return t.tail.Write(p)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
