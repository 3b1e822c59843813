// Command fleetwave-coordinator runs Fleetwave's control plane. With no
// --etcd-endpoints it starts an embedded single-node etcd in --data-dir.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/coordinator"
	"github.com/fleetwave/fleetwave/coordinator/artifacts"
	"github.com/fleetwave/fleetwave/coordinator/dashboard"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/gossip"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetwave-coordinator:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// defaultHTTPListen turns the dashboard on at coordinator.DefaultHTTPListen
// in the embedded single-node setup (no --etcd-endpoints) when
// --http-listen was not given; given (even empty), the flag decides.
func defaultHTTPListen(fs *flag.FlagSet, cfg *coordinator.Config) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "http-listen" })
	if !set && len(cfg.EtcdEndpoints) == 0 {
		cfg.HTTPListen, cfg.HTTPListenOptional = coordinator.DefaultHTTPListen, true
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetwave-coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg coordinator.Config
	var endpoints, level string
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7070", "gRPC listen address for agents and operators")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the embedded etcd and the artifact store (required)")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated external etcd endpoints; empty starts an embedded etcd")
	fs.StringVar(&cfg.Name, "name", "", "this coordinator's name, unique in the cluster (default: the advertised address)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "address other coordinators reach this one at (default: the listen address; the hostname when listening on all interfaces)")
	fs.Int64Var(&cfg.MaxArtifactBytes, "max-artifact-bytes", 1<<30, "largest artifact accepted")
	fs.Int64Var(&cfg.ArtifactMinFreeBytes, "artifact-min-free-bytes", artifacts.DefaultMinFreeBytes, "free space artifact uploads leave on the data dir's filesystem (the embedded etcd's too): an upload that would go below it is refused")
	fs.IntVar(&cfg.ArtifactSources, "artifact-sources", rollout.DefaultSources, fmt.Sprintf("agents holding a rollout's artifact named in each assignment as peer-to-peer sources (negative = none; at most %d)", rollout.MaxSources))
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", 5*time.Second, "leader lease TTL")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (host:port; empty = off)")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "", "serve the web dashboard at https://ADDR/ (http:// with --insecure; host:port; empty = off; default "+coordinator.DefaultHTTPListen+" with the embedded etcd, off with --etcd-endpoints)")
	hd := dashboard.DefaultLimits
	fs.IntVar(&cfg.HTTPLimits.MaxSessions, "http-max-sessions", hd.MaxSessions, "dashboard logins alive at once; more are refused")
	fs.DurationVar(&cfg.HTTPLimits.SessionTTL, "http-session-ttl", hd.SessionTTL, "a dashboard login lasts this long")
	fs.IntVar(&cfg.HTTPLimits.MaxStreamsPerIdentity, "http-max-streams-per-identity", hd.MaxStreamsPerIdentity, "live dashboard pages (event streams) one identity holds open at once")
	fs.Int64Var(&cfg.HTTPLimits.MaxBodyBytes, "http-max-body-bytes", hd.MaxBodyBytes, "largest dashboard form accepted")
	fs.IntVar(&cfg.HTTPLimits.MaxConnections, "http-max-connections", hd.MaxConnections, "connections the dashboard holds at once; more are closed at once")
	fs.StringVar(&cfg.AlertmanagerTokenFile, "alertmanager-token-file", "", "serve an Alertmanager webhook receiver at "+coordinator.AlertmanagerPath+" on --http-listen, for rollout.abort_on_alerts; Alertmanager must send the bearer token this file holds (empty = off)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	gossipFlags := gossip.AddFlags(fs)
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "this coordinator's certificate (PEM; identity coordinator/NAME; from fleetwave tls init)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "its private key (PEM)")
	fs.StringVar(&cfg.TLSCA, "tls-ca", "", "the CA every agent, operator and coordinator certificate must chain to (PEM)")
	fs.StringVar(&cfg.TLSJoinCA, "tls-join-ca", "", "the join CA's certificate (join-ca.pem from fleetwave tls init), to sign certificates for agents that join with a token (optional; with --tls-join-ca-key)")
	fs.StringVar(&cfg.TLSJoinCAKey, "tls-join-ca-key", "", "the join CA's key (join-ca-key.pem): it can sign agent certificates only")
	fs.StringVar(&cfg.TLSCAKey, "tls-ca-key", "", "older PKI layouts without a join CA: the root CA's own key, to sign joins with (puts the key that signs every certificate on this coordinator; prefer --tls-join-ca)")
	fs.IntVar(&cfg.MaxRevocations, "max-revocations", coordinator.DefaultMaxRevocations, "certificate revocations stored at most (each is dropped when the certificates it covers have expired)")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "plain-text gRPC, every caller trusted as admin (tests and trials only)")
	fs.DurationVar(&cfg.AgentCertTTL, "agent-cert-ttl", 24*time.Hour, "lifetime of certificates issued to joining agents")
	fs.StringVar(&cfg.EtcdCert, "etcd-cert", "", "client certificate for an external etcd (PEM)")
	fs.StringVar(&cfg.EtcdKey, "etcd-key", "", "its key (PEM)")
	fs.StringVar(&cfg.EtcdCA, "etcd-ca", "", "CA of the external etcd's server certificates (PEM)")
	fs.DurationVar(&cfg.EtcdTimeout, "etcd-timeout", 30*time.Second, "how long to wait for etcd at start before failing")
	fs.IntVar(&cfg.KeepRolloutEvents, "keep-rollout-events", 100, "keep the recorded events of each service's newest N rollouts")
	fs.IntVar(&cfg.KeepRolloutHosts, "keep-rollout-hosts", 100, "keep the hosts' progress of each service's newest N rollouts; older ended ones keep per-wave summaries (host counts, the times the DORA figures use)")
	fs.DurationVar(&cfg.RolloutRetention, "rollout-retention", coordinator.DefaultRolloutRetention, "delete ended rollouts this long after they finished (at least 24h), but never a service's newest nor those rollback targets are read from; and release records this long after their creation once their artifacts were pruned (or are URLs) and no rollout names them (a tombstone of each is kept)")
	fs.IntVar(&cfg.KeepReleaseArtifacts, "keep-release-artifacts", coordinator.DefaultKeepReleaseArtifacts, "keep the artifacts of each service's newest N releases; older ones are pruned (the release records stay until --rollout-retention) once older than --release-artifact-min-age and nothing needs them (0 = never prune, never delete a release)")
	fs.DurationVar(&cfg.ReleaseArtifactMinAge, "release-artifact-min-age", coordinator.DefaultReleaseArtifactMinAge, "never prune the artifact of a release younger than this")
	fs.DurationVar(&cfg.ArtifactUploadGrace, "artifact-upload-grace", 24*time.Hour, "delete an uploaded artifact that no release names this long after it was written (at least 1h)")
	fs.DurationVar(&cfg.AuditRetention, "audit-retention", 90*24*time.Hour, "how long audit entries are kept")
	fs.Int64Var(&cfg.AuditMaxEntries, "audit-max-entries", 100_000, "how many audit entries are kept at most (the newest)")
	fs.DurationVar(&cfg.AuditFailureInterval, "audit-failure-interval", time.Minute, "failed and refused calls are audited once per caller, method and result in each such interval, then as one entry with their count")
	fs.IntVar(&cfg.EtcdMaxTxnOps, "etcd-max-txn-ops", 0, "operations etcd takes in one transaction (its --max-txn-ops; checked at start): sizes the batches of reports and events (default: 1024 with the embedded etcd, etcd's default 128 for an external one; at most 4096)")
	fs.Int64Var(&cfg.EtcdQuotaBytes, "etcd-quota-bytes", 0, "etcd's --quota-backend-bytes, reported beside its database size in the metrics (default: 4 GiB for the embedded etcd, etcd's default 2 GiB for an external one)")
	d := coordinator.DefaultLimits
	fs.IntVar(&cfg.Limits.MaxConnections, "max-connections", d.MaxConnections, "connections open at once on the gRPC listener; more are closed after the TLS handshake")
	fs.IntVar(&cfg.Limits.MaxConnectionsWithoutCert, "max-connections-without-cert", d.MaxConnectionsWithoutCert, "of those, connections whose peer presents no client certificate (joins, health checks, token users)")
	fs.DurationVar(&cfg.Limits.MaxConnectionIdle, "max-connection-idle", d.MaxConnectionIdle, "close a connection that has had no call for this long")
	fs.IntVar(&cfg.Limits.MaxStreamsPerConn, "max-streams-per-conn", d.MaxStreamsPerConn, "calls at once on one connection (HTTP/2 max concurrent streams)")
	fs.IntVar(&cfg.Limits.MaxCallsPerConnWithoutCert, "max-calls-per-conn-without-cert", d.MaxCallsPerConnWithoutCert, "calls in flight on one connection without a client certificate")
	fs.IntVar(&cfg.Limits.MaxStreamsPerCaller, "max-streams-per-caller", d.MaxStreamsPerCaller, "streaming calls (agent stream, watches, artifact transfers) open at once per authenticated caller")
	fs.DurationVar(&cfg.Limits.StreamSendTimeout, "stream-send-timeout", d.StreamSendTimeout, "a stream message not taken by its reader within this ends the reader's connection")
	fs.IntVar(&cfg.Limits.StreamSendBuffer, "stream-send-buffer", d.StreamSendBuffer, "events an event watch may fall behind before its reader's connection is ended")
	fs.DurationVar(&cfg.Limits.HandshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "a connection must finish its TLS handshake within this")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	cfg.Gossip = gossipFlags()
	if endpoints != "" {
		cfg.EtcdEndpoints = strings.Split(endpoints, ",")
	}
	defaultHTTPListen(fs, &cfg)
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("%w: --log-level: %q: want debug, info, warn or error", errUsage, level)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	log := zerolog.New(stderr).Level(lvl).With().Timestamp().Str("component", "coordinator").Logger()
	cfg.Version = version
	return coordinator.Run(ctx, cfg, log)
}
