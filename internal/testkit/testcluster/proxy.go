package testcluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// Proxy is a TCP proxy on loopback in the test process, forwarding every
// connection to one target. It is the fallback Link when network namespaces
// are not available: point the process under test at Addr instead of the
// target.
//
// Cut resets every open connection (both sides) and, until Restore, resets
// each new connection as soon as it is accepted, so no byte reaches the
// target. The listening port stays bound throughout, so Restore cannot lose
// it to another process.
type Proxy struct {
	target string
	ln     net.Listener

	up, down atomic.Int64 // bytes client→target, target→client
	refused  atomic.Int64

	mu     sync.Mutex
	cut    bool
	closed bool
	conns  map[net.Conn]struct{} // both sides of every open pair
	wg     sync.WaitGroup
}

// NewProxy listens on a loopback port from internal/testkit/ports and
// forwards to target (host:port). It is closed at the end of t.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatalf("proxy to %s: listen: %v", target, err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// BytesUp is the number of bytes forwarded from clients to the target.
func (p *Proxy) BytesUp() int64 { return p.up.Load() }

// BytesDown is the number of bytes forwarded from the target to clients.
func (p *Proxy) BytesDown() int64 { return p.down.Load() }

// Refused is the number of connections reset because the link was cut.
func (p *Proxy) Refused() int64 { return p.refused.Load() }

// Conns is the number of connections currently forwarded.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Cut resets every open connection and refuses new ones until Restore.
func (p *Proxy) Cut() error {
	p.mu.Lock()
	p.cut = true
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		reset(c)
	}
	return nil
}

// RefuseNew resets each new connection as soon as it is accepted, until
// Restore, and leaves the open ones as they are: a client that connected
// before keeps its connection, one that connects now cannot.
func (p *Proxy) RefuseNew() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
}

// Restore lets new connections through again.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("proxy closed")
	}
	p.cut = false
	return nil
}

// Close stops the proxy and resets every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	p.ln.Close()
	for c := range conns {
		reset(c)
	}
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. EMFILE; the listener is still open
		}
		p.mu.Lock()
		cut, closed := p.cut, p.closed
		p.mu.Unlock()
		if cut || closed {
			p.refused.Add(1)
			reset(c)
			continue
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *Proxy) forward(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		reset(client)
		return
	}
	p.mu.Lock()
	if p.cut || p.closed {
		p.mu.Unlock()
		p.refused.Add(1)
		reset(client)
		reset(server)
		return
	}
	p.conns[client], p.conns[server] = struct{}{}, struct{}{}
	p.mu.Unlock()

	var pair sync.WaitGroup
	pair.Add(2)
	go p.pipe(&pair, server, client, &p.up)
	go p.pipe(&pair, client, server, &p.down)
	pair.Wait()

	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
	client.Close()
	server.Close()
}

// pipe copies src to dst, counting bytes. At EOF it half-closes dst so the
// other direction can finish; on any other error it resets both.
func (p *Proxy) pipe(wg *sync.WaitGroup, dst, src net.Conn, n *atomic.Int64) {
	defer wg.Done()
	_, err := io.Copy(countingWriter{dst, n}, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			return
		}
	}
	reset(dst)
	reset(src)
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	k, err := c.w.Write(b)
	c.n.Add(int64(k))
	if err != nil {
		return k, fmt.Errorf("proxy write: %w", err)
	}
	return k, nil
}

// reset closes c with an RST rather than a FIN, like a broken path would
// surface to a peer that still sends.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
