package tlsutil

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

type fixture struct {
	dir, caFile               string
	ca                        *CA
	coordCert, coordKey       string
	agentCert, agentKey       string
	operatorCert, operatorKey string
	addr                      string // a server with the coordinator certificate
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), ca: newTestCA(t)}
	f.caFile = writeCA(t, f.ca, f.dir, "ca.pem")
	f.coordCert, f.coordKey = writePair(t, f.ca, f.dir, "coordinator-c1", Identity{Kind: KindCoordinator, Name: "c1"}, []string{"localhost", "127.0.0.1"})
	f.agentCert, f.agentKey = writePair(t, f.ca, f.dir, "agent-host-1", Identity{Kind: KindAgent, Name: "host-1"}, nil)
	f.operatorCert, f.operatorKey = writePair(t, f.ca, f.dir, "operator-alice", Identity{Kind: KindOperator, Name: "alice", Role: RoleAdmin}, nil)
	cfg, err := ServerConfig(f.coordCert, f.coordKey, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	f.addr = startServer(t, cfg)
	return f
}

func (f *fixture) client(t *testing.T, cert, key string) *tls.Config {
	t.Helper()
	cfg, err := ClientConfig(cert, key, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func wantUnavailable(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("call succeeded, want it refused")
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call error %v, want Unavailable", err)
	}
}

func TestTLSMutualAgentAndOperator(t *testing.T) {
	f := newFixture(t)
	got, err := check(t, f.addr, f.client(t, f.agentCert, f.agentKey))
	if err != nil {
		t.Fatal(err)
	}
	if got != "agent:host-1" {
		t.Errorf("server saw %q, want agent:host-1", got)
	}
	got, err = check(t, f.addr, f.client(t, f.operatorCert, f.operatorKey))
	if err != nil {
		t.Fatal(err)
	}
	if got != "operator:alice (admin)" {
		t.Errorf("server saw %q, want operator:alice (admin)", got)
	}
}

func TestTLSClientWithoutCertificate(t *testing.T) {
	f := newFixture(t)
	got, err := check(t, f.addr, f.client(t, "", ""))
	if err != nil {
		t.Fatalf("client without certificate refused: %v", err)
	}
	if got != "" {
		t.Errorf("server saw identity %q for a client without certificate", got)
	}
}

func TestTLSClientCertFromAnotherCA(t *testing.T) {
	f := newFixture(t)
	other := newTestCA(t)
	cert, key := writePair(t, other, t.TempDir(), "agent-host-1", Identity{Kind: KindAgent, Name: "host-1"}, nil)
	_, err := check(t, f.addr, f.client(t, cert, key))
	wantUnavailable(t, err)
	_, err = handshake(f.addr, f.client(t, cert, key))
	if err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Fatalf("handshake error %v, want unknown certificate authority", err)
	}
}

func TestTLSExpiredClientCert(t *testing.T) {
	f := newFixture(t)
	key, keyPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c := rawCert(t, f.ca, key.Public(), []*url.URL{Identity{Kind: KindAgent, Name: "host-1"}.URI()}, now.Add(-2*time.Hour), now.Add(-time.Hour))
	dir := t.TempDir()
	certFile, keyFile := dir+"/agent.pem", dir+"/agent-key.pem"
	if err := WriteKeyPair(certFile, keyFile, pemEncode("CERTIFICATE", c.Raw), keyPEM); err != nil {
		t.Fatal(err)
	}
	_, err = check(t, f.addr, f.client(t, certFile, keyFile))
	wantUnavailable(t, err)
	_, err = handshake(f.addr, f.client(t, certFile, keyFile))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("handshake error %v, want a certificate alert", err)
	}
}

