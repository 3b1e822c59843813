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
	"go.etcd.io/etcd/client/v3/concurrency"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// listAll is a ListEvents limit above any test's events.
const listAll = 1 << 30

// startStore starts a real embedded etcd in a temp dir.
func startStore(t testing.TB) *Store {
	t.Helper()
	emb, err := StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	c, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return New(c)
}

func TestReleaseIsImmutable(t *testing.T) {
	s := startStore(t)
	ctx := context.Background()
	r := &v1.Release{Service: "web", Version: "v1", Artifact: &v1.Artifact{Sha256: "ab", Size: 1}}
	if _, err := s.CreateRelease(ctx, r); err != nil {
		t.Fatal(err)
	}
	r2 := &v1.Release{Service: "web", Version: "v1", Artifact: &v1.Artifact{Sha256: "cd", Size: 2}}
	if _, err := s.CreateRelease(ctx, r2); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: got %v, want ErrExists", err)
	}
	got, err := s.GetRelease(ctx, "web", "v1")
	if err != nil || got.GetArtifact().GetSha256() != "ab" {
		t.Fatalf("release changed: %v %v", got, err)
	}
}

func TestApplySpecKeepsStatus(t *testing.T) {
	s := startStore(t)
	ctx := context.Background()
	now := time.Unix(1000, 0)
	ap, err := s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web"}, now, nil)
	if err != nil || !ap.Created || ap.Service.GetSpecRevision() != 1 {
		t.Fatalf("create: %+v %v", ap, err)
	}
	svc := ap.Service
	_, rev, err := s.GetService(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	svc.Status.StableVersion = "v1"
	if _, err := s.PutService(ctx, nil, svc, rev); err != nil {
		t.Fatal(err)
	}
	ap, err = s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}}, now, nil)
	if err != nil || ap.Created || ap.Unchanged {
		t.Fatalf("update: %+v %v", ap, err)
	}
	svc2 := ap.Service
	if svc2.GetStatus().GetStableVersion() != "v1" || svc2.GetSpec().GetSelector()["role"] != "web" || svc2.GetSpecRevision() != 2 {
		t.Fatalf("status lost, spec not replaced or not numbered 2: %v", svc2)
	}
	// The same spec again: nothing is written, the revision stays.
	_, before, _ := s.GetService(ctx, "web")
	ap, err = s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}}, now.Add(time.Hour), nil)
	if _, after, _ := s.GetService(ctx, "web"); err != nil || !ap.Unchanged || ap.Service.GetSpecRevision() != 2 || after != before {
		t.Fatalf("same spec again: %+v %v (mod revision %d -> %d)", ap, err, before, after)
	}
	// A stale compare-and-swap loses.
	if _, err := s.PutService(ctx, nil, svc, rev); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale put: got %v, want ErrConflict", err)
	}
}

// A deposed leader's writes fail with ErrNotLeader, in either layout.
func TestFencedWriteAfterLosingLeadership(t *testing.T) {
	for _, layout := range []RolloutLayout{OneKey, Split} {
		t.Run(layout.String(), func(t *testing.T) { testFencedWriteAfterLosingLeadership(t, layout) })
	}
}

