package rollout

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// artHistory is a service with releases v1..vN, one an hour from t0, each
// with its own artifact, every one rolled out in turn and succeeded, vN
// stable.
func artHistory(n int) (*v1.Service, []*v1.Release, []*v1.Rollout) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var rels []*v1.Release
	var ros []*v1.Rollout
	for i := 1; i <= n; i++ {
		v := fmt.Sprintf("v%d", i)
		rels = append(rels, &v1.Release{Service: "web", Version: v, CreatedAt: timestamppb.New(t0.Add(time.Duration(i) * time.Hour)),
			Artifact: &v1.Artifact{Sha256: fmt.Sprintf("%064x", i), Size: 1}})
		from := ""
		if i > 1 {
			from = fmt.Sprintf("v%d", i-1)
		}
		ros = append(ros, &v1.Rollout{Id: fmt.Sprintf("%06d", i), Service: "web", FromVersion: from, ToVersion: v, State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED})
	}
	svc := &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}, Status: &v1.ServiceStatus{StableVersion: fmt.Sprintf("v%d", n), LastRolloutId: fmt.Sprintf("%06d", n)}}
	return svc, rels, ros
}

func versions(rs []*v1.Release) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetVersion())
	}
	return out
}

// TestRetainArtifacts: each case protects v2 of a history where, without
// it, v1, v2 and v3 are pruned (keep 3 of v1..v6: v4-v6 the newest, v5
// the rollback target too); each fails when its rule is removed.
func TestRetainArtifacts(t *testing.T) {
	late := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name   string
		change func(svc *v1.Service, rels []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport)
		keep   int
		before time.Time
		want   []string
	}{
		{name: "baseline: beyond the newest keep, old, not needed", want: []string{"v1", "v2", "v3"}},
		{name: "keep 0 prunes nothing", keep: -1},
		{name: "the newest keep", keep: 5, want: []string{"v1"}},
		{name: "newest by the order given (etcd's create revision), not by created_at", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			// v2's record created last (by a coordinator whose clock is
			// behind: its created_at is still the second oldest).
			v2 := rels[1]
			copy(rels[1:], rels[2:])
			rels[len(rels)-1] = v2
			return nil, nil
		}, want: []string{"v1", "v3", "v4"}},
		{name: "created at or after before", before: time.Date(2026, 1, 1, 2, 0, 0, 0, time.UTC), want: []string{"v1"}},
		{name: "no created_at", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].CreatedAt = nil
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "the stable version", change: func(svc *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			svc.Status.StableVersion = "v2"
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "the override's version", change: func(svc *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			svc.Status.HoldOverride = &v1.HoldOverride{Version: "v2"}
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "the from of a rollout in flight", change: func(_ *v1.Service, _ []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return append(ros, &v1.Rollout{Id: "000007", FromVersion: "v2", ToVersion: "v6", State: v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL}), nil
		}, want: []string{"v1", "v3"}},
		{name: "the to of a rollout in flight", change: func(_ *v1.Service, _ []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return append(ros, &v1.Rollout{Id: "000007", FromVersion: "v6", ToVersion: "v2", Rollback: true, State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING}), nil
		}, want: []string{"v1", "v3"}},
		{name: "a host's current version", change: func(_ *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v2"}}
		}, want: []string{"v1", "v3"}},
		{name: "a host's target version", change: func(_ *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v6", TargetVersion: "v2"}}
		}, want: []string{"v1", "v3"}},
		{name: "a host's last good version", change: func(_ *v1.Service, _ []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v6", LastGoodVersion: "v2"}}
		}, want: []string{"v1", "v3"}},
		{name: "a host's staged artifact", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			return nil, []*v1.ServiceReport{{CurrentVersion: "v6", StagedSha256: rels[1].GetArtifact().GetSha256()}}
		}, want: []string{"v1", "v3"}},
		{name: "the rollback target", change: func(_ *v1.Service, _ []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			// v3..v6 failed: the newest succeeded other than the stable is v2.
			for _, r := range ros[2:5] {
				r.State = v1.RolloutState_ROLLOUT_STATE_FAILED
			}
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "the rollback target once the rollout in flight ends", change: func(svc *v1.Service, _ []*v1.Release, ros []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			// In flight to v6 from v5 (stable): a rollback now goes to v5,
			// and once it succeeds, to v5 too; with v5 failed before, v2.
			for _, r := range ros[2:5] {
				r.State = v1.RolloutState_ROLLOUT_STATE_FAILED
			}
			svc.Status.StableVersion = "v5"
			ros[5].State = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
			ros[5].FromVersion = "v6" // a from the rule on rollouts in flight keeps anyway
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "an artifact by URL", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].Artifact.Url = "https://example.com/v2.tar.gz"
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "restored at or after before", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].ArtifactRestoredAt = timestamppb.New(late)
			rels[2].ArtifactRestoredAt = timestamppb.New(late.Add(-time.Second)) // before: prunable
			return nil, nil
		}, want: []string{"v1", "v3"}},
		{name: "already marked", change: func(_ *v1.Service, rels []*v1.Release, _ []*v1.Rollout) ([]*v1.Rollout, []*v1.ServiceReport) {
			rels[1].ArtifactPrunedAt = timestamppb.New(late)
			return nil, nil
		}, want: []string{"v1", "v3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			svc, rels, ros := artHistory(6)
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
			in := proto.Clone(svc)
			got := RetainArtifacts(svc, rels, ros, reps, keep, before)
			if !slices.Equal(versions(got), c.want) {
				t.Fatalf("pruned %v, want %v", versions(got), c.want)
			}
			if !proto.Equal(in, svc) {
				t.Fatal("RetainArtifacts modified the service")
			}
		})
	}
}

