package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/agent/supervise"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// do carries out one action (ActPersist is done by runQueue).
func (a *agent) do(s *service, act lifecycle.Action) {
	switch act.Kind {
	case lifecycle.ActReport:
		a.handedOffEnded(s, act.Report)
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
		if !act.Beside {
			// Beside another process the window would measure both: it
			// starts measuring the new one once it serves alone (checks).
			a.analysisStart(s, act)
		}
		a.startProcess(s, act)
	case lifecycle.ActAdopt:
		a.analysisStart(s, act) // the window measures the adopted process from now
		a.adoptProcess(s, act)
	case lifecycle.ActFreezeBaseline:
		a.freezeBaseline(s, act)
	case lifecycle.ActStop:
		a.stopProcess(s, act)
	case lifecycle.ActHook:
		a.startHook(s, act)
	case lifecycle.ActBeginChecks:
		if s.ana != nil && s.ana.epoch != act.Epoch {
			a.analysisStart(s, act) // a handover's process, now alone
		}
		a.beginChecks(s, act)
	case lifecycle.ActStopChecks:
		a.stopChecks(s)
	case lifecycle.ActRemove:
		a.startRemove(s, act) // remove.go
	case lifecycle.ActSetLimits:
		a.setLimits(s, act)
	}
}

// setLimits carries out ActSetLimits (a resize in place): the limits of
// the action's spec are written to the cgroup of the process with its
// epoch, which keeps running, and its restarts get them
// (supervise.SetLimits), in the background (lowering memory.max makes the
// kernel reclaim first). Its error (a write refused, a memory or tasks
// limit without usable cgroups, which checkResources refuses up front, no
// such process) fails the install in place, which is reverted.
func (a *agent) setLimits(s *service, act lifecycle.Action) {
	name, p := s.name, s.processes()[act.Epoch]
	l := limitsOf(act.Assignment.GetSpec().GetResources())
	a.background(func() {
		ev := doneEv{svc: name, seq: act.Seq}
		if p == nil {
			ev.err = fmt.Errorf("set limits: no process with epoch %d", act.Epoch)
		} else if ev.err = p.sup.SetLimits(l); ev.err == nil {
			a.log.Info().Str("service", name).Str("version", act.Version).Uint64("epoch", act.Epoch).
				Msg("resource limits written to the running process (in place)")
		}
		a.send(ev)
	})
}

// persist saves a snapshot durably; once a settled phase is saved, it
// prunes releases nobody needs any more, in the background.
func (a *agent) persist(s *service, snap *lifecycle.Snapshot) error {
	if a.opts.saveHook != nil {
		if err := a.opts.saveHook(snap); err != nil {
			return fmt.Errorf("save state of %s: %w", s.name, err)
		}
	}
	if removed, err := a.persistRemoved(snap); removed || err != nil {
		if removed && err == nil {
			s.saved = nil // remove.go: a removed service keeps no state
			a.removed = append(slices.DeleteFunc(a.removed, func(n string) bool { return n == s.name }), s.name)
		}
		return err
	}
	if err := a.store.SaveWith(snap, a.runtime(s)); err != nil {
		return err
	}
	s.saved = snap
	switch snap.Phase {
	case v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
		// A watched release's predecessor stays: a revert may need it.
		a.startPrune(s, lifecycle.Version(snap.Current), lifecycle.Version(snap.LastGood),
			lifecycle.Version(snap.Target), lifecycle.Version(snap.Previous), s.ahead.Version)
	}
	return nil
}

