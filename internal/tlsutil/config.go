package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// reloadInterval is how often, at most, a keyPair looks at its files.
const reloadInterval = time.Second

// ServerConfig returns the TLS configuration of a Fleetwave gRPC server: TLS
// 1.3 only, presenting certFile/keyFile, and verifying a client certificate
// against caFile when the client sends one (tls.VerifyClientCertIfGiven):
// the coordinator serves the agents' Join call to clients without a
// certificate and authorises every call itself (see PeerIdentity). The
// certificate and key are re-read when their files change, checked at most
// once a second on a handshake; until a complete, matching pair has been
// read, the previous one is served.
func ServerConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	pool, err := LoadCertPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	kp, err := newKeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get(), nil
		},
	}, nil
}

// ClientConfig returns the TLS configuration of a client of a coordinator:
// TLS 1.3 only, trusting only caFile. It verifies the server's chain against
// that CA itself (InsecureSkipVerify with VerifyConnection, so no host name
// has to match) and requires the server's certificate to carry a
// KindCoordinator identity: an agent or operator certificate cannot pose as
// a coordinator. certFile and keyFile (both or neither) are the client's own
// certificate, re-read when the files change, so a renewed certificate is
// used on the next connection.
func ClientConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	pool, err := LoadCertPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		// The chain and the coordinator identity are checked in
		// VerifyConnection below; host names are not used.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyCoordinator(cs.PeerCertificates, pool, time.Now())
			return err
		},
	}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("client TLS: certificate file %q and key file %q: give both or neither", certFile, keyFile)
	default:
		kp, err := newKeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get(), nil
		}
	}
	return cfg, nil
}

// ErrNotCoordinator is returned (wrapped) by a client's handshake when the
// server's verified certificate does not name a coordinator.
var ErrNotCoordinator = errors.New("server is not a fleetwave coordinator")

// verifyCoordinator verifies a server's chain against roots at now and
// returns the coordinator identity of its leaf.
func verifyCoordinator(certs []*x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, error) {
	id, err := verifyServer(certs, roots, now)
	if err != nil {
		return Identity{}, err
	}
	if id.Kind != KindCoordinator {
		return Identity{}, fmt.Errorf("%w: its certificate names %s", ErrNotCoordinator, id)
	}
	return id, nil
}

// LoadCertPool reads every certificate in caFile into a new pool.
func LoadCertPool(caFile string) (*x509.CertPool, error) {
	data, err := readFileLimited("CA", caFile)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// fileStamp is what tells a keyPair that a file changed.
type fileStamp struct {
	mod  time.Time
	size int64
}

func (a fileStamp) same(b fileStamp) bool { return a.mod.Equal(b.mod) && a.size == b.size }

func stat(file string) (fileStamp, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// keyPair is a certificate and key read from files and re-read when either
// file changes (by modification time or size), looked at no more than once
// per interval. A pair that fails to load (half written, mismatched, gone)
// leaves the previous one in use; it is tried again after the interval.
type keyPair struct {
	certFile, keyFile string
	interval          time.Duration
	now               func() time.Time

	mu                  sync.Mutex
	cert                *tls.Certificate
	certStamp, keyStamp fileStamp
	checked             time.Time
}

func newKeyPair(certFile, keyFile string) (*keyPair, error) {
	kp := &keyPair{certFile: certFile, keyFile: keyFile, interval: reloadInterval, now: time.Now}
	cs, ks, err := kp.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	kp.cert, kp.certStamp, kp.keyStamp, kp.checked = cert, cs, ks, kp.now()
	return kp, nil
}

func (kp *keyPair) stamps() (cs, ks fileStamp, err error) {
	if kp.certFile == "" {
		return cs, ks, errors.New("certificate file: no path given")
	}
	if kp.keyFile == "" {
		return cs, ks, errors.New("key file: no path given")
	}
	if cs, err = stat(kp.certFile); err != nil {
		return cs, ks, fmt.Errorf("certificate file: %w", err)
	}
	if ks, err = stat(kp.keyFile); err != nil {
		return cs, ks, fmt.Errorf("key file: %w", err)
	}
	return cs, ks, nil
}

// get returns the current certificate, first re-reading the files when the
// interval has passed and they changed.
func (kp *keyPair) get() *tls.Certificate {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	now := kp.now()
	if now.Sub(kp.checked) < kp.interval && !now.Before(kp.checked) {
		return kp.cert
	}
	kp.checked = now
	cs, ks, err := kp.stamps()
	if err != nil || (cs.same(kp.certStamp) && ks.same(kp.keyStamp)) {
		return kp.cert
	}
	cert, err := loadKeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return kp.cert
	}
	kp.cert, kp.certStamp, kp.keyStamp = cert, cs, ks
	return kp.cert
}

// loadKeyPair reads a certificate chain and its key, with errors naming the
// files.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := readFileLimited("certificate", certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFileLimited("key", keyFile)
	if err != nil {
		return nil, err
	}
	if _, err := parseCertsPEM(certPEM); err != nil {
		return nil, fmt.Errorf("certificate file %s: %w", certFile, err)
	}
	if _, err := parseKeyPEM(keyPEM); err != nil {
		return nil, fmt.Errorf("key file %s: %w", keyFile, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate file %s with key file %s: %w", certFile, keyFile, err)
	}
	return &cert, nil
}

// CheckRevocation makes cfg (from ServerConfig or ClientConfig) call check
// with the peer's verified chain, leaf first, during every handshake, after
// the chain and (for a client) the coordinator identity were verified: an
// error refuses the connection (the peer sees a bad-certificate alert). A
// server's peer without a certificate is not checked.
func CheckRevocation(cfg *tls.Config, check func(chain []*x509.Certificate) error) {
	prev := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		// A server has the chain it verified; a client verified the chain
		// itself (ClientConfig), so every certificate the server sent is
		// checked, which can only refuse more.
		chain := cs.PeerCertificates
		if len(cs.VerifiedChains) > 0 {
			chain = cs.VerifiedChains[0]
		}
		if len(chain) == 0 {
			return nil
		}
		return check(chain)
	}
}
