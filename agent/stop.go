package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/rs/zerolog"
)

// StopServices stops every service an agent left running in dataDir
// (fleetwave-agent stop-services): each process group its PID file proves
// (boot id, start time) gets SIGTERM, and SIGKILL once its release's
// stop_grace has passed; all at once; the PID files are removed. It is the
// explicit act that stopping the agent is not (services outlive it), for
// decommissioning a host or maintenance. It refuses to run while an agent
// holds the data dir (that agent would restart them). Nothing is changed
// in the state: an agent started later puts the last good release back
// (recovery) and runs it again.
//
// It returns nil when nothing runs; the error names every service that
// could not be stopped. When ctx ends (a second SIGTERM) it says so, but
// every stop still runs to its end (SIGKILL after the grace): no service is
// left half stopped.
//
// cgroupParent is the agent's Config.CgroupParent ("" the default): a
// process found in its cgroup below it is stopped with every process of
// that cgroup, daemons that left its process group included.
func StopServices(ctx context.Context, dataDir, cgroupParent string, log zerolog.Logger) error {
	if strings.TrimSpace(dataDir) == "" {
		return errors.New("data_dir: required")
	}
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return fmt.Errorf("data_dir %q: %w", dataDir, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("data_dir %s: not a directory (%v)", dir, err)
	}
	unlock, err := lockDataDir(dir)
	if err != nil {
		return fmt.Errorf("stop services: %w (stop the agent first)", err)
	}
	defer unlock()
	files, err := filepath.Glob(filepath.Join(dir, "run", "*.pid"))
	if err != nil {
		return fmt.Errorf("stop services: %w", err)
	}
	sort.Strings(files)
	var cgs *supervise.Cgroups
	if len(files) > 0 {
		cgs = openCgroups(cgroupParent, log)
	}
	var store *state.Store
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		if store, err = state.Open(filepath.Join(dir, "state")); err != nil {
			log.Warn().Err(err).Msg("state unreadable: stopping with the default stop grace")
		}
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for _, path := range files {
		// <service>.pid, and <service>.next.pid of a process started beside
		// it (a handover the agent stopped in).
		name := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(path), ".pid"), ".next")
		slog := log.With().Str("service", name).Logger()
		wg.Go(func() {
			f, err := supervise.FindRunning(path, cgs, slog)
			if err != nil {
				fail(fmt.Errorf("service %s: %w", name, err))
				return
			}
			if f == nil {
				return // nothing provably runs (logged); the file is gone
			}
			grace := serviceGrace(store, name, f.Record.Release, slog)
			stopped := make(chan error, 1)
			go func() { stopped <- f.Stop(grace, slog) }()
			select {
			case err = <-stopped:
			case <-ctx.Done():
				slog.Warn().Err(ctx.Err()).Msg("still stopping: waiting for the stop grace to end")
				err = <-stopped
			}
			if err != nil {
				fail(fmt.Errorf("service %s: %w", name, err))
				return
			}
			slog.Info().Int("pid", f.Record.PGID).Str("version", f.Record.Release).Dur("grace", grace).Msg("service stopped")
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("stop services: %w", errors.Join(errs...))
	}
	return nil
}

// serviceGrace is the stop grace of release version of a service as the
// state records it (the default without state).
func serviceGrace(store *state.Store, name, version string, log zerolog.Logger) time.Duration {
	if store == nil {
		return supervise.DefaultStopGrace
	}
	snap, err := store.Load(name)
	if err != nil || snap == nil {
		if err != nil {
			log.Warn().Err(err).Msg("state unreadable: stopping with the default stop grace")
		}
		return supervise.DefaultStopGrace
	}
	return foundGrace(snap, &lifecycle.Running{Version: version})
}
