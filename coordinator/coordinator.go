// Package coordinator wires Fleetwave's control plane: etcd (embedded or
// external), the mirror of the keyspace, leader election with the rollout
// loop, the agent stream hub, the operator API and the artifact store, all
// served over one gRPC listener with the standard health service and server
// reflection. Decisions are made by coordinator/rollout (pure); this package
// does the I/O around them. It must not import the agent.
package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/artifacts"
	"github.com/fleetwave/fleetwave/coordinator/dashboard"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/failgate"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Config is the coordinator's configuration.
type Config struct {
	// Listen is the gRPC address for agents and operators.
	Listen string
	// DataDir holds the embedded etcd data and the artifact store.
	DataDir string
	// EtcdEndpoints selects an external etcd cluster; empty starts an
	// embedded single-node etcd in DataDir.
	EtcdEndpoints []string
	// Name identifies this coordinator (default: the advertised address).
	Name string
	// Advertise is the address other coordinators, agents and operators
	// reach this one at (default: the listen address, with the hostname when
	// it listens on every interface).
	Advertise string
	// Version is the build version, shown by cluster status.
	Version string
	// TLSCert and TLSKey are this coordinator's certificate (identity
	// coordinator/<name>) and key; TLSCA the CA every client and peer
	// certificate must chain to. All three are required unless Insecure.
	TLSCert, TLSKey, TLSCA string
	// TLSJoinCA and TLSJoinCAKey, if set, are the join CA (an intermediate
	// under TLSCA that can sign agent certificates only, from tls init)
	// this coordinator signs agent certificates with for Join and Renew.
	TLSJoinCA, TLSJoinCAKey string
	// TLSCAKey, if set, is TLSCA's own key, used like the join CA's: the
	// layout of PKI directories made before join CAs. It puts the key
	// that signs every certificate on this coordinator's disk.
	TLSCAKey string
	// MaxRevocations is how many certificate revocations are stored at
	// most (default DefaultMaxRevocations).
	MaxRevocations int
	// Insecure serves plain text and trusts every caller as admin (logged
	// as a warning). Only for tests and trials.
	Insecure bool
	// AgentCertTTL is the lifetime of certificates issued to joining agents
	// (default 24h; agents renew at two thirds of it).
	AgentCertTTL time.Duration
	// EtcdCert, EtcdKey and EtcdCA configure TLS to an external etcd (client
	// certificate optional).
	EtcdCert, EtcdKey, EtcdCA string
	// EtcdTLS, if set, is the TLS configuration for EtcdEndpoints, in place
	// of the three files (for programs and tests that start the etcd
	// themselves, e.g. with store.StartEmbedded).
	EtcdTLS *tls.Config
	// KeepRolloutEvents is how many of a service's newest rollouts keep their
	// recorded events (default 100; the rollout records themselves, which
	// the DORA figures use, are kept). AuditRetention is how long audit
	// entries are kept (default 90 days).
	KeepRolloutEvents int
	AuditRetention    time.Duration
	// KeepRolloutHosts is how many of a service's newest rollouts keep
	// their hosts' progress (default 100): the leader compacts older ended
	// ones to per-wave summaries (rollout.Compact: host counts and the
	// times the DORA figures use). RolloutRetention is how long an ended
	// rollout's record is kept after it finished (default 400 days, more
	// than the 366 days of GetStats' daily window, stats.MaxDailySince; at
	// least 24h): older ones are deleted, but never a service's newest, nor
	// those rollback targets are read from (rollout.Retain). For both, 0
	// takes the default and a negative value is refused.
	KeepRolloutHosts int
	RolloutRetention time.Duration
	// KeepReleaseArtifacts is how many of a service's newest releases keep
	// their artifacts whatever else (the flag's default is
	// DefaultKeepReleaseArtifacts; 0 keeps every artifact: nothing is
	// pruned; negative is refused). Older releases' artifacts are pruned
	// once they are ReleaseArtifactMinAge old, unless something needs them
	// (rollout.RetainArtifacts): the leader marks the release
	// (artifact_pruned_at) and every coordinator deletes the file once
	// every release naming its sha256 is marked. ReleaseArtifactMinAge: 0
	// takes DefaultReleaseArtifactMinAge, negative is refused. A marked
	// release's record is deleted (a tombstone kept) once it is
	// RolloutRetention old and no stored rollout names it
	// (rollout.RetainReleases); never with KeepReleaseArtifacts 0.
	KeepReleaseArtifacts  int
	ReleaseArtifactMinAge time.Duration
	// ArtifactUploadGrace is how long an artifact file that no release
	// names (an upload whose release create never came) is kept after it
	// was last written (default 24h, at least 1h).
	ArtifactUploadGrace time.Duration
	// AuditMaxEntries is how many audit entries are kept at most, the
	// newest (default 100,000): whatever callers do, the audit log cannot
	// fill etcd.
	AuditMaxEntries int64
	// AuditFailureInterval: failed and refused calls are audited once per
	// caller, method and result in each such interval, then as one entry
	// with their count (default 1m).
	AuditFailureInterval time.Duration
	// auditPruneEvery is how often the leader prunes the audit log
	// (default 1m; tests shorten it).
	auditPruneEvery time.Duration
	// artifactPruneEvery is how often each coordinator deletes the
	// artifact files no release needs (default 1m; tests shorten it).
	artifactPruneEvery time.Duration
	// progressWriteEvery is how often at most the leader writes a step
	// that records only progress (default progressWriteEvery, 500 ms;
	// tests lengthen it).
	progressWriteEvery time.Duration
	// pruneClock, when set, gives the time the leader prunes at (tests
	// move it forward instead of waiting for wall-clock expiries).
	pruneClock func() time.Time
	// EtcdQuotaBytes is the etcd backend quota reported next to the
	// database size in the metrics (default: the embedded etcd's 4 GiB, or
	// etcd's default 2 GiB for an external etcd; set it to your etcd's
	// --quota-backend-bytes).
	EtcdQuotaBytes int64
	// EtcdMaxTxnOps is how many operations etcd takes in one transaction
	// (its --max-txn-ops): the batches of reports and of a step's events
	// are sized by it (default: store.EmbeddedMaxTxnOps with the embedded
	// etcd, etcd's default 128 for an external one). Checked against etcd
	// at start.
	EtcdMaxTxnOps int
	// EtcdTimeout bounds how long the coordinator waits for etcd at start
	// (default 30s): it fails with a clear error rather than hang.
	EtcdTimeout time.Duration
	// Gossip configures memberlist membership (off when Gossip.Bind is
	// empty). Name, Role and Meta are set by the coordinator.
	Gossip gossip.Config
	// MaxArtifactBytes caps uploads (default 1 GiB).
	MaxArtifactBytes int64
	// ArtifactMinFreeBytes is the free space artifact uploads (and copies
	// from other coordinators) leave on the data dir's filesystem, which
	// the embedded etcd shares (0 = artifacts.DefaultMinFreeBytes).
	ArtifactMinFreeBytes int64
	// ArtifactSources is how many agents that hold a rollout's artifact are
	// named in each assignment of its target as peer-to-peer sources
	// (rollout.PeerSet; 0 = rollout.DefaultSources, negative = none, at most
	// rollout.MaxSources).
	ArtifactSources int
	// LeaseTTL is the leader session's TTL (default 5s): how long a dead
	// leader blocks a new one.
	LeaseTTL time.Duration
	// Ready, if set, receives the bound listen address once serving.
	Ready func(addr string)
	// MetricsListen serves Prometheus metrics at /metrics (empty = off).
	MetricsListen string
	// MetricsReady, if set, receives the bound metrics address.
	MetricsReady func(addr string)
	// HTTPListen serves the web dashboard (empty = off): HTTPS with
	// TLSCert, or plain HTTP when Insecure.
	HTTPListen string
	// HTTPListenOptional: HTTPListen is a default, not asked for; when
	// its address is taken the coordinator runs without the dashboard
	// (and logs why) instead of failing.
	HTTPListenOptional bool
	// HTTPLimits bound the dashboard's sessions, live pages and request
	// bodies (zero fields take dashboard.DefaultLimits).
	HTTPLimits dashboard.Limits
	// HTTPReady, if set, receives the dashboard's URL once it listens.
	HTTPReady func(url string)
	// AlertmanagerTokenFile turns on the Alertmanager receiver
	// (alertmanager.go) on the dashboard's listener: a file holding the
	// bearer token Alertmanager must send (empty = off).
	AlertmanagerTokenFile string
	// Limits cap connections and streams on the gRPC listener (limits.go;
	// zero fields take DefaultLimits).
	Limits Limits
	// started, if set, is given the coordinator before it serves (tests).
	started func(*Coordinator)
}

