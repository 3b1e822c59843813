package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/hookspec"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// StopServices stops every service an agent left running in cfg.DataDir
// (fleetwave-agent stop-services): each process group its PID file proves
// (boot id, start time) gets SIGTERM, and SIGKILL once its release's
// stop_grace has passed; all at once; the PID files are removed. It is the
// explicit act that stopping the agent is not (services outlive it), for
// decommissioning a host or maintenance. It refuses to run while an agent
// holds the data dir (that agent would restart them). Nothing is changed
// in the state: an agent started later puts the last good release back
// (recovery) and runs it again.
//
// With drain, each service is drained first as a deploy drains a process
// that served (drainFound): its release's before_stop, then its
// shutdown_delay; once, also when two of its processes run (a handover
// the agent stopped in: each release among them has its before_stop run,
// one after the other, then the longest delay passes); without, its
// processes get SIGTERM at once (--no-drain, for emergencies).
//
// It reads cfg.DataDir, cfg.CgroupParent ("" the default: a process found
// in its cgroup below it is stopped with every process of that cgroup,
// daemons that left its process group included) and, to drain,
// cfg.HostID and cfg.Labels (the hooks' ${host.*} and FLEETWAVE_HOST_ID),
// checked as the agent checks them.
//
// It returns nil when nothing runs; the error names every service that
// could not be stopped. When ctx ends (a SIGTERM or SIGINT to the command) it says so and
// abandons the drains in progress (a hook's process group is killed), but
// every stop still runs to its end (SIGKILL after the grace): no service
// is left half stopped.
func StopServices(ctx context.Context, cfg Config, drain bool, log zerolog.Logger) error {
	dataDir := cfg.DataDir
	if strings.TrimSpace(dataDir) == "" {
		return errors.New("data_dir: required")
	}
	if drain {
		if err := spec.CheckHostID("host_id", cfg.HostID); err != nil {
			return err
		}
		if err := spec.CheckLabels("labels", cfg.Labels); err != nil {
			return err
		}
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
		cgs = openCgroups(cfg.CgroupParent, log)
	}
	var store *state.Store
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		if err := trustedState(dir, true); err != nil {
			log.Warn().Err(err).Msg("state not trusted: stopping with the default stop grace, without a drain")
		} else if err := trustedState(filepath.Join(dir, "state"), false); err != nil {
			log.Warn().Err(err).Msg("state not trusted: stopping with the default stop grace, without a drain")
		} else if store, err = state.Open(filepath.Join(dir, "state")); err != nil {
			log.Warn().Err(err).Msg("state unreadable: stopping with the default stop grace, without a drain")
		}
	}
	hh := hookHost{hostID: cfg.HostID, labels: cfg.Labels, dataDir: dir, cgroups: cgs}
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
	// A service's PID files: <service>.pid, and <service>.next.pid of a
	// process started beside it (a handover the agent stopped in), in
	// that order. A service is drained once, whatever number of processes
	// it has (drainFound), then they are all stopped.
	var names []string
	pids := map[string][]string{}
	for _, path := range files {
		base := strings.TrimSuffix(filepath.Base(path), ".pid")
		name := strings.TrimSuffix(base, ".next")
		if _, ok := pids[name]; !ok {
			names = append(names, name)
		}
		if name == base {
			pids[name] = append([]string{path}, pids[name]...)
		} else {
			pids[name] = append(pids[name], path)
		}
	}
	for _, name := range names {
		slog := log.With().Str("service", name).Logger()
		wg.Go(func() {
			var found []*supervise.Found
			for _, path := range pids[name] {
				f, err := supervise.FindRunning(path, cgs, slog)
				if err != nil {
					fail(fmt.Errorf("service %s: %w", name, err))
					continue
				}
				if f == nil {
					continue // nothing provably runs (logged); the file is gone
				}
				if err := pidFileAuthority(path, f.Record.PGID); err != nil {
					f.Release()
					slog.Error().Err(err).Int("pid", f.Record.PGID).Msg("pid file not trusted: its process group is left running")
					fail(fmt.Errorf("service %s: %w", name, err))
					continue
				}
				found = append(found, f)
			}
			if len(found) == 0 {
				return
			}
			snap := loadSnapshot(store, name, slog)
			if drain {
				var versions []string
				for _, f := range found {
					if !slices.Contains(versions, f.Record.Release) {
						versions = append(versions, f.Record.Release)
					}
				}
				drainFound(ctx, hh, snap, name, versions, slog)
			}
			var stops sync.WaitGroup
			for _, f := range found {
				stops.Go(func() {
					if err := stopFound(ctx, f, snap, slog); err != nil {
						fail(fmt.Errorf("service %s: %w", name, err))
					}
				})
			}
			stops.Wait()
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("stop services: %w", errors.Join(errs...))
	}
	return nil
}

// loadSnapshot is the state's snapshot of a service (nil: no state, none,
// unreadable or not trusted (trustedState), said in the log: the stop then
// has the default stop grace and no drain).
func loadSnapshot(store *state.Store, name string, log zerolog.Logger) *lifecycle.Snapshot {
	if store == nil {
		return nil
	}
	if err := spec.CheckName("service", name); err == nil {
		if err := trustedState(store.Path(name), false); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn().Err(err).Msg("state not trusted: stopping with the default stop grace, without a drain")
			return nil
		}
	}
	snap, err := store.Load(name)
	if err != nil {
		log.Warn().Err(err).Msg("state unreadable: stopping with the default stop grace, without a drain")
		return nil
	}
	return snap
}

