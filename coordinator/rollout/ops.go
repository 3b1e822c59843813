package rollout

import (
	"errors"
	"fmt"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ErrState is wrapped by errors about a rollout that is not in the state an
// operation needs.
var ErrState = errors.New("rollout is in the wrong state")

// Approve moves a WAITING_APPROVAL rollout to PROGRESSING, its first wave
// started. With approve_each_wave it also approves the wave that waits:
// wave is that wave's index, or 0 for "whatever waits". Approving anything
// else is an error naming the state.
func Approve(r *v1.Rollout, wave uint32, now time.Time) (*v1.Rollout, error) {
	if r == nil {
		return nil, fmt.Errorf("approve: no rollout: %w", ErrState)
	}
	switch st := r.GetState(); {
	case st == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL:
		if wave != 0 {
			return nil, fmt.Errorf("approve rollout %s: wave %d: the rollout itself waits for approval (approve without --wave): %w", r.GetId(), wave, ErrState)
		}
		out := proto.Clone(r).(*v1.Rollout)
		start(out, now)
		return out, nil
	case st == v1.RolloutState_ROLLOUT_STATE_PROGRESSING && r.GetPolicy().GetApproveEachWave():
		for i, w := range r.GetWaves() {
			if !w.GetWaitingApproval() {
				continue
			}
			if wave != 0 && int(wave) != i {
				return nil, fmt.Errorf("approve rollout %s: wave %d does not wait for approval; wave %d does: %w", r.GetId(), wave, i, ErrState)
			}
			out := proto.Clone(r).(*v1.Rollout)
			out.Waves[i].WaitingApproval = false
			out.Waves[i].Approved = true
			out.LastProgressAt = timestamppb.New(now)
			return out, nil
		}
		return nil, fmt.Errorf("approve rollout %s: no wave waits for approval yet: %w", r.GetId(), ErrState)
	default:
		return nil, fmt.Errorf("approve rollout %s: it is %s, not WAITING_APPROVAL: %w", r.GetId(), stateName(st), ErrState)
	}
}

// Pause stops a progressing rollout from moving more hosts. Hosts already
// moving finish, and their failures still count.
func Pause(r *v1.Rollout) (*v1.Rollout, error) {
	if r == nil || r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		return nil, fmt.Errorf("pause rollout %s: it is %s, not PROGRESSING: %w", r.GetId(), stateName(r.GetState()), ErrState)
	}
	if r.GetPaused() {
		return r, nil
	}
	out := proto.Clone(r).(*v1.Rollout)
	out.Paused = true
	return out, nil
}

// Resume continues a paused rollout. The progress deadline starts afresh.
func Resume(r *v1.Rollout, now time.Time) (*v1.Rollout, error) {
	if r == nil || r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		return nil, fmt.Errorf("resume rollout %s: it is %s, not PROGRESSING: %w", r.GetId(), stateName(r.GetState()), ErrState)
	}
	if !r.GetPaused() {
		return r, nil
	}
	out := proto.Clone(r).(*v1.Rollout)
	out.Paused = false
	out.LastProgressAt = timestamppb.New(now)
	return out, nil
}

// Fail fails a non-terminal rollout by hand or for an external reason (abort):
// state FAILED, reason, finished_at = now, and its current wave (if
// progressing or baking) FAILED. A terminal rollout (or nil) is returned as
// is. r is not mutated.
func Fail(r *v1.Rollout, reason string, now time.Time) *v1.Rollout {
	return end(r, v1.RolloutState_ROLLOUT_STATE_FAILED, reason, now)
}

// CompareFailed is the comparison's gate: it fails a rollout that is not
// terminal (progressing, paused or waiting for approval) because the
// canary-versus-baseline comparison (analysis.compare, coordinator/judge)
// found the new release worse than the hosts still on the old one; reason
// is the judge's, which names the rule, both groups, the test, its
// p-value and the effect size. Like Fail otherwise (the current wave
// FAILED, hosts go back to last good when the caller concludes). r is not
// mutated; a terminal rollout (or nil) is returned as is.
func CompareFailed(r *v1.Rollout, reason string, now time.Time) *v1.Rollout {
	return end(r, v1.RolloutState_ROLLOUT_STATE_FAILED, "canary worse than baseline hosts: "+reason, now)
}