// DefaultRolloutRetention is how long ended rollouts are kept by default
// (Config.RolloutRetention): more than the 366 days of GetStats' daily
// window (stats.MaxDailySince).
const DefaultRolloutRetention = 400 * 24 * time.Hour

// DefaultKeepReleaseArtifacts is --keep-release-artifacts' default: the
// newest releases of each service that keep their artifacts.
const DefaultKeepReleaseArtifacts = 10

// DefaultReleaseArtifactMinAge is how old a release must be at least
// before its artifact is pruned (Config.ReleaseArtifactMinAge).
const DefaultReleaseArtifactMinAge = 7 * 24 * time.Hour

// Validate checks the config; errors name the field.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("listen: must be set (e.g. 127.0.0.1:7070)"))
	} else if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen: %q: %w", c.Listen, err))
	}
	if strings.Contains(c.Name, "/") {
		errs = append(errs, fmt.Errorf("name: %q must not contain '/'", c.Name))
	}
	if c.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
			errs = append(errs, fmt.Errorf("advertise: %q: %w", c.Advertise, err))
		}
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: must be set"))
	}
	for _, e := range c.EtcdEndpoints {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") && strings.Contains(e, "://") {
			errs = append(errs, fmt.Errorf("etcd-endpoints: %q: want host:port or http(s)://host:port", e))
		}
	}
	if !c.Insecure && (c.TLSCert == "" || c.TLSKey == "" || c.TLSCA == "") {
		errs = append(errs, errors.New("tls-cert, tls-key, tls-ca: all required (or --insecure for plain text)"))
	}
	if c.Insecure && (c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "" || c.TLSCAKey != "" || c.TLSJoinCA != "" || c.TLSJoinCAKey != "") {
		errs = append(errs, errors.New("insecure: cannot be combined with tls-cert, tls-key, tls-ca, tls-ca-key, tls-join-ca or tls-join-ca-key"))
	}
	if (c.TLSJoinCA == "") != (c.TLSJoinCAKey == "") {
		errs = append(errs, errors.New("tls-join-ca, tls-join-ca-key: give both or neither"))
	}
	if c.TLSJoinCA != "" && c.TLSCAKey != "" {
		errs = append(errs, errors.New("tls-ca-key: not with tls-join-ca: joins are signed with the join CA; keep the root key offline"))
	}
	if c.MaxRevocations < 0 {
		errs = append(errs, fmt.Errorf("max-revocations: %d is negative", c.MaxRevocations))
	}
	if c.KeepRolloutEvents < 0 {
		errs = append(errs, fmt.Errorf("keep-rollout-events: %d is negative", c.KeepRolloutEvents))
	}
	if c.KeepRolloutHosts < 0 {
		errs = append(errs, fmt.Errorf("keep-rollout-hosts: %d is negative", c.KeepRolloutHosts))
	}
	if c.RolloutRetention < 0 || (c.RolloutRetention > 0 && c.RolloutRetention < 24*time.Hour) {
		errs = append(errs, fmt.Errorf("rollout-retention: %s: want at least 24h", c.RolloutRetention))
	}
	if c.KeepReleaseArtifacts < 0 {
		errs = append(errs, fmt.Errorf("keep-release-artifacts: %d is negative (0 keeps every artifact)", c.KeepReleaseArtifacts))
	}
	if c.ReleaseArtifactMinAge < 0 {
		errs = append(errs, fmt.Errorf("release-artifact-min-age: %s is negative", c.ReleaseArtifactMinAge))
	}
	if c.ArtifactUploadGrace < 0 || (c.ArtifactUploadGrace > 0 && c.ArtifactUploadGrace < time.Hour) {
		errs = append(errs, fmt.Errorf("artifact-upload-grace: %s: want at least 1h", c.ArtifactUploadGrace))
	}
	if c.AuditMaxEntries < 0 || (c.AuditMaxEntries > 0 && c.AuditMaxEntries < 100) {
		errs = append(errs, fmt.Errorf("audit-max-entries: %d: want at least 100", c.AuditMaxEntries))
	}
	if c.AuditFailureInterval < 0 || (c.AuditFailureInterval > 0 && c.AuditFailureInterval < 100*time.Millisecond) {
		errs = append(errs, fmt.Errorf("audit-failure-interval: %s: want at least 100ms", c.AuditFailureInterval))
	}
	if c.EtcdQuotaBytes < 0 {
		errs = append(errs, fmt.Errorf("etcd-quota-bytes: %d is negative", c.EtcdQuotaBytes))
	}
	if c.EtcdMaxTxnOps != 0 && (c.EtcdMaxTxnOps < store.DefaultMaxTxnOps || c.EtcdMaxTxnOps > store.MaxMaxTxnOps) {
		errs = append(errs, fmt.Errorf("etcd-max-txn-ops: %d: want %d to %d (etcd's --max-txn-ops)", c.EtcdMaxTxnOps, store.DefaultMaxTxnOps, store.MaxMaxTxnOps))
	}
	if c.AuditRetention < 0 || (c.AuditRetention > 0 && c.AuditRetention < time.Hour) {
		errs = append(errs, fmt.Errorf("audit-retention: %s: want at least 1h", c.AuditRetention))
	}
	if c.EtcdTimeout < 0 {
		errs = append(errs, fmt.Errorf("etcd-timeout: %s is negative", c.EtcdTimeout))
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		errs = append(errs, errors.New("etcd-cert, etcd-key: give both or neither"))
	}
	if c.AgentCertTTL < 0 || (c.AgentCertTTL > 0 && c.AgentCertTTL < 10*time.Second) {
		errs = append(errs, fmt.Errorf("agent-cert-ttl: %s: want at least 10s", c.AgentCertTTL))
	}
	if c.ArtifactMinFreeBytes < 0 {
		errs = append(errs, fmt.Errorf("artifact-min-free-bytes: %d is negative", c.ArtifactMinFreeBytes))
	}
	if c.MaxArtifactBytes < 0 {
		errs = append(errs, fmt.Errorf("max-artifact-bytes: %d is negative", c.MaxArtifactBytes))
	}
	if c.ArtifactSources > rollout.MaxSources {
		errs = append(errs, fmt.Errorf("artifact-sources: %d is over %d", c.ArtifactSources, rollout.MaxSources))
	}
	if c.LeaseTTL < 0 || (c.LeaseTTL > 0 && c.LeaseTTL < time.Second) {
		errs = append(errs, fmt.Errorf("lease-ttl: %s: want at least 1s", c.LeaseTTL))
	}
	if _, _, err := net.SplitHostPort(c.HTTPListen); c.HTTPListen != "" && err != nil {
		errs = append(errs, fmt.Errorf("http-listen: %q: %w", c.HTTPListen, err))
	}
	if err := c.HTTPLimits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.AlertmanagerTokenFile != "" && c.HTTPListen == "" {
		errs = append(errs, fmt.Errorf("alertmanager-token-file: %q: the receiver is served on http-listen, which is off", c.AlertmanagerTokenFile))
	}
	// A session's live pages share its gRPC connection, whose calls in
	// flight are limited like any connection without a certificate.
	pages, calls := c.HTTPLimits.MaxStreamsPerIdentity, c.Limits.MaxCallsPerConnWithoutCert
	if pages == 0 {
		pages = dashboard.DefaultLimits.MaxStreamsPerIdentity
	}
	if calls == 0 {
		calls = DefaultLimits.MaxCallsPerConnWithoutCert
	}
	if need := pages*dashboard.CallsPerLivePage + dashboard.CallsPerPage; c.HTTPListen != "" && need > calls {
		errs = append(errs, fmt.Errorf("http-max-streams-per-identity: %d live pages take up to %d calls at once on a session's gRPC connection, more than max-calls-per-conn-without-cert %d (at most %d pages)",
			pages, need, calls, (calls-dashboard.CallsPerPage)/dashboard.CallsPerLivePage))
	}
	if _, _, err := net.SplitHostPort(c.MetricsListen); c.MetricsListen != "" && err != nil {
		errs = append(errs, fmt.Errorf("metrics-listen: %q: %w", c.MetricsListen, err))
	}
	errs = append(errs, c.Limits.validate()...)
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	c.Limits.defaults()
	if c.MaxRevocations == 0 {
		c.MaxRevocations = DefaultMaxRevocations
	}
	if c.MaxArtifactBytes == 0 {
		c.MaxArtifactBytes = 1 << 30
	}
	if c.ArtifactSources == 0 {
		c.ArtifactSources = rollout.DefaultSources
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.AgentCertTTL == 0 {
		c.AgentCertTTL = 24 * time.Hour
	}
	if c.EtcdTimeout == 0 {
		c.EtcdTimeout = 30 * time.Second
	}
	if c.KeepRolloutEvents == 0 {
		c.KeepRolloutEvents = 100
	}
	if c.KeepRolloutHosts == 0 {
		c.KeepRolloutHosts = 100
	}
	if c.RolloutRetention == 0 {
		c.RolloutRetention = DefaultRolloutRetention
	}
	if c.ReleaseArtifactMinAge == 0 {
		c.ReleaseArtifactMinAge = DefaultReleaseArtifactMinAge
	}
	if c.ArtifactUploadGrace == 0 {
		c.ArtifactUploadGrace = 24 * time.Hour
	}
	if c.artifactPruneEvery == 0 {
		c.artifactPruneEvery = time.Minute
	}
	if c.AuditRetention == 0 {
		c.AuditRetention = 90 * 24 * time.Hour
	}
	if c.AuditMaxEntries == 0 {
		c.AuditMaxEntries = 100_000
	}
	if c.AuditFailureInterval == 0 {
		c.AuditFailureInterval = time.Minute
	}
	if c.auditPruneEvery == 0 {
		c.auditPruneEvery = time.Minute
	}
	if c.progressWriteEvery == 0 {
		c.progressWriteEvery = progressWriteEvery
	}
	if c.EtcdQuotaBytes == 0 {
		c.EtcdQuotaBytes = 2 << 30
		if len(c.EtcdEndpoints) == 0 {
			c.EtcdQuotaBytes = store.EmbeddedQuotaBytes
		}
	}
	if c.EtcdMaxTxnOps == 0 {
		c.EtcdMaxTxnOps = store.DefaultMaxTxnOps
		if len(c.EtcdEndpoints) == 0 {
			c.EtcdMaxTxnOps = store.EmbeddedMaxTxnOps
		}
	}
}

