package supervise

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrExitUnknown is the Exit.Err of a process that is not the agent's child
// (one adopted from an earlier agent): it exited, but only its parent (init
// or a subreaper) learns how.
var ErrExitUnknown = errors.New("process exited (status unknown: not a child of this agent)")

// ExitError is how a child of this agent ended: exit status Code, or
// killed by Signal (Code is then -1).
type ExitError struct {
	Code   int
	Signal syscall.Signal
}

func (e *ExitError) Error() string {
	if e.Signal != 0 {
		return "signal: " + e.Signal.String()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// ExitCode is the exit status, -1 when a signal ended the process.
func (e *ExitError) ExitCode() int { return e.Code }

// pollGone is how often a process is looked for in /proc when the kernel
// has no pidfd_open(2) (before Linux 5.3).
const pollGone = 100 * time.Millisecond

// proc is one running instance of the supervised process: the leader of
// its process group, watched for its exit through a pidfd (pidfd_open(2)),
// which works for a child of this agent and for a process adopted from an
// earlier agent alike. How it ended is read with waitid(P_PIDFD, WNOWAIT):
// a found one is never reaped here (its parent does: init, in production),
// so that no one else's wait loses its child; one the supervisor spawned is
// reaped by its owner (reap) only once nothing more is sent to its process
// group: until then its zombie holds its pid, which is the group's number,
// so that no signal to the group reaches a process that took the number
// over (a service whose daemon left the group could otherwise cycle pids
// during a stop's grace and have the agent SIGKILL another group: found by
// an attack review).
type proc struct {
	pgid    int
	cg      *cgroup // nil: a process group alone
	started time.Time
	spawned bool // started by this supervisor: reaped here (reap)

	reapOnce sync.Once

	pidfd *os.File // nil: no pidfd_open(2); /proc is polled

	done chan struct{} // closed once the leader exited (err set) or watching stopped
	err  error         // how it ended (nil = exit 0); valid after done when !released

	releaseOnce sync.Once
	release     chan struct{} // closed by stopWatching
	released    bool          // watching stopped before the exit was seen (set before done closes)
}

// watch starts watching the process group led by pid. started is when it
// started (for the restart backoff). The caller has made sure pid is the
// process it means (its own child, or a leader verified by its PID record
// after the pidfd was opened: see openPidfd).
func watch(pid int, pidfd *os.File, started time.Time, spawned bool) *proc {
	p := &proc{pgid: pid, started: started, spawned: spawned, pidfd: pidfd, done: make(chan struct{}), release: make(chan struct{})}
	go p.wait()
	return p
}

// openPidfd opens a pidfd for pid, non-blocking so that the runtime's
// poller waits on it. It returns nil, nil when the kernel has no pidfds.
func openPidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ENOSYS) {
		return nil, nil
	}
	if errors.Is(err, unix.EINVAL) {
		// Linux 5.3 to 5.9: pidfds, but no PIDFD_NONBLOCK.
		if fd, err = unix.PidfdOpen(pid, 0); err == nil {
			err = unix.SetNonblock(fd, true)
			if err != nil {
				unix.Close(fd)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), nil
}

// wait waits for the leader's exit (or stopWatching), then reaps it if it
// is a child and closes done.
func (p *proc) wait() {
	defer close(p.done)
	if p.pidfd == nil {
		p.pollExit()
		return
	}
	defer p.pidfd.Close()
	rc, err := p.pidfd.SyscallConn()
	if err == nil {
		err = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
	}
	if err != nil {
		// Closed by stopWatching (or the poller refused the fd: then
		// fall back to polling /proc, unless released).
		select {
		case <-p.release:
			p.released = true
			return
		default:
		}
		p.pollExit()
		return
	}
	var waitErr error
	_ = rc.Control(func(fd uintptr) { p.err, waitErr = exitOf(int(fd)) })
	if waitErr != nil {
		p.err = waitErr
	}
}

// pollExit polls /proc until the leader is gone (a zombie counts as gone)
// or watching stops. Only for kernels without pidfds: a child's exit is
// read with waitid(P_PID, WNOWAIT) (no pidfd to make it exact, but the
// zombie pins the pid), and it is reaped by reap.
func (p *proc) pollExit() {
	t := time.NewTicker(pollGone)
	defer t.Stop()
	for {
		st, err := readProcStat(p.pgid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			p.err = ErrExitUnknown
			if p.spawned {
				var info unix.Siginfo
				// si_code 0: not waitable yet (a leader whose other threads
				// run on): unknown, as before.
				if werr := waitidRetry(unix.P_PID, p.pgid, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG); werr == nil && info.Code != 0 {
					p.err = siginfoExit(&info)
				}
			}
			return
		}
		select {
		case <-p.release:
			p.released = true
			return
		case <-t.C:
		}
	}
}

// stopWatching ends the watch without waiting for the exit and without
// reaping: the process runs on (it is detached, or handed to another
// watcher). It returns once the watcher has ended.
func (p *proc) stopWatching() {
	p.releaseOnce.Do(func() {
		close(p.release)
		if p.pidfd != nil {
			// Wakes the waiting watcher (its Read fails); the runtime keeps
			// the fd open until that Read has returned.
			_ = p.pidfd.Close()
		}
	})
	<-p.done
}

// exited reports whether done is closed because the leader exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return !p.released
	default:
		return false
	}
}