// TestRetainArtifactsRandom: over seeded random histories, no release a
// rule needs is ever returned, and some are.
func TestRetainArtifactsRandom(t *testing.T) {
	states := []v1.RolloutState{v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_FAILED,
		v1.RolloutState_ROLLOUT_STATE_SUPERSEDED, v1.RolloutState_ROLLOUT_STATE_PROGRESSING, v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pruned := 0
	for seed := range uint64(2000) {
		rng := rand.New(rand.NewPCG(seed, 1))
		n := 1 + rng.IntN(25)
		var rels []*v1.Release
		for i := range n {
			r := &v1.Release{Service: "web", Version: fmt.Sprintf("v%02d", i), CreatedAt: timestamppb.New(t0.Add(time.Duration(rng.IntN(48)) * time.Hour)),
				Artifact: &v1.Artifact{Sha256: fmt.Sprintf("%064x", rng.IntN(n+1)), Size: 1}}
			if rng.IntN(10) == 0 {
				r.Artifact.Url = "https://example.com/a"
			}
			if rng.IntN(8) == 0 {
				r.ArtifactPrunedAt = timestamppb.New(t0)
			}
			if rng.IntN(6) == 0 {
				r.ArtifactRestoredAt = timestamppb.New(t0.Add(time.Duration(rng.IntN(60)) * time.Hour))
			}
			rels = append(rels, r)
		}
		pick := func() string { return rels[rng.IntN(n)].GetVersion() }
		var ros []*v1.Rollout
		for i := range rng.IntN(30) {
			st := states[rng.IntN(len(states))]
			if i < 29 && rng.IntN(3) > 0 && (st == v1.RolloutState_ROLLOUT_STATE_PROGRESSING || st == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL) {
				st = v1.RolloutState_ROLLOUT_STATE_SUPERSEDED // mostly one in flight, at the end
			}
			ros = append(ros, &v1.Rollout{Id: fmt.Sprintf("%06d", i+1), FromVersion: pick(), ToVersion: pick(), State: st, Rollback: rng.IntN(4) == 0})
		}
		svc := &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}, Status: &v1.ServiceStatus{StableVersion: pick()}}
		if len(ros) > 0 {
			svc.Status.LastRolloutId = ros[len(ros)-1].GetId()
		}
		if rng.IntN(5) == 0 {
			svc.Status.HoldOverride = &v1.HoldOverride{Version: pick()}
		}
		var reps []*v1.ServiceReport
		for range rng.IntN(4) {
			reps = append(reps, &v1.ServiceReport{CurrentVersion: pick(), TargetVersion: pick(), LastGoodVersion: pick(), StagedSha256: rels[rng.IntN(n)].GetArtifact().GetSha256()})
		}
		keep := rng.IntN(6)
		before := t0.Add(time.Duration(rng.IntN(60)) * time.Hour)
		got := RetainArtifacts(svc, rels, ros, reps, keep, before)
		pruned += len(got)
		// What must stay, computed apart.
		need := map[string]string{}
		// Newest by the order given (etcd's create revision), whatever
		// the created_at (random here).
		byAge := rels
		for i, r := range byAge {
			if keep <= 0 || i >= n-keep {
				need[r.GetVersion()] = "among the newest keep"
			}
			if !r.GetCreatedAt().AsTime().Before(before) {
				need[r.GetVersion()] = "young"
			}
			if r.GetArtifact().GetUrl() != "" {
				need[r.GetVersion()] = "by URL"
			}
			if r.GetArtifactPrunedAt() != nil {
				need[r.GetVersion()] = "already marked"
			}
			if at := r.GetArtifactRestoredAt(); at != nil && !at.AsTime().Before(before) {
				need[r.GetVersion()] = "restored lately"
			}
			for _, rep := range reps {
				if rep.GetStagedSha256() == r.GetArtifact().GetSha256() {
					need[r.GetVersion()] = "staged"
				}
			}
		}
		need[svc.GetStatus().GetStableVersion()] = "stable"
		need[svc.GetStatus().GetHoldOverride().GetVersion()] = "override"
		var vs []Release
		for _, r := range rels {
			vs = append(vs, Release{Version: r.GetVersion()})
		}
		var active *v1.Rollout
		for _, r := range ros {
			if !Terminal(r) {
				need[r.GetFromVersion()], need[r.GetToVersion()] = "rollout in flight", "rollout in flight"
				active = r
			}
		}
		// The rollback target now, and once the rollout in flight ends.
		for _, a := range []*v1.Rollout{active, nil} {
			if v, err := RollbackTarget(svc, ros, a, vs, ""); err == nil {
				need[v] = "rollback target"
			}
		}
		for _, rep := range reps {
			for _, v := range []string{rep.GetCurrentVersion(), rep.GetTargetVersion(), rep.GetLastGoodVersion()} {
				need[v] = "reported by a host"
			}
		}
		for _, r := range got {
			if why, ok := need[r.GetVersion()]; ok {
				t.Fatalf("seed %d: %s pruned, but it is needed: %s", seed, r.GetVersion(), why)
			}
		}
	}
	if pruned == 0 {
		t.Fatal("no history pruned anything")
	}
	t.Logf("%d releases pruned over the histories", pruned)
}
