package supervise

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ErrInvalidPIDFile is returned by KillStale for a PID file that does not
// hold a usable process group id.
var ErrInvalidPIDFile = errors.New("invalid pid file")

// killWait bounds how long KillStale waits for a group to vanish after
// SIGKILL.
const killWait = 5 * time.Second

// KillStale reads a PID file left by an earlier agent (after kill -9) and
// kills that process group (SIGTERM, then SIGKILL after grace) if it is still
// alive; removes the file. No file: nil.
//
// It kills only a group it can prove is the one recorded: the file's boot id
// must be the running kernel's and the group leader must still exist with
// the recorded start time. Otherwise (a reboot, a reused pid, a leader that
// is gone, an old bare-pgid file) it only removes the file and logs why.
func KillStale(pidFile string, grace time.Duration, log zerolog.Logger) error {
	data, err := readLimited(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill stale: read %s: %w", pidFile, err)
	}
	log = log.With().Str("path", pidFile).Logger()
	rec, err := parsePIDFile(data)
	if rec.PGID != 0 && rec.PGID == syscall.Getpgrp() {
		err = fmt.Errorf("pgid %d is the agent's own group: %w", rec.PGID, ErrInvalidPIDFile)
	}
	if errors.Is(err, errOldPIDFile) {
		log.Warn().Int("pid", rec.PGID).Str("reason", "unverifiable").
			Msg("old pid file without boot id and start time: not killing, removing it")
		removeFile(pidFile, log)
		return nil
	}
	if err != nil {
		removeFile(pidFile, log)
		return fmt.Errorf("kill stale: %s holds %q: %w", pidFile, truncate(strings.TrimSpace(string(data)), 32), err)
	}
	if why := unverified(rec); why != "" {
		lvl := zerolog.InfoLevel
		if groupAlive(rec.PGID) {
			lvl = zerolog.WarnLevel // someone else's group, or ours beyond proof: left alone
		}
		log.WithLevel(lvl).Int("pid", rec.PGID).Str("reason", why).Msg("stale pid file does not match a live group: not killing, removing it")
		removeFile(pidFile, log)
		return nil
	}
	pgid := rec.PGID
	if !groupAlive(pgid) {
		log.Debug().Int("pid", pgid).Msg("stale process group already gone")
		removeFile(pidFile, log)
		return nil
	}
	log.Warn().Int("pid", pgid).Str("reason", "stale").Msg("SIGTERM stale process group")
	if err := killGroup(pgid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("kill stale %s: %w", pidFile, err)
	}
	if !waitGroupGone(pgid, time.Now().Add(grace)) {
		log.Warn().Int("pid", pgid).Str("reason", "grace expired").Msg("SIGKILL stale process group")
		if err := killGroup(pgid, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill stale %s: %w", pidFile, err)
		}
		if !waitGroupGone(pgid, time.Now().Add(killWait)) {
			return fmt.Errorf("kill stale %s: process group %d still alive after SIGKILL", pidFile, pgid)
		}
	}
	removeFile(pidFile, log)
	return nil
}

// unverified says why rec cannot be proven to name a live group started by
// an earlier agent on this boot ("" when it can).
func unverified(rec PIDRecord) string {
	boot, err := currentBootID()
	if err != nil {
		return err.Error()
	}
	if boot != rec.BootID {
		return "written before a reboot (boot id " + truncate(rec.BootID, 40) + ")"
	}
	st, err := readProcStat(rec.PGID)
	if err != nil {
		return fmt.Sprintf("group leader %d is gone", rec.PGID)
	}
	if st.StartTime != rec.StartTime {
		return fmt.Sprintf("pid %d was reused (start time %d, recorded %d)", rec.PGID, st.StartTime, rec.StartTime)
	}
	return ""
}

func removeFile(path string, log zerolog.Logger) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn().Err(err).Msg("remove pid file")
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// waitGroupGone polls until no live member of group pgid is left or the
// deadline passes; it reports whether the group is gone.
func waitGroupGone(pgid int, deadline time.Time) bool {
	for {
		if !groupAlive(pgid) {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(left, 20*time.Millisecond))
	}
}

// groupAlive reports whether process group pgid has a member that is not a
// zombie. Zombies count as dead: they hold no resources, and an init that
// does not reap would otherwise keep them "alive" for ever.
func groupAlive(pgid int) bool {
	if pgid <= 1 {
		return false
	}
	err := syscall.Kill(-pgid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return false
	}
	alive, ok := procGroupAlive(pgid)
	if !ok {
		return true // no /proc: trust kill(2)
	}
	return alive
}

// procGroupAlive scans /proc for a non-zombie process in group pgid. ok is
// false when /proc cannot be read.
func procGroupAlive(pgid int) (alive, ok bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false, false
	}
	for _, e := range entries {
		name := e.Name()
		if name == "" || name[0] < '0' || name[0] > '9' {
			continue
		}
		state, pgrp, ok := readStat(name)
		if !ok || pgrp != pgid {
			continue
		}
		if state != 'Z' && state != 'X' {
			return true, true
		}
	}
	return false, true
}

// readStat returns the state and process group of /proc/<pid>/stat.
func readStat(pid string) (state byte, pgrp int, ok bool) {
	n, err := strconv.Atoi(pid)
	if err != nil {
		return 0, 0, false
	}
	st, err := readProcStat(n)
	if err != nil {
		return 0, 0, false
	}
	return st.State, st.PGrp, true
}
