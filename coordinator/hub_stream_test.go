package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestStreamEndedFromOutside: a host's stream replaced by a newer one (here
// on the same connection) ends at once with its status, while its handler
// waits in Recv with no goroutine of its own (hub.go ends it through gRPC's
// transport stream, internal/streamend); the newer stream goes on.
func TestStreamEndedFromOutside(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	hello := func(sctx context.Context) v1.AgentService_ConnectClient {
		t.Helper()
		s, err := v1.NewAgentServiceClient(cc).Connect(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("first set: %v", err)
		}
		return s
	}
	old := hello(ctx)
	newer := hello(ctx)
	_, err := old.Recv()
	if status.Code(err) != codes.Canceled || !strings.Contains(err.Error(), "connection replaced") {
		t.Fatalf("the replaced stream ended with %v, want Canceled: connection replaced (DeadlineExceeded: it was never ended)", err)
	}
	// The newer stream, on the same connection, is still open.
	if err := newer.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY}}}); err != nil {
		t.Fatal(err)
	}
	if newer.Context().Err() != nil {
		t.Fatalf("the newer stream ended: %v", newer.Context().Err())
	}
}

// fakeConnectStream is an agent stream served by calling hub.Connect
// directly: the test hands it messages one at a time (in) and sees what it
// sends (out); recvCalled says the handler waits in Recv.
type fakeConnectStream struct {
	grpc.ServerStream
	ctx        context.Context
	in         chan *v1.ConnectRequest
	out        chan *v1.ConnectResponse
	recvCalled chan struct{}
}

func newFakeConnectStream(ctx context.Context) *fakeConnectStream {
	return &fakeConnectStream{ctx: ctx, in: make(chan *v1.ConnectRequest), out: make(chan *v1.ConnectResponse, 16), recvCalled: make(chan struct{}, 16)}
}

func (f *fakeConnectStream) Context() context.Context { return f.ctx }

func (f *fakeConnectStream) Recv() (*v1.ConnectRequest, error) {
	f.recvCalled <- struct{}{}
	select {
	case m := <-f.in:
		return m, nil
	case <-f.ctx.Done():
		return nil, status.FromContextError(f.ctx.Err()).Err()
	}
}

// SendMsg does with what the hub sends what gRPC does: the coordinator's
// codec encodes it (a preEncoded set: its bytes) and the agent decodes a
// ConnectResponse from that.
func (f *fakeConnectStream) SendMsg(m any) error {
	data, err := newServerCodec().Marshal(m)
	if err != nil {
		return err
	}
	r := &v1.ConnectResponse{}
	if err := proto.Unmarshal(data.Materialize(), r); err != nil {
		return err
	}
	return f.Send(r)
}

func (f *fakeConnectStream) Send(m *v1.ConnectResponse) error {
	select {
	case f.out <- m:
		return nil
	case <-f.ctx.Done():
		return f.ctx.Err()
	}
}

// TestOlderStreamDoesNotReplaceNewer: a host's stream that arrived first
// but registers last (its hello was slow: etcd writes, a loaded
// coordinator, an agent reconnecting in a tight loop) does not end the
// newer stream that registered meanwhile; it ends itself. Before, the
// older one won and the agent's live stream was cut.
func TestOlderStreamDoesNotReplaceNewer(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	started := make(chan *Coordinator, 1)
	runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 10 * time.Second,
		started: func(c *Coordinator) { started <- c }})
	c := <-started
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	hello := &v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1"}}}
	serve := func(s *fakeConnectStream) chan error {
		done := make(chan error, 1)
		go func() { done <- c.hub.Connect(s) }()
		return done
	}
	// The older stream arrives and waits for its hello.
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	older := newFakeConnectStream(actx)
	olderDone := serve(older)
	<-older.recvCalled
	// The newer one arrives, says hello and gets its first set.
	nctx, ncancel := context.WithCancel(ctx)
	defer ncancel()
	newer := newFakeConnectStream(nctx)
	newerDone := serve(newer)
	<-newer.recvCalled
	newer.in <- hello
	select {
	case <-newer.out:
	case err := <-newerDone:
		t.Fatalf("the newer stream ended: %v", err)
	case <-ctx.Done():
		t.Fatal("the newer stream got no first set")
	}
	// Now the older stream's hello.
	older.in <- hello
	select {
	case err := <-olderDone:
		if status.Code(err) != codes.Canceled || !strings.Contains(err.Error(), "newer stream") {
			t.Fatalf("the older stream ended with %v, want Canceled: a newer stream", err)
		}
	case err := <-newerDone:
		t.Fatalf("the newer stream was ended by the older one: %v", err)
	case <-ctx.Done():
		t.Fatal("the older stream did not end")
	}
	if nctx.Err() != nil || context.Cause(nctx) != nil {
		t.Fatalf("the newer stream's context ended: %v", context.Cause(nctx))
	}
	c.hub.mu.Lock()
	held := c.hub.conns["h1"]
	c.hub.mu.Unlock()
	if held == nil || held.stream != newer {
		t.Fatal("the hub does not hold the newer stream")
	}
	ncancel()
	if err := <-newerDone; err == nil {
		t.Fatal("the newer stream's handler returned nil after its agent went")
	}
}
