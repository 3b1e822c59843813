package cli

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCLIBinaryIsLean keeps the CLI a plain gRPC client: no etcd, no agent,
// and of the coordinator only the pure rollout engine (its vocabulary).
func TestCLIBinaryIsLean(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "github.com/fleetwave/fleetwave/cmd/fleetwave").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const mod = "github.com/fleetwave/fleetwave/"
	seen := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		seen[d] = true
		switch {
		case strings.HasPrefix(d, "go.etcd.io"),
			strings.HasPrefix(d, mod+"agent"),
			strings.HasPrefix(d, mod+"coordinator") && d != mod+"coordinator/rollout":
			t.Errorf("fleetwave (the CLI) depends on %s", d)
		}
	}
	if !seen[mod+"internal/cli"] {
		t.Errorf("the CLI binary does not include internal/cli: this test no longer guards it")
	}
}
