package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// peerClient is host's ArtifactService client of the peer listener of
// srv, with fixed 64 KiB flow-control windows (no BDP growth): a stream
// that is not read stops its sender after a window's worth.
func peerClient(t *testing.T, pki *peerPKI, host string, srv *agent) v1.ArtifactServiceClient {
	t.Helper()
	cert, key := pki.pair(t, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: host})
	tc, err := tlsutil.PeerClientConfig(cert, key, pki.caFile, srv.cfg.HostID)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(srv.peerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return v1.NewArtifactServiceClient(cc)
}

// readAll reads a whole Download.
func readAll(ctx context.Context, c v1.ArtifactServiceClient, sha string) ([]byte, error) {
	stream, err := c.Download(ctx, &v1.DownloadRequest{Sha256: sha})
	if err != nil {
		return nil, err
	}
	return io.ReadAll(&chunkReader{stream: stream})
}

// holdOpen starts a Download, reads its first chunk and then reads no
// more: the server's sends block on flow control.
func holdOpen(t *testing.T, ctx context.Context, c v1.ArtifactServiceClient, sha string) v1.ArtifactService_DownloadClient {
	t.Helper()
	stream, err := c.Download(ctx, &v1.DownloadRequest{Sha256: sha})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	return stream
}

// TestPeerServerEndsStalledDownload: a fetcher that stops reading holds
// its upload slot only until a chunk has waited peerSendTimeout; then its
// stream ends, its connection is closed (the stream's trailers would wait
// behind its unread data and keep the connection open for good), and the
// slot serves another host. (Failed before the send timeout: the slot was
// held for good and every other host was refused.)
func TestPeerServerEndsStalledDownload(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 1<<20)
	srv := newPeerAgent(t, pki, "srv", false)
	srv.cfg.PeerMaxUploads = 1
	servingPeer(t, srv, func(o *options) { o.peerSendTimeout = 300 * time.Millisecond })
	srv.holds(t, art)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck := holdOpen(t, ctx, peerClient(t, pki, "stuck", srv), sum(art))
	other := peerClient(t, pki, "other", srv)
	testkit.EventuallyErr(t, 30*time.Second, "another host served once the stalled download ended", func() error {
		got, err := readAll(context.Background(), other, sum(art))
		if err == nil && len(got) != len(art) {
			return errors.New("short download")
		}
		return err
	})
	// The stalled stream's connection was closed: after the chunks its
	// windows held, the stream ends with the connection.
	var err error
	for err == nil {
		_, err = stuck.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("the stalled stream: %v, want Unavailable (its connection closed)", err)
	}
}

// TestPeerServerEndsSlowReader: a fetcher that takes chunks, but slower
// than the minimum rate over the window of waiting for it (a chunk just
// before each send timeout would hold a slot for days), is ended, naming
// its rate. The reader is paced (at most a chunk per 50 ms: 1.3 MB/s
// however fast the machine) against a minimum of 4 MiB/s, so the outcome
// does not depend on the machine's speed.
func TestPeerServerEndsSlowReader(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 4<<20)
	srv := newPeerAgent(t, pki, "srv", false)
	servingPeer(t, srv, func(o *options) {
		o.peerSendTimeout = time.Hour
		o.peerMinRate = 4 << 20
		o.peerMinRateWindow = 300 * time.Millisecond
	})
	srv.holds(t, art)
	stream, err := peerClient(t, pki, "slow", srv).Download(context.Background(), &v1.DownloadRequest{Sha256: sum(art)})
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	got := 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "under 4194304 bytes/s") {
				t.Fatalf("a slow reader after %d bytes: %v, want ResourceExhausted naming the rate", got, err)
			}
			break
		}
		if got += len(resp.GetChunk()); got >= len(art) {
			t.Fatalf("a slow reader took the whole artifact (%d bytes)", got)
		}
		<-tick.C
	}
}

// TestPeerServerMinimumRateLeavesOutItsOwnLimit: the time the server's
// own upload rate makes a download wait is not held against its fetcher:
// a fetcher reading as fast as it can from a server whose rate (256 KiB/s)
// is under the minimum (1 MiB/s) gets the whole artifact.
func TestPeerServerMinimumRateLeavesOutItsOwnLimit(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 256<<10)
	srv := newPeerAgent(t, pki, "srv", false)
	srv.cfg.PeerUploadRate = 256 << 10
	servingPeer(t, srv, func(o *options) {
		o.peerSendTimeout = time.Hour
		o.peerMinRate = 1 << 20
		o.peerMinRateWindow = 100 * time.Millisecond
	})
	srv.holds(t, art)
	if b, err := readAll(context.Background(), peerClient(t, pki, "reader", srv), sum(art)); err != nil || len(b) != len(art) {
		t.Fatalf("a reader of a rate-limited server: %d bytes, %v", len(b), err)
	}
}

