package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

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
// copies) is kept: the last words of a removed service are often what a
// person needs; a service created again appends to it. Once REMOVED is
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
			a.log.Info().Str("service", name).Msg("service removed: stopped, releases and PID file deleted (its log is kept)")
		}
		a.send(doneEv{svc: name, seq: act.Seq, err: err})
	})
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
	if a.GetGeneration() <= 0 {
		return fmt.Errorf("generation: %d must be > 0", a.GetGeneration())
	}
	return nil
}
