package sockets

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// clients dial addr in a loop, one request per connection, and count the
// answers per serving pid and every failure.
type clients struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	byPID  map[string]int
	errors []error
}

func startClients(addr string, n int) *clients {
	c := &clients{addr: addr, stop: make(chan struct{}), byPID: map[string]int{}}
	for range n {
		c.wg.Add(1)
		go c.loop()
	}
	return c
}

func (c *clients) loop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		pid, err := c.request()
		c.mu.Lock()
		if err != nil {
			c.errors = append(c.errors, err)
		} else {
			c.byPID[pid]++
		}
		c.mu.Unlock()
	}
}

func (c *clients) request() (string, error) {
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		return "", fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: test\r\n\r\n"); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	resp := string(b)
	if !strings.HasPrefix(resp, "HTTP/1.0 200 OK\r\n") {
		return "", fmt.Errorf("response %q", resp)
	}
	_, body, _ := strings.Cut(resp, "\r\n\r\n")
	return body, nil
}

func (c *clients) served(pid int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byPID[fmt.Sprint(pid)]
}

func (c *clients) finish() (map[string]int, []error) {
	close(c.stop)
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byPID, c.errors
}

// TestHandover is the deploy the package exists for: process A serves on
// the agent's socket; B starts on the same socket and says READY=1 while A
// still serves; A gets SIGTERM and shuts down gracefully; clients dialling
// all along see no refused or broken connection, and B serves after A is
// gone.
func TestHandover(t *testing.T) {
	socks := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"})
	dir := sockDir(t)
	startServer := func(name string) (*proc, *Notify) {
		n, err := ListenNotify(dir, name, AccessMain, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		p := start(t, helperCmd(t, "serve"), socks, n)
		waitReady(t, n, p)
		if got := n.ReadyPID(); got != p.cmd.Process.Pid {
			t.Fatalf("READY=1 from pid %d, want %d", got, p.cmd.Process.Pid)
		}
		return p, n
	}

	a, _ := startServer("a")
	cl := startClients(socks[0].Addr, 2)
	testkit.Eventually(t, failAfter, "A serves", func() bool { return cl.served(a.cmd.Process.Pid) >= 5 })

	b, _ := startServer("b")
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, a); err != nil {
		t.Errorf("A's graceful stop: %v", err)
	}
	after := cl.served(b.cmd.Process.Pid)
	testkit.Eventually(t, failAfter, "B serves after A exited", func() bool { return cl.served(b.cmd.Process.Pid) >= after+20 })
	byPID, errs := cl.finish()
	for i, err := range errs {
		if i < 10 {
			t.Errorf("client: %v", err)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d failed requests during the handover (served: %v)", len(errs), byPID)
	}
	t.Logf("served: %v", byPID)

	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, b); err != nil {
		t.Errorf("B's graceful stop: %v", err)
	}
	// With no process left the agent's copy keeps the queue: a connection
	// is accepted by the kernel, waiting for the next process.
	c, err := net.Dial("tcp", socks[0].Addr)
	if err != nil {
		t.Fatalf("dial with no process serving: %v", err)
	}
	_ = c.Close()
}
