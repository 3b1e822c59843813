package sim

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fakeCoordinator speaks AgentService.Connect and ArtifactService.Download
// to one simulated host: the test sends it assignments and reads its
// reports. (The real coordinator sends Assignment.stage only once the
// prefetch work is merged; this feeds it by hand.)
type fakeCoordinator struct {
	v1.UnimplementedAgentServiceServer
	v1.UnimplementedArtifactServiceServer
	addr      string
	arts      map[string][]byte
	downloads atomic.Int64
	send      chan *v1.ConnectResponse
	reports   chan *v1.ServiceReport
}

func startFakeCoordinator(t *testing.T, arts ...[]byte) *fakeCoordinator {
	t.Helper()
	fc := &fakeCoordinator{addr: ports.Addr(t), arts: map[string][]byte{}, send: make(chan *v1.ConnectResponse, 4), reports: make(chan *v1.ServiceReport, 64)}
	for _, b := range arts {
		fc.arts[shaOf(b)] = b
	}
	lis, err := net.Listen("tcp", fc.addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	v1.RegisterAgentServiceServer(srv, fc)
	v1.RegisterArtifactServiceServer(srv, fc)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	t.Cleanup(func() { srv.Stop(); wg.Wait() })
	return fc
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (fc *fakeCoordinator) Connect(stream v1.AgentService_ConnectServer) error {
	if _, err := stream.Recv(); err != nil { // the Hello
		return err
	}
	if err := stream.Send(&v1.ConnectResponse{}); err != nil { // nothing assigned yet
		return err
	}
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			if r := m.GetReport(); r != nil {
				fc.reports <- r
			}
		}
	}()
	for {
		select {
		case resp := <-fc.send:
			if err := stream.Send(resp); err != nil {
				return err
			}
		case err := <-errc:
			return err
		}
	}
}

func (fc *fakeCoordinator) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	b, ok := fc.arts[req.GetSha256()]
	if !ok {
		return status.Errorf(codes.NotFound, "artifact %s not found", req.GetSha256())
	}
	fc.downloads.Add(1)
	return stream.Send(&v1.DownloadResponse{Chunk: b[req.GetOffset():]})
}

// waitReport returns the first report that cond accepts.
func (fc *fakeCoordinator) waitReport(ctx context.Context, t *testing.T, what string, cond func(*v1.ServiceReport) bool) *v1.ServiceReport {
	t.Helper()
	for {
		select {
		case r := <-fc.reports:
			if cond(r) {
				return r
			}
		case <-ctx.Done():
			t.Fatalf("no report %s: %v", what, ctx.Err())
		}
	}
}

func release(version string, art []byte) *v1.Release {
	return &v1.Release{Service: "web", Version: version, Artifact: &v1.Artifact{Sha256: shaOf(art), Size: int64(len(art))}}
}

// A host told to stage a release fetches its artifact in the background,
// reports it in staged_sha256, and installs it later without moving a byte.
func TestStageAhead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a1, a2 := make([]byte, 40<<10), make([]byte, 70<<10)
	_, _ = rand.Read(a1)
	_, _ = rand.Read(a2)
	fc := startFakeCoordinator(t, a1, a2)
	f := startFleet(t, ctx, Config{Coordinator: fc.addr, Hosts: 1, Fetch: true, ReconnectBase: 50 * time.Millisecond})

	fc.send <- &v1.ConnectResponse{Assignments: []*v1.Assignment{{Service: "web", Generation: 1, Release: release("v1", a1)}}}
	fc.waitReport(ctx, t, "healthy on v1", func(r *v1.ServiceReport) bool {
		return r.GetPhase() == v1.Phase_PHASE_HEALTHY && r.GetCurrentVersion() == "v1"
	})
	// The same generation, now with v2 to stage: the host keeps running v1.
	fc.send <- &v1.ConnectResponse{Assignments: []*v1.Assignment{{Service: "web", Generation: 1, Release: release("v1", a1), Stage: release("v2", a2)}}}
	r := fc.waitReport(ctx, t, "with v2 staged", func(r *v1.ServiceReport) bool { return r.GetStagedSha256() != "" })
	if r.GetStagedSha256() != shaOf(a2) || r.GetCurrentVersion() != "v1" || r.GetPhase() != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("report %v: want v1 healthy with v2's artifact %s staged", r, shaOf(a2))
	}
	s := f.Stats()
	if s.Stages != 1 || s.Staged != 1 || s.CoordinatorBytes != int64(len(a1)+len(a2)) || fc.downloads.Load() != 2 {
		t.Fatalf("stats %+v, %d downloads: want one stage, both artifacts fetched once", s, fc.downloads.Load())
	}
	// The install of v2 moves no byte; its assignment has no stage, so
	// the reports name none any more.
	fc.send <- &v1.ConnectResponse{Assignments: []*v1.Assignment{{Service: "web", Generation: 2, Release: release("v2", a2)}}}
	r = fc.waitReport(ctx, t, "healthy on v2", func(r *v1.ServiceReport) bool {
		return r.GetPhase() == v1.Phase_PHASE_HEALTHY && r.GetCurrentVersion() == "v2"
	})
	if r.GetStagedSha256() != "" {
		t.Fatalf("report %v names a stage its assignment no longer has", r)
	}
	if s2 := f.Stats(); s2.CoordinatorBytes != s.CoordinatorBytes || s2.Fetches != s.Fetches || fc.downloads.Load() != 2 {
		t.Fatalf("installing the staged release moved bytes: %+v", s2)
	}
}

