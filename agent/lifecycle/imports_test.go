package lifecycle

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/purity"
)

// TestPureImports keeps the lifecycle pure: no I/O packages, no
// goroutines, no clock (time comes in as an argument).
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"errors": true, "fmt": true, "strings": true, "time": true,
		"github.com/fleetwave/fleetwave/proto/fleetwave/v1":  true,
		"google.golang.org/protobuf/types/known/durationpb":  true,
		"google.golang.org/protobuf/types/known/timestamppb": true,
	}, 2)
}
