package lifecycle

import (
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Config rollouts. The coordinator may assign the release a host runs
// again with another spec (a config rollout). Whether that is a change is
// decided by the one rule of package specdiff:
//
//   - the new spec changes what runs on hosts (run, checks, analysis, ...):
//     it is an install of the same release (FETCHING .. CHECKING: the
//     staged release is only re-verified by its digest, `current` is
//     switched to the same directory, the process is stopped and started
//     with the new spec, checked, analysed and watched), and a failure
//     reverts locally to the last good (release, spec) pair, which is the
//     same release with the spec it ran before.
//   - it changes only what the coordinator reads (rollout policy, alerts,
//     selector): taken as the running release at a newer generation, no
//     restart (as for the same spec).
//
// After an agent restart in the middle of such an install (STARTING,
// CHECKING) or of its revert (REVERTING), the processes found running of
// the release are told apart by their epochs (PID records name the release
// and the epoch, not the spec): the target's process is the one started
// at Snapshot.TargetEpoch, which is made durable before that start; any
// other runs the last good spec. So the install is finished (the target's
// process adopted and checked afresh) or reverted (the last good's adopted,
// the target's stopped) exactly once, with no process started again. A
// state written before the epoch was recorded (TargetEpoch 0) cannot tell
// them apart: the process is stopped and the right spec's started (one
// restart more, never the wrong spec left running).

// runsAsIs reports whether assignment a is what the machine runs, healthy:
// the same release with a spec that runs the same on hosts, so taking it
// needs no restart.
func (m *Machine) runsAsIs(a *v1.Assignment) bool {
	return a != nil && m.current != nil && Version(m.current) == Version(a) && m.currentOK &&
		!specdiff.HostAffecting(m.current.GetSpec(), a.GetSpec())
}

// specChange reports whether a and b are the same release with specs that
// run differently on hosts.
func specChange(a, b *v1.Assignment) bool {
	return a != nil && b != nil && Version(a) == Version(b) && specdiff.HostAffecting(a.GetSpec(), b.GetSpec())
}
