package tlsutil

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"regexp"
	"time"
)

// Limits on what this package reads.
const (
	maxPEMFile = 1 << 20  // a certificate, key or CA bundle file
	maxCSR     = 64 << 10 // a DER certificate request
	maxTTL     = 100 * 365 * 24 * time.Hour
	// backdate is how far before "now" a certificate becomes valid, to
	// tolerate clock skew between the issuer and its peers.
	backdate = time.Minute
)

// JoinCAURIDomain is the only URI host a join CA may issue for: the name
// constraint that limits it to agent identities (fleetwave://agent/...).
const JoinCAURIDomain = KindAgent

// IssuedAt is when a certificate of this package's CAs was issued: its
// NotBefore (whole seconds) plus the minute it is backdated by. For a
// certificate from another CA it is an estimate.
func IssuedAt(c *x509.Certificate) time.Time { return c.NotBefore.Add(backdate) }

// CA is a certificate authority: its certificate, its signing key and the
// certificate in PEM (what peers are given to trust, for a root).
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	// chainPEM are the certificates a certificate this CA issues is sent
	// with: none for a root; the CA's own certificate (and any above it but
	// the root) for an intermediate such as a join CA.
	chainPEM []byte
}

// Root reports whether the CA's certificate is self-signed.
func (ca *CA) Root() bool {
	return bytes.Equal(ca.Cert.RawIssuer, ca.Cert.RawSubject) && ca.Cert.CheckSignatureFrom(ca.Cert) == nil
}

// NewCA creates a self-signed CA with an ECDSA P-256 key, valid from a minute
// ago for ttl.
func NewCA(commonName string, ttl time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("new CA: empty common name")
	}
	if err := checkTTL(ttl); err != nil {
		return nil, fmt.Errorf("new CA %q: %w", commonName, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: generate key: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", commonName, err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", commonName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"fleetwave"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// One intermediate below it: the join CA (NewJoinCA).
		MaxPathLen:   1,
		KeyUsage:     x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: create certificate: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse certificate: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemEncode("CERTIFICATE", der)}, nil
}

// LoadCA reads a CA certificate (the first CERTIFICATE block of certFile)
// and its private key (PKCS#8, SEC 1 EC or PKCS#1 RSA PEM) and checks that
// the certificate is a CA and that the key belongs to it.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certs, err := readCertsFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("load CA: certificate file %s: %q is not a CA certificate", certFile, cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("load CA: certificate file %s: %q may not sign certificates (no cert-sign key usage)", certFile, cert.Subject.CommonName)
	}
	key, err := readKeyFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("load CA: key file %s does not belong to certificate file %s", keyFile, certFile)
	}
	ca := &CA{Cert: cert, Key: key, CertPEM: pemEncode("CERTIFICATE", cert.Raw)}
	// An intermediate's certificate (and those above it in the file, but a
	// root) go with every certificate it issues.
	for _, c := range certs {
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			break
		}
		ca.chainPEM = append(ca.chainPEM, pemEncode("CERTIFICATE", c.Raw)...)
	}
	return ca, nil
}

// DefaultJoinCATTL is the lifetime of a join CA (never past its root's).
const DefaultJoinCATTL = 2 * 365 * 24 * time.Hour

// NewJoinCA makes an intermediate CA under ca (a root) for coordinators that
// sign agents' join and renewal requests: its key can issue agent
// certificates only. A name constraint permits no URI but
// fleetwave://agent/..., which every verifier (the TLS stack) enforces, so
// whoever steals it cannot mint an operator or coordinator certificate; it
// cannot make CAs below it (path length 0). It is valid for ttl, never past
// the root's expiry.
func (ca *CA) NewJoinCA(commonName string, ttl time.Duration) (*CA, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("new join CA: root CA not loaded")
	}
	if commonName == "" {
		return nil, errors.New("new join CA: empty common name")
	}
	if err := checkTTL(ttl); err != nil {
		return nil, fmt.Errorf("new join CA %q: %w", commonName, err)
	}
	if !ca.Root() {
		return nil, fmt.Errorf("new join CA %q: %q is not a root (self-signed) CA", commonName, ca.Cert.Subject.CommonName)
	}
	if ca.Cert.MaxPathLen == 0 { // explicitly 0 (-1 when absent)
		return nil, fmt.Errorf("new join CA %q: the root %q allows no intermediate CA (path length 0: a root made by an older tls init); make a new root with tls init", commonName, ca.Cert.Subject.CommonName)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new join CA %q: generate key: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new join CA %q: %w", commonName, err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("new join CA %q: %w", commonName, err)
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"fleetwave"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		SubjectKeyId:          ski,
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
		// Critical, so that a verifier that does not understand it refuses
		// the chain rather than ignore the constraint.
		PermittedDNSDomainsCritical: true,
		PermittedURIDomains:         []string{JoinCAURIDomain},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("new join CA %q: create certificate: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new join CA %q: parse certificate: %w", commonName, err)
	}
	certPEM := pemEncode("CERTIFICATE", der)
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, chainPEM: certPEM}, nil
}

