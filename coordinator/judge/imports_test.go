package judge

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
)

// TestPureImports keeps the judge pure: only pure standard library
// packages; no goroutines, no clock.
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"errors": true, "fmt": true, "math": true, "slices": true, "strconv": true, "strings": true, "time": true,
	}, 4)
}
