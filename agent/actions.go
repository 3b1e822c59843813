package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/supervise"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// do carries out one action (ActPersist is done by runQueue).
func (a *agent) do(s *service, act lifecycle.Action) {
	switch act.Kind {
	case lifecycle.ActReport:
		a.rep.put(act.Report)
	case lifecycle.ActFetch:
		a.startFetch(s, act)
	case lifecycle.ActVerify:
		a.startVerify(s, act)
	case lifecycle.ActStage:
		a.startStage(s, act)
	case lifecycle.ActSwitch:
		a.startSwitch(s, act)
	case lifecycle.ActStart:
		a.analysisStart(s, act)
		a.startProcess(s, act)
	case lifecycle.ActAdopt:
		a.analysisStart(s, act) // the window measures the adopted process from now
		a.adoptProcess(s, act)
	case lifecycle.ActFreezeBaseline:
		a.freezeBaseline(s, act)
	case lifecycle.ActStop:
		a.stopProcess(s, act)
	case lifecycle.ActBeginChecks:
		a.beginChecks(s, act)
	case lifecycle.ActStopChecks:
		a.stopChecks(s)
	}
}

// persist saves a snapshot durably; once a settled phase is saved, it
// prunes releases nobody needs any more, in the background.
func (a *agent) persist(s *service, snap *lifecycle.Snapshot) error {
	if a.opts.saveHook != nil {
		if err := a.opts.saveHook(snap); err != nil {
			return fmt.Errorf("save state of %s: %w", s.name, err)
		}
	}
	if err := a.store.Save(snap); err != nil {
		return err
	}
	switch snap.Phase {
	case v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
		// A watched release's predecessor stays: a revert may need it.
		a.startPrune(s, lifecycle.Version(snap.Current), lifecycle.Version(snap.LastGood),
			lifecycle.Version(snap.Target), lifecycle.Version(snap.Previous))
	}
	return nil
}

// startPrune removes the service's releases except keep (and the one
// `current` points at) in the background. Prunes of one service run one
// after another, and its fetch, verify, stage and switch steps wait for the
// latest one, so a prune never overlaps them.
func (a *agent) startPrune(s *service, keep ...string) {
	prev := s.afterPrune()
	done := make(chan struct{})
	s.pruneDone = done
	name := s.name
	a.background(func() {
		defer close(done)
		<-prev
		if a.opts.pruneHook != nil {
			a.opts.pruneHook(name)
		}
		if err := a.inst.Prune(name, keep...); err != nil {
			a.log.Warn().Str("service", name).Err(err).Msg("pruning old releases")
		}
	})
}

// dropArtifacts removes the service's fetched or verified file, if any.
func (a *agent) dropArtifacts(s *service) {
	a.inst.Discard(s.fetched)
	a.inst.DiscardVerified(s.verified)
	s.fetched, s.verified = nil, nil
}

func artifactOf(asg *v1.Assignment) install.Artifact {
	art := asg.GetRelease().GetArtifact()
	return install.Artifact{SHA256: art.GetSha256(), Size: art.GetSize()}
}

func (a *agent) startFetch(s *service, act lifecycle.Action) {
	a.dropArtifacts(s)
	s.staged = false
	if s.fetchCancel != nil {
		s.fetchCancel()
	}
	ctx, cancel := context.WithCancel(a.ctx)
	s.fetchCancel = cancel
	name, asg, wait := s.name, act.Assignment, s.afterPrune()
	a.background(func() {
		defer cancel()
		<-wait
		ev := doneEv{svc: name, seq: act.Seq}
		if a.inst.Staged(name, act.Version, artifactOf(asg).SHA256) {
			ev.staged = true // unpacked earlier from the same digest
		} else {
			ev.fetched, ev.err = a.fetch(ctx, asg)
		}
		if !a.send(ev) {
			a.inst.Discard(ev.fetched)
		}
	})
}

func (a *agent) startVerify(s *service, act lifecycle.Action) {
	name, f, staged, wait := s.name, s.fetched, s.staged, s.afterPrune()
	a.background(func() {
		<-wait
		ev := doneEv{svc: name, seq: act.Seq}
		if !staged {
			ev.verified, ev.err = a.inst.Verify(f, artifactOf(act.Assignment))
		}
		a.send(ev)
	})
}

// startStage unpacks the verified artifact in the background. Like a
// fetch, it is cancelled by a newer assignment of another release (step)
// and at shutdown (a.ctx): unpacking a large or hostile archive holds up
// neither.
func (a *agent) startStage(s *service, act lifecycle.Action) {
	name, v, staged, wait := s.name, s.verified, s.staged, s.afterPrune()
	s.verified = nil
	if s.fetchCancel != nil {
		s.fetchCancel()
	}
	ctx, cancel := context.WithCancel(a.ctx)
	s.fetchCancel = cancel
	a.background(func() {
		defer cancel()
		<-wait
		ev := doneEv{svc: name, seq: act.Seq}
		if !staged {
			if a.opts.stageHook != nil {
				a.opts.stageHook(ctx, name, act.Version)
			}
			_, ev.err = a.inst.Stage(ctx, name, act.Version, v)
		}
		a.send(ev)
	})
}

func (a *agent) startSwitch(s *service, act lifecycle.Action) {
	name, wait := s.name, s.afterPrune()
	a.background(func() {
		<-wait
		ev := doneEv{svc: name, seq: act.Seq, err: a.inst.Switch(name, act.Version)}
		// Say where the link points now: a failed switch must not be
		// mistaken for one that happened (or the other way round).
		if cur, err := a.inst.Current(name); err == nil {
			ev.link, ev.linkOK = cur, true
		} else {
			a.log.Warn().Str("service", name).Err(err).Msg("reading the current link after a switch")
		}
		a.send(ev)
	})
}

