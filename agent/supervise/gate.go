package supervise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// gateScript holds a new process in /bin/sh until the agent has put it
// into its cgroup (if it has one) and written its PID file, and writes
// "go" to its stdin; then it execs the command ($0) in its place (same
// pid, process group and fds; stdin /dev/null as before). Its stdin is one
// end of a socket pair: first it says, "ready" or "noexec", whether the
// program ($1: the service's own, also when the command is a wrapper such
// as socket activation's LISTEN_PID shell) is executable by its own user
// (test -x, as the service's user): a run.user that cannot execute it, or
// cannot reach it, fails the start, as an exec without the gate would,
// instead of a crash loop of exit 126. A closed socket without "go" (the
// agent failed or died) ends it with status 125 and nothing of the
// service runs.
const gateScript = `[ -x "$1" ] || { echo noexec >&0; exit 126; }; shift; echo ready >&0; read -r gate && [ "$gate" = go ] || exit 125; exec "$0" "$@" </dev/null`

// gateShell is the shell that runs gateScript (a variable for tests: a
// shell that never answers).
var gateShell = "/bin/sh"

// gateReadyWithin bounds the wait for the gate's shell to say whether it
// can execute the program (a shell start: milliseconds).
const gateReadyWithin = time.Minute

// gated is a started command held in its gate.
type gated struct {
	prog         string
	agent, shell *os.File // the socket pair's ends
	cred         *syscall.Credential
}

// gate makes cmd wait, once started, in gateScript until open(true).
// prog is the program whose execution the gate checks: cmd's own, or the
// one a wrapper that cmd runs will exec (relative: to cmd.Dir). It is
// looked up first, so that a missing one still fails at Start rather than
// as the shell's exit 127. After cmd.Start, ready must be called and then
// open, once (open(false) also closes the socket when Start or ready
// failed).
func gate(cmd *exec.Cmd, prog string) (*gated, error) {
	if cmd.Err != nil {
		return nil, cmd.Err
	}
	if cmd.Stdin != nil {
		return nil, errors.New("gate: the command already has a stdin")
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(cmd.Dir, p)
	}
	run, prog := abs(cmd.Path), abs(prog)
	if _, err := exec.LookPath(prog); err != nil {
		return nil, err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("gate: socketpair: %w", err)
	}
	// The shell's end blocking (a shell's read of a non-blocking stdin
	// fails with EAGAIN); the agent's non-blocking: Go's poller gives it
	// a deadline.
	if err := syscall.SetNonblock(fds[1], false); err != nil {
		_ = syscall.Close(fds[0])
		_ = syscall.Close(fds[1])
		return nil, fmt.Errorf("gate: %w", err)
	}
	g := &gated{prog: prog, agent: os.NewFile(uintptr(fds[0]), "gate"), shell: os.NewFile(uintptr(fds[1]), "gate-shell")}
	if cmd.SysProcAttr != nil {
		g.cred = cmd.SysProcAttr.Credential
	}
	args := []string{"sh", "-c", gateScript, run, prog}
	if len(cmd.Args) > 1 {
		args = append(args, cmd.Args[1:]...)
	}
	cmd.Path, cmd.Args, cmd.Stdin = gateShell, args, g.shell
	return g, nil
}

// ready waits, after cmd.Start, for the gate's shell to say that it can
// execute the program, at most gateReadyWithin and until ctx ends (an
// error wrapping ctx's); an error wraps fs.ErrPermission when it cannot.
func (g *gated) ready(ctx context.Context) error {
	_ = g.shell.Close() // the child's now
	if err := g.agent.SetReadDeadline(time.Now().Add(gateReadyWithin)); err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	// ctx's end cuts the read short (after ctx.Err is set).
	stop := context.AfterFunc(ctx, func() { _ = g.agent.SetReadDeadline(time.Now()) })
	defer stop()
	line, err := bufio.NewReaderSize(g.agent, 16).ReadString('\n')
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("gate: waiting for %s: %w", gateShell, ctx.Err())
	}
	switch strings.TrimSpace(line) {
	case "ready":
		return nil
	case "noexec":
		who := "the agent's user"
		if g.cred != nil {
			who = fmt.Sprintf("uid %d gid %d", g.cred.Uid, g.cred.Gid)
		}
		return fmt.Errorf("%s: not executable by %s (test -x as that user: its mode, its owner, a directory on its path or a noexec mount): %w", g.prog, who, fs.ErrPermission)
	}
	if err != nil {
		return fmt.Errorf("gate: %s did not start: %w", gateShell, err)
	}
	return fmt.Errorf("gate: %s said %q", gateShell, line)
}

// open lets the command run (run) or only closes the socket (the start
// failed: the shell, if alive, exits 125).
func (g *gated) open(run bool) error {
	_ = g.shell.Close()
	defer g.agent.Close()
	if !run {
		return nil
	}
	if err := g.agent.SetWriteDeadline(time.Now().Add(gateReadyWithin)); err != nil {
		return fmt.Errorf("gate: open: %w", err)
	}
	if _, err := g.agent.Write([]byte("go\n")); err != nil {
		return fmt.Errorf("gate: open: %w", err)
	}
	return nil
}
