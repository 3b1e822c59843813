package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeCoordinator is a tiny AgentService + ArtifactService on 127.0.0.1:0.
type fakeCoordinator struct {
	v1.UnimplementedAgentServiceServer
	v1.UnimplementedArtifactServiceServer

	addr string
	srv  *grpc.Server

	mu          sync.Mutex
	changed     chan struct{} // closed and replaced whenever something below changes
	artifacts   map[string][]byte
	assignments []*v1.Assignment
	hellos      []*v1.Hello
	reports     []*v1.ServiceReport
	streams     int
	revocations *v1.RevocationSet // sent, revocation-only, whenever it is replaced
	downloads   map[string]int    // Download calls by sha256
}

func newFakeCoordinator(t *testing.T) *fakeCoordinator {
	t.Helper()
	return newFakeCoordinatorAt(t, "127.0.0.1:0")
}

// newTLSFakeCoordinator is the fake coordinator serving TLS with the
// certificate of coordinator name from the PKI directory pki.
func newTLSFakeCoordinator(t *testing.T, pki, name string) *fakeCoordinator {
	t.Helper()
	tc, err := tlsutil.ServerConfig(filepath.Join(pki, "coordinator-"+name+".pem"), filepath.Join(pki, "coordinator-"+name+"-key.pem"), filepath.Join(pki, tlsutil.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCoordinator{addr: lis.Addr().String(), srv: grpc.NewServer(grpc.Creds(credentials.NewTLS(tc))), artifacts: map[string][]byte{}, downloads: map[string]int{}, changed: make(chan struct{})}
	v1.RegisterAgentServiceServer(f.srv, f)
	v1.RegisterArtifactServiceServer(f.srv, f)
	go f.srv.Serve(lis)
	t.Cleanup(f.srv.Stop)
	return f
}

func newFakeCoordinatorAt(t *testing.T, addr string) *fakeCoordinator {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCoordinator{addr: lis.Addr().String(), srv: grpc.NewServer(), artifacts: map[string][]byte{}, downloads: map[string]int{}, changed: make(chan struct{})}
	v1.RegisterAgentServiceServer(f.srv, f)
	v1.RegisterArtifactServiceServer(f.srv, f)
	go f.srv.Serve(lis)
	t.Cleanup(f.srv.Stop)
	return f
}

func (f *fakeCoordinator) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// addArtifact stores bytes and returns their digest.
func (f *fakeCoordinator) addArtifact(b []byte) string {
	sum := sha256.Sum256(b)
	d := hex.EncodeToString(sum[:])
	f.mu.Lock()
	f.artifacts[d] = b
	f.mu.Unlock()
	return d
}

// assign replaces the full set of assignments and pushes it to the agent.
func (f *fakeCoordinator) assign(as ...*v1.Assignment) {
	f.mu.Lock()
	f.assignments = as
	f.notifyLocked()
	f.mu.Unlock()
}

func (f *fakeCoordinator) Connect(stream grpc.BidiStreamingServer[v1.ConnectRequest, v1.ConnectResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "first message must be hello")
	}
	f.mu.Lock()
	f.hellos = append(f.hellos, first.GetHello())
	f.reports = append(f.reports, first.GetHello().GetServices()...)
	f.streams++
	f.notifyLocked()
	f.mu.Unlock()

	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if r := req.GetReport(); r != nil {
				f.mu.Lock()
				f.reports = append(f.reports, r)
				f.notifyLocked()
				f.mu.Unlock()
			}
		}
	}()
	var sent []*v1.Assignment
	var sentRevs *v1.RevocationSet
	f.mu.Lock()
	if h := first.GetHello(); h.RevocationsRevision != nil && f.revocations != nil && h.GetRevocationsRevision() >= f.revocations.GetRevision() {
		sentRevs = f.revocations // as a coordinator: nothing written since the agent's revision
	}
	f.mu.Unlock()
	first2 := true
	for {
		f.mu.Lock()
		cur, ch, revs := f.assignments, f.changed, f.revocations
		f.mu.Unlock()
		if revs != sentRevs {
			if err := stream.Send(&v1.ConnectResponse{Revocations: revs, RevocationsOnly: true}); err != nil {
				return err
			}
			sentRevs = revs
		}
		if first2 || !sameAssignments(cur, sent) {
			if err := stream.Send(&v1.ConnectResponse{Assignments: cur}); err != nil {
				return err
			}
			sent, first2 = cur, false
		}
		select {
		case <-ch:
		case err := <-recvErr:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func sameAssignments(a, b []*v1.Assignment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func (f *fakeCoordinator) Download(req *v1.DownloadRequest, stream grpc.ServerStreamingServer[v1.DownloadResponse]) error {
	f.mu.Lock()
	b, ok := f.artifacts[req.GetSha256()]
	if f.downloads == nil {
		f.downloads = map[string]int{}
	}
	f.downloads[req.GetSha256()]++
	f.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "artifact %s", req.GetSha256())
	}
	if off := req.GetOffset(); off < 0 || off > int64(len(b)) {
		return status.Errorf(codes.OutOfRange, "offset %d of %d bytes", off, len(b))
	}
	b = b[req.GetOffset():]
	for len(b) > 0 {
		n := min(len(b), 1000)
		if err := stream.Send(&v1.DownloadResponse{Chunk: b[:n]}); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// waitFor polls the recorded traffic until cond holds (cond runs with f.mu
// held); d is a failure deadline.
func (f *fakeCoordinator) waitFor(t *testing.T, what string, d time.Duration, cond func(hellos []*v1.Hello, reports []*v1.ServiceReport) bool) {
	t.Helper()
	testkit.EventuallyErr(t, d, what, func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if cond(f.hellos, f.reports) {
			return nil
		}
		n := len(f.reports)
		if n == 0 {
			return fmt.Errorf("%d hellos, no reports", len(f.hellos))
		}
		return fmt.Errorf("%d hellos, %d reports, last %v", len(f.hellos), n, f.reports[n-1])
	})
}

// lastReport is the newest report of a service, from a Hello or a Report.
func lastReport(reports []*v1.ServiceReport, svc string) *v1.ServiceReport {
	for i := len(reports) - 1; i >= 0; i-- {
		if reports[i].GetService() == svc {
			return reports[i]
		}
	}
	return nil
}

// tarGz builds a .tar.gz of executable files.
func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// runAgent runs an agent in the background until ctx ends (the test
// cancels it) or the test ends, whichever is first: a test that fails
// before it cancels does not leave its agent reconnecting to a port that
// a later test's coordinator may get. Services outlive the agent, so once
// it has returned the test's cleanup stops whatever it left running in
// its data dir.
func runAgent(t *testing.T, ctx context.Context, cfg Config, opts options) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- run(ctx, cfg, testLogger(t), opts)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(time.Minute): // failure deadline: an agent that does not stop when told
			t.Errorf("agent on %s still running a minute after its context ended", cfg.DataDir)
			return
		}
		if err := StopServices(context.Background(), Config{DataDir: cfg.DataDir, CgroupParent: cfg.CgroupParent}, false, zerolog.Nop()); err != nil {
			t.Errorf("stop services in %s: %v", cfg.DataDir, err)
		}
	})
	return done
}

// stopServices stops what agents left running in dataDir (as
// fleetwave-agent stop-services does).
func stopServices(t *testing.T, dataDir string) {
	t.Helper()
	if err := StopServices(context.Background(), Config{DataDir: dataDir}, false, zerolog.Nop()); err != nil {
		t.Errorf("stop services in %s: %v", dataDir, err)
	}
}

func testOptions() options {
	o := defaultOptions()
	o.tick = 20 * time.Millisecond
	o.backoffBase = 20 * time.Millisecond
	o.backoffMax = 200 * time.Millisecond
	o.supMinBackoff = 20 * time.Millisecond
	o.supMaxBackoff = 100 * time.Millisecond
	o.fetchAttempts = 2
	o.seed = 1
	return o
}
