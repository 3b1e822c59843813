// Package agent is the wiring of fleetwave-agent, one per host: it keeps a
// stream to a coordinator, feeds assignments to one lifecycle.Machine per
// service, and carries out the machines' actions with the install, state,
// supervise and probe packages. It also feeds the machines the analysis
// verdicts on each release (package analysis, from the service's metrics):
// see analyse.go. One goroutine (the run loop) owns all machines and
// analysers; long actions, probes and scrapes run in goroutines that send
// their results back.
//
// Services outlive the agent: it leaves them running when it stops, and
// at start adopts what an earlier agent left running (recover.go);
// StopServices (fleetwave-agent stop-services) is what stops them.
//
// It must stay lean: it must not import etcd or anything under coordinator/
// (a test enforces this for the fleetwave-agent binary).
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/revocation"
	"github.com/fleetwave/fleetwave/internal/spec"
)

// DefaultMaxArtifactBytes caps an artifact when Config.MaxArtifactBytes is 0.
const DefaultMaxArtifactBytes int64 = 1 << 30

// Config is what fleetwave-agent is told on its command line.
type Config struct {
	// Coordinators are gRPC addresses (host:port) tried in turn.
	Coordinators []string
	// HostID is this host's stable id.
	HostID string
	// Labels are this host's labels (zone=a, role=web, port=8081).
	Labels map[string]string
	// DataDir holds releases, state, logs and PID files.
	DataDir string
	// MaxArtifactBytes caps a downloaded artifact (0 = 1 GiB).
	MaxArtifactBytes int64
	// AgentVersion is reported in Hello.
	AgentVersion string
	// Gossip configures memberlist membership (off when Gossip.Bind is
	// empty). The node name is the host id.
	Gossip gossip.Config
	// MetricsListen serves the agent's Prometheus metrics at /metrics
	// (host:port; empty = off).
	MetricsListen string
	// TrustedKeys are files with the public keys (PEM, from fleetwave keys
	// generate) release signatures are checked against. When any are given,
	// an assignment whose release is not signed by one of them, or whose
	// signed manifest does not match it or has expired, is refused.
	TrustedKeys []string
	// ArtifactRedirectHosts are the hosts a release's artifact URL may
	// redirect to besides its own: "host" (the scheme's default port),
	// "host:port" or "*.domain". Redirects elsewhere, from https to http,
	// or more than 5 are not followed (artifact.go).
	ArtifactRedirectHosts []string
	// TLSCA is the CA the coordinators' certificates chain to. TLSCert and
	// TLSKey are this host's certificate (identity agent/<host id>) and
	// key; without them the agent joins with the one-time token in
	// JoinTokenFile and keeps the certificate it gets in DataDir/tls,
	// renewing it before it expires.
	TLSCA, TLSCert, TLSKey string
	JoinTokenFile          string
	// Insecure talks plain text (tests and trials only; logged).
	Insecure bool
	// ServiceLogMaxBytes is the size at which a service's log
	// (DataDir/logs/<service>.log) is rotated (0 = DefaultServiceLogMaxBytes,
	// negative = never); ServiceLogKeep is how many rotated files are kept
	// (0 = DefaultServiceLogKeep, negative = none).
	ServiceLogMaxBytes int64
	ServiceLogKeep     int
	// RemovedLogRetention is how long the log of a service the host no
	// longer runs (removed, or unknown to this agent) is kept after its
	// last write (logs.go pruneRemovedLogs; 0 =
	// DefaultRemovedLogRetention, negative = for ever).
	RemovedLogRetention time.Duration
	// KeepReleases is how many unpacked releases of each service are kept
	// (the newest staged; 0 = DefaultKeepReleases); the current, last good
	// and target releases (and the one a watched release would revert to)
	// are kept besides.
	KeepReleases int
	// UpgradeDeadline is how long a new agent binary (fleetwave agent
	// upgrade) has to connect, be accepted and confirm before this agent
	// kills it and goes back to itself (0 = DefaultUpgradeDeadline; at most
	// MaxUpgradeDeadline). Handoff reads it.
	UpgradeDeadline time.Duration
	// Confirm, when set, is called once, when a coordinator first answers
	// the agent's hello (it was accepted): the new agent of an upgrade
	// confirms to the old one with it (cmd/fleetwave-agent). It also makes
	// the agent the new agent of a handover in progress (lifecycle.AgentStart).
	Confirm func()
	// HandedOver, when set, is closed once the old agent of the handover
	// this agent is the new agent of has recorded the upgrade done and
	// exited (WatchParent): the agent then reports the upgrade done.
	HandedOver <-chan struct{}
	// NotifySocket is systemd's notify socket of the agent's unit ("" =
	// none; NotifySocketFromEnv): after an upgrade the old agent tells
	// systemd the new agent's pid on it (MAINPID=). The new agent gets it
	// in its environment; services never do.
	NotifySocket string
	// Watchdog, when set, is systemd's watchdog of the agent's unit
	// (WatchdogFromEnv): READY=1 once the run loop runs, WATCHDOG=1 while it
	// turns. It outlives Run (main keeps it running across an upgrade's
	// handover).
	Watchdog *Watchdog
	// Executable is the installed agent executable an upgrade replaces
	// ("" = the running one; a new agent started by Handoff runs from its
	// release directory and is told it: ExecutableFromEnv).
	Executable string
	// CgroupParent is the cgroup, relative to the root of the hierarchy,
	// below which every service process gets its own cgroup
	// (<parent>/<service>/<instance>; "" = supervise.DefaultCgroupParent).
	// Cgroups are used when the agent runs as root on a usable hierarchy
	// (supervise.OpenCgroups); otherwise process groups alone, and specs
	// with resources.memory_max or tasks_max are refused.
	CgroupParent string
	// PeerListen is where the agent serves the artifacts it holds,
	// verified, to other agents of the fleet (host:port; "" = off; needs
	// TLS). PeerAdvertise is the address other agents reach it at, sent in
	// the Hello ("" = PeerListen, which then must name a host).
	PeerListen, PeerAdvertise string
	// PeerMaxUploads bounds the peer downloads served at once (0 =
	// DefaultPeerMaxUploads); PeerUploadRate the bytes per second they
	// send together (a token bucket; 0 = DefaultPeerUploadRate).
	PeerMaxUploads int
	PeerUploadRate int64
	// MaxRevocations bounds the revocations the agent holds (revoke.go;
	// 0 = revocation.DefaultMax, 10,000, the coordinators' default): new
	// ones past it are refused, none is evicted.
	MaxRevocations int
	// RevocationsSaveInterval is how often at most the revocations are
	// written to DataDir/revocations.pb (revoke.go; 0 =
	// DefaultRevocationsSaveInterval): a crash loses at most the last
	// interval's, which the coordinators send again.
	RevocationsSaveInterval time.Duration
}

