// Command fleetwave-demoapp is the demo HTTP service Fleetwave deploys in
// its demo and end-to-end tests. All logic is in demo/demoapp; this main
// only wires signals (SIGTERM, SIGINT: graceful shutdown) and the exit code.
// Given a socket by socket activation (LISTEN_FDS) it serves on it instead
// of --listen, and it reports readiness to NOTIFY_SOCKET: see
// demo/demoapp.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetwave/fleetwave/demo/demoapp"
)

func main() {
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := demoapp.Run(ctx, os.Args[1:], os.Stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(os.Stderr, "fleetwave-demoapp: %v\n", err)
		return 1
	}
}
