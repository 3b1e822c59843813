package spec

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Limits and defaults of the handover fields of run (sockets, ready,
// ready_timeout, shutdown_delay, pre_stop).
const (
	// MaxSockets bounds run.sockets.
	MaxSockets = 16
	// MaxSocketNameLen is systemd's limit on a FileDescriptorName.
	MaxSocketNameLen = 255
	// MaxUnixPathLen is the longest path a Unix socket address holds on
	// Linux (sun_path is 108 bytes with the terminating NUL).
	MaxUnixPathLen = 107

	// ReadyStarted and ReadyNotify are the values of run.ready; "" means
	// ReadyStarted.
	ReadyStarted = "started"
	ReadyNotify  = "notify"

	// DefaultReadyTimeout is how long the agent waits for READY=1 when
	// run.ready is notify and run.ready_timeout is not set (systemd's
	// TimeoutStartSec is 90s; a service that needs more sets it).
	DefaultReadyTimeout = 60 * time.Second
	// MaxReadyTimeout bounds run.ready_timeout.
	MaxReadyTimeout = time.Hour
	// MaxShutdownDelay bounds run.shutdown_delay (default 0).
	MaxShutdownDelay = 10 * time.Minute
)

// hostnameRE is what ParseListen accepts as a host that is neither empty nor
// an IP address: a DNS name, resolved when the socket is bound.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$`)

// CheckSocketName reports whether s is a valid socket name: systemd's rules
// for a FileDescriptorName (ASCII without control characters and without
// ':', the separator of LISTEN_FDNAMES, at most 255 bytes), and not empty.
func CheckSocketName(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s: must not be empty", field)
	}
	if len(s) > MaxSocketNameLen {
		return fmt.Errorf("%s: %q is %d bytes, more than %d", field, truncate(s, 32), len(s), MaxSocketNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ':':
			return fmt.Errorf("%s: invalid socket name %q: ':' separates the names in LISTEN_FDNAMES", field, s)
		case c < ' ' || c >= 0x7f:
			return fmt.Errorf("%s: invalid socket name %q: want printable ASCII", field, s)
		}
	}
	return nil
}

// ParseListen parses a listen address of run.sockets after expansion:
// "unix:/absolute/path" (network "unix") or "host:port" (network "tcp"),
// where host is empty (every address), an IP address (IPv6 in brackets,
// with a zone if needed) or a DNS name, and port is a number in 0..65535.
// Port 0 (any free port) is accepted here, for tests; Validate and the
// agent reject it in a spec, where the address must be fixed. The error
// does not repeat s.
func ParseListen(s string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		switch {
		case path == "":
			return "", "", errors.New("unix: needs a path")
		case strings.ContainsRune(path, 0):
			return "", "", errors.New("path contains a NUL byte")
		case !filepath.IsAbs(path):
			return "", "", fmt.Errorf("path %q is not absolute", path)
		case len(path) > MaxUnixPathLen:
			return "", "", fmt.Errorf("path is %d bytes, more than %d", len(path), MaxUnixPathLen)
		case strings.HasSuffix(path, "/"):
			return "", "", fmt.Errorf("path %q names a directory", path)
		}
		return "unix", path, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", "", errors.New("want host:port or unix:/absolute/path")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return "", "", fmt.Errorf("invalid port %q (want a number in 1..65535)", port)
	}
	if host != "" && !hostnameRE.MatchString(host) {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", "", fmt.Errorf("invalid host %q (want an IP address or a DNS name)", host)
		}
	}
	return "tcp", s, nil
}

// ListenPort returns the port of a TCP address from ParseListen ("" for a
// Unix socket).
func ListenPort(network, address string) string {
	if network != "tcp" {
		return ""
	}
	_, port, _ := net.SplitHostPort(address)
	return port
}

func validateHandover(p *problems, s *v1.ServiceSpec) {
	r := s.GetRun()
	validateSockets(p, r.GetSockets())
	ready := r.GetReady()
	switch ready {
	case "", ReadyStarted, ReadyNotify:
	default:
		p.add("run.ready", "%q is not %s or %s", ready, ReadyStarted, ReadyNotify)
	}
	if r.GetReadyTimeout() != nil {
		switch rt := validDuration(p, "run.ready_timeout", r.GetReadyTimeout()); {
		case rt < 0:
		case ready != ReadyNotify:
			p.add("run.ready_timeout", "%s is set but run.ready is %q (only notify waits)", rt, ReadyStarted)
		case rt == 0:
			p.add("run.ready_timeout", "0s: must be more than 0 (leave it out for the default %s)", DefaultReadyTimeout)
		case rt > MaxReadyTimeout:
			p.add("run.ready_timeout", "%s is more than %s", rt, MaxReadyTimeout)
		}
	}
	if ready == ReadyNotify {
		// The readiness wait is part of the time a host has to become
		// healthy. Invalid durations are reported by their own checks.
		rt, hd := validDurationQuiet(r.GetReadyTimeout()), validDurationQuiet(s.GetHealthyDeadline())
		if rt >= 0 && hd >= 0 {
			effR := durationOr(r.GetReadyTimeout(), rt, DefaultReadyTimeout)
			effD := durationOr(s.GetHealthyDeadline(), hd, DefaultHealthyDeadline)
			if effR.d >= effD.d {
				p.add("run.ready_timeout", "%s%s is not less than healthy_deadline %s%s", effR.d, effR.note, effD.d, effD.note)
			}
		}
	}
	if sd := validDuration(p, "run.shutdown_delay", r.GetShutdownDelay()); sd > MaxShutdownDelay {
		p.add("run.shutdown_delay", "%s is more than %s", sd, MaxShutdownDelay)
	}
	// run.pre_stop is validated with the hooks (validateHooks): it is an
	// alias of hooks.before_stop.
}

// validDurationQuiet is validDuration without recording a problem: -1 for
// an invalid or negative duration, 0 when unset.
func validDurationQuiet(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if d.CheckValid() != nil || d.AsDuration() < 0 {
		return -1
	}
	return d.AsDuration()
}

func validateSockets(p *problems, socks []*v1.Socket) {
	if n := len(socks); n > MaxSockets {
		p.add("run.sockets", "%d sockets, more than %d", n, MaxSockets)
		return
	}
	names := map[string]int{}
	addrs := map[string]int{}
	for i, s := range socks {
		field := fmt.Sprintf("run.sockets[%d]", i)
		if err := CheckSocketName(field+".name", s.GetName()); err != nil {
			p.addErr(err)
		} else if prev, dup := names[s.GetName()]; dup {
			p.add(field+".name", "%q is also the name of run.sockets[%d]", s.GetName(), prev)
		} else {
			names[s.GetName()] = i
		}
		raw := s.GetListen()
		if raw == "" {
			p.add(field+".listen", "must not be empty")
			continue
		}
		x, ok := checkTemplate(p, field+".listen", raw)
		if !ok {
			continue
		}
		network, addr, err := ParseListen(x)
		if err != nil {
			p.add(field+".listen", "%q: %v", raw, err)
			continue
		}
		if ListenPort(network, addr) == "0" {
			p.add(field+".listen", "%q: port 0 is not a fixed address", raw)
			continue
		}
		if prev, dup := addrs[raw]; dup {
			p.add(field+".listen", "%q is also the address of run.sockets[%d]", raw, prev)
		} else {
			addrs[raw] = i
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
