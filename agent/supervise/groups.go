package supervise

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

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
	return waitGone(func() bool { return groupAlive(pgid) }, deadline)
}

// waitGone polls until alive is false or the deadline passes; it reports
// whether alive became false.
func waitGone(alive func() bool, deadline time.Time) bool {
	for {
		if !alive() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(left, 20*time.Millisecond))
	}
}

// alive reports whether a member of p's process group, or a process of its
// cgroup, is alive (not a zombie).
func (p *proc) alive() bool {
	return groupAlive(p.pgid) || (p.cg != nil && p.cg.alive())
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
