package grpcwindow_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// probe is the payload of the PING the tests send after a DATA frame: the
// peer answers it in order, so a PING of the peer's own (a BDP probe) that
// the DATA frame caused comes before the answer.
var probe = [8]byte{'f', 'l', 'e', 'e', 't', 'w', 'a', 'v'}

// framesUntilProbeAck reads fr until the ack of probe and returns how many
// PINGs (not acks) the peer sent meanwhile, and the INITIAL_WINDOW_SIZE of
// the peer's SETTINGS if one came (acked; 0 if none).
func framesUntilProbeAck(t *testing.T, fr *http2.Framer) (pings int, window uint32) {
	t.Helper()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if f.IsAck() && f.Data == probe {
				return pings, window
			}
			if !f.IsAck() {
				pings++
				if err := fr.WritePing(true, f.Data); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					window = v
				}
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func headers(t *testing.T, fields ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		if err := enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// emptyMessage is a gRPC length-prefixed message of zero bytes (an empty
// HealthCheckRequest or HealthCheckResponse).
var emptyMessage = []byte{0, 0, 0, 0, 0}

// serverPings sends one message on a stream to a gRPC server started with
// opts and counts the PINGs it sends before answering the probe after it.
func serverPings(t *testing.T, opts ...grpc.ServerOption) (pings int, window uint32) {
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute)) // a failure bound only
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
		BlockFragment: headers(t, ":method", "POST", ":scheme", "http", ":path", "/grpc.health.v1.Health/Watch",
			":authority", "fleetwave", "content-type", "application/grpc", "te", "trailers")}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(1, false, emptyMessage); err != nil {
		t.Fatal(err)
	}
	if err := fr.WritePing(false, probe); err != nil {
		t.Fatal(err)
	}
	return framesUntilProbeAck(t, fr)
}

// clientPings answers a gRPC client dialled with opts with one message and
// counts the PINGs the client sends before answering the probe after it.
func clientPings(t *testing.T, opts ...grpc.DialOption) (pings int, window uint32) {
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if s, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{}); err == nil {
			_, _ = s.Recv()
		}
	}()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute)) // a failure bound only
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(conn, preface); err != nil || string(preface) != http2.ClientPreface {
		t.Fatalf("client preface %q: %v", preface, err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The client's request: HEADERS, then its message with END_STREAM.
	var stream uint32
	for stream == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamEnded() {
				stream = f.StreamID
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					window = v
				}
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, EndHeaders: true,
		BlockFragment: headers(t, ":status", "200", "content-type", "application/grpc")}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(stream, false, emptyMessage); err != nil {
		t.Fatal(err)
	}
	if err := fr.WritePing(false, probe); err != nil {
		t.Fatal(err)
	}
	pings, w := framesUntilProbeAck(t, fr)
	if w != 0 {
		window = w
	}
	return pings, window
}

func TestServerSendsNoPingPerMessage(t *testing.T) {
	// grpc-go's default, for contrast: the message costs a BDP PING (if
	// grpc-go stops doing that, this package has no reason to exist).
	if pings, _ := serverPings(t); pings == 0 {
		t.Fatal("default server options: no BDP PING after a message; the test no longer sees what it guards against")
	}
	pings, window := serverPings(t, grpcwindow.ServerOptions()...)
	if pings != 0 {
		t.Fatalf("server with grpcwindow.ServerOptions sent %d PINGs after one message, want 0", pings)
	}
	if window != grpcwindow.Stream {
		t.Fatalf("server's INITIAL_WINDOW_SIZE %d, want %d", window, grpcwindow.Stream)
	}
}

func TestClientSendsNoPingPerMessage(t *testing.T) {
	if pings, _ := clientPings(t); pings == 0 {
		t.Fatal("default dial options: no BDP PING after a message; the test no longer sees what it guards against")
	}
	pings, window := clientPings(t, grpcwindow.DialOptions()...)
	if pings != 0 {
		t.Fatalf("client with grpcwindow.DialOptions sent %d PINGs after one message, want 0", pings)
	}
	if window != grpcwindow.Stream {
		t.Fatalf("client's INITIAL_WINDOW_SIZE %d, want %d", window, grpcwindow.Stream)
	}
}
