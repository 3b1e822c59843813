package rollout

import (
	"fmt"
	"strings"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

// Config rollouts. A spec applied to a service gets the next spec revision
// (the store numbers them). What it changes decides what happens, by the
// one rule of package specdiff:
//
//   - it changes what runs on hosts (run, checks, analysis, ...): a config
//     rollout rolls the stable release out again with the new spec, through
//     the same canary, waves, gates, failure budget and local revert as a
//     release (unless a newer release is waiting: its rollout carries the
//     new spec anyway). A failed config rollout freezes the service and
//     every host that moved is assigned the stable release with the last
//     good spec (a newer generation of it); a failed spec is never retried:
//     only a spec applied later (a higher revision) starts another.
//   - it changes only what the coordinator reads (rollout policy, alerts)
//     or which hosts are selected: no rollout; once no rollout is in flight
//     the spec becomes the stable spec (ActionRecordSpec).
//
// A spec applied while a rollout is in flight is treated like a release
// created then (Decide): it supersedes a rollout waiting for approval (the
// rollout is planned again to the same release with the new spec, so an
// approval always ships the newest release with the newest spec), and a
// progressing one unless the policy queues (on_new_release: queue), a
// rollback runs, or the service is frozen: then it waits for the rollout
// to end. In manual mode a config rollout waits for approval like any
// other.

// IsConfig reports whether r is a config rollout: the stable release rolled
// out again with another spec (not a rollback or a removal).
func IsConfig(r *v1.Rollout) bool {
	return r != nil && !r.GetRollback() && !r.GetRemove() && r.GetToVersion() != "" &&
		r.GetFromVersion() == r.GetToVersion() && r.GetSpecRevision() != r.GetFromSpecRevision()
}

// SpecName names spec revision n: "spec 4", or "an unnumbered spec" for
// specs stored before revisions were numbered (0).
func SpecName(n int64) string {
	if n <= 0 {
		return "an unnumbered spec"
	}
	return fmt.Sprintf("spec %d", n)
}

// Describe names what a rollout changes, for events, logs, the CLI and the
// dashboard: "v4 → v5", "v5 with spec 4 → spec 5" (a config rollout),
// "remove (was v5)" (a removal) or "agent v0.1.0 → v0.2.0" (an agent
// upgrade; "agent (none) → v0.2.0" for the first, whose hosts ran binaries
// installed by hand).
func Describe(r *v1.Rollout) string {
	switch {
	case r.GetService() == spec.AgentService:
		return "agent " + orNone(r.GetFromVersion()) + " → " + r.GetToVersion()
	case r.GetLeft():
		return "remove from the hosts the selector left (runs " + orNone(r.GetFromVersion()) + ")"
	case r.GetRemove():
		return "remove (was " + orNone(r.GetFromVersion()) + ")"
	case IsConfig(r):
		return fmt.Sprintf("%s with %s → %s", r.GetFromVersion(), SpecName(r.GetFromSpecRevision()), SpecName(r.GetSpecRevision()))
	}
	return orNone(r.GetFromVersion()) + " → " + r.GetToVersion()
}

// targetName names what hosts of r are moved to: "v5", or "v5 with spec 5"
// for a config rollout.
func targetName(r *v1.Rollout) string {
	if r.GetRemove() {
		return "removal"
	}
	if IsConfig(r) {
		return r.GetToVersion() + " with " + SpecName(r.GetSpecRevision())
	}
	return r.GetToVersion()
}

// describeChanges is " (changes run.env, checks)", or "" when the rollout
// changes nothing of the spec hosts run; a change applied in place (how
// the release is judged, its resource limits) says so (InPlaceNote).
func describeChanges(r *v1.Rollout) string {
	if len(r.GetSpecChanges()) == 0 {
		return ""
	}
	if n := InPlaceNote(r); n != "" {
		return " (changes " + strings.Join(r.GetSpecChanges(), ", ") + "; " + n + ")"
	}
	return " (changes " + strings.Join(r.GetSpecChanges(), ", ") + ")"
}

// InPlaceNote says how hosts apply a config rollout applied in place
// (Rollout.in_place: specdiff.InPlace), or is "" for any other rollout: a
// judging-only one, or one that changes the resource limits (possibly
// with how the release is judged), which hosts write to the running
// process's cgroup.
func InPlaceNote(r *v1.Rollout) string {
	if !r.GetInPlace() {
		return ""
	}
	for _, c := range r.GetSpecChanges() {
		if c == "resources" || strings.HasPrefix(c, "resources.") {
			return "resources: hosts healthy on " + r.GetToVersion() + " apply the new limits to the running process in place, no restart"
		}
	}
	return "judging only: hosts healthy on " + r.GetToVersion() + " apply it in place, no restart"
}

// specPending reports whether svc's spec is newer than what rollout r (nil:
// none) was created with and changes what hosts run compared with spec
// (the spec they would run otherwise).
func specPending(svc *v1.Service, r *v1.Rollout, than *v1.ServiceSpec) bool {
	return svc.GetSpecRevision() > r.GetAppliedSpecRevision() && specdiff.HostAffecting(than, svc.GetSpec())
}

// RecordSpec returns svc's status with its live spec recorded as the
// stable spec, for ActionRecordSpec (the spec changes nothing on hosts).
func RecordSpec(svc *v1.Service) *v1.ServiceStatus {
	st := &v1.ServiceStatus{}
	if svc.GetStatus() != nil {
		st = proto.Clone(svc.GetStatus()).(*v1.ServiceStatus)
	}
	st.StableSpec = keepPlacement(proto.Clone(svc.GetSpec()).(*v1.ServiceSpec), svc.GetStatus())
	st.StableSpecRevision = svc.GetSpecRevision()
	return st
}

// SpecRecorded is the message of the EventSpecRecorded event, for svc
// before RecordSpec.
func SpecRecorded(svc *v1.Service) string {
	d := specdiff.Diff(svc.GetStatus().GetStableSpec(), svc.GetSpec())
	what := append(append([]string(nil), d.Coordinator...), d.Placement...)
	return fmt.Sprintf("%s recorded without a rollout: it changes %s, nothing hosts run (the stable release runs with it as it is)",
		SpecName(svc.GetSpecRevision()), strings.Join(what, ", "))
}
