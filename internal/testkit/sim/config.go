package sim

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// Defaults applied by Start to zero fields.
const (
	DefaultHostPrefix         = "sim-"
	DefaultConnectConcurrency = 256
	DefaultReconnectBase      = 500 * time.Millisecond
	DefaultReconnectMax       = 30 * time.Second
	// DefaultKeepalive is the agent's keepalive ping interval (the least the
	// coordinator's enforcement policy permits): an idle simulated fleet
	// costs the coordinator what an idle real one does.
	DefaultKeepalive = 5 * time.Second
	// DefaultMaxLatencySamples bounds the delivery latencies kept.
	DefaultMaxLatencySamples = 1 << 20

	// DefaultHostRate is a simulated host's download and upload rate:
	// 1 Gbit/s, in modeled bytes per second.
	DefaultHostRate = 125_000_000
	// DefaultCoordinatorRate is the coordinator's NIC: 10 Gbit/s, in
	// modeled bytes per second, shared by everything it serves.
	DefaultCoordinatorRate = 1_250_000_000
	// DefaultPeerMaxUploads is how many peer downloads a simulated host
	// serves at once (the agent's --peer-max-uploads default).
	DefaultPeerMaxUploads = 8
	// MaxRate bounds every rate (modeled bytes per second: 8 Tbit/s).
	MaxRate = 1_000_000_000_000
	// MaxByteScale bounds Config.ByteScale.
	MaxByteScale = 1_000_000
	// MaxPeerMaxUploads bounds Config.PeerMaxUploads (as the agent's flag).
	MaxPeerMaxUploads = 1024
)

// Config describes a simulated fleet.
type Config struct {
	// Coordinator is the coordinator's gRPC address, host:port.
	Coordinator string
	// Hosts is the number of simulated hosts.
	Hosts int
	// HostPrefix starts every host id (default "sim-"); ids are the prefix
	// and the host's index in five digits or more: sim-00000, sim-00001...
	HostPrefix string
	// Seed fixes every random draw (per host: install and check delays,
	// failures, reconnect jitter).
	Seed int64
	// Labels are added to every host's labels (zone=a/b/c round-robin by
	// index); a "zone" here replaces the round-robin one.
	Labels map[string]string
	// AgentVersion is reported in Hello (default "sim").
	AgentVersion string

	// InstallDelay (+ up to InstallJitter) is the time from an assignment to
	// the switch to the new release (fetch, verify, stage, switch).
	InstallDelay, InstallJitter time.Duration
	// CheckDelay (+ up to CheckJitter) is the time from the switch to the
	// health verdict.
	CheckDelay, CheckJitter time.Duration
	// FailRate is the probability that an install fails before the switch
	// (reported FAILED; the previous release never stopped). RevertRate is
	// the probability that the health checks of an installed release fail
	// (reported REVERTED, back on last good). Both apply only to releases the
	// host never ran healthy, so going back to a known good release never
	// fails. FailRate can be changed while running (Fleet.SetFailRate).
	FailRate, RevertRate float64
	// QuietPhases reports only outcomes (HEALTHY, FAILED, REVERTED). By
	// default a host also reports FETCHING on an assignment and CHECKING
	// after the switch, as a real agent does at least.
	QuietPhases bool

	// SourceAddrs spreads the hosts' connections over this many loopback
	// source addresses (127.1.x.y, bound with a dialer's LocalAddr), for
	// fleets that would exhaust one address's ephemeral ports. 0 = the
	// system's choice.
	SourceAddrs int
	// ConnectConcurrency bounds connection attempts in flight (dial to the
	// coordinator's first answer) across the fleet (default 256).
	ConnectConcurrency int
	// ReconnectBase and ReconnectMax bound the jittered exponential backoff
	// between connection attempts (default 500ms, 30s).
	ReconnectBase, ReconnectMax time.Duration
	// Keepalive is the interval of gRPC keepalive pings on an idle
	// connection (default 5s, as the agent; negative disables).
	Keepalive time.Duration
	// MaxLatencySamples bounds the delivery latencies kept for Stats
	// (default 1Mi; later samples are counted but not kept).
	MaxLatencySamples int

	// The bandwidth model (transfer.go). Off unless Fetch.
	//
	// Fetch makes installs move bytes: a host assigned a release whose
	// artifact it does not hold fetches it (the assignment's sources
	// first, then the coordinator's ArtifactService) and checks its size
	// and sha256 before the install delay starts.
	Fetch bool
	// P2P advertises a peer address in every host's Hello and serves the
	// artifacts a host holds to the other simulated hosts the coordinator
	// sends to it (needs Fetch).
	P2P bool
	// DownloadRate and UploadRate are each host's token buckets, in
	// modeled bytes per second (default 125e6: 1 Gbit/s).
	DownloadRate, UploadRate int64
	// CoordinatorRate is one bucket shared by every byte the coordinator
	// serves, in modeled bytes per second (default 1.25e9: 10 Gbit/s).
	CoordinatorRate int64
	// PeerMaxUploads is how many peer downloads one host serves at once;
	// one more is refused and the asking host tries its next source
	// (default 8, as the agent's --peer-max-uploads).
	PeerMaxUploads int
	// ByteScale S (default 1): an artifact of B real bytes stands for
	// B*S modeled bytes and every rate is divided by S, so that a
	// transfer takes the modeled time while moving 1/S of the bytes.
	// Byte counts (Stats) are modeled bytes: real bytes times S.
	ByteScale int64
}

