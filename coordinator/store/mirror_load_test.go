package store

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// loadSizes is what fillMirrored writes: rollouts (one key each, and
// split) of rolloutHosts hosts after small ones, releases of one service,
// hosts with a connection and reports, and a few of everything else.
type loadSizes struct {
	releases, rollouts, rolloutHosts, splits, hosts, reports int
}

// fillMirrored writes sz's records under every mirrored prefix, in
// transactions of at most 1 MiB (the embedded etcd takes 16), and returns
// the revision of the last.
func fillMirrored(tb testing.TB, cli *clientv3.Client, sz loadSizes) int64 {
	tb.Helper()
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	var ops []clientv3.Op
	put := func(key string, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			tb.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(key, string(b)))
	}
	for s := range 3 {
		name := fmt.Sprintf("svc-%d", s)
		put(ServiceKey(name), &v1.Service{Spec: &v1.ServiceSpec{Name: name}, SpecRevision: int64(s + 1)})
	}
	for v := range sz.releases {
		put(ReleaseKey("svc-0", fmt.Sprintf("v%06d", v)), &v1.Release{Service: "svc-0", Version: fmt.Sprintf("v%06d", v),
			Artifact: &v1.Artifact{Url: "https://artifacts.example.com/svc-0.tar.gz", Sha256: fmt.Sprintf("%064x", v), Size: 12 << 20},
			Signed:   &v1.SignedManifest{Manifest: make([]byte, 400), Signature: make([]byte, 64), KeyId: "release-key-1"}})
	}
	// Small rollouts sort first (ids "a…"), so pages have grown when the
	// large ones ("b…") come, then small ones again ("c…").
	for i := range sz.rollouts {
		hosts, id := 3, fmt.Sprintf("a%04d", i)
		switch i % 3 {
		case 1:
			hosts, id = sz.rolloutHosts, fmt.Sprintf("b%04d", i)
		case 2:
			id = fmt.Sprintf("c%04d", i)
		}
		put(RolloutKey("svc-1", id), loadRollout("svc-1", id, hosts, now))
	}
	for i := range sz.splits {
		id := fmt.Sprintf("s%04d", i)
		_, sops, err := rolloutOps(loadRollout("svc-2", id, sz.rolloutHosts, now), RolloutBase{Layout: Split})
		if err != nil {
			tb.Fatal(err)
		}
		ops = append(ops, sops...)
	}
	for i := range sz.hosts {
		id := fmt.Sprintf("host-%05d", i)
		put(HostKey(id), &v1.Host{Id: id, Labels: map[string]string{"zone": fmt.Sprintf("z%d", i%3)}, PeerAddress: id + ":7443"})
		ops = append(ops, clientv3.OpPut(ConnKey(id), "coord-1/abcdef"))
		for s := range sz.reports {
			svc := fmt.Sprintf("svc-%d", s)
			put(ReportKey(id, svc), &v1.ServiceReport{Service: svc, Generation: int64(i), Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v1.2.3",
				Checks: []*v1.CheckResult{{Name: "http", Ok: true, Detail: "GET http://127.0.0.1:8080/healthz: 200"}}})
		}
	}
	for i := range 5 {
		put(TokenKey(fmt.Sprintf("tok-%d", i)), &v1.Token{Id: fmt.Sprintf("tok-%d", i), Role: "join", SecretSha256: fmt.Sprintf("%064x", i)})
		put(CoordinatorKey(fmt.Sprintf("coord-%d", i)), &v1.CoordinatorInfo{Name: fmt.Sprintf("coord-%d", i), Address: "127.0.0.1:7000"})
		r := &v1.Revocation{Serial: fmt.Sprintf("%x", 1000+i), Reason: "lost", RevokedAt: timestamppb.New(now)}
		put(RevocationKey(r), r)
		put(BlackoutKey(fmt.Sprintf("b-%d", i)), &v1.Blackout{Id: fmt.Sprintf("b-%d", i), From: timestamppb.New(now), To: timestamppb.New(now.Add(time.Hour))})
	}
	var rev int64
	for len(ops) > 0 {
		n := fitOps(ops, 1000, 1<<20, true)
		resp, err := cli.Txn(ctx).Then(ops[:n]...).Commit()
		if err != nil {
			tb.Fatal(err)
		}
		rev, ops = resp.Header.Revision, ops[n:]
	}
	return rev
}