// Coordinator is one running control-plane process.
type Coordinator struct {
	cfg    Config
	log    zerolog.Logger
	store  *store.Store
	mirror *store.Mirror
	arts   *artifacts.Store
	hub    *hub
	leader *leader
	alerts *alerter
	cli    *clientv3.Client
	fwd    *forwarder
	// flights are artifact fetches from peers in progress.
	flights flights
	// insecure: plain text, every caller trusted (Config.Insecure).
	insecure bool
	// failures coalesces audit entries of failed and refused calls (audit.go).
	failures *failureLog
	// limits enforces Config.Limits (limits.go).
	limits *limiter
	// windows are services' deploy windows, parsed (policy.go).
	windows windowCache
	// ca signs agent certificates: the join CA, or the root with
	// --tls-ca-key (nil: neither; Join and Renew are refused).
	ca *tlsutil.CA
	// caPEM are the CAs of --tls-ca, given to agents that join; caNotAfter
	// the latest of their expiries (no certificate outlives it) and
	// caSerials their serials (never revoked).
	caPEM      []byte
	caNotAfter time.Time
	caSerials  map[string]bool
	// streams are the streams open with a certificate (revoke.go).
	streams liveStreams
	// revokedLog rate-limits the log lines of refused handshakes.
	revokedLog *bucket
	// joinFailures limits Join calls with unknown tokens per address
	// (tokens.go).
	joinFailures *failgate.Gate
	// peerCreds are the transport credentials for calls to other
	// coordinators (forwarding, artifact copies).
	peerCreds credentials.TransportCredentials
	// gossip is the membership view (nil = gossip off).
	gossip gossipView
	start  time.Time

	// metrics are this process's Prometheus instruments (metrics.go).
	metrics *metrics

	sessMu sync.Mutex
	sess   *concurrency.Session
	// sessCh is closed and replaced whenever sess is replaced.
	sessCh chan struct{}
}

