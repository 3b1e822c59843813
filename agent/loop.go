package agent

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// loop is the one goroutine that owns the machines.
func (a *agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.opts.tick)
	defer tick.Stop()
	// wake fires at the earliest time a machine's checks will have passed
	// for min_healthy_time (lifecycle.Machine.HealthyAt): HEALTHY is
	// decided then, not up to a tick or a check interval later.
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer wake.Stop()
	var wakeAt time.Time
	a.cfg.Watchdog.Ready() // systemd: started (watchdog.go)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			a.cfg.Watchdog.Alive(now)
			a.tickAll(now)
			a.pruneRemovedLogs(now) // logs.go
		case now := <-wake.C:
			wakeAt = time.Time{}
			for _, name := range a.names() {
				a.step(a.services[name], lifecycle.Tick(now))
			}
		case ev := <-a.events:
			a.handle(ev)
		}
		if at := a.healthyAt(time.Now()); !at.Equal(wakeAt) {
			wakeAt = at
			if at.IsZero() {
				wake.Stop()
			} else {
				wake.Reset(time.Until(at))
			}
		}
		if a.up.binary != "" {
			a.maybeHandOver()
		}
		if a.up.stop {
			return // hand over to the new agent (upgrade.go)
		}
	}
}

// tickAll feeds every machine the periodic tick.
func (a *agent) tickAll(now time.Time) {
	for _, name := range a.names() {
		s := a.services[name]
		if s.blocked {
			a.runQueue(s) // retry the failed save
		}
		a.step(s, lifecycle.Tick(now))
	}
}

