package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/internal/testkit"
)

// failAfter is a failure deadline, not an expected time.
const failAfter = 2 * time.Minute

type demo struct {
	cmd    *exec.Cmd
	notify *sockets.Notify
	exited chan struct{}
	err    error
}

// startDemo runs the demo app of version on socks, the way the agent will:
// socket activation and NOTIFY_SOCKET, no --listen.
func startDemo(t *testing.T, version string, socks []*sockets.Socket, notifyDir string) *demo {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "VERSION"), []byte(version), 0o644); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n, err := sockets.ListenNotify(notifyDir, version, sockets.AccessMain, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	cmd := exec.Command(exe, "--dir", dir)
	cmd.Env = []string{"DEMOAPP_RUN_MAIN=1", "GORACE=atexit_sleep_ms=0"}
	release, err := sockets.Prepare(cmd, socks, n)
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	release()
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{cmd: cmd, notify: n, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.exited
	})
	if err := n.Watch(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(failAfter)
	defer timer.Stop()
	select {
	case <-n.Ready():
	case <-d.exited:
		t.Fatalf("demo app %s exited before READY=1: %v", version, d.err)
	case <-timer.C:
		t.Fatalf("no READY=1 from demo app %s within %v", version, failAfter)
	}
	return d
}

// TestHandoverBetweenReleases is the deploy the demo app is made for: m1
// serves on the agent's socket; m2 starts on it and is ready while m1
// still serves; m1 gets SIGTERM; clients dialling all along see every
// request answered, by m1 and then by m2.
func TestHandoverBetweenReleases(t *testing.T) {
	socks, err := sockets.Bind([]sockets.Decl{{Name: "http", Listen: "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sockets.CloseAll(socks) })
	notifyDir, err := os.MkdirTemp("", "demoapp-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(notifyDir) })
	addr := socks[0].Addr

	var (
		mu        sync.Mutex
		byVersion = map[string]int{}
		failures  []error
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	count := func(v string) int {
		mu.Lock()
		defer mu.Unlock()
		return byVersion[v]
	}
	m1 := startDemo(t, "m1", socks, notifyDir)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				body, err := get(addr)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					byVersion[body]++
				}
				mu.Unlock()
			}
		}()
	}
	testkit.Eventually(t, failAfter, "m1 serves", func() bool { return count("hello from m1") >= 5 })
	m2 := startDemo(t, "m2", socks, notifyDir)
	if err := m1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(failAfter)
	defer timer.Stop()
	select {
	case <-m1.exited:
		if m1.err != nil {
			t.Errorf("m1 after SIGTERM: %v, want exit 0", m1.err)
		}
	case <-timer.C:
		t.Fatalf("m1 did not exit within %v of SIGTERM", failAfter)
	}
	after := count("hello from m2")
	testkit.Eventually(t, failAfter, "m2 serves after m1 exited", func() bool { return count("hello from m2") >= after+20 })
	close(stop)
	wg.Wait()
	for i, err := range failures {
		if i < 10 {
			t.Errorf("request: %v", err)
		}
	}
	if len(failures) > 0 {
		t.Fatalf("%d of the requests failed during the handover (answered: %v)", len(failures), byVersion)
	}
	t.Logf("answered: %v", byVersion)
	for _, d := range []*demo{m1, m2} {
		if st := d.notify.Stats(); st.Refused != 0 || st.Malformed != 0 {
			t.Errorf("notify stats %+v", st)
		}
	}
	_ = m2.cmd.Process.Signal(syscall.SIGTERM)
	<-m2.exited
	if m2.err != nil {
		t.Errorf("m2 after SIGTERM: %v, want exit 0", m2.err)
	}
}

// get sends GET / on a new connection and returns the body.
func get(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: demo\r\n\r\n"); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	head, body, _ := strings.Cut(string(b), "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.0 200 ") {
		return "", fmt.Errorf("response %q", b)
	}
	return body, nil
}
