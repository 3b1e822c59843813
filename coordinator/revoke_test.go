package coordinator

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// certOf reads one of the tls init certificates of f.
func (f *tlsFleet) certOf(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	c, err := tlsutil.ReadCertFile(filepath.Join(f.dir, name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// openHello opens h's agent stream on cc and waits for its first
// assignments, so that the stream is registered.
func openHello(t *testing.T, cc *grpc.ClientConn, host string) v1.AgentService_ConnectClient {
	t.Helper()
	stream, err := v1.NewAgentServiceClient(cc).Connect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: host}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("%s's stream: %v", host, err)
	}
	return stream
}

// A certificate revoked by serial: its open stream ends at once with the
// revocation as the reason, its next call on a connection opened before is
// refused, a new connection is refused in the handshake (audited), and
// other certificates are not touched. Failed before revocation existed
// (RevokeCertificate was unimplemented; the stolen certificate kept
// working until it expired).
func TestRevokedSerialRefusedEverywhere(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx := t.Context()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	veraConn := f.dial(t, "operator-vera", "")
	vera := v1.NewOperatorServiceClient(veraConn)
	watch, err := vera.WatchEvents(ctx, &v1.WatchEventsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	who, err := vera.WhoAmI(ctx, &v1.WhoAmIRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cert := f.certOf(t, "operator-vera")
	if who.GetSerial() != tlsutil.SerialString(cert) || !who.GetNotAfter().AsTime().Equal(cert.NotAfter) {
		t.Errorf("whoami: serial %s, not after %v; want %s, %v", who.GetSerial(), who.GetNotAfter().AsTime(), tlsutil.SerialString(cert), cert.NotAfter)
	}
	// The watch is open when a call made after it on the same connection
	// has returned? Not guaranteed: wait until the coordinator holds it.
	c := coordinatorOf(t, f)
	testkit.Eventually(t, 30*time.Second, "the watch registered", func() bool { return c.liveStreamCount() == 1 })

	// Upper case with colons, as openssl prints it.
	serial := strings.ToUpper(tlsutil.SerialString(cert))
	if len(serial)%2 == 1 {
		serial = "0" + serial
	}
	var colons []string
	for i := 0; i < len(serial); i += 2 {
		colons = append(colons, serial[i:i+2])
	}
	_, err = vera.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Serial: strings.Join(colons, ":")})
	wantCode(t, "a viewer revokes", err, codes.PermissionDenied, "needs role admin")
	resp, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Serial: strings.Join(colons, ":"), Subject: "operator:vera",
		NotAfter: timestamppb.New(cert.NotAfter), Reason: "laptop stolen"})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetRevocation()
	if r.GetSerial() != tlsutil.SerialString(cert) || r.GetRevokedBy() != "operator:alice" || !r.GetExpiresAt().AsTime().Equal(cert.NotAfter) {
		t.Errorf("revocation %v: want serial %s by operator:alice until %v", r, tlsutil.SerialString(cert), cert.NotAfter)
	}

	// The open stream ended, with the reason.
	for {
		_, err = watch.Recv()
		if err != nil {
			break
		}
	}
	wantCode(t, "the revoked operator's open watch", err, codes.Unauthenticated, "(operator:vera) was revoked")
	wantCode(t, "the revoked operator's open watch", err, codes.Unauthenticated, "laptop stolen")
	// Its next call on the connection it has.
	_, err = vera.ListServices(ctx, &v1.ListServicesRequest{})
	wantCode(t, "the revoked operator's next call", err, codes.Unauthenticated, "was revoked")
	// A new connection: refused in the handshake.
	_, err = v1.NewOperatorServiceClient(f.dial(t, "operator-vera", "")).ListServices(ctx, &v1.ListServicesRequest{})
	wantCode(t, "a new connection with the revoked certificate", err, codes.Unavailable, "")
	// Others are not affected.
	if _, err := admin.ListServices(ctx, &v1.ListServicesRequest{}); err != nil {
		t.Errorf("admin after the revocation: %v", err)
	}
	list, err := admin.ListRevocations(ctx, &v1.ListRevocationsRequest{})
	if err != nil || len(list.GetRevocations()) != 1 || list.GetRevocations()[0].GetSubject() != "operator:vera" {
		t.Errorf("revocations: %v %v", list, err)
	}
	// The refused handshake and the refused call are audited.
	testkit.EventuallyErr(t, 30*time.Second, "the refusals audited", func() error {
		_, entries := countAudit(t, f.emb)
		var got []string
		for _, e := range entries {
			got = append(got, e.GetActor()+" "+methodNameOf(e.GetMethod())+" "+e.GetResult())
		}
		all := strings.Join(got, "\n")
		for _, want := range []string{"operator:alice RevokeCertificate OK", "operator:vera WatchEvents Unauthenticated",
			"operator:vera ListServices Unauthenticated", "operator:vera " + handshakeMethod + " Unauthenticated"} {
			if !strings.Contains(all, want) {
				return &missing{want, all}
			}
		}
		return nil
	})
}

