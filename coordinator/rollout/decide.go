package rollout

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

// Release is what the policy needs of a service's release: its version and
// when it was created, as a logical clock (the etcd revision that created
// it, which no wall clock can disorder). Rollouts are compared on the same
// clock.
type Release struct {
	Version string
	Created int64
}

// Action names what Decide says to do about a service's newest release.
type Action int

const (
	// ActionNone: no release is waiting to roll out. A rollout in flight
	// (if any) is stepped as usual.
	ActionNone Action = iota
	// ActionWait: a release newer than the newest rollout exists but
	// cannot start now (Decision.Reason says why: a rollback in flight, the
	// queue policy, the freeze). A rollout in flight is stepped as usual.
	ActionWait
	// ActionSupersede: end the rollout in flight with Supersede(r,
	// Decision.Reason, now); then decide again (the newest release starts).
	ActionSupersede
	// ActionStart: no rollout is in flight; begin one to Decision.Version
	// (Begin; Decision.Config: a config rollout of the stable release with
	// the live spec).
	ActionStart
	// ActionRecordSpec: no rollout is in flight and the live spec differs
	// from the stable spec only in what the coordinator reads: store
	// RecordSpec's status (no rollout; nothing changes on hosts).
	ActionRecordSpec
	// ActionLeave: no rollout is in flight and the live selector differs
	// from the placement: begin the removal of the hosts it leaves out
	// (BeginLeave; see remove.go), before any release or spec.
	ActionLeave
)