// pidfdExited reports whether the process of pidfd has exited (the pidfd
// polls readable then), without blocking.
func pidfdExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
}

// exitOf reads the exit status of the exited process of pidfd if it is a
// child of this process (waitid(P_PIDFD, WNOWAIT): not reaped, see proc);
// ErrExitUnknown if it is not a child.
func exitOf(fd int) (exit error, err error) {
	var info unix.Siginfo
	err = waitidRetry(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOWAIT)
	if errors.Is(err, unix.ECHILD) {
		return ErrExitUnknown, nil
	}
	if err != nil {
		return nil, fmt.Errorf("waitid: %w", err)
	}
	return siginfoExit(&info), nil
}

// waitidRetry is waitid(2), retried on EINTR.
func waitidRetry(idType, id int, info *unix.Siginfo, opts int) error {
	for {
		err := unix.Waitid(idType, id, info, opts, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// reap collects the zombie of a spawned leader that exited, once its owner
// sends nothing more to its process group (terminate, the supervisor's
// crash path). Nothing for a found process or one still running (watching
// stopped: detached) or when it was done already. The zombie pins the pid
// until then, so waitid(P_PID) reaps exactly it.
func (p *proc) reap() {
	if !p.spawned || !p.exited() {
		return
	}
	p.reapOnce.Do(func() {
		var info unix.Siginfo
		_ = waitidRetry(unix.P_PID, p.pgid, &info, unix.WEXITED|unix.WNOHANG)
	})
}

// signalGroup sends sig to p's process group. A spawned leader that exited
// is a zombie until reap: its pid, the group's number, is pinned and the
// signal reaches the group's members only. A found leader's zombie is its
// parent's to reap (init reaps at once), so once the leader has exited the
// number may belong to another process group by now: the group is
// signalled only while a live process of p's cgroup is in it (proving it
// is the service's), never without a cgroup (the rest of a cgroup is
// killed through it; found by a second review: a live member of any group
// of that number passed the check before).
func (p *proc) signalGroup(sig syscall.Signal) error {
	if !p.spawned && p.exited() && (p.cg == nil || !p.cg.holdsGroup(p.pgid)) {
		return nil
	}
	return killGroup(p.pgid, sig)
}

// CLD_* codes of a SIGCHLD siginfo (si_code).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// siginfoExit turns waitid's siginfo into the exit error (nil for exit 0).
// si_status sits after si_pid and si_uid in the union that follows the
// three ints of the preamble (padded to 16 bytes on 64-bit platforms).
func siginfoExit(info *unix.Siginfo) error {
	off := uintptr(12)
	if unsafe.Sizeof(uintptr(0)) == 8 {
		off = 16
	}
	status := int(*(*int32)(unsafe.Add(unsafe.Pointer(info), off+8)))
	switch info.Code {
	case cldExited:
		if status == 0 {
			return nil
		}
		return &ExitError{Code: status}
	case cldKilled, cldDumped:
		return &ExitError{Code: -1, Signal: syscall.Signal(status)}
	}
	return fmt.Errorf("waitid: unexpected si_code %d (status %d)", info.Code, status)
}
