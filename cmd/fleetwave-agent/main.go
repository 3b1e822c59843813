// Command fleetwave-agent runs the Fleetwave agent on one host: it keeps a
// stream to a coordinator, installs the releases assigned to this host, runs
// and checks them, and reverts locally on failure. See package agent.
//
// Stopping the agent leaves its services running (the next agent adopts
// them); `fleetwave-agent stop-services --data-dir DIR` stops them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/fleetwave/fleetwave/agent"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/revocation"
	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/rs/zerolog"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors in the command line (exit status 2).
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "stop-services" {
		return runStopServices(ctx, args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "version" {
		if len(args) > 1 {
			fmt.Fprintf(stderr, "fleetwave-agent version: unexpected argument %q\n", args[1])
			return 2
		}
		// The version alone on a line: what this binary reports in its
		// Hello (scripts compare it).
		fmt.Fprintln(stdout, version)
		return 0
	}
	cfg, level, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "fleetwave-agent: %v\n", err)
		return 2
	}
	log := zerolog.New(stderr).Level(level).With().Timestamp().Logger()
	confirm, err := agent.ConfirmFromEnv()
	if err != nil {
		log.Error().Err(err).Msg("agent failed")
		return 1
	}
	if confirm != nil {
		// A new agent of an upgrade: it stops if the old one is gone
		// before it could confirm (agent.WatchParent).
		ctx, confirm, cfg.HandedOver = agent.WatchParent(ctx, confirm, cfg.DataDir, log)
	}
	cfg.NotifySocket = agent.NotifySocketFromEnv()
	wd, err := agent.WatchdogFromEnv(cfg.NotifySocket, confirm != nil, log)
	if err != nil {
		log.Error().Err(err).Msg("agent failed")
		return 1
	}
	if confirm != nil && wd != nil {
		confirmed := confirm
		confirm = func() { confirmed(); wd.Arm() } // it may speak for the unit from now on
	}
	cfg.Confirm, cfg.Watchdog = confirm, wd
	go wd.Run(ctx, agent.LoopTick)
	cfg.Executable = agent.ExecutableFromEnv()
	for {
		err := agent.Run(ctx, cfg, log)
		var up *agent.Upgrade
		if !errors.As(err, &up) {
			if err != nil {
				log.Error().Err(err).Msg("agent failed")
				return 1
			}
			return 0
		}
		if ctx.Err() != nil {
			// Told to stop as it was about to hand over: no new agent is
			// started; the next start finds the upgrade unfinished and
			// reports it failed.
			return 0
		}
		// Hand over to the new agent (agent/handoff.go); if it does not
		// take over, this agent runs again and reports why.
		if agent.Handoff(ctx, cfg, up, args, log) {
			return 0
		}
		if ctx.Err() != nil {
			return 0 // stopped during the handover: the next start reports it
		}
		cfg.Confirm, cfg.HandedOver = nil, nil // this agent is no longer anyone's new agent
	}
}

