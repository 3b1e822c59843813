package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Agent-to-agent TLS (peer-to-peer artifacts): both ends present their host
// certificate, and each requires the other's to chain to the fleet's CA and
// name an agent. The client also requires the agent it meant to reach.

// ErrNotAgent is returned (wrapped) by a peer handshake when the other
// end's verified certificate does not name a fleetwave agent (or not the
// agent the client asked for).
var ErrNotAgent = errors.New("peer is not the expected fleetwave agent")

// PeerServerConfig is the TLS configuration of an agent's peer listener:
// like ServerConfig (TLS 1.3, files re-read when they change), but a client
// certificate is required and must name an agent.
func PeerServerConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	cfg, err := ServerConfig(certFile, keyFile, caFile)
	if err != nil {
		return nil, fmt.Errorf("peer %w", err)
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
			return errors.New("client sent no verified certificate")
		}
		id, err := IdentityFromCert(cs.VerifiedChains[0][0])
		if err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
		if id.Kind != KindAgent {
			return fmt.Errorf("%w: the client's certificate names %s", ErrNotAgent, id)
		}
		return nil
	}
	return cfg, nil
}

// PeerClientConfig is the TLS configuration for fetching from the agent of
// host wantHost: TLS 1.3, this agent's certificate (re-read when its files
// change), and the server's chain verified against caFile with its
// identity required to be agent/wantHost.
func PeerClientConfig(certFile, keyFile, caFile, wantHost string) (*tls.Config, error) {
	cfg, err := ClientConfig(certFile, keyFile, caFile)
	if err != nil {
		return nil, fmt.Errorf("peer %w", err)
	}
	if certFile == "" {
		return nil, errors.New("peer client TLS: a certificate is required")
	}
	pool, err := LoadCertPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("peer client TLS: %w", err)
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		id, err := verifyServer(cs.PeerCertificates, pool, time.Now())
		if err != nil {
			return err
		}
		if id.Kind != KindAgent || id.Name != wantHost {
			return fmt.Errorf("%w: want agent:%s, its certificate names %s", ErrNotAgent, wantHost, id)
		}
		return nil
	}
	return cfg, nil
}

// verifyServer verifies a server's chain against roots at now (server
// authentication) and returns the identity of its leaf.
func verifyServer(certs []*x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, error) {
	if len(certs) == 0 {
		return Identity{}, errors.New("server sent no certificate")
	}
	leaf := certs[0]
	if err := verifyChain(certs, roots, now, x509.ExtKeyUsageServerAuth); err != nil {
		return Identity{}, fmt.Errorf("server certificate %q: %w", leaf.Subject.CommonName, err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return Identity{}, fmt.Errorf("server certificate: %w", err)
	}
	return id, nil
}

// verifyChain verifies certs' leaf (certs[0]; the others are
// intermediates) against roots at now for usage.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, now time.Time, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	return err
}
