package store

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// compactedForTest is r without its hosts, as rollout.Compact makes it
// (the store does not import the engine).
func compactedForTest(r *v1.Rollout) *v1.Rollout {
	c := proto.Clone(r).(*v1.Rollout)
	c.HostsCompacted = true
	for _, w := range c.GetWaves() {
		w.HostCount, w.Hosts = uint32(len(w.GetHosts())), nil
	}
	return c
}

// A compacted rollout is written over the stored one in its layout: a
// split one's parts are deleted with the head's rewrite; the mirror, a
// mirror loading afterwards and GetRollout all read the compacted record;
// a stale base is refused. DeleteRollout takes a rollout's every key in
// either layout, and its events.
func TestCompactAndDeleteRollout(t *testing.T) {
	s := startStore(t)
	m := startMirror(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, layout := range []RolloutLayout{Split, OneKey} {
		t.Run(layout.String(), func(t *testing.T) {
			id := "000001"
			if layout == OneKey {
				id = "000002"
			}
			r := testRollout(id, 1, 10, 1500)
			r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
			ev := &v1.Event{At: timestamppb.Now(), Service: "web", RolloutId: id, Kind: "rollout_created", Wave: -1, Message: "created"}
			rev, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: layout}, nil, 0, ev)
			if err != nil {
				t.Fatal(err)
			}
			c := compactedForTest(r)
			if _, err := s.CompactRollout(ctx, nil, c, RolloutBase{Rollout: r, Rev: rev - 1, Layout: layout}); !errors.Is(err, ErrConflict) {
				t.Fatalf("compaction over a stale revision: %v, want ErrConflict", err)
			}
			if _, err := s.CompactRollout(ctx, nil, r, RolloutBase{Rollout: r, Rev: rev, Layout: layout}); err == nil {
				t.Fatal("a rollout with hosts written as compacted")
			}
			crev, err := s.CompactRollout(ctx, nil, c, RolloutBase{Rollout: r, Rev: rev, Layout: layout})
			if err != nil {
				t.Fatal(err)
			}
			if layout == Split {
				keys, err := s.c.Get(ctx, RolloutHeadKey("web", id)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
				if err != nil || keys.Count != 0 {
					t.Fatalf("%d parts left after compaction (%v)", keys.Count, err)
				}
			}
			if got, err := s.GetRollout(ctx, "web", id); err != nil || !proto.Equal(got, c) {
				t.Fatalf("GetRollout after compaction: %v (%v)", got, err)
			}
			if err := m.WaitRev(ctx, crev); err != nil {
				t.Fatal(err)
			}
			if vr, ok := m.Rollout("web", id); !ok || !proto.Equal(vr.Val, c) || vr.Rev != crev || m.RolloutLayout("web", id) != layout {
				t.Fatalf("mirror after compaction: ok %v, rev %d want %d, layout %s", ok, vr.Rev, crev, m.RolloutLayout("web", id))
			}
			m2 := startMirror(t, s)
			if err := m2.WaitRev(ctx, crev); err != nil {
				t.Fatal(err)
			}
			if vr, ok := m2.Rollout("web", id); !ok || !proto.Equal(vr.Val, c) {
				t.Fatal("a mirror loading after compaction does not hold the compacted rollout")
			}

			if _, err := s.DeleteRollout(ctx, nil, RolloutBase{Rollout: c, Rev: rev, Layout: layout}); !errors.Is(err, ErrConflict) {
				t.Fatalf("delete over a stale revision: %v, want ErrConflict", err)
			}
			if keys, err := s.c.Get(ctx, EventsPrefixFor("web", id), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || keys.Count == 0 {
				t.Fatalf("the rollout's event not written (%v)", err)
			}
			drev, err := s.DeleteRollout(ctx, nil, RolloutBase{Rollout: c, Rev: crev, Layout: layout})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{RolloutHeadKey("web", id), RolloutKey("web", id), EventsPrefixFor("web", id)} {
				if keys, err := s.c.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || keys.Count != 0 {
					t.Fatalf("%d keys under %s after delete (%v)", keys.Count, p, err)
				}
			}
			if err := m.WaitRev(ctx, drev); err != nil {
				t.Fatal(err)
			}
			if _, ok := m.Rollout("web", id); ok {
				t.Fatal("the mirror still holds the deleted rollout")
			}
			if _, err := s.GetRollout(ctx, "web", id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetRollout after delete: %v, want ErrNotFound", err)
			}
		})
	}
}
