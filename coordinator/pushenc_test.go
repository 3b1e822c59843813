package coordinator

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// decodeSet decodes an encoded set as an agent would.
func decodeSet(t *testing.T, s *encodedSet) *v1.ConnectResponse {
	t.Helper()
	m := &v1.ConnectResponse{}
	if err := proto.Unmarshal(s.b, m); err != nil {
		t.Fatalf("decode set: %v", err)
	}
	return m
}

// TestSharedSetsAreEachHostsSet: every host's encoded set, shared or its
// own, decodes to exactly the set computed for that host alone
// (hub.assignments); hosts with the same wants share one encoding, hosts
// whose sets name sources picked for them get their own, and a table keeps
// at most hub.sharedLimit shared sets (the others are encoded per host,
// still right).
func TestSharedSetsAreEachHostsSet(t *testing.T) {
	for _, tc := range []struct {
		p2p         bool
		limit       int
		wantShared  int
		wantOwnSets int
	}{
		// 40 hosts: canary done; wave 2 (hosts 1-19) alternately done
		// and updating (10 done, 9 updating); wave 3 (20-39) pending.
		{p2p: false, limit: maxSharedSets, wantShared: 2, wantOwnSets: 0},
		{p2p: true, limit: maxSharedSets, wantShared: 2, wantOwnSets: 9},
		{p2p: false, limit: 1, wantShared: 1, wantOwnSets: 0},
	} {
		t.Run(fmt.Sprintf("p2p=%v/limit=%d", tc.p2p, tc.limit), func(t *testing.T) {
			h, conns := pushFleet(t, 40, tc.p2p)
			h.sharedLimit = tc.limit
			tab := h.table()
			own, sources := 0, map[string]bool{}
			for _, c := range conns {
				s, err := h.encodedFor(tab, c)
				if err != nil {
					t.Fatal(err)
				}
				got, want := decodeSet(t, s), h.assignments(tab, c)
				if !proto.Equal(got, want) {
					t.Fatalf("host %s: decoded set %v, want %v", c.host, got, want)
				}
				if len(want.GetAssignments()) != 1 {
					t.Fatalf("host %s: %d assignments, want 1", c.host, len(want.GetAssignments()))
				}
				if a := want.GetAssignments()[0]; len(a.GetSources()) > 0 {
					own++
					sources[fmt.Sprint(a.GetSources())] = true
					if a.GetRelease().GetVersion() != "v2" {
						t.Errorf("host %s: sources for %s", c.host, a.GetRelease().GetVersion())
					}
					for _, shared := range tab.shared {
						if shared == s {
							t.Errorf("host %s: its set with its own sources is shared", c.host)
						}
					}
				}
			}
			if len(tab.shared) != tc.wantShared {
				t.Errorf("%d shared sets, want %d", len(tab.shared), tc.wantShared)
			}
			if own != tc.wantOwnSets {
				t.Errorf("%d sets with sources, want %d", own, tc.wantOwnSets)
			}
			if tc.p2p && len(sources) < 2 {
				t.Errorf("every host with sources got the same ones: %v", sources)
			}
		})
	}
}

