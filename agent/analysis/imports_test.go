package analysis

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
)

// TestPureImports keeps the evaluation pure: it imports exactly these (no
// net/http: scraping and queries are package fetch's), starts no
// goroutines, reads no clock and sets no timers (now is an argument).
// Parse reads an io.Reader it is given.
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"bytes": true, "errors": true, "fmt": true, "io": true, "math": true, "regexp": true,
		"slices": true, "strconv": true, "strings": true, "time": true,
		"github.com/fleetwave/fleetwave/agent/lifecycle":     true,
		"github.com/fleetwave/fleetwave/internal/spec":       true,
		"github.com/fleetwave/fleetwave/proto/fleetwave/v1":  true,
		"github.com/prometheus/client_model/go":              true,
		"github.com/prometheus/common/expfmt":                true,
		"github.com/prometheus/common/model":                 true,
		"google.golang.org/protobuf/types/known/timestamppb": true,
	}, 6)
}
