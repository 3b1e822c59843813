package coordinator

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"time"

	"github.com/rs/zerolog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// defaultJoinTTL bounds how long an unused join token stays valid.
const defaultJoinTTL = time.Hour

// Join calls whose token is no join token at all (guesses, or a typo) are
// limited per address, as the dashboard's logins are: joinFailureBurst,
// then one every joinFailureEvery. A Join from a limited address is
// refused (ResourceExhausted) before its token is looked up, right or
// wrong: each lookup of an unknown token reads etcd's revision through a
// quorum (the mirror's Sync, so that a token created a moment ago is
// found), which an anonymous caller could otherwise ask for without end.
// Joins with a real token (spent, expired, bound to another host) are not
// guesses and do not count.
const (
	joinFailureBurst = 10
	joinFailureEvery = 6 * time.Second
	// maxJoinAddresses bounds the addresses tracked; past it, new ones
	// share one allowance.
	maxJoinAddresses = 4096
)

// CreateToken makes an operator bearer token (role viewer, deployer or
// admin) or a one-time agent join token (role join, optionally bound to a
// host id). The secret is returned once; etcd keeps its sha256.
func (o *operator) CreateToken(ctx context.Context, req *v1.CreateTokenRequest) (*v1.CreateTokenResponse, error) {
	if err := spec.CheckName("name", req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	role := req.GetRole()
	if !tlsutil.ValidRole(role) && role != roleJoin {
		return nil, status.Errorf(codes.InvalidArgument, "role: %q: want viewer, deployer, admin or join", role)
	}
	if h := req.GetHostId(); h != "" {
		if role != roleJoin {
			return nil, status.Error(codes.InvalidArgument, "host_id: only join tokens are bound to a host")
		}
		if err := spec.CheckHostID("host_id", h); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	ttl := req.GetTtl().AsDuration()
	if req.GetTtl() != nil && (req.GetTtl().CheckValid() != nil || ttl < 0) {
		return nil, status.Errorf(codes.InvalidArgument, "ttl: %v is not a positive duration", req.GetTtl())
	}
	if ttl == 0 && role == roleJoin {
		ttl = defaultJoinTTL
	}
	id, secret, err := newSecret()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sum := sha256.Sum256([]byte(secret))
	p, _ := principalFrom(ctx)
	now := time.Now()
	t := &v1.Token{Id: id, Name: req.GetName(), Role: role, HostId: req.GetHostId(), CreatedAt: timestamppb.New(now),
		CreatedBy: p.ident, SecretSha256: hex.EncodeToString(sum[:])}
	if ttl > 0 {
		t.ExpiresAt = timestamppb.New(now.Add(ttl))
	}
	if err := o.c.store.CreateToken(ctx, t); err != nil {
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("token", id).Str("name", t.GetName()).Str("role", role).Str("by", p.ident).Msg("token created")
	// Callers use a token at once (CI creates one and calls with it):
	// this coordinator checks tokens in its mirror, which must hold it
	// first (a WhoAmI right after was "unknown or revoked" on a loaded
	// machine). The token is stored either way.
	if err := o.sync(ctx); err != nil {
		o.c.log.Warn().Err(err).Str("token", id).Msg("token created; this coordinator's mirror has not caught up yet")
	}
	return &v1.CreateTokenResponse{Token: t, Secret: secret}, nil
}

func (o *operator) ListTokens(ctx context.Context, _ *v1.ListTokensRequest) (*v1.ListTokensResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	return &v1.ListTokensResponse{Tokens: o.c.mirror.Tokens()}, nil
}

func (o *operator) RevokeToken(ctx context.Context, req *v1.RevokeTokenRequest) (*v1.RevokeTokenResponse, error) {
	if !tokenIDRE.MatchString(req.GetId()) {
		return nil, status.Errorf(codes.InvalidArgument, "id: %q is not a token id (12 hex digits)", req.GetId())
	}
	if err := o.c.store.DeleteToken(ctx, req.GetId()); err != nil {
		return nil, grpcErr(err)
	}
	return &v1.RevokeTokenResponse{}, nil
}

func (o *operator) ListAudit(ctx context.Context, req *v1.ListAuditRequest) (*v1.ListAuditResponse, error) {
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	if limit > 10000 {
		return nil, status.Errorf(codes.InvalidArgument, "limit: %d, at most 10000", limit)
	}
	entries, err := o.c.store.ListAudit(ctx, limit)
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1.ListAuditResponse{Entries: entries}, nil
}

func (o *operator) WhoAmI(ctx context.Context, _ *v1.WhoAmIRequest) (*v1.WhoAmIResponse, error) {
	p, _ := principalFrom(ctx)
	resp := &v1.WhoAmIResponse{Identity: p.ident, Role: p.role, Method: p.how}
	if cert, ok := tlsutil.PeerCertificate(ctx); ok && p.how == "certificate" {
		resp.Serial, resp.NotAfter = tlsutil.SerialString(cert), timestamppb.New(cert.NotAfter)
	}
	return resp, nil
}

// errNoIssuer refuses Join and Renew on a coordinator without a join CA.
func errNoIssuer(call string) error {
	return status.Errorf(codes.FailedPrecondition, "%s: this coordinator cannot sign certificates (started without --tls-join-ca and --tls-join-ca-key); use a coordinator that has the join CA", call)
}

// Join exchanges a join token and a CSR for a certificate bound to the
// host id (the token's, when it names one). The token is spent (compare and
// swap), so it works once.
func (h *hub) Join(ctx context.Context, req *v1.JoinRequest) (*v1.JoinResponse, error) {
	c := h.c
	if c.ca == nil {
		return nil, errNoIssuer("join")
	}
	if err := spec.CheckHostID("host_id", req.GetHostId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if len(req.GetCsr()) == 0 || len(req.GetCsr()) > 16<<10 {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %d bytes, want 1 to 16384", len(req.GetCsr()))
	}
	from := peerHost(ctx)
	if !c.joinFailures.Take(from, time.Now()) {
		c.limits.refused(limitJoinFailures, func(e *zerolog.Event) *zerolog.Event { return e.Str("remote", from) }, "join refused: too many unknown tokens from this address")
		return nil, status.Errorf(codes.ResourceExhausted, "too many joins with unknown tokens from %s: try again in %s", from, joinFailureEvery)
	}
	guess := false
	defer func() {
		if !guess {
			c.joinFailures.Succeeded(from, time.Now())
		}
	}()
	if err := c.syncMirror(ctx); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(req.GetToken()))
	vt, ok := c.mirror.TokenBySecretHash(hex.EncodeToString(sum[:]))
	t := vt.Val
	switch {
	case !ok || t.GetRole() != roleJoin:
		guess = true
		return nil, status.Error(codes.Unauthenticated, "token: not a valid join token")
	case t.GetUsed():
		return nil, status.Errorf(codes.Unauthenticated, "token %s: already used", t.GetName())
	case t.GetExpiresAt() != nil && time.Now().After(t.GetExpiresAt().AsTime()):
		return nil, status.Errorf(codes.Unauthenticated, "token %s: expired at %s", t.GetName(), t.GetExpiresAt().AsTime().Format(time.RFC3339))
	case t.GetHostId() != "" && t.GetHostId() != req.GetHostId():
		return nil, status.Errorf(codes.PermissionDenied, "token %s is for host %s, not %s", t.GetName(), t.GetHostId(), req.GetHostId())
	}
	// A revoked host joins again only with a token created after the
	// revocation (etcd revisions, not clocks, order them): a token that
	// leaked with the host's key does not bring it back.
	if vr, ok := c.mirror.RevokedIdentity(tlsutil.KindAgent, req.GetHostId()); ok && vt.Created <= vr.Rev {
		return nil, status.Errorf(codes.PermissionDenied, "host %s was revoked at %s: join it with a join token created since (token create --role join --host %s)",
			req.GetHostId(), vr.Val.GetRevokedAt().AsTime().UTC().Format(time.RFC3339), req.GetHostId())
	}
	// A token not bound to a host must not take over a host that exists.
	if t.GetHostId() == "" {
		if _, exists := c.mirror.Host(req.GetHostId()); exists {
			return nil, status.Errorf(codes.PermissionDenied, "host_id: %s is already registered; join it with a token bound to it (token create --role join --host %s)", req.GetHostId(), req.GetHostId())
		}
	}
	// Check the request before spending the token on it.
	if csr, err := x509.ParseCertificateRequest(req.GetCsr()); err != nil || csr.CheckSignature() != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: not a valid, self-signed certificate request")
	}
	if err := c.store.SpendToken(ctx, t, vt.Rev, req.GetHostId()); err != nil {
		switch {
		case errors.Is(err, store.ErrConflict):
			return nil, status.Errorf(codes.Unauthenticated, "token %s: already used", t.GetName())
		case errors.Is(err, store.ErrJoined):
			return nil, status.Errorf(codes.PermissionDenied, "host_id: %s has joined before; join it with a token bound to it (token create --role join --host %s)", req.GetHostId(), req.GetHostId())
		}
		return nil, grpcErr(err)
	}
	cert, err := h.issue(req.GetCsr(), req.GetHostId())
	if err != nil {
		return nil, err
	}
	c.log.Info().Str("host", req.GetHostId()).Str("token", t.GetId()).Time("not_after", cert.GetNotAfter().AsTime()).Msg("agent joined")
	return &v1.JoinResponse{Certificate: cert}, nil
}

// peerHost is the host part of the caller's address ("unknown" when the
// transport gives none).
func peerHost(ctx context.Context) string {
	pr, ok := peer.FromContext(ctx)
	if !ok || pr.Addr == nil {
		return "unknown"
	}
	if h, _, err := net.SplitHostPort(pr.Addr.String()); err == nil {
		return h
	}
	return pr.Addr.String()
}

// Renew issues a fresh certificate to the agent named by the caller's
// current certificate.
func (h *hub) Renew(ctx context.Context, req *v1.RenewRequest) (*v1.RenewResponse, error) {
	if h.c.ca == nil {
		return nil, errNoIssuer("renew")
	}
	p, _ := principalFrom(ctx)
	if p.kind != tlsutil.KindAgent {
		return nil, status.Errorf(codes.PermissionDenied, "renew: only an agent's certificate can be renewed (caller is %s)", p.ident)
	}
	if len(req.GetCsr()) == 0 || len(req.GetCsr()) > 16<<10 {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %d bytes, want 1 to 16384", len(req.GetCsr()))
	}
	cert, err := h.issue(req.GetCsr(), p.name)
	if err != nil {
		return nil, err
	}
	return &v1.RenewResponse{Certificate: cert}, nil
}

// issue signs an agent certificate for host: issued after the host's
// revocation, if it has one, whatever this coordinator's clock says.
func (h *hub) issue(csr []byte, host string) (*v1.IssuedCertificate, error) {
	var after time.Time
	if vr, ok := h.c.mirror.RevokedIdentity(tlsutil.KindAgent, host); ok {
		after = vr.Val.GetRevokedAt().AsTime()
	}
	pem, notAfter, err := h.c.ca.SignCSRAfter(csr, tlsutil.Identity{Kind: tlsutil.KindAgent, Name: host}, h.c.cfg.AgentCertTTL, after)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	return &v1.IssuedCertificate{CertificateChain: pem, Ca: h.c.caPEM, NotAfter: timestamppb.New(notAfter)}, nil
}

// RemoveHost forgets a decommissioned host (admin): its record and its
// reports, refused while its agent is connected.
func (o *operator) RemoveHost(ctx context.Context, req *v1.RemoveHostRequest) (*v1.RemoveHostResponse, error) {
	if err := spec.CheckHostID("host_id", req.GetHostId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := o.c.store.DeleteHost(ctx, req.GetHostId()); err != nil {
		if errors.Is(err, store.ErrConnected) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("host", req.GetHostId()).Str("by", caller(ctx)).Msg("host removed")
	return &v1.RemoveHostResponse{}, nil
}
