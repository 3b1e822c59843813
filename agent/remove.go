package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Removing a service from the host (lifecycle/remove.go). The coordinator
// assigns a removal when the service is deleted (`fleetwave service
// delete`) or the host no longer matches its selector. The machine stops
// the process first (ActStop: the stop path, drained as any stop); then
// ActRemove removes, in this order, the `current` link, every release
// directory with its digest marker, the service's releases directory and
// its PID files (the main one, and a handover's). The service's sockets
// were closed when its last process stopped. The service's log (logs/<service>.log and its rotated
// copies) is kept, with a last line saying it was removed: the last words
// of a removed service are often what a person needs; a service created
// again appends to it. Config.RemovedLogRetention after its last write
// (that line) it is deleted (logs.go pruneRemovedLogs). Once REMOVED is
// persisted the service's state file is deleted instead of written, so an
// agent started later knows nothing of it.

// startRemove carries out ActRemove in the background.
func (a *agent) startRemove(s *service, act lifecycle.Action) {
	name, wait, ahead := s.name, s.afterPrune(), s.afterAhead()
	a.dropArtifacts(s)
	a.background(func() {
		<-wait
		<-ahead // a staging ahead (cancelled) or its drop ends first: it writes under the service's directory
		err := a.inst.RemoveService(name)
		for _, pf := range []string{a.pidFile(name), a.nextPIDFile(name)} {
			if perr := os.Remove(pf); perr != nil && !errors.Is(perr, fs.ErrNotExist) {
				err = errors.Join(err, fmt.Errorf("remove the PID file: %w", perr))
			}
		}
		if err == nil {
			a.markRemovedLog(name)
			a.log.Info().Str("service", name).Msg("service removed: stopped, releases and PID file deleted (its log is kept)")
		}
		a.send(doneEv{svc: name, seq: act.Seq, err: err})
	})
}

// markRemovedLog appends a line saying the service was removed to its log,
// if it has one: the reader of its last words sees why they end, and the
// log's retention (logs.go pruneRemovedLogs) counts from the removal, not
// from the service's last line. A failure is logged: the removal stands.
func (a *agent) markRemovedLog(name string) {
	f, err := os.OpenFile(a.logFile(name), os.O_WRONLY|os.O_APPEND, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		_, err = fmt.Fprintf(f, "fleetwave-agent: %s: service removed from this host\n", time.Now().UTC().Format(time.RFC3339))
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		a.log.Warn().Err(err).Str("service", name).Msg("marking the removed service's log")
	}
}

// maxRemovedKept is how many removed services the agent still tracks (the
// newest removals): their machines refuse a replayed older assignment, and
// their REMOVED reports stay in every Hello. Older ones are forgotten, as
// an agent restart forgets them all (their state is deleted): a host that
// runs short-lived services (one per branch, say) would otherwise grow its
// memory and its Hello with every name it ever ran, until coordinators
// refuse the Hello (over spec.MaxServicesPerHost).
const maxRemovedKept = 100

// forgetRemoved forgets the oldest removed services beyond maxRemovedKept
// whose machines are settled in REMOVED and whose REMOVED report has been
// sent: their machine, reports and metric series. Called by the run loop.
func (a *agent) forgetRemoved() {
	kept := a.removed[:0]
	excess := len(a.removed) - maxRemovedKept
	for _, name := range a.removed {
		s := a.services[name]
		if s == nil || s.m.Phase() != v1.Phase_PHASE_REMOVED {
			excess--
			continue // assigned again since: no longer a removed one
		}
		if excess > 0 && !s.m.Busy() && !s.blocked && len(s.queue) == 0 && len(s.procs) == 0 && a.rep.forget(name) {
			delete(a.services, name)
			a.metrics.forget(name)
			excess--
			a.log.Info().Str("service", name).Msg("removed service forgotten (older than the newest removals kept)")
			continue
		}
		kept = append(kept, name)
	}
	clear(a.removed[len(kept):])
	a.removed = kept
}

// servicesAllowed is how many services an assignment set (newest, its
// names) may bring in (new names, or removed services assigned again)
// within spec.MaxServicesPerHost, given running: the services not removed
// that the set does not remove (a service it removes makes room).
func (a *agent) servicesAllowed(newest map[string]*v1.Assignment, names []string) (allowed, running int) {
	for name, s := range a.services {
		if s.m.Phase() != v1.Phase_PHASE_REMOVED && !newest[name].GetRemove() {
			running++
		}
	}
	entering := 0
	for _, name := range names {
		if bringsIn(a.services[name], newest[name]) {
			entering++
		}
	}
	return min(entering, max(0, a.opts.maxServices-running)), running
}

// bringsIn says asg brings a service in: a new name (s nil), or a removed
// service assigned again.
func bringsIn(s *service, asg *v1.Assignment) bool {
	return !asg.GetRemove() && (s == nil || s.m.Phase() == v1.Phase_PHASE_REMOVED)
}

// persistRemoved deletes the state of a service whose REMOVED snapshot is
// to be persisted (handled reports whether it was).
func (a *agent) persistRemoved(snap *lifecycle.Snapshot) (handled bool, err error) {
	if snap.Phase != v1.Phase_PHASE_REMOVED {
		return false, nil
	}
	return true, a.store.Delete(snap.Service)
}

// validateRemoval checks an assignment to remove a service: its name and
// generation (it carries no release or spec).
func validateRemoval(a *v1.Assignment) error {
	if err := spec.CheckName("service", a.GetService()); err != nil {
		return err
	}
	return validateGeneration(a)
}
