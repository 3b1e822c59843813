package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The loop reads what it wrote without waiting for its mirror until the
// mirror has caught up with it, then the mirror again; settle waits for
// the mirror to have every such write.
func TestLeaderReadsOwnWritesUntilMirrorHasThem(t *testing.T) {
	_, cli := embeddedEtcd(t)
	st := store.New(cli)
	m := store.NewMirror(st, zerolog.Nop())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mctx, mcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = m.Run(mctx); close(done) }()
	t.Cleanup(func() { mcancel(); <-done })
	l := newLeader(&Coordinator{mirror: m, store: st})

	r := &v1.Rollout{Id: "000001", Service: "web", ToVersion: "v1", Waves: []*v1.Wave{{Hosts: []*v1.HostProgress{{HostId: "h1"}}}}}
	rev, last, err := st.WriteRollout(ctx, nil, r, store.RolloutBase{Layout: store.Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitRev(ctx, last); err != nil {
		t.Fatal(err)
	}
	// A write the mirror has not applied yet (its revision is ahead).
	next := proto.Clone(r).(*v1.Rollout)
	next.Waves[0].Hosts[0].State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	l.own["web"] = ownWrite{rollout: store.Versioned[*v1.Rollout]{Val: next, Rev: last + 1000, Created: rev}, last: last + 1000}
	if got, ok := l.rollout("web", "000001"); !ok || got.Rev != last+1000 || !proto.Equal(got.Val, next) {
		t.Fatalf("loop reads %v at %d, want its own write", got.Val, got.Rev)
	}
	if got, ok := l.rollout("web", "000002"); ok {
		t.Fatalf("another rollout id gives the loop's write: %v", got.Val)
	}
	// The mirror catches up (here: passes it): the mirror's copy, own gone.
	l.own["web"] = ownWrite{rollout: store.Versioned[*v1.Rollout]{Val: next, Rev: rev, Created: rev}, last: last}
	rev2, last2, err := st.WriteRollout(ctx, nil, next, store.RolloutBase{Rollout: r, Rev: rev, Layout: store.Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitRev(ctx, last2); err != nil {
		t.Fatal(err)
	}
	if got, ok := l.rollout("web", "000001"); !ok || got.Rev != rev2 || !proto.Equal(got.Val, next) {
		t.Fatalf("loop reads revision %d, want the mirror's %d", got.Rev, rev2)
	}
	if _, has := l.own["web"]; has {
		t.Fatal("own write kept after the mirror caught up")
	}
	// settle waits for the highest revision of the writes not waited for.
	l.own["web"] = ownWrite{rollout: store.Versioned[*v1.Rollout]{Val: next, Rev: rev2, Created: rev}, last: last2}
	if err := l.settle(ctx); err != nil || len(l.own) != 0 || m.Rev() < last2 {
		t.Fatalf("settle: %v, %d own writes left, mirror at %d (want ≥ %d)", err, len(l.own), m.Rev(), last2)
	}
}
