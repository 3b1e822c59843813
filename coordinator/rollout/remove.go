package rollout

import (
	"fmt"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Removing a service (`fleetwave service delete`). A removal is a rollout
// whose hosts are assigned to remove the service (Want.Remove) instead of a
// release: each host stops it (drained, as any stop) and removes its files,
// then reports REMOVED. It moves through the policy's waves and
// max_parallel, without a canary, bake or approval (the delete is the
// decision), and a host that fails to remove it shows as failed without
// stopping the others (a failure budget as large as the fleet); only the
// progress deadline (an unreachable host) fails it.
//
//   - While it runs the service is removing: no release, spec or rollback
//     starts (Decide says none), hosts it has not reached keep the stable
//     release, and no other host gets the service.
//   - SUCCEEDED: the service is deleted (status.removed): its record stays
//     as the history, with its rollouts, releases and events, and any host
//     that still has the service removes it (Desired). `service apply`
//     creates the name anew (store.ApplySpec), its rollout ids and
//     generations going on from the deleted one's.
//   - FAILED (the deadline, or an abort): the hosts it reached stay
//     removed, the others keep the stable release, the service stays
//     removing and is frozen; deleting again plans a new removal.

// NewRemoval builds the removal of svc over the hosts (selected by its
// selector): from_version the stable release, no to_version, generation
// stable + 1, the stable spec (what the hosts run, for display; its
// pre_stop and shutdown_delay are what the agents drain with, from their
// own copy), waves and max_parallel from the policy, no canary.
func NewRemoval(id string, svc *v1.Service, hosts []Host, now time.Time) *v1.Rollout {
	pol := WithDefaults(svc.GetSpec().GetRollout())
	n := 0
	for _, h := range hosts {
		if Selects(svc.GetSpec().GetSelector(), h.Labels) {
			n++
		}
	}
	fast := proto.Clone(svc).(*v1.Service)
	if st := svc.GetStatus().GetStableSpec(); st != nil {
		fast.Spec = proto.Clone(st).(*v1.ServiceSpec)
		fast.SpecRevision = svc.GetStatus().GetStableSpecRevision()
	}
	if fast.Spec == nil {
		fast.Spec = &v1.ServiceSpec{}
	}
	fast.Spec.Name = svc.GetSpec().GetName()
	fast.Spec.Selector = svc.GetSpec().GetSelector()
	fast.Spec.Rollout = &v1.RolloutPolicy{
		NoCanary:         true,
		Waves:            pol.GetWaves(),
		MaxParallel:      pol.GetMaxParallel(),
		Bake:             durationpb.New(0),
		MaxFailures:      uint32(n),
		ProgressDeadline: pol.GetProgressDeadline(),
		Mode:             spec.ModeAuto,
	}
	r := New(id, fast, "", hosts, now)
	r.Remove = true
	r.FromSpecRevision = r.GetSpecRevision()
	r.AppliedSpecRevision = svc.GetSpecRevision()
	r.SpecChanges = nil
	return r
}

// BeginRemoval is Begin for a removal (NewRemoval): the status it returns
// says the service is removing (removed at once when no host is selected),
// removed_by is who asked; its creation event is EventRemovalCreated.
func BeginRemoval(svc *v1.Service, by string, hosts []Host, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, *v1.ServiceStatus, Result) {
	removing := proto.Clone(svc).(*v1.Service)
	if removing.Status == nil {
		removing.Status = &v1.ServiceStatus{}
	}
	removing.Status.Removing = true
	removing.Status.RemovedBy = by
	return begin(removing, NewRemoval(NextID(svc), svc, hosts, now), obs, now)
}

// concludeRemoved marks st deleted after removal r succeeded.
func concludeRemoved(st *v1.ServiceStatus, r *v1.Rollout) {
	st.Removing = false
	st.Removed = true
	st.RemovedAt = r.GetFinishedAt()
	st.StableVersion = ""
	st.StableGeneration = r.GetGeneration()
	st.Frozen, st.FrozenReason = false, ""
}

// Recreate is the status of a deleted service applied again: a new
// service, whose rollout ids and generations go on from the deleted one's
// (so its history stays apart and no host is ever told an older
// generation), with the deleted one's newest rollout as its newest (so no
// release of the deleted service rolls out).
func Recreate(st *v1.ServiceStatus) *v1.ServiceStatus {
	return &v1.ServiceStatus{
		StableGeneration: st.GetStableGeneration(),
		RolloutSeq:       st.GetRolloutSeq(),
		LastRolloutId:    st.GetLastRolloutId(),
	}
}

// ErrRemoving is wrapped by refusals of what a service being removed or
// deleted cannot do.
var ErrRemoving = fmt.Errorf("service is being deleted")

// DeleteAction is what Delete says to do about `service delete`.
type DeleteAction int

const (
	// DeleteBegin: begin the removal (BeginRemoval).
	DeleteBegin DeleteAction = iota + 1
	// DeleteSupersede: end the rollout in flight with Supersede (deleted
	// by force), then begin the removal.
	DeleteSupersede
	// DeleteInFlight: a removal is in flight already; nothing to do.
	DeleteInFlight
)

// Delete says what `service delete` does for svc given the rollout in
// flight (nil or terminal: none): refused for a deleted service, and while
// a rollout (not a removal) is in flight unless force, with an error that
// names the rollout and the way out. A service whose removal failed may be
// deleted again.
func Delete(svc *v1.Service, active *v1.Rollout, force bool) (DeleteAction, error) {
	name := svc.GetSpec().GetName()
	if svc.GetStatus().GetRemoved() {
		return 0, fmt.Errorf("service %s is deleted already (at %s)", name, svc.GetStatus().GetRemovedAt().AsTime().UTC().Format(time.RFC3339))
	}
	switch {
	case active == nil || Terminal(active):
		return DeleteBegin, nil
	case active.GetRemove():
		return DeleteInFlight, nil
	case !force:
		return 0, fmt.Errorf("service %s: rollout %s (%s) is %s: wait for it, abort it (fleetwave rollout abort %s), or delete with --force (it is superseded): %w",
			name, active.GetId(), Describe(active), stateName(active.GetState()), name, ErrState)
	}
	return DeleteSupersede, nil
}
