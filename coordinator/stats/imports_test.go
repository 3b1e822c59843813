package stats

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
)

// TestPureImports keeps the package pure: only pure standard library
// packages and the generated types; no goroutines, no clock.
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"slices": true, "strings": true, "time": true,
		"github.com/fleetwave/fleetwave/proto/fleetwave/v1":  true,
		"google.golang.org/protobuf/types/known/durationpb":  true,
		"google.golang.org/protobuf/types/known/timestamppb": true,
	}, 3)
}
