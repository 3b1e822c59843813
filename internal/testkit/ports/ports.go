// Package ports hands tests the TCP/UDP ports their servers listen on, so
// that no two of them ever get the same one.
//
// A port picked by binding to port 0 and closing is taken from the kernel's
// ephemeral range, which is also where every outgoing connection and every
// other port-0 bind takes its local port: between the close and the server's
// own bind, anybody may take it, and the next port-0 pick may return it
// again. That happened in CI (an agent's metrics port given to two agents).
//
// The ports handed out here lie below the ephemeral range (Linux's default
// is 32768-60999), where the kernel never picks. Each is reserved with an
// exclusive lock on a file named after it in the temporary directory, held
// until the process exits, so test binaries running in parallel never share
// one, and a process never gets the same port twice.
package ports

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// Low and High bound the ports handed out: [Low, High).
const Low, High = 20000, 32000

var reserved struct {
	sync.Mutex
	held map[int]*os.File // the locked files, open until the process exits
}

// Take reserves a port that is free for TCP and UDP on every address.
func Take() (int, error) {
	reserved.Lock()
	defer reserved.Unlock()
	if reserved.held == nil {
		reserved.held = map[int]*os.File{}
	}
	dir := filepath.Join(os.TempDir(), "fleetwave-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, fmt.Errorf("port reservations: %w", err)
	}
	for range 2000 {
		p := Low + rand.IntN(High-Low)
		if reserved.held[p] != nil {
			continue
		}
		f, err := lock(filepath.Join(dir, strconv.Itoa(p)))
		if err != nil {
			if errors.Is(err, syscall.EWOULDBLOCK) {
				continue // another test process holds it
			}
			return 0, err
		}
		if !free(p) {
			f.Close()
			continue
		}
		reserved.held[p] = f
		return p, nil
	}
	return 0, fmt.Errorf("no free port in [%d,%d)", Low, High)
}

// Port is Take for a test: it fails the test when no port is left.
func Port(t testing.TB) int {
	t.Helper()
	p, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Addr returns "127.0.0.1:N" with a port from Port.
func Addr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Port(t))
}

func lock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("port reservation %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// free reports whether nothing listens on port p, for TCP or UDP, on any
// address.
func free(p int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
	if err != nil {
		return false
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
	if err != nil {
		return false
	}
	u.Close()
	return true
}
