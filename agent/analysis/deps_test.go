package analysis

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoForbiddenDeps keeps the agent lean: no etcd, no coordinator code,
// and no other agent package.
func TestNoForbiddenDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps returned nothing")
	}
	for _, d := range deps {
		otherAgent := strings.Contains(d, "/fleetwave/agent") && !strings.HasSuffix(d, "/fleetwave/agent/analysis")
		if strings.HasPrefix(d, "go.etcd.io/") || strings.Contains(d, "/fleetwave/coordinator") || otherAgent {
			t.Errorf("forbidden dependency %s", d)
		}
	}
}
