//go:build linux

package sim

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// arrivalPair is a loopback TCP connection: the server's end and the
// client's, read with receive timestamps.
func arrivalPair(t *testing.T) (server net.Conn, client *arrivalConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	client, err = newArrivalConn(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// A read keeps the kernel's receive time of the bytes it returned: after
// they were written and before the read returned, the newest read's.
func TestArrivalConnKeepsReceiveTime(t *testing.T) {
	server, client := arrivalPair(t)
	if !client.arrived().IsZero() {
		t.Fatalf("arrived %s before any read", client.arrived())
	}
	// The kernel stamps packets once timestamping is on system-wide,
	// which it turns on shortly after a first socket asks: until a read
	// has a time, single bytes go back and forth.
	testkit.Eventually(t, 20*time.Second, "a read with a receive time", func() bool {
		if _, err := server.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return !client.arrived().IsZero()
	})
	last := client.arrived()
	for _, msg := range []string{"first", "second"} {
		before := time.Now()
		if _, err := server.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(client, b); err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		if string(b) != msg {
			t.Fatalf("read %q, want %q", b, msg)
		}
		at := client.arrived()
		if at.Before(before.Round(0)) || at.After(after.Round(0)) || !at.After(last) {
			t.Fatalf("%s: arrived %s, want within [%s, %s] and after the previous read's %s", msg, at, before, after, last)
		}
		last = at
	}
	if n, err := client.Read(nil); n != 0 || err != nil {
		t.Errorf("empty read: %d, %v", n, err)
	}
	// A read without a time (here: timestamps turned off on the socket)
	// makes the arrival unknown, not the older read's.
	if err := client.raw.Control(func(fd uintptr) {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 0); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Write([]byte("third")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if at := client.arrived(); !at.IsZero() {
		t.Errorf("after a read without a time: arrived %s, want unknown", at)
	}
	server.Close()
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read after the peer closed: %v, want EOF", err)
	}
}

// Reads honour deadlines and end when the connection is closed, as a
// net.Conn's do (gRPC relies on both).
func TestArrivalConnDeadlineAndClose(t *testing.T) {
	_, client := arrivalPair(t)
	if err := client.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v", err)
	}
	if err := client.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := client.Read(make([]byte, 1))
		done <- err
	}()
	client.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read of a closed connection: %v", err)
	}
}

// A host's connection keeps the TCP_USER_TIMEOUT that gRPC's own dialer
// sets on a plain *net.TCPConn when keepalive is on, and skips on any
// other net.Conn (an arrivalConn): as an agent's, its writes to a
// coordinator gone silent fail after the keepalive timeout.
func TestHostConnUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, c := range []struct {
		keepalive time.Duration
		want      int
	}{{5 * time.Second, int(keepaliveTimeout / time.Millisecond)}, {0, 0}} {
		h := &host{f: &Fleet{cfg: Config{Keepalive: c.keepalive}}}
		ac, err := h.dialTCP(context.Background(), ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var got int
		var gerr error
		if err := ac.raw.Control(func(fd uintptr) {
			got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		}); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		ac.Close()
		if got != c.want {
			t.Errorf("keepalive %s: TCP_USER_TIMEOUT %d ms, want %d", c.keepalive, got, c.want)
		}
	}
}

// Socket figures are kept as they are, negative ones too (sent_at from
// another machine's clock), alongside the goroutine's; unknown ones are
// left out.
func TestRecordLatencySocketFigures(t *testing.T) {
	f := &Fleet{cfg: Config{MaxLatencySamples: 10}}
	now := time.Now()
	f.recordLatency(now, -2*time.Millisecond, -3*time.Millisecond, true)
	f.recordLatency(now, 5*time.Millisecond, 4*time.Millisecond, true)
	f.recordLatency(now, 6*time.Millisecond, 0, false)
	s := f.Stats()
	if s.Latency.Count != 3 || s.SocketLatency.Count != 2 || s.SocketLatency.Max != 4*time.Millisecond || s.SocketLatency.P50 != -3*time.Millisecond && s.SocketLatency.P50 != 4*time.Millisecond {
		t.Errorf("latency %+v, to the sockets %+v; want 3 sets, 2 of them with socket figures -3 ms and 4 ms", s.Latency, s.SocketLatency)
	}
}
