package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// dialWith is tlsFleet.dial with extra dial options.
func (f *tlsFleet) dialWith(t *testing.T, cert string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	certFile, keyFile := "", ""
	if cert != "" {
		certFile, keyFile = filepath.Join(f.dir, cert+".pem"), filepath.Join(f.dir, cert+"-key.pem")
	}
	tc, err := tlsutil.ClientConfig(certFile, keyFile, filepath.Join(f.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(f.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// refusals reads fleetwave_coordinator_limit_refusals_total{limit}.
func (f *tlsFleet) refusals(t *testing.T, limit string) float64 {
	t.Helper()
	_, mfs := scrape(t, f.metrics)
	v, _, _ := sample(mfs, "fleetwave_coordinator_limit_refusals_total", "limit", limit)
	return v
}

// Health/Watch holds a stream: a caller without credentials may not open
// one (issue 13: 50,000 of them on one connection took 530 MB); Check
// stays open to all, and an authenticated caller may watch.
func TestHealthWatchNeedsCredentials(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	anon := healthpb.NewHealthClient(f.dial(t, "", ""))
	if r, err := anon.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("anonymous Check: %v %v", r, err)
	}
	w, err := anon.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, "anonymous Watch", err, codes.Unauthenticated, "Watch: no client certificate and no token")

	vw, err := healthpb.NewHealthClient(f.dial(t, "operator-vera", "")).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := vw.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("viewer's Watch: %v %v", r, err)
	}
}

// One caller holds at most MaxStreamsPerCaller streams, whatever they are
// (issue 13: a viewer held 5,000 WatchEvents streams); the next is refused
// with ResourceExhausted naming the limit, other callers are not affected,
// and a stream that ends frees its place.
func TestStreamsPerCallerCapped(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) { c.Limits.MaxStreamsPerCaller = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vera := f.dial(t, "operator-vera", "")
	watch := func(cc *grpc.ClientConn) (context.CancelFunc, error) {
		wctx, wcancel := context.WithCancel(ctx)
		w, err := healthpb.NewHealthClient(cc).Watch(wctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv() // the first status: the stream is open on the coordinator
		}
		return wcancel, err
	}
	var open []context.CancelFunc
	for i := range 3 {
		c, err := watch(vera)
		if err != nil {
			t.Fatalf("stream %d of 3: %v", i+1, err)
		}
		open = append(open, c)
	}
	_, err := watch(vera)
	wantCode(t, "vera's 4th stream", err, codes.ResourceExhausted, "operator:vera already has 3 streams open, the limit (--max-streams-per-caller 3)")
	ev, err := v1.NewOperatorServiceClient(vera).WatchEvents(ctx, &v1.WatchEventsRequest{Follow: true})
	if err == nil {
		_, err = ev.Recv()
	}
	wantCode(t, "vera's WatchEvents beyond the cap", err, codes.ResourceExhausted, "WatchEvents: operator:vera already has 3 streams open")
	// Another connection of the same caller counts against the same cap.
	_, err = watch(f.dial(t, "operator-vera", ""))
	wantCode(t, "vera's 4th stream on another connection", err, codes.ResourceExhausted, "max-streams-per-caller")
	// Another caller is not affected.
	if c, err := watch(f.dial(t, "operator-alice", "")); err != nil {
		t.Errorf("alice's stream: %v", err)
	} else {
		c()
	}
	if n := f.refusals(t, "max-streams-per-caller"); n != 3 {
		t.Errorf("refusals counted: %v, want 3", n)
	}
	open[0]()
	testkit.EventuallyErr(t, 30*time.Second, "a new stream once one ended", func() error {
		c, err := watch(vera)
		if err == nil {
			open[0] = c
		}
		return err
	})
	for _, c := range open {
		c()
	}
}

// rawConn is an HTTP/2 connection without gRPC's client: it can do what
// an attacker does (open streams and never send their request, ignore the
// server's stream limit).
type rawConn struct {
	t    *testing.T
	c    *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	next uint32
}

func dialRaw(t *testing.T, addr string, certs ...tls.Certificate) *rawConn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, Certificates: certs, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	r := &rawConn{t: t, c: c, fr: http2.NewFramer(c, c), next: 1}
	r.enc = hpack.NewEncoder(&r.hbuf)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

// open starts a call of method and sends no request (no DATA, no end of
// stream): the server waits for it. It returns the stream id.
func (r *rawConn) open(method string, md ...string) uint32 {
	r.t.Helper()
	r.hbuf.Reset()
	for _, hf := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "coordinator"},
		{"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = r.enc.WriteField(hpack.HeaderField{Name: hf[0], Value: hf[1]})
	}
	for i := 0; i+1 < len(md); i += 2 {
		_ = r.enc.WriteField(hpack.HeaderField{Name: md[i], Value: md[i+1]})
	}
	id := r.next
	r.next += 2
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(), EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
	return id
}

