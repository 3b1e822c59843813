package coordinator

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestAuthorizeTable(t *testing.T) {
	op := func(role string) principal {
		return principal{ident: "operator:x", kind: tlsutil.KindOperator, name: "x", role: role}
	}
	agent := principal{ident: "agent:h1", kind: tlsutil.KindAgent, name: "h1"}
	coord := principal{ident: "coordinator:c1", kind: tlsutil.KindCoordinator, name: "c1"}
	anon := principal{ident: "anonymous", kind: "anonymous"}
	tests := []struct {
		p      principal
		method string
		want   codes.Code
	}{
		{op("viewer"), opSvc + "ListServices", codes.OK},
		{op("viewer"), opSvc + "CreateRelease", codes.PermissionDenied},
		{op("deployer"), opSvc + "CreateRelease", codes.OK},
		{op("deployer"), opSvc + "Rollback", codes.OK},
		{op("deployer"), opSvc + "ApplyService", codes.PermissionDenied},
		{op("deployer"), opSvc + "UnfreezeService", codes.PermissionDenied},
		{op("admin"), opSvc + "ApplyService", codes.OK},
		{op("admin"), opSvc + "CreateToken", codes.OK},
		{op("deployer"), opSvc + "CreateToken", codes.PermissionDenied},
		{op("admin"), opSvc + "RevokeCertificate", codes.OK},
		{op("deployer"), opSvc + "RevokeCertificate", codes.PermissionDenied},
		{op("viewer"), opSvc + "ListRevocations", codes.PermissionDenied},
		{op("viewer"), opSvc + "PlanRollout", codes.OK},
		{op("viewer"), opSvc + "ListBlackouts", codes.OK},
		{op("deployer"), opSvc + "CreateBlackout", codes.PermissionDenied},
		{op("deployer"), opSvc + "DeleteBlackout", codes.PermissionDenied},
		{op("deployer"), opSvc + "OverrideHold", codes.PermissionDenied},
		{op("admin"), opSvc + "CreateBlackout", codes.OK},
		{op("admin"), opSvc + "OverrideHold", codes.OK},
		{agent, opSvc + "RevokeCertificate", codes.PermissionDenied},
		{op("admin"), agSvc + "Connect", codes.PermissionDenied},
		{agent, agSvc + "Connect", codes.OK},
		{agent, opSvc + "ListServices", codes.PermissionDenied},
		{agent, artSvc + "Download", codes.OK},
		{agent, artSvc + "Upload", codes.PermissionDenied},
		{coord, artSvc + "Download", codes.OK},
		{coord, opSvc + "ApplyService", codes.PermissionDenied},
		{anon, opSvc + "ListServices", codes.Unauthenticated},
		{anon, agSvc + "Join", codes.OK},
		{anon, "/grpc.health.v1.Health/Check", codes.OK},
		{op("admin"), "/some.Other/Method", codes.PermissionDenied},
		{principal{kind: "insecure", role: "admin"}, agSvc + "Connect", codes.OK},
	}
	for _, tt := range tests {
		if got := status.Code(authorize(tt.p, tt.method)); got != tt.want {
			t.Errorf("%s calling %s: %v, want %v", tt.p.ident, tt.method, got, tt.want)
		}
	}
	// Every method the servers register is in the table (deny by default
	// would otherwise lock it away).
	for _, sd := range []grpc.ServiceDesc{v1.OperatorService_ServiceDesc, v1.AgentService_ServiceDesc, v1.ArtifactService_ServiceDesc} {
		for _, m := range sd.Methods {
			if _, ok := methodAccess["/"+sd.ServiceName+"/"+m.MethodName]; !ok {
				t.Errorf("%s/%s has no access rule", sd.ServiceName, m.MethodName)
			}
		}
		for _, m := range sd.Streams {
			if _, ok := methodAccess["/"+sd.ServiceName+"/"+m.StreamName]; !ok {
				t.Errorf("%s/%s has no access rule", sd.ServiceName, m.StreamName)
			}
		}
	}
}

// tlsFleet is a coordinator with TLS on, and the certificates of tls init.
type tlsFleet struct {
	dir, addr string
	// metrics is the /metrics URL; emb the coordinator's etcd.
	metrics string
	emb     *store.Embedded
	// c is the coordinator itself.
	c *Coordinator
}

func startTLSCoordinator(t *testing.T) *tlsFleet {
	t.Helper()
	return startTLSCoordinatorWith(t, nil)
}

