package lifecycle

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
)

// TestPureImports keeps the lifecycle pure: it imports exactly these (no
// I/O packages), starts no goroutines, reads no clock and sets no timers
// (time comes in as an argument).
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"fmt": true, "slices": true, "strings": true, "time": true,
		"github.com/fleetwave/fleetwave/proto/fleetwave/v1":  true,
		"github.com/fleetwave/fleetwave/internal/specdiff":   true,
		"github.com/fleetwave/fleetwave/internal/hookspec":   true,
		"google.golang.org/protobuf/types/known/timestamppb": true,
	}, 2)
}
