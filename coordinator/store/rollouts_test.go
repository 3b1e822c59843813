package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// testRollout has waves of the given sizes, hosts named by wave and place.
func testRollout(id string, sizes ...int) *v1.Rollout {
	r := &v1.Rollout{Id: id, Service: "web", ToVersion: "v2", FromVersion: "v1", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		CreatedAt: timestamppb.New(time.Unix(1700000000, 0))}
	for i, n := range sizes {
		w := &v1.Wave{Index: uint32(i), State: v1.WaveState_WAVE_STATE_PENDING}
		for j := range n {
			w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: fmt.Sprintf("h%d-%05d", i, j), Zone: "z1"})
		}
		r.Waves = append(r.Waves, w)
	}
	return r
}

// startMirror runs a mirror of s until the test ends.
func startMirror(t *testing.T, s *Store) *Mirror {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m := NewMirror(s, zerolog.Nop())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// keysWrittenAt lists the keys under prefix last written at revision rev.
func keysWrittenAt(t *testing.T, s *Store, prefix string, rev int64) []string {
	t.Helper()
	resp, err := s.c.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		if kv.ModRevision == rev {
			out = append(out, string(kv.Key))
		}
	}
	return out
}

// A split rollout reads back whole (GetRollout, the mirror) and a write
// puts the head and only the parts whose hosts changed.
func TestSplitRolloutWritesWhatChanged(t *testing.T) {
	s := startStore(t)
	m := startMirror(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// 1 + 10 + 1,500 hosts: parts of 500 in wave order, the first holding
	// waves 0 and 1 and 489 hosts of wave 2.
	r := testRollout("000001", 1, 10, 1500)
	rev, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{RolloutHeadKey("web", "000001"), RolloutPartKey("web", "000001", 0), RolloutPartKey("web", "000001", 1),
		RolloutPartKey("web", "000001", 2), RolloutPartKey("web", "000001", 3)}
	if got := keysWrittenAt(t, s, SplitRolloutsPrefix, rev); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("new split rollout wrote %v, want %v", got, want)
	}
	if got := keysWrittenAt(t, s, RolloutsPrefix, rev); len(got) != 0 {
		t.Fatalf("a split rollout wrote the one-key record too: %v", got)
	}
	got, err := s.GetRollout(ctx, "web", "000001")
	if err != nil || !proto.Equal(got, r) {
		t.Fatalf("GetRollout of a split rollout differs from what was written (%v)", err)
	}
	if err := m.WaitRev(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if vr, ok := m.Rollout("web", "000001"); !ok || !proto.Equal(vr.Val, r) || vr.Rev != rev || vr.Created != rev {
		t.Fatalf("mirror's copy of a split rollout: ok %v, revisions %d/%d want %d, equal %v", ok, vr.Rev, vr.Created, rev, proto.Equal(vr.Val, r))
	}
	if l := m.RolloutLayout("web", "000001"); l != Split {
		t.Fatalf("mirror says the layout is %s", l)
	}

	// One host of the last part moves: the head and that part only.
	next := proto.Clone(r).(*v1.Rollout)
	next.Waves[2].State = v1.WaveState_WAVE_STATE_PROGRESSING
	next.Waves[2].Hosts[1400].State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	rev2, _, err := s.WriteRollout(ctx, nil, next, RolloutBase{Rollout: r, Rev: rev, Layout: Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{RolloutHeadKey("web", "000001"), RolloutPartKey("web", "000001", 2)}
	if got := keysWrittenAt(t, s, SplitRolloutsPrefix, rev2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a step moving one host wrote %v, want %v", got, want)
	}
	if err := m.WaitRev(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	if vr, _ := m.Rollout("web", "000001"); !proto.Equal(vr.Val, next) || vr.Rev != rev2 || vr.Created != rev {
		t.Fatalf("mirror after the step: revisions %d/%d, want %d/%d, equal %v", vr.Rev, vr.Created, rev2, rev, proto.Equal(vr.Val, next))
	}

	// A stale base is a conflict, nothing written.
	if _, _, err := s.WriteRollout(ctx, nil, next, RolloutBase{Rollout: r, Rev: rev, Layout: Split}, nil, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("write over a stale revision: %v, want ErrConflict", err)
	}

	// Fewer hosts (fewer parts): the parts past the end are deleted.
	short := proto.Clone(next).(*v1.Rollout)
	short.Waves[2].Hosts = short.Waves[2].Hosts[:100]
	rev3, _, err := s.WriteRollout(ctx, nil, short, RolloutBase{Rollout: next, Rev: rev2, Layout: Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitRev(ctx, rev3); err != nil {
		t.Fatal(err)
	}
	if vr, _ := m.Rollout("web", "000001"); !proto.Equal(vr.Val, short) {
		t.Fatalf("mirror after the parts shrank: %d hosts in wave 2, want 100", len(vr.Val.GetWaves()[2].GetHosts()))
	}
	if got, err := s.GetRollout(ctx, "web", "000001"); err != nil || !proto.Equal(got, short) {
		t.Fatalf("GetRollout after the parts shrank differs (%v)", err)
	}
	// A new mirror loads the split rollout from scratch.
	m2 := startMirror(t, s)
	if err := m2.WaitRev(ctx, rev3); err != nil {
		t.Fatal(err)
	}
	if vr, _ := m2.Rollout("web", "000001"); !proto.Equal(vr.Val, short) || vr.Rev != rev3 || vr.Created != rev {
		t.Fatal("a mirror loading a split rollout assembles something else")
	}
}

// A rollout written by a coordinator from before the split layout (one
// key) loads and continues in its layout; an id is taken in either layout.
func TestOneKeyRolloutLoadsAndContinues(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := testRollout("000001", 1, 20)
	// As the old code wrote it: one put of the whole rollout.
	val, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.Put(ctx, RolloutKey("web", "000001"), string(val)); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, s)
	if err := m.WaitRev(ctx, 1); err != nil {
		t.Fatal(err)
	}
	vr, ok := m.Rollout("web", "000001")
	if !ok || !proto.Equal(vr.Val, r) || m.RolloutLayout("web", "000001") != OneKey {
		t.Fatalf("one-key rollout in the mirror: ok %v, layout %s", ok, m.RolloutLayout("web", "000001"))
	}
	next := proto.Clone(r).(*v1.Rollout)
	next.Waves[0].Hosts[0].State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	rev, _, err := s.WriteRollout(ctx, nil, next, RolloutBase{Rollout: vr.Val, Rev: vr.Rev, Layout: m.RolloutLayout("web", "000001")}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysWrittenAt(t, s, RolloutsPrefix, rev); len(got) != 1 || got[0] != RolloutKey("web", "000001") {
		t.Fatalf("continuing a one-key rollout wrote %v", got)
	}
	if got := keysWrittenAt(t, s, SplitRolloutsPrefix, rev); len(got) != 0 {
		t.Fatalf("continuing a one-key rollout wrote split keys %v", got)
	}
	if err := m.WaitRev(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if vr, _ := m.Rollout("web", "000001"); !proto.Equal(vr.Val, next) {
		t.Fatal("mirror did not follow the one-key rollout")
	}
	// The same id cannot be created in the other layout.
	if _, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, nil, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("split create over a one-key rollout: %v, want ErrConflict", err)
	}
	if _, _, err := s.WriteRollout(ctx, nil, testRollout("000002", 3), RolloutBase{Layout: Split}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.WriteRollout(ctx, nil, testRollout("000002", 3), RolloutBase{Layout: OneKey}, nil, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("one-key create over a split rollout: %v, want ErrConflict", err)
	}
}

// The limits: a rollout has at most maxRolloutParts parts (larger ones
// beyond rolloutPartHosts * maxRolloutParts hosts), so a new rollout of
// 40,000 hosts with a step's 1,000 events fits etcd's operations per
// transaction.
func TestSplitRolloutPartsBounded(t *testing.T) {
	for _, c := range []struct{ hosts, parts int }{{1, 1}, {500, 1}, {501, 2}, {32000, 64}, {32001, 64}, {40000, 64}} {
		_, parts := splitRollout(testRollout("000001", 1, c.hosts-1))
		if len(parts) != c.parts {
			t.Errorf("%d hosts: %d parts, want %d", c.hosts, len(parts), c.parts)
		}
	}
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := testRollout("000001", 1, 39999)
	var evs []*v1.Event
	for i := range 1000 {
		evs = append(evs, &v1.Event{At: timestamppb.Now(), Service: "web", RolloutId: "000001", Kind: "host_assigned", Host: fmt.Sprintf("h%04d", i)})
	}
	if _, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}}, 0, evs...); err != nil {
		t.Fatal(err)
	}
	// The decision's revision (the returned one is that of the last events).
	_, created, err := s.GetRolloutAt(ctx, "web", "000001", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysWrittenAt(t, s, SplitRolloutsPrefix, created); len(got) != 1+maxRolloutParts {
		t.Fatalf("%d keys written, want the head and %d parts", len(got), maxRolloutParts)
	}
	if got, err := s.GetRollout(ctx, "web", "000001"); err != nil || !proto.Equal(got, r) {
		t.Fatalf("GetRollout of 40,000 hosts differs (%v)", err)
	}
	if got, _, err := s.ListEvents(ctx, "web", "000001", listAll); err != nil || len(got) != len(evs) {
		t.Fatalf("%d events recorded, want %d (%v)", len(got), len(evs), err)
	}
}

// A split rollout rewritten in one key (UnsplitRollout): one write puts
// the one-key record and deletes the head and every part; a mirror
// following it and one loading afterwards both hold the whole rollout in
// one key; the next step writes one key; a stale base or a rollout that is
// not split is refused with nothing changed.
func TestUnsplitRollout(t *testing.T) {
	s := startStore(t)
	m := startMirror(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := testRollout("000001", 1, 10, 1500)
	rev, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UnsplitRollout(ctx, nil, RolloutBase{Rollout: r, Rev: rev - 1, Layout: Split}); !errors.Is(err, ErrConflict) {
		t.Fatalf("unsplit over a stale revision: %v, want ErrConflict", err)
	}
	if _, err := s.UnsplitRollout(ctx, nil, RolloutBase{Rollout: r, Rev: rev, Layout: OneKey}); err == nil || !strings.Contains(err.Error(), "want a stored split rollout") {
		t.Fatalf("unsplit of a one-key base: %v", err)
	}
	if err := m.WaitRev(ctx, rev); err != nil {
		t.Fatal(err)
	}
	rev2, err := s.UnsplitRollout(ctx, nil, RolloutBase{Rollout: r, Rev: rev, Layout: Split})
	if err != nil {
		t.Fatal(err)
	}
	if got := keysWrittenAt(t, s, RolloutsPrefix, rev2); fmt.Sprint(got) != fmt.Sprint([]string{RolloutKey("web", "000001")}) {
		t.Fatalf("unsplit wrote %v", got)
	}
	left, err := s.c.Get(ctx, SplitRolloutsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || left.Count != 0 {
		t.Fatalf("%d split keys left after unsplit (%v)", left.Count, err)
	}
	if err := m.WaitRev(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	vr, ok := m.Rollout("web", "000001")
	if !ok || !proto.Equal(vr.Val, r) || vr.Rev != rev2 || m.RolloutLayout("web", "000001") != OneKey {
		t.Fatalf("mirror after unsplit: ok %v, rev %d want %d, layout %s", ok, vr.Rev, rev2, m.RolloutLayout("web", "000001"))
	}
	m2 := startMirror(t, s)
	if err := m2.WaitRev(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	if vr, ok := m2.Rollout("web", "000001"); !ok || !proto.Equal(vr.Val, r) || m2.RolloutLayout("web", "000001") != OneKey {
		t.Fatal("a mirror loading after unsplit does not hold the rollout in one key")
	}
	next := proto.Clone(r).(*v1.Rollout)
	next.Waves[2].Hosts[1400].State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	rev3, _, err := s.WriteRollout(ctx, nil, next, RolloutBase{Rollout: vr.Val, Rev: vr.Rev, Layout: m.RolloutLayout("web", "000001")}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysWrittenAt(t, s, Prefix, rev3); fmt.Sprint(got) != fmt.Sprint([]string{RolloutKey("web", "000001")}) {
		t.Fatalf("the step after unsplit wrote %v", got)
	}
	if got, err := s.GetRollout(ctx, "web", "000001"); err != nil || !proto.Equal(got, next) {
		t.Fatalf("GetRollout after unsplit and a step differs (%v)", err)
	}
}

// A split rollout missing a part in the middle (a damaged record: no write
// makes one) is an error to GetRollout, not a rollout with hosts missing;
// the mirror keeps the last whole copy.
// The last part missing is not read as a shorter rollout: the head counts
// its parts (before it, a rollout of 1,499 hosts without its last part was
// read as one of 1,000).
func TestSplitRolloutLastPartMissingRefused(t *testing.T) {
	s := startStore(t)
	m := startMirror(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := testRollout("000001", 1, 1499) // parts 0, 1, 2
	rev, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRollout(ctx, "web", "000001")
	if err != nil || !proto.Equal(got, r) {
		t.Fatalf("GetRollout: %v (equal %v)", err, proto.Equal(got, r))
	}
	if got.SplitParts != nil {
		t.Fatalf("a rollout as read carries split_parts %d (storage only)", got.GetSplitParts())
	}
	if err := m.WaitRev(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if vr, ok := m.Rollout("web", "000001"); !ok || !proto.Equal(vr.Val, r) {
		t.Fatal("the mirror does not have the whole rollout")
	}
	del, err := s.c.Delete(ctx, RolloutPartKey("web", "000001", 2))
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete part 2: %v", err)
	}
	if _, err := s.GetRollout(ctx, "web", "000001"); err == nil || !strings.Contains(err.Error(), "2 parts found, the head says 3") {
		t.Fatalf("GetRollout of a rollout without its last part: %v, want 2 parts found, the head says 3", err)
	}
	if err := m.WaitRev(ctx, del.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if vr, ok := m.Rollout("web", "000001"); !ok || !proto.Equal(vr.Val, r) || vr.Rev != rev {
		t.Fatalf("the mirror does not keep the last whole copy: ok %v rev %d want %d", ok, vr.Rev, rev)
	}
}

// A head written before heads counted their parts is read with the parts
// found.
func TestSplitRolloutHeadWithoutCount(t *testing.T) {
	head, parts := splitRollout(testRollout("000001", 1, 1499))
	if head.GetSplitParts() != 3 || len(parts) != 3 {
		t.Fatalf("split_parts %d, %d parts: want 3", head.GetSplitParts(), len(parts))
	}
	head.SplitParts = nil
	r, err := assembleRollout(head, parts[:2])
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, w := range r.GetWaves() {
		n += len(w.GetHosts())
	}
	if n != 1000 {
		t.Fatalf("%d hosts assembled, want 1000", n)
	}
}

func TestSplitRolloutGapRefused(t *testing.T) {
	s := startStore(t)
	m := startMirror(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := testRollout("000001", 1, 1499)
	rev, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitRev(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Rollout("web", "000001"); !ok {
		t.Fatal("the mirror does not have the whole rollout")
	}
	del, err := s.c.Delete(ctx, RolloutPartKey("web", "000001", 1))
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete part 1: %v", err)
	}
	if _, err := s.GetRollout(ctx, "web", "000001"); err == nil || !strings.Contains(err.Error(), "part 1 missing") {
		t.Fatalf("GetRollout of a rollout without part 1: %v, want part 1 missing", err)
	}
	if err := m.WaitRev(ctx, del.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if vr, ok := m.Rollout("web", "000001"); !ok || !proto.Equal(vr.Val, r) || vr.Rev != rev {
		t.Fatalf("the mirror does not keep the last whole copy: ok %v rev %d want %d, waves %d", ok, vr.Rev, rev, len(vr.Val.GetWaves()))
	}
}