// Limits of the peer listener (peer.go).
const (
	DefaultPeerMaxUploads       = 8
	MaxPeerMaxUploads           = 1024
	DefaultPeerUploadRate int64 = 100 << 20 // 100 MiB/s
	MinPeerUploadRate     int64 = 64 << 10  // 64 KiB/s
)

// Limits of Config.UpgradeDeadline.
const (
	DefaultUpgradeDeadline = time.Minute
	MinUpgradeDeadline     = time.Second
	MaxUpgradeDeadline     = time.Hour
)

// DefaultKeepReleases is Config.KeepReleases when it is 0.
const DefaultKeepReleases = 3

// Validate checks every field; the error names the bad one.
func (c Config) Validate() error {
	if len(c.Coordinators) == 0 {
		return errors.New("coordinators: at least one coordinator address is required")
	}
	for i, addr := range c.Coordinators {
		if err := checkAddr(addr); err != nil {
			return fmt.Errorf("coordinators[%d]: %w", i, err)
		}
	}
	if err := spec.CheckHostID("host_id", c.HostID); err != nil {
		return err
	}
	if err := spec.CheckLabels("labels", c.Labels); err != nil {
		return err
	}
	if len(c.Labels) > spec.MaxHostLabels {
		return fmt.Errorf("labels: %d labels, over %d (coordinators refuse more)", len(c.Labels), spec.MaxHostLabels)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		return errors.New("data_dir: required")
	}
	if c.MaxArtifactBytes < 0 {
		return fmt.Errorf("max_artifact_bytes: %d is negative", c.MaxArtifactBytes)
	}
	if d := c.UpgradeDeadline; d != 0 && (d < MinUpgradeDeadline || d > MaxUpgradeDeadline) {
		return fmt.Errorf("upgrade_deadline: %s is not within %s and %s", d, MinUpgradeDeadline, MaxUpgradeDeadline)
	}
	if c.MaxRevocations < 0 || c.MaxRevocations > MaxMaxRevocations {
		return fmt.Errorf("max_revocations: %d is not within 1 and %d (0 for the default %d)", c.MaxRevocations, MaxMaxRevocations, revocation.DefaultMax)
	}
	if d := c.RevocationsSaveInterval; d != 0 && (d < MinRevocationsSaveInterval || d > MaxRevocationsSaveInterval) {
		return fmt.Errorf("revocations_save_interval: %s is not within %s and %s", d, MinRevocationsSaveInterval, MaxRevocationsSaveInterval)
	}
	if c.KeepReleases < 0 {
		return fmt.Errorf("keep_releases: %d is negative (want 1 or more; 0 for the default %d)", c.KeepReleases, DefaultKeepReleases)
	}
	switch {
	case c.Insecure && (c.TLSCA != "" || c.TLSCert != "" || c.TLSKey != "" || c.JoinTokenFile != ""):
		return errors.New("insecure: cannot be combined with tls_ca, tls_cert, tls_key or join_token_file")
	case !c.Insecure && c.TLSCA == "":
		return errors.New("tls_ca: required (or insecure for plain text)")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("tls_cert, tls_key: give both or neither")
	case !c.Insecure && c.TLSCert == "" && c.JoinTokenFile == "":
		return errors.New("tls_cert: give a host certificate (tls_cert, tls_key) or a join token (join_token_file)")
	}
	for i, p := range c.TrustedKeys {
		if strings.TrimSpace(p) == "" {
			return fmt.Errorf("trusted_keys[%d]: empty path", i)
		}
	}
	for i, h := range c.ArtifactRedirectHosts {
		if err := checkRedirectHost(h); err != nil {
			return fmt.Errorf("artifact_redirect_hosts[%d]: %w", i, err)
		}
	}
	if c.CgroupParent != "" {
		if err := supervise.CheckCgroupParent(c.CgroupParent); err != nil {
			return fmt.Errorf("cgroup_parent: %w", err)
		}
	}
	if _, _, err := net.SplitHostPort(c.MetricsListen); c.MetricsListen != "" && err != nil {
		return fmt.Errorf("metrics_listen: %q: want host:port: %v", c.MetricsListen, err)
	}
	return c.validatePeer()
}

