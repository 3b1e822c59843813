package gossip

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Roles carried in node meta.
const (
	RoleAgent       = "agent"
	RoleCoordinator = "coordinator"
)

// CoordinatorPrefix starts every coordinator's node name.
const CoordinatorPrefix = "coordinator/"

// CoordinatorName is the node name of the coordinator with the given id.
func CoordinatorName(id string) string { return CoordinatorPrefix + id }

// Defaults: memberlist's LAN profile with faster failure detection (see
// Config.DeadAfter for what they give).
const (
	DefaultProbeInterval           = 500 * time.Millisecond
	DefaultProbeTimeout            = 250 * time.Millisecond
	DefaultSuspicionMult           = 4
	DefaultSuspicionMaxTimeoutMult = 4
	DefaultGossipInterval          = 200 * time.Millisecond
	DefaultPushPullInterval        = 15 * time.Second
	DefaultTCPTimeout              = 5 * time.Second
	DefaultDeadNodeReclaimTime     = 30 * time.Second
	DefaultLeaveTimeout            = 2 * time.Second
	DefaultJoinBackoffMin          = 250 * time.Millisecond
	DefaultJoinBackoffMax          = 30 * time.Second
	DefaultForgetAfter             = 24 * time.Hour

	// PacketSize is memberlist's UDPBufferSize: the largest gossip packet
	// sent (a safe size under a 1500-byte MTU).
	PacketSize = 1400
	// MetaMaxSize bounds a node's encoded meta (memberlist's own limit).
	MetaMaxSize = memberlist.MetaMaxSize
)

// Config configures one member of the gossip cluster. Zero timing fields take
// the defaults above.
type Config struct {
	// Name is the node name: the host id for an agent, CoordinatorName(id)
	// for a coordinator. Unique in the cluster.
	Name string
	// Bind is the host:port to listen on, TCP and UDP on the same port. The
	// host must be an IP literal (empty means 0.0.0.0); port 0 picks a free
	// port.
	Bind string
	// Advertise is the optional host:port others use to reach this node (NAT,
	// or a wildcard Bind). Host must be an IP literal; port 0 or none means
	// the bound port. It may not name a port when Bind's port is 0.
	Advertise string
	// Join lists seed addresses (host:port). Joining runs in the background
	// with backoff until this node sees another member, and again whenever it
	// finds itself alone. Its own address is skipped.
	Join []string
	// KeyFile holds the shared key (see LoadKey). Required unless Insecure.
	KeyFile string
	// Label is the cluster label: packets and streams of another label are
	// dropped (memberlist Config.Label, at most 255 bytes).
	Label string
	// Role is RoleAgent or RoleCoordinator, carried in node meta.
	Role string
	// Meta is small extra meta (e.g. a gRPC address). The encoded node meta
	// must fit in MetaMaxSize bytes.
	Meta map[string]string
	// Insecure allows plaintext gossip (no KeyFile). Logged as a warning.
	Insecure bool

	// ProbeInterval is the time between two probes of a random member.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for an ack (~99th
	// percentile RTT); must be below ProbeInterval.
	ProbeTimeout time.Duration
	// SuspicionMult sets how long a suspect is kept before it is declared
	// dead: SuspicionMult * max(1, log10(n)) * ProbeInterval.
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds the suspicion time when other members do
	// not confirm the suspicion: that many times the above.
	SuspicionMaxTimeoutMult int
	// GossipInterval is the time between gossip rounds (to 3 members).
	GossipInterval time.Duration
	// PushPullInterval is the time between full state syncs with one member.
	// It is also how often a node that has joined checks it is still not
	// alone.
	PushPullInterval time.Duration
	// TCPTimeout bounds stream connections (joins, push/pull, TCP pings).
	TCPTimeout time.Duration
	// DeadNodeReclaimTime is how long a dead node's name stays bound to its
	// old address; after it, a node of that name at another address may join.
	DeadNodeReclaimTime time.Duration
	// LeaveTimeout bounds each of Close's two broadcasts (meta update, leave).
	LeaveTimeout time.Duration
	// JoinBackoffMin and JoinBackoffMax bound the wait between join attempts.
	JoinBackoffMin time.Duration
	JoinBackoffMax time.Duration
	// ForgetAfter is how long dead and left members are still reported.
	ForgetAfter time.Duration
}

var hostIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateName checks a node name against its role: a host id
// ([A-Za-z0-9][A-Za-z0-9._-]{0,127}) for an agent, CoordinatorPrefix and a
// host id for a coordinator.
func ValidateName(role, name string) error {
	switch role {
	case RoleAgent:
		if !hostIDRE.MatchString(name) {
			return fmt.Errorf("name: invalid agent node name %q (want a host id: [A-Za-z0-9][A-Za-z0-9._-]{0,127})", name)
		}
	case RoleCoordinator:
		id, ok := strings.CutPrefix(name, CoordinatorPrefix)
		if !ok || !hostIDRE.MatchString(id) {
			return fmt.Errorf("name: invalid coordinator node name %q (want %q + [A-Za-z0-9][A-Za-z0-9._-]{0,127})", name, CoordinatorPrefix)
		}
	default:
		return fmt.Errorf("role: %q is neither %q nor %q", role, RoleAgent, RoleCoordinator)
	}
	return nil
}