// TestSharedSetNotKeptAcrossTables: a change of the desired state (here
// the rollout moving a pending host and a new release's) makes a new
// table, with no shared set of the old one: the moved host's next pass
// queues its new set, the others' sets stay the same (nothing queued).
func TestSharedSetNotKeptAcrossTables(t *testing.T) {
	h, conns := pushFleet(t, 10, false)
	now := time.Now()
	for _, c := range conns {
		h.prepare(c, false, now)
		c.pending = nil
	}
	old := h.table()
	ctx := t.Context()
	r, ok := h.c.mirror.Rollout("web", "r2")
	if !ok {
		t.Fatal("rollout r2 not in the mirror")
	}
	next := proto.Clone(r.Val).(*v1.Rollout)
	moved := next.GetWaves()[2].GetHosts()[0]
	moved.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	if _, _, err := h.c.store.WriteRollout(ctx, nil, next, store.RolloutBase{Rollout: r.Val, Rev: r.Rev, Layout: store.Split}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.c.mirror.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	tab := h.table()
	if tab == old || len(tab.shared) != 0 {
		t.Fatalf("table after the change: same %v, %d shared sets", tab == old, len(tab.shared))
	}
	for _, c := range conns {
		h.prepare(c, false, now)
		queued := c.pending != nil
		if queued != (c.host == moved.GetHostId()) {
			t.Errorf("host %s: queued %v (moved host %s)", c.host, queued, moved.GetHostId())
		}
		if queued {
			if v := decodeSet(t, c.pending.set).GetAssignments()[0].GetRelease().GetVersion(); v != "v2" {
				t.Errorf("moved host %s queued %s, want v2", c.host, v)
			}
		}
	}
}

// TestSentSetIsTheSetWithSentAt: what sendLoop sends for a queued set,
// through the coordinator's codec, decodes to the host's set with sent_at
// set and nothing else (fakeConnectStream.SendMsg decodes as the agent).
func TestSentSetIsTheSetWithSentAt(t *testing.T) {
	h, conns := pushFleet(t, 4, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFakeConnectStream(ctx)
	c := conns[1]
	c.stream, c.done, c.greeted = f, false, false
	before := time.Now()
	h.queue(c, true, before)
	got := <-f.out
	c.senders.Wait()
	if got.GetSentAt() == nil || got.GetSentAt().AsTime().Before(before.Truncate(time.Microsecond)) {
		t.Fatalf("sent_at %v, want at or after %v", got.GetSentAt(), before)
	}
	got.SentAt = nil
	if want := h.assignments(h.table(), c); !proto.Equal(got, want) || len(want.GetAssignments()) != 1 {
		t.Fatalf("sent %v, want %v", got, want)
	}
}

// TestServerCodec: a preEncoded message is its bytes, the set's then the
// tail's, which decode to the message with the fields of both; any other
// message is gRPC's proto encoding, and decoding is gRPC's.
func TestServerCodec(t *testing.T) {
	codec, protoCodec := newServerCodec(), encoding.GetCodecV2(encproto.Name)
	if codec.Name() != "proto" {
		t.Errorf("name %q, want proto", codec.Name())
	}
	set := &v1.ConnectResponse{Assignments: []*v1.Assignment{{Service: "web", Generation: 3, Release: &v1.Release{Service: "web", Version: "v3"}}},
		Agent: &v1.Assignment{Service: "fleetwave-agent", Generation: 1}}
	tail := &v1.ConnectResponse{SentAt: timestamppb.New(time.Unix(1700000000, 5)), Revocations: &v1.RevocationSet{Revision: 9}}
	sb, err := proto.MarshalOptions{Deterministic: true}.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := proto.Marshal(tail)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*preEncoded{{set: sb, tail: tb}, {tail: tb}} {
		data, err := codec.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(data.Materialize()), string(p.set)+string(p.tail); got != want {
			t.Fatalf("preEncoded encoded as %x, want %x", got, want)
		}
		got := &v1.ConnectResponse{}
		if err := codec.Unmarshal(data, got); err != nil {
			t.Fatal(err)
		}
		want := proto.Clone(tail).(*v1.ConnectResponse)
		if p.set != nil {
			proto.Merge(want, set)
		}
		if !proto.Equal(got, want) {
			t.Errorf("decoded %v, want %v", got, want)
		}
	}
	data, err := codec.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := protoCodec.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	if string(data.Materialize()) != string(plain.Materialize()) {
		t.Error("a plain message is not encoded as gRPC's proto codec does")
	}
	if _, err := codec.Marshal("not a message"); err == nil {
		t.Error("a string was encoded")
	}
}

// sendOnce is an agent service whose Connect sends one message: msg.
type sendOnce struct {
	v1.UnimplementedAgentServiceServer
	msg any
}

func (s sendOnce) Connect(stream v1.AgentService_ConnectServer) error { return stream.SendMsg(s.msg) }

// TestPreEncodedOverGRPC: a preEncoded set sent on a real gRPC server
// with the coordinator's codec reaches a client (as an agent dials) as the
// set with the tail's fields, and the server's MaxSendMsgSize applies to
// it: a set over it is refused (ResourceExhausted), not sent.
func TestPreEncodedOverGRPC(t *testing.T) {
	const limit = 4 << 10
	set := &v1.ConnectResponse{Assignments: []*v1.Assignment{{Service: "web", Generation: 2,
		Release: &v1.Release{Service: "web", Version: "v2", Artifact: &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 7}}}}}
	big := &v1.ConnectResponse{Assignments: []*v1.Assignment{{Service: "web", Spec: &v1.ServiceSpec{Name: strings.Repeat("x", limit)}}}}
	tail := &v1.ConnectResponse{SentAt: timestamppb.Now()}
	enc := func(m *v1.ConnectResponse) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		set  *v1.ConnectResponse
		code codes.Code
	}{{"within the limit", set, codes.OK}, {"over the limit", big, codes.ResourceExhausted}} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", ports.Addr(t))
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(grpc.ForceServerCodecV2(newServerCodec()), grpc.MaxSendMsgSize(limit))
			v1.RegisterAgentServiceServer(srv, sendOnce{msg: &preEncoded{set: enc(tc.set), tail: enc(tail)}})
			go func() { _ = srv.Serve(lis) }()
			t.Cleanup(srv.Stop)
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cc.Close() })
			s, err := v1.NewAgentServiceClient(cc).Connect(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Recv()
			if status.Code(err) != tc.code {
				t.Fatalf("Recv: %v, want code %v", err, tc.code)
			}
			if tc.code != codes.OK {
				if !strings.Contains(err.Error(), "larger than max") {
					t.Errorf("refusal %v does not say the message is too large", err)
				}
				return
			}
			want := proto.Clone(tc.set).(*v1.ConnectResponse)
			want.SentAt = tail.GetSentAt()
			if !proto.Equal(got, want) {
				t.Errorf("received %v, want %v", got, want)
			}
		})
	}
}

