package coordinator

// Certificate revocation (issue 13: a stolen host or operator certificate
// worked until it expired). Revocations live in etcd under
// /fleetwave/v1/revocations/ and every coordinator holds them in its mirror.
// A revocation names one certificate by serial (an intermediate's serial
// covers every certificate under it) or an identity (agent:<host>,
// operator:<name>, coordinator:<name>): every certificate of it issued at
// or before the revocation. They are enforced
//
//   - in the TLS handshake (server side for clients, client side for peer
//     coordinators): a revoked certificate cannot open a connection;
//   - on every call and stream (authenticate): a connection opened before
//     the revocation gets Unauthenticated on its next call;
//   - on the streams already open: revocationLoop follows the mirror and
//     cancels every stream whose certificate a new revocation covers.
//
// An entry is kept until no certificate it covers can be valid (the
// certificate's NotAfter when the revoker gave it, else the latest expiry
// of the CAs in --tls-ca) and then pruned by the leader; at most
// Config.MaxRevocations are stored.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/revocation"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// DefaultMaxRevocations is how many revocations are stored at most: about
// 300 bytes each in etcd with short names and reasons (key, serial,
// subject, actor, two timestamps), up to about 600 with the longest reason
// (maxRevocationReason) and names: 3 to 6 MB in all.
const DefaultMaxRevocations = 10000

// maxRevocationReason bounds a revocation's reason.
const maxRevocationReason = 256

// revokedError refuses a certificate a revocation covers.
type revokedError struct {
	subject string // the identity of the refused leaf
	serial  string // the serial of the revoked certificate (the leaf or a CA)
	r       *v1.Revocation
}

func (e *revokedError) Error() string {
	return (&revocation.Refused{Subject: e.subject, Serial: e.serial, R: e.r}).Error()
}

// GRPCStatus makes a revocation an Unauthenticated call error.
func (e *revokedError) GRPCStatus() *status.Status {
	return status.New(codes.Unauthenticated, e.Error())
}

// mirrorRevocations looks revocations up in the mirror (revocation.Lookup).
type mirrorRevocations struct{ m *store.Mirror }

func (l mirrorRevocations) RevokedSerial(serial string) (*v1.Revocation, bool) {
	return l.m.RevokedSerial(serial)
}

func (l mirrorRevocations) RevokedIdentityAt(kind, name string) (*v1.Revocation, bool) {
	vr, ok := l.m.RevokedIdentity(kind, name)
	return vr.Val, ok
}

// checkChain refuses a verified chain (leaf first) that a revocation
// covers (revocation.Check: any certificate in it by serial, or the leaf
// by its identity and issue time).
func (c *Coordinator) checkChain(chain []*x509.Certificate) error {
	if len(chain) == 0 || c.mirror == nil {
		return nil
	}
	if r := revocation.Check(chain, mirrorRevocations{c.mirror}); r != nil {
		return &revokedError{subject: r.Subject, serial: r.Serial, r: r.R}
	}
	return nil
}

// handshakeRefused is told of every connection the TLS handshake refused
// (limitedCreds): a revoked certificate's is logged (rate-limited) and
// audited (coalesced like every refusal).
func (c *Coordinator) handshakeRefused(from string, err error) {
	var re *revokedError
	if !errors.As(err, &re) {
		return
	}
	if c.revokedLog.allow(time.Now()) {
		c.log.Warn().Str("from", from).Str("certificate", re.subject).Str("serial", re.serial).Msg("connection refused in the TLS handshake: revoked certificate")
	}
	e := &v1.AuditEntry{At: timestamppb.Now(), Actor: clip(re.subject, 256), Method: handshakeMethod, Target: "serial " + re.serial,
		Peer: from, Result: codes.Unauthenticated.String(), Message: clip(re.Error(), 512), Coordinator: c.cfg.Name}
	if !c.failures.admit(e, time.Now()) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.putAudit(ctx, e)
}

// handshakeMethod names a refused TLS handshake in the audit log.
const handshakeMethod = "(TLS handshake)"

// liveStreams are the streams open with a client certificate, so that a
// revocation can end them.
type liveStreams struct {
	mu      sync.Mutex
	streams map[*liveStream]struct{}
}

type liveStream struct {
	chain  []*x509.Certificate
	cancel context.CancelCauseFunc
}

// add registers a stream opened with chain; the returned function
// forgets it.
func (ls *liveStreams) add(chain []*x509.Certificate, cancel context.CancelCauseFunc) func() {
	s := &liveStream{chain: chain, cancel: cancel}
	ls.mu.Lock()
	if ls.streams == nil {
		ls.streams = map[*liveStream]struct{}{}
	}
	ls.streams[s] = struct{}{}
	ls.mu.Unlock()
	return func() {
		ls.mu.Lock()
		delete(ls.streams, s)
		ls.mu.Unlock()
	}
}

// endRevoked cancels every open stream whose chain is now revoked, with
// the revocation as the cause, and returns how many.
func (c *Coordinator) endRevoked() int {
	c.streams.mu.Lock()
	var ended []*liveStream
	var causes []error
	for s := range c.streams.streams {
		if err := c.checkChain(s.chain); err != nil {
			ended, causes = append(ended, s), append(causes, err)
		}
	}
	c.streams.mu.Unlock()
	for i, s := range ended {
		s.cancel(causes[i])
	}
	return len(ended)
}

