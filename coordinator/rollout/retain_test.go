package rollout

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestCompact(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &v1.Rollout{Id: "000001", State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, Waves: []*v1.Wave{
		{Index: 0, Hosts: []*v1.HostProgress{{HostId: "a", DoneAt: timestamppb.New(t0.Add(time.Minute))}, {HostId: "b", DoneAt: timestamppb.New(t0)}, {HostId: "c"}}},
		{Index: 1, Hosts: []*v1.HostProgress{{HostId: "d"}}},
		{Index: 2},
	}}
	orig := proto.Clone(r)
	c := Compact(r)
	if !proto.Equal(r, orig) {
		t.Fatal("Compact modified its input")
	}
	if !c.GetHostsCompacted() || RolloutHosts(c) != 4 || RolloutHosts(r) != 4 {
		t.Fatalf("compacted %v, %d hosts (input %d), want true, 4 (4)", c.GetHostsCompacted(), RolloutHosts(c), RolloutHosts(r))
	}
	for i, want := range []int{3, 1, 0} {
		w := c.GetWaves()[i]
		if len(w.GetHosts()) != 0 || WaveHosts(c, w) != want {
			t.Errorf("wave %d: %d hosts kept, summary %d; want 0, %d", i, len(w.GetHosts()), WaveHosts(c, w), want)
		}
	}
	if got := c.GetWaves()[0].GetLastHostDoneAt().AsTime(); !got.Equal(t0.Add(time.Minute)) {
		t.Errorf("wave 0 last host done %s, want %s", got, t0.Add(time.Minute))
	}
	if c.GetWaves()[1].GetLastHostDoneAt() != nil {
		t.Error("wave 1: no host done, but a last host done")
	}
	if Compact(c) != c {
		t.Error("a compacted rollout compacted again")
	}
	if n := CompactedNote(c); n == "" || CompactedNote(r) != "" {
		t.Errorf("notes %q (compacted), %q (not)", n, CompactedNote(r))
	}
}

