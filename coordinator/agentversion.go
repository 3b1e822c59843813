package coordinator

import (
	"fmt"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// MinAgentVersion is the oldest numbered agent a coordinator accepts: a
// Hello from an agent reporting a vMAJOR.MINOR.PATCH below it is refused
// (FailedPrecondition) before anything about the host is recorded. It is
// raised when the coordinator stops understanding what older agents send or
// do; agent upgrades (`fleetwave agent upgrade`) bring hosts above it.
//
// An agent whose version is not numbered ("dev", the default of a build
// without -ldflags "-X main.version=...", or a test build's name) is a build
// from source whose age the coordinator cannot tell: it is accepted.
const MinAgentVersion = "v0.1.0"

var minAgentVersion = spec.MustParseReleaseVersion(MinAgentVersion)

// checkAgentVersion refuses a numbered agent version below MinAgentVersion.
func checkAgentVersion(field, v string) error {
	rv, ok := spec.ParseReleaseVersion(v)
	if !ok {
		return nil
	}
	if rv.Compare(minAgentVersion) < 0 {
		return fmt.Errorf("%s: %q is older than %s, the oldest agent this coordinator accepts: upgrade the agent on this host", field, v, MinAgentVersion)
	}
	return nil
}
