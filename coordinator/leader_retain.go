package coordinator

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// maxRolloutPrunes bounds the writes (compactions and deletions) of one
// pass: a rollout's end (for its service) or a periodic pass (over every
// service), so that the first passes over long histories (a coordinator
// upgraded to one that prunes) do not hold the loop for long: the rest
// follows at the next passes (pruneAudit's, every auditPruneEvery, and
// each rollout's end).
const maxRolloutPrunes = 100

// pruneRollouts compacts the service's ended rollouts beyond its newest
// Config.KeepRolloutHosts (their hosts replaced by per-wave summaries:
// rollout.Compact), once every registered coordinator reads compacted
// rollouts, and deletes those that finished more than
// Config.RolloutRetention before now, never one that a reader of hosts or
// a rollback needs (rollout.Retain). Fenced writes, each compared with the
// revision the mirror holds; failures are logged and retried at the next
// pass. It writes at most budget times and returns how many it wrote, and
// store.ErrNotLeader (wrapped) when leadership is lost.
func (l *leader) pruneRollouts(ctx context.Context, fence *store.Fence, name string, now time.Time, budget int) (int, error) {
	vs, ok := l.c.mirror.Service(name)
	if !ok {
		return 0, nil
	}
	keep := l.c.cfg.KeepRolloutHosts
	if l.c.compactUnreader() != "" {
		keep = 0 // not while a coordinator that would misread them is registered
	}
	ret := rollout.Retain(vs.Val, l.c.mirror.Rollouts(name), keep, now.Add(-l.c.cfg.RolloutRetention))
	var last int64
	compacted, deleted, writes := 0, 0, 0
	var failed error
	for _, r := range ret.Delete {
		if writes == budget {
			break
		}
		vr, ok := l.c.mirror.Rollout(name, r.GetId())
		if !ok {
			continue
		}
		writes++
		rev, err := l.c.store.DeleteRollout(ctx, fence, store.RolloutBase{Rollout: vr.Val, Rev: vr.Rev, Layout: l.c.mirror.RolloutLayout(name, r.GetId())})
		if err != nil {
			if errors.Is(err, store.ErrNotLeader) {
				return writes, err
			}
			failed = err
			continue
		}
		last, deleted = max(last, rev), deleted+1
	}
	for _, r := range ret.Compact {
		if writes == budget {
			break
		}
		vr, ok := l.c.mirror.Rollout(name, r.GetId())
		if !ok {
			continue
		}
		writes++
		rev, err := l.c.store.CompactRollout(ctx, fence, rollout.Compact(vr.Val), store.RolloutBase{Rollout: vr.Val, Rev: vr.Rev, Layout: l.c.mirror.RolloutLayout(name, r.GetId())})
		if err != nil {
			if errors.Is(err, store.ErrNotLeader) {
				return writes, err
			}
			failed = err
			continue
		}
		last, compacted = max(last, rev), compacted+1
	}
	if failed != nil {
		l.c.log.Warn().Err(failed).Str("service", name).Msg("pruning old rollouts failed")
	}
	if compacted > 0 || deleted > 0 {
		l.c.log.Info().Str("service", name).Int("compacted", compacted).Int("keep_hosts", l.c.cfg.KeepRolloutHosts).
			Int("deleted", deleted).Dur("retention", l.c.cfg.RolloutRetention).Msg("old rollouts pruned")
	}
	if last == 0 {
		return writes, nil
	}
	// The next pass, and the loop's reads, see what was pruned.
	return writes, l.c.mirror.WaitRev(ctx, last)
}

// pruneEnded prunes the service's rollouts once one of them ended (its
// write committed): history only, so a failure, a lost leadership
// included (the loop meets it at its next write), is logged, never the
// ended rollout's write's error (an approve or an abort that committed
// would be reported failed).
func (l *leader) pruneEnded(ctx context.Context, fence *store.Fence, name string) {
	if _, err := l.pruneRollouts(ctx, fence, name, l.pruneNow(), maxRolloutPrunes); err != nil && ctx.Err() == nil {
		l.c.log.Warn().Err(err).Str("service", name).Msg("pruning old rollouts failed")
	}
}