type missing struct{ want, in string }

func (m *missing) Error() string { return "no " + m.want + " in\n" + m.in }

// coordinatorOf is the in-process coordinator serving f.
func coordinatorOf(t *testing.T, f *tlsFleet) *Coordinator {
	t.Helper()
	return f.c
}

// liveStreamCount is how many streams opened with a certificate are open.
func (c *Coordinator) liveStreamCount() int {
	c.streams.mu.Lock()
	defer c.streams.mu.Unlock()
	return len(c.streams.streams)
}

// A revoked host: its stream ends at once, its certificate is refused,
// its renewals too; a join token made before the revocation cannot bring
// it back, a new one can, and the certificate that one gets is not
// covered by the revocation. Failed before revocation existed.
func TestRevokedHostNeedsNewJoinToken(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx := t.Context()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	join := func(token, host string) (certFile, keyFile string, err error) {
		key, keyPEM, err := tlsutil.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := tlsutil.NewCSR(key)
		if err != nil {
			t.Fatal(err)
		}
		jr, err := v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: token, HostId: host, Csr: csr})
		if err != nil {
			return "", "", err
		}
		dir := t.TempDir()
		certFile, keyFile = filepath.Join(dir, "agent.pem"), filepath.Join(dir, "agent-key.pem")
		if err := tlsutil.WriteKeyPair(certFile, keyFile, jr.GetCertificate().GetCertificateChain(), keyPEM); err != nil {
			t.Fatal(err)
		}
		return certFile, keyFile, nil
	}
	dialFiles := func(cert, key string) *grpc.ClientConn {
		tc, err := tlsutil.ClientConfig(cert, key, filepath.Join(f.dir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	token := func(name string) string {
		tr, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: name, Role: "join", HostId: "h5"})
		if err != nil {
			t.Fatal(err)
		}
		return tr.GetSecret()
	}
	first, spare := token("h5-first"), token("h5-spare")
	cert, key, err := join(first, "h5")
	if err != nil {
		t.Fatal(err)
	}
	cc := dialFiles(cert, key)
	stream := openHello(t, cc, "h5")
	h1 := openHello(t, f.dial(t, "agent-h1", ""), "h1")

	if _, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Identity: "agent:h5", Reason: "host compromised"}); err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, "the revoked host's stream", err, codes.Unauthenticated, "every certificate of agent:h5 issued until then was revoked")
	_, err = v1.NewAgentServiceClient(cc).Renew(ctx, &v1.RenewRequest{Csr: []byte("x")})
	wantCode(t, "the revoked host renews", err, codes.Unauthenticated, "revoked")
	_, err = v1.NewAgentServiceClient(dialFiles(cert, key)).Connect(ctx)
	if err == nil {
		var s v1.AgentService_ConnectClient
		s, err = v1.NewAgentServiceClient(dialFiles(cert, key)).Connect(ctx)
		if err == nil {
			_, err = s.Recv()
		}
	}
	wantCode(t, "the revoked host reconnects", err, codes.Unavailable, "")
	// Another host's stream is untouched.
	if err := h1.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: &v1.ServiceReport{Service: "web"}}}); err != nil {
		t.Errorf("h1's stream after h5's revocation: %v", err)
	}
	// The revoked host's streams end on the server after their client saw
	// the error: wait for it (the handler's return is not ordered with the
	// client's Recv).
	c := coordinatorOf(t, f)
	testkit.Eventually(t, 30*time.Second, "only h1's stream open", func() bool { return c.liveStreamCount() == 1 })

	_, _, err = join(spare, "h5")
	wantCode(t, "a join token made before the revocation", err, codes.PermissionDenied, "join it with a join token created since")
	cert2, key2, err := join(token("h5-again"), "h5")
	if err != nil {
		t.Fatalf("a join token made after the revocation: %v", err)
	}
	openHello(t, dialFiles(cert2, key2), "h5")
}