func TestTLSServerMustBeCoordinator(t *testing.T) {
	f := newFixture(t)
	// A server presenting an agent's (or an operator's) certificate from the
	// right CA cannot pose as a coordinator.
	for _, pair := range [][2]string{{f.agentCert, f.agentKey}, {f.operatorCert, f.operatorKey}} {
		cfg, err := ServerConfig(pair[0], pair[1], f.caFile)
		if err != nil {
			t.Fatal(err)
		}
		addr := startServer(t, cfg)
		_, err = check(t, addr, f.client(t, f.agentCert, f.agentKey))
		wantUnavailable(t, err)
		_, err = handshake(addr, f.client(t, f.agentCert, f.agentKey))
		if !errors.Is(err, ErrNotCoordinator) {
			t.Fatalf("handshake with %s: error %v, want ErrNotCoordinator", pair[0], err)
		}
	}
	// The genuine coordinator passes, with no host name to match.
	if _, err := handshake(f.addr, f.client(t, "", "")); err != nil {
		t.Fatalf("handshake with the coordinator: %v", err)
	}
}

func TestTLSServerFromAnotherCA(t *testing.T) {
	f := newFixture(t)
	other := newTestCA(t)
	dir := t.TempDir()
	cert, key := writePair(t, other, dir, "coordinator-evil", Identity{Kind: KindCoordinator, Name: "c1"}, []string{"127.0.0.1"})
	cfg, err := ServerConfig(cert, key, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, cfg)
	_, err = check(t, addr, f.client(t, f.agentCert, f.agentKey))
	wantUnavailable(t, err)
	_, err = handshake(addr, f.client(t, "", ""))
	if err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("handshake error %v, want unknown authority", err)
	}
}

func TestTLS12ClientRefused(t *testing.T) {
	f := newFixture(t)
	cfg := f.client(t, f.agentCert, f.agentKey)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	_, err := handshake(f.addr, cfg)
	if err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.2 handshake error %v, want a protocol version alert", err)
	}
	_, err = check(t, f.addr, cfg)
	wantUnavailable(t, err)
}

