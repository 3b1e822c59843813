package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func parsePEMCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestTLSNewCAAndIssue(t *testing.T) {
	ca, err := NewCA("test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate: IsCA %v, key usage %v", ca.Cert.IsCA, ca.Cert.KeyUsage)
	}
	if k, ok := ca.Key.Public().(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("CA key %T, want ECDSA P-256", ca.Key.Public())
	}
	id := Identity{Kind: KindCoordinator, Name: "c1"}
	before := time.Now()
	certPEM, keyPEM, err := ca.IssueKeyPair(id, []string{"coord.example", "10.0.0.1", "::1"}, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	c := parsePEMCert(t, certPEM)
	if got, err := IdentityFromCert(c); err != nil || got != id {
		t.Errorf("identity %+v, %v", got, err)
	}
	if !slices.Equal(c.DNSNames, []string{"coord.example"}) || len(c.IPAddresses) != 2 || !c.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) {
		t.Errorf("SANs: DNS %v, IP %v", c.DNSNames, c.IPAddresses)
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("ext key usage %v", c.ExtKeyUsage)
	}
	if c.IsCA {
		t.Error("leaf is a CA")
	}
	// x509 keeps whole seconds.
	if nb := c.NotBefore; nb.Before(before.Add(-time.Minute).Truncate(time.Second)) || nb.After(after.Add(-time.Minute)) {
		t.Errorf("NotBefore %v is not a minute before the issue (%v .. %v)", nb, before, after)
	}
	if na := c.NotAfter; na.Before(before.Add(2*time.Hour).Truncate(time.Second)) || na.After(after.Add(2*time.Hour)) {
		t.Errorf("NotAfter %v is not 2h after the issue (%v .. %v)", na, before, after)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: poolOf(ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify: %v", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(key.Public(), c.PublicKey) {
		t.Error("issued key does not match its certificate")
	}
	// Never past the CA's own expiry.
	_, notAfter, err := ca.Issue(Identity{Kind: KindAgent, Name: "h"}, nil, key.Public(), 1000*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !notAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("notAfter %v, want capped at the CA's %v", notAfter, ca.Cert.NotAfter)
	}
	// Refusals.
	for _, tc := range []struct {
		id    Identity
		hosts []string
		ttl   time.Duration
		want  string
	}{
		{Identity{Kind: KindAgent, Name: "bad/name"}, nil, time.Hour, "name"},
		{Identity{Kind: KindAgent, Name: "h"}, nil, 0, "ttl"},
		{Identity{Kind: KindAgent, Name: "h"}, nil, -time.Hour, "ttl"},
		{Identity{Kind: KindCoordinator, Name: "c"}, []string{""}, time.Hour, `host ""`},
		{Identity{Kind: KindCoordinator, Name: "c"}, []string{"a b"}, time.Hour, `host "a b"`},
	} {
		if _, _, err := ca.Issue(tc.id, tc.hosts, key.Public(), tc.ttl); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Issue(%+v, %q, %s) error %v, want it to mention %q", tc.id, tc.hosts, tc.ttl, err, tc.want)
		}
	}
	if _, _, err := ca.Issue(Identity{Kind: KindAgent, Name: "h"}, nil, nil, time.Hour); err == nil {
		t.Error("Issue with no public key succeeded")
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func TestTLSSignCSRBindsGivenIdentity(t *testing.T) {
	ca := newTestCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The request asks for a coordinator identity and server names: all of
	// it must be ignored.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "coordinator", OrganizationalUnit: []string{KindCoordinator}},
		DNSNames:    []string{"coordinator.example"},
		IPAddresses: []net.IP{net.ParseIP("10.1.1.1")},
		URIs:        []*url.URL{mustURL(t, "fleetwave://coordinator/evil"), mustURL(t, "fleetwave://operator/evil?role=admin")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{Kind: KindAgent, Name: "host-1"}
	certPEM, notAfter, err := ca.SignCSR(csr, want, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := parsePEMCert(t, certPEM)
	if got, err := IdentityFromCert(c); err != nil || got != want {
		t.Fatalf("identity %+v, %v; want %+v", got, err, want)
	}
	if len(c.URIs) != 1 || len(c.DNSNames) != 0 || len(c.IPAddresses) != 0 || c.Subject.CommonName != "host-1" {
		t.Errorf("request's names leaked: URIs %v, DNS %v, IP %v, CN %q", c.URIs, c.DNSNames, c.IPAddresses, c.Subject.CommonName)
	}
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Error("certificate is not for the request's key")
	}
	if !notAfter.Equal(c.NotAfter) {
		t.Errorf("notAfter %v, certificate says %v", notAfter, c.NotAfter)
	}
	// A request whose signature does not verify proves nothing.
	tampered := slices.Clone(csr)
	tampered[len(tampered)-3] ^= 0xff
	if _, _, err := ca.SignCSR(tampered, want, time.Hour); err == nil {
		t.Error("tampered CSR signed")
	}
	for _, b := range [][]byte{nil, {}, []byte("garbage"), csr[:len(csr)/2], make([]byte, maxCSR+1)} {
		if _, _, err := ca.SignCSR(b, want, time.Hour); err == nil {
			t.Errorf("SignCSR(%d bytes of junk) succeeded", len(b))
		}
	}
	if _, _, err := ca.SignCSR(csr, Identity{Kind: KindOperator, Name: "x"}, time.Hour); err == nil {
		t.Error("SignCSR with an invalid identity succeeded")
	}
	// NewCSR makes a request the CA accepts.
	k2, _, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr2, err := NewCSR(k2)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.SignCSR(csr2, want, time.Hour); err != nil {
		t.Errorf("SignCSR(NewCSR): %v", err)
	}
}

func TestTLSSignCSRRejectsWeakKey(t *testing.T) {
	ca := newTestCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.SignCSR(csr, Identity{Kind: KindAgent, Name: "h"}, time.Hour); err == nil || !strings.Contains(err.Error(), "P-224") {
		t.Errorf("P-224 request: %v", err)
	}
}

func TestTLSLoadCA(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, InitOptions{Agents: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	caFile, keyFile := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	ca, err := LoadCA(caFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// The loaded CA issues certificates that the files' CA verifies.
	certPEM, _, err := ca.IssueKeyPair(Identity{Kind: KindAgent, Name: "h2"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := LoadCertPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parsePEMCert(t, certPEM).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("certificate from the loaded CA: %v", err)
	}
	// SEC 1 EC keys load too.
	ecKey := filepath.Join(dir, "ec-key.pem")
	der, err := x509.MarshalECPrivateKey(ca.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ecKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(caFile, ecKey); err != nil {
		t.Errorf("SEC 1 key: %v", err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf, leafKey := filepath.Join(dir, "agent-h1.pem"), filepath.Join(dir, "agent-h1-key.pem")
	for _, c := range []struct{ cert, key, want string }{
		{leaf, leafKey, "is not a CA"},
		{caFile, leafKey, "does not belong"},
		{garbage, keyFile, garbage + ": no PEM CERTIFICATE"},
		{caFile, garbage, garbage + ": no PEM private key"},
		{filepath.Join(dir, "missing.pem"), keyFile, "missing.pem"},
		{caFile, caFile, "no PEM private key"},
	} {
		if _, err := LoadCA(c.cert, c.key); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadCA(%s, %s) error %v, want it to mention %q", c.cert, c.key, err, c.want)
		}
	}
}

func TestTLSCertNotAfter(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	before := time.Now()
	cert, _ := writePair(t, ca, dir, "a", Identity{Kind: KindAgent, Name: "a"}, nil) // valid for an hour
	after := time.Now()
	got, err := CertNotAfter(cert)
	if err != nil {
		t.Fatal(err)
	}
	if got.Before(before.Add(time.Hour).Truncate(time.Second)) || got.After(after.Add(time.Hour)) {
		t.Errorf("CertNotAfter = %v, want an hour after the issue (%v .. %v)", got, before, after)
	}
	if _, err := CertNotAfter(filepath.Join(dir, "nope.pem")); err == nil || !strings.Contains(err.Error(), "nope.pem") {
		t.Errorf("missing file: %v", err)
	}
}
