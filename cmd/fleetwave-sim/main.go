// Command fleetwave-sim runs thousands of simulated agents in one process
// against a coordinator (see package internal/testkit/sim), logging fleet
// statistics periodically until interrupted. With --control it is driven
// by another process instead (the spread harness runs one per
// coordinator): requests on stdin, replies on stdout (sim.ServeControl),
// until stdin ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetwave-sim:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetwave-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg sim.Config
	var labels, level string
	var every time.Duration
	var control bool
	fs.StringVar(&cfg.Coordinator, "coordinator", "127.0.0.1:7070", "coordinator gRPC address (host:port)")
	fs.IntVar(&cfg.Hosts, "hosts", 100, "number of simulated hosts")
	fs.StringVar(&cfg.HostPrefix, "host-prefix", sim.DefaultHostPrefix, "host id prefix (ids are prefix + index, e.g. sim-00042)")
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed of every random draw")
	fs.StringVar(&labels, "labels", "", "labels added to every host, k=v,k=v (zone=a/b/c is set round-robin unless given)")
	fs.DurationVar(&cfg.InstallDelay, "install-delay", 0, "time from assignment to switch")
	fs.DurationVar(&cfg.InstallJitter, "install-jitter", 0, "random extra install time, up to this")
	fs.DurationVar(&cfg.CheckDelay, "check-delay", 0, "time from switch to health verdict")
	fs.DurationVar(&cfg.CheckJitter, "check-jitter", 0, "random extra check time, up to this")
	fs.Float64Var(&cfg.FailRate, "fail-rate", 0, "probability an install of a new release fails (FAILED)")
	fs.Float64Var(&cfg.RevertRate, "revert-rate", 0, "probability a new release fails its checks (REVERTED)")
	fs.BoolVar(&cfg.QuietPhases, "quiet-phases", false, "report only outcomes, not FETCHING and CHECKING")
	fs.IntVar(&cfg.SourceAddrs, "source-addrs", 0, "spread connections over this many 127.1.x.y source addresses (0 = off)")
	fs.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", sim.DefaultConnectConcurrency, "connection attempts in flight at once")
	fs.DurationVar(&cfg.Keepalive, "keepalive", sim.DefaultKeepalive, "gRPC keepalive ping interval (negative: off)")
	fs.BoolVar(&cfg.Fetch, "fetch", false, "installs move the artifact's bytes through the bandwidth model (sources named by the coordinator, then its ArtifactService)")
	fs.BoolVar(&cfg.P2P, "p2p", false, "advertise a peer address and serve held artifacts to the other simulated hosts (needs --fetch)")
	fs.Int64Var(&cfg.DownloadRate, "download-rate", sim.DefaultHostRate, "each host's download rate, modeled bytes/s (1 Gbit/s)")
	fs.Int64Var(&cfg.UploadRate, "upload-rate", sim.DefaultHostRate, "each host's upload rate, modeled bytes/s (1 Gbit/s)")
	fs.Int64Var(&cfg.CoordinatorRate, "coordinator-rate", sim.DefaultCoordinatorRate, "the coordinator's NIC, shared by all it serves, modeled bytes/s (10 Gbit/s)")
	fs.IntVar(&cfg.PeerMaxUploads, "peer-max-uploads", sim.DefaultPeerMaxUploads, "peer downloads one host serves at once; one more is refused")
	fs.Int64Var(&cfg.ByteScale, "byte-scale", 1, "an artifact byte stands for this many modeled bytes; every rate is divided by it")
	fs.DurationVar(&every, "stats-interval", 10*time.Second, "how often to log statistics (not with --control)")
	fs.BoolVar(&control, "control", false, "be driven by the control protocol: requests on stdin, replies on stdout, until stdin ends (logs stay on stderr; no periodic statistics)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	var err error
	if cfg.Labels, err = sim.ParseLabels(labels); err != nil {
		return fmt.Errorf("%w: --%v", errUsage, err)
	}
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("%w: --log-level: %q: want debug, info, warn or error", errUsage, level)
	}
	if every <= 0 {
		return fmt.Errorf("%w: --stats-interval: %s: want > 0", errUsage, every)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	log := zerolog.New(stderr).Level(lvl).With().Timestamp().Str("component", "sim").Logger()
	if limit, err := sim.RaiseFileLimit(); err != nil {
		log.Warn().Err(err).Msg("could not raise the open file limit")
	} else if limit < uint64(cfg.Hosts)+100 {
		log.Warn().Uint64("limit", limit).Int("hosts", cfg.Hosts).Msg("open file limit below the fleet size: some hosts cannot connect")
	}

	fleet, err := sim.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer fleet.Close()
	if control {
		err := sim.ServeControl(ctx, fleet, stdin, stdout)
		logStats(log, fleet.Stats())
		return err
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			logStats(log, fleet.Stats())
			return nil
		case <-t.C:
			logStats(log, fleet.Stats())
			fleet.ResetLatency()
		}
	}
}

func logStats(log zerolog.Logger, s sim.Stats) {
	ev := log.Info().Int("hosts", s.Hosts).Int("connected", s.Connected).
		Uint64("hellos", s.Hellos).Uint64("reports", s.Reports).Uint64("responses", s.Responses).
		Uint64("assignments", s.Assignments).Uint64("installs", s.Installs).Uint64("failures", s.Failures).
		Uint64("reverts", s.Reverts).Uint64("disconnects", s.Disconnects).Int("latency_samples", s.Latency.Count).
		Uint64("fetches", s.Fetches).Int64("coordinator_bytes", s.CoordinatorBytes).Int64("peer_bytes", s.PeerBytes).
		Uint64("peer_refused", s.PeerRefused).Int64("max_uploads", s.MaxUploads)
	if s.Latency.Count > 0 {
		ev = ev.Dur("latency_p50", s.Latency.P50).Dur("latency_p99", s.Latency.P99).Dur("latency_max", s.Latency.Max)
	}
	if s.SocketLatency.Count > 0 {
		ev = ev.Dur("socket_latency_p50", s.SocketLatency.P50).Dur("socket_latency_p99", s.SocketLatency.P99).Dur("socket_latency_max", s.SocketLatency.Max)
	}
	ev.Msg("fleet stats")
}
