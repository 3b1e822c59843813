// Command etcdnode runs ONE etcd cluster member with etcd's own server code
// (go.etcd.io/etcd/server/v3/embed), configured from flags, until SIGTERM or
// SIGINT. It exists for Fleetwave's fault tests (package testcluster starts
// several of these as separate processes so members can be killed, stopped
// and restarted one by one). It is a test helper, never shipped, and must not
// import any Fleetwave package.
//
// Exit status: 0 after a signal-initiated shutdown, 2 for bad flags, 1 when the
// server fails to start or stops on its own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdnode:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// options are the parsed and validated flags.
type options struct {
	name         string
	dataDir      string
	listenClient *url.URL
	listenPeer   *url.URL
	cluster      string
	state        string
	logFile      string
	logLevel     string
	heartbeat    time.Duration
	election     time.Duration
	noFsync      bool
	maxTxnOps    uint
	maxReqBytes  uint
	readyTimeout time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("etcdnode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	var client, peer string
	fs.StringVar(&o.name, "name", "", "member name, as in --initial-cluster (required)")
	fs.StringVar(&o.dataDir, "data-dir", "", "member data directory (required)")
	fs.StringVar(&client, "listen-client", "", "client URL to listen on and advertise, e.g. http://127.0.0.1:2379 (required)")
	fs.StringVar(&peer, "listen-peer", "", "peer URL to listen on and advertise, e.g. http://127.0.0.1:2380 (required)")
	fs.StringVar(&o.cluster, "initial-cluster", "", `all members: "n1=http://127.0.0.1:p1,n2=..." (required; must name this member with its --listen-peer URL)`)
	fs.StringVar(&o.state, "initial-cluster-state", "new", "new or existing")
	fs.StringVar(&o.logFile, "log-file", "", "etcd's log file (default: stderr)")
	fs.StringVar(&o.logLevel, "log-level", "info", "etcd log level: debug, info, warn or error")
	fs.DurationVar(&o.heartbeat, "heartbeat", 50*time.Millisecond, "raft heartbeat interval (whole milliseconds)")
	fs.DurationVar(&o.election, "election", 500*time.Millisecond, "raft election timeout (whole milliseconds, at least 5 heartbeats)")
	fs.BoolVar(&o.noFsync, "unsafe-no-fsync", false, "skip fsync (survives kill -9 of the process, not a machine crash)")
	fs.UintVar(&o.maxTxnOps, "max-txn-ops", embed.DefaultMaxTxnOps, "operations per transaction (etcd's --max-txn-ops), 1 to 1048576")
	fs.UintVar(&o.maxReqBytes, "max-request-bytes", embed.DefaultMaxRequestBytes, "bytes per request (etcd's --max-request-bytes), 1 to 67108864")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 0, "exit non-zero if the member has not joined the cluster within this time (0: wait for ever)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if err := o.validate(client, peer); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return o, nil
}

func (o *options) validate(client, peer string) error {
	if o.name == "" {
		return errors.New("--name is required")
	}
	if strings.ContainsAny(o.name, "=,") {
		return fmt.Errorf("--name %q must not contain '=' or ','", o.name)
	}
	if o.dataDir == "" {
		return errors.New("--data-dir is required")
	}
	var err error
	if o.listenClient, err = parseURL("--listen-client", client); err != nil {
		return err
	}
	if o.listenPeer, err = parseURL("--listen-peer", peer); err != nil {
		return err
	}
	if o.cluster == "" {
		return errors.New("--initial-cluster is required")
	}
	found := false
	seen := map[string]bool{}
	for _, ent := range strings.Split(o.cluster, ",") {
		name, raw, ok := strings.Cut(strings.TrimSpace(ent), "=")
		if !ok || name == "" {
			return fmt.Errorf("--initial-cluster entry %q: want name=URL", ent)
		}
		if seen[name] {
			return fmt.Errorf("--initial-cluster names member %q twice", name)
		}
		seen[name] = true
		u, err := parseURL("--initial-cluster member "+name, raw)
		if err != nil {
			return err
		}
		if name == o.name {
			found = true
			if u.String() != o.listenPeer.String() {
				return fmt.Errorf("--initial-cluster gives %s=%s but --listen-peer is %s", name, u, o.listenPeer)
			}
		}
	}
	if !found {
		return fmt.Errorf("--initial-cluster does not name this member (--name %q)", o.name)
	}
	if o.state != embed.ClusterStateFlagNew && o.state != embed.ClusterStateFlagExisting {
		return fmt.Errorf("--initial-cluster-state %q: want new or existing", o.state)
	}
	switch o.logLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	if o.heartbeat < time.Millisecond || o.heartbeat%time.Millisecond != 0 {
		return fmt.Errorf("--heartbeat %s: want a whole number of milliseconds, at least 1ms", o.heartbeat)
	}
	if o.maxTxnOps < 1 || o.maxTxnOps > 1<<20 {
		return fmt.Errorf("--max-txn-ops %d: want 1 to 1048576", o.maxTxnOps)
	}
	if o.maxReqBytes < 1 || o.maxReqBytes > 64<<20 {
		return fmt.Errorf("--max-request-bytes %d: want 1 to 67108864", o.maxReqBytes)
	}
	if o.election%time.Millisecond != 0 || o.election < 5*o.heartbeat {
		return fmt.Errorf("--election %s: want whole milliseconds, at least 5 × --heartbeat (%s)", o.election, 5*o.heartbeat)
	}
	if o.election > 50*time.Second {
		return fmt.Errorf("--election %s: at most 50s", o.election)
	}
	if o.readyTimeout < 0 {
		return fmt.Errorf("--ready-timeout %s: must not be negative", o.readyTimeout)
	}
	return nil
}

// parseURL accepts http://host:port with a literal IP or a name.
func parseURL(flagName, raw string) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("%s is required", flagName)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", flagName, raw, err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%s %q: scheme must be http", flagName, raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("%s %q: want http://host:port only", flagName, raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" || port == "" {
		return nil, fmt.Errorf("%s %q: want http://host:port", flagName, raw)
	}
	u.Path = ""
	return u, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log := zerolog.New(stderr).With().Timestamp().Str("service", "etcdnode").Str("host", o.name).Logger()

	cfg := embed.NewConfig()
	cfg.Name = o.name
	cfg.Dir = o.dataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*o.listenClient}, []url.URL{*o.listenClient}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*o.listenPeer}, []url.URL{*o.listenPeer}
	cfg.InitialCluster = o.cluster
	cfg.InitialClusterToken = "fleetwave-testcluster"
	cfg.ClusterState = o.state
	cfg.TickMs = uint(o.heartbeat / time.Millisecond)
	cfg.ElectionMs = uint(o.election / time.Millisecond)
	cfg.UnsafeNoFsync = o.noFsync
	cfg.MaxTxnOps, cfg.MaxRequestBytes = o.maxTxnOps, o.maxReqBytes
	cfg.LogLevel = o.logLevel
	if o.logFile != "" {
		if err := os.MkdirAll(filepath.Dir(o.logFile), 0o755); err != nil {
			return fmt.Errorf("--log-file %s: %w", o.logFile, err)
		}
		cfg.LogOutputs = []string{o.logFile}
	} else {
		cfg.LogOutputs = []string{"stderr"}
	}
	cfg.MaxRequestBytes = 16 << 20
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "10000"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd member %s in %s: %w", o.name, o.dataDir, err)
	}
	defer e.Close()
	log.Info().Str("path", o.dataDir).Str("client", o.listenClient.String()).Str("peer", o.listenPeer.String()).
		Str("initial_cluster_state", o.state).Msg("etcd member started")

	var readyTimeout <-chan time.Time
	if o.readyTimeout > 0 {
		t := time.NewTimer(o.readyTimeout)
		defer t.Stop()
		readyTimeout = t.C
	}
	ready := e.Server.ReadyNotify()
	for {
		select {
		case <-ready:
			log.Info().Msg("etcd member ready")
			ready, readyTimeout = nil, nil
		case <-readyTimeout:
			return fmt.Errorf("etcd member %s: not ready after %s", o.name, o.readyTimeout)
		case err := <-e.Err():
			if err == nil {
				return fmt.Errorf("etcd member %s: server stopped", o.name)
			}
			return fmt.Errorf("etcd member %s: %w", o.name, err)
		case <-e.Server.StopNotify():
			return fmt.Errorf("etcd member %s: server stopped by itself", o.name)
		case <-ctx.Done():
			log.Info().Str("reason", "signal").Msg("etcd member stopping")
			return nil // the deferred Close stops the server gracefully
		}
	}
}
