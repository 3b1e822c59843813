package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Artifact pruning. The leader marks the releases whose artifacts may go
// (Release.artifact_pruned_at; rollout.RetainArtifacts decides,
// leader_retain.go pruneAllArtifacts marks); every coordinator deletes
// from its own store the files no unpruned release names
// (pruneArtifactFiles, on artifactPruneLoop); nothing rolls out to a
// release whose artifact was pruned (artifactPruned) until release create
// restores it (operator.restoreRelease).

// ErrArtifactPruned is wrapped by the refusals of a rollout or rollback
// to a release whose artifact was pruned.
var ErrArtifactPruned = errors.New("artifact pruned")

// fmtPruned is how a prune mark's time is shown.
func fmtPruned(r *v1.Release) string {
	return r.GetArtifactPrunedAt().AsTime().UTC().Format(time.RFC3339)
}

// restoreHint says how to bring a pruned release's artifact back.
func restoreHint(r *v1.Release) string {
	return fmt.Sprintf("to restore it, upload the same artifact again with the same release: fleetwave release create %s --version %s --artifact FILE (sha256 %s, %d bytes; the same commit and commit time)",
		r.GetService(), r.GetVersion(), r.GetArtifact().GetSha256(), r.GetArtifact().GetSize())
}

// artifactPruned refuses (wrapping ErrArtifactPruned) what needs the
// artifact of service's release version when it was pruned: a rollout's
// start (leader.start) and a rollback (leader.rollback). nil when the
// release is not known or keeps its artifact.
func (c *Coordinator) artifactPruned(service, version string) error {
	rel, ok := c.mirror.Release(service, version)
	if !ok || rel.GetArtifactPrunedAt() == nil {
		return nil
	}
	return fmt.Errorf("%w: service %s release %s: its artifact was pruned at %s (beyond --keep-release-artifacts, older than --release-artifact-min-age); %s",
		ErrArtifactPruned, service, version, fmtPruned(rel), restoreHint(rel))
}

// artifactUse is what the releases that name one stored artifact say of
// it: how many name it, how many of those are marked pruned, and the
// marked releases.
type artifactUse struct {
	named, pruned int
	marked        []*v1.Release
}

// artifactUses indexes the releases of every service by the sha256 of
// the artifact the coordinators store for them (releases by URL store
// nothing).
func (c *Coordinator) artifactUses() map[string]*artifactUse {
	uses := map[string]*artifactUse{}
	for _, r := range c.mirror.AllReleases() {
		d := r.GetArtifact().GetSha256()
		if d == "" || r.GetArtifact().GetUrl() != "" {
			continue
		}
		u := uses[d]
		if u == nil {
			u = &artifactUse{}
			uses[d] = u
		}
		u.named++
		if at := r.GetArtifactPrunedAt(); at != nil {
			u.pruned++
			u.marked = append(u.marked, r)
		}
	}
	return uses
}

// prunedArtifact says why the artifact digest is not kept ("" unless
// every release naming it was marked pruned): the artifact store's
// PrunedFunc, for Download and Ensure.
func (c *Coordinator) prunedArtifact(digest string) string {
	u := c.artifactUses()[digest]
	if u == nil || u.pruned < u.named {
		return ""
	}
	return prunedNote(u)
}

func prunedNote(u *artifactUse) string {
	slices.SortFunc(u.marked, func(a, b *v1.Release) int {
		return strings.Compare(a.GetService()+"/"+a.GetVersion(), b.GetService()+"/"+b.GetVersion())
	})
	var rels []string
	for _, r := range u.marked {
		rels = append(rels, fmt.Sprintf("%s %s (pruned at %s)", r.GetService(), r.GetVersion(), fmtPruned(r)))
	}
	return fmt.Sprintf("the artifact of release %s was pruned (--keep-release-artifacts); %s", strings.Join(rels, ", "), restoreHint(u.marked[0]))
}

// pruneArtifactFiles deletes from this coordinator's store the artifact
// files no release needs, judged from the mirror at now: a file that
// releases name, each of them marked pruned, or that no release names (an
// upload whose release create never came, or failed), once this
// coordinator last wrote it (upload, copy from a peer, release create's
// Touch) Config.ArtifactUploadGrace ago or more. The age is by this
// coordinator's own clock, never compared with a mark's time (the
// leader's clock): a file uploaded again to restore a release is kept
// until the restore is seen, whatever the clocks say (a review found a
// restore's only copy deleted with the leader's clock ahead).
//
// Nothing is deleted with --keep-release-artifacts 0 (keep every
// artifact), and no file that no release names while the mirror names no
// release at all (etcd restored from an old backup, or a fresh one by
// mistake: the files are then the only copies). Uploads in progress are in
// the store's tmp/ and never looked at. Each file's time is read again
// under the store's lock as it is removed (artifacts.Store.RemoveIf): one
// written again meanwhile stays.
func (c *Coordinator) pruneArtifactFiles(now time.Time) {
	if c.cfg.KeepReleaseArtifacts <= 0 || !c.mirror.Ready() {
		return // an empty mirror names nothing
	}
	files, err := c.arts.Files()
	if err != nil {
		c.log.Warn().Err(err).Msg("pruning artifact files failed")
		return
	}
	uses := c.artifactUses()
	grace := now.Add(-c.cfg.ArtifactUploadGrace)
	for _, f := range files {
		u := uses[f.SHA256]
		if (u != nil && u.pruned < u.named) || (u == nil && len(uses) == 0) {
			continue
		}
		remove := func(mod time.Time) bool { return mod.Before(grace) }
		if !remove(f.ModTime) {
			continue
		}
		ok, err := c.arts.RemoveIf(f.SHA256, remove)
		if err != nil {
			c.log.Warn().Err(err).Str("sha256", f.SHA256).Msg("deleting an artifact file failed")
			continue
		}
		if !ok {
			continue
		}
		if u == nil {
			c.log.Info().Str("sha256", f.SHA256).Int64("size", f.Size).Dur("grace", c.cfg.ArtifactUploadGrace).Msg("artifact file deleted: no release names it")
			continue
		}
		for _, r := range u.marked {
			c.log.Info().Str("sha256", f.SHA256).Int64("size", f.Size).Str("service", r.GetService()).Str("version", r.GetVersion()).
				Time("pruned_at", r.GetArtifactPrunedAt().AsTime()).Msg("artifact file deleted: its release's artifact was pruned")
		}
	}
}

// artifactPruneLoop runs pruneArtifactFiles every
// Config.artifactPruneEvery, on every coordinator (each has its own
// store).
func (c *Coordinator) artifactPruneLoop(ctx context.Context) {
	tick := time.NewTicker(c.cfg.artifactPruneEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			c.pruneArtifactFiles(time.Now())
		}
	}
}