// validatePeer checks the peer listener's fields.
func (c Config) validatePeer() error {
	if c.PeerMaxUploads < 0 || c.PeerMaxUploads > MaxPeerMaxUploads {
		return fmt.Errorf("peer_max_uploads: %d is not within 1 and %d (0 for the default %d)", c.PeerMaxUploads, MaxPeerMaxUploads, DefaultPeerMaxUploads)
	}
	if c.PeerUploadRate < 0 || (c.PeerUploadRate > 0 && c.PeerUploadRate < MinPeerUploadRate) {
		return fmt.Errorf("peer_upload_rate: %d bytes/s is below %d (0 for the default %d)", c.PeerUploadRate, MinPeerUploadRate, DefaultPeerUploadRate)
	}
	if c.PeerListen == "" {
		if c.PeerAdvertise != "" {
			return fmt.Errorf("peer_advertise: %q without peer_listen", c.PeerAdvertise)
		}
		return nil
	}
	if c.Insecure {
		return errors.New("peer_listen: agents serve artifacts to each other over mutual TLS only, not with insecure")
	}
	host, _, err := net.SplitHostPort(c.PeerListen)
	if err != nil {
		return fmt.Errorf("peer_listen: %q: want host:port: %v", c.PeerListen, err)
	}
	if c.PeerAdvertise == "" {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return fmt.Errorf("peer_advertise: required when peer_listen %q names no host", c.PeerListen)
		}
		if len(c.PeerListen) > spec.MaxPeerAddressLen {
			return fmt.Errorf("peer_listen: %d bytes, over %d (advertised as it is: coordinators refuse longer)", len(c.PeerListen), spec.MaxPeerAddressLen)
		}
		return nil
	}
	if len(c.PeerAdvertise) > spec.MaxPeerAddressLen {
		return fmt.Errorf("peer_advertise: %d bytes, over %d (coordinators refuse longer)", len(c.PeerAdvertise), spec.MaxPeerAddressLen)
	}
	return spec.CheckHostPort("peer_advertise", c.PeerAdvertise)
}