// trustedState checks that path (the data dir, followed if a link, when
// follow; else the state dir or a state file, never a link) is as the
// agent makes it: owned by this process's user and writable by no one
// else. stop-services runs as root, and the state chooses what its drains
// run and as whom: a state an agent running as another user wrote (or
// anyone else could have), would let that user run commands as root.
func trustedState(path string, follow bool) error {
	return ownedSafely(path, path, follow, func(uid uint32) error {
		if int(uid) != os.Geteuid() {
			return fmt.Errorf("owned by uid %d, not this process's %d", uid, os.Geteuid())
		}
		return nil
	})
}

// ownedSafely checks that path (what names it in errors) is no link
// (followed when follow), writable by no one but its owner, and that
// owner passes ownerOK.
func ownedSafely(path, what string, follow bool, ownerOK func(uid uint32) error) error {
	stat := os.Lstat
	if follow {
		stat = os.Stat
	}
	fi, err := stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s: a link", what)
	case !ok:
		return fmt.Errorf("%s: no owner known", what)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s: mode %v: writable by others than its owner", what, fi.Mode().Perm())
	}
	if err := ownerOK(st.Uid); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// pidFileAuthority checks that whoever could have written a PID file
// could also have signalled the process group it names: stop-services runs
// as root, and a PID file in the run dir of an agent running as another
// user (or one anyone may write) naming, with its real start time, a
// process of root's (sshd) would otherwise have root stop it. The file and
// its directory must not be writable by others than their owners (nor the
// file a link), and each owner must be root or the process's real or saved
// user (who may signal it, kill(2)).
func pidFileAuthority(path string, pgid int) error {
	uids, err := procUIDs(pgid)
	if err != nil {
		return fmt.Errorf("pid file %s: process %d: %w", path, pgid, err)
	}
	mayKill := func(uid uint32) error {
		if uid != 0 && !slices.Contains(uids, uid) {
			return fmt.Errorf("owned by uid %d, which may not signal process group %d (uids %v)", uid, pgid, uids)
		}
		return nil
	}
	if err := ownedSafely(path, "pid file "+path, false, mayKill); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	return ownedSafely(dir, "its directory "+dir, true, mayKill)
}

// procUIDs returns a process's real and saved user ids (/proc/PID/status).
func procUIDs(pid int) ([]uint32, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Uid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest) // real, effective, saved, filesystem
		if len(f) != 4 {
			break
		}
		var out []uint32
		for _, i := range []int{0, 2} {
			u, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("status: Uid %q: %w", rest, err)
			}
			out = append(out, uint32(u))
		}
		return out, nil
	}
	return nil, errors.New("status: no Uid line")
}

