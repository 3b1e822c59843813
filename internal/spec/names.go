package spec

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	hostIDRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	labelKRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
	labelVRE  = regexp.MustCompile(`^[A-Za-z0-9._:/-]{0,63}$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	dnsNameRE = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$`)
)

// MaxServicesPerHost bounds the services one host runs: an agent's Hello
// reports at most this many (coordinators refuse more), and an agent takes
// no assignment of a service beyond it (a coordinator cannot make it track
// names, and persist their states, without end).
const MaxServicesPerHost = 1000

// MaxHostLabels bounds a host's labels and MaxPeerAddressLen its
// advertised peer address, in bytes: coordinators refuse a Hello with
// more, so an agent refuses them at start rather than being cut off.
const (
	MaxHostLabels     = 64
	MaxPeerAddressLen = 256
)

// CheckHostPort reports whether s is a TCP address other hosts can dial:
// an IP address (not an unspecified one, 0.0.0.0 or ::, which would
// have them dial themselves; no IPv6 zone, which names an interface of
// the host that wrote it) or a DNS name, and a port of 1 to 65535 in
// digits. Nothing else: no scheme, no path.
func CheckHostPort(field, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("%s: %s: want host:port", field, Quote(s))
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" || ip.IsUnspecified() {
			return fmt.Errorf("%s: %s: an address other hosts can dial, not an unspecified one or one with a zone", field, Quote(s))
		}
	} else if len(host) > 253 || !dnsNameRE.MatchString(host) {
		return fmt.Errorf("%s: %s: the host is neither an IP address nor a DNS name", field, Quote(s))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] < '0' || port[0] > '9' {
		return fmt.Errorf("%s: %s: the port is not a number of 1 to 65535", field, Quote(s))
	}
	return nil
}

// CheckName reports whether s is a valid service name; field names the field
// in the error.
func CheckName(field, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%s: invalid name %s (want [a-z0-9][a-z0-9-]{0,62})", field, Quote(s))
	}
	return nil
}

// CheckVersion reports whether s is a valid release version.
func CheckVersion(field, s string) error {
	if !versionRE.MatchString(s) {
		return fmt.Errorf("%s: invalid version %s (want [A-Za-z0-9][A-Za-z0-9._+-]{0,63})", field, Quote(s))
	}
	return nil
}

// CheckHostID reports whether s is a valid host id.
func CheckHostID(field, s string) error {
	if !hostIDRE.MatchString(s) {
		return fmt.Errorf("%s: invalid host id %s (want [A-Za-z0-9][A-Za-z0-9._-]{0,127})", field, Quote(s))
	}
	return nil
}

// CheckLabels reports whether every key and value of a label map is valid.
func CheckLabels(field string, labels map[string]string) error {
	for k, v := range labels {
		if !labelKRE.MatchString(k) {
			return fmt.Errorf("%s: invalid label key %s", field, Quote(k))
		}
		if !labelVRE.MatchString(v) {
			return fmt.Errorf("%s[%s]: invalid label value %s", field, k, Quote(v))
		}
	}
	return nil
}

// CheckSHA256 reports whether s is a lowercase hex sha256.
func CheckSHA256(field, s string) error {
	if !sha256RE.MatchString(s) {
		return fmt.Errorf("%s: invalid sha256 %s (want 64 lowercase hex digits)", field, Quote(s))
	}
	return nil
}

// quoteMax is how much of a refused value an error quotes.
const quoteMax = 128

// Quote quotes a value for an error message, clipped to its first
// quoteMax bytes and its length: an error names what was refused without
// echoing a caller's megabytes back to it (and into logs).
func Quote(s string) string {
	if len(s) <= quoteMax {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:quoteMax], len(s))
}
