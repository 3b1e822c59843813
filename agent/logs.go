package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/agent/supervise"
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