// TestPeerServerUploadsPerHost: one host is served at most
// peerUploadsPerHost downloads at once, whatever slots are free; another
// host is served meanwhile. (Failed before: one host could take every
// slot.)
func TestPeerServerUploadsPerHost(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 1<<20)
	srv := newPeerAgent(t, pki, "srv", false)
	srv.cfg.PeerMaxUploads = 4
	servingPeer(t, srv, func(o *options) { o.peerSendTimeout = time.Hour })
	srv.holds(t, art)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	greedy := peerClient(t, pki, "greedy", srv)
	for range peerUploadsPerHost {
		holdOpen(t, ctx, greedy, sum(art))
	}
	_, err := readAll(context.Background(), greedy, sum(art))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "serving host greedy 2 peer downloads already") {
		t.Fatalf("a third download of one host: %v, want ResourceExhausted naming the host", err)
	}
	if got, err := readAll(context.Background(), peerClient(t, pki, "other", srv), sum(art)); err != nil || len(got) != len(art) {
		t.Fatalf("another host: %d bytes, %v", len(got), err)
	}
	// Once the greedy host's downloads end, it is served again.
	cancel()
	testkit.EventuallyErr(t, 30*time.Second, "the greedy host served after its downloads ended", func() error {
		_, err := readAll(context.Background(), greedy, sum(art))
		return err
	})
}

// TestPeerServerChecksRevocationPerCall: a host revoked after its
// connection's handshake is refused on its next call on that connection.
// (Failed before: revocations were checked at the handshake only, and
// the open connection kept downloading.)
func TestPeerServerChecksRevocationPerCall(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 64<<10)
	srv := newPeerAgent(t, pki, "srv", false)
	now := time.Now()
	withRevocations(t, srv, now)
	servingPeer(t, srv, func(*options) {})
	srv.holds(t, art)
	c := peerClient(t, pki, "h2", srv)
	if got, err := readAll(context.Background(), c, sum(art)); err != nil || len(got) != len(art) {
		t.Fatalf("before the revocation: %d bytes, %v", len(got), err)
	}
	revokeHost(srv, "h2", now)
	_, err := readAll(context.Background(), c, sum(art))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("after the revocation, on the same connection: %v, want PermissionDenied naming the revocation", err)
	}
	if got, err := readAll(context.Background(), peerClient(t, pki, "h1", srv), sum(art)); err != nil || len(got) != len(art) {
		t.Fatalf("another host: %d bytes, %v", len(got), err)
	}
}

// TestPeerServerRequestBounded: a Download request over
// peerMaxRequestBytes is refused by gRPC before the handler, and a bad
// sha256 under it is quoted clipped.
func TestPeerServerRequestBounded(t *testing.T) {
	pki := newPeerPKI(t)
	srv := newPeerAgent(t, pki, "srv", false)
	servingPeer(t, srv, func(*options) {})
	c := peerClient(t, pki, "h1", srv)
	_, err := readAll(context.Background(), c, strings.Repeat("a", 3<<20))
	if status.Code(err) != codes.ResourceExhausted || len(err.Error()) > 1000 {
		t.Fatalf("a 3 MiB request: %d-byte error %.200v, want ResourceExhausted, short", len(err.Error()), err)
	}
	_, err = readAll(context.Background(), c, strings.Repeat("z", 900))
	if status.Code(err) != codes.InvalidArgument || len(err.Error()) > 400 || !strings.Contains(err.Error(), "(900 bytes)") {
		t.Fatalf("a 900-byte sha256: %v, want InvalidArgument quoting it clipped", err)
	}
}

// TestPeerAddressIsTCPOnly: a source's address is dialed as a TCP
// address, never as anything gRPC reads in it: "unix-abstract:N" and
// "unix:N" (valid host:port both) reach neither this machine's abstract
// unix socket N nor the socket file N in the working directory, and a
// source whose address is not host:port is skipped. (Failed before, for
// each: the fetcher connected to the socket, the way a host advertising
// such an address could make every fetcher that names it dial local
// sockets.)
func TestPeerAddressIsTCPOnly(t *testing.T) {
	name := fmt.Sprint(20000 + rand.IntN(40000))
	t.Chdir(t.TempDir())
	accepted := make(chan string, 16)
	for _, path := range []string{"@" + name, name} {
		lis, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				accepted <- path
				c.Close()
			}
		}()
	}
	pki := newPeerPKI(t)
	art := bigArtifact(t, 64<<10)
	a := newPeerAgent(t, pki, "fetcher", false)
	useCoordinator(t, a, memStore{art: art})
	asg := assignmentFrom(art)
	asg.Sources = []*v1.ArtifactSource{{HostId: "h1", Address: "unix-abstract:" + name}, {HostId: "h2", Address: "unix:" + name}, {HostId: "h3", Address: "unix:@" + name}}
	f, err := a.fetchOnce(context.Background(), asg, artifactOf(asg))
	if err != nil {
		t.Fatalf("fetch: %v, want it from the coordinator", err)
	}
	a.inst.Discard(f)
	select {
	case path := <-accepted:
		t.Fatalf("the fetcher dialed the unix socket %q named by a source", path)
	default:
	}
}

