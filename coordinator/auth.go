package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// mdRole carries the original caller's role on a forwarded call.
const mdRole = "fleetwave-role"

// principal is who made a call, as the coordinator established it.
type principal struct {
	// ident names the caller in events and the audit log:
	// "operator:alice", "token:ci", "agent:host-1", "coordinator:c1",
	// "peer:127.0.0.1:5555" (insecure mode), "anonymous".
	ident string
	kind  string // tlsutil.Kind*, "token", "insecure" or "anonymous"
	name  string
	// role of an operator (certificate or token): viewer, deployer, admin.
	role string
	// how it authenticated: certificate, token, insecure, none
	how string
}

type principalKey struct{}

func withPrincipal(ctx context.Context, p principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// principalFrom returns the caller established by the auth interceptor.
func principalFrom(ctx context.Context) (principal, bool) {
	p, ok := ctx.Value(principalKey{}).(principal)
	return p, ok
}

// access is what a method requires.
type access int

const (
	accessAnyone        access = iota // health, WhoAmI, Join (checks its token itself)
	accessViewer                      // operator reads
	accessDeployer                    // releases and rollout decisions
	accessAdmin                       // specs, unfreeze, tokens, audit
	accessAgent                       // an agent (its own stream, its own certificate)
	accessArtifact                    // artifact download: agents, coordinators, viewers
	accessAuthenticated               // any caller with a certificate or a token
)

const (
	opSvc  = "/fleetwave.v1.OperatorService/"
	agSvc  = "/fleetwave.v1.AgentService/"
	artSvc = "/fleetwave.v1.ArtifactService/"
)

// methodAccess lists every method served; anything else is denied.
var methodAccess = map[string]access{
	opSvc + "ApplyService":         accessAdmin,
	opSvc + "ListServices":         accessViewer,
	opSvc + "GetService":           accessViewer,
	opSvc + "CreateRelease":        accessDeployer,
	opSvc + "ListReleases":         accessViewer,
	opSvc + "GetRollout":           accessViewer,
	opSvc + "WatchRollout":         accessViewer,
	opSvc + "ApproveRollout":       accessDeployer,
	opSvc + "ListHosts":            accessViewer,
	opSvc + "UnfreezeService":      accessAdmin,
	opSvc + "PauseRollout":         accessDeployer,
	opSvc + "ResumeRollout":        accessDeployer,
	opSvc + "AbortRollout":         accessDeployer,
	opSvc + "Rollback":             accessDeployer,
	opSvc + "ListEvents":           accessViewer,
	opSvc + "WatchEvents":          accessViewer,
	opSvc + "ClusterStatus":        accessViewer,
	opSvc + "GetStats":             accessViewer,
	opSvc + "CreateToken":          accessAdmin,
	opSvc + "ListTokens":           accessAdmin,
	opSvc + "RevokeToken":          accessAdmin,
	opSvc + "ListAudit":            accessAdmin,
	opSvc + "WhoAmI":               accessAnyone,
	opSvc + "RemoveHost":           accessAdmin,
	opSvc + "RevokeCertificate":    accessAdmin,
	opSvc + "ListRevocations":      accessAdmin,
	opSvc + "DeleteService":        accessAdmin,
	opSvc + "UpgradeAgents":        accessAdmin,
	opSvc + "PlanRollout":          accessViewer,
	opSvc + "CreateBlackout":       accessAdmin,
	opSvc + "ListBlackouts":        accessViewer,
	opSvc + "DeleteBlackout":       accessAdmin,
	opSvc + "OverrideHold":         accessAdmin,
	agSvc + "Connect":              accessAgent,
	agSvc + "Join":                 accessAnyone,
	agSvc + "Renew":                accessAgent,
	artSvc + "Upload":              accessDeployer,
	artSvc + "Download":            accessArtifact,
	"/grpc.health.v1.Health/Check": accessAnyone,
	// A watch holds a stream: not for callers without credentials.
	"/grpc.health.v1.Health/Watch":                                   accessAuthenticated,
	"/grpc.health.v1.Health/List":                                    accessAnyone,
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      accessViewer,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": accessViewer,
}

// readOnly methods are audited only when refused.
func readOnly(method string) bool {
	switch methodAccess[method] {
	case accessViewer, accessArtifact:
		return true
	}
	switch method {
	case opSvc + "WhoAmI", agSvc + "Connect", opSvc + "ListTokens", opSvc + "ListAudit", opSvc + "ListRevocations":
		return true
	}
	return strings.HasPrefix(method, "/grpc.health.v1.")
}

// authenticate establishes the caller: a verified client certificate, else
// a bearer token, else (only with --insecure) the peer address. A call a
// coordinator forwards is taken to be from the caller it names.
func (c *Coordinator) authenticate(ctx context.Context, method string) (principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var p principal
	switch {
	case c.insecure:
		from := "unknown"
		if pr, ok := peer.FromContext(ctx); ok {
			from = "peer:" + pr.Addr.String()
		}
		p = principal{ident: from, kind: "insecure", role: tlsutil.RoleAdmin, how: "insecure"}
	default:
		if id, ok := tlsutil.PeerIdentity(ctx); ok {
			p = principal{ident: id.Kind + ":" + id.Name, kind: id.Kind, name: id.Name, role: id.Role, how: "certificate"}
			// A connection opened before its certificate was revoked.
			chain, _ := tlsutil.PeerChain(ctx)
			if err := c.checkChain(chain); err != nil {
				return p, err
			}
			break
		}
		if auth := md.Get("authorization"); len(auth) > 0 {
			secret, ok := strings.CutPrefix(auth[0], "Bearer ")
			if !ok {
				return principal{ident: "token:invalid", kind: "anonymous", how: "token"}, status.Error(codes.Unauthenticated, "authorization: want \"Bearer <token>\"")
			}
			t, err := c.checkToken(secret)
			if err != nil {
				return principal{ident: "token:invalid", kind: "anonymous", how: "token"}, err
			}
			p = principal{ident: "token:" + t.GetName(), kind: "token", name: t.GetName(), role: t.GetRole(), how: "token"}
			break
		}
		p = principal{ident: "anonymous", kind: "anonymous", how: "none"}
	}
	_, leaderOnly := leaderMethods[method]
	if leaderOnly && len(md.Get(mdForwardedBy)) > 0 && (p.kind == tlsutil.KindCoordinator || p.kind == "insecure") {
		// Another coordinator authorised the caller and names it; only
		// leader-only calls are forwarded, so only they carry a caller. The
		// leader audits them too, naming the coordinator that forwarded.
		via := p.ident
		p.ident = "unknown"
		if a := md.Get(mdActor); len(a) > 0 && a[0] != "" {
			p.ident = clip(a[0], 128)
		}
		p.ident += " via " + via
		p.role = ""
		if r := md.Get(mdRole); len(r) > 0 {
			p.role = r[0]
		}
		p.kind, p.how = "forwarded", "forwarded by "+p.name
	}
	return p, nil
}

// checkToken finds an operator token by its secret.
func (c *Coordinator) checkToken(secret string) (*v1.Token, error) {
	sum := sha256.Sum256([]byte(secret))
	vt, ok := c.mirror.TokenBySecretHash(hex.EncodeToString(sum[:]))
	t := vt.Val
	switch {
	case !ok:
		return nil, status.Error(codes.Unauthenticated, "token: unknown or revoked")
	case t.GetRole() == roleJoin:
		return nil, status.Error(codes.Unauthenticated, "token: a join token is not an operator token")
	case t.GetExpiresAt() != nil && time.Now().After(t.GetExpiresAt().AsTime()):
		return nil, status.Errorf(codes.Unauthenticated, "token %s expired at %s", t.GetName(), t.GetExpiresAt().AsTime().Format(time.RFC3339))
	}
	return t, nil
}

// authorize says whether p may call method.
func authorize(p principal, method string) error {
	need, ok := methodAccess[method]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s: not allowed to anyone", method)
	}
	name := method[strings.LastIndex(method, "/")+1:]
	switch need {
	case accessAnyone:
		return nil
	case accessAgent:
		if p.kind == tlsutil.KindAgent || p.kind == "insecure" {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "%s: only agents (with a host certificate) may call it; caller is %s", name, p.ident)
	case accessAuthenticated:
		if p.kind != "anonymous" {
			return nil
		}
	case accessArtifact:
		if p.kind == tlsutil.KindAgent || p.kind == tlsutil.KindCoordinator || tlsutil.RoleIncludes(p.role, tlsutil.RoleViewer) {
			return nil
		}
	default:
		want := map[access]string{accessViewer: tlsutil.RoleViewer, accessDeployer: tlsutil.RoleDeployer, accessAdmin: tlsutil.RoleAdmin}[need]
		if tlsutil.RoleIncludes(p.role, want) {
			return nil
		}
		if p.kind == "anonymous" {
			return status.Errorf(codes.Unauthenticated, "%s: needs role %s; the call has no client certificate and no token", name, want)
		}
		have := p.role
		if have == "" {
			have = "none"
		}
		return status.Errorf(codes.PermissionDenied, "%s: needs role %s; %s has role %s", name, want, p.ident, have)
	}
	if p.kind == "anonymous" {
		return status.Errorf(codes.Unauthenticated, "%s: no client certificate and no token", name)
	}
	return status.Errorf(codes.PermissionDenied, "%s: not allowed for %s", name, p.ident)
}