// stopFound stops a process found running with its release's stop grace
// (the default without a state record of it). ctx's end does not cut the
// stop short: it is logged, and the stop runs to its end.
func stopFound(ctx context.Context, f *supervise.Found, snap *lifecycle.Snapshot, log zerolog.Logger) error {
	grace := supervise.DefaultStopGrace
	if snap != nil {
		grace = foundGrace(snap, &lifecycle.Running{Version: f.Record.Release})
	}
	stopped := make(chan error, 1)
	go func() { stopped <- f.Stop(grace, log) }()
	var err error
	select {
	case err = <-stopped:
	case <-ctx.Done():
		log.Warn().Err(ctx.Err()).Msg("still stopping: waiting for the stop grace to end")
		err = <-stopped
	}
	if err != nil {
		return err
	}
	log.Info().Int("pid", f.Record.PGID).Str("version", f.Record.Release).Dur("grace", grace).Msg("service stopped")
	return nil
}

// drainFound drains the processes of service name found running (their
// releases versions, each once: the two processes of a handover may run
// the same), before their stop, as a deploy drains a process that served:
// each release's before_stop (or run.pre_stop), one after the other (never
// two hooks of a service at once, as in the agent), runs as the agent runs
// it (hookHost.hookOf, FLEETWAVE_OPERATION=stop, FLEETWAVE_NEXT_VERSION=""),
// then the longest of their shutdown_delays passes (drainStop). A release
// is the state's record of it (releaseOf); without one it is not drained
// (said in the log). A hook that fails or times out is logged and the
// drain goes on; ctx's end (a SIGTERM or SIGINT) abandons the hook (its
// process group killed) and the delay.
func drainFound(ctx context.Context, hh hookHost, snap *lifecycle.Snapshot, name string, versions []string, log zerolog.Logger) {
	var longest *v1.Assignment
	for _, version := range versions {
		if asg := drainHook(ctx, hh, snap, name, version, log.With().Str("version", version).Logger()); asg != nil &&
			(longest == nil || asg.GetSpec().GetRun().GetShutdownDelay().AsDuration() > longest.GetSpec().GetRun().GetShutdownDelay().AsDuration()) {
			longest = asg
		}
	}
	if longest == nil {
		return
	}
	log = log.With().Str("version", lifecycle.Version(longest)).Logger()
	if d := longest.GetSpec().GetRun().GetShutdownDelay().AsDuration(); d > 0 && ctx.Err() == nil {
		log.Info().Dur("shutdown_delay", d).Msg("waiting the shutdown_delay before the stop")
	}
	if err := drainStop(ctx, longest); err != nil {
		log.Warn().Err(err).Msg("drain abandoned: stopping now")
	}
}

// drainHook runs the before_stop of release version of service name, if
// it has one, and returns its assignment (nil: no record of it in the
// state, said in the log).
func drainHook(ctx context.Context, hh hookHost, snap *lifecycle.Snapshot, name, version string, log zerolog.Logger) *v1.Assignment {
	var asg *v1.Assignment
	if snap != nil {
		asg = releaseOf(snap, version)
	}
	if asg == nil {
		log.Warn().Msg("the state has no record of the running release: stopping it without a drain")
		return nil
	}
	if ctx.Err() != nil || hookspec.Of(asg.GetSpec(), hookspec.BeforeStop) == nil {
		return asg
	}
	act := lifecycle.Action{Kind: lifecycle.ActHook, Hook: hookspec.BeforeStop, Version: version, Assignment: asg,
		Timeout: hookspec.Timeout(asg.GetSpec(), hookspec.BeforeStop), Operation: lifecycle.OpStop}
	h, err := hh.hookOf(name, act)
	if err == nil {
		log.Info().Str("hook", act.Hook).Str("operation", act.Operation).Strs("command", h.Command).Dur("timeout", h.Timeout).Msg("hook")
		_, err = supervise.RunHookTail(ctx, h)
	}
	if err != nil {
		log.Warn().Str("hook", act.Hook).Err(err).Msg("hook failed: stopping the service all the same")
	}
	return asg
}
