package tlsutil

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Identity kinds.
const (
	KindCoordinator = "coordinator"
	KindAgent       = "agent"
	KindOperator    = "operator"
)

// Operator roles, from least to most privileged.
const (
	RoleViewer   = "viewer"
	RoleDeployer = "deployer"
	RoleAdmin    = "admin"
)

// URIScheme is the scheme of the URI SAN that carries an Identity.
const URIScheme = "fleetwave"

// ErrInvalidIdentity is wrapped by every error about a malformed, missing or
// ambiguous identity (in a value, a URI or a certificate).
var ErrInvalidIdentity = errors.New("invalid fleetwave identity")

// nameRE is the grammar of identity names; it is the host id grammar, so an
// agent's name is its host id.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Identity is who a certificate names, carried as ONE URI SAN:
//
//	fleetwave://coordinator/<name>
//	fleetwave://agent/<host-id>
//	fleetwave://operator/<name>?role=<role>
type Identity struct {
	Kind string // KindCoordinator, KindAgent or KindOperator
	Name string // coordinator name, host id or operator name
	Role string // operators only: RoleViewer, RoleDeployer or RoleAdmin
}

// String renders the identity for logs and audit records:
// "agent:host-1", "operator:alice (admin)", "coordinator:c1".
func (i Identity) String() string {
	s := i.Kind + ":" + i.Name
	if i.Role != "" {
		s += " (" + i.Role + ")"
	}
	return s
}

// URI returns the URI SAN that carries the identity. It does not validate.
func (i Identity) URI() *url.URL {
	u := &url.URL{Scheme: URIScheme, Host: i.Kind, Path: "/" + i.Name}
	if i.Role != "" {
		u.RawQuery = url.Values{"role": {i.Role}}.Encode()
	}
	return u
}

// Validate checks that the kind is known, the name follows the host id
// grammar, and that exactly operators carry a role, one of the three.
func (i Identity) Validate() error {
	switch i.Kind {
	case KindCoordinator, KindAgent, KindOperator:
	default:
		return fmt.Errorf("%w: unknown kind %q (want %s, %s or %s)", ErrInvalidIdentity, i.Kind, KindCoordinator, KindAgent, KindOperator)
	}
	if !nameRE.MatchString(i.Name) {
		return fmt.Errorf("%w: %s name %q: want 1-128 of [A-Za-z0-9._-], starting with a letter or digit", ErrInvalidIdentity, i.Kind, i.Name)
	}
	if i.Kind != KindOperator {
		if i.Role != "" {
			return fmt.Errorf("%w: %s %q has role %q: only operators have roles", ErrInvalidIdentity, i.Kind, i.Name, i.Role)
		}
		return nil
	}
	if !ValidRole(i.Role) {
		return fmt.Errorf("%w: operator %q role %q: want %s, %s or %s", ErrInvalidIdentity, i.Name, i.Role, RoleViewer, RoleDeployer, RoleAdmin)
	}
	return nil
}

// ValidRole reports whether role is one of the three operator roles.
func ValidRole(role string) bool {
	switch role {
	case RoleViewer, RoleDeployer, RoleAdmin:
		return true
	}
	return false
}

// roleRank orders the operator roles: each includes the ones below it.
var roleRank = map[string]int{RoleViewer: 1, RoleDeployer: 2, RoleAdmin: 3}

// RoleIncludes reports whether role may do what want may: viewer <
// deployer < admin. A role that is not an operator role includes none; a
// want that is not one is included in every role (callers pass one).
func RoleIncludes(role, want string) bool {
	return roleRank[role] >= roleRank[want]
}

// ParseIdentity parses and validates a fleetwave:// URI. Only the canonical
// form that Identity.URI produces is accepted: no user, port, fragment,
// escapes, extra path segments or query parameters.
func ParseIdentity(uri string) (Identity, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrInvalidIdentity, err)
	}
	return identityFromURL(u)
}

func identityFromURL(u *url.URL) (Identity, error) {
	if u == nil || u.Scheme != URIScheme {
		return Identity{}, fmt.Errorf("%w: not a %s:// URI", ErrInvalidIdentity, URIScheme)
	}
	got := u.String()
	id := Identity{Kind: u.Host, Name: strings.TrimPrefix(u.Path, "/")}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return Identity{}, fmt.Errorf("%w: URI %q: query: %v", ErrInvalidIdentity, got, err)
		}
		id.Role = q.Get("role")
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("URI %q: %w", got, err)
	}
	if want := id.URI().String(); got != want {
		return Identity{}, fmt.Errorf("%w: URI %q is not in canonical form %q", ErrInvalidIdentity, got, want)
	}
	return id, nil
}

