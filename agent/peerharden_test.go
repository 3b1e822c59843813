package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestPeerServerHeaderListBounded: a fleet agent's call whose header list
// decodes to more than peerMaxHeaderBytes is refused as its headers are
// read (HPACK lets a repeated field cost a byte on the wire: a review held
// 199 MiB of a serving agent with 111 KiB sent, under gRPC's default 16
// MiB). The client here is raw HTTP/2, which ignores the server's
// advertised limit as an attacker would. The server answers frames in
// order: the refusal of the stream comes before the PING's answer sent
// after it. Before the limit, the stream was accepted and waited.
func TestPeerServerHeaderListBounded(t *testing.T) {
	pki := newPeerPKI(t)
	srv := newPeerAgent(t, pki, "srv", false)
	servingPeer(t, srv, func(*options) {})
	cert, key := pki.pair(t, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "evil"})
	tc, err := tlsutil.PeerClientConfig(cert, key, pki.caFile, "srv")
	if err != nil {
		t.Fatal(err)
	}
	tc.NextProtos = []string{"h2"}
	raw, err := net.Dial("tcp", srv.peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, tc)
	defer conn.Close()
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var blk bytes.Buffer
	enc := hpack.NewEncoder(&blk)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", v1.ArtifactService_Download_FullMethodName},
		{":authority", "srv"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for range 64 { // 64 × ~1 KiB decoded: 8 times the limit
		_ = enc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", 1000)})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	ping := [8]byte{'f', 'l', 'e', 'e', 't'}
	if err := fr.WritePing(false, ping); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute)) // a failing server must not hang the test
	refused := ""
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's frames: %v (refused so far: %q)", err, refused)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				refused = "RST_STREAM " + f.ErrCode.String()
			}
		case *http2.MetaHeadersFrame:
			for _, hf := range f.Fields {
				if f.StreamID == 1 && hf.Name == "grpc-status" {
					refused = "headers: grpc-status " + hf.Value
				}
			}
		case *http2.GoAwayFrame:
			refused = "GOAWAY " + f.ErrCode.String()
		case *http2.PingFrame:
			if f.IsAck() && f.Data == ping {
				if refused == "" {
					t.Fatal("a call with 64 KiB of headers was taken (no refusal before the PING's answer)")
				}
				t.Logf("refused: %s", refused)
				return
			}
		}
	}
}

// TestPeerServerEndsCallsWithoutRequest: a call whose request does not
// arrive within peerRequestWithin is ended: it used to wait for it forever,
// keeping its connection from ever being idle and its place in the
// listener's caps taken, also after its host was revoked (a review). Its
// connection is then idle and closed, and the one place it held serves
// another host.
func TestPeerServerEndsCallsWithoutRequest(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 64<<10)
	srv := newPeerAgent(t, pki, "srv", false)
	servingPeer(t, srv, func(o *options) {
		o.peerMaxConns = 1
		o.peerConnIdle = 300 * time.Millisecond
		o.peerRequestWithin = 500 * time.Millisecond
	})
	srv.holds(t, art)
	cert, key := pki.pair(t, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "evil"})
	tc, err := tlsutil.PeerClientConfig(cert, key, pki.caFile, "srv")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(srv.peerAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// A deadline of the client's own far beyond the server's: the error
	// says which ended the call.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Headers only: the request is never sent.
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, v1.ArtifactService_Download_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	err = s.RecvMsg(&v1.DownloadResponse{})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "no request within 500ms") {
		t.Fatalf("a call without its request: %v, want it ended by the server", err)
	}
	good := peerClient(t, pki, "good", srv)
	testkit.EventuallyErr(t, 30*time.Second, "another host served in the only place", func() error {
		got, err := readAll(context.Background(), good, sum(art))
		if err == nil && len(got) != len(art) {
			return status.Errorf(codes.DataLoss, "%d bytes of %d", len(got), len(art))
		}
		return err
	})
}

// lineCounter counts log lines.
type lineCounter struct {
	mu sync.Mutex
	n  int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.n += bytes.Count(p, []byte("\n"))
	c.mu.Unlock()
	return len(p), nil
}

func (c *lineCounter) lines() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestPeerServerRevokedCallerCut: a host revoked while its connection is
// open is refused on its next call, its connection is closed, and its
// refusals are logged at a bounded rate (all counted): it used to call in
// a loop on the open connection, each refusal a log line (2,000 a second
// in a review).
func TestPeerServerRevokedCallerCut(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 64<<10)
	srv := newPeerAgent(t, pki, "srv", false)
	now := time.Now()
	withRevocations(t, srv, now)
	lc := &lineCounter{}
	srv.log = zerolog.New(lc)
	servingPeer(t, srv, func(*options) {})
	srv.holds(t, art)
	c := peerClient(t, pki, "evil", srv)
	if _, err := readAll(context.Background(), c, sum(art)); err != nil {
		t.Fatal(err)
	}
	before := lc.lines()
	revokeHost(srv, "evil", now)
	start := time.Now()
	const calls = 300
	refused := 0
	for range calls {
		_, err := readAll(context.Background(), c, sum(art))
		if err == nil {
			t.Fatal("a revoked host was served")
		}
		if strings.Contains(err.Error(), "revoked") {
			refused++
		}
	}
	elapsed := time.Since(start)
	if refused == 0 {
		t.Fatal("no call was refused naming the revocation")
	}
	// The limiter's own bound: its burst, and its rate over the time the
	// calls took.
	bound := peerRefusedLogBurst + int(elapsed.Seconds()*peerRefusedLogRate) + 1
	if n := lc.lines() - before; n > bound {
		t.Fatalf("%d log lines for %d calls of a revoked host in %s, more than %d", n, calls, elapsed, bound)
	}
	if got := testutil.ToFloat64(srv.revs.refused.WithLabelValues(sidePeer)); got < float64(refused) {
		t.Errorf("refused counted %v, want at least %d", got, refused)
	}
	// Its connection is closed: the next call needs a handshake, refused.
	testkit.EventuallyErr(t, 30*time.Second, "the revoked host's connection closed", func() error {
		_, err := readAll(context.Background(), c, sum(art))
		if err != nil && strings.Contains(err.Error(), "tls: bad certificate") { // refused in the handshake
			return nil
		}
		return status.Errorf(codes.Unknown, "the call after the refusal: %v", err)
	})
}

// withRevocations gives a test agent the revocations it enforces.
func withRevocations(t *testing.T, a *agent, now time.Time) {
	t.Helper()
	revs, err := openRevocations(a.cfg, now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	a.revs = revs
}

// revokeHost has a revoke the certificates of agent host issued until now
// (for an hour), as a coordinator's revocation message would.
func revokeHost(a *agent, host string, now time.Time) {
	a.takeRevocations(&v1.RevocationSet{Revision: 1, Revocations: []*v1.Revocation{{Identity: "agent:" + host, RevokedAt: timestamppb.New(now), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))}}}, now)
}