// startTLSCoordinatorWith is startTLSCoordinator with changes to the
// config (limits, say) and metrics served.
func startTLSCoordinatorWith(t *testing.T, mod func(*Config)) *tlsFleet {
	t.Helper()
	dir := t.TempDir()
	err := tlsutil.Init(dir, tlsutil.InitOptions{
		Coordinators: map[string][]string{"c1": nil},
		Agents:       []string{"h1", "h2"},
		Operators:    map[string]string{"alice": tlsutil.RoleAdmin, "vera": tlsutil.RoleViewer},
	})
	if err != nil {
		t.Fatal(err)
	}
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	metricsc := make(chan string, 1)
	cfg := Config{Listen: "127.0.0.1:0", Name: "c1", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second,
		TLSCert: filepath.Join(dir, "coordinator-c1.pem"), TLSKey: filepath.Join(dir, "coordinator-c1-key.pem"),
		TLSCA: filepath.Join(dir, "ca.pem"), TLSCAKey: filepath.Join(dir, "ca-key.pem"), AgentCertTTL: time.Hour,
		MetricsListen: "127.0.0.1:0", MetricsReady: func(a string) { metricsc <- a }}
	if mod != nil {
		mod(&cfg)
	}
	started := make(chan *Coordinator, 1)
	cfg.started = func(c *Coordinator) { started <- c }
	addr := runTestCoordinator(t, cfg)
	return &tlsFleet{dir: dir, addr: addr, metrics: "http://" + <-metricsc + "/metrics", emb: emb, c: <-started}
}

