package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Service log limits when Config leaves them unset.
const (
	// DefaultServiceLogMaxBytes is the size at which a service log is
	// rotated.
	DefaultServiceLogMaxBytes int64 = 64 << 20
	// DefaultServiceLogKeep is how many rotated files of a service log are
	// kept (<service>.log.1 is the newest).
	DefaultServiceLogKeep = 3
)

// rotateLogs keeps every service log in DataDir/logs within its limits
// until ctx ends: every opts.logRotate it rotates the logs that reached
// Config.ServiceLogMaxBytes (supervise.RotateLog: copy-truncate, which the
// services, writing to the file themselves with O_APPEND, never notice),
// keeping Config.ServiceLogKeep old files. While no agent runs, nothing
// rotates: a log grows until the next agent starts, which keeps only its
// last ServiceLogMaxBytes in <service>.log.1, and truncates it even when
// the disk has no room for that copy.
func (a *agent) rotateLogs(ctx context.Context) {
	limit, keep := a.cfg.ServiceLogMaxBytes, max(a.cfg.ServiceLogKeep, 0)
	if limit < 0 {
		return // rotation off
	}
	dir := filepath.Join(a.cfg.DataDir, "logs")
	tick := time.NewTicker(a.opts.logRotate)
	defer tick.Stop()
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			a.log.Warn().Err(err).Str("path", dir).Msg("listing service logs")
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".log") {
				continue
			}
			path := filepath.Join(dir, e.Name())
			svc := strings.TrimSuffix(e.Name(), ".log")
			rotated, err := supervise.RotateLog(path, limit, keep)
			switch {
			case err != nil && rotated:
				// The copy failed (a full disk): the log was truncated all
				// the same, so that it cannot fill the disk.
				a.log.Warn().Err(err).Str("service", svc).Str("path", path).Msg("service log truncated without a rotated copy: its old lines are lost")
			case err != nil:
				a.log.Warn().Err(err).Str("service", svc).Str("path", path).Msg("rotating service log")
			case rotated:
				a.log.Info().Str("service", svc).Str("path", path).Int64("max_bytes", limit).Int("keep", keep).Msg("service log rotated")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// DefaultRemovedLogRetention is how long the log of a service the host no
// longer runs is kept after its last write when Config leaves it unset.
const DefaultRemovedLogRetention = 7 * 24 * time.Hour

// pruneRemovedLogs deletes, every opts.logRotate, the logs (<service>.log,
// its rotated copies and a rotation's temp file) of every service the host
// no longer runs whose files were all last written
// Config.RemovedLogRetention or more before now (lifecycle.ExpiredLogs
// decides; runs says which services the host runs). A service the host no
// longer runs is one removed (its machine settled in REMOVED, no process,
// nothing queued) or one this agent does not track at all (removed before
// a restart, or forgotten: forgetRemoved); one whose PID file exists is
// never pruned. Without it every name a host ever ran keeps up to (keep+1) × max
// bytes of log for ever (a host running a service per branch fills its
// disk). It runs on the run loop, which alone assigns services: a service
// assigned again cannot start writing to a log this is deleting.
func (a *agent) pruneRemovedLogs(now time.Time) {
	keep := a.cfg.RemovedLogRetention
	if keep < 0 || now.Sub(a.logsPruned) < a.opts.logRotate {
		return
	}
	a.logsPruned = now
	dir := filepath.Join(a.cfg.DataDir, "logs")
	ents, err := os.ReadDir(dir)
	if err != nil {
		a.log.Warn().Err(err).Str("path", dir).Msg("listing service logs")
		return
	}
	found := map[string]*lifecycle.ServiceLogs{}
	for _, e := range ents {
		svc, ok := logOf(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // deleted meanwhile
		}
		l := found[svc]
		if l == nil {
			l = &lifecycle.ServiceLogs{Service: svc, Runs: a.runs(svc)}
			found[svc] = l
		}
		l.Files = append(l.Files, e.Name())
		if t := fi.ModTime(); t.After(l.LastWrite) {
			l.LastWrite = t
		}
	}
	logs := make([]lifecycle.ServiceLogs, 0, len(found))
	for _, l := range found {
		logs = append(logs, *l)
	}
	for _, l := range lifecycle.ExpiredLogs(logs, now, keep) {
		var errs []error
		for _, f := range l.Files {
			if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			a.log.Warn().Err(err).Str("service", l.Service).Msg("deleting the logs of a service the host no longer runs")
			continue
		}
		a.log.Info().Str("service", l.Service).Time("last_write", l.LastWrite).Dur("retention", keep).Int("files", len(l.Files)).
			Msg("logs of a service the host no longer runs deleted")
	}
}

// runs says whether the host runs service svc as far as its logs go
// (lifecycle.ServiceLogs.Runs): the run loop tracks it and it is not
// settled in REMOVED with nothing left to do (a removal in progress still
// stops its process and may run hooks that write to the log), or its PID
// file exists (a process of it may still write; a PID file that cannot be
// read counts too).
func (a *agent) runs(svc string) bool {
	if s := a.services[svc]; s != nil &&
		(s.m.Phase() != v1.Phase_PHASE_REMOVED || s.m.Busy() || s.blocked || len(s.queue) > 0 || len(s.procs) > 0) {
		return true
	}
	_, err := os.Stat(a.pidFile(svc))
	return !errors.Is(err, fs.ErrNotExist)
}

// logOf names the service whose log file (in DataDir/logs) name is:
// <service>.log, <service>.log.<n> (a rotated copy) or <service>.log.1.tmp
// (a rotation's temp file, supervise.RotateTemp), for a valid service
// name. Anything else in the directory is not the agent's.
func logOf(name string) (string, bool) {
	svc, rest, ok := strings.Cut(name, ".")
	if !ok || spec.CheckName("service", svc) != nil {
		return "", false
	}
	switch n, isCopy := strings.CutPrefix(rest, "log."); {
	case rest == "log", rest == "log.1.tmp":
		return svc, true
	case isCopy && n != "" && strings.Trim(n, "0123456789") == "" && n[0] != '0':
		return svc, true
	}
	return "", false
}
