package agent

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

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
// stream ends (DeadlineExceeded, naming why) and the slot serves another
// host. (Failed before the send timeout: the slot was held for good and
// every other host was refused.)
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
	// The stalled stream ended with the reason, after the chunks its
	// windows held.
	var err error
	for err == nil {
		_, err = stuck.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "took no chunk") {
		t.Fatalf("the stalled stream: %v, want DeadlineExceeded naming the stall", err)
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
	revs, err := openRevocations(srv.cfg, now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	srv.revs = revs
	servingPeer(t, srv, func(*options) {})
	srv.holds(t, art)
	c := peerClient(t, pki, "h2", srv)
	if got, err := readAll(context.Background(), c, sum(art)); err != nil || len(got) != len(art) {
		t.Fatalf("before the revocation: %d bytes, %v", len(got), err)
	}
	srv.takeRevocations(&v1.RevocationSet{Revision: 1, Revocations: []*v1.Revocation{{Identity: "agent:h2", RevokedAt: timestamppb.New(now), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))}}}, now)
	_, err = readAll(context.Background(), c, sum(art))
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
