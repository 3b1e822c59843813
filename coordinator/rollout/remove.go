package rollout

import (
	"fmt"
	"sort"
	"strings"
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
	var sel []Host
	for _, h := range hosts {
		if Selects(svc.GetSpec().GetSelector(), h.Labels) {
			sel = append(sel, h)
		}
	}
	return newRemoval(id, svc, sel, now)
}

// newRemoval is a removal planned over exactly the hosts given.
func newRemoval(id string, svc *v1.Service, hosts []Host, now time.Time) *v1.Rollout {
	pol := WithDefaults(svc.GetSpec().GetRollout())
	fast := proto.Clone(svc).(*v1.Service)
	if st := svc.GetStatus().GetStableSpec(); st != nil {
		fast.Spec = proto.Clone(st).(*v1.ServiceSpec)
		fast.SpecRevision = svc.GetStatus().GetStableSpecRevision()
	}
	if fast.Spec == nil {
		fast.Spec = &v1.ServiceSpec{}
	}
	fast.Spec.Name = svc.GetSpec().GetName()
	fast.Spec.Selector = nil // planned over the hosts given
	fast.Spec.Rollout = &v1.RolloutPolicy{
		NoCanary:         true,
		Waves:            pol.GetWaves(),
		MaxParallel:      pol.GetMaxParallel(),
		Bake:             durationpb.New(0),
		MaxFailures:      uint32(len(hosts)),
		ProgressDeadline: pol.GetProgressDeadline(),
		Mode:             spec.ModeAuto,
	}
	r := New(id, fast, "", hosts, now)
	r.Spec.Selector = svc.GetSpec().GetSelector()
	r.Remove = true
	r.FromSpecRevision = r.GetSpecRevision()
	r.AppliedSpecRevision = svc.GetSpecRevision()
	r.SpecChanges = nil
	r.InPlace = false
	return r
}

// BeginRemoval is Begin for a removal (NewRemoval, and the hosts a
// selector change left out that have the service, Leaving): the status it returns
// says the service is removing (removed at once when no host is selected),
// removed_by is who asked; its creation event is EventRemovalCreated.
func BeginRemoval(svc *v1.Service, by string, hosts []Host, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, *v1.ServiceStatus, Result) {
	removing := proto.Clone(svc).(*v1.Service)
	if removing.Status == nil {
		removing.Status = &v1.ServiceStatus{}
	}
	removing.Status.Removing = true
	removing.Status.RemovedBy = by
	// Besides the selected hosts, those a selector change left out that
	// still have the service (a removal of them did not end).
	sel := Leaving(svc, hosts, obs)
	for _, h := range hosts {
		if Selects(svc.GetSpec().GetSelector(), h.Labels) {
			sel = append(sel, h)
		}
	}
	return begin(removing, newRemoval(NextID(svc), svc, sel, now), obs, now)
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

// Hosts a selector change leaves out. The stable spec's selector is the
// one the service's hosts were placed by (Placement); `service apply` with
// another selector changes only the live spec. Hosts the live selector
// selects get the stable release at once (they join); a host that has the
// service (by its report), that the placement selects and the live
// selector does not, keeps the stable release until a removal reaches it:
//
//   - With no rollout in flight (and the service not frozen), Decide says
//     ActionLeave before anything else (a waiting release or spec rolls
//     out after it, to the hosts that stay), and BeginLeave plans a
//     removal (left) of exactly those hosts through the policy's waves and
//     max_parallel, as `service delete` does; each gets a host_left event.
//     Its success records the live selector as the placement; with no such
//     host the selector is recorded at once (no rollout).
//   - A selector change never interrupts a rollout in flight: the hosts in
//     its plan follow it to its end (a spec applied with it waits too; a
//     newer release supersedes it as usual), then the removal runs.
//   - A removal of hosts left out runs to its end (only `rollout abort`,
//     which fails and freezes it, or `service delete --force` ends it
//     early); a failed one leaves the hosts it reached removed and the
//     others on the stable release, and runs again after `service
//     unfreeze`.
//   - A host whose own labels change (its agent says other ones at its
//     hello) so that neither the placement nor the live selector selects
//     it is told to remove the service at once: one host, no rollout.

// Placement is the selector svc's hosts were placed by: the stable spec's,
// or the live one's while there is no stable spec.
func Placement(svc *v1.Service) map[string]string {
	if st := svc.GetStatus().GetStableSpec(); st != nil {
		return st.GetSelector()
	}
	return svc.GetSpec().GetSelector()
}

// selectorPending reports whether svc's live selector differs from its
// placement.
func selectorPending(svc *v1.Service) bool {
	return svc.GetStatus().GetStableSpec() != nil && !sameLabels(Placement(svc), svc.GetSpec().GetSelector())
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// hasService reports whether a host's report says it has the service
// (runs, installs, failed or is removing it).
func hasService(rep *v1.ServiceReport) bool {
	switch rep.GetPhase() {
	case v1.Phase_PHASE_UNSPECIFIED, v1.Phase_PHASE_IDLE, v1.Phase_PHASE_REMOVED:
		return false
	}
	return true
}

// Leaving are the hosts svc's live selector leaves out that have the
// service and that its placement selects, by id.
func Leaving(svc *v1.Service, hosts []Host, obs func(hostID string) Observation) []Host {
	var out []Host
	for _, h := range hosts {
		if Selects(Placement(svc), h.Labels) && !Selects(svc.GetSpec().GetSelector(), h.Labels) && hasService(obs(h.ID).Report) {
			out = append(out, h)
		}
	}
	return out
}

// BeginLeave acts on ActionLeave: the removal (left) of the hosts Leaving
// names, begun as Begin does (its creation event EventRemovalCreated, then
// one EventHostLeft per host). prev is the newest rollout (nil if none):
// the removal carries no release or spec, so it keeps prev's applied spec
// revision. With no host leaving it returns no rollout and svc's status
// with the live selector recorded as the placement.
func BeginLeave(svc *v1.Service, prev *v1.Rollout, hosts []Host, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, *v1.ServiceStatus, Result) {
	left := Leaving(svc, hosts, obs)
	if len(left) == 0 {
		st := proto.Clone(svc.GetStatus()).(*v1.ServiceStatus)
		st.StableSpec.Selector = svc.GetSpec().GetSelector()
		return nil, st, Result{}
	}
	r := newRemoval(NextID(svc), svc, left, now)
	r.Left = true
	r.AppliedSpecRevision = prev.GetAppliedSpecRevision()
	r, st, res := begin(svc, r, obs, now)
	var evs []Event
	for _, h := range planOrder(nil, left) {
		evs = append(evs, Event{Kind: EventHostLeft, Wave: NoWave, Host: h, Message: fmt.Sprintf(
			"the selector %s no longer selects %s: the service is stopped and removed there in its wave of removal %s", FmtLabels(svc.GetSpec().GetSelector()), h, r.GetId())})
	}
	res.Events = append(res.Events[:1], append(evs, res.Events[1:]...)...)
	return r, st, res
}

// FmtLabels is "{k=v, ...}" in key order.
func FmtLabels(l map[string]string) string {
	kv := make([]string, 0, len(l))
	for k, v := range l {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return "{" + strings.Join(kv, ", ") + "}"
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
	case active.GetRemove() && !active.GetLeft():
		return DeleteInFlight, nil
	case !force:
		return 0, fmt.Errorf("service %s: rollout %s (%s) is %s: wait for it, abort it (fleetwave rollout abort %s), or delete with --force (it is superseded): %w",
			name, active.GetId(), Describe(active), stateName(active.GetState()), name, ErrState)
	}
	return DeleteSupersede, nil
}