// checkAddr accepts host:port or a gRPC target with a scheme (dns:///h:p,
// unix:///path, passthrough:///h:p).
func checkAddr(addr string) error {
	if addr == "" {
		return errors.New("empty address")
	}
	if strings.ContainsAny(addr, " \t\r\n") {
		return fmt.Errorf("address %q contains whitespace", addr)
	}
	if strings.Contains(addr, ":///") || strings.HasPrefix(addr, "unix:") {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port: %v", addr, err)
	}
	if host == "" || port == "" {
		return fmt.Errorf("address %q: want host:port", addr)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxArtifactBytes == 0 {
		c.MaxArtifactBytes = DefaultMaxArtifactBytes
	}
	if c.AgentVersion == "" {
		c.AgentVersion = "dev"
	}
	if c.UpgradeDeadline == 0 {
		c.UpgradeDeadline = DefaultUpgradeDeadline
	}
	if c.ServiceLogMaxBytes == 0 {
		c.ServiceLogMaxBytes = DefaultServiceLogMaxBytes
	}
	if c.ServiceLogKeep == 0 {
		c.ServiceLogKeep = DefaultServiceLogKeep
	}
	if c.RemovedLogRetention == 0 {
		c.RemovedLogRetention = DefaultRemovedLogRetention
	}
	if c.KeepReleases == 0 {
		c.KeepReleases = DefaultKeepReleases
	}
	if c.PeerMaxUploads == 0 {
		c.PeerMaxUploads = DefaultPeerMaxUploads
	}
	if c.PeerUploadRate == 0 {
		c.PeerUploadRate = DefaultPeerUploadRate
	}
	return c
}

// options are knobs tests turn; production uses defaultOptions.
type options struct {
	tick          time.Duration // lifecycle ticks
	backoffBase   time.Duration // reconnect backoff
	backoffMax    time.Duration
	keepalive     time.Duration
	supMinBackoff time.Duration // supervisor restart backoff
	supMaxBackoff time.Duration
	fetchAttempts int
	fetchTimeout  time.Duration
	fetchIdle     time.Duration // a download that receives nothing for this long fails
	// A peer source that sends less than peerMinRate bytes per second over
	// a window of peerMinRateWindow is left for the next source.
	peerMinRate       int64
	peerMinRateWindow time.Duration
	// The peer listener: connections open at once, and from one address
	// (more are closed as they are accepted), the time a TLS handshake may
	// take, and how long a connection may sit without a call.
	peerMaxConns         int
	peerMaxConnsPerIP    int
	peerHandshakeTimeout time.Duration
	peerConnIdle         time.Duration
	// peerRequestWithin: a call whose request has not arrived by then is
	// ended (requestWithin).
	peerRequestWithin time.Duration
	// peerSendTimeout: a download whose fetcher takes no chunk for this
	// long is ended (peerLimits.sendTimeout).
	peerSendTimeout time.Duration
	// The metrics listener: connections open at once, and from one
	// address (more are closed as they are accepted), and how long an
	// idle one is kept.
	metricsMaxConns      int
	metricsMaxConnsPerIP int
	metricsIdle          time.Duration
	logRotate            time.Duration // how often service logs are checked for rotation
	seed                 uint64        // 0 = from the clock
	// maxServices is how many services the host takes and a Hello reports
	// (spec.MaxServicesPerHost; tests lower it).
	maxServices int

	// Test hooks (nil in production).
	saveHook  func(*lifecycle.Snapshot) error // runs before every state save; an error fails the save
	pruneHook func(service string)            // runs in the background prune before it removes anything
	// stageHook runs in a background stage before it unpacks, with the
	// stage's context.
	stageHook func(ctx context.Context, service, version string)
	// aheadHook runs in a staging ahead of the wave before it unpacks,
	// with its context.
	aheadHook func(ctx context.Context, service, version string)
	// metricsReady receives the bound metrics address.
	metricsReady func(addr string)
}

func defaultOptions() options {
	return options{
		tick:                 LoopTick,
		backoffBase:          500 * time.Millisecond,
		backoffMax:           30 * time.Second,
		keepalive:            5 * time.Second,
		fetchAttempts:        3,
		fetchTimeout:         30 * time.Minute,
		fetchIdle:            60 * time.Second,
		peerMinRate:          256 << 10,
		peerMinRateWindow:    30 * time.Second,
		peerMaxConns:         256,
		peerMaxConnsPerIP:    8,
		peerHandshakeTimeout: 10 * time.Second,
		peerConnIdle:         2 * time.Minute,
		peerRequestWithin:    10 * time.Second,
		peerSendTimeout:      30 * time.Second,
		metricsMaxConns:      64,
		metricsMaxConnsPerIP: 8,
		metricsIdle:          time.Minute,
		logRotate:            30 * time.Second,
		maxServices:          spec.MaxServicesPerHost,
	}
}
