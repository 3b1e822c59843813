package agent

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// TestSessionWindowsFixed: an agent's connection to a coordinator runs
// with fixed flow-control windows (internal/grpcwindow), which its SETTINGS
// (stream window) and first connection WINDOW_UPDATE (connection window)
// show. Nothing else tested the agent's dial options.
func TestSessionWindowsFixed(t *testing.T) {
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, Config{Insecure: true, Coordinators: []string{lis.Addr().String()}, HostID: testHostID, DataDir: t.TempDir()}, testOptions())
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
	var stream, connWindow uint32
	for stream == 0 || connWindow == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() && stream == 0 {
				stream, _ = f.Value(http2.SettingInitialWindowSize)
				if stream == 0 {
					t.Fatal("agent's SETTINGS without INITIAL_WINDOW_SIZE: grpc-go's dynamic windows (grpcwindow.DialOptions not used)")
				}
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 && connWindow == 0 {
				connWindow = 65535 + f.Increment
			}
		}
	}
	if stream != grpcwindow.Stream || connWindow != grpcwindow.Conn {
		t.Fatalf("agent's windows: stream %d, connection %d; want %d, %d (grpcwindow.DialOptions)", stream, connWindow, grpcwindow.Stream, grpcwindow.Conn)
	}
	cancel()
	conn.Close()
	waitDone(t, done)
}