// newIdleFleet builds a fleet whose hosts do not run (no coordinator), for
// the transfers between hosts alone.
func newIdleFleet(t *testing.T, cfg Config) *Fleet {
	t.Helper()
	cfg.Coordinator = "127.0.0.1:1"
	f, err := newFleet(context.Background(), cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// A peer serves only what it holds, verified, PeerMaxUploads at once; the
// asking host takes its next source when one refuses.
func TestPeerServe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := newIdleFleet(t, Config{Hosts: 4, Fetch: true, P2P: true, PeerMaxUploads: 1, ByteScale: 10})
	art := make([]byte, 20<<10)
	_, _ = rand.Read(art)
	sha, size := shaOf(art), int64(len(art))
	h0, h1, h2, h3 := f.hosts[0], f.hosts[1], f.hosts[2], f.hosts[3]
	f.keepBlob(sha, art)
	h0.setHeld(sha)

	if err := h1.serve(ctx, h2, sha, size); err == nil {
		t.Fatal("a host that does not hold the artifact served it")
	}
	if err := h0.serve(ctx, h2, sha, size); err != nil {
		t.Fatal(err)
	}
	h2.setHeld(sha)
	if tr, _ := f.Transfer(2); tr.FromPeers != size*10 {
		t.Fatalf("host 2 got %d modeled bytes, want %d", tr.FromPeers, size*10)
	}
	// Host 0 busy (its one slot taken): host 3 is refused there and
	// takes its next source, host 2.
	h0.slots <- struct{}{}
	if err := h0.serve(ctx, h3, sha, size); !errors.Is(err, errRefused) {
		t.Fatalf("serve with no slot free: %v, want refused", err)
	}
	kind, err := h3.fetch(ctx, sha, size, []string{peerAddress(h0.id), peerAddress(h2.id)})
	if err != nil || kind != sourcePeer {
		t.Fatalf("fetch: %q, %v; want from a peer", kind, err)
	}
	<-h0.slots
	s := f.Stats()
	if s.PeerRefused != 2 || s.PeerBytes != 2*size*10 || s.MaxUploads != 1 {
		t.Fatalf("stats %+v: want 2 refusals, 2 transfers, at most 1 per host", s)
	}
	if !h3.holds(sha) || f.Holding(sha) != 3 {
		t.Fatalf("host 3 holds %v, %d holders; want it held by 3", h3.holds(sha), f.Holding(sha))
	}
	// Bytes that fail verification are refused by the asking host.
	bad := make([]byte, len(art))
	copy(bad, art)
	bad[0] ^= 1
	f.mu.Lock()
	f.blobs[sha] = bad
	f.mu.Unlock()
	if err := h2.serve(ctx, h1, sha, size); err == nil {
		t.Fatal("corrupt bytes passed verification")
	}
	if h1.holds(sha) {
		t.Fatal("host 1 holds an artifact that failed verification")
	}
}