// Run starts the coordinator and serves until ctx ends.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.defaults()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data-dir %s: %w", cfg.DataDir, err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		emb, err := store.StartEmbedded(filepath.Join(cfg.DataDir, "etcd"), log)
		if err != nil {
			return err
		}
		defer emb.Close()
		endpoints, cfg.EtcdTLS = emb.Endpoints, emb.ClientTLS
		go func() {
			select {
			case err := <-emb.Err():
				log.Error().Err(err).Msg("embedded etcd failed")
				cancel(fmt.Errorf("embedded etcd: %w", err))
			case <-ctx.Done():
			}
		}()
	}
	etcdTLS := cfg.EtcdTLS
	if etcdTLS == nil && (cfg.EtcdCA != "" || cfg.EtcdCert != "") {
		var err error
		if etcdTLS, err = etcdTLSConfig(cfg); err != nil {
			return err
		}
	}
	cli, err := store.DialTLS(endpoints, etcdTLS)
	if err != nil {
		return err
	}
	defer cli.Close()
	pctx, pcancel := context.WithTimeout(ctx, cfg.EtcdTimeout)
	_, err = cli.MemberList(pctx)
	pcancel()
	if err != nil {
		return fmt.Errorf("etcd at %v unreachable after %s (TLS settings: --etcd-ca/--etcd-cert/--etcd-key): %w", endpoints, cfg.EtcdTimeout, err)
	}
	st := store.New(cli)
	st.SetLogger(log)
	if err := st.SetMaxTxnOps(cfg.EtcdMaxTxnOps); err != nil {
		return fmt.Errorf("etcd-max-txn-ops: %w", err)
	}
	if err := checkMaxTxnOps(ctx, st, cfg.EtcdMaxTxnOps, endpoints, etcdTLS, cfg.EtcdTimeout, log); err != nil {
		return fmt.Errorf("etcd-max-txn-ops %d: %w (lower the flag, or raise etcd's --max-txn-ops)", cfg.EtcdMaxTxnOps, err)
	}
	arts, err := artifacts.New(filepath.Join(cfg.DataDir, "artifacts"), cfg.MaxArtifactBytes, cfg.ArtifactMinFreeBytes, log)
	if err != nil {
		return err
	}
	c := &Coordinator{cfg: cfg, log: log, store: st, arts: arts, cli: cli, start: time.Now(), sessCh: make(chan struct{}), insecure: cfg.Insecure,
		failures: newFailureLog(cfg.AuditFailureInterval, maxFailureKinds), limits: newLimiter(cfg.Limits, log), revokedLog: &bucket{rate: 5, burst: 20},
		joinFailures: failgate.New(joinFailureBurst, joinFailureEvery, maxJoinAddresses)}
	var serverCreds credentials.TransportCredentials
	if cfg.Insecure {
		log.Warn().Msg("INSECURE: plain-text gRPC, every caller is trusted as admin; use --tls-cert/--tls-key/--tls-ca in production")
		serverCreds, c.peerCreds = insecure.NewCredentials(), insecure.NewCredentials()
	} else {
		sc, err := tlsutil.ServerConfig(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		pc, err := tlsutil.ClientConfig(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		// A revoked certificate cannot open a connection, as a client nor
		// as a peer coordinator's server.
		tlsutil.CheckRevocation(sc, c.checkChain)
		tlsutil.CheckRevocation(pc, c.checkChain)
		serverCreds, c.peerCreds = credentials.NewTLS(sc), credentials.NewTLS(pc)
		if c.caNotAfter, c.caSerials, c.caPEM, err = caBounds(cfg.TLSCA); err != nil {
			return fmt.Errorf("tls-ca: %w", err)
		}
		if c.ca, err = loadIssuer(cfg); err != nil {
			return err
		}
		switch {
		case cfg.TLSCAKey != "":
			log.Warn().Msg("the root CA key (--tls-ca-key) is on this coordinator: whoever reads it can make any certificate; sign joins with a join CA instead (--tls-join-ca, --tls-join-ca-key; README: TLS)")
		case c.ca == nil:
			log.Info().Msg("no join CA (--tls-join-ca, --tls-join-ca-key): this coordinator refuses Join and Renew")
		}
	}
	c.metrics = newMetrics()
	cli.KV = store.InstrumentKV(cli.KV, c.metrics.observeEtcd)
	sess, err := c.newSession(ctx)
	if err != nil {
		return fmt.Errorf("etcd session at %v: %w", endpoints, err)
	}
	c.sess = sess
	defer func() { c.session().Close() }()
	c.mirror = store.NewMirror(c.store, log)
	c.store.SetEventLayout(c.eventLayout)
	c.fwd = newForwarder(c)
	defer c.fwd.close()
	c.hub = newHub(c)
	c.leader = newLeader(c)
	c.alerts = newAlerter(ctx, log, c.store)
	defer c.alerts.wg.Wait()
	stopMetrics, err := c.startMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()

	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		wg.Wait()
	}()
	wg.Go(func() { _ = c.mirror.Run(ctx) })
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.mirror.WaitRev(wctx, 0)
	wcancel()
	if err != nil {
		return fmt.Errorf("load state from etcd %v: %w", endpoints, err)
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	c.cfg.Advertise = advertiseAddr(cfg.Advertise, lis.Addr().String())
	if c.cfg.Name == "" {
		c.cfg.Name = c.cfg.Advertise
	}
	cfg = c.cfg
	c.arts.SetFetcher(c.fetchFromPeers)
	c.arts.SetPruned(c.prunedArtifact)
	if cfg.Gossip.Enabled() {
		gc := cfg.Gossip
		gc.Name = gossip.CoordinatorName(gossipID(cfg.Name))
		gc.Role = gossip.RoleCoordinator
		gc.Meta = map[string]string{"grpc": cfg.Advertise}
		g, err := gossip.Start(gc, log.With().Str("component", "gossip").Logger())
		if err != nil {
			_ = lis.Close()
			return fmt.Errorf("gossip: %w", err)
		}
		defer g.Close()
		c.gossip = g
		wg.Go(func() { c.gossipWake(ctx, g) })
	}
	srv := grpc.NewServer(append(append(c.limits.serverOptions(), grpcwindow.ServerOptions()...),
		grpc.Creds(limitedCreds{TransportCredentials: serverCreds, l: c.limits, refused: c.handshakeRefused}),
		grpc.ChainUnaryInterceptor(c.unaryAuth, c.metrics.countForwarded(c.fwd.unary)),
		grpc.ChainStreamInterceptor(c.streamAuth),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.MaxSendMsgSize(64<<20),
		// Proto, but assignment sets go out as the bytes the hub encoded
		// them to once (codec.go).
		grpc.ForceServerCodecV2(newServerCodec()),
		// No read buffer of gRPC's own per connection (32 KiB by default,
		// one per agent): the frames are read from the connection directly
		// (with TLS, from its record buffer). Write buffers are shared
		// between connections already.
		grpc.ReadBufferSize(0),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 2 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 15 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: cfg.Limits.MaxConnectionIdle}),
	)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	v1.RegisterAgentServiceServer(srv, c.hub)
	v1.RegisterArtifactServiceServer(srv, arts)
	v1.RegisterOperatorServiceServer(srv, &operator{c: c})
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	if err := c.register(ctx); err != nil {
		return err
	}
	wg.Go(func() { c.hub.pushLoop(ctx) })
	wg.Go(func() { c.hub.reports.run(ctx) })
	wg.Go(func() { c.leader.run(ctx) })
	wg.Go(func() { c.sessionLoop(ctx) })
	wg.Go(func() { c.replicateLoop(ctx) })
	wg.Go(func() { c.artifactPruneLoop(ctx) })
	wg.Go(func() { c.auditFailuresLoop(ctx) })
	wg.Go(func() { c.revocationLoop(ctx) })

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	if cfg.HTTPListen != "" {
		waitDashboard, err := c.startDashboard(ctx, lis.Addr().String())
		if err != nil {
			srv.Stop()
			return err
		}
		defer waitDashboard()
	}
	log.Info().Str("addr", lis.Addr().String()).Str("name", cfg.Name).Strs("etcd", endpoints).Msg("coordinator serving")
	if cfg.started != nil {
		cfg.started(c)
	}
	if cfg.Ready != nil {
		cfg.Ready(lis.Addr().String())
	}
	var fatal error
	select {
	case <-ctx.Done():
		fatal = context.Cause(ctx)
		if errors.Is(fatal, context.Canceled) {
			fatal = nil // asked to stop
		}
	case err := <-errc:
		fatal = fmt.Errorf("serve %s: %w", cfg.Listen, err)
	}
	cancel(fatal)
	if fatal != nil {
		log.Error().Err(fatal).Msg("coordinator stopping")
	}
	hs.Shutdown()
	// End the agent streams first: they would hold GracefulStop open.
	c.hub.closeAll()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	log.Info().Msg("coordinator stopped")
	return fatal
}

