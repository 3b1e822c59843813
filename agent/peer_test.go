package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// peerPKI is a fleet CA and where its files are.
type peerPKI struct {
	ca     *tlsutil.CA
	dir    string
	caFile string
}

func newPeerPKI(t *testing.T) *peerPKI {
	t.Helper()
	ca, err := tlsutil.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &peerPKI{ca: ca, dir: t.TempDir()}
	p.caFile = filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(p.caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// pair issues a certificate for id and returns its files.
func (p *peerPKI) pair(t *testing.T, id tlsutil.Identity) (cert, key string) {
	t.Helper()
	certPEM, keyPEM, err := p.ca.IssueKeyPair(id, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(p.dir, id.Kind+"-"+id.Name+".pem"), filepath.Join(p.dir, id.Kind+"-"+id.Name+"-key.pem")
	if err := tlsutil.WriteKeyPair(cert, key, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newPeerAgent is an agent with its certificate, metrics and, when serve,
// its peer listener on a port of its own (stopped with the test).
func newPeerAgent(t *testing.T, pki *peerPKI, host string, serve bool) *agent {
	t.Helper()
	dir := t.TempDir()
	inst, err := install.New(dir, install.Limits{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cert, key := pki.pair(t, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: host})
	rep := newReporter(spec.MaxServicesPerHost)
	a := &agent{
		cfg: Config{HostID: host, DataDir: dir, TLSCA: pki.caFile, TLSCert: cert, TLSKey: key,
			PeerMaxUploads: DefaultPeerMaxUploads, PeerUploadRate: DefaultPeerUploadRate},
		opts: testOptions(), log: testLogger(t).With().Str("host", host).Logger(), inst: inst,
		rep: rep, conns: newConnHolder(), metrics: newAgentMetrics(rep),
	}
	if serve {
		a.cfg.PeerListen = ports.Addr(t)
		addr, start, stop, err := a.startPeer()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		if err := start(); err != nil {
			t.Fatal(err)
		}
		a.peerAddr = addr
	}
	return a
}

// holds stages art as web/1 on a, which keeps it (its peer listener is on).
func (a *agent) holds(t *testing.T, art []byte) {
	t.Helper()
	want := install.Artifact{SHA256: sum(art), Size: int64(len(art))}
	f, err := a.inst.Fetch(context.Background(), bytes.NewReader(art), want)
	if err != nil {
		t.Fatal(err)
	}
	v, err := a.inst.Verify(f, want)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.inst.Stage(context.Background(), "web", "1", v); err != nil {
		t.Fatal(err)
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// bigArtifact is a valid .tar.gz of about n bytes (incompressible).
func bigArtifact(t *testing.T, n int) []byte {
	t.Helper()
	noise := make([]byte, n)
	if _, err := rand.Read(noise); err != nil {
		t.Fatal(err)
	}
	return tarGz(t, map[string]string{"run.sh": runScript, "noise": string(noise)})
}

func assignmentFrom(art []byte, srcs ...*agent) *v1.Assignment {
	asg := &v1.Assignment{Service: "web", Generation: 1, Release: &v1.Release{Service: "web", Version: "1",
		Artifact: &v1.Artifact{Sha256: sum(art), Size: int64(len(art))}}}
	for _, s := range srcs {
		asg.Sources = append(asg.Sources, &v1.ArtifactSource{HostId: s.cfg.HostID, Address: s.peerAddr})
	}
	return asg
}

func readFetched(t *testing.T, f *install.Fetched) []byte {
	t.Helper()
	b, err := os.ReadFile(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPeerFetchRejectsBadPeer: the first source serves bytes that fail
// verification (its kept artifact was corrupted on disk after it was
// verified); the fetch completes from the second, the bad peer is dropped,
// counted and named in the service's report.
func TestPeerFetchRejectsBadPeer(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 300<<10)
	bad, good := newPeerAgent(t, pki, "bad", true), newPeerAgent(t, pki, "good", true)
	bad.holds(t, art)
	good.holds(t, art)
	corrupt := bytes.Clone(art)
	corrupt[len(corrupt)/2] ^= 0xff
	if err := os.WriteFile(filepath.Join(bad.cfg.DataDir, "artifacts", sum(art)), corrupt, 0o644); err != nil {
		t.Fatal(err)
	}
	a := newPeerAgent(t, pki, "fetcher", false)
	a.rep.put(&v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FETCHING})
	asg := assignmentFrom(art, bad, good)
	f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if !a.dropped.has("bad") || a.dropped.has("good") {
		t.Fatalf("dropped: %v", a.dropped.set)
	}
	if got := a.rep.take(); len(got) != 1 || got[0].GetBadSource() != "bad" {
		t.Fatalf("report after the rejection: %v", got)
	}
	a.rep.put(&v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_VERIFYING})
	if got := a.rep.take(); got[0].GetBadSource() != "bad" {
		t.Fatalf("a later report lost bad_source: %v", got)
	}
	if n := testutil.ToFloat64(a.metrics.peersRejected); n != 1 {
		t.Fatalf("peers rejected: %v", n)
	}
	// The dropped peer is not asked again: the next fetch takes good alone.
	badServed := testutil.ToFloat64(bad.metrics.peerUploaded)
	f2, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	a.inst.Discard(f2)
	if n := testutil.ToFloat64(bad.metrics.peerUploaded); n != badServed {
		t.Fatalf("the dropped peer served %v more bytes", n-badServed)
	}
	if n := testutil.ToFloat64(a.metrics.sourceBytes.WithLabelValues(sourceCoordinator)); n != 0 {
		t.Fatalf("%v bytes from the coordinator, want none", n)
	}
}

// halfServer serves the first half of an artifact, then fails.
type halfServer struct {
	v1.UnimplementedArtifactServiceServer
	art []byte
}

func (h halfServer) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	if err := stream.Send(&v1.DownloadResponse{Chunk: h.art[:len(h.art)/2]}); err != nil {
		return err
	}
	return status.Error(codes.Internal, "disk on fire")
}

// servePeerTLS serves svc as the agent host over peer TLS and returns its
// address.
func servePeerTLS(t *testing.T, pki *peerPKI, host string, svc v1.ArtifactServiceServer) string {
	t.Helper()
	cert, key := pki.pair(t, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: host})
	tc, err := tlsutil.PeerServerConfig(cert, key, pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	return serveGRPC(t, grpc.Creds(credentials.NewTLS(tc)), svc)
}

func serveGRPC(t *testing.T, creds grpc.ServerOption, svc v1.ArtifactServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(ports.Port(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(creds)
	v1.RegisterArtifactServiceServer(srv, svc)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// useCoordinator serves svc as the agent's coordinator (plain gRPC on
// loopback) and connects a to it for the rest of the test.
func useCoordinator(t *testing.T, a *agent, svc v1.ArtifactServiceServer) {
	t.Helper()
	cc, err := grpc.NewClient(serveGRPC(t, grpc.Creds(insecure.NewCredentials()), svc), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	a.conns.set(cc)
}

// TestPeerFetchResumesAtOffset: a source that fails half-way is followed by
// the next one from the byte reached (it sends only the rest), and the
// whole artifact's digest is checked at the end.
func TestPeerFetchResumesAtOffset(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 400<<10)
	half := servePeerTLS(t, pki, "half", halfServer{art: art})
	good := newPeerAgent(t, pki, "good", true)
	good.holds(t, art)
	a := newPeerAgent(t, pki, "fetcher", false)
	asg := assignmentFrom(art, good)
	asg.Sources = append([]*v1.ArtifactSource{{HostId: "half", Address: half}}, asg.Sources...)
	f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if n := testutil.ToFloat64(good.metrics.peerUploaded); n != float64(len(art)-len(art)/2) {
		t.Fatalf("the second source sent %v bytes, want the %d left", n, len(art)-len(art)/2)
	}
	if n := testutil.ToFloat64(a.metrics.sourceBytes.WithLabelValues(sourcePeer)); n != float64(len(art)) {
		t.Fatalf("peer bytes %v, want %d", n, len(art))
	}
	if a.dropped.has("half") {
		t.Fatal("a peer that failed (without bad bytes) was dropped")
	}
}

// memStore is a coordinator's ArtifactService over one artifact in memory.
type memStore struct {
	v1.UnimplementedArtifactServiceServer
	art []byte
}

func (m memStore) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	return stream.Send(&v1.DownloadResponse{Chunk: m.art[req.GetOffset():]})
}

// TestPeerFetchFallsBackToCoordinator: no peer answers (one is down, one
// is not the agent named, one does not hold the artifact); the coordinator
// serves it.
func TestPeerFetchFallsBackToCoordinator(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 100<<10)
	impostor := newPeerAgent(t, pki, "impostor", true)
	impostor.holds(t, art)
	empty := newPeerAgent(t, pki, "empty", true)
	a := newPeerAgent(t, pki, "fetcher", false)
	useCoordinator(t, a, memStore{art: art})
	asg := assignmentFrom(art, empty)
	asg.Sources = append([]*v1.ArtifactSource{
		{HostId: "down", Address: ports.Addr(t)},             // nothing listens
		{HostId: "someone-else", Address: impostor.peerAddr}, // the certificate names impostor
	}, asg.Sources...)
	f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if n := testutil.ToFloat64(a.metrics.sourceBytes.WithLabelValues(sourceCoordinator)); n != float64(len(art)) {
		t.Fatalf("coordinator bytes %v, want %d", n, len(art))
	}
	if n := testutil.ToFloat64(impostor.metrics.peerUploaded); n != 0 {
		t.Fatalf("the impostor served %v bytes", n)
	}
}

// TestPeerServerLimits: the uploads at once and the rate are bounded; bad
// requests get a clear error.
func TestPeerServerLimits(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 512<<10)
	srv := newPeerAgent(t, pki, "srv", false)
	srv.inst.KeepArtifacts()
	srv.holds(t, art)
	const rateBytes = 1 << 20
	addr := servePeerTLS(t, pki, "srv", newPeerServer(srv.inst, peerLimits{uploads: 1, rate: rateBytes, sendTimeout: time.Minute}, srv.metrics, srv.log))
	a := newPeerAgent(t, pki, "fetcher", false)
	cert, key := a.certPaths()
	tc, err := tlsutil.PeerClientConfig(cert, key, pki.caFile, "srv")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := v1.NewArtifactServiceClient(cc)
	download := func(ctx context.Context, req *v1.DownloadRequest) ([]byte, error) {
		stream, err := client.Download(ctx, req)
		if err != nil {
			return nil, err
		}
		return io.ReadAll(&chunkReader{stream: stream})
	}
	for _, c := range []struct {
		req  *v1.DownloadRequest
		code codes.Code
	}{
		{&v1.DownloadRequest{Sha256: "nope"}, codes.InvalidArgument},
		{&v1.DownloadRequest{Sha256: sum(art), Offset: -1}, codes.InvalidArgument},
		{&v1.DownloadRequest{Sha256: sum(art), Offset: int64(len(art)) + 1}, codes.OutOfRange},
		{&v1.DownloadRequest{Sha256: sum([]byte("other"))}, codes.NotFound},
	} {
		if _, err := download(context.Background(), c.req); status.Code(err) != c.code {
			t.Errorf("%v: %v, want %s", c.req, err, c.code)
		}
	}
	// The rate: the whole artifact takes at least (size - burst) / rate.
	start := time.Now()
	got, err := download(context.Background(), &v1.DownloadRequest{Sha256: sum(art)})
	if err != nil || !bytes.Equal(got, art) {
		t.Fatalf("download: %d bytes, %v", len(got), err)
	}
	if min := time.Duration(float64(len(art)-peerChunk) / rateBytes * float64(time.Second)); time.Since(start) < min {
		t.Fatalf("%d bytes in %s, faster than %d bytes/s allows (%s)", len(art), time.Since(start), rateBytes, min)
	}
	// One upload at once: a second is refused while the first runs, and
	// served once it ended.
	ctx, cancel := context.WithCancel(context.Background())
	first, err := client.Download(ctx, &v1.DownloadRequest{Sha256: sum(art)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil { // the handler holds its slot
		t.Fatal(err)
	}
	if _, err := download(context.Background(), &v1.DownloadRequest{Sha256: sum(art), Offset: int64(len(art)) - 10}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second download at once: %v, want ResourceExhausted", err)
	}
	if n := testutil.ToFloat64(srv.metrics.peerRefused); n != 1 {
		t.Fatalf("refused counter %v", n)
	}
	cancel()
	testkit.EventuallyErr(t, 10*time.Second, "a download once the first ended", func() error {
		b, err := download(context.Background(), &v1.DownloadRequest{Sha256: sum(art), Offset: int64(len(art)) - 10})
		if err == nil && !bytes.Equal(b, art[len(art)-10:]) {
			return errors.New("wrong bytes at the offset")
		}
		return err
	})
}

// TestDroppedPeersBounded: the set of dropped peers never holds more than
// maxDroppedPeers; past it, it starts again.
func TestDroppedPeersBounded(t *testing.T) {
	var d droppedPeers
	for i := range maxDroppedPeers {
		d.add(strconv.Itoa(i))
	}
	if !d.has("0") || len(d.set) != maxDroppedPeers {
		t.Fatalf("%d remembered", len(d.set))
	}
	d.add("one-more")
	if d.has("0") || !d.has("one-more") || len(d.set) != 1 {
		t.Fatalf("past the bound: %d remembered", len(d.set))
	}
}

// TestPeerFetchBlamesOnlyTheBadPeer: a lying peer sends a corrupted first
// half and fails, a good peer sends the rest; the whole fails verification.
// Which of the two lied is not known from that fetch, so neither is
// blamed on it: the agent fetches again without them (here from the
// coordinator), compares what each sent with the good copy, and only the
// liar is dropped and reported, never the good peer.
func TestPeerFetchBlamesOnlyTheBadPeer(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 400<<10)
	corrupt := bytes.Clone(art)
	corrupt[10] ^= 0xff
	liar := servePeerTLS(t, pki, "liar", halfServer{art: corrupt})
	good := newPeerAgent(t, pki, "good", true)
	good.holds(t, art)
	a := newPeerAgent(t, pki, "fetcher", false)
	useCoordinator(t, a, memStore{art: art})
	a.rep.put(&v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FETCHING})
	asg := assignmentFrom(art, good)
	asg.Sources = append([]*v1.ArtifactSource{{HostId: "liar", Address: liar}}, asg.Sources...)
	f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if !a.dropped.has("liar") || a.dropped.has("good") {
		t.Fatalf("dropped: %v, want liar only", a.dropped.set)
	}
	if got := a.rep.take(); len(got) != 1 || got[0].GetBadSource() != "liar" {
		t.Fatalf("report: %v, want bad_source liar", got)
	}
	if n := testutil.ToFloat64(a.metrics.peersRejected); n != 1 {
		t.Fatalf("peers rejected: %v, want 1", n)
	}
}

// trickleServer sends one byte of art at a time, every gap, from the
// offset asked: never idle long, far too slow.
type trickleServer struct {
	v1.UnimplementedArtifactServiceServer
	art []byte
	gap time.Duration
}

func (s trickleServer) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	t := time.NewTicker(s.gap)
	defer t.Stop()
	for i := req.GetOffset(); i < int64(len(s.art)); i++ {
		if err := stream.Send(&v1.DownloadResponse{Chunk: s.art[i : i+1]}); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-t.C:
		}
	}
	return nil
}

// TestPeerFetchLeavesSlowPeer: a peer that sends a byte now and then (a
// slow-loris: never idle for the idle timeout) is left once a window
// brings less than the minimum rate; the next source continues from the
// byte reached, and the slow peer is not blamed (its bytes were right).
func TestPeerFetchLeavesSlowPeer(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 200<<10)
	slow := servePeerTLS(t, pki, "slow", trickleServer{art: art, gap: 5 * time.Millisecond})
	good := newPeerAgent(t, pki, "good", true)
	good.holds(t, art)
	a := newPeerAgent(t, pki, "fetcher", false)
	a.opts.fetchIdle = time.Minute // the trickle never trips it
	a.opts.peerMinRateWindow = 200 * time.Millisecond
	asg := assignmentFrom(art, good)
	asg.Sources = append([]*v1.ArtifactSource{{HostId: "slow", Address: slow}}, asg.Sources...)
	// The deadline only stops a broken fetcher from hanging the test.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := a.fetchOnce(ctx, asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if a.dropped.has("slow") || a.dropped.has("good") {
		t.Fatalf("dropped: %v, want none", a.dropped.set)
	}
	if n := testutil.ToFloat64(good.metrics.peerUploaded); n <= 0 || n >= float64(len(art)) {
		t.Fatalf("the good peer sent %v bytes, want the rest after the slow one's", n)
	}
}

// servingPeer starts a's peer listener with opts changed by set.
func servingPeer(t *testing.T, a *agent, set func(*options)) {
	t.Helper()
	set(&a.opts)
	a.cfg.PeerListen = ports.Addr(t)
	addr, start, stop, err := a.startPeer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	if err := start(); err != nil {
		t.Fatal(err)
	}
	a.peerAddr = addr
}

// closedByServer reports whether the server closed c (a read ends); the
// deadline is only a bound for a server that never does.
func closedByServer(t *testing.T, c net.Conn) error {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 1))
	return err
}