func TestTLSServerReloadsReplacedCert(t *testing.T) {
	f := newFixture(t)
	client := f.client(t, "", "")
	leaf, err := handshake(f.addr, client)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := IdentityFromCert(leaf); id.Name != "c1" {
		t.Fatalf("server presents %v, want coordinator c1", id)
	}
	// Replace the files with a certificate for another coordinator, and make
	// sure the modification time moves even on a coarse file system.
	certPEM, keyPEM, err := f.ca.IssueKeyPair(Identity{Kind: KindCoordinator, Name: "c2"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyPair(f.coordCert, f.coordKey, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	for _, file := range []string{f.coordCert, f.coordKey} {
		if err := os.Chtimes(file, later, later); err != nil {
			t.Fatal(err)
		}
	}
	testkit.EventuallyErr(t, 30*time.Second, "the server presenting the replaced certificate", func() error {
		leaf, err := handshake(f.addr, client)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := IdentityFromCert(leaf); id.Name != "c2" {
			return fmt.Errorf("server still presents %v", id)
		}
		return nil
	})
}

func TestTLSClientReloadsRenewedCert(t *testing.T) {
	f := newFixture(t)
	client := f.client(t, f.agentCert, f.agentKey)
	if got, err := check(t, f.addr, client); err != nil || got != "agent:host-1" {
		t.Fatalf("first call: %q, %v", got, err)
	}
	// Renew: same files, now naming host-2 (so the server tells them apart).
	key, keyPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := f.ca.SignCSR(csr, Identity{Kind: KindAgent, Name: "host-2"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyPair(f.agentCert, f.agentKey, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	for _, file := range []string{f.agentCert, f.agentKey} {
		if err := os.Chtimes(file, later, later); err != nil {
			t.Fatal(err)
		}
	}
	testkit.EventuallyErr(t, 30*time.Second, "the server seeing the client's renewed certificate", func() error {
		got, err := check(t, f.addr, client)
		if err != nil {
			t.Fatal(err)
		}
		if got != "agent:host-2" {
			return fmt.Errorf("server still sees %q", got)
		}
		return nil
	})
}

func TestTLSKeyPairReloadRules(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := writePair(t, ca, dir, "c", Identity{Kind: KindCoordinator, Name: "c1"}, nil)
	kp, err := newKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	kp.now = func() time.Time { return now }
	kp.checked = now
	name := func() string {
		id, err := IdentityFromCert(kp.get().Leaf)
		if err != nil {
			t.Fatal(err)
		}
		return id.Name
	}
	bump := func(files ...string) {
		t.Helper()
		ts := time.Now().Add(time.Duration(len(files)) * time.Hour)
		for _, f := range files {
			if err := os.Chtimes(f, ts, ts); err != nil {
				t.Fatal(err)
			}
		}
	}
	if name() != "c1" {
		t.Fatal("initial certificate not served")
	}
	// Replaced files are not looked at within the interval.
	certPEM, keyPEM, err := ca.IssueKeyPair(Identity{Kind: KindCoordinator, Name: "c2"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyPair(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	bump(certFile, keyFile)
	now = now.Add(reloadInterval / 2)
	if got := name(); got != "c1" {
		t.Fatalf("reloaded within the interval: %s", got)
	}
	now = now.Add(reloadInterval)
	if got := name(); got != "c2" {
		t.Fatalf("not reloaded after the interval: %s", got)
	}
	// A half-renewed pair (new certificate, old key) keeps the last good one.
	certPEM3, keyPEM3, err := ca.IssueKeyPair(Identity{Kind: KindCoordinator, Name: "c3"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(certFile, certPEM3, 0o644); err != nil {
		t.Fatal(err)
	}
	bump(certFile)
	now = now.Add(2 * reloadInterval)
	if got := name(); got != "c2" {
		t.Fatalf("mismatched pair served: %s", got)
	}
	// Garbage in the files keeps it too.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * reloadInterval)
	if got := name(); got != "c2" {
		t.Fatalf("after a garbage key: %s", got)
	}
	// The key arrives: the new pair is picked up on the next check.
	if err := WriteFileAtomic(keyFile, keyPEM3, 0o600); err != nil {
		t.Fatal(err)
	}
	bump(certFile, keyFile, keyFile)
	now = now.Add(2 * reloadInterval)
	if got := name(); got != "c3" {
		t.Fatalf("completed pair not picked up: %s", got)
	}
	// Deleted files keep the last good pair.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * reloadInterval)
	if got := name(); got != "c3" {
		t.Fatalf("after deleting the certificate: %s", got)
	}
}

func TestTLSConfigErrorsNameTheFile(t *testing.T) {
	f := newFixture(t)
	garbage := f.dir + "/garbage.pem"
	if err := os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := f.dir + "/missing.pem"
	cases := []struct {
		name string
		fn   func() error
		want string
	}{
		{"server missing CA", func() error { _, err := ServerConfig(f.coordCert, f.coordKey, missing); return err }, missing},
		{"server garbage CA", func() error { _, err := ServerConfig(f.coordCert, f.coordKey, garbage); return err }, garbage},
		{"server key as CA", func() error { _, err := ServerConfig(f.coordCert, f.coordKey, f.coordKey); return err }, "no PEM CERTIFICATE"},
		{"server missing cert", func() error { _, err := ServerConfig(missing, f.coordKey, f.caFile); return err }, missing},
		{"server mismatched key", func() error { _, err := ServerConfig(f.coordCert, f.agentKey, f.caFile); return err }, f.agentKey},
		{"server cert as key", func() error { _, err := ServerConfig(f.coordCert, f.coordCert, f.caFile); return err }, "no PEM private key"},
		{"client cert without key", func() error { _, err := ClientConfig(f.agentCert, "", f.caFile); return err }, "give both or neither"},
		{"client garbage cert", func() error { _, err := ClientConfig(garbage, f.agentKey, f.caFile); return err }, garbage},
		{"client no CA", func() error { _, err := ClientConfig("", "", ""); return err }, "CA file"},
	}
	for _, c := range cases {
		err := c.fn()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to mention %q", c.name, err, c.want)
		}
	}
}
