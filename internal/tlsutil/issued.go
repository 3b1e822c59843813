package tlsutil

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrBadIssued marks a certificate chain that a coordinator issued (Join,
// Renew) and that is not one for the key and identity asked for.
var ErrBadIssued = errors.New("issued certificate refused")

// MaxIssuedAhead is how far in the future an issued certificate's
// validity may begin for CheckIssued.
const MaxIssuedAhead = time.Hour

// CheckIssued checks a certificate chain (PEM, leaf first) that a
// coordinator answered a Join or Renew with, before it replaces anything:
// it parses; its leaf holds pub (the key the CSR was made with), verifies
// against roots (the CA file's) for client authentication at now (or at
// its start, when that is at most MaxIssuedAhead after now), and names
// want. An agent that saved whatever a coordinator
// sent (garbage, or a certificate the fleet's CA did not sign) was cut off
// from every coordinator and, with a certificate that still looked valid,
// never joined again (an attack review).
func CheckIssued(chainPEM []byte, pub crypto.PublicKey, roots *x509.CertPool, want Identity, now time.Time) error {
	certs, err := parseCertsPEM(chainPEM)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadIssued, err)
	}
	leaf := certs[0]
	if !publicKeysEqual(pub, leaf.PublicKey) {
		return fmt.Errorf("%w: certificate %q (serial %s) is not for this agent's new key", ErrBadIssued, clipString(leaf.Subject.CommonName, 64), serialString(leaf))
	}
	// A coordinator's clock may run ahead of this host's, and one that
	// issues after a revocation dates the certificate after it on purpose
	// (SignCSRAfter): a certificate valid from a little later is checked
	// as of then (the coordinators judge it by their own clocks).
	at := now
	if leaf.NotBefore.After(now) && leaf.NotBefore.Sub(now) <= MaxIssuedAhead {
		at = leaf.NotBefore
	}
	if err := verifyChain(certs, roots, at, x509.ExtKeyUsageClientAuth); err != nil {
		return fmt.Errorf("%w: certificate %q (serial %s): %w", ErrBadIssued, clipString(leaf.Subject.CommonName, 64), serialString(leaf), err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadIssued, err)
	}
	if id.Kind != want.Kind || id.Name != want.Name {
		return fmt.Errorf("%w: certificate (serial %s) names %s, want %s", ErrBadIssued, serialString(leaf), id, want)
	}
	return nil
}
