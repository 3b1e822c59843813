package testfleet

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Pid returns the process id of the current run (0 before the first start).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the process only (not its group), e.g. SIGSTOP and
// SIGCONT to pause and resume it. Signalling a process that has exited is
// an error.
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("signal %s: %s was never started", sig, p.Name)
	}
	if !p.Running() {
		return fmt.Errorf("signal %s: %s: %w", sig, p.Name, os.ErrProcessDone)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal %s: %s: %w", sig, p.Name, err)
		}
		return fmt.Errorf("signal %s to %s (pid %d): %w", sig, p.Name, cmd.Process.Pid, err)
	}
	return nil
}

// LogSize is the current size of the process's log file in bytes (0 when
// it cannot be read): an offset to read what is logged after a moment.
func (p *Proc) LogSize() int64 {
	fi, err := os.Stat(p.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogSince returns what the process logged after offset (a LogSize taken
// earlier), at most limit bytes from the start of that part.
func (p *Proc) LogSince(offset, limit int64) string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= offset {
		return ""
	}
	n := min(fi.Size()-offset, limit)
	b := make([]byte, n)
	k, _ := f.ReadAt(b, offset)
	return string(b[:k])
}