// loadRollout is a finished rollout of hosts hosts in two waves.
func loadRollout(svc, id string, hosts int, at time.Time) *v1.Rollout {
	r := &v1.Rollout{Id: id, Service: svc, ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, CreatedAt: timestamppb.New(at)}
	for w := range 2 {
		wv := &v1.Wave{Index: uint32(w), State: v1.WaveState_WAVE_STATE_DONE}
		for i := w * hosts / 2; i < (w+1)*hosts/2; i++ {
			wv.Hosts = append(wv.Hosts, &v1.HostProgress{HostId: fmt.Sprintf("host-%05d", i), State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE,
				Phase: v1.Phase_PHASE_HEALTHY, DoneAt: timestamppb.New(at.Add(time.Duration(i) * time.Millisecond)), Zone: "zone-a"})
		}
		r.Waves = append(r.Waves, wv)
	}
	return r
}

// mirrorDump renders what a mirror holds (every map but the connection
// times), one line a record, for comparing two mirrors.
func mirrorDump(tb testing.TB, m *Mirror) map[string]string {
	tb.Helper()
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[string]string{}
	add := func(key string, msg proto.Message, rev, created int64) {
		b, err := deterministic.Marshal(msg)
		if err != nil {
			tb.Fatal(err)
		}
		out[key] = fmt.Sprintf("%d %d %x", rev, created, b)
	}
	for k, v := range m.services {
		add("services/"+k, v.Val, v.Rev, v.Created)
	}
	for s, vs := range m.releases {
		for k, v := range vs {
			add("releases/"+s+"/"+k, v.Val, v.Rev, v.Created)
		}
	}
	for s, vs := range m.rollouts {
		for k, v := range vs {
			add("rollouts/"+s+"/"+k, v.Val, v.Rev, v.Created)
		}
	}
	for k, v := range m.hosts {
		add("hosts/"+k, v, 0, 0)
	}
	for k, v := range m.conns {
		out["conns/"+k] = v
	}
	for h, hr := range m.reports {
		for _, r := range hr {
			add("reports/"+h+"/"+r.service, r.r, 0, 0)
		}
	}
	for k, v := range m.coords {
		add("coords/"+k, v, 0, 0)
	}
	for k, v := range m.tokens {
		add("tokens/"+k, v.Val, v.Rev, v.Created)
	}
	for k, v := range m.revocations {
		add("revocations/"+k, v.Val, v.Rev, v.Created)
	}
	for k, v := range m.blackouts {
		add("blackouts/"+k, v, 0, 0)
	}
	return out
}

// etcdMirror is what a mirror loaded at revision rev holds, from one Get of
// the whole keyspace with a client that takes it (cli): every record
// applied as the mirror applies a watch's.
func etcdMirror(tb testing.TB, cli *clientv3.Client, rev int64) *Mirror {
	tb.Helper()
	resp, err := cli.Get(context.Background(), Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		tb.Fatal(err)
	}
	m := NewMirror(nil, zerolog.Nop())
	m.mu.Lock()
	for _, kv := range resp.Kvs {
		m.applyLocked(mvccpb.PUT, kv)
	}
	m.assembleLocked()
	m.mu.Unlock()
	return m
}

