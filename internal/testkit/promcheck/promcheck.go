// Package promcheck is a test helper: it lints a Prometheus text
// exposition with `promtool check metrics` (Debian's prometheus package,
// installed by `make deps`). It imports only the standard library.
package promcheck

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// Check runs promtool on body as a subtest. Without promtool it skips,
// unless FLEETWAVE_REQUIRE_PROMETHEUS is set (make test), then it fails.
func Check(t *testing.T, body []byte) {
	t.Helper()
	t.Run("promtool", func(t *testing.T) {
		bin, err := exec.LookPath("promtool")
		if err != nil {
			msg := "promtool not on PATH (Debian's prometheus package, installed by `make deps`): exposition not linted"
			if os.Getenv("FLEETWAVE_REQUIRE_PROMETHEUS") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		cmd := exec.Command(bin, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	})
}
