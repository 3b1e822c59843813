package tlsutil

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// initJoinFixture runs Init and serves the coordinator's certificate with
// the root as the only trusted CA.
func initJoinFixture(t *testing.T) (dir, addr string, root, join *CA) {
	t.Helper()
	dir = t.TempDir()
	if err := Init(dir, InitOptions{Coordinators: map[string][]string{"c1": nil}}); err != nil {
		t.Fatal(err)
	}
	var err error
	if root, err = LoadCA(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if join, err = LoadCA(filepath.Join(dir, JoinCAFile), filepath.Join(dir, JoinCAKeyFile)); err != nil {
		t.Fatal(err)
	}
	cfg, err := ServerConfig(filepath.Join(dir, "coordinator-c1.pem"), filepath.Join(dir, "coordinator-c1-key.pem"), filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	return dir, startServer(t, cfg), root, join
}

// signPair has ca sign a fresh key's CSR for id and writes the pair.
func signPair(t *testing.T, ca *CA, dir string, id Identity) (certFile, keyFile string) {
	t.Helper()
	key, keyPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignCSR(csr, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, id.Kind+"-"+id.Name+".pem"), filepath.Join(dir, id.Kind+"-"+id.Name+"-key.pem")
	if err := WriteKeyPair(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// The join CA that tls init makes signs agent certificates that chain to
// the root through it (sent along with the leaf), and nothing else: a
// certificate for an operator or a coordinator that its key signs does not
// verify, in x509 nor in a handshake.
func TestTLSJoinCAIssuesAgentsOnly(t *testing.T) {
	dir, addr, root, join := initJoinFixture(t)
	if !root.Root() || join.Root() {
		t.Fatalf("Root(): root %v, join CA %v", root.Root(), join.Root())
	}
	if !join.Cert.NotAfter.Before(root.Cert.NotAfter) || join.Cert.MaxPathLen != 0 || !join.Cert.MaxPathLenZero {
		t.Errorf("join CA: NotAfter %v (root %v), MaxPathLen %d", join.Cert.NotAfter, root.Cert.NotAfter, join.Cert.MaxPathLen)
	}
	pool, err := LoadCertPool(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	clientCfg := func(cert, key string) func() (string, error) {
		return func() (string, error) {
			cfg, err := ClientConfig(cert, key, filepath.Join(dir, CAFile))
			if err != nil {
				t.Fatal(err)
			}
			return check(t, addr, cfg)
		}
	}

	agentCert, agentKey := signPair(t, join, t.TempDir(), Identity{Kind: KindAgent, Name: "h1"})
	certs, err := readCertsFile(agentCert)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[1].Equal(join.Cert) {
		t.Fatalf("joined agent's file holds %d certificates, want the leaf and the join CA", len(certs))
	}
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("agent certificate from the join CA: %v", err)
	}
	if got, err := clientCfg(agentCert, agentKey)(); err != nil || got != "agent:h1" {
		t.Fatalf("agent from the join CA: server saw %q, %v", got, err)
	}

	for _, id := range []Identity{{Kind: KindOperator, Name: "mallory", Role: RoleAdmin}, {Kind: KindCoordinator, Name: "c9"}} {
		cert, key := signPair(t, join, t.TempDir(), id)
		c, err := readCertsFile(cert)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		var cie x509.CertificateInvalidError
		if !errors.As(err, &cie) || cie.Reason != x509.CANotAuthorizedForThisName {
			t.Errorf("%s from the join CA verified: %v, want CANotAuthorizedForThisName", id, err)
		}
		if got, err := clientCfg(cert, key)(); err == nil {
			t.Errorf("%s from the join CA: server accepted it as %q", id, got)
		}
	}
	// The join CA cannot make a CA below it.
	if _, err := join.NewJoinCA("sub", time.Hour); err == nil {
		t.Error("the join CA made another CA")
	}
}

// A PKI directory made before join CAs (a root with path length 0 and no
// join CA) keeps working: its root loads and signs joins as before, and
// is told it cannot have a join CA.
func TestTLSRootOnlyLayoutStillSigns(t *testing.T) {
	dir := t.TempDir()
	old := oldRoot(t)
	caFile := writeCA(t, old, dir, CAFile)
	keyPEM, err := marshalKeyPEM(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(caFile, filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	coordCert, coordKey := writePair(t, ca, dir, "coordinator-c1", Identity{Kind: KindCoordinator, Name: "c1"}, nil)
	cfg, err := ServerConfig(coordCert, coordKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, cfg)
	cert, key := signPair(t, ca, dir, Identity{Kind: KindAgent, Name: "h1"})
	certs, err := readCertsFile(cert)
	if err != nil || len(certs) != 1 {
		t.Fatalf("root-signed agent file: %d certificates, %v; want the leaf alone", len(certs), err)
	}
	client, err := ClientConfig(cert, key, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := check(t, addr, client); err != nil || got != "agent:h1" {
		t.Fatalf("root-signed agent: %q, %v", got, err)
	}
	if _, err := ca.NewJoinCA("join", time.Hour); err == nil || !strings.Contains(err.Error(), "allows no intermediate") {
		t.Errorf("join CA under a path-length-0 root: %v", err)
	}
	if err := InitJoinCA(dir, 0); err == nil || !strings.Contains(err.Error(), "make a new root with tls init") {
		t.Errorf("InitJoinCA on an old root: %v", err)
	}
}

// oldRoot is a CA as tls init made them before join CAs: path length 0.
func oldRoot(t *testing.T) *CA {
	t.Helper()
	key, _, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "old CA"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: c, Key: key, CertPEM: pemEncode("CERTIFICATE", der)}
}

// InitJoinCA replaces the join CA from the root in the directory.
func TestTLSInitJoinCAReplaces(t *testing.T) {
	dir, _, _, join := initJoinFixture(t)
	if err := InitJoinCA(dir, 48*time.Hour); err != nil {
		t.Fatal(err)
	}
	next, err := LoadCA(filepath.Join(dir, JoinCAFile), filepath.Join(dir, JoinCAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if next.Cert.SerialNumber.Cmp(join.Cert.SerialNumber) == 0 || time.Until(next.Cert.NotAfter) > 49*time.Hour {
		t.Errorf("new join CA: serial %s (old %s), NotAfter %v", next.Cert.SerialNumber, join.Cert.SerialNumber, next.Cert.NotAfter)
	}
}

// A certificate signed "after" a time has an IssuedAt past it, even when
// that time is ahead of this clock; without a floor IssuedAt is about now.
func TestTLSSignCSRAfter(t *testing.T) {
	ca := newTestCA(t)
	key, _, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{Kind: KindAgent, Name: "h1"}
	for _, after := range []time.Time{{}, time.Now().Add(-time.Hour), time.Now(), time.Now().Add(20 * time.Second)} {
		before := time.Now()
		certPEM, notAfter, err := ca.SignCSRAfter(csr, id, 10*time.Minute, after)
		if err != nil {
			t.Fatal(err)
		}
		c := parsePEMCert(t, certPEM)
		got := IssuedAt(c)
		if !got.After(after) {
			t.Errorf("after %v: IssuedAt %v is not after it", after, got)
		}
		hi := time.Now()
		if a := after.Add(time.Second); a.After(hi) {
			hi = a
		}
		if lo := before.Truncate(time.Second); got.Before(lo) || got.After(hi) {
			t.Errorf("after %v: IssuedAt %v, want within %v .. %v", after, got, before, hi)
		}
		if want := got.Add(10 * time.Minute); notAfter.Sub(c.NotAfter).Abs() >= time.Second || c.NotAfter.Sub(want).Abs() > time.Second {
			t.Errorf("after %v: NotAfter %v (returned %v), want about %v", after, c.NotAfter, notAfter, want)
		}
	}
}

// CheckRevocation refuses a peer in the handshake: a server refuses a
// client certificate, a client a server certificate, that check names;
// others pass, and a client without a certificate is not checked.
func TestTLSCheckRevocation(t *testing.T) {
	f := newFixture(t)
	agent, err := ReadCertFile(f.agentCert)
	if err != nil {
		t.Fatal(err)
	}
	refuse := func(serial *big.Int) func([]*x509.Certificate) error {
		return func(chain []*x509.Certificate) error {
			for _, c := range chain {
				if c.SerialNumber.Cmp(serial) == 0 {
					return fmt.Errorf("serial %s revoked", serial.Text(16))
				}
			}
			return nil
		}
	}
	cfg, err := ServerConfig(f.coordCert, f.coordKey, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	CheckRevocation(cfg, refuse(agent.SerialNumber))
	addr := startServer(t, cfg)
	_, err = check(t, addr, f.client(t, f.agentCert, f.agentKey))
	wantUnavailable(t, err)
	if _, err := handshake(addr, f.client(t, f.agentCert, f.agentKey)); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("revoked client certificate: handshake %v, want bad certificate", err)
	}
	if got, err := check(t, addr, f.client(t, f.operatorCert, f.operatorKey)); err != nil || got != "operator:alice (admin)" {
		t.Errorf("other client: %q, %v", got, err)
	}
	if got, err := check(t, addr, f.client(t, "", "")); err != nil || got != "" {
		t.Errorf("client without certificate: %q, %v", got, err)
	}

	// A client that checks the server's certificate.
	coord, err := ReadCertFile(f.coordCert)
	if err != nil {
		t.Fatal(err)
	}
	client := f.client(t, f.operatorCert, f.operatorKey)
	CheckRevocation(client, refuse(coord.SerialNumber))
	if _, err := handshake(f.addr, client); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked server certificate: %v", err)
	}
	client = f.client(t, f.operatorCert, f.operatorKey)
	CheckRevocation(client, refuse(big.NewInt(1)))
	if _, err := handshake(f.addr, client); err != nil {
		t.Errorf("server certificate not revoked: %v", err)
	}
}
