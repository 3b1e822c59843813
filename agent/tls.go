package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// certPaths are where the agent's certificate and key are: the configured
// ones, or the ones it got by joining (DataDir/tls).
func (a *agent) certPaths() (cert, key string) {
	if a.cfg.TLSCert != "" {
		return a.cfg.TLSCert, a.cfg.TLSKey
	}
	dir := filepath.Join(a.cfg.DataDir, "tls")
	return filepath.Join(dir, "agent.pem"), filepath.Join(dir, "agent-key.pem")
}

// transport returns the credentials for a session to the coordinator at
// addr, refusing a coordinator certificate the agent's revocations cover
// (always: the agent fails closed, docs/SECURITY.md).
func (a *agent) transport(addr string) (credentials.TransportCredentials, error) {
	if a.cfg.Insecure {
		return insecure.NewCredentials(), nil
	}
	cert, key := a.certPaths()
	tc, err := tlsutil.ClientConfig(cert, key, a.cfg.TLSCA)
	if err != nil {
		return nil, err
	}
	if a.revs != nil {
		tlsutil.CheckRevocation(tc, func(chain []*x509.Certificate) error {
			return a.checkRevoked(sideCoordinator, addr, chain)
		})
	}
	return credentials.NewTLS(tc), nil
}

// certValidity reads a certificate file's validity window.
func certValidity(file string) (notBefore, notAfter time.Time, err error) {
	c, err := tlsutil.ReadCertFile(file)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	return c.NotBefore, c.NotAfter, nil
}

