package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// recover rebuilds every persisted service after a restart. Services
// outlive the agent: for each it looks for the processes an earlier agent
// left running (supervise.FindRunning: proven by their PID files, pinned by
// pidfds; the main one and, after a stop during a handover, the new one
// beside it), gets the service's listening sockets back from them before
// anything else (sockets.Recover, by the inodes the state recorded; bound
// anew when no process holds them), and lets lifecycle.Restore decide which
// to adopt (ActAdopt) or stop (ActStop), and what to resume; the run loop
// then carries that out like any other actions.
func (a *agent) recover(saved []*state.Saved) {
	now := time.Now()
	if len(saved) > a.opts.maxServices {
		// States an older agent (or a hand) left: all are recovered, but a
		// Hello reports at most spec.MaxServicesPerHost (conn.go), and no
		// service is taken in until the host runs fewer.
		a.log.Error().Int("services", len(saved)).Msgf("the host runs more than %d services, the most a host takes: remove some (fleetwave service delete, or selectors)", a.opts.maxServices)
	}
	keepNotify := map[string]bool{}
	for _, sv := range saved {
		snap := sv.Snapshot
		log := a.log.With().Str("service", snap.Service).Logger()
		s := &service{name: snap.Service, saved: snap}
		var running []lifecycle.Running
		var pids []int
		for _, path := range []string{a.pidFile(snap.Service), a.nextPIDFile(snap.Service)} {
			found, err := supervise.FindRunning(path, a.cgroups, log)
			if err != nil {
				// Unreadable: whatever runs cannot be proven, so it is neither
				// adopted nor signalled (as with an unverifiable record).
				log.Error().Err(err).Str("path", path).Msg("looking for the running process")
			}
			if found == nil {
				continue
			}
			r := lifecycle.Running{Version: found.Record.Release, Epoch: found.Record.Epoch}
			running = append(running, r)
			pids = append(pids, found.Record.PGID)
			s.found = append(s.found, &foundProc{f: found, asg: releaseOf(snap, r.Version), grace: foundGrace(snap, &r)})
		}
		for _, n := range sv.Runtime.Notify {
			if i := foundEpoch(s.found, n.Epoch); i >= 0 {
				s.notifyAt(n.Epoch, n.Path)
				keepNotify[n.Path] = true
			}
		}
		if ids := sv.Runtime.Sockets; len(ids) > 0 {
			socks, err := sockets.Recover(ids, pids)
			if err != nil {
				log.Error().Err(err).Msg("recovering the service's sockets: they are bound anew at the next start, which fails while a process holds their address")
			} else {
				s.sockSet().set(socks)
				for _, sock := range socks {
					if sock.From == 0 {
						log.Info().Str("socket", sock.Name).Str("listen", sock.Listen).Msg("socket bound anew: no running process holds it")
						continue
					}
					log.Info().Str("socket", sock.Name).Str("listen", sock.Listen).Uint64("inode", sock.Inode).Int("pid", sock.From).
						Msg("socket recovered from a running process")
				}
			}
		}
		ev := log.Info().Str("phase", snap.Phase.String()).Str("version", lifecycle.Version(snap.Current)).
			Int64("generation", snap.Generation)
		var runs []string
		for _, f := range s.found {
			runs = append(runs, fmt.Sprintf("%s (pid %d, epoch %d)", f.f.Record.Release, f.f.Record.PGID, f.f.Record.Epoch))
		}
		if len(runs) > 0 {
			ev = ev.Strs("running", runs)
		}
		m, acts := lifecycle.Restore(*snap, running, now)
		s.m = m
		a.services[snap.Service] = s
		ev.Str("reason", restoreSays(snap, running, acts)).Msg("recovering service")
		a.metrics.resumed(s.name, snap.Phase) // an install in progress is counted when it ends
		a.syncAnalysis(s)
		a.exec(s, acts)
	}
	a.removeStaleNotify(keepNotify)
}

// foundEpoch is the index of the found process recorded with epoch (-1:
// none).
func foundEpoch(found []*foundProc, epoch uint64) int {
	for i, f := range found {
		if f.f.Record.Epoch == epoch {
			return i
		}
	}
	return -1
}

// removeStaleNotify removes the notify sockets an earlier agent left of
// processes that no longer run (an agent killed with -9 leaves them), in
// the data dir and in its fallback directories under the temporary one
// (notifyPath), those only when the agent's user owns them. Names
// starting with "." are sockets being bound (sockets.NotifyTemp): those a
// kill left in the data dir were removed at the start (crashTemps).
func (a *agent) removeStaleNotify(keep map[string]bool) {
	for _, dir := range []string{a.notifyDir(), a.notifyUsersDir(), a.notifyFallbackDir(false), a.notifyFallbackDir(true)} {
		if _, err := ownNotifyDir(dir); err != nil {
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			if keep[path] || e.Type()&os.ModeSocket == 0 || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			_ = os.Remove(path)
		}
	}
}

// releaseOf is the snapshot's assignment of a version (nil: none).
func releaseOf(snap *lifecycle.Snapshot, version string) *v1.Assignment {
	for _, asg := range []*v1.Assignment{snap.Current, snap.Target, snap.LastGood, snap.Previous} {
		if asg != nil && version != "" && lifecycle.Version(asg) == version {
			return asg
		}
	}
	return nil
}

// foundGrace is the stop grace for a process found running: that of the
// assignment of its release, else of the current release's.
func foundGrace(snap *lifecycle.Snapshot, running *lifecycle.Running) time.Duration {
	if running != nil {
		if asg := releaseOf(snap, running.Version); asg != nil {
			return stopGrace(asg)
		}
	}
	return stopGrace(snap.Current)
}

// restoreSays names what Restore decided, for the log.
func restoreSays(snap *lifecycle.Snapshot, running []lifecycle.Running, acts []lifecycle.Action) string {
	var says []string
	for _, act := range acts {
		switch act.Kind {
		case lifecycle.ActAdopt:
			says = append(says, "adopting the running "+act.Version+", resuming "+snap.Phase.String())
		case lifecycle.ActStop:
			says = append(says, "stopping the running "+act.Version)
		}
	}
	if len(says) > 0 {
		return strings.Join(says, "; ")
	}
	if len(running) == 0 {
		return "nothing runs: " + snap.Phase.String() + " resumed or the last good release restarted"
	}
	return ""
}