// startPrune removes the service's releases except keep, the one
// `current` points at and the newest Config.KeepReleases, in the
// background. Prunes of one service run one
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
		if err := a.inst.PruneKeeping(name, a.cfg.KeepReleases, keep...); err != nil {
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
	name, asg, wait, ahead := s.name, act.Assignment, s.afterPrune(), s.afterAhead()
	a.background(func() {
		defer cancel()
		<-wait
		<-ahead // a staging of this release ahead of the wave ends first (ahead.go)
		ev := doneEv{svc: name, seq: act.Seq}
		if ev.err = a.reclaimRelease(name, act.Version, asg.GetSpec().GetRun()); ev.err != nil {
			a.send(ev)
			return
		}
		switch {
		case a.inst.Staged(name, act.Version, artifactOf(asg).SHA256):
			ev.staged = true // unpacked earlier from the same digest (staged ahead, or kept)
			a.log.Info().Str("service", name).Str("version", act.Version).Msg("release already unpacked from the assigned digest: nothing to fetch")
			if a.metrics != nil {
				a.metrics.installsReady.Inc()
			}
		default:
			// Refused up front when the disk cannot hold the download, the
			// unpacked release and a margin; that space is reserved while
			// the download runs (other fetches wait for it).
			var release func()
			if release, ev.err = a.inst.ReserveFetchSpace(ctx, artifactOf(asg)); ev.err == nil {
				ev.fetched, ev.err = a.fetch(ctx, asg)
				release()
			}
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
		if ev.err == nil {
			// The release's files belong to the service's user (run.user).
			if err := a.giveRelease(ctx, name, act.Version, act.Assignment.GetSpec().GetRun()); err != nil {
				ev.err = fmt.Errorf("give the release to spec.run.user: %w", err)
				// Part of it may be the user's now, its root still the
				// agent's (given last): not staged any more, so that no
				// one runs it as another user (reclaimRelease goes by
				// the root's owner, and by the give-away's note, which
				// stays if it cannot be dropped); it is unpacked again
				// when assigned.
				if derr := a.inst.DropRelease(name, act.Version); derr != nil {
					a.log.Warn().Str("service", name).Str("version", act.Version).Err(derr).Msg("dropping a release given away in part")
				}
			}
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

// startProcess carries out ActStart: the process starts with the run spec,
// on the service's sockets when its release declares any (bound once,
// reused across releases), with a notify socket when it says ready:
// notify. Beside: another process of the service still serves (a
// handover); the new one records itself in the handover's PID file and
// nothing is stopped. The sockets' identities and the notify socket are
// saved before the process starts, so that a later agent finds them.
func (a *agent) startProcess(s *service, act lifecycle.Action) {
	name := s.name
	var olds []*process
	var founds []*foundProc
	if !act.Beside {
		// The machine stops every process first: this is a safety net.
		for epoch := range s.procs {
			olds = append(olds, s.takeProcess(epoch))
		}
		founds, s.found = s.found, nil
	}
	cfg, err := a.supervisorConfig(name, act.Assignment, act.Epoch)
	if act.Beside {
		cfg.PIDFile = a.nextPIDFile(name)
	}
	var decls []sockets.Decl
	if err == nil {
		decls, err = a.socketDecls(act.Assignment)
	}
	if err == nil && len(decls) > 0 {
		_, _, err = s.sockSet().get(decls) // bound now: a failure fails the start
	}
	var n *sockets.Notify
	if err == nil && lifecycle.NotifiesReady(act.Assignment) {
		n, err = a.listenNotify(s, act.Epoch, act.Assignment.GetSpec().GetRun())
	}
	if err == nil {
		if err = a.saveRuntime(s); err != nil {
			err = fmt.Errorf("recording the sockets before the start: %w", err)
		}
	}
	if err != nil && n != nil {
		_ = n.Close()
		s.notifyAt(act.Epoch, "")
		n = nil
	}
	cfg.Prepare = a.prepareHook(name, s.sockSet(), decls, n)
	p := &process{epoch: act.Epoch, asg: act.Assignment, grace: cfg.StopGrace, notify: n, listens: listensOf(decls), stop: make(chan struct{})}
	a.background(func() {
		for _, old := range olds {
			if err := a.stopSupervisor(old.sup, old.grace); err != nil {
				a.log.Error().Str("service", name).Err(err).Msg("stopping service")
			}
		}
		for _, f := range founds {
			if err := f.f.Stop(f.grace, a.log); err != nil {
				a.log.Error().Str("service", name).Err(err).Msg("stopping service")
			}
		}
		ev := doneEv{svc: name, seq: act.Seq, err: err, start: true}
		if err == nil {
			p.sup = supervise.New(cfg, a.log)
			if ev.err = p.sup.Start(); ev.err == nil {
				ev.proc = p
			}
		}
		if ev.proc == nil && n != nil {
			_ = n.Close()
		}
		if !a.send(ev) && ev.proc != nil {
			// Shutting down: it runs on like every other service, for the
			// next agent to adopt (its PID file says which start it is).
			a.detachProcess(name, ev.proc)
		}
	})
}

// adoptProcess carries out ActAdopt: a process found running at Restore
// becomes one of the service's supervised processes (exits forwarded with
// the action's epoch, restarted with its assignment's run spec, on the
// service's sockets, which were recovered from the processes before). It
// is not restarted. Its notify socket is listened on again at the path it
// was given. If it cannot be supervised (its run spec no longer expands
// with this host's labels, the log cannot be opened), it is stopped, and
// its exit is reported, so that nothing runs unwatched.
func (a *agent) adoptProcess(s *service, act lifecycle.Action) {
	f := s.takeFound(act.Epoch, act.Version)
	if f == nil {
		a.log.Error().Str("service", s.name).Str("version", act.Version).Uint64("epoch", act.Epoch).Msg("nothing found to adopt")
		return
	}
	cfg, err := a.supervisorConfig(s.name, act.Assignment, act.Epoch)
	cfg.PIDFile = f.f.PIDFile()
	var decls []sockets.Decl
	if err == nil {
		decls, err = a.socketDecls(act.Assignment)
	}
	if err == nil {
		var n *sockets.Notify
		if path := s.notify[f.f.Record.Epoch]; path != "" && lifecycle.NotifiesReady(act.Assignment) {
			// Adopted means ready; its later messages (STOPPING=1, and a
			// restart's READY=1) still have somewhere to go.
			var cred *syscall.Credential
			if cred, err = credential(act.Assignment.GetSpec().GetRun()); err == nil {
				n, err = sockets.ListenNotify(filepath.Dir(path), filepath.Base(path), sockets.AccessMain, cred)
			}
			if err == nil {
				err = n.Watch(f.f.Record.PGID)
			}
			if err != nil {
				a.log.Warn().Str("service", s.name).Err(err).Str("path", path).Msg("notify socket of the adopted process")
				if n != nil {
					_ = n.Close()
				}
				n, err = nil, nil
			}
		}
		s.notifyAt(f.f.Record.Epoch, "")
		if n != nil {
			s.notifyAt(act.Epoch, n.Path())
		}
		cfg.Prepare = a.prepareHook(s.name, s.sockSet(), decls, n)
		sup := supervise.New(cfg, a.log)
		if err = sup.Adopt(f.f); err == nil && act.Limits {
			// In the middle of (or after) a change in place: its cgroup
			// takes the limits of the spec it is adopted with (the write
			// may have happened before the restart, or not).
			if err = sup.SetLimits(cfg.Limits); err != nil {
				a.log.Error().Str("service", s.name).Str("version", act.Version).Err(err).Msg("cannot write the adopted process's limits: stopping it")
				if n != nil {
					_ = n.Close()
					s.notifyAt(act.Epoch, "")
				}
				name, epoch, grace := s.name, act.Epoch, cfg.StopGrace
				a.background(func() {
					if serr := a.stopSupervisor(sup, grace); serr != nil {
						a.log.Error().Str("service", name).Err(serr).Msg("stopping service")
					}
					a.send(exitEv{svc: name, epoch: epoch, exit: supervise.Exit{At: time.Now(), Err: fmt.Errorf("adopt: %w", err)}})
				})
				return
			}
			a.log.Info().Str("service", s.name).Uint64("epoch", act.Epoch).Msg("resource limits of the adopted process written again")
		}
		if err == nil {
			a.addProcess(s, &process{epoch: act.Epoch, asg: act.Assignment, sup: sup, grace: cfg.StopGrace, notify: n,
				listens: listensOf(decls), stop: make(chan struct{})})
			a.takeMainPIDFile(s) // its handover's old process may be gone already
			a.log.Info().Str("service", s.name).Str("version", act.Version).Int("pid", f.f.Record.PGID).
				Uint64("epoch", act.Epoch).Msg("service adopted: left running by an earlier agent")
			return
		}
		if n != nil {
			_ = n.Close()
			s.notifyAt(act.Epoch, "")
		}
	}
	a.log.Error().Str("service", s.name).Str("version", act.Version).Err(err).Msg("cannot supervise the running process: stopping it")
	name, epoch := s.name, act.Epoch
	a.background(func() {
		if serr := f.f.Stop(f.grace, a.log); serr != nil {
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
	cred, err := credential(asg.GetSpec().GetRun())
	if err != nil {
		return supervise.Config{}, err
	}
	return supervise.Config{
		Credential: cred,
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
		Cgroups:    a.cgroups,
		Limits:     limitsOf(asg.GetSpec().GetResources()),
	}, nil
}

// addProcess records a started (or adopted) process and forwards its
// exits, and its READY=1, with its epoch.
func (a *agent) addProcess(s *service, p *process) {
	if old := s.takeProcess(p.epoch); old != nil {
		a.log.Error().Str("service", s.name).Uint64("epoch", p.epoch).Msg("two processes with one epoch")
	}
	s.processes()[p.epoch] = p
	name, sup, epoch, stop := s.name, p.sup, p.epoch, p.stop
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
	if n := p.notify; n != nil {
		a.background(func() {
			select {
			case <-n.Ready():
				a.send(readyEv{svc: name, epoch: epoch})
			case <-stop:
			case <-a.stopping:
			}
		})
	}
}

func (a *agent) stopSupervisor(sup *supervise.Supervisor, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace+5*time.Second)
	defer cancel()
	return sup.Stop(ctx)
}

// stopProcess carries out ActStop: it stops the process with the action's
// epoch, supervised or found running at Restore and not adopted. Drain: it
// served, so its release's shutdown_delay passes (see drainStop) before
// the stop signal (its before_stop ran before, an ActHook of its own). If the agent stops during the
// drain, the process is left running (with its PID file) for the next
// agent, which stops it again.
func (a *agent) stopProcess(s *service, act lifecycle.Action) {
	name := s.name
	p := s.takeProcess(act.Epoch)
	var f *foundProc
	if p == nil {
		f = s.takeFound(act.Epoch, "")
	}
	asg := act.Assignment
	switch {
	case p != nil && asg == nil:
		asg = p.asg
	case f != nil && asg == nil:
		asg = f.asg
	}
	// A process found running at Restore and stopped, not adopted, has its
	// notify socket file (an agent killed with -9 leaves it; Restore kept
	// it, as the process might have been adopted), but no receiver: it goes
	// with the process, as a supervised process's goes with its Close.
	var foundNotify string
	if f != nil {
		foundNotify = s.notify[f.f.Record.Epoch]
	}
	s.notifyAt(act.Epoch, "")
	if f != nil {
		s.notifyAt(f.f.Record.Epoch, "")
	}
	a.background(func() {
		ev := doneEv{svc: name, seq: act.Seq, stopped: true}
		if act.Drain && asg != nil && (p != nil || f != nil) {
			if err := drainStop(a.ctx, asg); err != nil {
				// The agent is stopping: leave the process to the next one.
				if p != nil {
					a.detachProcess(name, p)
				} else {
					f.f.Release()
				}
				return
			}
		}
		switch {
		case p != nil:
			ev.err = a.stopSupervisor(p.sup, p.grace)
			if p.notify != nil {
				_ = p.notify.Close()
			}
		case f != nil:
			ev.err = f.f.Stop(f.grace, a.log)
			removeNotifyFile(foundNotify)
		default:
			a.log.Error().Str("service", name).Uint64("epoch", act.Epoch).Msg("nothing to stop")
			ev.err = fmt.Errorf("stop epoch %d: %w", act.Epoch, errNothingToStop)
		}
		a.send(ev)
	})
}

// removeNotifyFile removes the notify socket file at path ("": none) of a
// process that no longer has a receiver; only a socket (an epoch's path is
// never bound again).
func removeNotifyFile(path string) {
	if path == "" {
		return
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
		_ = os.Remove(path)
	}
}
