package rollout

import (
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// RetainArtifacts says which of svc's releases may have their artifacts
// pruned (Release.artifact_pruned_at marked by the leader,
// coordinator/leader_retain.go; the coordinators then delete the files no
// unpruned release names). releases are svc's releases oldest first, in
// the order etcd created their records (the create revision, as the
// mirror lists them: coordinators' clocks differ, so created_at, set by
// whichever coordinator took the release create, does not order them),
// rollouts its rollouts (oldest first, as the mirror lists them), reports
// what its hosts report of it. keep <= 0 prunes nothing. The releases
// returned are in the order given.
//
// It never returns: a release needed (artifactNeeds: the newest keep
// releases, the stable version and the version an override lets past its
// holds; both ends of every rollout not ended; every version a host
// reports running, moving to, or last good, and every release whose
// artifact a host reports staged; the release a rollback without --to
// would go to, RollbackTarget); a release created at or after before (or
// with no created_at), or whose artifact was restored at or after before;
// a release whose artifact has a URL (the coordinators store nothing of
// it) or no sha256; and a release already marked.
//
// A release returned may share its sha256 with one kept: its mark is
// written, but the file stays while any release naming it is unmarked.
func RetainArtifacts(svc *v1.Service, releases []*v1.Release, rollouts []*v1.Rollout, reports []*v1.ServiceReport, keep int, before time.Time) []*v1.Release {
	if keep <= 0 || len(releases) <= keep {
		return nil
	}
	needed := artifactNeeds(svc, releases, rollouts, reports, keep)
	var out []*v1.Release
	for _, r := range releases {
		art := r.GetArtifact()
		switch {
		case needed(r),
			art.GetUrl() != "", art.GetSha256() == "",
			r.GetArtifactPrunedAt() != nil,
			!createdBefore(r, before),
			r.GetArtifactRestoredAt().IsValid() && !r.GetArtifactRestoredAt().AsTime().Before(before):
			continue
		}
		out = append(out, r)
	}
	return out
}

// RetainReleases says which of svc's release records may be deleted
// (coordinator/leader_retain.go deletes them and keeps a tombstone of
// each, store.DeleteRelease). Its arguments are RetainArtifacts'; before
// is now less the rollout retention (--rollout-retention). keep <= 0
// (--keep-release-artifacts 0: nothing is ever pruned) deletes nothing,
// and so does a zero before (nothing was created before it). The releases returned are in the order given.
//
// A release is returned only when all hold: its artifact is marked pruned
// (artifact_pruned_at) or is a URL (the coordinators hold nothing of it to
// prune: its record would otherwise be kept forever); it was created
// before before; nothing
// RetainArtifacts protects needs it now (artifactNeeds: a release marked
// long ago can be needed again, as a host that was away for months
// reports running it); and no rollout still stored, ended or not, names
// it as its from or to version (a kept rollout's history still resolves).
func RetainReleases(svc *v1.Service, releases []*v1.Release, rollouts []*v1.Rollout, reports []*v1.ServiceReport, keep int, before time.Time, topSigned *v1.Release) []*v1.Release {
	if keep <= 0 || len(releases) <= keep {
		return nil
	}
	needed := artifactNeeds(svc, releases, rollouts, reports, keep)
	named := map[string]bool{}
	for _, r := range rollouts {
		named[r.GetFromVersion()], named[r.GetToVersion()] = true, true
	}
	var out []*v1.Release
	for _, r := range releases {
		if (r.GetArtifactPrunedAt() == nil && r.GetArtifact().GetUrl() == "") || !createdBefore(r, before) || needed(r) || named[r.GetVersion()] || r == topSigned {
			continue
		}
		out = append(out, r)
	}
	return out
}

// createdBefore reports whether r has a created_at and it is before t.
func createdBefore(r *v1.Release, t time.Time) bool {
	at := r.GetCreatedAt()
	return at.IsValid() && at.AsTime().Before(t)
}

// artifactNeeds says which of svc's releases (oldest first, as
// RetainArtifacts takes them) something needs the artifact of: the newest
// keep (by position: the order etcd created them); the stable version and
// the version an override lets past its holds; both ends of every rollout
// not ended; every version a host reports running, moving to, or last
// good, and every release whose artifact a host reports staged; and the
// release a rollback without --to would go to (RollbackTarget).
func artifactNeeds(svc *v1.Service, releases []*v1.Release, rollouts []*v1.Rollout, reports []*v1.ServiceReport, keep int) func(*v1.Release) bool {
	kept := map[string]bool{}
	for _, r := range releases[max(len(releases)-keep, 0):] {
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
	return func(r *v1.Release) bool { return kept[r.GetVersion()] || staged[r.GetArtifact().GetSha256()] }
}
