package rollout

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// relHistory is artHistory(6) after pruning: the artifacts of v1..v3
// marked pruned and only the rollouts to v4, v5 and v6 still stored (the
// older ones deleted by age).
func relHistory() (*v1.Service, []*v1.Release, []*v1.Rollout) {
	svc, rels, ros := artHistory(6)
	for _, r := range rels[:3] {
		r.ArtifactPrunedAt = timestamppb.New(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	}
	return svc, rels, ros[3:]
}

// TestRetainReleases: each case protects v2 of a history where, without
// it, the records of v1 and v2 are deleted (keep 3 of v1..v6: v4-v6 the
// newest, v5 the rollback target; v3 the from of the rollout to v4, still
// stored); each fails when its rule is removed.
func TestRetainReleases(t *testing.T) {
	late := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name     string
		change   func(svc *v1.Service, rels []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport)
		keep     int
		before   time.Time
		noCutoff bool
		want     []string
	}{
		{name: "baseline: artifact pruned, old, named by no stored rollout", want: []string{"v1", "v2"}},
		{name: "keep 0 (--keep-release-artifacts 0) deletes nothing", keep: -1},
		{name: "no retention cutoff deletes nothing", noCutoff: true},
		{name: "artifact not marked pruned", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].ArtifactPrunedAt = nil
			return nil, nil
		}, want: []string{"v1"}},
		{name: "a URL artifact, never marked pruned (the coordinators hold none of it), goes by the same rules", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].ArtifactPrunedAt = nil
			rels[1].Artifact.Url = "https://artifacts.example/web/v2.tar.gz"
			return nil, nil
		}, want: []string{"v1", "v2"}},
		{name: "a URL artifact, needed", change: func(svc *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].ArtifactPrunedAt = nil
			rels[1].Artifact.Url = "https://artifacts.example/web/v2.tar.gz"
			return nil, []*v1.ServiceReport{{CurrentVersion: "v2"}}
		}, want: []string{"v1"}},
		{name: "created at or after before", before: time.Date(2026, 1, 1, 2, 0, 0, 0, time.UTC), want: []string{"v1"}},
		{name: "no created_at", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].CreatedAt = nil
			return nil, nil
		}, want: []string{"v1"}},
		{name: "the from of a stored ended rollout", change: func(_ *v1.Service, _ []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return append([]*v1.Rollout{{Id: "000003", FromVersion: "v2", ToVersion: "v3", State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED}}, ros...), nil
		}, want: []string{"v1"}},
		{name: "the to of a stored ended rollout", change: func(_ *v1.Service, _ []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return append([]*v1.Rollout{{Id: "000002", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_FAILED}}, ros...), nil
		}, want: []string{"v1"}},
		{name: "the newest keep", keep: 5, want: []string{"v1"}},
		{name: "newest by the order given (etcd's create revision), not by created_at", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			v2 := rels[1]
			copy(rels[1:], rels[2:])
			rels[len(rels)-1] = v2
			return nil, nil
		}, want: []string{"v1"}},
		{name: "the stable version", change: func(svc *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			svc.Status.StableVersion = "v2"
			return nil, nil
		}, want: []string{"v1"}},
		{name: "the override's version", change: func(svc *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			svc.Status.HoldOverride = &v1.HoldOverride{Version: "v2"}
			return nil, nil
		}, want: []string{"v1"}},
		{name: "a host's current version (a host back after months away)", change: func(_ *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v2"}}
		}, want: []string{"v1"}},
		{name: "a host's target version", change: func(_ *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v6", TargetVersion: "v2"}}
		}, want: []string{"v1"}},
		{name: "a host's last good version", change: func(_ *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v6", LastGoodVersion: "v2"}}
		}, want: []string{"v1"}},
		{name: "the highest signed sequence (the CLI signs the next release and every rollback statement from it), an unsigned or lower one created after it", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			for i, seq := range map[int]uint64{0: 1, 1: 9, 4: 3} {
				m, err := proto.Marshal(&v1.ReleaseManifest{Sequence: seq})
				if err != nil {
					t.Fatal(err)
				}
				rels[i].Signed = &v1.SignedManifest{Manifest: m}
			}
			return nil, nil
		}, want: []string{"v1"}},
		{name: "a host's staged artifact", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v6", StagedSha256: rels[1].GetArtifact().GetSha256()}}
		}, want: []string{"v1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			svc, rels, ros := relHistory()
			var reps []*v1.ServiceReport
			if c.change != nil {
				var more []*v1.Rollout
				more, reps = c.change(svc, rels, ros)
				if more != nil {
					ros = more
				}
			}
			keep, before := 3, late
			if c.keep != 0 {
				keep = max(c.keep, 0)
			}
			if !c.before.IsZero() {
				before = c.before
			}
			if c.noCutoff {
				before = time.Time{}
			}
			in, inRels := proto.Clone(svc), cloneReleases(rels)
			got := RetainReleases(svc, rels, ros, reps, keep, before, topSigned(rels))
			if !slices.Equal(versions(got), c.want) {
				t.Fatalf("deleted %v, want %v", versions(got), c.want)
			}
			if !proto.Equal(in, svc) || !slices.EqualFunc(inRels, rels, func(a, b *v1.Release) bool { return proto.Equal(a, b) }) {
				t.Fatal("RetainReleases modified its input")
			}
		})
	}
}

