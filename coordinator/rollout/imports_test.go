package rollout

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
)

// TestPureImports keeps the engine pure: only the standard library's pure
// packages, protobuf and the generated types; no goroutines, no time.Now;
// no time zone resolved (time.LoadLocation, or spec.ParseWindow(s), which
// call it: the caller parses windows into Gates).
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"errors": true, "fmt": true, "slices": true, "sort": true, "strings": true, "time": true,
		"github.com/fleetwave/fleetwave/proto/fleetwave/v1":  true,
		"github.com/fleetwave/fleetwave/internal/spec":       true,
		"github.com/fleetwave/fleetwave/internal/specdiff":   true,
		"google.golang.org/protobuf/proto":                   true,
		"google.golang.org/protobuf/reflect/protoreflect":    true,
		"google.golang.org/protobuf/types/known/durationpb":  true,
		"google.golang.org/protobuf/types/known/timestamppb": true,
	}, 3,
		purity.Call{Path: "github.com/fleetwave/fleetwave/internal/spec", Name: "ParseWindows", Why: "resolves time zones (time.LoadLocation reads zoneinfo files): the caller parses windows into Gates.Windows"},
		purity.Call{Path: "github.com/fleetwave/fleetwave/internal/spec", Name: "ParseWindow", Why: "resolves time zones (time.LoadLocation reads zoneinfo files): the caller parses windows into Gates.Windows"},
	)
}