// ensureCert makes sure a usable certificate exists before the first
// connection: a configured one is used as is; else a joined one that has
// not expired; else the agent joins with its one-time token (trying each
// coordinator in turn until ctx ends).
func (a *agent) ensureCert(ctx context.Context) error {
	if a.cfg.Insecure || a.cfg.TLSCert != "" {
		return nil
	}
	cert, key := a.certPaths()
	if _, na, err := certValidity(cert); err == nil && time.Now().Before(na) {
		// A crash between writing the key and the certificate leaves a
		// pair that does not match: join again then.
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err == nil {
			// Saved by an agent from before CheckIssued, or the CA file
			// changed (a CA rotation: the coordinators may still trust
			// it, and the next renewal moves it to the new CA): it is
			// used as it is, with the reason said, not traded for a
			// join whose token is most likely spent.
			if err := a.checkStoredCert(cert, pair); err != nil {
				a.log.Error().Err(err).Str("path", cert).
					Msg("host certificate does not verify against --tls-ca for this host; using it as it is (if the coordinators refuse it: remove it and put a new join token in the join token file)")
			}
			return nil
		}
		a.log.Warn().Str("path", cert).Msg("host certificate and key do not match; joining again")
	}
	for attempt := 0; ; attempt++ {
		err := a.join(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := a.backoff(attempt)
		a.log.Warn().Err(err).Dur("retry_in", d).Msg("join failed")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// join exchanges the join token and a fresh key's CSR for a certificate.
func (a *agent) join(ctx context.Context) error {
	b, err := os.ReadFile(a.cfg.JoinTokenFile)
	if err != nil {
		return fmt.Errorf("join token file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return fmt.Errorf("join token file %s is empty", a.cfg.JoinTokenFile)
	}
	key, keyPEM, err := tlsutil.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := tlsutil.NewCSR(key)
	if err != nil {
		return err
	}
	// No client certificate yet: the coordinator serves Join to anyone with
	// a valid token.
	tc, err := tlsutil.ClientConfig("", "", a.cfg.TLSCA)
	if err != nil {
		return err
	}
	a.refuseRevoked(tc, sideCoordinator)
	var errs []error
	for _, addr := range a.cfg.Coordinators {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		resp, err := v1.NewAgentServiceClient(cc).Join(cctx, &v1.JoinRequest{Token: token, HostId: a.cfg.HostID, Csr: csr})
		cancel()
		_ = cc.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		if err := a.checkIssued(resp.GetCertificate().GetCertificateChain(), key.Public()); err != nil {
			// The coordinators spend a token before they issue: asking
			// another one would only be told it is used.
			return fmt.Errorf("join as %s: %s: %w (the join token is spent: put a new one in the join token file)", a.cfg.HostID, addr, err)
		}
		if err := a.saveCert(resp.GetCertificate(), keyPEM); err != nil {
			return err
		}
		a.log.Info().Str("coordinator", addr).Time("not_after", resp.GetCertificate().GetNotAfter().AsTime()).Msg("joined: host certificate issued")
		return nil
	}
	return fmt.Errorf("join as %s: %w", a.cfg.HostID, errors.Join(errs...))
}

// checkIssued checks a certificate chain a coordinator issued to this host
// for a key whose public half is pub (tlsutil.CheckIssued against the CA
// file).
func (a *agent) checkIssued(chainPEM []byte, pub crypto.PublicKey) error {
	roots, err := tlsutil.LoadCertPool(a.cfg.TLSCA)
	if err != nil {
		return err
	}
	return tlsutil.CheckIssued(chainPEM, pub, roots, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: a.cfg.HostID}, time.Now())
}

// checkStoredCert checks the joined certificate file (loaded as pair) as
// checkIssued checks an answer.
func (a *agent) checkStoredCert(certFile string, pair tls.Certificate) error {
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("key of %s: unsupported type %T", certFile, pair.PrivateKey)
	}
	chainPEM, err := os.ReadFile(certFile)
	if err != nil {
		return err
	}
	return a.checkIssued(chainPEM, signer.Public())
}

// saveCert writes a certificate and its key (key first: the pair is read
// when the certificate file changes).
func (a *agent) saveCert(ic *v1.IssuedCertificate, keyPEM []byte) error {
	cert, key := a.certPaths()
	if err := os.MkdirAll(filepath.Dir(cert), 0o700); err != nil {
		return fmt.Errorf("tls dir: %w", err)
	}
	if err := tlsutil.WriteKeyPair(cert, key, ic.GetCertificateChain(), keyPEM); err != nil {
		return fmt.Errorf("save host certificate: %w", err)
	}
	return nil
}

// renewLoop renews a joined certificate at two thirds of its lifetime over
// the current coordinator connection, retrying every minute on failure.
// A configured certificate (--tls-cert) is the operator's to renew.
func (a *agent) renewLoop(ctx context.Context) {
	if a.cfg.Insecure || a.cfg.TLSCert != "" {
		return
	}
	cert, _ := a.certPaths()
	for {
		nb, na, err := certValidity(cert)
		// No certificate yet: the agent is still joining.
		wait := time.Second
		if err == nil {
			renewAt := nb.Add(na.Sub(nb) * 2 / 3)
			wait = max(time.Until(renewAt), 0)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err != nil {
			continue
		}
		if time.Now().After(na) {
			// Offline past expiry: only a new join token helps.
			a.log.Error().Time("not_after", na).Msg("host certificate expired; joining again with the token in the join token file")
			if jerr := a.join(ctx); jerr != nil {
				a.log.Error().Err(jerr).Msg("re-join failed; put a new join token in the join token file")
			}
			continue
		}
		if rerr := a.renew(ctx); rerr != nil {
			a.log.Warn().Err(rerr).Msg("certificate renewal failed; retrying in a minute")
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}
}

func (a *agent) renew(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cc, err := a.conns.wait(cctx)
	if err != nil {
		return err
	}
	key, keyPEM, err := tlsutil.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := tlsutil.NewCSR(key)
	if err != nil {
		return err
	}
	resp, err := v1.NewAgentServiceClient(cc).Renew(cctx, &v1.RenewRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	// Nothing is replaced unless the answer is a certificate of the fleet's
	// CA for this host and the new key.
	if err := a.checkIssued(resp.GetCertificate().GetCertificateChain(), key.Public()); err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	if err := a.saveCert(resp.GetCertificate(), keyPEM); err != nil {
		return err
	}
	a.log.Info().Time("not_after", resp.GetCertificate().GetNotAfter().AsTime()).Msg("host certificate renewed")
	return nil
}