// Supersede ends a non-terminal rollout because a newer release replaces it:
// state SUPERSEDED, reason, finished_at = now. A terminal rollout (or nil) is
// returned as is. r is not mutated.
func Supersede(r *v1.Rollout, reason string, now time.Time) *v1.Rollout {
	return end(r, v1.RolloutState_ROLLOUT_STATE_SUPERSEDED, reason, now)
}

func end(r *v1.Rollout, st v1.RolloutState, reason string, now time.Time) *v1.Rollout {
	if r == nil || Terminal(r) {
		return r
	}
	out := proto.Clone(r).(*v1.Rollout)
	out.State = st
	out.Reason = reason
	out.FinishedAt = timestamppb.New(now)
	if st == v1.RolloutState_ROLLOUT_STATE_FAILED {
		out.FailedAt = timestamppb.New(now)
		for _, w := range out.Waves {
			if w == nil || w.State == v1.WaveState_WAVE_STATE_DONE {
				continue
			}
			if w.State == v1.WaveState_WAVE_STATE_PROGRESSING || w.State == v1.WaveState_WAVE_STATE_BAKING {
				w.State = v1.WaveState_WAVE_STATE_FAILED
				w.DoneAt = timestamppb.New(now)
			}
			break
		}
	}
	return out
}

// Restored reports whether every host a FAILED rollout moved (any host not
// PENDING in its plan) is connected and reports running a good release
// again: from_version (or, when the rollout had no from_version, anything
// but to_version), not in the middle of a change. After a config rollout
// (the same release) the host must report a generation newer than the
// rollout's: the stable release with the last good spec. A rollout that is not
// FAILED, or that already records restored_at, is not restored again.
func Restored(r *v1.Rollout, obs func(hostID string) Observation) bool {
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || r.GetRestoredAt() != nil || r.GetRemove() {
		return false
	}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING || h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UNSPECIFIED {
				continue
			}
			o := obs(h.GetHostId())
			rep := o.Report
			if !o.Connected || rep == nil {
				return false
			}
			cur := rep.GetCurrentVersion()
			if IsConfig(r) {
				// The same release: back on the last good spec once the host
				// took the assignment after the failure (a newer generation).
				if cur != r.GetFromVersion() || rep.GetGeneration() <= r.GetGeneration() {
					return false
				}
			} else if cur == r.GetToVersion() || (r.GetFromVersion() != "" && cur != r.GetFromVersion()) {
				return false
			}
			switch rep.GetPhase() {
			case v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_IDLE:
			default:
				return false
			}
		}
	}
	return true
}

// Want is what one host should be assigned for a service: a release at a
// generation, or to remove the service.
type Want struct {
	Version    string
	Generation int64
	// Remove: stop the service and remove its files (Version is "").
	Remove bool
	// Replaces is the generation the host reports when no coordinator of
	// the fleet issued it (far above Generation: MaxGenerationAhead), which
	// the assignment replaces (0 = none).
	Replaces int64
}

func (w Want) String() string {
	s := fmt.Sprintf("%s gen %d", w.Version, w.Generation)
	if w.Remove {
		s = fmt.Sprintf("remove gen %d", w.Generation)
	}
	if w.Replaces != 0 {
		s += fmt.Sprintf(" replaces %d", w.Replaces)
	}
	return s
}

// Desired is what host hostID (with labels, and rep its last report for
// the service, nil if none) should be assigned for svc given the service's
// newest rollout r (may be nil or terminal). ok=false means no assignment.
//
//   - A host r (in flight) has moved (not PENDING in its plan): r's target
//     at r's generation, or, for a removal, to remove the service.
//   - A service being removed: a host its removal reached (also after the
//     removal failed) removes it; one it has not reached yet keeps the
//     stable release; any other host that has the service removes it.
//   - Otherwise a selected host (or one in the plan of r in flight, which
//     it follows to its end) gets the stable release at the stable
//     generation once there is one.
//   - A host that has the service and that a selector change left out (the
//     placement selects it, the live selector does not) keeps the stable
//     release until a removal of such hosts reaches it (remove.go).
//   - A host that has the service (its report says it runs, installs,
//     failed or is removing it) but should not (not selected, or the
//     service is deleted) removes it, at a generation above any it may
//     hold (one above the highest of its report's, the stable one and the
//     newest rollout's; the one it reports when it is already removing).
//     Removal takes a host out of the service's generations: an agent
//     whose service is REMOVED takes any later assignment.
//   - A host that reports a generation no coordinator of the fleet issued
//     (more than MaxGenerationAhead above the one it is assigned) is
//     assigned as any other, naming that generation as the one the
//     assignment replaces (Want.Replaces).
//
// It scans r's plan; to ask for many hosts use DesiredFunc.
func Desired(svc *v1.Service, r *v1.Rollout, hostID string, labels map[string]string, rep *v1.ServiceReport) (Want, bool) {
	if planIndexed(r) {
		for _, w := range r.GetWaves() {
			for _, h := range w.GetHosts() {
				if h.GetHostId() == hostID {
					return desired(svc, r, h.GetState(), true, labels, rep)
				}
			}
		}
	}
	return desired(svc, r, 0, false, labels, rep)
}