// dial connects with the named certificate from tls init ("" = none) and
// an optional bearer token.
func (f *tlsFleet) dial(t *testing.T, cert, token string) *grpc.ClientConn {
	t.Helper()
	certFile, keyFile := "", ""
	if cert != "" {
		certFile, keyFile = filepath.Join(f.dir, cert+".pem"), filepath.Join(f.dir, cert+"-key.pem")
	}
	tc, err := tlsutil.ClientConfig(certFile, keyFile, filepath.Join(f.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(testBearer(token)))
	}
	cc, err := grpc.NewClient(f.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

type testBearer string

func (b testBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (testBearer) RequireTransportSecurity() bool { return true }

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || (msg != "" && !strings.Contains(err.Error(), msg)) {
		t.Errorf("%s: %v, want %v containing %q", what, err, code, msg)
	}
}

// With TLS on: roles deny by default, an agent certificate opens only its
// own host's stream, tokens work and can be revoked, a join token works
// once, and every mutating call (also refused ones) is audited.
func TestTLSRolesTokensJoinAudit(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	viewer := v1.NewOperatorServiceClient(f.dial(t, "operator-vera", ""))
	anon := v1.NewOperatorServiceClient(f.dial(t, "", ""))

	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}}}
	_, err := viewer.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec})
	wantCode(t, "viewer applies a spec", err, codes.PermissionDenied, "needs role admin; operator:vera has role viewer")
	if _, err := admin.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := viewer.ListServices(ctx, &v1.ListServicesRequest{}); err != nil {
		t.Errorf("viewer lists: %v", err)
	}
	_, err = anon.ListServices(ctx, &v1.ListServicesRequest{})
	wantCode(t, "no certificate, no token", err, codes.Unauthenticated, "no client certificate and no token")
	_, err = viewer.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1",
		Artifact: &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 1}}})
	wantCode(t, "viewer creates a release", err, codes.PermissionDenied, "needs role deployer")

	// Tokens.
	tr, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "ci", Role: "deployer"})
	if err != nil {
		t.Fatal(err)
	}
	ci := v1.NewOperatorServiceClient(f.dial(t, "", tr.GetSecret()))
	who, err := ci.WhoAmI(ctx, &v1.WhoAmIRequest{})
	if err != nil || who.GetIdentity() != "token:ci" || who.GetRole() != "deployer" || who.GetMethod() != "token" {
		t.Errorf("whoami with the token: %v %v", who, err)
	}
	_, err = ci.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: "web"})
	wantCode(t, "deployer token pauses", err, codes.FailedPrecondition, "no rollout in progress")
	_, err = ci.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec})
	wantCode(t, "deployer token applies a spec", err, codes.PermissionDenied, "needs role admin; token:ci has role deployer")
	list, err := admin.ListTokens(ctx, &v1.ListTokensRequest{})
	if err != nil || len(list.GetTokens()) != 1 || strings.Contains(list.String(), tr.GetSecret()) {
		t.Errorf("token list %v %v (must not hold the secret)", list, err)
	}
	if _, err := admin.RevokeToken(ctx, &v1.RevokeTokenRequest{Id: tr.GetToken().GetId()}); err != nil {
		t.Fatal(err)
	}
	// The mirror applies the revocation a moment after the delete.
	testkit.Eventually(t, 30*time.Second, "the revoked token refused", func() bool {
		_, err = ci.WhoAmI(ctx, &v1.WhoAmIRequest{})
		return err != nil
	})
	wantCode(t, "revoked token", err, codes.Unauthenticated, "unknown or revoked")

	// Agents: own stream only; no operator calls.
	h1 := f.dial(t, "agent-h1", "")
	stream, err := v1.NewAgentServiceClient(h1).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h2"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, "h1's certificate opens h2's stream", err, codes.PermissionDenied, `certificate is for host "h1"`)
	stream, err = v1.NewAgentServiceClient(h1).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1", Labels: map[string]string{"role": "web"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Errorf("h1's own stream: %v", err)
	}
	_, err = v1.NewOperatorServiceClient(h1).ListHosts(ctx, &v1.ListHostsRequest{})
	wantCode(t, "agent lists hosts", err, codes.PermissionDenied, "ListHosts")

	// A certificate from another CA is refused in the handshake.
	other := t.TempDir()
	if err := tlsutil.Init(other, tlsutil.InitOptions{Operators: map[string]string{"mallory": "admin"}}); err != nil {
		t.Fatal(err)
	}
	tc, err := tlsutil.ClientConfig(filepath.Join(other, "operator-mallory.pem"), filepath.Join(other, "operator-mallory-key.pem"), filepath.Join(f.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	mcc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer mcc.Close()
	_, err = v1.NewOperatorServiceClient(mcc).ListServices(ctx, &v1.ListServicesRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("certificate from another CA: %v, want the handshake to fail", err)
	}

	// Forwarding headers from an operator are ignored: a viewer stays one.
	spoof := metadata.AppendToOutgoingContext(ctx, mdForwardedBy, "c9", mdActor, "operator:alice", mdRole, "admin")
	_, err = viewer.UnfreezeService(spoof, &v1.UnfreezeServiceRequest{Name: "web"})
	wantCode(t, "viewer with forwarding headers", err, codes.PermissionDenied, "operator:vera has role viewer")
	// A join token not bound to a host cannot take over one that exists.
	any, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "any-join", Role: "join"})
	if err != nil {
		t.Fatal(err)
	}
	k1, _, err := tlsutil.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr1, err := tlsutil.NewCSR(k1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: any.GetSecret(), HostId: "h1", Csr: csr1})
	wantCode(t, "unbound join token for an existing host", err, codes.PermissionDenied, "already registered")
	_, err = v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: any.GetSecret(), HostId: "h7", Csr: []byte("not a csr")})
	wantCode(t, "garbage CSR", err, codes.InvalidArgument, "csr")
	if _, err := v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: any.GetSecret(), HostId: "h7", Csr: csr1}); err != nil {
		t.Errorf("the token was spent on a refused join: %v", err)
	}
	// h7 joined but has not connected (no host record yet): another
	// unbound token cannot take it, and is not spent; a token bound to h7
	// can. (Failed before the joins were recorded: the second unbound
	// token got a certificate for h7.)
	any2, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "any-join-2", Role: "join"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: any2.GetSecret(), HostId: "h7", Csr: csr1})
	wantCode(t, "unbound join token for a host that joined, not connected", err, codes.PermissionDenied, "h7 has joined before")
	if _, err := v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: any2.GetSecret(), HostId: "h6", Csr: csr1}); err != nil {
		t.Errorf("the second unbound token was spent on a refused join: %v", err)
	}
	h7, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "h7-again", Role: "join", HostId: "h7"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: h7.GetSecret(), HostId: "h7", Csr: csr1}); err != nil {
		t.Errorf("a token bound to h7 joining it again: %v", err)
	}

	// Join: a one-time token for h9 gets a certificate bound to h9.
	jt, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "h9-join", Role: "join", HostId: "h9"})
	if err != nil {
		t.Fatal(err)
	}
	key, keyPEM, err := tlsutil.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := tlsutil.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	joiner := v1.NewAgentServiceClient(f.dial(t, "", ""))
	_, err = joiner.Join(ctx, &v1.JoinRequest{Token: jt.GetSecret(), HostId: "h8", Csr: csr})
	wantCode(t, "join as another host", err, codes.PermissionDenied, "is for host h9")
	before := time.Now()
	jr, err := joiner.Join(ctx, &v1.JoinRequest{Token: jt.GetSecret(), HostId: "h9", Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	// AgentCertTTL is an hour; x509 keeps whole seconds.
	if na := jr.GetCertificate().GetNotAfter().AsTime(); na.Before(before.Add(time.Hour).Truncate(time.Second)) || na.After(after.Add(time.Hour)) {
		t.Errorf("joined certificate valid until %v, want an hour after the join (%v .. %v)", na, before, after)
	}
	_, err = joiner.Join(ctx, &v1.JoinRequest{Token: jt.GetSecret(), HostId: "h9", Csr: csr})
	wantCode(t, "join token used twice", err, codes.Unauthenticated, "already used")
	certFile, keyFile := filepath.Join(t.TempDir(), "h9.pem"), filepath.Join(t.TempDir(), "h9-key.pem")
	if err := tlsutil.WriteKeyPair(certFile, keyFile, jr.GetCertificate().GetCertificateChain(), keyPEM); err != nil {
		t.Fatal(err)
	}
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tc9, err := tlsutil.ClientConfig(certFile, keyFile, filepath.Join(f.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	_ = kp
	cc9, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc9)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc9.Close()
	rr, err := v1.NewAgentServiceClient(cc9).Renew(ctx, &v1.RenewRequest{Csr: csr})
	if err != nil || len(rr.GetCertificate().GetCertificateChain()) == 0 {
		t.Errorf("renew with the joined certificate: %v %v", rr, err)
	}

	// The audit log: the admin's spec, the viewer's refused attempt, the
	// token's creation and revocation, the join — and no reads.
	al, err := admin.ListAudit(ctx, &v1.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range al.GetEntries() {
		lines = append(lines, e.GetActor()+" "+methodNameOf(e.GetMethod())+" "+e.GetTarget()+" "+e.GetResult())
		if e.GetCoordinator() != "c1" || e.GetPeer() == "" || e.GetAt() == nil {
			t.Errorf("audit entry incomplete: %v", e)
		}
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"operator:vera ApplyService web PermissionDenied",
		"operator:alice ApplyService web OK",
		"operator:vera CreateRelease web@v1 PermissionDenied",
		"operator:alice CreateToken token ci (deployer) OK",
		"token:ci ApplyService web PermissionDenied",
		"operator:alice RevokeToken token " + tr.GetToken().GetId() + " OK",
		"anonymous Join host h9 OK",
		"anonymous Join host h9 Unauthenticated",
		"agent:h9 Renew  OK",
		// Refusals of calls that do not change anything, too.
		"token:invalid WhoAmI  Unauthenticated",
		"agent:h1 Connect  PermissionDenied",
		"agent:h1 ListHosts  PermissionDenied",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("audit log lacks %q:\n%s", want, got)
		}
	}
	// Reads are audited only when refused.
	if !strings.Contains(got, "anonymous ListServices  Unauthenticated") {
		t.Errorf("the refused read is not audited:\n%s", got)
	}
	if strings.Contains(got, "ListServices  OK") || strings.Contains(got, "WhoAmI  OK") {
		t.Errorf("reads audited:\n%s", got)
	}
}

func methodNameOf(full string) string { return full[strings.LastIndex(full, "/")+1:] }

// A release records who created it as the coordinator authenticated the
// caller, whatever the request claims.
func TestReleaseAuthorIsTheCaller(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}}}
	if _, err := admin.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	tr, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "ci", Role: "deployer"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		op      v1.OperatorServiceClient
		version string
		want    string
	}{
		{admin, "v1", "operator:alice"},
		{v1.NewOperatorServiceClient(f.dial(t, "", tr.GetSecret())), "v2", "token:ci"},
	} {
		resp, err := c.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: c.version, CreatedBy: "operator:bob",
			Artifact: &v1.Artifact{Url: "https://artifacts.example/web.tgz", Sha256: strings.Repeat("a", 64), Size: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetRelease().GetCreatedBy(); got != c.want {
			t.Errorf("release %s created by %s claiming operator:bob: created_by %q, want %q", c.version, c.want, got, c.want)
		}
	}
	list, err := admin.ListReleases(ctx, &v1.ListReleasesRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range list.GetReleases() {
		if r.GetCreatedBy() == "operator:bob" {
			t.Errorf("stored release %s names the claimed author", r.GetVersion())
		}
	}
}
