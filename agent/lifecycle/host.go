package lifecycle

import (
	"slices"
	"strings"
	"time"
)

// Decisions about the host rather than one service's machine: how long
// the logs of services the host no longer runs are kept, and when the
// agent tells systemd's watchdog it is alive. Pure: the agent gathers the
// inputs (files, clocks) and carries the result out (agent/logs.go,
// agent/watchdog.go); testdata/host/*.txt are their scenarios.

// ServiceLogs is one service's log files in the data dir's logs/ as the
// agent found them.
type ServiceLogs struct {
	Service string
	Files   []string
	// LastWrite is the newest modification time of Files.
	LastWrite time.Time
	// Runs: the host still runs the service as far as its logs go (the
	// agent tracks it in another phase than a settled REMOVED, or its PID
	// file exists): its logs are kept however old.
	Runs bool
}

// ExpiredLogs is, of logs, those of services the host no longer runs
// whose files were all last written retention or more before now, by
// service name; none when retention is negative (kept for ever).
func ExpiredLogs(logs []ServiceLogs, now time.Time, retention time.Duration) []ServiceLogs {
	if retention < 0 {
		return nil
	}
	var out []ServiceLogs
	for _, l := range logs {
		if !l.Runs && len(l.Files) > 0 && now.Sub(l.LastWrite) >= retention {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b ServiceLogs) int { return strings.Compare(a.Service, b.Service) })
	return out
}

// WatchdogDue says whether the agent tells systemd's watchdog it is alive
// at now: it may speak for the unit (armed: not a new agent of an upgrade
// before its confirmation), and its run loop last turned at most stale
// before now, or an upgrade's handover holds (the loop stopped on
// purpose while the old agent waits for the new one).
func WatchdogDue(armed, hold bool, lastTurn, now time.Time, stale time.Duration) bool {
	return armed && (hold || now.Sub(lastTurn) <= stale)
}