// healthyAt is the earliest HealthyAt of the machines after now (zero:
// none).
func (a *agent) healthyAt(now time.Time) time.Time {
	var first time.Time
	for _, s := range a.services {
		if at, ok := s.m.HealthyAt(); ok && at.After(now) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first
}

func (a *agent) names() []string {
	names := make([]string, 0, len(a.services))
	for n := range a.services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// send delivers an event to the loop unless it is shutting down.
func (a *agent) send(ev any) bool {
	select {
	case <-a.stopping:
		return false
	default:
	}
	select {
	case a.events <- ev:
		return true
	case <-a.stopping:
		return false
	}
}

func (a *agent) handle(ev any) {
	switch ev := ev.(type) {
	case doneEv:
		s := a.services[ev.svc]
		if s == nil {
			a.inst.Discard(ev.fetched)
			a.inst.DiscardVerified(ev.verified)
			return
		}
		if _, seq := s.m.InFlight(); seq != ev.seq {
			// Not the step in flight: the machine ignores it, nobody wants its files.
			a.inst.Discard(ev.fetched)
			a.inst.DiscardVerified(ev.verified)
			ev.fetched, ev.verified, ev.staged = nil, nil, false
		}
		if ev.fetched != nil {
			a.inst.Discard(s.fetched)
			s.fetched = ev.fetched
		}
		if ev.verified != nil {
			// The verified file is the fetched one, renamed in name only.
			a.inst.DiscardVerified(s.verified)
			s.verified = ev.verified
			s.fetched = nil
		}
		if ev.staged {
			s.staged = true
		}
		if ev.proc != nil {
			a.addProcess(s, ev.proc)
		}
		if ev.stopped || (ev.start && ev.proc == nil) {
			// A process is gone, or did not start: sockets no process uses
			// are closed (a release that binds its own address may come
			// next), and the record saved.
			a.afterStop(s)
		}
		in := lifecycle.Done(ev.seq, ev.err, time.Now())
		if ev.hook {
			in = lifecycle.HookDone(ev.seq, ev.err, ev.output, in.At)
		}
		if ev.linkOK {
			in = lifecycle.SwitchDone(ev.seq, ev.err, ev.link, in.At)
		}
		a.step(s, in)
	case checksEv:
		if s := a.services[ev.svc]; s != nil {
			a.step(s, lifecycle.Checks(ev.epoch, ev.at, ev.results...))
		}
	case exitEv:
		if s := a.services[ev.svc]; s != nil {
			a.log.Warn().Str("service", s.name).Err(ev.exit.Err).Int("restarts", ev.exit.Restarts).Msg("service exited")
			a.analysisExit(s, ev.epoch, ev.exit.At)
			in := lifecycle.Exited(ev.epoch, ev.exit.At)
			if oom, ok := errors.AsType[*supervise.OOMError](ev.exit.Err); ok {
				// Killed at resources.memory_max: the failure's reason says so.
				in = lifecycle.ExitedBecause(ev.epoch, oom.Error(), ev.exit.At)
			}
			a.step(s, in)
		}
	case readyEv:
		if s := a.services[ev.svc]; s != nil {
			a.log.Info().Str("service", s.name).Uint64("epoch", ev.epoch).Msg("READY=1")
			a.step(s, lifecycle.Ready(ev.epoch, time.Now()))
		}
	case runtimeEv:
		if s := a.services[ev.svc]; s != nil {
			if err := a.saveRuntime(s); err != nil {
				a.log.Error().Str("service", s.name).Err(err).Msg("saving the service's sockets")
			}
		}
	case sampleEv:
		a.onSample(ev)
	case assignEv:
		a.assign(ev.assignments)
		a.agentAssigned(ev.agent)
		a.prunePartials(ev.assignments, ev.agent) // resume.go
	case agentPreparedEv:
		a.agentPrepared(ev)
	case handedOverEv:
		a.handedOver()
	case aheadEv:
		a.aheadEnded(ev)
	}
}

// assign feeds the full set of assignments from the coordinator.
func (a *agent) assign(list []*v1.Assignment) {
	now := time.Now()
	newest := map[string]*v1.Assignment{}
	for _, asg := range list {
		name := asg.GetService()
		if err := spec.CheckName("service", name); err != nil {
			a.log.Warn().Err(err).Int64("generation", asg.GetGeneration()).Msg("ignoring assignment with an invalid service name")
			continue
		}
		if name == spec.AgentService {
			// The agent's own releases come as ConnectResponse.agent only
			// (upgrade.go); as a service they would share its release
			// directory (validateAssignment).
			a.log.Warn().Int64("generation", asg.GetGeneration()).Str("service", name).Msg("ignoring a service assignment of the name reserved for agent upgrades")
			continue
		}
		if cur, ok := newest[name]; !ok || asg.GetGeneration() > cur.GetGeneration() {
			newest[name] = asg
		}
	}
	names := make([]string, 0, len(newest))
	for n := range newest {
		names = append(names, n)
	}
	sort.Strings(names)
	a.forgetRemoved() // remove.go
	allowed, running := a.servicesAllowed(newest, names)
	entered := 0
	for _, name := range names {
		asg := newest[name]
		s := a.services[name]
		if bringsIn(s, asg) {
			if entered++; entered > allowed {
				a.log.Error().Str("service", name).Int64("generation", asg.GetGeneration()).Int("services", running+allowed).
					Msgf("assignment refused: the host would run more than %d services, the most it takes (a coordinator assigning more is misconfigured or compromised)", a.opts.maxServices)
				continue
			}
		}
		if s == nil {
			if asg.GetRemove() && len(a.services) >= a.opts.maxServices+maxRemovedKept {
				a.log.Error().Str("service", name).Int64("generation", asg.GetGeneration()).Int("services", len(a.services)).
					Msg("removal of a service this host does not know refused: it tracks as many services as it may")
				continue
			}
			s = &service{name: name, m: lifecycle.New(name)}
			a.services[name] = s
		}
		dir := a.inst.ReleaseDir(name, asg.GetRelease().GetVersion())
		err := validateAssignment(asg, a.cfg.HostID, a.cfg.Labels, a.cfg.MaxArtifactBytes, dir)
		if err == nil {
			err = checkResources(asg.GetSpec().GetResources(), a.cgroups)
		}
		if err != nil {
			a.log.Warn().Str("service", name).Int64("generation", asg.GetGeneration()).Err(err).Msg("invalid assignment")
			a.step(s, lifecycle.Invalid(asg, err.Error(), now))
			continue
		}
		if a.refuse(s, asg, now) {
			continue // replayed, or its release does not verify (verify.go)
		}
		a.aheadAssigned(s, asg, now) // ahead.go: before the machine, which may fetch
		a.step(s, lifecycle.Assign(asg, now))
	}
}

// step feeds one input to a service's machine and carries out its actions.
func (a *agent) step(s *service, in lifecycle.Input) {
	before := s.m.Phase()
	acts := s.m.Step(in)
	a.syncAnalysis(s) // before the actions: a start or stop must find the right analyser
	if p := s.m.Phase(); p != before {
		a.log.Info().Str("service", s.name).Str("phase", p.String()).
			Str("version", lifecycle.Version(s.m.Current())).Int64("generation", s.m.Generation()).
			Str("reason", s.m.Report().GetReason()).Msg("phase")
		a.metrics.transition(s.name, before, p, in.Kind, s.m.Report().GetReason())
	}
	a.exec(s, acts)
	a.updateJudging(s)
	if s.fetchCancel != nil && s.m.InstallSuperseded() {
		k, _ := s.m.InFlight()
		a.log.Info().Str("service", s.name).Int64("generation", s.m.Generation()).Str("step", k.String()).
			Str("reason", "superseded").Msg("cancelling the fetch or stage of a release no longer wanted")
		s.fetchCancel()
		s.fetchCancel = nil
	}
	if !s.m.Busy() {
		a.dropArtifacts(s) // settled: no install needs them
	}
	// A machine stepped: the loop makes progress, however long the event
	// it handles (a set of assignments for many services saves each one's
	// state in turn, on a slow disk for longer than WatchdogSec). A step
	// that hangs (a save stuck on a dead disk) still stops the pings
	// (TestWatchdogSilentWhileASaveHangs).
	a.cfg.Watchdog.Alive(time.Now())
}

// exec queues actions and carries them out in order (see runQueue).
func (a *agent) exec(s *service, acts []lifecycle.Action) {
	for _, act := range acts {
		if s.blocked && act.Kind == lifecycle.ActReport && len(s.queue) > 0 &&
			s.queue[len(s.queue)-1].Kind == lifecycle.ActReport {
			// Reports are level-triggered: while blocked only the latest counts.
			s.queue[len(s.queue)-1] = act
			continue
		}
		s.queue = append(s.queue, act)
	}
	if !s.blocked {
		a.runQueue(s)
	}
}

// runQueue carries out the queued actions in order. Long steps run in
// goroutines that report back with a doneEv. An ActPersist must be durable
// before anything after it runs (lifecycle/doc.go): if the save fails, the
// queue stops there and the save is retried on the next tick.
func (a *agent) runQueue(s *service) {
	for len(s.queue) > 0 {
		act := s.queue[0]
		if act.Kind == lifecycle.ActPersist {
			if err := a.persist(s, act.Snapshot); err != nil {
				if !s.blocked {
					a.log.Error().Str("service", s.name).Err(err).Str("path", a.store.Path(s.name)).
						Int("queued", len(s.queue)).Msg("persisting state failed: holding later actions, retrying every tick")
				} else {
					a.log.Debug().Str("service", s.name).Err(err).Msg("persisting state failed again")
				}
				s.blocked = true
				return
			}
			if s.blocked {
				a.log.Info().Str("service", s.name).Int("queued", len(s.queue)-1).Msg("state saved after earlier failures: carrying on")
				s.blocked = false
			}
		}
		s.queue[0] = lifecycle.Action{}
		s.queue = s.queue[1:]
		a.do(s, act)
	}
	s.queue = nil
	a.rep.setLatest(s.m.Report())
}