// clip bounds a string from the network for the audit log.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// bucket is a token bucket: rate per second, burst.
type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
	rate   float64
	burst  float64
}

func (b *bucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// auditTarget names what a request acts on, for the audit log.
func auditTarget(req any) string {
	type named interface{ GetName() string }
	type svc interface{ GetService() string }
	switch r := req.(type) {
	case *v1.ApplyServiceRequest:
		return r.GetSpec().GetName()
	case *v1.CreateReleaseRequest:
		return r.GetRelease().GetService() + "@" + r.GetRelease().GetVersion()
	case *v1.RevokeTokenRequest:
		return "token " + r.GetId()
	case *v1.CreateTokenRequest:
		return "token " + r.GetName() + " (" + r.GetRole() + ")"
	case *v1.JoinRequest:
		return "host " + r.GetHostId()
	case *v1.RemoveHostRequest:
		return "host " + r.GetHostId()
	case *v1.RevokeCertificateRequest:
		if r.GetIdentity() != "" {
			return "identity " + r.GetIdentity()
		}
		return "serial " + r.GetSerial()
	case *v1.UpgradeAgentsRequest:
		return spec.AgentService + "@" + r.GetRelease().GetVersion()
	case *v1.OverrideHoldRequest:
		return r.GetService() + ": " + r.GetReason()
	case *v1.CreateBlackoutRequest:
		return fmt.Sprintf("blackout %s to %s: %s", r.GetFrom().AsTime().UTC().Format(time.RFC3339), r.GetTo().AsTime().UTC().Format(time.RFC3339), r.GetReason())
	case *v1.DeleteBlackoutRequest:
		return "blackout " + r.GetId()
	case *v1.DeleteServiceRequest:
		if r.GetForce() {
			return r.GetName() + " (force)"
		}
		return r.GetName()
	case svc:
		return r.GetService()
	case named:
		return r.GetName()
	}
	return ""
}

// unaryAuth authenticates and authorises every unary call, and audits the
// mutating ones.
func (c *Coordinator) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	defer releaseCallSlot(ctx)
	p, err := c.authenticate(ctx, info.FullMethod)
	if err == nil {
		err = authorize(p, info.FullMethod)
	}
	if err != nil {
		c.log.Warn().Str("method", info.FullMethod).Str("actor", p.ident).Err(err).Msg("call refused")
		c.audit(ctx, p, info.FullMethod, auditTarget(req), err)
		return nil, err
	}
	resp, err := handler(withPrincipal(ctx, p), req)
	c.audit(ctx, p, info.FullMethod, auditTarget(req), err)
	return resp, err
}

type authStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authStream) Context() context.Context { return s.ctx }

// streamAuth does the same for streams (the artifact upload is audited).
func (c *Coordinator) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	defer releaseCallSlot(ctx)
	p, err := c.authenticate(ctx, info.FullMethod)
	if err == nil {
		err = authorize(p, info.FullMethod)
	}
	if err != nil {
		c.log.Warn().Str("method", info.FullMethod).Str("actor", p.ident).Err(err).Msg("call refused")
		c.audit(ctx, p, info.FullMethod, "", err)
		return err
	}
	release, err := c.limits.openStream(p, info.FullMethod)
	if err != nil {
		return err
	}
	defer release()
	// A revocation of the caller's certificate ends the stream (revoke.go).
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if chain, ok := tlsutil.PeerChain(ctx); ok && p.how == "certificate" {
		forget := c.streams.add(chain, cancel)
		defer forget()
		// Revoked between the check in authenticate and now.
		if err := c.checkChain(chain); err != nil {
			cancel(err)
		}
	}
	ls := &limitedStream{ServerStream: ss, l: c.limits, method: info.FullMethod, p: p}
	err = handler(srv, &authStream{ServerStream: ls, ctx: withPrincipal(sctx, p)})
	var re *revokedError
	if cause := context.Cause(sctx); errors.As(cause, &re) {
		err = re
	}
	c.audit(ctx, p, info.FullMethod, "", err)
	return err
}

// roleJoin is the role of a one-time agent join token.
const roleJoin = "join"

// newSecret makes a token secret and its id.
func newSecret() (id, secret string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("token secret: %w", err)
	}
	idb := make([]byte, 6)
	if _, err := rand.Read(idb); err != nil {
		return "", "", fmt.Errorf("token id: %w", err)
	}
	return hex.EncodeToString(idb), "fwt_" + base64.RawURLEncoding.EncodeToString(b), nil
}