// withDefaults returns c with every zero timing field set to its default.
func (c Config) withDefaults() Config {
	setD := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	setD(&c.ProbeInterval, DefaultProbeInterval)
	setD(&c.ProbeTimeout, DefaultProbeTimeout)
	if c.ProbeTimeout >= c.ProbeInterval {
		c.ProbeTimeout = c.ProbeInterval / 2
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = DefaultSuspicionMult
	}
	if c.SuspicionMaxTimeoutMult == 0 {
		c.SuspicionMaxTimeoutMult = DefaultSuspicionMaxTimeoutMult
	}
	setD(&c.GossipInterval, DefaultGossipInterval)
	setD(&c.PushPullInterval, DefaultPushPullInterval)
	setD(&c.TCPTimeout, DefaultTCPTimeout)
	setD(&c.DeadNodeReclaimTime, DefaultDeadNodeReclaimTime)
	setD(&c.LeaveTimeout, DefaultLeaveTimeout)
	setD(&c.JoinBackoffMin, DefaultJoinBackoffMin)
	setD(&c.JoinBackoffMax, DefaultJoinBackoffMax)
	if c.JoinBackoffMax < c.JoinBackoffMin {
		c.JoinBackoffMax = c.JoinBackoffMin
	}
	setD(&c.ForgetAfter, DefaultForgetAfter)
	return c
}

// validate checks everything but the key file; errors name the field.
func (c Config) validate() error {
	if err := ValidateName(c.Role, c.Name); err != nil {
		return err
	}
	if _, _, err := splitAddr("bind", c.Bind, true); err != nil {
		return err
	}
	if c.Advertise != "" {
		_, port, err := splitAddr("advertise", c.Advertise, false)
		if err != nil {
			return err
		}
		_, bport, _ := splitAddr("bind", c.Bind, true)
		if bport == 0 && port != 0 {
			return fmt.Errorf("advertise: port %d given while bind port is 0 (dynamic)", port)
		}
	}
	for i, s := range c.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("join[%d]: %q: %w", i, s, err)
		}
	}
	if !c.Insecure && c.KeyFile == "" {
		return fmt.Errorf("key file: required unless insecure gossip is asked for")
	}
	if len(c.Label) > memberlist.LabelMaxSize {
		return fmt.Errorf("label: %d bytes, at most %d", len(c.Label), memberlist.LabelMaxSize)
	}
	for name, d := range map[string]time.Duration{
		"probe interval": c.ProbeInterval, "probe timeout": c.ProbeTimeout,
		"gossip interval": c.GossipInterval, "push/pull interval": c.PushPullInterval,
		"tcp timeout": c.TCPTimeout, "dead node reclaim time": c.DeadNodeReclaimTime,
		"leave timeout": c.LeaveTimeout, "join backoff": c.JoinBackoffMin, "forget after": c.ForgetAfter,
	} {
		if d < 0 {
			return fmt.Errorf("%s: negative (%s)", name, d)
		}
	}
	if c.SuspicionMult < 1 || c.SuspicionMaxTimeoutMult < 1 {
		return fmt.Errorf("suspicion multipliers: must be at least 1 (got %d, %d)", c.SuspicionMult, c.SuspicionMaxTimeoutMult)
	}
	if _, err := encodeMeta(c.Role, c.Meta, true); err != nil {
		return err
	}
	return nil
}

// splitAddr parses host:port with an IP-literal (or, if emptyOK, empty) host.
func splitAddr(field, s string, emptyOK bool) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %q: %w", field, s, err)
	}
	if host == "" && !emptyOK {
		return "", 0, fmt.Errorf("%s: %q: missing host", field, s)
	}
	if host != "" && net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%s: %q: host must be an IP address", field, s)
	}
	port := 0
	if p != "" {
		port, err = strconv.Atoi(p)
		if err != nil || port < 0 || port > 65535 {
			return "", 0, fmt.Errorf("%s: %q: invalid port", field, s)
		}
	}
	return host, port, nil
}

// suspicionTimeouts mirrors memberlist's suspicion timer for a cluster of n
// nodes: it fires after min when no confirmations are expected, otherwise
// starts at max and shrinks towards min as other members confirm.
func (c Config) suspicionTimeouts(n int) (lo, hi time.Duration) {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	lo = time.Duration(float64(c.SuspicionMult) * scale * float64(c.ProbeInterval))
	k := c.SuspicionMult - 2
	if k < 1 || n-2 < k {
		return lo, lo
	}
	return lo, time.Duration(c.SuspicionMaxTimeoutMult) * lo
}

// DeadAfter says how long after a node of a cluster of n nodes (counting it)
// crashes the others declare it dead, with the healthy members of c's
// timing: typical (someone probes it within a probe interval, the probe fails
// after one more, other members confirm the suspicion) and an upper bound
// (the last prober reaches it after two rounds of n-1 probes and nobody
// confirms). An overloaded observer stretches its probe interval by up to 8x
// (memberlist's awareness), which this bound leaves out.
func (c Config) DeadAfter(n int) (typical, worst time.Duration) {
	c = c.withDefaults()
	if n < 2 {
		n = 2
	}
	lo, hi := c.suspicionTimeouts(n)
	spread := 2 * c.GossipInterval
	typical = 2*c.ProbeInterval + lo + spread
	worst = time.Duration(2*(n-1))*c.ProbeInterval + hi + spread
	return typical, worst
}

// maxSuspicion is the longest memberlist can keep a node suspect, plus slack:
// a suspect not declared dead by then has refuted the suspicion.
func (c Config) maxSuspicion(n int) time.Duration {
	_, hi := c.suspicionTimeouts(n)
	return hi + 2*c.ProbeInterval
}
