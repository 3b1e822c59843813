package store

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// A client port taken between its choice and etcd's bind is replaced by
// another, instead of failing the coordinator's start.
func TestStartEmbeddedRetriesATakenPort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })
	emb, err := StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatalf("start with the first port taken: %v", err)
	}
	defer emb.Close()
	if calls != 2 {
		t.Errorf("picked %d ports, want 2", calls)
	}
	if strings.Contains(emb.Endpoints[0], ":"+strconv.Itoa(taken)) {
		t.Errorf("endpoint %s uses the taken port", emb.Endpoints[0])
	}
}

// The embedded etcd is the coordinator's alone (issue 13: any local process
// could write an admin token into it). Another local client is refused on
// both listeners, whether it speaks plain text, TLS without a certificate,
// TLS with a certificate of another CA, or presents the server certificate
// it read from the data directory; the coordinator's own client works.
func TestEmbeddedEtcdRefusesOtherLocalClients(t *testing.T) {
	dir := t.TempDir()
	emb, err := StartEmbedded(dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	cu, err := url.Parse(emb.Endpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	listeners := map[string]string{"client": cu.Host, "peer": emb.e.Peers[0].Addr().String()}

	foreign := foreignCert(t)
	stolen, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls", "server.pem"), filepath.Join(dir, "tls", "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for name, addr := range listeners {
		// Plain text: what etcdctl or curl without TLS would do.
		if line := plainGet(t, addr); strings.Contains(line, " 200 ") {
			t.Errorf("%s listener %s: a plain GET /version was answered %q", name, addr, line)
		}
		for what, certs := range map[string][]tls.Certificate{
			"no certificate":                    nil,
			"a certificate of another CA":       {foreign},
			"the server's certificate (stolen)": {stolen},
		} {
			if err := tlsGet(addr, certs); err == nil {
				t.Errorf("%s listener %s: a TLS client with %s was served", name, addr, what)
			} else {
				t.Logf("%s listener, %s: %v", name, what, err)
			}
		}
	}

	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), "/k", "v"); err != nil {
		t.Fatalf("the coordinator's own client: %v", err)
	}

	// What is on disk: the CA and the server's pair, private to the owner;
	// no client key.
	if fi, err := os.Stat(filepath.Join(dir, "tls")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("tls dir: %v %v, want mode 0700", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "tls"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	if strings.Join(names, " ") != "ca.pem server-key.pem server.pem" {
		t.Errorf("tls dir holds %v, want ca.pem server-key.pem server.pem", names)
	}
}

// plainGet sends a plain HTTP request for etcd's version and returns the
// status line of whatever answered.
func plainGet(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")); err != nil {
		return err.Error()
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err.Error()
	}
	return line
}

// tlsGet asks for etcd's version over TLS 1.3 with certs (the server is not
// verified: the attacker does not care who answers). In TLS 1.3 a refused
// client certificate shows as an alert on the first read.
func tlsGet(addr string, certs []tls.Certificate) error {
	tc := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		// Present the certificate whatever CAs the server asks for.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if len(certs) == 0 {
				return &tls.Certificate{}, nil
			}
			return &certs[0], nil
		}}
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.Contains(line, " 200 ") {
		return nil
	}
	return &refused{line}
}

type refused struct{ line string }

func (r *refused) Error() string { return "answered " + r.line }

// foreignCert is a client certificate from a CA of its own.
func foreignCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "intruder"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true, IsCA: true}
	der, _, err := signCert(tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A restart over an existing data directory keeps the data and makes new
// certificates: the client of the earlier start is refused. A data
// directory written by an older coordinator (plain-text URLs recorded in
// etcd's membership) starts too.
func TestEmbeddedEtcdRestartsOverItsData(t *testing.T) {
	dir := t.TempDir()
	// An older coordinator's etcd: plain http on both listeners.
	old := embed.NewConfig()
	old.Name = "fleetwave"
	old.Dir = filepath.Join(dir, "etcd")
	old.LogLevel = "error"
	old.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(ports.Port(t)))
	pu, _ := url.Parse("http://127.0.0.1:0")
	old.ListenClientUrls, old.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	old.ListenPeerUrls, old.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	old.InitialCluster = old.InitialClusterFromName(old.Name)
	e, err := embed.StartEtcd(old)
	if err != nil {
		t.Fatal(err)
	}
	<-e.Server.ReadyNotify()
	pc, err := Dial([]string{cu.String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Put(context.Background(), "/old", "1"); err != nil {
		t.Fatal(err)
	}
	pc.Close()
	e.Close()

	var before *Embedded
	for i := range 2 {
		emb, err := StartEmbedded(dir, zerolog.Nop())
		if err != nil {
			t.Fatalf("start %d over the existing data dir: %v", i+1, err)
		}
		cli, err := emb.Dial()
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(context.Background(), "/old")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "1" {
			t.Fatalf("start %d: /old = %v, %v; want the value written before", i+1, resp, err)
		}
		cli.Close()
		if before != nil {
			// The earlier start's client certificate is worth nothing now.
			u, _ := url.Parse(emb.Endpoints[0])
			if err := tlsGet(u.Host, before.ClientTLS.Certificates); err == nil {
				t.Error("the client certificate of the earlier start was accepted")
			}
		}
		emb.Close()
		before = emb
	}
}