// sameMirror fails unless got holds what want does.
func sameMirror(tb testing.TB, got, want *Mirror) {
	tb.Helper()
	g, w := mirrorDump(tb, got), mirrorDump(tb, want)
	var diffs []string
	for k, v := range w {
		if gv, ok := g[k]; !ok {
			diffs = append(diffs, "missing "+k)
		} else if gv != v {
			diffs = append(diffs, "differs "+k)
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			diffs = append(diffs, "extra "+k)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		tb.Fatalf("mirror (%d records) differs from etcd (%d) in %d: %s", len(g), len(w), len(diffs), strings.Join(diffs[:min(len(diffs), 10)], "; "))
	}
}

// hookKV calls after (when set) after every Get that succeeded, with the
// number of Gets so far and the response, and counts the Gets the client
// refused as too large.
type hookKV struct {
	clientv3.KV
	mu      sync.Mutex
	after   func(n int, resp *clientv3.GetResponse)
	gets    int
	refused int
}

func (h *hookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := h.KV.Get(ctx, key, opts...)
	h.mu.Lock()
	h.gets++
	if status.Code(err) == codes.ResourceExhausted {
		h.refused++
	}
	n, after := h.gets, h.after
	h.mu.Unlock()
	if err == nil && after != nil {
		after(n, resp)
	}
	return resp, err
}

// TestMirrorLoadOverRecvLimit: the mirror loads prefixes larger than the
// etcd client takes in one response (here a client of 1 MiB, pages of
// 128 KiB: releases, reports, and rollouts whose records of 860 KB follow
// small ones, each prefix over 1 MiB; split rollouts of 860 KB),
// and holds what etcd holds at the revision it loaded. One Get per prefix
// failed here ("received message larger than max").
func TestMirrorLoadOverRecvLimit(t *testing.T) {
	emb, err := StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	big, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { big.Close() })
	const recv = 1 << 20
	small, err := clientv3.New(clientv3.Config{Endpoints: emb.Endpoints, TLS: emb.ClientTLS, DialTimeout: 5 * time.Second,
		MaxCallRecvMsgSize: recv, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { small.Close() })
	hook := &hookKV{KV: small.KV}
	small.KV = hook
	s := New(small)
	s.scanBytes = recv / 8

	// A large rollout is about 57 KB per 1,000 hosts: 15,000 are 860 KB,
	// under the client's limit alone, far over a page.
	sz := loadSizes{releases: 2000, rollouts: 9, rolloutHosts: 15000, splits: 2, hosts: 5000, reports: 2}
	fillMirrored(t, big, sz)
	for _, p := range []string{ReleasesPrefix, RolloutsPrefix, ReportsPrefix} {
		resp, err := big.Get(context.Background(), p, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if n := sizeOf(resp); n <= recv {
			t.Fatalf("%s holds %d bytes: not over the client's %d", p, n, recv)
		}
	}

	m := NewMirror(s, zerolog.Nop())
	rev, err := m.load(context.Background())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if m.Rev() != rev || !m.Ready() {
		t.Fatalf("loaded at %d (ready %v), load said %d", m.Rev(), m.Ready(), rev)
	}
	if hook.refused == 0 {
		t.Errorf("no page refused as too large in %d Gets: the large rollouts after small ones did not test the fallback", hook.gets)
	}
	t.Logf("%d Gets, %d refused as too large", hook.gets, hook.refused)
	want := etcdMirror(t, big, rev)
	if n := len(want.rollouts["svc-1"]) + len(want.rollouts["svc-2"]); n != sz.rollouts+sz.splits {
		t.Fatalf("etcd holds %d rollouts, want %d", n, sz.rollouts+sz.splits)
	}
	sameMirror(t, m, want)
}

// sizeOf is the encoded size of a Get's records.
func sizeOf(resp *clientv3.GetResponse) int {
	n := 0
	for _, kv := range resp.Kvs {
		n += proto.Size(kv)
	}
	return n
}

// TestMirrorLoadWriteBetweenPages: writes landing while the mirror reads
// its pages (a record of a page already read changed and one deleted, one
// of a page not read yet, one of a prefix not read yet) are not in the
// load, which reads every page at the first page's revision, and reach
// the mirror through the watch that follows from that revision + 1.
func TestMirrorLoadWriteBetweenPages(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fillMirrored(t, s.c, loadSizes{releases: 300, rollouts: 6, rolloutHosts: 200, splits: 1, hosts: 300, reports: 2})
	s.scanBytes = 4 << 10 // pages of a few records

	hook := &hookKV{KV: s.c.KV}
	var once sync.Once
	var loadRev, writeRev int64
	wrote := make(chan struct{})
	hook.after = func(n int, resp *clientv3.GetResponse) {
		// After the mirror's second page (of releases).
		if n < 2 {
			loadRev = resp.Header.Revision
			return
		}
		once.Do(func() {
			defer close(wrote)
			rel := &v1.Release{Service: "svc-0", Version: "v000000", Commit: "changed"}
			b, _ := proto.Marshal(rel)
			late := &v1.Release{Service: "svc-0", Version: "v000299", Commit: "changed too"}
			lb, _ := proto.Marshal(late)
			tok := &v1.Token{Id: "tok-new", Role: "viewer"}
			kb, _ := proto.Marshal(tok)
			resp, err := s.c.Txn(ctx).Then(
				clientv3.OpPut(ReleaseKey("svc-0", "v000000"), string(b)),
				clientv3.OpDelete(ReleaseKey("svc-0", "v000001")),
				clientv3.OpPut(ReleaseKey("svc-0", "v000299"), string(lb)),
				clientv3.OpPut(TokenKey("tok-new"), string(kb)),
			).Commit()
			if err != nil {
				t.Error(err)
				return
			}
			writeRev = resp.Header.Revision
		})
	}
	s.c.KV = hook
	m := NewMirror(s, zerolog.Nop())
	go func() { _ = m.Run(ctx) }()

	select {
	case <-wrote:
	case <-time.After(60 * time.Second):
		t.Fatal("the mirror's load never read a second page")
	}
	if t.Failed() {
		return
	}
	if loadRev == 0 || loadRev >= writeRev {
		t.Fatalf("load read at revision %d, the writes are at %d: not between pages", loadRev, writeRev)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if err := m.WaitRev(wctx, writeRev); err != nil {
		t.Fatal(err)
	}
	hook.mu.Lock()
	hook.after = nil
	hook.mu.Unlock()
	if r, ok := m.Release("svc-0", "v000000"); !ok || r.GetCommit() != "changed" {
		t.Errorf("release changed after its page: %v %v", r, ok)
	}
	if _, ok := m.Release("svc-0", "v000001"); ok {
		t.Error("release deleted after its page is still mirrored")
	}
	if r, ok := m.Release("svc-0", "v000299"); !ok || r.GetCommit() != "changed too" {
		t.Errorf("release changed before its page: %v %v", r, ok)
	}
	if len(m.Tokens()) != 6 {
		t.Errorf("%d tokens, want 6 (one written before its prefix was read)", len(m.Tokens()))
	}
	sameMirror(t, m, etcdMirror(t, s.c, m.Rev()))
}

// BenchmarkMirrorLoad loads a mirror (every prefix, in pages) over the
// coordinator's own client (RecvMsgBytes): 200 kept rollouts of 10,000
// hosts (76 MiB, over what one Get takes) among 400 small ones, and 10,000
// hosts' reports of 10 services. It reports the Gets a load makes and the bytes it read.
func BenchmarkMirrorLoad(b *testing.B) {
	for _, c := range []struct {
		name string
		sz   loadSizes
	}{
		{"rollouts=200x10000", loadSizes{rollouts: 600, rolloutHosts: 10000}}, // 200 large, 400 small
		{"reports=10000x10", loadSizes{hosts: 10000, reports: 10}},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := startStore(b)
			fillMirrored(b, s.c, c.sz)
			hook := &hookKV{KV: s.c.KV}
			var bytes int
			hook.after = func(_ int, resp *clientv3.GetResponse) { bytes += sizeOf(resp) }
			s.c.KV = hook
			ctx := context.Background()
			b.ResetTimer()
			for b.Loop() {
				if _, err := NewMirror(s, zerolog.Nop()).load(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(hook.gets)/float64(b.N), "gets/op")
			b.ReportMetric(float64(hook.refused)/float64(b.N), "refused/op")
			b.ReportMetric(float64(bytes)/float64(b.N)/(1<<20), "MiB/op")
		})
	}
}