// loadIssuer loads the CA that signs agent certificates: the join CA,
// which must chain to --tls-ca, or (older layouts) the root with its key.
func loadIssuer(cfg Config) (*tlsutil.CA, error) {
	switch {
	case cfg.TLSJoinCA != "":
		ca, err := tlsutil.LoadCA(cfg.TLSJoinCA, cfg.TLSJoinCAKey)
		if err != nil {
			return nil, fmt.Errorf("tls-join-ca: %w", err)
		}
		pool, err := tlsutil.LoadCertPool(cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("tls-ca: %w", err)
		}
		if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("tls-join-ca: %s does not chain to --tls-ca %s: %w", cfg.TLSJoinCA, cfg.TLSCA, err)
		}
		return ca, nil
	case cfg.TLSCAKey != "":
		ca, err := tlsutil.LoadCA(cfg.TLSCA, cfg.TLSCAKey)
		if err != nil {
			return nil, fmt.Errorf("tls-ca-key: %w", err)
		}
		return ca, nil
	}
	return nil, nil
}

// lease is this coordinator's session lease; connection records live on it.
func (c *Coordinator) lease() clientv3.LeaseID { return c.session().Lease() }

// etcdTLSConfig is the TLS configuration for an external etcd.
func etcdTLSConfig(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.EtcdCA != "" {
		pool, err := tlsutil.LoadCertPool(cfg.EtcdCA)
		if err != nil {
			return nil, fmt.Errorf("etcd-ca: %w", err)
		}
		tc.RootCAs = pool
	}
	if cfg.EtcdCert != "" {
		kp, err := tls.LoadX509KeyPair(cfg.EtcdCert, cfg.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("etcd-cert/etcd-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc, nil
}

// gossipID turns a coordinator name into a gossip node id (letters, digits,
// '.', '_' and '-'; other characters become '-').
func gossipID(name string) string {
	b := []byte(name)
	for i, ch := range b {
		ok := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-'
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) > 0 && (b[0] == '.' || b[0] == '_' || b[0] == '-') {
		b[0] = 'c'
	}
	return string(b)
}

// gossipWake has the leader look again when gossip membership changes, so
// a host gossip declares dead is marked unknown at once.
func (c *Coordinator) gossipWake(ctx context.Context, g *gossip.Gossip) {
	ch, unsub := g.Changes()
	defer unsub()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			c.leader.poke()
		}
	}
}

// gossipHint is the gossip state the rollout engine gets for a host: a
// verdict of "dead" or "left" reached before the host's current stream was
// recorded is stale (memberlist tells a healed node late that it was
// declared dead), and the live stream outranks it.
//
// connected and connSince are the host's stream as the mirror has it
// (store.Mirror.Observe).
func (c *Coordinator) gossipHint(host string, connected bool, connSince time.Time) string {
	if c.gossip == nil {
		return ""
	}
	st, since := c.gossip.StateSince(host)
	if (st == "dead" || st == "left") && connected && !since.After(connSince) {
		return ""
	}
	return st
}

// observation is what the rollout engine sees of host for service (nil
// report: none asked, service "").
func (c *Coordinator) observation(host, service string) rollout.Observation {
	conn, since, r := c.mirror.Observe(host, service)
	return rollout.Observation{Connected: conn, Report: r, Gossip: c.gossipHint(host, conn, since)}
}

// syncMirror waits until the mirror has everything committed before the
// call, so reads through it see the caller's earlier writes.
func (c *Coordinator) syncMirror(ctx context.Context) error {
	if err := c.mirror.Sync(ctx); err != nil {
		return status.Errorf(codes.Unavailable, "etcd: %v", err)
	}
	return nil
}

// liveLease waits for an etcd session that has not been lost and returns
// its lease: a connection record put on a lost lease could be revived
// briefly when etcd returns and then expire under a live stream.
func (c *Coordinator) liveLease(ctx context.Context) (clientv3.LeaseID, error) {
	for {
		c.sessMu.Lock()
		sess, changed := c.sess, c.sessCh
		c.sessMu.Unlock()
		select {
		case <-sess.Done():
		default:
			return sess.Lease(), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// gossipView is what the coordinator reads from gossip membership.
type gossipView interface {
	LocalAddr() string
	// State is "alive", "suspect", "dead", "left" or "" (never seen).
	State(name string) string
	// StateSince is State with the time this coordinator saw it begin.
	StateSince(name string) (string, time.Time)
}

// session returns the current etcd session.
func (c *Coordinator) session() *concurrency.Session {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	return c.sess
}

// sessionChanged returns a channel closed when the session is replaced.
func (c *Coordinator) sessionChanged() <-chan struct{} {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	return c.sessCh
}

// newSession takes a new lease and keeps it alive until ctx ends. The grant
// has a deadline of one lease TTL (at least 2 s): under a starved etcd a
// grant without one could wait for minutes while the coordinator, with no
// session, neither led nor served agents and said nothing (the caller logs
// each failed attempt and tries again).
func (c *Coordinator) newSession(ctx context.Context) (*concurrency.Session, error) {
	ttl := int(c.cfg.LeaseTTL.Seconds())
	gctx, cancel := context.WithTimeout(ctx, max(c.cfg.LeaseTTL, 2*time.Second))
	defer cancel()
	lease, err := c.cli.Grant(gctx, int64(ttl))
	if err != nil {
		return nil, fmt.Errorf("lease grant (ttl %ds): %w", ttl, err)
	}
	return concurrency.NewSession(c.cli, concurrency.WithTTL(ttl), concurrency.WithLease(lease.ID), concurrency.WithContext(ctx))
}

// sessionLoop replaces the etcd session when its lease is lost (the
// coordinator was paused or cut off from etcd longer than the TTL). Losing
// it ends leadership (every leader write is fenced on the election key,
// which lived on the lease) and the agents' connection records; the
// coordinator ends its agent streams so agents reconnect and register
// again, takes a new session, registers, and campaigns again.
func (c *Coordinator) sessionLoop(ctx context.Context) {
	for {
		sess := c.session()
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
		}
		c.log.Error().Int64("lease", int64(sess.Lease())).Msg("etcd session lost (lease expired): stepping down, ending agent streams, starting a new session")
		c.metrics.sessionLosses.Inc()
		c.hub.closeAll()
		for attempt := 0; ; attempt++ {
			ns, err := c.newSession(ctx)
			if err == nil {
				c.sessMu.Lock()
				c.sess = ns
				close(c.sessCh)
				c.sessCh = make(chan struct{})
				c.sessMu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return
			}
			d := min(time.Duration(attempt+1)*500*time.Millisecond, 5*time.Second)
			c.log.Warn().Err(err).Dur("retry_in", d).Msg("new etcd session failed")
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		for attempt := 1; ctx.Err() == nil; attempt++ {
			err := c.register(ctx)
			if err == nil {
				break
			}
			c.log.Warn().Err(err).Int("attempt", attempt).Msg("registering with the new etcd session failed: retrying in 1s")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		c.log.Info().Int64("lease", int64(c.lease())).Msg("new etcd session")
	}
}

// register records this coordinator in etcd on its session lease.
func (c *Coordinator) register(ctx context.Context) error {
	info := &v1.CoordinatorInfo{Name: c.cfg.Name, Address: c.cfg.Advertise, StartedAt: timestamppb.New(c.start), Version: c.cfg.Version, ReadsSplitRollouts: true, ReadsEventBatches: true, ReadsCompactedRollouts: true, PrunesArtifacts: true, HonorsReleaseTombstones: true}
	if c.gossip != nil {
		info.GossipAddress = c.gossip.LocalAddr()
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.store.PutCoordinator(rctx, info, c.lease())
}

// advertiseAddr is the address to publish: the configured one, else the
// bound one with the hostname in place of an unspecified IP.
func advertiseAddr(configured, bound string) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			return net.JoinHostPort(h, port)
		}
	}
	return bound
}

// checkMaxTxnOps checks st's --etcd-max-txn-ops (n) against etcd
// (store.CheckMaxTxnOps) on every endpoint, each alone: each member has
// its own --max-txn-ops and the client sends a transaction to any
// endpoint, so one probe through st's client proved only the member it
// reached. A member that refuses the transaction's size fails the check;
// one that cannot be reached (a member down: the cluster serves without
// it) is only logged, after a shorter wait, as long as another passed;
// if none did, st's own client is given the whole timeout.
func checkMaxTxnOps(ctx context.Context, st *store.Store, n int, endpoints []string, tc *tls.Config, timeout time.Duration, log zerolog.Logger) error {
	if len(endpoints) > 1 {
		errs := make([]error, len(endpoints))
		var wg sync.WaitGroup
		for i, ep := range endpoints {
			wg.Go(func() {
				cli, err := store.DialTLS([]string{ep}, tc)
				if err != nil {
					errs[i] = err
					return
				}
				defer cli.Close()
				one := store.New(cli)
				if err := one.SetMaxTxnOps(n); err != nil {
					errs[i] = err
					return
				}
				pctx, cancel := context.WithTimeout(ctx, min(timeout, 5*time.Second))
				defer cancel()
				errs[i] = one.CheckMaxTxnOps(pctx)
			})
		}
		wg.Wait()
		checked := 0
		for i, err := range errs {
			switch {
			case err == nil:
				checked++
			case errors.Is(err, rpctypes.ErrTooManyOps):
				return fmt.Errorf("etcd endpoint %s: %w", endpoints[i], err)
			default:
				log.Warn().Str("endpoint", endpoints[i]).Err(err).Msg("etcd endpoint not reached: its --max-txn-ops is not checked")
			}
		}
		if checked > 0 {
			return nil
		}
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return st.CheckMaxTxnOps(pctx)
}