// TestPeerListenerBoundsConnections: anyone can open connections to a peer
// listener before TLS says who they are. Past peerMaxConns open at once
// they are closed as accepted; a handshake that does not finish within
// peerHandshakeTimeout is closed; once the idle connections go, a peer
// downloads again.
func TestPeerListenerBoundsConnections(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 64<<10)
	srv := newPeerAgent(t, pki, "srv", false)
	servingPeer(t, srv, func(o *options) { o.peerMaxConns = 3; o.peerHandshakeTimeout = time.Hour })
	srv.holds(t, art)
	var idle []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", srv.peerAddr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	extra, err := net.Dial("tcp", srv.peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if err := closedByServer(t, extra); err != io.EOF && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("a connection past the limit: %v, want closed by the server", err)
	}
	for _, c := range idle {
		c.Close()
	}
	a := newPeerAgent(t, pki, "fetcher", false)
	asg := assignmentFrom(art, srv)
	testkit.EventuallyErr(t, 10*time.Second, "a download once the idle connections closed", func() error {
		f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
		if err == nil {
			a.inst.Discard(f)
		}
		return err
	})

	slow := newPeerAgent(t, pki, "slow-handshake", false)
	servingPeer(t, slow, func(o *options) { o.peerHandshakeTimeout = 100 * time.Millisecond })
	c, err := net.Dial("tcp", slow.peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := closedByServer(t, c); err != io.EOF && !isReset(err) {
		t.Fatalf("a connection that never starts its handshake: %v, want closed by the server", err)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// floodServer sends art from the offset asked, then garbage without end.
type floodServer struct {
	v1.UnimplementedArtifactServiceServer
	art []byte
}

func (s floodServer) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	if err := stream.Send(&v1.DownloadResponse{Chunk: s.art[req.GetOffset():]}); err != nil {
		return err
	}
	junk := make([]byte, peerChunk)
	for {
		if err := stream.Send(&v1.DownloadResponse{Chunk: junk}); err != nil {
			return err
		}
	}
}

// TestPeerFetchStopsAnEndlessStream: a peer that sends the artifact and
// then bytes without end is read up to the artifact's size plus one chunk
// at most, blamed, and the coordinator serves the artifact.
func TestPeerFetchStopsAnEndlessStream(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 100<<10)
	flood := servePeerTLS(t, pki, "flood", floodServer{art: art})
	a := newPeerAgent(t, pki, "fetcher", false)
	useCoordinator(t, a, memStore{art: art})
	asg := assignmentFrom(art)
	asg.Sources = []*v1.ArtifactSource{{HostId: "flood", Address: flood}}
	f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if !a.dropped.has("flood") {
		t.Fatal("the flooding peer was not dropped")
	}
	if n := testutil.ToFloat64(a.metrics.sourceBytes.WithLabelValues(sourcePeer)); n > float64(len(art)+4*peerChunk) {
		t.Fatalf("read %v bytes from the flooding peer for a %d-byte artifact", n, len(art))
	}
}