// DesiredFunc returns Desired for svc and r with the plan indexed once, for
// callers that ask about many hosts (after Conclude, or when a rollout
// starts). svc and r must not change while the function is in use.
func DesiredFunc(svc *v1.Service, r *v1.Rollout) func(hostID string, labels map[string]string, rep *v1.ServiceReport) (Want, bool) {
	var idx map[string]v1.HostRolloutState
	if planIndexed(r) {
		idx = make(map[string]v1.HostRolloutState, countHosts(r))
		for _, w := range r.GetWaves() {
			for _, h := range w.GetHosts() {
				if _, dup := idx[h.GetHostId()]; !dup {
					idx[h.GetHostId()] = h.GetState()
				}
			}
		}
	}
	return func(hostID string, labels map[string]string, rep *v1.ServiceReport) (Want, bool) {
		st, inPlan := idx[hostID]
		return desired(svc, r, st, inPlan, labels, rep)
	}
}

// planIndexed reports whether r's plan decides what its hosts run: while it
// is in flight, and for a removal also after it ended.
func planIndexed(r *v1.Rollout) bool {
	return r != nil && (!Terminal(r) || r.GetRemove())
}

func desired(svc *v1.Service, r *v1.Rollout, st v1.HostRolloutState, inPlan bool, labels map[string]string, rep *v1.ServiceReport) (Want, bool) {
	moved := inPlan && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_UNSPECIFIED
	w, ok := want(svc, r, moved, inPlan, labels, rep)
	return replacing(w, ok, rep, moved && w.Generation == r.GetGeneration())
}

// want is desired without the generation a host's assignment replaces.
func want(svc *v1.Service, r *v1.Rollout, moved, inPlan bool, labels map[string]string, rep *v1.ServiceReport) (Want, bool) {
	if moved && !Terminal(r) && !r.GetRemove() {
		return Want{Version: r.GetToVersion(), Generation: r.GetGeneration()}, true
	}
	status := svc.GetStatus()
	stable, hasStable := Want{Version: status.GetStableVersion(), Generation: status.GetStableGeneration()}, status.GetStableVersion() != ""
	removeIfHas := func(rep *v1.ServiceReport) (Want, bool) {
		return removeIfHas(rep, max(status.GetStableGeneration(), r.GetGeneration()))
	}
	left := inPlan && r.GetLeft()
	switch {
	case status.GetRemoved():
		return removeIfHas(rep)
	case status.GetRemoving() || r.GetRemove() && !Terminal(r) && (!r.GetLeft() || left):
		if inPlan && r.GetRemove() {
			if moved {
				return Want{Remove: true, Generation: r.GetGeneration()}, true
			}
			if hasStable {
				return stable, true // its wave has not come yet
			}
		}
		return removeIfHas(rep)
	case hasStable && (Selects(svc.GetSpec().GetSelector(), labels) || inPlan && !Terminal(r)):
		// Selected; or in the plan of the rollout in flight, which it
		// follows to its end (the plan is fixed when the rollout starts).
		return stable, true
	case hasStable && Selects(Placement(svc), labels) && hasService(rep) && !(left && moved):
		// Left out by a selector change: it keeps the stable release until
		// a removal reaches it (remove.go).
		return stable, true
	}
	return removeIfHas(rep)
}

// removeIfHas is a removal for a host whose report says it has the service
// (nothing when it never had it or removed it), above floor (the
// service's newest generation) and above the report's generation unless
// no coordinator issued that one (it replaces it then: replacing).
func removeIfHas(rep *v1.ServiceReport, floor int64) (Want, bool) {
	switch rep.GetPhase() {
	case v1.Phase_PHASE_UNSPECIFIED, v1.Phase_PHASE_IDLE, v1.Phase_PHASE_REMOVED:
		return Want{}, false
	case v1.Phase_PHASE_REMOVING:
		return Want{Remove: true, Generation: rep.GetGeneration()}, true
	}
	if madeUp(rep.GetGeneration(), floor+1) {
		return Want{Remove: true, Generation: floor + 1}, true
	}
	return Want{Remove: true, Generation: max(rep.GetGeneration(), floor) + 1}, true
}