// TestSharedSetsTellGenerationsApart: a spec-only rollout (the same
// version at a new generation, with a new spec) gives its moved hosts sets
// that differ from the waiting hosts' only by generation and spec; each
// host's shared set is still its own (a key without the generation shared
// the first host's set with every host of that version: this test failed
// with the generation left out of wantsKey).
func TestSharedSetsTellGenerationsApart(t *testing.T) {
	h, conns := pushFleet(t, 10, false)
	ctx := t.Context()
	r, ok := h.c.mirror.Rollout("web", "r2")
	if !ok {
		t.Fatal("rollout r2 not in the mirror")
	}
	next := proto.Clone(r.Val).(*v1.Rollout)
	next.ToVersion = "v1"
	next.Spec = proto.Clone(next.GetSpec()).(*v1.ServiceSpec)
	next.Spec.Run.Env = map[string]string{"MODE": "canary"}
	next.SpecRevision = 2
	if _, _, err := h.c.store.WriteRollout(ctx, nil, next, store.RolloutBase{Rollout: r.Val, Rev: r.Rev, Layout: store.Split}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.c.mirror.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	tab := h.table()
	gens := map[int64]bool{}
	for _, c := range conns {
		s, err := h.encodedFor(tab, c)
		if err != nil {
			t.Fatal(err)
		}
		got, want := decodeSet(t, s), h.assignments(tab, c)
		if !proto.Equal(got, want) {
			t.Errorf("host %s: decoded set %v, want %v", c.host, got, want)
		}
		for _, a := range want.GetAssignments() {
			if a.GetRelease().GetVersion() != "v1" {
				t.Errorf("host %s assigned %s, want v1", c.host, a.GetRelease().GetVersion())
			}
			gens[a.GetGeneration()] = true
		}
	}
	if len(gens) != 2 || len(tab.shared) != 2 {
		t.Errorf("generations assigned %v and %d shared sets, want 2 of each", gens, len(tab.shared))
	}
}

// TestSharedSetsConcurrently: passes and connects encode sets at once
// (hub.prepare from the push loop and from each stream): every host of a
// table gets its own set, and the hosts of one key one encoding, whichever
// goroutine kept it (desiredTable.share; run with -race).
func TestSharedSetsConcurrently(t *testing.T) {
	h, conns := pushFleet(t, 40, true)
	tab := h.table()
	const passes = 4
	got := make([][]*encodedSet, passes)
	var wg sync.WaitGroup
	for p := range got {
		got[p] = make([]*encodedSet, len(conns))
		wg.Go(func() {
			for i, c := range conns {
				s, err := h.encodedFor(tab, c)
				if err != nil {
					t.Error(err)
					return
				}
				got[p][i] = s
			}
		})
	}
	wg.Wait()
	for i, c := range conns {
		want := h.assignments(tab, c)
		for p := range got {
			if s := got[p][i]; !proto.Equal(decodeSet(t, s), want) {
				t.Fatalf("pass %d, host %s: decoded set %v, want %v", p, c.host, decodeSet(t, s), want)
			}
		}
		if len(want.GetAssignments()[0].GetSources()) > 0 {
			continue // its own set, encoded per pass
		}
		for p := range got {
			if got[p][i] != got[0][i] {
				t.Errorf("host %s: pass %d has another encoding of its shared set", c.host, p)
			}
		}
	}
}

// TestReflectionThroughServerCodec: server reflection (a bidirectional
// stream of messages gRPC's reflection package defines) is served through
// the coordinator's codec (grpc.ForceServerCodecV2) as before: it lists
// the agent service, and an unknown symbol is an error response, not a
// broken stream.
func TestReflectionThroughServerCodec(t *testing.T) {
	f := startTLSCoordinator(t)
	s, err := reflectionpb.NewServerReflectionClient(f.dial(t, "operator-vera", "")).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, svc := range r.GetListServicesResponse().GetService() {
		found = found || svc.GetName() == "fleetwave.v1.AgentService"
	}
	if !found {
		t.Errorf("services listed: %v, want fleetwave.v1.AgentService among them", r.GetListServicesResponse())
	}
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "no.such.Symbol"}}); err != nil {
		t.Fatal(err)
	}
	if r, err = s.Recv(); err != nil {
		t.Fatal(err)
	}
	if r.GetErrorResponse().GetErrorCode() != int32(codes.NotFound) {
		t.Errorf("unknown symbol: %v, want a NotFound error response", r)
	}
}