// ended reads frames until stream id ends, and says how: "grpc-status N:
// message" from its trailers, or "RST_STREAM CODE".
func (r *rawConn) ended(id uint32) string {
	r.t.Helper()
	// A failure deadline (the answer comes at once when all is well).
	if err := r.c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		r.t.Fatal(err)
	}
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("waiting for stream %d to end: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = r.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = r.fr.WritePing(true, f.Data)
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "RST_STREAM " + f.ErrCode.String()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id && f.StreamEnded() {
				msg := ""
				for _, hf := range f.Fields {
					if hf.Name == "grpc-message" {
						msg, _ = url.PathUnescape(hf.Value)
					}
				}
				for _, hf := range f.Fields {
					if hf.Name == "grpc-status" {
						return "grpc-status " + hf.Value + ": " + msg
					}
				}
			}
		}
	}
}

// A connection without a client certificate gets MaxCallsPerConnWithoutCert
// calls in flight: calls whose request never comes hold the server's
// goroutines, so the next one is refused as its headers arrive, and a
// finished call frees its place. Every connection gets MaxStreamsPerConn
// streams (raw clients that ignore the setting are refused), and request
// headers are bounded.
func TestCallsPerConnectionCapped(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.Limits.MaxCallsPerConnWithoutCert = 3
		c.Limits.MaxStreamsPerConn = 5
	})
	const check = "/grpc.health.v1.Health/Check"
	r := dialRaw(t, f.addr)
	for range 3 {
		r.open(check)
	}
	id := r.open(check)
	if got, want := r.ended(id), "grpc-status 8: Check: 3 calls in flight on this connection without a client certificate, the limit (--max-calls-per-conn-without-cert 3)"; got != want {
		t.Errorf("4th call in flight without a certificate: %q, want %q", got, want)
	}
	// The Watch flood of issue 13 on a connection of its own: each is
	// refused and holds nothing, so it can go on for ever without cost.
	w := dialRaw(t, f.addr)
	for i := range 200 {
		id := w.open("/grpc.health.v1.Health/Watch")
		if got := w.ended(id); !strings.HasPrefix(got, "grpc-status 16: Watch: no client certificate and no token") {
			t.Fatalf("anonymous Watch %d: %q, want Unauthenticated", i, got)
		}
	}

	// With a certificate the per-connection cap of calls does not apply,
	// the HTTP/2 stream limit does.
	kp, err := tls.LoadX509KeyPair(filepath.Join(f.dir, "operator-vera.pem"), filepath.Join(f.dir, "operator-vera-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, f.addr, kp)
	for range 5 {
		c.open(check)
	}
	if got := c.ended(c.open(check)); got != "RST_STREAM REFUSED_STREAM" {
		t.Errorf("6th stream on a connection limited to 5: %q, want RST_STREAM REFUSED_STREAM", got)
	}

	// Headers over 64 KiB are refused (gRPC's default would take 16 MiB).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := metadata.AppendToOutgoingContext(ctx, "x-pad", strings.Repeat("a", 100<<10))
	anon := healthpb.NewHealthClient(f.dial(t, "", ""))
	if _, err := anon.Check(big, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("a call with 100 KiB of headers was served")
	}
	// Calls that end free their place: many in a row on one connection.
	for i := range 50 {
		if _, err := anon.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("check %d in a row: %v", i, err)
		}
	}
}