// runStopServices is `fleetwave-agent stop-services`: stop every service
// an agent left running in the data dir (agent.StopServices), each drained
// first (its release's before_stop, its shutdown_delay) unless --no-drain.
func runStopServices(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleetwave-agent stop-services", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: fleetwave-agent stop-services [--data-dir DIR] [--host-id ID] [--labels k=v,...] [--no-drain] [--log-level LEVEL]\n\n"+
			"Stops every service the agent left running in DIR and exits: each runs its release's before_stop hook\n"+
			"and waits its shutdown_delay (as in a deploy), then gets SIGTERM, and SIGKILL after its stop_grace.\n"+
			"A SIGTERM or SIGINT (Ctrl-C) abandons the hooks and delays and stops at once. Stop the agent first:\n"+
			"stopping the agent leaves its services running.\n\n")
		fs.PrintDefaults()
	}
	dataDir := fs.String("data-dir", "/var/lib/fleetwave-agent", "the agent's data directory")
	hostIdentity := hostFlags(fs)
	noDrain := fs.Bool("no-drain", false, "no before_stop hook and no shutdown_delay: SIGTERM at once (emergencies)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	cgroupParent := fs.String("cgroup-parent", supervise.DefaultCgroupParent, "the agent's --cgroup-parent: a service's whole cgroup is stopped")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "fleetwave-agent stop-services: %v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleetwave-agent stop-services: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	hostID, labels, err := hostIdentity()
	if err != nil {
		fmt.Fprintf(stderr, "fleetwave-agent stop-services: %v\n", err)
		return 2
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil || *logLevel == "" {
		fmt.Fprintf(stderr, "fleetwave-agent stop-services: invalid value %q for flag --log-level: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	log := zerolog.New(stderr).Level(level).With().Timestamp().Logger()
	cfg := agent.Config{DataDir: *dataDir, CgroupParent: *cgroupParent, HostID: hostID, Labels: labels}
	if err := agent.StopServices(ctx, cfg, !*noDrain, log); err != nil {
		log.Error().Err(err).Msg("stop services failed")
		return 1
	}
	return 0
}

// listFlag collects a flag given comma-separated, repeated, or both.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (agent.Config, zerolog.Level, error) {
	fs := flag.NewFlagSet("fleetwave-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var coordinators listFlag
	fs.Var(&coordinators, "coordinator", "coordinator gRPC address host:port (comma-separated or repeated)")
	hostIdentity := hostFlags(fs)
	dataDir := fs.String("data-dir", "/var/lib/fleetwave-agent", "directory for releases, state, logs")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (host:port; empty = off)")
	gossipFlags := gossip.AddFlags(fs)
	var trustedKeys listFlag
	fs.Var(&trustedKeys, "trusted-keys", "public key files (PEM, from fleetwave keys generate; comma-separated or repeated): refuse releases not signed by one of them")
	var redirectHosts listFlag
	fs.Var(&redirectHosts, "artifact-redirect-hosts", "hosts an artifact URL may redirect to besides its own: HOST, HOST:PORT or *.DOMAIN (comma-separated or repeated; default none)")
	tlsCA := fs.String("tls-ca", "", "CA the coordinators' certificates chain to (PEM)")
	tlsCert := fs.String("tls-cert", "", "this host's certificate (PEM; identity agent/HOST-ID; from fleetwave tls init)")
	tlsKey := fs.String("tls-key", "", "its key (PEM)")
	joinToken := fs.String("join-token-file", "", "file with a one-time join token (fleetwave token create NAME --role join): the agent gets and renews its own certificate, kept in DATA-DIR/tls")
	insecureFlag := fs.Bool("insecure", false, "plain-text connection to the coordinators (tests and trials only)")
	logMax := fs.Int64("service-log-max-bytes", agent.DefaultServiceLogMaxBytes, "rotate a service's log (DATA-DIR/logs/SERVICE.log) when it reaches this size (copy-truncate; -1 = never)")
	logKeep := fs.Int("service-log-keep", agent.DefaultServiceLogKeep, "rotated files kept per service log (SERVICE.log.1 is the newest)")
	removedLogs := fs.Duration("removed-log-retention", agent.DefaultRemovedLogRetention, "delete the log of a service this host no longer runs (removed, or unknown) this long after its last write (0 = keep for ever)")
	cgroupParent := fs.String("cgroup-parent", supervise.DefaultCgroupParent, "cgroup (relative to the hierarchy's root) below which each service process gets its own (as root, on cgroup v1 or v2)")
	keepReleases := fs.Int("keep-releases", agent.DefaultKeepReleases, "unpacked releases kept per service (the newest; the current and last good ones are always kept)")
	peerListen := fs.String("peer-listen", "", "serve the verified artifacts this host holds to other agents on HOST:PORT (mutual TLS; empty = off)")
	peerAdvertise := fs.String("peer-advertise", "", "the address other agents reach the peer listener at (default: --peer-listen, which then must name a host)")
	peerMaxUploads := fs.Int("peer-max-uploads", agent.DefaultPeerMaxUploads, fmt.Sprintf("peer downloads served at once; more are refused and fetch elsewhere (1 to %d)", agent.MaxPeerMaxUploads))
	peerUploadRate := fs.Int64("peer-upload-rate", agent.DefaultPeerUploadRate, fmt.Sprintf("bytes per second all peer downloads together send at most (a token bucket; at least %d)", agent.MinPeerUploadRate))
	maxRevocations := fs.Int("max-revocations", revocation.DefaultMax, fmt.Sprintf("certificate revocations this agent holds at most (received from the coordinators; new ones past it are refused, none is evicted; 1 to %d)", agent.MaxMaxRevocations))
	revSaveInterval := fs.Duration("revocations-save-interval", agent.DefaultRevocationsSaveInterval, fmt.Sprintf("write the revocations received (DATA-DIR/revocations.pb) at most once per this (enforced as they arrive; a crash loses at most this much, which the coordinators send again; %s to %s)", agent.MinRevocationsSaveInterval, agent.MaxRevocationsSaveInterval))
	upgradeDeadline := fs.Duration("upgrade-deadline", agent.DefaultUpgradeDeadline, fmt.Sprintf("a new agent binary (fleetwave agent upgrade) that does not connect within this is stopped and this agent runs again (%s to %s)", agent.MinUpgradeDeadline, agent.MaxUpgradeDeadline))
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return agent.Config{}, 0, err
		}
		return agent.Config{}, 0, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return agent.Config{}, 0, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if len(coordinators) == 0 {
		return agent.Config{}, 0, fmt.Errorf("%w: flag --coordinator is required", errUsage)
	}
	hostID, lm, err := hostIdentity()
	if err != nil {
		return agent.Config{}, 0, err
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil || *logLevel == "" {
		return agent.Config{}, 0, badFlag("log-level", *logLevel, "want debug, info, warn or error")
	}
	cfg := agent.Config{
		Coordinators:  coordinators,
		HostID:        hostID,
		Labels:        lm,
		DataDir:       *dataDir,
		AgentVersion:  version,
		Gossip:        gossipFlags(),
		TLSCA:         *tlsCA,
		TLSCert:       *tlsCert,
		TLSKey:        *tlsKey,
		JoinTokenFile: *joinToken,
		Insecure:      *insecureFlag,
	}
	cfg.MetricsListen = *metricsListen
	cfg.TrustedKeys = trustedKeys
	cfg.ArtifactRedirectHosts = redirectHosts
	if *logMax == 0 || *logMax < -1 {
		return agent.Config{}, 0, badFlag("service-log-max-bytes", strconv.FormatInt(*logMax, 10), "want a size in bytes, or -1 for never")
	}
	if *logKeep < 0 {
		return agent.Config{}, 0, badFlag("service-log-keep", strconv.Itoa(*logKeep), "want 0 or more")
	}
	if *keepReleases < 1 {
		return agent.Config{}, 0, badFlag("keep-releases", strconv.Itoa(*keepReleases), "want 1 or more")
	}
	cfg.KeepReleases = *keepReleases
	cfg.UpgradeDeadline = *upgradeDeadline
	if d := *upgradeDeadline; d < agent.MinUpgradeDeadline || d > agent.MaxUpgradeDeadline {
		return agent.Config{}, 0, badFlag("upgrade-deadline", d.String(), fmt.Sprintf("want %s to %s", agent.MinUpgradeDeadline, agent.MaxUpgradeDeadline))
	}
	cfg.CgroupParent = *cgroupParent
	if *peerMaxUploads < 1 || *peerMaxUploads > agent.MaxPeerMaxUploads {
		return agent.Config{}, 0, badFlag("peer-max-uploads", strconv.Itoa(*peerMaxUploads), fmt.Sprintf("want 1 to %d", agent.MaxPeerMaxUploads))
	}
	if *peerUploadRate < agent.MinPeerUploadRate {
		return agent.Config{}, 0, badFlag("peer-upload-rate", strconv.FormatInt(*peerUploadRate, 10), fmt.Sprintf("want at least %d bytes per second", agent.MinPeerUploadRate))
	}
	cfg.PeerListen, cfg.PeerAdvertise = *peerListen, *peerAdvertise
	cfg.PeerMaxUploads, cfg.PeerUploadRate = *peerMaxUploads, *peerUploadRate
	if *maxRevocations < 1 || *maxRevocations > agent.MaxMaxRevocations {
		return agent.Config{}, 0, badFlag("max-revocations", strconv.Itoa(*maxRevocations), fmt.Sprintf("want 1 to %d", agent.MaxMaxRevocations))
	}
	cfg.MaxRevocations = *maxRevocations
	if d := *revSaveInterval; d < agent.MinRevocationsSaveInterval || d > agent.MaxRevocationsSaveInterval {
		return agent.Config{}, 0, badFlag("revocations-save-interval", d.String(), fmt.Sprintf("want %s to %s", agent.MinRevocationsSaveInterval, agent.MaxRevocationsSaveInterval))
	}
	cfg.RevocationsSaveInterval = *revSaveInterval
	cfg.ServiceLogMaxBytes = *logMax
	cfg.ServiceLogKeep = *logKeep
	if *logKeep == 0 {
		cfg.ServiceLogKeep = -1 // none (0 in Config means the default)
	}
	switch d := *removedLogs; {
	case d < 0:
		return agent.Config{}, 0, badFlag("removed-log-retention", d.String(), "want a duration of 0 (keep for ever) or more")
	case d == 0:
		cfg.RemovedLogRetention = -1 // for ever (0 in Config means the default)
	default:
		cfg.RemovedLogRetention = d
	}
	if err := cfg.Validate(); err != nil {
		// Name the flag behind the field.
		msg := err.Error()
		for field, flagName := range map[string]string{"coordinators": "coordinator", "data_dir": "data-dir", "labels": "labels",
			"tls_ca": "tls-ca", "tls_cert": "tls-cert", "insecure": "insecure", "metrics_listen": "metrics-listen", "trusted_keys": "trusted-keys",
			"artifact_redirect_hosts": "artifact-redirect-hosts", "peer_listen": "peer-listen", "peer_advertise": "peer-advertise"} {
			if strings.HasPrefix(msg, field) {
				return agent.Config{}, 0, fmt.Errorf("%w: flag --%s: %v", errUsage, flagName, err)
			}
		}
		return agent.Config{}, 0, fmt.Errorf("%w: %v", errUsage, err)
	}
	if _, err := signing.LoadPublicKeys(cfg.TrustedKeys); err != nil {
		return agent.Config{}, 0, fmt.Errorf("%w: flag --trusted-keys: %v", errUsage, err)
	}
	return cfg, level, nil
}

// badFlag is the usage error of a flag's bad value: it names the flag, the
// value and what is wanted.
func badFlag(name, value, why string) error {
	return fmt.Errorf("%w: invalid value %q for flag --%s: %s", errUsage, value, name, why)
}

// hostFlags adds the host's identity flags to fs, --host-id (default: the
// host name) and --labels, which the agent and stop-services (for its
// hooks' ${host.*}) take alike. The function it returns checks and parses
// them once fs is parsed; its errors are usage errors naming the flag and
// its value (badFlag).
func hostFlags(fs *flag.FlagSet) func() (hostID string, labels map[string]string, err error) {
	hostname, _ := os.Hostname()
	id := fs.String("host-id", hostname, "this host's stable id")
	labels := fs.String("labels", "", "host labels k=v,k=v")
	return func() (string, map[string]string, error) {
		if err := spec.CheckHostID("host-id", *id); err != nil {
			return "", nil, badFlag("host-id", *id, "want [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
		}
		lm, err := parseLabels(*labels)
		if err != nil {
			return "", nil, badFlag("labels", *labels, err.Error())
		}
		return *id, lm, nil
	}
}

// parseLabels parses k=v,k=v.
func parseLabels(s string) (map[string]string, error) {
	m := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("want k=v,k=v, got %q", kv)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("label %q given twice", k)
		}
		m[k] = v
	}
	if err := spec.CheckLabels("labels", m); err != nil {
		return nil, err
	}
	return m, nil
}