func (a Action) String() string {
	switch a {
	case ActionNone:
		return "none"
	case ActionWait:
		return "wait"
	case ActionSupersede:
		return "supersede"
	case ActionStart:
		return "start"
	case ActionRecordSpec:
		return "record-spec"
	case ActionLeave:
		return "leave"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Decision is the rollout policy's answer for a service's newest release,
// in the manner of a planner's result: a value naming the action, acted on
// by the caller (the leader does the I/O).
type Decision struct {
	Action Action
	// Version is the newest release (the one to start, the one that
	// supersedes, the one that waits); "" when there is none.
	Version string
	// Reason is the superseded rollout's reason (ActionSupersede), or why
	// nothing starts (ActionWait, ActionNone) for logs and traces.
	Reason string
	// Config: the decision is about a newer spec, not a newer release
	// (ActionStart: a config rollout; ActionWait: the spec waits).
	Config bool
	// Replan (ActionSupersede for a newer spec): right after superseding,
	// begin a rollout to Version (the superseded rollout's target) with the
	// new spec, without deciding again.
	Replan bool
}

func (d Decision) String() string {
	var b strings.Builder
	b.WriteString(d.Action.String())
	if d.Version != "" {
		b.WriteString(" " + d.Version)
	}
	if d.Config {
		b.WriteString(" (config)")
	}
	if d.Replan {
		b.WriteString(" (replan)")
	}
	if d.Reason != "" {
		b.WriteString(": " + d.Reason)
	}
	return b.String()
}

// Decide says what to do about svc's newest release and newest spec, given
// the service's newest rollout r (nil if none) and the logical time
// rCreated it was created at, and the service's releases (any order). It is
// the whole "what rolls out when" policy:
//
//   - Only a release created after the newest rollout counts (so a release
//     whose rollout failed is never retried, and a rollback is not undone by
//     an older release); with no rollout yet, any release but the stable one.
//     The newest such release wins; older ones are skipped. Its rollout
//     carries the live spec.
//   - Likewise only a spec applied after the newest rollout was created (a
//     spec revision above its applied_spec_revision) that changes what
//     hosts run (specdiff) counts; with no newer release it starts a config
//     rollout of the stable release (see spec.go).
//   - A rollout waiting for approval moved no host: a newer release
//     supersedes it, so approve always ships the newest release; a newer
//     spec supersedes it and plans it again (Replan) with that spec.
//   - A progressing rollout is superseded by a newer release or spec unless
//     the policy queues it (on_new_release: queue), it is a rollback, or the
//     service is frozen; then the release or spec waits for it to end.
//   - With no rollout in flight, the newest release starts unless the
//     service is frozen (it waits for unfreeze) or it is the stable release;
//     else a newer spec that changes what hosts run starts a config rollout
//     (unless frozen), and one that does not is recorded as the stable spec
//     (ActionRecordSpec, also while frozen).
//   - A service being removed (removing or removed) starts nothing.
//   - A selector that leaves out hosts (remove.go): with nothing in flight
//     and not frozen, their removal starts first (ActionLeave); in flight,
//     a newer spec waits for the rollout to end (no supersede, so the
//     hosts left out never get a release or spec before their removal).
//     A removal of hosts left out runs to its end.
//
// r is the newest rollout that is not an ended removal of hosts left out
// (such a removal carries no release or spec; see Deciding).
func Decide(svc *v1.Service, r *v1.Rollout, rCreated int64, releases []Release) Decision {
	st := svc.GetStatus()
	if st.GetRemoving() || st.GetRemoved() {
		return Decision{Action: ActionNone, Reason: "service is being removed"}
	}
	newest, ok := newestRelease(releases)
	relPending := ok && (r == nil || newest.Created > rCreated)
	leave := selectorPending(svc)
	if r.GetLeft() && !Terminal(r) {
		if relPending || specPending(svc, r, st.GetStableSpec()) {
			return Decision{Action: ActionWait, Version: newest.Version, Config: !relPending,
				Reason: fmt.Sprintf("removal %s of the hosts the selector left runs to its end first", r.GetId())}
		}
		return Decision{Action: ActionNone, Reason: fmt.Sprintf("removal %s of the hosts the selector left is the newest", r.GetId())}
	}
	if r != nil && !Terminal(r) {
		v := newest.Version
		how := "release " + v
		if !relPending {
			if !specPending(svc, r, r.GetSpec()) {
				return Decision{Action: ActionNone, Reason: fmt.Sprintf("rollout %s to %s is the newest", r.GetId(), r.GetToVersion())}
			}
			v, how = r.GetToVersion(), SpecName(svc.GetSpecRevision())
		}
		d := Decision{Version: v, Config: !relPending}
		switch {
		case r.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL:
			d.Action, d.Reason = ActionSupersede, "superseded by "+how+" before approval"
		case r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING:
			d.Action, d.Reason = ActionWait, fmt.Sprintf("rollout %s to %s is %s", r.GetId(), r.GetToVersion(), stateName(r.GetState()))
		case r.GetRollback():
			d.Action, d.Reason = ActionWait, fmt.Sprintf("rollback %s to %s runs to its end first", r.GetId(), r.GetToVersion())
		case leave && !relPending:
			d.Action, d.Reason = ActionWait, fmt.Sprintf("the selector changed: %s waits for rollout %s to %s to end (then the hosts it leaves out are removed)", how, r.GetId(), r.GetToVersion())
		case st.GetFrozen():
			d.Action, d.Reason = ActionWait, "service is frozen: "+st.GetFrozenReason()
		case svc.GetSpec().GetRollout().GetOnNewRelease() == spec.OnNewReleaseQueue:
			d.Action, d.Reason = ActionWait, fmt.Sprintf("queued behind rollout %s to %s (on_new_release: %s)", r.GetId(), r.GetToVersion(), spec.OnNewReleaseQueue)
		default:
			d.Action, d.Reason = ActionSupersede, "superseded by "+how
		}
		// A newer spec plans the superseded rollout's release again, unless
		// that is the stable release and the spec runs on hosts as the
		// stable spec does (the hosts only go back).
		d.Replan = d.Action == ActionSupersede && d.Config && !leave &&
			(v != st.GetStableVersion() || specdiff.HostAffecting(st.GetStableSpec(), svc.GetSpec()))
		return d
	}
	if leave {
		if st.GetFrozen() {
			return Decision{Action: ActionWait, Reason: "the selector changed; service is frozen: " + st.GetFrozenReason()}
		}
		return Decision{Action: ActionLeave, Reason: fmt.Sprintf("the selector %s differs from %s, the one hosts were placed by", FmtLabels(svc.GetSpec().GetSelector()), FmtLabels(Placement(svc)))}
	}
	switch {
	case !relPending && r != nil:
		// Nothing released since the newest rollout: the spec decides.
	case !relPending:
		return Decision{Action: ActionNone, Reason: "no release"}
	case newest.Version == st.GetStableVersion():
		// The stable release: the spec decides.
	case st.GetFrozen():
		return Decision{Action: ActionWait, Version: newest.Version, Reason: "service is frozen: " + st.GetFrozenReason()}
	default:
		return Decision{Action: ActionStart, Version: newest.Version}
	}
	stable, stSpec := st.GetStableVersion(), st.GetStableSpec()
	switch {
	case stable == "" || stSpec == nil:
		// Nothing runs yet, or only with the live spec (stored before
		// stable specs were kept): the next release carries the spec.
	case specPending(svc, r, stSpec) && st.GetFrozen():
		return Decision{Action: ActionWait, Version: stable, Config: true, Reason: "service is frozen: " + st.GetFrozenReason()}
	case specPending(svc, r, stSpec):
		return Decision{Action: ActionStart, Version: stable, Config: true}
	case svc.GetSpecRevision() != st.GetStableSpecRevision() && !specdiff.HostAffecting(stSpec, svc.GetSpec()):
		return Decision{Action: ActionRecordSpec, Reason: SpecName(svc.GetSpecRevision()) + " changes nothing hosts run"}
	case svc.GetSpecRevision() != st.GetStableSpecRevision():
		return Decision{Action: ActionNone, Reason: fmt.Sprintf("%s is not newer than rollout %s (a failed spec is not retried, a rollback not undone); only a newer spec or release rolls out", SpecName(svc.GetSpecRevision()), r.GetId())}
	}
	if relPending {
		return Decision{Action: ActionNone, Reason: newest.Version + " is the stable release"}
	}
	return Decision{Action: ActionNone, Reason: fmt.Sprintf("no release since rollout %s", r.GetId())}
}

// Deciding reports whether r (a service's newest rollout) is the one
// Decide is given: not when it is an ended removal of hosts left out (it
// carries no release or spec): then the rollout before it (id one less)
// is, and so on.
func Deciding(r *v1.Rollout) bool {
	return !(r.GetLeft() && Terminal(r))
}

// PrevID is the id of the rollout before r (NextID's inverse), "" for the
// first.
func PrevID(r *v1.Rollout) string {
	var n int
	if _, err := fmt.Sscanf(r.GetId(), "%d", &n); err != nil || n <= 1 {
		return ""
	}
	return fmt.Sprintf("%06d", n-1)
}

// newestRelease is the release created last.
func newestRelease(releases []Release) (Release, bool) {
	var out Release
	for i, rel := range releases {
		if i == 0 || rel.Created > out.Created {
			out = rel
		}
	}
	return out, len(releases) > 0
}

// NextID is the id of svc's next rollout: its rollout_seq + 1, zero-padded
// so ids sort by number.
func NextID(svc *v1.Service) string {
	return fmt.Sprintf("%06d", svc.GetStatus().GetRolloutSeq()+1)
}

// Begin plans svc's next rollout to version `to` (New, with id NextID) and
// takes its first Step at once, so the plan and the first hosts assigned
// are one write. It returns the rollout, svc's new status naming it
// (rollout_seq + 1, last_rollout_id; concluded if the rollout ended at
// once, e.g. with no host selected) and the Result: Changed, the creation
// event (EventRolloutCreated) followed by the first Step's events, and
// NextWake. svc is not mutated.
func Begin(svc *v1.Service, to string, hosts []Host, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, *v1.ServiceStatus, Result) {
	return begin(svc, New(NextID(svc), svc, to, hosts, now), obs, now)
}

// BeginRollback is Begin for a rollback (NewRollback): its creation event
// is EventRollbackCreated.
func BeginRollback(svc *v1.Service, to string, hosts []Host, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, *v1.ServiceStatus, Result) {
	return begin(svc, NewRollback(NextID(svc), svc, to, hosts, now), obs, now)
}

func begin(svc *v1.Service, r *v1.Rollout, obs func(string) Observation, now time.Time) (*v1.Rollout, *v1.ServiceStatus, Result) {
	kind := EventRolloutCreated
	switch {
	case r.GetRollback():
		kind = EventRollbackCreated
	case r.GetRemove():
		kind = EventRemovalCreated
	}
	above := planAbove(r, obs)
	waves := make([]int, len(r.GetWaves()))
	for i, w := range r.GetWaves() {
		waves[i] = len(w.GetHosts())
	}
	created := Event{Kind: kind, Wave: NoWave, Message: fmt.Sprintf("%s%s, waves %v, %s",
		Describe(r), describeChanges(r), waves, strings.ToLower(stateName(r.GetState())))}
	if above != "" {
		created.Message += "; " + aboveMessage(r, above)
	}
	r, res := Step(r, obs, now)
	res.Changed = true
	res.Events = append([]Event{created}, res.Events...)

	st := &v1.ServiceStatus{}
	if svc.GetStatus() != nil {
		st = proto.Clone(svc.GetStatus()).(*v1.ServiceStatus)
	}
	st.RolloutSeq++
	st.LastRolloutId = r.GetId()
	return r, Conclude(st, r), res
}

// ErrRollback is wrapped by RollbackTarget's refusals.
var ErrRollback = errors.New("rollback refused")

// RollbackTarget is the release a rollback of svc goes to. requested is the
// operator's choice ("" = the release the service ran before); active is the
// rollout in flight (nil if none); rollouts are the service's rollouts,
// oldest first, and releases its releases.
//
// Without a request the target is the stable release when a rollout is in
// flight (and does not already go there), else the target of the newest
// SUCCEEDED rollout that is not the stable release. It refuses (wrapping
// ErrRollback): no such release; a version that is not a release of svc;
// the stable release when nothing is in flight (it already runs); and a
// release whose newest ended rollout FAILED; and while a removal of hosts
// a selector left out is in flight.
func RollbackTarget(svc *v1.Service, rollouts []*v1.Rollout, active *v1.Rollout, releases []Release, requested string) (string, error) {
	name, stable := svc.GetSpec().GetName(), svc.GetStatus().GetStableVersion()
	if st := svc.GetStatus(); st.GetRemoving() || st.GetRemoved() {
		return "", fmt.Errorf("%w: service %s: %w", ErrRollback, name, ErrRemoving)
	}
	// The history of a deleted incarnation of the name is not a target.
	for i := len(rollouts) - 1; i >= 0; i-- {
		if rollouts[i].GetRemove() && !rollouts[i].GetLeft() {
			rollouts = rollouts[i+1:]
			break
		}
	}
	if active != nil && Terminal(active) {
		active = nil
	}
	if active.GetLeft() {
		return "", fmt.Errorf("%w: service %s: removal %s of the hosts the selector left is in flight: wait for it, or abort it (fleetwave rollout abort %s)", ErrRollback, name, active.GetId(), name)
	}
	// A removal of hosts left out names no release.
	var named []*v1.Rollout
	for _, r := range rollouts {
		if !r.GetLeft() {
			named = append(named, r)
		}
	}
	rollouts = named
	target := requested
	if target == "" {
		if active != nil && stable != "" && active.GetToVersion() != stable {
			target = stable
		} else {
			for i := len(rollouts) - 1; i >= 0; i-- {
				r := rollouts[i]
				if r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED && r.GetToVersion() != stable {
					target = r.GetToVersion()
					break
				}
			}
		}
		if target == "" {
			return "", fmt.Errorf("%w: service %s has no earlier good release to roll back to (give one with --to)", ErrRollback, name)
		}
	}
	known := false
	for _, rel := range releases {
		known = known || rel.Version == target
	}
	if !known {
		return "", fmt.Errorf("%w: to_version: service %s has no release %q", ErrRollback, name, target)
	}
	if active == nil && target == stable {
		return "", fmt.Errorf("%w: to_version: service %s already runs %s", ErrRollback, name, target)
	}
	// Never roll back onto a release whose newest rollout failed.
	for i := len(rollouts) - 1; i >= 0; i-- {
		if r := rollouts[i]; r.GetToVersion() == target && Terminal(r) {
			if r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED {
				return "", fmt.Errorf("%w: to_version: %s failed in rollout %s (%s); refusing to roll back onto it", ErrRollback, target, r.GetId(), r.GetReason())
			}
			break
		}
	}
	return target, nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