// Issue signs a certificate for id over pub, valid from a minute ago for ttl
// (never past the CA's own expiry). hosts become DNS or IP SANs, for
// servers. The certificate may be used for both client and server auth.
// It returns the certificate in PEM (followed by the CA's own certificate
// when the CA is an intermediate) and its NotAfter.
func (ca *CA) Issue(id Identity, hosts []string, pub crypto.PublicKey, ttl time.Duration) (certPEM []byte, notAfter time.Time, err error) {
	return ca.issue(id, hosts, pub, ttl, time.Time{})
}

// issue is Issue with a floor on the issue time: the certificate's
// IssuedAt is after `after` (a revocation of every certificate of id
// issued until then must not cover it), even when this clock is behind the
// one that set `after`.
func (ca *CA) issue(id Identity, hosts []string, pub crypto.PublicKey, ttl time.Duration, after time.Time) (certPEM []byte, notAfter time.Time, err error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, time.Time{}, errors.New("issue certificate: CA not loaded")
	}
	if err := id.Validate(); err != nil {
		return nil, time.Time{}, fmt.Errorf("issue certificate: %w", err)
	}
	if err := checkTTL(ttl); err != nil {
		return nil, time.Time{}, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, time.Time{}, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	var (
		dns []string
		ips []net.IP
	)
	for _, h := range hosts {
		if err := ValidHost(h); err != nil {
			return nil, time.Time{}, fmt.Errorf("issue certificate for %s: %w", id, err)
		}
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		dns = append(dns, h)
	}
	now := time.Now()
	if !now.Before(ca.Cert.NotAfter) {
		return nil, time.Time{}, fmt.Errorf("issue certificate for %s: CA %q expired at %s", id, ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	issuedAt := now
	if floor := after.Truncate(time.Second).Add(time.Second); !after.IsZero() && issuedAt.Before(floor) {
		issuedAt = floor
	}
	notAfter = issuedAt.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	serial, err := newSerial()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: id.Name, OrganizationalUnit: []string{id.Kind}, Organization: []string{"fleetwave"}},
		NotBefore:             issuedAt.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          ski,
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
		URIs:                  []*url.URL{id.URI()},
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	return append(pemEncode("CERTIFICATE", der), ca.chainPEM...), notAfter, nil
}

// IssueKeyPair generates a key and issues a certificate for it; it returns
// both in PEM (the key as PKCS#8).
func (ca *CA) IssueKeyPair(id Identity, hosts []string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("issue key pair for %s: %w", id, err)
	}
	certPEM, _, err = ca.Issue(id, hosts, key.Public(), ttl)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// SignCSR checks a DER certificate request's own signature (proof that the
// requester holds the key) and issues a certificate for its public key. The
// identity comes from id alone, NEVER from the request's subject or SANs,
// and the certificate names no hosts.
func (ca *CA) SignCSR(csrDER []byte, id Identity, ttl time.Duration) (certPEM []byte, notAfter time.Time, err error) {
	return ca.SignCSRAfter(csrDER, id, ttl, time.Time{})
}

// SignCSRAfter is SignCSR for a certificate issued after `after` (by
// IssuedAt), whatever this clock says: after a revocation of id's
// certificates up to that time, the new one is not covered. A zero after
// sets no floor.
func (ca *CA) SignCSRAfter(csrDER []byte, id Identity, ttl time.Duration, after time.Time) (certPEM []byte, notAfter time.Time, err error) {
	if len(csrDER) == 0 {
		return nil, time.Time{}, fmt.Errorf("sign CSR for %s: empty request", id)
	}
	if len(csrDER) > maxCSR {
		return nil, time.Time{}, fmt.Errorf("sign CSR for %s: request is %d bytes, limit %d", id, len(csrDER), maxCSR)
	}
	if err := id.Validate(); err != nil {
		return nil, time.Time{}, fmt.Errorf("sign CSR: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("sign CSR for %s: parse request: %w", id, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, time.Time{}, fmt.Errorf("sign CSR for %s: request signature: %w", id, err)
	}
	return ca.issue(id, nil, csr.PublicKey, ttl, after)
}

// GenerateKey makes an ECDSA P-256 key and returns it with its PKCS#8 PEM.
func GenerateKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return key, pemEncode("PRIVATE KEY", der), nil
}

// NewCSR makes a DER certificate request signed by key. It names nothing:
// the CA decides the identity.
func NewCSR(key crypto.Signer) ([]byte, error) {
	if key == nil {
		return nil, errors.New("new CSR: no key")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{"fleetwave"}},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("new CSR: %w", err)
	}
	return der, nil
}