// The coordinator takes at most MaxConnections connections, of which at
// most MaxConnectionsWithoutCert without a client certificate; one over is
// closed after its handshake, and a closed one frees its place.
func TestConnectionsCapped(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.Limits.MaxConnections = 3
		c.Limits.MaxConnectionsWithoutCert = 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	check := func(cc *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	anon1, anon2 := f.dial(t, "", ""), f.dial(t, "", "")
	for i, cc := range []*grpc.ClientConn{anon1, anon2} {
		if err := check(cc); err != nil {
			t.Fatalf("connection %d without a certificate: %v", i+1, err)
		}
	}
	// A refused client is closed at once: gRPC would connect again in the
	// background and take the place freed below.
	refused := func(what, cert string) {
		cc := f.dial(t, cert, "")
		wantCode(t, what, check(cc), codes.Unavailable, "")
		cc.Close()
	}
	refused("3rd connection without a certificate", "")
	alice := f.dial(t, "operator-alice", "")
	if err := check(alice); err != nil {
		t.Fatalf("a connection with a certificate, 3rd of 3: %v", err)
	}
	refused("4th connection", "operator-vera")
	if n := f.refusals(t, "max-connections-without-cert"); n < 1 {
		t.Errorf("refusals of max-connections-without-cert: %v", n)
	}
	if n := f.refusals(t, "max-connections"); n < 1 {
		t.Errorf("refusals of max-connections: %v", n)
	}
	_, mfs := scrape(t, f.metrics)
	if v, _, _ := sample(mfs, "fleetwave_coordinator_connections", "cert", "no"); v != 2 {
		t.Errorf("connections without a certificate: %v, want 2", v)
	}
	anon1.Close()
	testkit.EventuallyErr(t, 30*time.Second, "a connection once one closed", func() error {
		return check(f.dial(t, "operator-vera", ""))
	})
}

// putBigEvents writes n events of about 16 KiB straight into etcd.
func putBigEvents(t *testing.T, emb *store.Embedded, n int) {
	t.Helper()
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli)
	for i := range n {
		e := &v1.Event{At: timestamppb.Now(), Service: "web", RolloutId: "000001", Kind: "note", Wave: -1,
			Message: fmt.Sprintf("%d %s", i, strings.Repeat("x", 16<<10))}
		if err := st.PutEvents(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
}

// slowWatcher opens a following WatchEvents stream that it does not read,
// on a connection whose receive windows stay at 64 KiB (a reader that is
// slow, not one with a large window).
func slowWatcher(t *testing.T, f *tlsFleet, ctx context.Context) v1.OperatorService_WatchEventsClient {
	t.Helper()
	cc := f.dialWith(t, "operator-vera", grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	putBigEvents(t, f.emb, 1)
	w, err := v1.NewOperatorServiceClient(cc).WatchEvents(ctx, &v1.WatchEventsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// The recorded event: the listing is sent, what comes next comes
	// through the watch.
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	return w
}

// drain reads w to its end and returns how many events came and the error
// that ended it.
func drain(w v1.OperatorService_WatchEventsClient) (int, error) {
	n := 0
	for {
		if _, err := w.Recv(); err != nil {
			return n, err
		}
		n++
	}
}

// A watcher that does not read is cut off once a message waits longer than
// StreamSendTimeout (issue 13: 5,000 such streams grew the coordinator by
// 190 MB): its connection is closed, not buffered for.
func TestSlowReaderCutOffBySendTimeout(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) { c.Limits.StreamSendTimeout = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := slowWatcher(t, f, ctx)
	putBigEvents(t, f.emb, 40) // 640 KiB: far over the reader's windows
	testkit.Eventually(t, 30*time.Second, "the slow reader cut off", func() bool {
		return f.refusals(t, "stream-send-timeout") == 1
	})
	n, err := drain(w)
	if n >= 40 || status.Code(err) != codes.Unavailable {
		t.Errorf("the slow reader got %d of 40 events, then %v; want fewer, then Unavailable", n, err)
	}
}

// A watcher that falls StreamSendBuffer events behind is cut off, however
// long the send timeout.
func TestSlowReaderCutOffByBuffer(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.Limits.StreamSendTimeout = time.Hour
		c.Limits.StreamSendBuffer = 4
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := slowWatcher(t, f, ctx)
	putBigEvents(t, f.emb, 40)
	testkit.Eventually(t, 30*time.Second, "the slow reader cut off", func() bool {
		return f.refusals(t, "stream-send-buffer") == 1
	})
	n, err := drain(w)
	if n >= 40 || status.Code(err) != codes.Unavailable {
		t.Errorf("the slow reader got %d of 40 events, then %v; want fewer, then Unavailable", n, err)
	}
}

// A connection must finish its TLS handshake within HandshakeTimeout, and
// one without a call for MaxConnectionIdle is sent away (GOAWAY).
func TestHandshakeAndIdleTimeouts(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.Limits.HandshakeTimeout = 200 * time.Millisecond
		c.Limits.MaxConnectionIdle = 200 * time.Millisecond
	})
	// Connected, and silent: closed by the server.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil { // a failure deadline
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a connection that never starts its handshake: read %d bytes, %v; want EOF", n, err)
	}
	// Handshake done, no call: a GOAWAY comes.
	r := dialRaw(t, f.addr)
	if err := r.c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		fr, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("idle connection: %v before a GOAWAY", err)
		}
		if g, ok := fr.(*http2.GoAwayFrame); ok {
			t.Logf("idle connection: GOAWAY %v %q", g.ErrCode, g.DebugData())
			break
		}
		if s, ok := fr.(*http2.SettingsFrame); ok && !s.IsAck() {
			_ = r.fr.WriteSettingsAck()
		}
	}
}