// TestSharedSetsTellServicesApart: two hosts assigned the same version and
// generation of two different services (one only web, one only api) get
// their own sets, not one shared (a key without each service's index
// shared web's set with the api host).
func TestSharedSetsTellServicesApart(t *testing.T) {
	h, conns := pushFleet(t, 4, false)
	ctx := t.Context()
	api := &v1.ServiceSpec{Name: "api", Selector: map[string]string{"role": "api"}, Run: &v1.RunSpec{Command: []string{"./api"}}}
	applied, err := h.c.store.ApplySpec(ctx, api, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.store.CreateRelease(ctx, &v1.Release{Service: "api", Version: "v1",
		Artifact: &v1.Artifact{Url: "http://coordinator/artifacts/api-v1", Sha256: strings.Repeat("b", 64), Size: 1}}); err != nil {
		t.Fatal(err)
	}
	svc := applied.Service
	svc.Status = &v1.ServiceStatus{StableVersion: "v1", StableGeneration: 1, StableSpec: api, StableSpecRevision: 1}
	if _, err := h.c.store.PutService(ctx, nil, svc, applied.Rev); err != nil {
		t.Fatal(err)
	}
	if err := h.c.mirror.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// Not in web's rollout, not selected by web: api only.
	apiHost := &agentConn{host: "api-host", labels: map[string]string{"role": "api"}, seen: map[string]*v1.ServiceReport{}, greeted: true, done: true}
	tab := h.table()
	services := map[string]bool{}
	for _, c := range append([]*agentConn{apiHost}, conns...) {
		s, err := h.encodedFor(tab, c)
		if err != nil {
			t.Fatal(err)
		}
		got, want := decodeSet(t, s), h.assignments(tab, c)
		if !proto.Equal(got, want) {
			t.Errorf("host %s: decoded set %v, want %v", c.host, got, want)
		}
		for _, a := range want.GetAssignments() {
			services[a.GetService()+" "+a.GetRelease().GetVersion()] = true
		}
	}
	if !services["api v1"] || !services["web v1"] {
		t.Errorf("assigned %v, want api v1 and web v1 among them", services)
	}
}

// TestSharedSetsBoundedInBytes: a table keeps at most maxSharedBytes of
// shared sets; a set past that is the host's alone (not kept).
func TestSharedSetsBoundedInBytes(t *testing.T) {
	var tb desiredTable
	big := &encodedSet{b: make([]byte, maxSharedBytes-10)}
	if got := tb.share([]byte("a"), big, maxSharedSets); got != big || tb.sharedSet([]byte("a")) != big {
		t.Fatal("a set within maxSharedBytes not kept")
	}
	small := &encodedSet{b: make([]byte, 100)}
	if got := tb.share([]byte("b"), small, maxSharedSets); got != small {
		t.Fatal("share did not return the host's own set")
	}
	if tb.sharedSet([]byte("b")) != nil {
		t.Fatalf("a set past maxSharedBytes kept (%d bytes kept before it)", tb.sharedBytes)
	}
	fits := &encodedSet{b: make([]byte, 10)}
	if tb.share([]byte("c"), fits, maxSharedSets); tb.sharedSet([]byte("c")) != fits {
		t.Fatal("a set that fits within maxSharedBytes not kept")
	}
}

// assignments is host c's set computed for it alone, never shared: what
// every shared or sent set must decode to.
func (h *hub) assignments(t *desiredTable, c *agentConn) *v1.ConnectResponse {
	return h.build(t, c.host, c.labels, h.wants(t, c))
}
