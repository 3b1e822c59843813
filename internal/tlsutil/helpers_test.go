package tlsutil

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// writePair issues a key pair for id and writes it to dir/<name>.pem and
// dir/<name>-key.pem.
func writePair(t *testing.T, ca *CA, dir, name string, id Identity, hosts []string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueKeyPair(id, hosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := WriteKeyPair(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func writeCA(t *testing.T, ca *CA, dir, name string) string {
	t.Helper()
	f := filepath.Join(dir, name)
	if err := os.WriteFile(f, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// rawCert signs a certificate with arbitrary fields, for cases Issue
// refuses to make (expired, odd SANs).
func rawCert(t *testing.T, ca *CA, pub crypto.PublicKey, uris []*url.URL, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "raw"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// healthRecorder answers Check with the caller's PeerIdentity in headers.
type healthRecorder struct {
	grpc_health_v1.UnimplementedHealthServer
}

func (healthRecorder) Check(ctx context.Context, _ *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	md := metadata.Pairs("peer-verified", "false")
	if id, ok := PeerIdentity(ctx); ok {
		md = metadata.Pairs("peer-verified", "true", "peer-identity", id.String())
	}
	if err := grpc.SetHeader(ctx, md); err != nil {
		return nil, err
	}
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

// startServer serves the health recorder over TLS on loopback.
func startServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	grpc_health_v1.RegisterHealthServer(srv, healthRecorder{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// check makes one health call with cfg and returns the identity the server
// saw ("" when none was verified).
func check(t *testing.T, addr string, cfg *tls.Config) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var hdr metadata.MD
	resp, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{}, grpc.Header(&hdr))
	if err != nil {
		return "", err
	}
	if resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health status %v", resp.GetStatus())
	}
	if v := hdr.Get("peer-verified"); len(v) != 1 {
		t.Fatalf("no peer-verified header: %v", hdr)
	} else if v[0] == "false" {
		return "", nil
	}
	return hdr.Get("peer-identity")[0], nil
}

// handshake dials addr with cfg, completes the TLS handshake and reads the
// server's first bytes (its HTTP/2 settings), so that a client certificate
// the server refuses after the client's side of a TLS 1.3 handshake is
// reported too. It returns the server's leaf certificate.
func handshake(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0], nil
}