// pruneAllRollouts runs pruneRollouts for every service, so that a quiet
// service's rollouts are deleted by age too.
func (l *leader) pruneAllRollouts(ctx context.Context, fence *store.Fence, now time.Time) {
	budget := maxRolloutPrunes
	for _, vs := range l.c.mirror.Services() {
		if budget == 0 {
			return
		}
		n, err := l.pruneRollouts(ctx, fence, vs.Val.GetSpec().GetName(), now, budget)
		budget -= n
		if err != nil {
			if !errors.Is(err, store.ErrNotLeader) && ctx.Err() == nil {
				l.c.log.Warn().Err(err).Str("service", vs.Val.GetSpec().GetName()).Msg("pruning old rollouts failed")
			}
			return
		}
	}
}

// maxArtifactMarks bounds the releases one periodic pass marks pruned
// (over every service): the rest follow at the next passes.
const maxArtifactMarks = 100

// pruneAllArtifacts marks pruned (Release.artifact_pruned_at) the
// artifacts of every service's releases that rollout.RetainArtifacts
// lets go: beyond the service's newest Config.KeepReleaseArtifacts, older
// than Config.ReleaseArtifactMinAge, needed by nothing. Each mark is a
// fenced write compared with the revision the mirror holds; failures are
// logged and retried at the next pass. The files go on every coordinator
// (pruneArtifactFiles) once every release naming them is marked.
func (l *leader) pruneAllArtifacts(ctx context.Context, fence *store.Fence, now time.Time) {
	keep := l.c.cfg.KeepReleaseArtifacts
	if keep <= 0 || l.c.pruneUnhonored() != "" {
		return // not while a coordinator that would copy and serve them is registered
	}
	// The decision reads the mirror: it must hold every write made before
	// this pass (a new leader's first pass, its mirror behind, would not
	// see a rollback the last leader began to an old release and mark it;
	// the last leader's writes are fenced off by now, so none comes after).
	if err := l.c.mirror.Sync(ctx); err != nil {
		l.c.log.Warn().Err(err).Msg("marking release artifacts pruned: the mirror did not catch up; next pass")
		return
	}
	budget := maxArtifactMarks
	var last int64
	for _, vs := range l.c.mirror.Services() {
		name := vs.Val.GetSpec().GetName()
		rels, revs := l.storedReleases(name)
		for _, rel := range rollout.RetainArtifacts(vs.Val, rels, l.c.mirror.Rollouts(name), l.c.mirror.ServiceReports(name), keep, now.Add(-l.c.cfg.ReleaseArtifactMinAge)) {
			if budget == 0 {
				break
			}
			budget--
			marked := proto.Clone(rel).(*v1.Release)
			// When it was marked, by the wall clock (now, the time it is
			// judged at, is a test's clock in tests).
			marked.ArtifactPrunedAt = timestamppb.Now()
			rev, err := l.c.store.UpdateRelease(ctx, fence, marked, revs[rel])
			if err != nil {
				if errors.Is(err, store.ErrNotLeader) || ctx.Err() != nil {
					return
				}
				l.c.log.Warn().Err(err).Str("service", name).Str("version", rel.GetVersion()).Str("sha256", rel.GetArtifact().GetSha256()).Msg("marking a release's artifact pruned failed")
				continue
			}
			last = max(last, rev)
			l.c.log.Info().Str("service", name).Str("version", rel.GetVersion()).Str("sha256", rel.GetArtifact().GetSha256()).
				Int("keep", keep).Dur("min_age", l.c.cfg.ReleaseArtifactMinAge).Msg("release artifact pruned")
		}
	}
	if last == 0 {
		return
	}
	// The loop's next decisions (a rollback refused) see the marks.
	if err := l.c.mirror.WaitRev(ctx, last); err != nil && ctx.Err() == nil {
		l.c.log.Warn().Err(err).Msg("marking release artifacts pruned: the mirror did not catch up")
	}
}

// storedReleases returns the service's releases as the mirror holds them,
// oldest first in the order etcd created them (what rollout.RetainArtifacts
// and rollout.RetainReleases take), and the mod revision of each.
func (l *leader) storedReleases(service string) ([]*v1.Release, map[*v1.Release]int64) {
	vrs := l.c.mirror.Releases(service)
	rels := make([]*v1.Release, len(vrs))
	revs := make(map[*v1.Release]int64, len(vrs))
	for i, vr := range vrs {
		rels[i], revs[vr.Val] = vr.Val, vr.Rev
	}
	return rels, revs
}

// maxReleaseDeletes bounds the release records one periodic pass deletes
// (over every service): the rest follow at the next passes.
const maxReleaseDeletes = 100

