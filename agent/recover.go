package agent

import (
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/supervise"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// recover rebuilds every persisted service after a restart. Services
// outlive the agent: for each it looks for the process an earlier agent
// left running (supervise.FindRunning: proven by its PID file, pinned by a
// pidfd) and lets lifecycle.Restore decide whether to adopt it (ActAdopt)
// or stop it (ActStop), and what to resume; the run loop then carries that
// out like any other actions.
func (a *agent) recover(saved []*lifecycle.Snapshot) {
	now := time.Now()
	for _, snap := range saved {
		log := a.log.With().Str("service", snap.Service).Logger()
		path := a.pidFile(snap.Service)
		found, err := supervise.FindRunning(path, log)
		if err != nil {
			// Unreadable: whatever runs cannot be proven, so it is neither
			// adopted nor signalled (as with an unverifiable record).
			log.Error().Err(err).Str("path", path).Msg("looking for the running process")
		}
		var running *lifecycle.Running
		ev := log.Info().Str("phase", snap.Phase.String()).Str("version", lifecycle.Version(snap.Current)).
			Int64("generation", snap.Generation)
		if found != nil {
			running = &lifecycle.Running{Version: found.Record.Release, Epoch: found.Record.Epoch}
			ev = ev.Int("pid", found.Record.PGID).Str("running", found.Record.Release)
		}
		m, acts := lifecycle.Restore(*snap, running, now)
		s := &service{name: snap.Service, m: m, found: found, foundGrace: foundGrace(snap, running)}
		a.services[snap.Service] = s
		ev.Str("reason", restoreSays(snap, running, acts)).Msg("recovering service")
		a.metrics.resumed(s.name, snap.Phase) // an install in progress is counted when it ends
		a.syncAnalysis(s)
		a.exec(s, acts)
		if s.found != nil && !s.blocked {
			// Restore adopts or stops what it was given; never neither.
			a.log.Error().Str("service", s.name).Int("pid", s.found.Record.PGID).
				Msg("a process found running was neither adopted nor stopped: stopping it")
			f, grace := s.found, s.foundGrace
			s.found = nil
			a.background(func() {
				if err := f.Stop(grace, a.log); err != nil {
					a.log.Error().Str("service", snap.Service).Err(err).Msg("stopping service")
				}
			})
		}
	}
}

// foundGrace is the stop grace for a process found running: that of the
// assignment of its release, else of the current release's.
func foundGrace(snap *lifecycle.Snapshot, running *lifecycle.Running) time.Duration {
	if running != nil {
		for _, asg := range []*v1.Assignment{snap.Current, snap.Target, snap.LastGood, snap.Previous} {
			if asg != nil && lifecycle.Version(asg) == running.Version {
				return stopGrace(asg)
			}
		}
	}
	return stopGrace(snap.Current)
}

// restoreSays names what Restore decided, for the log.
func restoreSays(snap *lifecycle.Snapshot, running *lifecycle.Running, acts []lifecycle.Action) string {
	for _, act := range acts {
		switch act.Kind {
		case lifecycle.ActAdopt:
			return "adopting the running " + act.Version + ", resuming " + snap.Phase.String()
		case lifecycle.ActStop:
			return "stopping the running " + running.Version + " (not the release to run)"
		}
	}
	if running == nil {
		return "nothing runs: " + snap.Phase.String() + " resumed or the last good release restarted"
	}
	return ""
}
