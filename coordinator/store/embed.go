package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// Embedded is a single-node etcd server running inside the coordinator.
//
// It is served only to the coordinator that started it: both its listeners
// (client and peer) are TLS on loopback and require a client certificate
// from a CA made at each start and kept in memory only. The CA's key is
// dropped once the two certificates below are made, and the only client
// certificate (ClientTLS) never leaves memory, so no other local process,
// not even one that can read the data directory, can connect: it would
// need a certificate from a CA whose key no longer exists anywhere.
type Embedded struct {
	e         *embed.Etcd
	Endpoints []string
	// ClientTLS is the only way in: give it to DialTLS with Endpoints.
	ClientTLS *tls.Config
}

// embedCertLifetime is how long the certificates of one start are valid:
// longer than any coordinator process lives (each start makes new ones).
const embedCertLifetime = 20 * 365 * 24 * time.Hour

// StartEmbedded starts etcd's own server code on loopback with its data in
// dir/etcd, its log in dir/etcd.log and the public half of this start's
// certificates in dir/tls, and waits until it is ready. It picks a free
// client port (tried again with another when somebody took it between the
// choice and etcd's bind).
func StartEmbedded(dir string, log zerolog.Logger) (*Embedded, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd dir %s: %w", dir, err)
	}
	pki, err := newEmbedPKI(filepath.Join(dir, "tls"))
	if err != nil {
		return nil, fmt.Errorf("embedded etcd certificates: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "fleetwave"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.MaxRequestBytes = 16 << 20
	// Room for any --etcd-max-txn-ops the coordinator takes (its default
	// with this etcd is EmbeddedMaxTxnOps).
	cfg.MaxTxnOps = MaxMaxTxnOps
	cfg.QuotaBackendBytes = EmbeddedQuotaBytes
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "10000"
	// Only the gRPC API, over client-certificate TLS. The JSON gateway
	// would dial the server as a client with the server's certificate,
	// which may not act as one.
	cfg.EnableGRPCGateway = false
	cfg.ClientTLSInfo = pki.info
	cfg.PeerTLSInfo = pki.info
	// A single member never talks to peers, but etcd needs a peer
	// listener: it takes a port as it binds (port 0) and requires the same
	// client certificate as the client port, so it is no door either.
	pu, _ := url.Parse("https://127.0.0.1:0")
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// The client URL is also what the member advertises (cluster status
	// reads it back), so it needs a real port: one that was free a moment
	// ago, tried again with another when somebody took it in between.
	const attempts = 5
	for attempt := 1; ; attempt++ {
		p, err := pickPort()
		if err != nil {
			return nil, err
		}
		cu, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d", p))
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			if attempt < attempts && errors.Is(err, syscall.EADDRINUSE) {
				log.Warn().Err(err).Int("attempt", attempt).Msg("embedded etcd client port taken; trying another")
				continue
			}
			return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
		}
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			e.Close()
			return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
		case <-time.After(60 * time.Second):
			e.Server.Stop()
			e.Close()
			return nil, fmt.Errorf("embedded etcd in %s: not ready after 60s", cfg.Dir)
		}
		log.Info().Str("endpoint", cu.String()).Str("path", cfg.Dir).Msg("embedded etcd ready (TLS, client certificate of this process only)")
		return &Embedded{e: e, Endpoints: []string{cu.String()}, ClientTLS: pki.client}, nil
	}
}

// EmbeddedQuotaBytes is the embedded etcd's backend quota (etcd refuses
// writes, raising a NOSPACE alarm, when its database reaches it).
const EmbeddedQuotaBytes = 4 << 30

// embedPKI is one start's certificates: the server's (on disk, for etcd,
// which reads its files on every handshake; it may only serve) and the
// client's (in memory only).
type embedPKI struct {
	info   transport.TLSInfo
	client *tls.Config
}

// newEmbedPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, writes the CA and server files into dir (0700; keys 0600,
// replacing those of an earlier start) and forgets the CA's key.
func newEmbedPKI(dir string) (*embedPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "fleetwave embedded etcd CA (this start only)"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(embedCertLifetime),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caCert, err := signCert(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	issue := func(cn string, eku x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		der, _, err := signCert(&x509.Certificate{
			Subject:     pkix.Name{CommonName: cn},
			NotBefore:   now.Add(-time.Minute),
			NotAfter:    now.Add(embedCertLifetime),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{eku},
			IPAddresses: ips,
		}, caCert, &key.PublicKey, caKey)
		return der, key, err
	}
	// The server certificate may only serve: one that reads it from the
	// disk cannot present it as a client.
	srvDER, srvKey, err := issue("fleetwave embedded etcd", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	cliDER, cliKey, err := issue("fleetwave coordinator", x509.ExtKeyUsageClientAuth, nil)
	if err != nil {
		return nil, err
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return nil, err
	}
	p := &embedPKI{info: transport.TLSInfo{
		CertFile:       filepath.Join(dir, "server.pem"),
		KeyFile:        filepath.Join(dir, "server-key.pem"),
		TrustedCAFile:  filepath.Join(dir, "ca.pem"),
		ClientCertAuth: true,
		MinVersion:     tls.VersionTLS13,
	}}
	for _, f := range []struct {
		name, typ string
		der       []byte
	}{{p.info.TrustedCAFile, "CERTIFICATE", caDER}, {p.info.CertFile, "CERTIFICATE", srvDER}, {p.info.KeyFile, "EC PRIVATE KEY", srvKeyDER}} {
		if err := writeFile0600(f.name, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	p.client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cliDER}, PrivateKey: cliKey}},
	}
	return p, nil
}

func signCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return der, c, err
}

// writeFile0600 replaces file with data, readable by the owner only.
func writeFile0600(file string, data []byte) error {
	tmp := file + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// pickPort chooses the embedded etcd's client port (a variable for tests).
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Dial connects to the embedded etcd with its client certificate.
func (e *Embedded) Dial() (*clientv3.Client, error) { return DialTLS(e.Endpoints, e.ClientTLS) }

// Err delivers fatal server errors.
func (e *Embedded) Err() <-chan error { return e.e.Err() }

// Close stops the server.
func (e *Embedded) Close() { e.e.Close() }
