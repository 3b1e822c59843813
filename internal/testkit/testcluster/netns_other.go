//go:build !linux

package testcluster

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
)

// NetNS is only available on Linux; elsewhere NewNetNS reports ErrNoNetNS.
type NetNS struct{}

// NewNetNS reports ErrNoNetNS: network namespaces are Linux only.
func NewNetNS(t testing.TB) (*NetNS, error) {
	return nil, fmt.Errorf("%w: not Linux", ErrNoNetNS)
}

func (n *NetNS) Name() string     { return "" }
func (n *NetNS) HostAddr() string { return "" }
func (n *NetNS) Addr() string     { return "" }
func (n *NetNS) IsCut() bool      { return false }
func (n *NetNS) Cut() error       { return ErrNoNetNS }
func (n *NetNS) Restore() error   { return ErrNoNetNS }
func (n *NetNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command(name, args...)
}
func (n *NetNS) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}