func testFencedWriteAfterLosingLeadership(t *testing.T, layout RolloutLayout) {
	s := startStore(t)
	ctx := context.Background()
	sess, err := concurrency.NewSession(s.Client(), concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(sess, ElectionPrefix)
	if err := e.Campaign(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	fence := &Fence{Key: e.Key(), Rev: e.Rev()}
	r := &v1.Rollout{Id: "000001", Service: "web", ToVersion: "v1", Waves: []*v1.Wave{{Hosts: []*v1.HostProgress{{HostId: "h1"}}}}}
	rev, _, err := s.WriteRollout(ctx, fence, r, RolloutBase{Layout: layout}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Creating the same rollout twice is a conflict, not a lost fence.
	if _, _, err := s.WriteRollout(ctx, fence, r, RolloutBase{Layout: layout}, nil, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("double create: got %v, want ErrConflict", err)
	}
	// Leadership lost (session closed, key deleted): writes are refused.
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	next := proto.Clone(r).(*v1.Rollout)
	next.ToVersion = "v2"
	next.Waves[0].Hosts[0].State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	if _, _, err := s.WriteRollout(ctx, fence, next, RolloutBase{Rollout: r, Rev: rev, Layout: layout}, nil, 0); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("write after losing leadership: got %v, want ErrNotLeader", err)
	}
	got, err := s.GetRollout(ctx, "web", "000001")
	if err != nil || got.GetToVersion() != "v1" || got.GetWaves()[0].GetHosts()[0].GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_UNSPECIFIED {
		t.Fatalf("rollout changed by a deposed leader: %v %v", got, err)
	}
}

func TestMirrorFollowsWrites(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewMirror(s, zerolog.Nop())
	go func() { _ = m.Run(ctx) }()
	ch, unsub := m.Subscribe()
	defer unsub()
	if err := s.PutHost(ctx, &v1.Host{Id: "h1", Labels: map[string]string{"zone": "a"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutReport(ctx, "h1", &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Get(ctx, Prefix, clientWithCountOnlyForTest())
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := m.WaitRev(wctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-wctx.Done():
		t.Fatal("no change notification")
	}
	if h, ok := m.Host("h1"); !ok || h.GetLabels()["zone"] != "a" {
		t.Fatalf("host not mirrored: %v", h)
	}
	if r := m.Report("h1", "web"); r.GetPhase() != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("report not mirrored: %v", r)
	}
	epoch := m.DesiredEpoch()
	if err := s.PutReport(ctx, "h1", &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FAILED}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the FAILED report mirrored", func() bool { return m.Report("h1", "web").GetPhase() == v1.Phase_PHASE_FAILED })
	if m.DesiredEpoch() != epoch {
		t.Fatal("a report changed the desired epoch")
	}
	// A report whose staged_sha256 changes does: it makes a holder of a
	// staged artifact (rollout.PlanStage).
	if err := s.PutReport(ctx, "h1", &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FAILED, StagedSha256: "aa"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the staged report mirrored", func() bool { return m.Report("h1", "web").GetStagedSha256() == "aa" })
	if m.DesiredEpoch() == epoch {
		t.Fatal("a report's new staged_sha256 did not change the desired epoch")
	}
	// So does one whose stage_failed_sha256 changes: the host's admission
	// slot goes to another waiting host.
	epoch = m.DesiredEpoch()
	if err := s.PutReport(ctx, "h1", &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FAILED, StagedSha256: "aa", StageFailedSha256: "bb"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the failed-staging report mirrored", func() bool { return m.Report("h1", "web").GetStageFailedSha256() == "bb" })
	if m.DesiredEpoch() == epoch {
		t.Fatal("a report's new stage_failed_sha256 did not change the desired epoch")
	}
	// Both were paced changes (Epochs: the hub paces those), and so was
	// the host's record: every change so far.
	if d, p := m.Epochs(); d != m.DesiredEpoch() || p != 3 || d != 3 {
		t.Fatalf("Epochs() = %d, %d; want 3, 3 (the host record and two staging changes, all paced)", d, p)
	}
	// A service is not paced.
	if _, err := s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web"}, time.Unix(1000, 0), nil); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the service mirrored", func() bool { d, _ := m.Epochs(); return d > 3 })
	if d, p := m.Epochs(); p != 3 {
		t.Fatalf("Epochs() = %d, %d after a service changed; want the paced count still 3", d, p)
	}
	// A release is not paced; its artifact's prune mark (or restore) is:
	// no host's assignment names a release whose artifact is marked.
	rel := &v1.Release{Service: "web", Version: "v1", Artifact: &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 1}}
	if _, err := s.CreateRelease(ctx, rel); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the release mirrored", func() bool { _, ok := m.Release("web", "v1"); return ok })
	d0, p0 := m.Epochs()
	if p0 != 3 {
		t.Fatalf("Epochs() = %d, %d after a release was created; want the paced count still 3", d0, p0)
	}
	vr := m.Releases("web")[0]
	marked := proto.Clone(vr.Val).(*v1.Release)
	marked.ArtifactPrunedAt = timestamppb.Now()
	if _, err := s.UpdateRelease(ctx, nil, marked, vr.Rev); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "the mark mirrored", func() bool { r, _ := m.Release("web", "v1"); return r.GetArtifactPrunedAt() != nil })
	if d, p := m.Epochs(); d != d0+1 || p != p0+1 {
		t.Fatalf("Epochs() = %d, %d after a prune mark; want %d, %d (a desired change, paced)", d, p, d0+1, p0+1)
	}
	// A connect counts in Connects (the hub replans staging when the host
	// was one its plan left out), not in the desired epoch.
	conns, epoch := m.Connects(), m.DesiredEpoch()
	if err := s.PutConn(ctx, "h1", "c1", 0); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "h1 connected in the mirror", func() bool { return m.Connected("h1") })
	// Observe reads the three at once.
	if c, since, r := m.Observe("h1", "web"); !c || since.IsZero() || r.GetStageFailedSha256() != "bb" {
		t.Fatalf("Observe(h1, web) connected = %v, since %s, report %v; want connected, a time, the last report", c, since, r)
	}
	if _, _, r := m.Observe("h1", "other"); r != nil {
		t.Fatalf("Observe(h1, other): report %v, want none", r)
	}
	if m.Connects() != conns+1 || m.DesiredEpoch() != epoch {
		t.Fatalf("a connect: Connects %d → %d, desired epoch %d → %d; want one more connect, the same epoch", conns, m.Connects(), epoch, m.DesiredEpoch())
	}
	// A disconnect counts in Disconnects (the hub replans staging when
	// the host was one its plan counted on), not in the desired epoch.
	disc := m.Disconnects()
	if err := s.DeleteConn(ctx, "h1", "other"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteConn(ctx, "h1", "c1"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "h1 disconnected in the mirror", func() bool { return !m.Connected("h1") })
	if c, since, r := m.Observe("h1", "web"); c || !since.IsZero() || r == nil {
		t.Fatalf("Observe(h1, web) after the disconnect: connected = %v, since %s, report %v; want not connected, no time, the report kept", c, since, r)
	}
	if m.Disconnects() != disc+1 || m.DesiredEpoch() != epoch {
		t.Fatalf("a disconnect: Disconnects %d → %d, desired epoch %d → %d; want one more disconnect, the same epoch", disc, m.Disconnects(), epoch, m.DesiredEpoch())
	}
}

func clientWithCountOnlyForTest() clientv3.OpOption { return clientv3.WithCountOnly() }

// A step that moves hundreds of hosts carries an event per host: more than
// etcd's 128 operations per transaction. The decision commits with the
// first events and the rest follow, all recorded, in order.
func TestWriteRolloutWithManyEvents(t *testing.T) {
	s := startStore(t)
	kv := &testkit.TxnCounter{KV: s.c.KV}
	s.c.KV = kv
	ctx := context.Background()
	r := &v1.Rollout{Id: "000001", Service: "web", ToVersion: "v1"}
	now := time.Now()
	var evs []*v1.Event
	// More batches than maxEventTxns: they are written concurrently.
	for i := range 1050 {
		evs = append(evs, &v1.Event{At: timestamppb.New(now), Service: "web", RolloutId: "000001", Kind: "host_assigned", Host: fmt.Sprintf("h%04d", i)})
	}
	decision, rev, err := s.WriteRollout(ctx, nil, r, RolloutBase{}, nil, 0, evs...)
	if err != nil {
		t.Fatal(err)
	}
	// The decision's revision is the rollout's (the next write compares it).
	if _, created, err := s.GetRolloutAt(ctx, "web", "000001", 0); err != nil || created != decision || decision >= rev {
		t.Fatalf("rollout created at %d (%v); WriteRollout said decision %d, last %d", created, err, decision, rev)
	}
	// The revision returned covers every event's write (the leader waits
	// for it in its mirror).
	resp, err := s.c.Get(ctx, EventsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if kv.ModRevision > rev {
			t.Fatalf("event %s written at revision %d, after the %d WriteRollout returned", kv.Key, kv.ModRevision, rev)
		}
	}
	got, _, err := s.ListEvents(ctx, "web", "000001", listAll)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(evs) {
		t.Fatalf("%d events recorded, want %d", len(got), len(evs))
	}
	for i, e := range got {
		if e.GetHost() != fmt.Sprintf("h%04d", i) {
			t.Fatalf("event %d is for %s", i, e.GetHost())
		}
	}
	if most := kv.Most(); most > maxEventTxns {
		t.Errorf("%d transactions in flight at once, over maxEventTxns (%d)", most, maxEventTxns)
	}
}

// Pruning removes exactly the events of older rollouts of that service,
// and audit entries before a time; nothing of another service.
func TestPruneEventsAndAudit(t *testing.T) {
	s := startStore(t)
	ctx := context.Background()
	now := time.Now()
	var evs []*v1.Event
	for _, svc := range []string{"web", "web2", "we"} {
		for _, id := range []string{"", "000001", "000002", "000010", "000011"} {
			evs = append(evs, &v1.Event{At: timestamppb.New(now), Service: svc, RolloutId: id, Kind: "k"})
		}
	}
	if err := s.PutEvents(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	n, err := s.PruneEvents(ctx, nil, "web", "000010")
	if err != nil || n != 3 {
		t.Fatalf("pruned %d (%v), want 3 (no rollout, 000001, 000002)", n, err)
	}
	left := func(svc string) (ids []string) {
		got, _, err := s.ListEvents(ctx, svc, "", listAll)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range got {
			ids = append(ids, e.GetRolloutId())
		}
		return ids
	}
	if got := fmt.Sprint(left("web")); got != "[000010 000011]" {
		t.Errorf("web keeps %s", got)
	}
	for _, other := range []string{"web2", "we"} {
		if got := left(other); len(got) != 5 {
			t.Errorf("%s lost events: %v", other, got)
		}
	}
	if _, err := s.PruneEvents(ctx, nil, "", "000010"); err == nil {
		t.Error("pruning every service's events was allowed")
	}
	for i, at := range []time.Time{now.Add(-48 * time.Hour), now.Add(-time.Hour), now} {
		if err := s.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.New(at), Method: fmt.Sprint(i)}, i); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PruneAudit(ctx, nil, now.Add(-24*time.Hour)); err != nil || n != 1 {
		t.Fatalf("pruned %d audit entries (%v), want 1", n, err)
	}
	if a, err := s.ListAudit(ctx, 10); err != nil || len(a) != 2 || a[0].GetMethod() != "1" {
		t.Errorf("audit left: %v %v", a, err)
	}
}

// The audit log keeps its newest entries up to a count; pruning goes in
// batches, so a log far over the count is brought back in one call.
func TestPruneAuditCount(t *testing.T) {
	s := startStore(t)
	ctx := context.Background()
	now := time.Now()
	const n = auditPruneBatch + 25
	ops := make([]clientv3.Op, 0, 100)
	for i := range n {
		e := &v1.AuditEntry{At: timestamppb.New(now.Add(time.Duration(i) * time.Millisecond)), Method: fmt.Sprint(i)}
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%020d-%06d", AuditPrefix, e.GetAt().AsTime().UnixNano(), i), string(b)))
		if len(ops) == cap(ops) || i == n-1 {
			if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	deleted, err := s.PruneAuditCount(ctx, nil, 10)
	if err != nil || deleted != n-10 {
		t.Fatalf("pruned %d (%v), want %d", deleted, err, n-10)
	}
	a, err := s.ListAudit(ctx, 100)
	if err != nil || len(a) != 10 || a[0].GetMethod() != fmt.Sprint(n-10) || a[9].GetMethod() != fmt.Sprint(n-1) {
		t.Errorf("audit left: %d entries, first %v, %v; want the newest 10", len(a), a[0].GetMethod(), err)
	}
	if deleted, err := s.PruneAuditCount(ctx, nil, 10); err != nil || deleted != 0 {
		t.Errorf("second prune: %d %v", deleted, err)
	}
}

// A service being deleted refuses a spec; a deleted one is created anew
// with the status recreate makes of it, its spec revisions going on.
func TestApplySpecDeletingAndDeleted(t *testing.T) {
	s := startStore(t)
	ctx := context.Background()
	now := time.Unix(1000, 0)
	ap, err := s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web"}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, rev, _ := s.GetService(ctx, "web")
	svc.Status = &v1.ServiceStatus{Removing: true, RolloutSeq: 7, LastRolloutId: "000007", StableGeneration: 9}
	if _, err := s.PutService(ctx, nil, svc, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web", Selector: map[string]string{"a": "b"}}, now, nil); !errors.Is(err, ErrBeingDeleted) || !strings.Contains(err.Error(), "000007") {
		t.Fatalf("apply while deleting: %v", err)
	}
	svc, rev, _ = s.GetService(ctx, "web")
	svc.Status.Removed = true
	if _, err := s.PutService(ctx, nil, svc, rev); err != nil {
		t.Fatal(err)
	}
	recreate := func(st *v1.ServiceStatus) *v1.ServiceStatus {
		return &v1.ServiceStatus{RolloutSeq: st.GetRolloutSeq(), StableGeneration: st.GetStableGeneration()}
	}
	ap, err = s.ApplySpec(ctx, &v1.ServiceSpec{Name: "web"}, now, recreate)
	if err != nil || !ap.Created || ap.Service.GetSpecRevision() != 2 || ap.Service.GetStatus().GetRemoved() ||
		ap.Service.GetStatus().GetRolloutSeq() != 7 || ap.Service.GetStatus().GetStableGeneration() != 9 {
		t.Fatalf("apply of a deleted service: %+v %v", ap, err)
	}
}

// TestMirrorLoadsBlackouts: a mirror started after a blackout was stored
// has it (the watch alone brought blackouts: a coordinator started during
// a freeze, or a mirror reloaded after a broken watch, ignored it).
func TestMirrorLoadsBlackouts(t *testing.T) {
	s := startStore(t)
	ctx := context.Background()
	now := time.Now()
	rev, err := s.PutBlackout(ctx, &v1.Blackout{Id: "b1", From: timestamppb.New(now), To: timestamppb.New(now.Add(time.Hour))}, 10)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMirror(s, zerolog.Nop())
	if _, err := m.load(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Rev() < rev {
		t.Fatalf("loaded at %d, before the blackout (%d)", m.Rev(), rev)
	}
	if bs := m.Blackouts(); len(bs) != 1 || bs[0].GetId() != "b1" {
		t.Fatalf("blackouts %v, want b1", bs)
	}
}