// topSigned is the release the leader passes.
func topSigned(rels []*v1.Release) *v1.Release { return signing.HighestClaimed(rels) }

func cloneReleases(rs []*v1.Release) []*v1.Release {
	out := make([]*v1.Release, len(rs))
	for i, r := range rs {
		out[i] = proto.Clone(r).(*v1.Release)
	}
	return out
}

// TestRetainReleasesRandom: over seeded random histories, every release
// RetainReleases deletes is marked pruned, created before the cutoff,
// named by no stored rollout, and one RetainArtifacts would let go now
// were it not marked (so nothing it protects is deleted); and some are.
func TestRetainReleasesRandom(t *testing.T) {
	states := []v1.RolloutState{v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_FAILED,
		v1.RolloutState_ROLLOUT_STATE_SUPERSEDED, v1.RolloutState_ROLLOUT_STATE_PROGRESSING, v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	deleted := 0
	for seed := range uint64(2000) {
		rng := rand.New(rand.NewPCG(seed, 2))
		n := 1 + rng.IntN(25)
		var rels []*v1.Release
		for i := range n {
			r := &v1.Release{Service: "web", Version: fmt.Sprintf("v%02d", i), CreatedAt: timestamppb.New(t0.Add(time.Duration(rng.IntN(48)) * time.Hour)),
				Artifact: &v1.Artifact{Sha256: fmt.Sprintf("%064x", rng.IntN(n+1)), Size: 1}}
			switch rng.IntN(3) {
			case 0:
				r.ArtifactPrunedAt = timestamppb.New(t0)
			case 1:
				r.Artifact.Url = "https://artifacts.example/" + r.Version
			}
			rels = append(rels, r)
		}
		// Versions that were never released too (their records deleted
		// long ago, or never created).
		pick := func() string {
			if rng.IntN(4) == 0 {
				return fmt.Sprintf("gone%d", rng.IntN(3))
			}
			return rels[rng.IntN(n)].GetVersion()
		}
		var ros []*v1.Rollout
		for i := range rng.IntN(8) {
			st := states[rng.IntN(len(states))]
			if i < 7 && rng.IntN(3) > 0 && (st == v1.RolloutState_ROLLOUT_STATE_PROGRESSING || st == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL) {
				st = v1.RolloutState_ROLLOUT_STATE_SUPERSEDED
			}
			ros = append(ros, &v1.Rollout{Id: fmt.Sprintf("%06d", i+1), FromVersion: pick(), ToVersion: pick(), State: st})
		}
		svc := &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}, Status: &v1.ServiceStatus{StableVersion: pick()}}
		if rng.IntN(5) == 0 {
			svc.Status.HoldOverride = &v1.HoldOverride{Version: pick()}
		}
		var reps []*v1.ServiceReport
		for range rng.IntN(3) {
			reps = append(reps, &v1.ServiceReport{CurrentVersion: pick(), TargetVersion: pick(), LastGoodVersion: pick(), StagedSha256: rels[rng.IntN(n)].GetArtifact().GetSha256()})
		}
		keep := rng.IntN(6)
		before := t0.Add(time.Duration(rng.IntN(60)) * time.Hour)
		got := RetainReleases(svc, rels, ros, reps, keep, before, topSigned(rels))
		deleted += len(got)
		for _, r := range got {
			v := r.GetVersion()
			if r.GetArtifactPrunedAt() == nil && r.GetArtifact().GetUrl() == "" {
				t.Fatalf("seed %d: %s deleted, its artifact not pruned", seed, v)
			}
			if !r.GetCreatedAt().AsTime().Before(before) {
				t.Fatalf("seed %d: %s deleted, created at %s, not before %s", seed, v, r.GetCreatedAt().AsTime(), before)
			}
			for _, ro := range ros {
				if ro.GetFromVersion() == v || ro.GetToVersion() == v {
					t.Fatalf("seed %d: %s deleted, but rollout %s names it", seed, v, ro.GetId())
				}
			}
			// Unmarked (a URL artifact: held by the coordinators),
			// RetainArtifacts would mark it now.
			unmarked := cloneReleases(rels)
			var it *v1.Release
			for _, u := range unmarked {
				if u.GetVersion() == v {
					u.ArtifactPrunedAt, u.Artifact.Url, it = nil, "", u
				}
			}
			if !slices.Contains(RetainArtifacts(svc, unmarked, ros, reps, keep, before), it) {
				t.Fatalf("seed %d: %s deleted, but RetainArtifacts keeps its artifact", seed, v)
			}
		}
	}
	if deleted == 0 {
		t.Fatal("no history deleted anything")
	}
	t.Logf("%d release records deleted over the histories", deleted)
}
