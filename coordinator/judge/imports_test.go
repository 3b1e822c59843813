package judge

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
)

// TestPureImports keeps the judge pure: only pure standard library
// packages and the spec's names; no goroutines, no clock.
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"errors": true, "fmt": true, "math": true, "slices": true, "strconv": true, "strings": true, "time": true,
		"github.com/fleetwave/fleetwave/internal/spec": true,
	}, 4)
}