// Conclude returns the new ServiceStatus (a copy) after r became terminal
// (for a removal see remove.go: deleted on success; otherwise the stable
// generation + 1, still removing, and frozen on failure):
//   - SUCCEEDED: stable = (to_version, r.generation);
//   - FAILED: stable = (from_version, r.generation+1), frozen = true,
//     frozen_reason = r.reason (so every host that moved is assigned last
//     good with a newer generation);
//   - SUPERSEDED: stable = (from_version, r.generation+1), not frozen.
//
// last_rollout_id is r.id; other fields (frozen after a success, rollout_seq)
// are kept. Calling it on a non-terminal (or nil) rollout returns st itself,
// unchanged. st may be nil.
func Conclude(st *v1.ServiceStatus, r *v1.Rollout) *v1.ServiceStatus {
	if r == nil || !Terminal(r) {
		return st
	}
	out := &v1.ServiceStatus{}
	if st != nil {
		out = proto.Clone(st).(*v1.ServiceStatus)
	}
	switch r.GetState() {
	case v1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
		if r.GetLeft() {
			// The hosts left out are removed: the live selector (the
			// removal's copy) is the placement now.
			out.StableGeneration = r.GetGeneration()
			if out.StableSpec != nil {
				out.StableSpec = proto.Clone(out.StableSpec).(*v1.ServiceSpec)
				out.StableSpec.Selector = r.GetSpec().GetSelector()
			}
			break
		}
		if r.GetRemove() {
			concludeRemoved(out, r)
			break
		}
		out.StableVersion = r.GetToVersion()
		out.StableGeneration = r.GetGeneration()
		if r.GetSpec() != nil {
			out.StableSpec = keepPlacement(r.GetSpec(), st)
			out.StableSpecRevision = r.GetSpecRevision()
		}
	case v1.RolloutState_ROLLOUT_STATE_FAILED:
		if r.GetRemove() {
			// The hosts it reached stay removed, the others keep the stable
			// release (Desired, a newer generation, so the next removal's
			// is above this one's): frozen until a person looks and deletes
			// again.
			out.StableGeneration = r.GetGeneration() + 1
			out.Frozen = true
			out.FrozenReason = r.GetReason()
			break
		}
		out.StableVersion = r.GetFromVersion()
		out.StableGeneration = r.GetGeneration() + 1
		out.Frozen = true
		out.FrozenReason = r.GetReason()
	case v1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
		if r.GetRemove() {
			out.StableGeneration = r.GetGeneration() + 1 // the hosts it reached stay removed (Desired)
			break
		}
		out.StableVersion = r.GetFromVersion()
		out.StableGeneration = r.GetGeneration() + 1
	}
	out.LastRolloutId = r.GetId()
	return out
}

// keepPlacement is sp as a new stable spec: with the placement of st (the
// old status; nil or without a stable spec: sp's own selector), which only
// a removal of the hosts a selector leaves out changes (remove.go).
func keepPlacement(sp *v1.ServiceSpec, st *v1.ServiceStatus) *v1.ServiceSpec {
	if st.GetStableSpec() == nil || sameLabels(sp.GetSelector(), st.GetStableSpec().GetSelector()) {
		return sp
	}
	out := proto.Clone(sp).(*v1.ServiceSpec)
	out.Selector = st.GetStableSpec().GetSelector()
	return out
}

// SpecFor is the spec (and its revision) a host assigned (version,
// generation) by Desired runs with: the copy of the rollout in flight for
// its target, else the stable spec (after a success, the rollout's copy or
// a later spec recorded without a rollout), else (for services whose stable
// release predates spec copies) the rollout's copy or the live spec.
func SpecFor(svc *v1.Service, r *v1.Rollout, version string, generation int64) (*v1.ServiceSpec, int64) {
	stable := svc.GetStatus().GetStableSpec()
	if r != nil && r.GetSpec() != nil && version == r.GetToVersion() && generation == r.GetGeneration() && (!Terminal(r) || stable == nil) {
		return r.GetSpec(), r.GetSpecRevision()
	}
	if stable != nil {
		return stable, svc.GetStatus().GetStableSpecRevision()
	}
	return svc.GetSpec(), svc.GetSpecRevision()
}