// pruneAllReleases deletes the records of every service's releases that
// rollout.RetainReleases lets go: their artifacts pruned (or URLs), created more than
// Config.RolloutRetention before now, needed by nothing and named by no
// stored rollout; never with --keep-release-artifacts 0. Each deletion
// writes the release's tombstone (store.DeleteRelease: its version is
// never created again with another artifact) in the same fenced
// transaction, compared with the revision the mirror holds; failures are
// logged and retried at the next pass.
func (l *leader) pruneAllReleases(ctx context.Context, fence *store.Fence, now time.Time) {
	keep := l.c.cfg.KeepReleaseArtifacts
	if keep <= 0 || l.c.pruneUnhonored() != "" || l.c.tombstoneUnhonored() != "" {
		return // not while a coordinator that would create a deleted version anew with another artifact is registered
	}
	// As pruneAllArtifacts: decide on a mirror that holds every write made
	// before this pass (a rollout the last leader began that names one).
	if err := l.c.mirror.Sync(ctx); err != nil {
		l.c.log.Warn().Err(err).Msg("deleting old releases: the mirror did not catch up; next pass")
		return
	}
	before := now.Add(-l.c.cfg.RolloutRetention)
	budget := maxReleaseDeletes
	var last int64
	for _, vs := range l.c.mirror.Services() {
		name := vs.Val.GetSpec().GetName()
		rels, revs := l.storedReleases(name)
		top := signing.HighestClaimed(rels)
		for _, rel := range rollout.RetainReleases(vs.Val, rels, l.c.mirror.Rollouts(name), l.c.mirror.ServiceReports(name), keep, before, top) {
			if budget == 0 {
				break
			}
			budget--
			// When it was deleted, by the wall clock (now, the time it is
			// judged at, is a test's clock in tests).
			rev, err := l.c.store.DeleteRelease(ctx, fence, rel, revs[rel], time.Now())
			if err != nil {
				if errors.Is(err, store.ErrNotLeader) || ctx.Err() != nil {
					return
				}
				l.c.log.Warn().Err(err).Str("service", name).Str("version", rel.GetVersion()).Str("sha256", rel.GetArtifact().GetSha256()).Msg("deleting an old release failed")
				continue
			}
			last = max(last, rev)
			l.c.metrics.releasesDeleted.WithLabelValues(name).Inc()
			ev := l.c.log.Info().Str("service", name).Str("version", rel.GetVersion()).Str("sha256", rel.GetArtifact().GetSha256()).
				Time("created_at", rel.GetCreatedAt().AsTime())
			if rel.GetArtifactPrunedAt() != nil {
				ev = ev.Time("pruned_at", rel.GetArtifactPrunedAt().AsTime())
			} else {
				ev = ev.Bool("url_artifact", true) // nothing the coordinators held (not the URL: it may be presigned)
			}
			ev.Dur("retention", l.c.cfg.RolloutRetention).Msg("old release deleted, its tombstone kept")
		}
	}
	if last == 0 {
		return
	}
	// The loop's next decisions (a rollback refused) see the deletions.
	if err := l.c.mirror.WaitRev(ctx, last); err != nil && ctx.Err() == nil {
		l.c.log.Warn().Err(err).Msg("deleting old releases: the mirror did not catch up")
	}
}

// tombstoneUnhonored names a registered coordinator that does not honor
// release tombstones ("" when none): during a rolling upgrade from a
// version before them the leader deletes no release (compactUnreader's
// rule).
func (c *Coordinator) tombstoneUnhonored() string {
	for _, ci := range c.mirror.Coordinators() {
		if !ci.GetHonorsReleaseTombstones() {
			return ci.GetName()
		}
	}
	return ""
}

// pruneUnhonored names a registered coordinator that does not honor
// artifact prune marks ("" when none): during a rolling upgrade from a
// version before them the leader marks nothing (compactUnreader's rule).
func (c *Coordinator) pruneUnhonored() string {
	for _, ci := range c.mirror.Coordinators() {
		if !ci.GetPrunesArtifacts() {
			return ci.GetName()
		}
	}
	return ""
}

// compactUnreader names a registered coordinator that does not read
// compacted rollouts ("" when none): during a rolling upgrade from a
// version before them the leader compacts nothing (splitUnreader's rule).
func (c *Coordinator) compactUnreader() string {
	for _, ci := range c.mirror.Coordinators() {
		if !ci.GetReadsCompactedRollouts() {
			return ci.GetName()
		}
	}
	return ""
}

// pruneNow is the time the leader prunes at: the clock, or the test's
// (Config.pruneClock).
func (l *leader) pruneNow() time.Time {
	if l.c.cfg.pruneClock != nil {
		return l.c.cfg.pruneClock()
	}
	return time.Now()
}