// A write's events share one etcd revision (one transaction; in batches, a
// 5,000-host step's 10,000 events are ten keys of it) and reach the watch
// at once: a reader that keeps up is not cut off because one revision
// holds more events than StreamSendBuffer, and gets every event of it.
func TestEventWatchTakesARevisionLargerThanTheBuffer(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) { c.Limits.StreamSendTimeout = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc := f.dialWith(t, "operator-vera")
	putBigEvents(t, f.emb, 1)
	w, err := v1.NewOperatorServiceClient(cc).WatchEvents(ctx, &v1.WatchEventsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil { // the recorded event
		t.Fatal(err)
	}
	cli, err := f.emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli)
	st.SetEventLayout(func() store.EventLayout { return store.EventBatches })
	const n = 3000 // three batches, one transaction: three times the default buffer
	at := timestamppb.Now()
	evs := make([]*v1.Event, n)
	for i := range evs {
		evs[i] = &v1.Event{At: at, Service: "web", RolloutId: "000002", Kind: "host_assigned", Wave: 1, Host: fmt.Sprintf("h%05d", i)}
	}
	if err := st.PutEvents(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("after %d of %d events of one revision: %v", i, n, err)
		}
		if got, want := resp.GetEvent().GetHost(), evs[i].GetHost(); got != want {
			t.Fatalf("event %d: host %s, want %s", i, got, want)
		}
	}
	if r := f.refusals(t, "stream-send-buffer"); r != 0 {
		t.Errorf("stream-send-buffer refusals: %v, want 0", r)
	}
}