// revocationLoop ends the streams of newly revoked certificates as soon as
// the mirror sees the revocation (written by any coordinator).
func (c *Coordinator) revocationLoop(ctx context.Context) {
	ch, unsub := c.mirror.Subscribe()
	defer unsub()
	epoch := c.mirror.RevocationEpoch()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		e := c.mirror.RevocationEpoch()
		if e == epoch {
			continue
		}
		epoch = e
		if n := c.endRevoked(); n > 0 {
			c.log.Warn().Int("streams", n).Msg("streams of revoked certificates ended")
		}
		// Agents that keep revocations get the new ones (revdelta.go).
		c.hub.pushRevocations()
	}
}

// caBounds reads the CAs every certificate must chain to (--tls-ca): their
// latest expiry bounds how long a revocation is needed, and their serials
// cannot be revoked (that would refuse everything). It also returns them
// in PEM, for agents that join.
func caBounds(caFile string) (notAfter time.Time, serials map[string]bool, certPEM []byte, err error) {
	certs, err := tlsutil.ReadCerts(caFile)
	if err != nil {
		return time.Time{}, nil, nil, err
	}
	serials = map[string]bool{}
	for _, ca := range certs {
		if ca.NotAfter.After(notAfter) {
			notAfter = ca.NotAfter
		}
		serials[tlsutil.SerialString(ca)] = true
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})...)
	}
	return notAfter, serials, certPEM, nil
}

// RevokeCertificate stores a revocation and returns once this coordinator
// enforces it (the others do as their mirrors see it, within the watch's
// delay).
func (o *operator) RevokeCertificate(ctx context.Context, req *v1.RevokeCertificateRequest) (*v1.RevokeCertificateResponse, error) {
	c := o.c
	if c.insecure {
		return nil, status.Error(codes.FailedPrecondition, "revoke: this coordinator serves plain text (--insecure): there are no certificates to revoke")
	}
	if len(req.GetReason()) > maxRevocationReason {
		return nil, status.Errorf(codes.InvalidArgument, "reason: %d bytes, at most %d", len(req.GetReason()), maxRevocationReason)
	}
	now := time.Now()
	r := &v1.Revocation{RevokedAt: timestamppb.New(now), RevokedBy: caller(ctx), Reason: req.GetReason()}
	expires := c.caNotAfter
	switch {
	case (req.GetSerial() == "") == (req.GetIdentity() == ""):
		return nil, status.Error(codes.InvalidArgument, "give exactly one of serial and identity")
	case req.GetSerial() != "":
		serial, err := tlsutil.ParseSerial(req.GetSerial())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if c.caSerials[serial] {
			return nil, status.Errorf(codes.InvalidArgument, "serial %s is a CA in --tls-ca: revoking it would refuse every certificate; replace the CA instead", serial)
		}
		r.Serial = serial
		if s := req.GetSubject(); s != "" {
			if _, _, err := tlsutil.ParseIdentityName(s); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "subject: %v", err)
			}
			r.Subject = s
		}
		if req.GetNotAfter() != nil {
			na := req.GetNotAfter().AsTime()
			if !na.After(now) {
				return nil, status.Errorf(codes.InvalidArgument, "not_after: the certificate expired at %s: it is refused already", na.UTC().Format(time.RFC3339))
			}
			if na.Before(expires) {
				expires = na
			}
		}
	default:
		if req.GetNotAfter() != nil || req.GetSubject() != "" {
			return nil, status.Error(codes.InvalidArgument, "not_after, subject: only with a serial")
		}
		kind, name, err := tlsutil.ParseIdentityName(req.GetIdentity())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "identity: %v", err)
		}
		r.Identity = kind + ":" + name
	}
	r.ExpiresAt = timestamppb.New(expires)
	rev, err := c.store.PutRevocation(ctx, r, c.cfg.MaxRevocations)
	if errors.Is(err, store.ErrLimit) {
		return nil, status.Errorf(codes.ResourceExhausted, "revoke: %v; entries go when the certificates they cover expire", err)
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := c.mirror.WaitRev(ctx, rev); err != nil {
		return nil, grpcErr(err)
	}
	// The loop ends the streams too; doing it here means they have ended
	// on this coordinator when the call returns.
	n := c.endRevoked()
	c.log.Warn().Str("serial", r.GetSerial()).Str("identity", r.GetIdentity()).Str("by", r.GetRevokedBy()).Int("streams_ended", n).Msg("certificate revoked")
	return &v1.RevokeCertificateResponse{Revocation: r}, nil
}

// ListRevocations lists the revocations kept.
func (o *operator) ListRevocations(ctx context.Context, _ *v1.ListRevocationsRequest) (*v1.ListRevocationsResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	return &v1.ListRevocationsResponse{Revocations: o.c.mirror.Revocations()}, nil
}

// pruneRevocations drops the revocations whose certificates have all
// expired (the leader, with the audit log's pruning).
func (l *leader) pruneRevocations(ctx context.Context, fence *store.Fence, now time.Time) {
	n, err := l.c.store.PruneRevocations(ctx, fence, now)
	if err != nil {
		l.c.log.Warn().Err(err).Msg("pruning expired revocations failed")
		return
	}
	if n > 0 {
		l.c.log.Info().Int("pruned", n).Msg("expired revocations pruned")
	}
}