// Limits and bounds: at most MaxRevocations entries (replacing one is
// always allowed), entries go when the certificates they cover expire,
// bad requests are refused, and a CA in --tls-ca cannot be revoked.
func TestRevocationLimitsAndPruning(t *testing.T) {
	// The leader prunes at a clock the test moves forward: an entry
	// that expires in an hour is pruned when the clock passes that hour,
	// however slow the machine.
	var skew atomic.Int64
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.MaxRevocations = 3
		c.auditPruneEvery = 100 * time.Millisecond
		c.pruneClock = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	ctx := t.Context()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	ca := f.certOf(t, "ca")
	for _, c := range []struct {
		req  *v1.RevokeCertificateRequest
		want string
	}{
		{&v1.RevokeCertificateRequest{}, "exactly one of serial and identity"},
		{&v1.RevokeCertificateRequest{Serial: "ab", Identity: "agent:h1"}, "exactly one"},
		{&v1.RevokeCertificateRequest{Serial: "xyz"}, "hex digits"},
		{&v1.RevokeCertificateRequest{Serial: strings.Repeat("a", 41)}, "hex digits"},
		{&v1.RevokeCertificateRequest{Serial: "00"}, "positive"},
		{&v1.RevokeCertificateRequest{Serial: tlsutil.SerialString(ca)}, "is a CA in --tls-ca"},
		{&v1.RevokeCertificateRequest{Serial: "ab", NotAfter: timestamppb.New(time.Now().Add(-time.Minute))}, "expired at"},
		{&v1.RevokeCertificateRequest{Serial: "ab", Subject: "nobody"}, "subject"},
		{&v1.RevokeCertificateRequest{Identity: "agent"}, "KIND:NAME"},
		{&v1.RevokeCertificateRequest{Identity: "robot:r1"}, "unknown kind"},
		{&v1.RevokeCertificateRequest{Identity: "agent:a/b"}, "name"},
		{&v1.RevokeCertificateRequest{Identity: "agent:h1", Subject: "agent:h1"}, "only with a serial"},
		{&v1.RevokeCertificateRequest{Identity: "agent:h1", Reason: strings.Repeat("x", 257)}, "at most 256"},
	} {
		_, err := admin.RevokeCertificate(ctx, c.req)
		wantCode(t, c.req.String(), err, codes.InvalidArgument, c.want)
	}

	// An entry whose certificate expires in an hour, and two more.
	soon := time.Now().Add(time.Hour)
	if _, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Serial: "a1", NotAfter: timestamppb.New(soon)}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"agent:x1", "operator:x2"} {
		r, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Identity: id})
		if err != nil {
			t.Fatal(err)
		}
		// Identities: until the CA expires.
		if !r.GetRevocation().GetExpiresAt().AsTime().Equal(ca.NotAfter) {
			t.Errorf("%s kept until %v, want the CA's expiry %v", id, r.GetRevocation().GetExpiresAt().AsTime(), ca.NotAfter)
		}
	}
	_, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Identity: "agent:x4"})
	wantCode(t, "a fourth revocation", err, codes.ResourceExhausted, "the limit (--max-revocations 3)")
	if _, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Identity: "agent:x1", Reason: "again"}); err != nil {
		t.Errorf("revoking an identity again at the limit: %v", err)
	}
	// Two hours on, the leader prunes the expired one; then there is
	// room again.
	skew.Store(int64(2 * time.Hour))
	testkit.EventuallyErr(t, 30*time.Second, "the expired revocation pruned", func() error {
		l, err := admin.ListRevocations(ctx, &v1.ListRevocationsRequest{})
		if err != nil {
			return err
		}
		if n := len(l.GetRevocations()); n != 2 {
			return status.Errorf(codes.Unknown, "%d revocations: %v", n, l)
		}
		return nil
	})
	if _, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Identity: "agent:x4"}); err != nil {
		t.Errorf("revoking after the prune: %v", err)
	}
}

