package demoapp

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// failAfter is a failure deadline, not an expected time.
const failAfter = time.Minute

// watchedListener reports accepted connections and its closing.
type watchedListener struct {
	net.Listener
	accepted  chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *watchedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted <- struct{}{}
	}
	return c, err
}

func (l *watchedListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	timer := time.NewTimer(failAfter)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		t.Fatalf("%s: not within %v", what, failAfter)
	}
}

// serveWatched runs serve on a watched listener; stop cancels it and
// returns serve's result.
func serveWatched(t *testing.T, files map[string]string) (*watchedListener, func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := &watchedListener{Listener: ln, accepted: make(chan struct{}, 16), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, wl, writeFiles(t, files), zerolog.Nop(), nil) }()
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() {
			cancel()
			timer := time.NewTimer(failAfter)
			defer timer.Stop()
			select {
			case result = <-done:
			case <-timer.C:
				t.Fatalf("serve did not return within %v of the cancel", failAfter)
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return wl, stop
}

// TestShutdownAnswersConnectionAcceptedBefore: a connection the app
// accepted before it began to stop, whose request arrives after, is
// answered. (http.Server.Shutdown alone closes it unanswered: in a handover
// that client would see its connection dropped.)
func TestShutdownAnswersConnectionAcceptedBefore(t *testing.T) {
	wl, stop := serveWatched(t, map[string]string{"VERSION": "v1"})
	c, err := net.Dial("tcp", wl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait(t, wl.accepted, "the connection accepted")
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	wait(t, wl.closed, "the listener closed by the shutdown")

	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: demo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer on a connection accepted before the shutdown: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	// (Whether it says Connection: close depends on whether keep-alive
	// was already off when it was answered; either way the connection is
	// closed before serve returns.)
	if resp.StatusCode != 200 || string(body) != "hello from v1" {
		t.Errorf("answer %d %q, want 200 %q", resp.StatusCode, body, "hello from v1")
	}
	if err := <-stopped; err != nil {
		t.Errorf("serve = %v, want nil", err)
	}
}

// TestShutdownIsBounded: a connection that never sends its request does not
// hold the shutdown past shutdownTimeout; it is closed.
func TestShutdownIsBounded(t *testing.T) {
	old := shutdownTimeout
	shutdownTimeout = 100 * time.Millisecond
	t.Cleanup(func() { shutdownTimeout = old })
	wl, stop := serveWatched(t, map[string]string{"VERSION": "v1"})
	c, err := net.Dial("tcp", wl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait(t, wl.accepted, "the connection accepted")
	if err := stop(); err == nil || !strings.Contains(err.Error(), "connections still open after 100ms") {
		t.Errorf("serve = %v, want the shutdown bound hit", err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("the silent connection is still open (read %d bytes)", n)
	}
}

// TestShutdownEndsKeepAlive: an idle keep-alive connection is closed at the
// shutdown, so it does not hold it.
func TestShutdownEndsKeepAlive(t *testing.T) {
	wl, stop := serveWatched(t, map[string]string{"VERSION": "v1"})
	c, err := net.Dial("tcp", wl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, "GET /version HTTP/1.1\r\nHost: demo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.Close {
		t.Fatal("keep-alive not offered before the shutdown")
	}
	if err := stop(); err != nil {
		t.Fatalf("serve = %v", err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection after the shutdown: read %v, want EOF", err)
	}
}

// TestNotify: with NOTIFY_SOCKET set the app says READY=1 (once it serves)
// and STOPPING=1; without it nothing is sent and nothing fails.
func TestNotify(t *testing.T) {
	dir, err := os.MkdirTemp("", "demoapp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan string, 4)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func() string {
		t.Helper()
		timer := time.NewTimer(failAfter)
		defer timer.Stop()
		select {
		case m := <-msgs:
			return m
		case <-timer.C:
			t.Fatalf("no notification within %v", failAfter)
			return ""
		}
	}
	s := start(t, writeFiles(t, map[string]string{"VERSION": "n1"}), nil)
	if m := next(); m != "READY=1\nSTATUS=serving n1" {
		t.Errorf("first notification %q", m)
	}
	expect(t, s.url+"/version", 200, "n1") // ready means serving
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if m := next(); m != "STOPPING=1" {
		t.Errorf("second notification %q", m)
	}

	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "nobody-listens"))
	s = start(t, writeFiles(t, map[string]string{"VERSION": "n2"}), nil)
	expect(t, s.url+"/version", 200, "n2")
	if err := s.stop(); err != nil {
		t.Fatalf("a failing sd_notify failed the app: %v", err)
	}
}

// TestListenerWithoutActivation: LISTEN_* meant for another process (its
// pid) is ignored and --listen used; without either Run says what is
// missing.
func TestListenerWithoutActivation(t *testing.T) {
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("LISTEN_FDS", "1")
	ln, err := listener("127.0.0.1:0", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.Close()
	if _, ok := os.LookupEnv("LISTEN_FDS"); ok {
		t.Error("LISTEN_FDS left in the environment")
	}
	if _, err := listener("", zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "--listen: required (unless a socket is passed with LISTEN_FDS)") {
		t.Errorf("listener without address: %v", err)
	}
}