func TestRetain(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const (
		ok     = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		bad    = v1.RolloutState_ROLLOUT_STATE_FAILED
		sup    = v1.RolloutState_ROLLOUT_STATE_SUPERSEDED
		flight = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	)
	type ro struct {
		to     string
		st     v1.RolloutState
		remove bool
		left   bool
	}
	mk := func(spec ...ro) []*v1.Rollout {
		var out []*v1.Rollout
		for i, s := range spec {
			out = append(out, &v1.Rollout{Id: fmt.Sprintf("%06d", i+1), ToVersion: s.to, State: s.st, Remove: s.remove, Left: s.left,
				FinishedAt: timestamppb.New(t0.Add(time.Duration(i) * time.Hour))})
		}
		return out
	}
	ids := func(rs []*v1.Rollout) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.GetId())
		}
		return out
	}
	for _, c := range []struct {
		name          string
		ros           []ro
		stable, last  string
		keep          int
		before        time.Duration // from t0; 0: no deletion
		compact, drop []string
	}{
		{name: "compact beyond the newest two", ros: []ro{{"v1", ok, false, false}, {"v2", bad, false, false}, {"v3", ok, false, false}, {"v4", ok, false, false}}, stable: "v4", last: "000004", keep: 2,
			compact: []string{"000001", "000002"}},
		{name: "never the rollout in flight, nor the newest", ros: []ro{{"v1", ok, false, false}, {"v2", flight, false, false}, {"v3", flight, false, false}}, stable: "v1", last: "000003", keep: 1,
			compact: []string{"000001"}},
		{name: "never the one the service names", ros: []ro{{"v1", ok, false, false}, {"v2", ok, false, false}, {"v3", ok, false, false}}, stable: "v3", last: "000002", keep: 1,
			compact: []string{"000001"}},
		{name: "compaction off", ros: []ro{{"v1", ok, false, false}, {"v2", ok, false, false}}, stable: "v2", last: "000002", keep: 0},
		{name: "deletion keeps the newest succeeded, the rollback target and the newest of a failed release",
			ros:    []ro{{"v1", ok, false, false}, {"v2", bad, false, false}, {"v3", ok, false, false}, {"v2", sup, false, false}, {"v4", ok, false, false}, {"v5", ok, false, false}, {"v6", bad, false, false}, {"v7", flight, false, false}},
			stable: "v5", last: "000008", keep: 100, before: 100 * time.Hour,
			// 000004: the newest ended rollout to v2, which failed once;
			// 000005: the newest succeeded rollout to a release other than
			// the stable one; 000006: the newest succeeded; 000007: the
			// newest of v6 (failed); 000008 in flight; 000001: the first
			// (the stats' deploy frequency counts from it).
			drop: []string{"000002", "000003"}},
		{name: "deletion by age only", ros: []ro{{"v1", ok, false, false}, {"v2", ok, false, false}, {"v3", ok, false, false}, {"v4", ok, false, false}}, stable: "v4", last: "000004", keep: 100, before: 90 * time.Minute,
			drop: []string{"000002"}},
		{name: "deletion keeps the newest removal", ros: []ro{{"v1", ok, false, false}, {"", ok, true, false}, {"v1", ok, false, false}, {"v2", ok, false, false}, {"v3", ok, false, false}}, stable: "v3", last: "000005", keep: 1, before: 100 * time.Hour,
			compact: []string{"000001", "000002", "000004"}, drop: []string{"000003"}},
		// The newest are removals of hosts the selector left out: the
		// rollout Decide is given is the one before them (rollout.Deciding,
		// walked back by id): none of them goes, however old (before: the
		// left removals in between were deleted and the leader's reconcile
		// failed for good on a missing rollout).
		{name: "deletion keeps the removals of hosts left and the rollout before them",
			ros:    []ro{{"v1", ok, false, false}, {"v2", ok, false, false}, {"v3", sup, false, false}, {"v3", ok, true, true}, {"v3", ok, true, true}, {"v3", ok, true, true}},
			stable: "v2", last: "000006", keep: 1, before: 100 * time.Hour,
			compact: []string{"000001"}, drop: []string{"000002"}},
		// A removal of hosts left out in flight is the newest: once it
		// ends, Decide is given the rollout before the ended removals
		// before it. Before: while it ran, the one Decide would be given
		// (000001, not the newest succeeded: the ended removal 000002 is)
		// was deleted, and at its end the leader's reconcile failed for
		// good on the missing rollout.
		{name: "deletion keeps the rollout before a removal of hosts left that is in flight",
			ros:    []ro{{"v1", ok, false, false}, {"", ok, true, true}, {"", flight, true, true}},
			stable: "v1", last: "000003", keep: 100, before: 100 * time.Hour},
		{name: "compaction keeps the rollout before a removal of hosts left that is in flight",
			ros:    []ro{{"v1", ok, false, false}, {"v2", sup, false, false}, {"", flight, true, true}},
			stable: "v1", last: "000003", keep: 1, before: 100 * time.Hour,
			compact: []string{"000001"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := mk(c.ros...)
			svc := &v1.Service{Status: &v1.ServiceStatus{StableVersion: c.stable, LastRolloutId: c.last}}
			var before time.Time
			if c.before > 0 {
				before = t0.Add(c.before)
			}
			got := Retain(svc, rs, c.keep, before)
			if !slices.Equal(ids(got.Compact), c.compact) || !slices.Equal(ids(got.Delete), c.drop) {
				t.Fatalf("compact %v, delete %v; want %v, %v", ids(got.Compact), ids(got.Delete), c.compact, c.drop)
			}
			// What RollbackTarget says of what is kept is what it said of all.
			var kept []*v1.Rollout
			for _, r := range rs {
				if !slices.Contains(got.Delete, r) {
					kept = append(kept, r)
				}
			}
			var rels []Release
			for _, v := range []string{"v1", "v2", "v3", "v4", "v5", "v6", "v7"} {
				rels = append(rels, Release{Version: v})
			}
			for _, req := range []string{"", "v1", "v2", "v3", "v4", "v6"} {
				t1, e1 := RollbackTarget(svc, rs, nil, rels, req)
				t2, e2 := RollbackTarget(svc, kept, nil, rels, req)
				if t1 != t2 || (e1 == nil) != (e2 == nil) {
					t.Errorf("rollback target %q: %q, %v with every rollout; %q, %v with those kept", req, t1, e1, t2, e2)
				}
			}
		})
	}
}