// TestPeerListenerBoundsConnectionsPerAddress: one address holds at most
// peerMaxConnsPerIP of the listener's connections, even before any
// handshake; another address is still served. (Failed before: one address
// could hold every place, with or without a certificate.)
func TestPeerListenerBoundsConnectionsPerAddress(t *testing.T) {
	pki := newPeerPKI(t)
	srv := newPeerAgent(t, pki, "srv", false)
	servingPeer(t, srv, func(o *options) { o.peerMaxConnsPerIP = 2; o.peerHandshakeTimeout = time.Hour })
	from := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", srv.peerAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	from("127.0.0.1")
	from("127.0.0.1")
	if err := closedByServer(t, from("127.0.0.1")); err != io.EOF && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("a third connection from one address: %v, want closed by the server", err)
	}
	cert, key := pki.pair(t, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "other"})
	tc, err := tlsutil.PeerClientConfig(cert, key, pki.caFile, "srv")
	if err != nil {
		t.Fatal(err)
	}
	tc.NextProtos = []string{"h2"}
	c := tls.Client(from("127.0.0.2"), tc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // failure deadline
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("a connection from another address: %v, want served", err)
	}
}

// TestPeerSlotsFitTheFetchersMinimumRate: a listener whose upload rate,
// shared by --peer-max-uploads downloads, would give each less than the
// rate a fetcher leaves a peer under serves fewer at once (at least one),
// each at that rate or more. (Before: all 8 were served at 64 KiB/s each,
// and every fetcher left the peer after its window.)
func TestPeerSlotsFitTheFetchersMinimumRate(t *testing.T) {
	for _, c := range []struct {
		uploads int
		rate    int64
		want    int
	}{
		{8, DefaultPeerUploadRate, 8},
		{8, 2 << 20, 8},
		{8, 512 << 10, 2},
		{8, MinPeerUploadRate, 1},
		{1, MinPeerUploadRate, 1},
	} {
		a := &agent{cfg: Config{PeerMaxUploads: c.uploads, PeerUploadRate: c.rate}, opts: defaultOptions()}
		if got := a.peerSlots(); got != c.want {
			t.Errorf("%d uploads at %d bytes/s: %d slots, want %d", c.uploads, c.rate, got, c.want)
		}
	}
	// The listener serves that many: the third download at once is
	// refused with the count.
	pki := newPeerPKI(t)
	art := bigArtifact(t, 1<<20)
	srv := newPeerAgent(t, pki, "srv", false)
	srv.cfg.PeerUploadRate = 512 << 10
	servingPeer(t, srv, func(o *options) { o.peerMinRate = 256 << 10; o.peerSendTimeout = time.Hour })
	srv.holds(t, art)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	holdOpen(t, ctx, peerClient(t, pki, "h1", srv), sum(art))
	holdOpen(t, ctx, peerClient(t, pki, "h2", srv), sum(art))
	if _, err := readAll(context.Background(), peerClient(t, pki, "h3", srv), sum(art)); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "serving 2 peer downloads already") {
		t.Fatalf("a third download at once: %v, want ResourceExhausted at 2", err)
	}
}

// addrConn is a net.Conn that only has a remote address.
type addrConn struct {
	net.Conn
	remote string
}

func (c addrConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.ParseIP(c.remote)} }

// An IPv6 address counts against its /64 (a host may use any address of
// its usual allocation), IPv4 against itself, IPv4-mapped as IPv4.
func TestPeerConnectionSource(t *testing.T) {
	for _, c := range []struct{ remote, want string }{
		{"10.0.0.7", "10.0.0.7"},
		{"::ffff:10.0.0.7", "10.0.0.7"},
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2::"},
		{"2001:db8:1:2:bbbb::9", "2001:db8:1:2::"},
		{"2001:db8:1:3::1", "2001:db8:1:3::"},
	} {
		if got := sourceOf(addrConn{remote: c.remote}); got.String() != c.want {
			t.Errorf("%s counts as %s, want %s", c.remote, got, c.want)
		}
	}
}
