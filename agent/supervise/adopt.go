package supervise

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Found is a process group that an earlier agent started and left running,
// proven to be the one its PID file names and pinned by a pidfd. Hand it to
// exactly one of Supervisor.Adopt, Stop or Release.
type Found struct {
	Record PIDRecord
	path   string
	p      *proc // nil once adopted, stopped or released
}

// FindRunning reads the PID file an earlier agent left (after its exit,
// crash or kill -9) and returns the process group it names if that still
// runs: the file's boot id must be the running kernel's and the group
// leader must still have the recorded start time, checked again after its
// pidfd is opened so that the pid cannot have been reused in between.
//
// Without a file it returns nil, nil. A file that proves nothing running
// (written before a reboot, a leader that is gone or a zombie, a reused
// pid, an old bare-pgid file, garbage) is removed, the reason logged, and
// nil, nil returned: nothing is adopted and nothing is signalled. An error
// means the file could not be read.
//
// With usable cgs, the found process's cgroup (an instance cgroup below
// the agent's, read from /proc/<pid>/cgroup) is found again: stopping the
// process, or its exit under a supervisor that adopted it, ends every
// process in it and removes it, as for one the supervisor started.
func FindRunning(pidFile string, cgs *Cgroups, log zerolog.Logger) (*Found, error) {
	data, err := readLimited(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find running: read %s: %w", pidFile, err)
	}
	log = log.With().Str("path", pidFile).Logger()
	rec, err := parsePIDFile(data)
	if err == nil && rec.PGID == syscall.Getpgrp() {
		err = fmt.Errorf("pgid %d is the agent's own group: %w", rec.PGID, ErrInvalidPIDFile)
	}
	if err != nil {
		if errors.Is(err, errOldPIDFile) {
			err = errors.New("old pid file without boot id and start time: unverifiable")
		}
		log.Warn().Err(err).Int("pid", rec.PGID).Str("reason", truncate(strings.TrimSpace(string(data)), 64)).
			Msg("pid file names nothing that can be adopted: removing it")
		removeFile(pidFile, log)
		return nil, nil
	}
	if why := unverified(rec); why != "" {
		lvl := zerolog.InfoLevel
		if groupAlive(rec.PGID) {
			lvl = zerolog.WarnLevel // someone else's group, or ours beyond proof: left alone
		}
		log.WithLevel(lvl).Int("pid", rec.PGID).Str("reason", why).Msg("pid file does not name a live process: removing it")
		removeFile(pidFile, log)
		return nil, nil
	}
	pidfd, err := openPidfd(rec.PGID)
	if errors.Is(err, unix.ESRCH) {
		log.Info().Int("pid", rec.PGID).Str("reason", "gone").Msg("process exited just now: removing its pid file")
		removeFile(pidFile, log)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find running %s: %w", pidFile, err)
	}
	// The pidfd pins the process now: check once more that it is the
	// recorded one (the pid may have been reused since unverified looked).
	why := unverified(rec)
	if why == "" {
		if st, err := readProcStat(rec.PGID); err == nil && (st.State == 'Z' || st.State == 'X') {
			why = fmt.Sprintf("group leader %d has exited", rec.PGID)
		}
	}
	if why != "" {
		if pidfd != nil {
			_ = pidfd.Close() // its parent reaps it (init, in production)
		}
		log.Info().Int("pid", rec.PGID).Str("reason", why).Msg("pid file does not name a live process: removing it")
		removeFile(pidFile, log)
		return nil, nil
	}
	p := watch(rec.PGID, pidfd, time.Now(), false)
	p.cg = cgs.find(rec.PGID)
	return &Found{Record: rec, path: pidFile, p: p}, nil
}

// PIDFile is the PID file it was found by.
func (f *Found) PIDFile() string { return f.path }

// Running reports whether the found process has not exited yet.
func (f *Found) Running() bool { return f.p != nil && !f.p.exited() }

// Stop stops the found process group as a Supervisor's Stop would
// (SIGTERM, SIGKILL after grace), waits for the leader to exit and removes
// the PID file if it still names the group.
func (f *Found) Stop(grace time.Duration, log zerolog.Logger) error {
	if f.p == nil {
		return fmt.Errorf("stop %s: already adopted, stopped or released", f.path)
	}
	p := f.p
	f.p = nil
	log = log.With().Str("path", f.path).Logger()
	log.Info().Int("pid", p.pgid).Str("version", f.Record.Release).Msg("stopping a process left by an earlier agent")
	terminate(p, grace, log)
	if _, err := removePIDFileIf(f.path, f.Record); err != nil {
		return fmt.Errorf("stop %s: remove pid file: %w", f.path, err)
	}
	return nil
}

// Release stops watching the found process and leaves it running, with
// its PID file.
func (f *Found) Release() {
	if f.p != nil {
		f.p.stopWatching()
		f.p = nil
	}
}
