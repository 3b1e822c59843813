package lifecycle

import (
	"fmt"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Removal. An assignment with remove set (the coordinator's `service
// delete`, or the host no longer matching the service's selector) removes
// the service from the host:
//
//	REMOVING: stop checking and analysing; stop the process (ActStop: the
//	          agent's stop path, drained as any stop); then ActRemove: the
//	          service's releases, `current` and PID file are removed
//	REMOVED:  nothing of the service runs or remains but its log; the
//	          caller deletes its state once REMOVED is persisted
//
// A removal is taken up like any assignment: at once when settled, at the
// next step of an install before its switch (the install is abandoned, the
// release it was fetching discarded), after an install's checks or a revert
// otherwise. A removal that cannot remove the files ends FAILED with the
// reason, nothing running; a newer removal tries again. A REMOVED service
// takes any later assignment of a release, whatever its generation: the
// coordinator counts a host that removed a service out of the service's
// generations. An agent restart in REMOVING (or REMOVED) resumes the
// removal: whatever runs of the service is stopped, the files removed.

// beginRemove starts removing the service (the machine is settled or
// abandoning an install before its switch).
func (m *Machine) beginRemove(t time.Time) {
	m.stopChecks()
	m.checks, m.rules = nil, nil // the results of what is going away
	m.op = opRemove
	m.reason = ""
	m.target = nil
	m.setPhase(v1.Phase_PHASE_REMOVING, true)
	m.removeNext(t)
}

// removeNext takes the removal's next step: stop what runs (each process
// in turn, drained when it served), then remove.
func (m *Machine) removeNext(time.Time) {
	if len(m.procs) > 0 {
		m.stopProc(m.procs[0], stopOp)
		return
	}
	m.startStep(ActRemove, nil)
}

func (m *Machine) removeDone(k ActionKind, err error, t time.Time) {
	switch k {
	case ActStop:
		m.removeNext(t) // stopDone has let the process go (a failed stop has still ended it)
	case ActRemove:
		m.op = opNone
		m.current, m.lastGood, m.target = nil, nil, nil
		m.currentOK = false
		if err != nil {
			m.reason = fmt.Sprintf("remove: %v", err)
			m.setPhase(v1.Phase_PHASE_FAILED, true)
		} else {
			m.setPhase(v1.Phase_PHASE_REMOVED, true)
		}
		m.settle(t)
	}
}

// restoreRemove resumes a removal after an agent restart: what was found
// running (m.procs, of whatever release) is stopped first.
func (m *Machine) restoreRemove(t time.Time) []Action {
	m.op = opRemove
	m.phase = v1.Phase_PHASE_REMOVING
	m.report()
	m.removeNext(t)
	return m.take()
}

// isRemove reports whether p removes the service.
func (p *pendingAssign) isRemove() bool { return p.a.GetRemove() }
