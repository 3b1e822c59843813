package rollout

import (
	"cmp"
	"slices"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// RetainArtifacts says which of svc's releases may have their artifacts
// pruned (Release.artifact_pruned_at marked by the leader,
// coordinator/leader_retain.go; the coordinators then delete the files no
// unpruned release names). releases are svc's releases (any order),
// rollouts its rollouts (oldest first, as the mirror lists them), reports
// what its hosts report of it. keep <= 0 prunes nothing. The releases
// returned are in the order given.
//
// It never returns: the newest keep releases (by created_at, then
// version); a release created at or after before (or with no created_at),
// or whose artifact was restored at or after before;
// the stable version and the version an override lets past its holds; both
// ends of every rollout not ended; every version a host reports running,
// moving to, or last good, and every release whose artifact a host
// reports staged; the release a rollback without --to would go to
// (RollbackTarget); a release whose artifact has a URL (the coordinators store
// nothing of it) or no sha256; and a release already marked.
//
// A release returned may share its sha256 with one kept: its mark is
// written, but the file stays while any release naming it is unmarked.
func RetainArtifacts(svc *v1.Service, releases []*v1.Release, rollouts []*v1.Rollout, reports []*v1.ServiceReport, keep int, before time.Time) []*v1.Release {
	if keep <= 0 || len(releases) <= keep {
		return nil
	}
	kept := map[string]bool{}
	newest := slices.Clone(releases)
	slices.SortFunc(newest, func(a, b *v1.Release) int {
		return cmp.Or(a.GetCreatedAt().AsTime().Compare(b.GetCreatedAt().AsTime()), cmp.Compare(a.GetVersion(), b.GetVersion()))
	})
	for _, r := range newest[len(newest)-keep:] {
		kept[r.GetVersion()] = true
	}
	st := svc.GetStatus()
	kept[st.GetStableVersion()] = true
	kept[st.GetHoldOverride().GetVersion()] = true
	for _, r := range rollouts {
		if !Terminal(r) {
			kept[r.GetFromVersion()], kept[r.GetToVersion()] = true, true
		}
	}
	staged := map[string]bool{}
	for _, rep := range reports {
		kept[rep.GetCurrentVersion()], kept[rep.GetTargetVersion()], kept[rep.GetLastGoodVersion()] = true, true, true
		staged[rep.GetStagedSha256()] = true
	}
	rels := make([]Release, len(releases))
	for i, r := range releases {
		rels[i] = Release{Version: r.GetVersion()}
	}
	// What a rollback without --to goes to: with a rollout in flight, the
	// stable version (kept above); without one (as once it ends), the
	// newest succeeded release other than the stable one.
	if v, err := RollbackTarget(svc, rollouts, nil, rels, ""); err == nil {
		kept[v] = true
	}
	delete(kept, "")
	delete(staged, "")
	var out []*v1.Release
	for _, r := range releases {
		art := r.GetArtifact()
		at := r.GetCreatedAt()
		switch {
		case kept[r.GetVersion()], staged[art.GetSha256()],
			art.GetUrl() != "", art.GetSha256() == "",
			r.GetArtifactPrunedAt() != nil,
			!at.IsValid(), !at.AsTime().Before(before),
			r.GetArtifactRestoredAt().IsValid() && !r.GetArtifactRestoredAt().AsTime().Before(before):
			continue
		}
		out = append(out, r)
	}
	return out
}