func (a *agent) startProcess(s *service, act lifecycle.Action) {
	name := s.name
	old, oldGrace := s.sup, s.supGrace
	found, foundGrace := s.found, s.foundGrace
	a.dropSupervisor(s)
	s.found = nil
	cfg, err := a.supervisorConfig(name, act.Assignment, act.Epoch)
	a.background(func() {
		// One process per service: the machine stops the old one first, so
		// these are only a safety net.
		if old != nil {
			if err := a.stopSupervisor(old, oldGrace); err != nil {
				a.log.Error().Str("service", name).Err(err).Msg("stopping service")
			}
		}
		if found != nil {
			if err := found.Stop(foundGrace, a.log); err != nil {
				a.log.Error().Str("service", name).Err(err).Msg("stopping service")
			}
		}
		ev := doneEv{svc: name, seq: act.Seq, err: err, epoch: act.Epoch}
		if err == nil {
			sup := supervise.New(cfg, a.log)
			if ev.err = sup.Start(); ev.err == nil {
				ev.sup, ev.grace = sup, cfg.StopGrace
			}
		}
		if !a.send(ev) && ev.sup != nil {
			// Shutting down: it runs on like every other service, for the
			// next agent to adopt (its PID file says which start it is).
			a.detachSupervisor(name, ev.sup, ev.grace)
		}
	})
}

// adoptProcess carries out ActAdopt: the process found running at Restore
// becomes the service's supervised process (exits forwarded with the
// action's epoch, restarted with its assignment's run spec). It is not
// restarted. If it cannot be supervised (its run spec no longer expands
// with this host's labels, the log cannot be opened), it is stopped, and
// its exit is reported, so that nothing runs unwatched.
func (a *agent) adoptProcess(s *service, act lifecycle.Action) {
	f := s.found
	s.found = nil
	if f == nil {
		a.log.Error().Str("service", s.name).Str("version", act.Version).Msg("nothing found to adopt")
		return
	}
	cfg, err := a.supervisorConfig(s.name, act.Assignment, act.Epoch)
	if err == nil {
		sup := supervise.New(cfg, a.log)
		if err = sup.Adopt(f); err == nil {
			a.adoptSupervisor(s, sup, cfg.StopGrace, act.Epoch)
			a.log.Info().Str("service", s.name).Str("version", act.Version).Int("pid", f.Record.PGID).
				Uint64("epoch", act.Epoch).Msg("service adopted: left running by an earlier agent")
			return
		}
	}
	a.log.Error().Str("service", s.name).Str("version", act.Version).Err(err).Msg("cannot supervise the running process: stopping it")
	name, grace, epoch := s.name, s.foundGrace, act.Epoch
	a.background(func() {
		if serr := f.Stop(grace, a.log); serr != nil {
			a.log.Error().Str("service", name).Err(serr).Msg("stopping service")
		}
		a.send(exitEv{svc: name, epoch: epoch, exit: supervise.Exit{At: time.Now(), Err: fmt.Errorf("adopt: %w", err)}})
	})
}

func (a *agent) supervisorConfig(name string, asg *v1.Assignment, epoch uint64) (supervise.Config, error) {
	cmd, env, err := expandRun(asg.GetSpec().GetRun(), a.cfg.HostID, a.cfg.Labels)
	if err != nil {
		return supervise.Config{}, err
	}
	return supervise.Config{
		Service:    name,
		Dir:        a.inst.ReleaseDir(name, lifecycle.Version(asg)),
		Command:    cmd,
		Env:        env,
		LogPath:    a.logFile(name),
		StopGrace:  stopGrace(asg),
		PIDFile:    a.pidFile(name),
		Release:    lifecycle.Version(asg),
		Epoch:      epoch,
		MinBackoff: a.opts.supMinBackoff,
		MaxBackoff: a.opts.supMaxBackoff,
	}, nil
}

// adoptSupervisor records a started process and forwards its exits.
func (a *agent) adoptSupervisor(s *service, sup *supervise.Supervisor, grace time.Duration, epoch uint64) {
	a.dropSupervisor(s)
	s.sup, s.supGrace = sup, grace
	stop := make(chan struct{})
	s.exitsStop = stop
	name := s.name
	a.background(func() {
		for {
			select {
			case e := <-sup.Exits():
				if !a.send(exitEv{svc: name, epoch: epoch, exit: e}) {
					return
				}
			case <-stop:
				return
			case <-a.stopping:
				return
			}
		}
	})
}

// dropSupervisor forgets the service's supervisor (the caller stops it).
func (a *agent) dropSupervisor(s *service) {
	if s.exitsStop != nil {
		close(s.exitsStop)
		s.exitsStop = nil
	}
	s.sup = nil
}

func (a *agent) stopSupervisor(sup *supervise.Supervisor, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace+5*time.Second)
	defer cancel()
	return sup.Stop(ctx)
}

// stopProcess carries out ActStop: it stops the supervised process, or
// the one found running at Restore that is not to be adopted.
func (a *agent) stopProcess(s *service, act lifecycle.Action) {
	name, sup, grace := s.name, s.sup, s.supGrace
	found, foundGrace := s.found, s.foundGrace
	a.dropSupervisor(s)
	s.found = nil
	a.background(func() {
		var errs []error
		if sup != nil {
			errs = append(errs, a.stopSupervisor(sup, grace))
		}
		if found != nil {
			errs = append(errs, found.Stop(foundGrace, a.log))
		}
		a.send(doneEv{svc: name, seq: act.Seq, err: errors.Join(errs...)})
	})
}