// IdentityFromCert returns the identity a certificate carries: it must have
// exactly one fleetwave:// URI SAN, and that URI must be valid. URI SANs of
// other schemes are ignored. The certificate's subject plays no part.
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	if c == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrInvalidIdentity)
	}
	var found *url.URL
	for _, u := range c.URIs {
		if u == nil || !strings.EqualFold(u.Scheme, URIScheme) {
			continue
		}
		if found != nil {
			return Identity{}, fmt.Errorf("%w: certificate %q (serial %s) has more than one %s:// URI SAN", ErrInvalidIdentity, c.Subject.CommonName, serialString(c), URIScheme)
		}
		found = u
	}
	if found == nil {
		return Identity{}, fmt.Errorf("%w: certificate %q (serial %s) has no %s:// URI SAN", ErrInvalidIdentity, c.Subject.CommonName, serialString(c), URIScheme)
	}
	id, err := identityFromURL(found)
	if err != nil {
		return Identity{}, fmt.Errorf("certificate %q (serial %s): %w", c.Subject.CommonName, serialString(c), err)
	}
	return id, nil
}

func serialString(c *x509.Certificate) string {
	if c.SerialNumber == nil {
		return "none"
	}
	return c.SerialNumber.Text(16)
}

// PeerIdentity returns the identity of the gRPC peer in ctx, taken from the
// leaf of the chain the TLS stack verified (State.VerifiedChains[0][0]). It
// returns false when the connection is not TLS, the client sent no
// certificate, or the certificate carries no valid identity.
func PeerIdentity(ctx context.Context) (Identity, bool) {
	leaf, ok := PeerCertificate(ctx)
	if !ok {
		return Identity{}, false
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return Identity{}, false
	}
	return id, true
}

// PeerCertificate returns the gRPC peer's verified client certificate (the
// leaf of the first verified chain), or false when there is none.
func PeerCertificate(ctx context.Context) (*x509.Certificate, bool) {
	chain, ok := PeerChain(ctx)
	if !ok {
		return nil, false
	}
	return chain[0], true
}

// PeerChain returns the gRPC peer's verified client certificate chain
// (the first one the TLS stack verified: leaf first, root last), or false
// when there is none.
func PeerChain(ctx context.Context) ([]*x509.Certificate, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return nil, false
	}
	var info credentials.TLSInfo
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		info = ai
	case *credentials.TLSInfo:
		if ai == nil {
			return nil, false
		}
		info = *ai
	default:
		return nil, false
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, false
	}
	return chains[0], true
}

// SerialString is how Fleetwave writes a certificate serial number:
// lowercase hex without leading zeros (openssl prints it in upper case,
// padded, sometimes with colons; ParseSerial reads those too).
func SerialString(c *x509.Certificate) string { return serialString(c) }

// maxSerialHex bounds a serial number: RFC 5280 allows 20 octets.
const maxSerialHex = 40

// ParseSerial reads a certificate serial number in hex (upper or lower
// case, leading zeros and colons allowed) and returns it as SerialString
// writes it.
func ParseSerial(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(s, ":", ""))
	h = strings.TrimPrefix(h, "0x")
	if h == "" || len(h) > maxSerialHex+2 {
		return "", fmt.Errorf("serial %q: want 1 to %d hex digits", clipString(s, 64), maxSerialHex)
	}
	for _, r := range h {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return "", fmt.Errorf("serial %q: want hex digits (and colons)", clipString(s, 64))
		}
	}
	h = strings.TrimLeft(h, "0")
	if h == "" || len(h) > maxSerialHex {
		return "", fmt.Errorf("serial %q: want a positive number of at most %d hex digits", clipString(s, 64), maxSerialHex)
	}
	return h, nil
}

func clipString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// ParseIdentityName reads "KIND:NAME" (agent:web-1, operator:alice,
// coordinator:c1): an identity without a role.
func ParseIdentityName(s string) (kind, name string, err error) {
	kind, name, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("%w: %q: want KIND:NAME (kind %s, %s or %s)", ErrInvalidIdentity, clipString(s, 64), KindAgent, KindOperator, KindCoordinator)
	}
	id := Identity{Kind: kind, Name: name}
	if kind == KindOperator {
		id.Role = RoleViewer // the role is not part of the name
	}
	if err := id.Validate(); err != nil {
		return "", "", err
	}
	return kind, name, nil
}
