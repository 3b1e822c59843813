package faults

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/testcluster"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

// bins are the Fleetwave binaries, built once for the package.
var bins *testfleet.Binaries

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Fprintln(os.Stderr, "faults: skipped in -short mode (real processes, minutes)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "fleetwave-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	bins, err = testfleet.Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	testcluster.RemoveBuilds()
	os.Exit(code)
}
