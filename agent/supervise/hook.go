package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Hook is a command run for a service outside its supervised process, e.g.
// a pre_stop command that deregisters the process from a load balancer
// before it is stopped.
type Hook struct {
	Service string   // for errors
	Name    string   // what it is, for errors ("pre_stop")
	Dir     string   // working directory (a release dir)
	Command []string // already expanded; Command[0] starting with "./" is relative to Dir
	Env     []string // KEY=VALUE, appended to a minimal env (PATH, HOME=Dir), as for the service
	LogPath string   // stdout and stderr appended here (created 0644)
	Timeout time.Duration
}

// hookKillWait bounds the wait for a hook's process group to go after
// SIGKILL (a member stuck in uninterruptible sleep).
const hookKillWait = 5 * time.Second

// RunHook runs h in its own process group, its output appended to
// h.LogPath, and waits for it. When h.Timeout passes or ctx ends first, the
// whole group gets SIGKILL and RunHook returns an error saying so. A
// non-zero exit is an error naming the status. Nothing of the hook is left
// running when RunHook returns (its group is killed once its leader has
// exited too).
func RunHook(ctx context.Context, h Hook) error {
	what := fmt.Sprintf("%s of %s", h.Name, h.Service)
	if len(h.Command) == 0 || h.Command[0] == "" {
		return fmt.Errorf("%s: %w", what, ErrNoCommand)
	}
	logf, err := os.OpenFile(h.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: open log: %w", what, err)
	}
	defer logf.Close()
	name := h.Command[0]
	if strings.HasPrefix(name, "./") {
		name = filepath.Join(h.Dir, name)
	}
	cmd := exec.Command(name, h.Command[1:]...)
	cmd.Dir = h.Dir
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	cmd.Env = append([]string{"PATH=" + path, "HOME=" + h.Dir}, h.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: exec %q: %w", what, h.Command[0], err)
	}
	pgid := cmd.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var timeout <-chan time.Time
	if h.Timeout > 0 {
		t := time.NewTimer(h.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var why string
	select {
	case err = <-waited:
	case <-timeout:
		why = fmt.Sprintf("timed out after %s", h.Timeout)
	case <-ctx.Done():
		why = ctx.Err().Error()
	}
	// Whatever the hook left behind in its group goes with it.
	_ = killGroup(pgid, syscall.SIGKILL)
	if why != "" {
		<-waited
		waitGroupGone(pgid, time.Now().Add(hookKillWait))
		return fmt.Errorf("%s: %s: killed", what, why)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%s: %s", what, ee.ProcessState)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
