package coordinator

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fleetwave/fleetwave/internal/grpcwindow"
)

// TestServerWindowsFixed: the coordinator's gRPC server runs with fixed
// flow-control windows (internal/grpcwindow: no BDP PING per agent message),
// which its SETTINGS frame shows.
func TestServerWindowsFixed(t *testing.T) {
	cc := startCoordinator(t)
	conn, err := net.Dial("tcp", cc.Target())
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
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			if v, _ := s.Value(http2.SettingInitialWindowSize); v != grpcwindow.Stream {
				t.Fatalf("coordinator's INITIAL_WINDOW_SIZE %d, want %d (grpcwindow.ServerOptions)", v, grpcwindow.Stream)
			}
			return
		}
	}
}
