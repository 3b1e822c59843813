package testcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NetNS is a network namespace joined to the host by a veth pair with
// addresses from a private /30 (10.200.X.0/30: the host side is .1, the
// namespace side .2). A process run with Command is inside it and reaches
// the host only through HostAddr, so coordinators under test must listen on
// 0.0.0.0 or on HostAddr. Cut sets the host side of the veth down: packets
// are dropped silently (open connections stall, new ones time out), as on a
// real broken path; Restore sets it up again.
//
// The slot X is reserved across processes with a lock file, so parallel test
// packages get distinct namespaces and subnets.
type NetNS struct {
	name   string
	hostIf string
	nsIf   string
	hostIP string
	nsIP   string
	lock   *os.File

	mu  sync.Mutex
	cut bool
}

// NewNetNS creates a namespace, removed at the end of t. The error wraps
// ErrNoNetNS when the machine cannot do it (the caller should fall back or
// skip); any other error is a real failure.
func NewNetNS(t testing.TB) (*NetNS, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: not running as root", ErrNoNetNS)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoNetNS, err)
	}
	n, err := reserveSlot()
	if err != nil {
		return nil, err
	}
	if err := n.setup(); err != nil {
		n.teardown()
		return nil, err
	}
	t.Cleanup(n.teardown)
	return n, nil
}

// reserveSlot locks a free 10.200.X.0/30 slot and names the namespace after it.
func reserveSlot() (*NetNS, error) {
	dir := filepath.Join(os.TempDir(), "fleetwave-testcluster-netns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("netns lock dir: %w", err)
	}
	used, err := hostAddrs()
	if err != nil {
		return nil, err
	}
	start := rand.IntN(256)
	for k := range 256 {
		x := (start + k) % 256
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot-%d.lock", x)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, fmt.Errorf("netns lock: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		n := &NetNS{
			name:   fmt.Sprintf("fwtc-%d", x),
			hostIf: fmt.Sprintf("fwtc%d-h", x),
			nsIf:   fmt.Sprintf("fwtc%d-n", x),
			hostIP: fmt.Sprintf("10.200.%d.1", x),
			nsIP:   fmt.Sprintf("10.200.%d.2", x),
			lock:   f,
		}
		// Whoever held this slot before us is gone: clear what it left.
		_, _ = ipCmd("link", "del", n.hostIf)
		_, _ = ipCmd("netns", "del", n.name)
		if used[n.hostIP] || used[n.nsIP] {
			if cur, _ := hostAddrs(); cur[n.hostIP] || cur[n.nsIP] {
				n.releaseLock()
				continue // the subnet is in use by something that is not ours
			}
		}
		return n, nil
	}
	return nil, errors.New("netns: all 256 slots of 10.200.0.0/16 are taken")
}

func hostAddrs() (map[string]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("host addresses: %w", err)
	}
	m := map[string]bool{}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			m[ipn.IP.String()] = true
		}
	}
	return m, nil
}

func (n *NetNS) setup() error {
	if out, err := ipCmd("netns", "add", n.name); err != nil {
		return fmt.Errorf("%w: ip netns add %s: %v: %s", ErrNoNetNS, n.name, err, out)
	}
	steps := [][]string{
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", n.nsIf, "netns", n.name},
		{"addr", "add", n.hostIP + "/30", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.name, "addr", "add", n.nsIP + "/30", "dev", n.nsIf},
		{"-n", n.name, "link", "set", n.nsIf, "up"},
		{"-n", n.name, "link", "set", "lo", "up"},
		{"-n", n.name, "route", "add", "default", "via", n.hostIP},
	}
	for _, s := range steps {
		if out, err := ipCmd(s...); err != nil {
			return fmt.Errorf("netns %s: ip %s: %w: %s", n.name, strings.Join(s, " "), err, out)
		}
	}
	return nil
}

func (n *NetNS) teardown() {
	_, _ = ipCmd("link", "del", n.hostIf) // deletes both ends
	_, _ = ipCmd("netns", "del", n.name)
	n.releaseLock()
}

func (n *NetNS) releaseLock() {
	if n.lock != nil {
		_ = syscall.Flock(int(n.lock.Fd()), syscall.LOCK_UN)
		n.lock.Close()
		n.lock = nil
	}
}

// Name is the namespace's name (as in `ip netns exec NAME`).
func (n *NetNS) Name() string { return n.name }

// HostAddr is the host side's IP address: what a process inside the
// namespace dials to reach a server on the host.
func (n *NetNS) HostAddr() string { return n.hostIP }

// Addr is the namespace side's IP address.
func (n *NetNS) Addr() string { return n.nsIP }

// Command returns a command that runs name inside the namespace (through
// `ip netns exec`, which execs it, so the started process is name itself).
// Like the etcd members, it is killed if the test process dies.
func (n *NetNS) Command(name string, args ...string) *exec.Cmd {
	return n.CommandContext(context.Background(), name, args...)
}

// CommandContext is Command with a context that kills the process.
func (n *NetNS) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Cut sets the host side of the veth down: nothing passes either way.
func (n *NetNS) Cut() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if out, err := ipCmd("link", "set", n.hostIf, "down"); err != nil {
		return fmt.Errorf("netns %s: cut: %w: %s", n.name, err, out)
	}
	n.cut = true
	return nil
}

// Restore sets the host side of the veth up again (its address and route
// come back with it).
func (n *NetNS) Restore() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if out, err := ipCmd("link", "set", n.hostIf, "up"); err != nil {
		return fmt.Errorf("netns %s: restore: %w: %s", n.name, err, out)
	}
	n.cut = false
	return nil
}

// IsCut reports whether the link is cut.
func (n *NetNS) IsCut() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut
}

func ipCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}