// CertNotAfter returns the expiry of the first certificate in certFile.
func CertNotAfter(certFile string) (time.Time, error) {
	c, err := ReadCertFile(certFile)
	if err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}

// ReadCertFile returns the first certificate of a PEM file (the leaf of a
// chain); errors name the file.
func ReadCertFile(certFile string) (*x509.Certificate, error) {
	certs, err := readCertsFile(certFile)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ReadCerts returns every certificate of a PEM file; errors name the file.
func ReadCerts(file string) ([]*x509.Certificate, error) { return readCertsFile(file) }

// ValidHost checks a server name for a certificate: an IP address or a DNS
// name (optionally with a leading "*." wildcard).
func ValidHost(h string) error {
	if net.ParseIP(h) != nil {
		return nil
	}
	if len(h) > 253 || !dnsNameRE.MatchString(h) {
		return fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
	}
	return nil
}

// dnsNameRE accepts DNS names, with an optional leading wildcard label.
var dnsNameRE = regexp.MustCompile(`^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$`)

func checkTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("ttl %s: must be positive", ttl)
	}
	if ttl > maxTTL {
		return fmt.Errorf("ttl %s: longer than %s", ttl, maxTTL)
	}
	return nil
}

// checkPublicKey accepts ECDSA P-256/P-384/P-521, Ed25519 and RSA of at
// least 2048 bits.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return errors.New("public key: empty ECDSA key")
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("public key: unsupported ECDSA curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("public key: Ed25519 key of %d bytes", len(k))
		}
		return nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return errors.New("public key: empty RSA key")
		}
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("public key: RSA key of %d bits, want at least 2048", k.N.BitLen())
		}
		return nil
	case nil:
		return errors.New("public key: none")
	default:
		return fmt.Errorf("public key: unsupported type %T", pub)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil // never zero
}

// subjectKeyID is the SHA-256 of the marshalled public key, truncated to 20
// bytes (RFC 7093 method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// readFileLimited reads a small file (certificates, keys), refusing one
// larger than maxPEMFile.
func readFileLimited(what, file string) ([]byte, error) {
	if file == "" {
		return nil, fmt.Errorf("%s file: no path given", what)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s file: %w", what, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s file %s: %w", what, file, err)
	}
	if len(data) > maxPEMFile {
		return nil, fmt.Errorf("%s file %s: larger than %d bytes", what, file, maxPEMFile)
	}
	return data, nil
}

// parseCertsPEM returns every CERTIFICATE block in data; other blocks are
// skipped. It fails when there is none or one does not parse.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, errors.New("empty")
		}
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

func readCertsFile(file string) ([]*x509.Certificate, error) {
	data, err := readFileLimited("certificate", file)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("certificate file %s: %w", file, err)
	}
	return certs, nil
}

// parseKeyPEM parses the first private key block: PKCS#8, SEC 1 EC or PKCS#1
// RSA.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PKCS#8 key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("PKCS#8 key of type %T cannot sign", k)
			}
			return s, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("EC key: %w", err)
			}
			return k, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("RSA key: %w", err)
			}
			return k, nil
		}
	}
}

func readKeyFile(file string) (crypto.Signer, error) {
	data, err := readFileLimited("key", file)
	if err != nil {
		return nil, err
	}
	k, err := parseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", file, err)
	}
	return k, nil
}