// Validate checks the config; errors name the field.
func (c *Config) Validate() error {
	var errs []error
	if c.Coordinator == "" {
		errs = append(errs, errors.New("coordinator: must be set (host:port)"))
	} else if _, _, err := net.SplitHostPort(c.Coordinator); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: %q: %w", c.Coordinator, err))
	}
	if c.Hosts < 0 || c.Hosts > 1_000_000 {
		errs = append(errs, fmt.Errorf("hosts: %d, want 0..1000000", c.Hosts))
	}
	if c.HostPrefix != "" {
		if err := spec.CheckHostID("host-prefix", c.HostPrefix+"00000"); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Labels != nil {
		if err := spec.CheckLabels("labels", c.Labels); err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.AgentVersion) > 128 {
		errs = append(errs, fmt.Errorf("agent-version: %d bytes, over 128", len(c.AgentVersion)))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"install-delay", c.InstallDelay}, {"install-jitter", c.InstallJitter},
		{"check-delay", c.CheckDelay}, {"check-jitter", c.CheckJitter},
		{"reconnect-base", c.ReconnectBase}, {"reconnect-max", c.ReconnectMax},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %s is negative", d.name, d.v))
		}
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"fail-rate", c.FailRate}, {"revert-rate", c.RevertRate}} {
		if !(r.v >= 0 && r.v <= 1) {
			errs = append(errs, fmt.Errorf("%s: %v, want 0..1", r.name, r.v))
		}
	}
	if c.SourceAddrs < 0 || c.SourceAddrs > 250*250 {
		errs = append(errs, fmt.Errorf("source-addrs: %d, want 0..62500", c.SourceAddrs))
	}
	if c.SourceAddrs > 0 {
		host, _, _ := net.SplitHostPort(c.Coordinator)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
			errs = append(errs, fmt.Errorf("source-addrs: needs an IPv4 loopback coordinator address, not %q", host))
		}
	}
	if c.ConnectConcurrency < 0 {
		errs = append(errs, fmt.Errorf("connect-concurrency: %d is negative", c.ConnectConcurrency))
	}
	if c.MaxLatencySamples < 0 {
		errs = append(errs, fmt.Errorf("max-latency-samples: %d is negative", c.MaxLatencySamples))
	}
	if c.P2P && !c.Fetch {
		errs = append(errs, errors.New("p2p: needs fetch (hosts serve only what they fetched)"))
	}
	for _, r := range []struct {
		name string
		v    int64
	}{{"download-rate", c.DownloadRate}, {"upload-rate", c.UploadRate}, {"coordinator-rate", c.CoordinatorRate}} {
		if r.v < 0 || r.v > MaxRate {
			errs = append(errs, fmt.Errorf("%s: %d bytes/s, want 0 (default) to %d", r.name, r.v, int64(MaxRate)))
		}
	}
	if c.PeerMaxUploads < 0 || c.PeerMaxUploads > MaxPeerMaxUploads {
		errs = append(errs, fmt.Errorf("peer-max-uploads: %d, want 0 (default) to %d", c.PeerMaxUploads, MaxPeerMaxUploads))
	}
	if c.ByteScale < 0 || c.ByteScale > MaxByteScale {
		errs = append(errs, fmt.Errorf("byte-scale: %d, want 0 (default) to %d", c.ByteScale, MaxByteScale))
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.HostPrefix == "" {
		c.HostPrefix = DefaultHostPrefix
	}
	if c.AgentVersion == "" {
		c.AgentVersion = "sim"
	}
	if c.ConnectConcurrency == 0 {
		c.ConnectConcurrency = DefaultConnectConcurrency
	}
	if c.ReconnectBase == 0 {
		c.ReconnectBase = DefaultReconnectBase
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = DefaultReconnectMax
	}
	if c.ReconnectMax < c.ReconnectBase {
		c.ReconnectMax = c.ReconnectBase
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.MaxLatencySamples == 0 {
		c.MaxLatencySamples = DefaultMaxLatencySamples
	}
	if c.DownloadRate == 0 {
		c.DownloadRate = DefaultHostRate
	}
	if c.UploadRate == 0 {
		c.UploadRate = DefaultHostRate
	}
	if c.CoordinatorRate == 0 {
		c.CoordinatorRate = DefaultCoordinatorRate
	}
	if c.PeerMaxUploads == 0 {
		c.PeerMaxUploads = DefaultPeerMaxUploads
	}
	if c.ByteScale == 0 {
		c.ByteScale = 1
	}
}

// HostID is the id of host i under prefix.
func HostID(prefix string, i int) string {
	if prefix == "" {
		prefix = DefaultHostPrefix
	}
	return fmt.Sprintf("%s%05d", prefix, i)
}

// ParseLabels parses "k=v,k=v" (empty gives nil).
func ParseLabels(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("labels: %q: want key=value", kv)
		}
		out[k] = v
	}
	if err := spec.CheckLabels("labels", out); err != nil {
		return nil, err
	}
	return out, nil
}

// sourceIP is the loopback source address of host i when spreading over n
// addresses: 127.1.x.y with y in 1..250.
func sourceIP(i, n int) net.IP {
	k := i % n
	return net.IPv4(127, 1, byte(k/250), byte(k%250+1))
}