// Join CAs: a coordinator with only the join CA (no root key) signs joins
// and renewals whose chains verify against the root; one with neither
// refuses them with a clear error and serves everything else.
func TestJoinCAAndNoIssuer(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.TLSCAKey = ""
		c.TLSJoinCA, c.TLSJoinCAKey = filepath.Join(filepath.Dir(c.TLSCA), tlsutil.JoinCAFile), filepath.Join(filepath.Dir(c.TLSCA), tlsutil.JoinCAKeyFile)
	})
	ctx := t.Context()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	tr, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "h6", Role: "join", HostId: "h6"})
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := tlsutil.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := tlsutil.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	jr, err := v1.NewAgentServiceClient(f.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: tr.GetSecret(), HostId: "h6", Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	chainFile := filepath.Join(t.TempDir(), "chain.pem")
	if err := tlsutil.WriteFileAtomic(chainFile, jr.GetCertificate().GetCertificateChain(), 0o644); err != nil {
		t.Fatal(err)
	}
	chain, err := tlsutil.ReadCerts(chainFile)
	if err != nil || len(chain) != 2 {
		t.Fatalf("joined chain: %d certificates, %v; want the leaf and the join CA", len(chain), err)
	}
	roots, err := tlsutil.LoadCertPool(filepath.Join(f.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("joined certificate does not verify against the root: %v", err)
	}
	if chain[1].Subject.CommonName != tlsutil.JoinCACommonName || !strings.Contains(string(jr.GetCertificate().GetCa()), "BEGIN CERTIFICATE") {
		t.Errorf("issuer %q, CA %q", chain[1].Subject.CommonName, jr.GetCertificate().GetCa())
	}

	// A coordinator with neither the join CA nor the root key.
	g := startTLSCoordinatorWith(t, func(c *Config) { c.TLSCAKey = "" })
	gadmin := v1.NewOperatorServiceClient(g.dial(t, "operator-alice", ""))
	tr, err = gadmin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "h6", Role: "join", HostId: "h6"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v1.NewAgentServiceClient(g.dial(t, "", "")).Join(ctx, &v1.JoinRequest{Token: tr.GetSecret(), HostId: "h6", Csr: csr})
	wantCode(t, "join without an issuer", err, codes.FailedPrecondition, "cannot sign certificates (started without --tls-join-ca and --tls-join-ca-key)")
	_, err = v1.NewAgentServiceClient(g.dial(t, "agent-h1", "")).Renew(ctx, &v1.RenewRequest{Csr: csr})
	wantCode(t, "renew without an issuer", err, codes.FailedPrecondition, "cannot sign certificates")
	if _, err := gadmin.ListServices(ctx, &v1.ListServicesRequest{}); err != nil {
		t.Errorf("a coordinator without an issuer does not serve: %v", err)
	}
	openHello(t, g.dial(t, "agent-h1", ""), "h1")
}

// A join CA that does not chain to --tls-ca, or given with the root key,
// is refused at start.
func TestJoinCAConfigChecked(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if err := tlsutil.Init(d, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{TLSCA: filepath.Join(dir, "ca.pem"), TLSJoinCA: filepath.Join(other, tlsutil.JoinCAFile), TLSJoinCAKey: filepath.Join(other, tlsutil.JoinCAKeyFile)}
	if _, err := loadIssuer(cfg); err == nil || !strings.Contains(err.Error(), "does not chain to --tls-ca") {
		t.Errorf("join CA of another root: %v", err)
	}
	bad := Config{Listen: "127.0.0.1:1", DataDir: dir, TLSCert: "c", TLSKey: "k", TLSCA: "ca", TLSCAKey: "ca-key", TLSJoinCA: "j"}
	err := bad.Validate()
	for _, want := range []string{"tls-join-ca, tls-join-ca-key: give both or neither", "tls-ca-key: not with tls-join-ca"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want %q", err, want)
		}
	}
}
