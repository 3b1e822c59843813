package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// issuer is a coordinator's AgentService over TLS on a real socket that
// answers Join and Renew as answer says.
type issuer struct {
	v1.UnimplementedAgentServiceServer
	ca     *tlsutil.CA
	answer func(csr []byte) []byte
}

func (i *issuer) Join(_ context.Context, req *v1.JoinRequest) (*v1.JoinResponse, error) {
	return &v1.JoinResponse{Certificate: &v1.IssuedCertificate{CertificateChain: i.answer(req.GetCsr())}}, nil
}

func (i *issuer) Renew(_ context.Context, req *v1.RenewRequest) (*v1.RenewResponse, error) {
	return &v1.RenewResponse{Certificate: &v1.IssuedCertificate{CertificateChain: i.answer(req.GetCsr())}}, nil
}

// tlsAgent is an agent joined as h1 (its certificate and key in its data
// dir's tls/, from the fleet's CA in pki) connected to iss.
func tlsAgent(t *testing.T, iss *issuer) (a *agent, pki string) {
	t.Helper()
	pki = t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	ca, err := tlsutil.LoadCA(filepath.Join(pki, tlsutil.CAFile), filepath.Join(pki, tlsutil.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	iss.ca = ca
	data := t.TempDir()
	if err := os.MkdirAll(filepath.Join(data, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{"agent-h1.pem": "agent.pem", "agent-h1-key.pem": "agent-key.pem"} {
		b, err := os.ReadFile(filepath.Join(pki, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "tls", to), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	scfg, err := tlsutil.ServerConfig(filepath.Join(pki, "coordinator-c1.pem"), filepath.Join(pki, "coordinator-c1-key.pem"), filepath.Join(pki, tlsutil.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(scfg)))
	v1.RegisterAgentServiceServer(srv, iss)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	token := filepath.Join(data, "join-token")
	if err := os.WriteFile(token, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a = &agent{cfg: Config{DataDir: data, HostID: "h1", TLSCA: filepath.Join(pki, tlsutil.CAFile), JoinTokenFile: token,
		Coordinators: []string{lis.Addr().String()}}, conns: newConnHolder(), log: testLogger(t), rnd: mrand.New(mrand.NewPCG(1, 2))}
	cert, key := a.certPaths()
	ccfg, err := tlsutil.ClientConfig(cert, key, a.cfg.TLSCA)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(ccfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	a.conns.set(cc)
	return a, pki
}

// selfSigned is a certificate for the CSR's key naming agent h1, signed by
// a key of its own, not the fleet's CA.
func selfSigned(t *testing.T, csr []byte) []byte {
	t.Helper()
	req, err := x509.ParseCertificateRequest(csr)
	if err != nil {
		t.Error(err)
		return nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Error(err)
		return nil
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		URIs: []*url.URL{tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "h1"}.URI()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, req.PublicKey, k)
	if err != nil {
		t.Error(err)
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestRenewRefusesWhatIsNotItsCertificate: a coordinator (compromised, or
// broken) that answers a renewal with garbage, a certificate the fleet's CA
// did not sign, one for another host or one for another key changes
// nothing on the host: the agent keeps its certificate and key (before, it
// saved any answer, key first, and was cut off from every coordinator; a
// foreign certificate that looked valid kept it from ever joining again).
// A certificate of the CA for this host and the new key is saved.
func TestRenewRefusesWhatIsNotItsCertificate(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(t *testing.T, ca *tlsutil.CA, csr []byte) []byte
	}{
		{"garbage", func(*testing.T, *tlsutil.CA, []byte) []byte { return []byte("not a certificate") }},
		{"signed by another key", func(t *testing.T, _ *tlsutil.CA, csr []byte) []byte { return selfSigned(t, csr) }},
		{"for another host", func(t *testing.T, ca *tlsutil.CA, csr []byte) []byte {
			p, _, err := ca.SignCSR(csr, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "h2"}, time.Hour)
			if err != nil {
				t.Error(err)
			}
			return p
		}},
		{"for another key", func(t *testing.T, ca *tlsutil.CA, _ []byte) []byte {
			p, _, err := ca.IssueKeyPair(tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "h1"}, nil, time.Hour)
			if err != nil {
				t.Error(err)
			}
			return p
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			iss := &issuer{}
			a, _ := tlsAgent(t, iss)
			iss.answer = func(csr []byte) []byte { return c.answer(t, iss.ca, csr) }
			cert, key := a.certPaths()
			before := [][]byte{readBytes(t, cert), readBytes(t, key)}
			err := a.renew(context.Background())
			if !errors.Is(err, tlsutil.ErrBadIssued) {
				t.Fatalf("renew = %v, want ErrBadIssued", err)
			}
			if !bytes.Equal(readBytes(t, cert), before[0]) || !bytes.Equal(readBytes(t, key), before[1]) {
				t.Fatal("the certificate or key changed on a refused renewal")
			}
		})
	}
	t.Run("the CA's certificate for this host and the new key", func(t *testing.T) {
		iss := &issuer{}
		a, _ := tlsAgent(t, iss)
		iss.answer = func(csr []byte) []byte {
			p, _, err := iss.ca.SignCSR(csr, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "h1"}, time.Hour)
			if err != nil {
				t.Error(err)
			}
			return p
		}
		cert, key := a.certPaths()
		before := readBytes(t, cert)
		if err := a.renew(context.Background()); err != nil {
			t.Fatalf("renew: %v", err)
		}
		if bytes.Equal(readBytes(t, cert), before) {
			t.Fatal("the renewed certificate was not saved")
		}
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			t.Fatalf("the saved pair: %v", err)
		}
	})
}

// TestJoinRefusesWhatIsNotItsCertificate: a join answered with a
// certificate the fleet's CA did not sign writes no key or certificate and
// says the token is spent (asking another coordinator would not help).
func TestJoinRefusesWhatIsNotItsCertificate(t *testing.T) {
	iss := &issuer{}
	a, _ := tlsAgent(t, iss)
	iss.answer = func(csr []byte) []byte { return selfSigned(t, csr) }
	cert, key := a.certPaths()
	for _, f := range []string{cert, key} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	err := a.join(context.Background())
	if !errors.Is(err, tlsutil.ErrBadIssued) || !strings.Contains(err.Error(), "the join token is spent") {
		t.Fatalf("join = %v, want ErrBadIssued saying the token is spent", err)
	}
	for _, f := range []string{cert, key} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after a refused join: %v", f, err)
		}
	}
}

// TestStoredForeignCertificateKept: a stored certificate the CA file does
// not verify (saved by an agent from before the check, or a CA rotation
// that changed --tls-ca first) is used as it is, the reason logged: the
// agent does not trade it for a join whose token is spent (a review).
func TestStoredForeignCertificateKept(t *testing.T) {
	iss := &issuer{}
	a, _ := tlsAgent(t, iss)
	var logs bytes.Buffer
	a.log = zerolog.New(&logs)
	cert, key := a.certPaths()
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := tlsutil.NewCSR(pair.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	foreign := selfSigned(t, csr)
	if err := os.WriteFile(cert, foreign, 0o600); err != nil {
		t.Fatal(err)
	}
	iss.answer = func([]byte) []byte {
		t.Error("the agent joined again")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.ensureCert(ctx); err != nil {
		t.Fatalf("ensureCert: %v", err)
	}
	if !bytes.Equal(readBytes(t, cert), foreign) {
		t.Fatal("the stored certificate changed")
	}
	if !strings.Contains(logs.String(), "does not verify against --tls-ca") || !strings.Contains(logs.String(), "issued certificate refused") {
		t.Fatalf("log %s: want the reason", logs.String())
	}
}

func readBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
