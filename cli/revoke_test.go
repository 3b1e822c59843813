package cli

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// revokeFake records revocations and lists them.
type revokeFake struct {
	fakeOperator
	mu   *sync.Mutex
	reqs *[]*v1.RevokeCertificateRequest
}

var revokedAt = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (s revokeFake) RevokeCertificate(_ context.Context, req *v1.RevokeCertificateRequest) (*v1.RevokeCertificateResponse, error) {
	s.mu.Lock()
	*s.reqs = append(*s.reqs, req)
	s.mu.Unlock()
	return &v1.RevokeCertificateResponse{Revocation: &v1.Revocation{Serial: req.GetSerial(), Identity: req.GetIdentity(), Subject: req.GetSubject(),
		RevokedAt: timestamppb.New(revokedAt), RevokedBy: "operator:alice", Reason: req.GetReason(), ExpiresAt: timestamppb.New(revokedAt.Add(time.Hour))}}, nil
}

func (s revokeFake) ListRevocations(context.Context, *v1.ListRevocationsRequest) (*v1.ListRevocationsResponse, error) {
	return &v1.ListRevocationsResponse{Revocations: []*v1.Revocation{
		{Identity: "agent:h1", RevokedAt: timestamppb.New(revokedAt), RevokedBy: "operator:alice", Reason: "stolen", ExpiresAt: timestamppb.New(revokedAt.Add(time.Hour))},
		{Serial: "ab12", Subject: "operator:bob", RevokedAt: timestamppb.New(revokedAt), RevokedBy: "token:ci", ExpiresAt: timestamppb.New(revokedAt.Add(time.Hour))},
	}}, nil
}

func TestRevokeCommands(t *testing.T) {
	var mu sync.Mutex
	var reqs []*v1.RevokeCertificateRequest
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	v1.RegisterOperatorServiceServer(srv, revokeFake{fakeOperator: fakeOperator{f: &fake{}}, mu: &mu, reqs: &reqs})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	t.Setenv(EnvCoordinator, lis.Addr().String())

	dir := t.TempDir()
	if err := tlsutil.Init(dir, tlsutil.InitOptions{Operators: map[string]string{"bob": "deployer"}}); err != nil {
		t.Fatal(err)
	}
	bobFile := filepath.Join(dir, "operator-bob.pem")
	bob, err := tlsutil.ReadCertFile(bobFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want *v1.RevokeCertificateRequest
		out  string
	}{
		{[]string{"hosts", "revoke", "h1", "--reason", "stolen"}, &v1.RevokeCertificateRequest{Identity: "agent:h1", Reason: "stolen"},
			"revoked every certificate of agent:h1 issued until 2026-01-02"},
		{[]string{"tls", "revoke", "operator:bob"}, &v1.RevokeCertificateRequest{Identity: "operator:bob"}, "revoked every certificate of operator:bob"},
		{[]string{"tls", "revoke", "00:AB:12"}, &v1.RevokeCertificateRequest{Serial: "ab12"}, "revoked certificate serial ab12 (kept until"},
		{[]string{"tls", "revoke", bobFile}, &v1.RevokeCertificateRequest{Serial: tlsutil.SerialString(bob), Subject: "operator:bob", NotAfter: timestamppb.New(bob.NotAfter)},
			"(operator:bob)"},
	} {
		code, stdout, stderr := runCLI(t, c.args...)
		if code != 0 || !strings.Contains(stdout, c.out) {
			t.Errorf("%v: exit %d, %s%s; want %q", c.args, code, stdout, stderr, c.out)
		}
		mu.Lock()
		got := reqs[len(reqs)-1]
		mu.Unlock()
		if got.String() != c.want.String() {
			t.Errorf("%v sent %v, want %v", c.args, got, c.want)
		}
	}
	if _, stdout, _ := runCLI(t, "hosts", "revoke", "h1"); !strings.Contains(stdout, "fleetwave token create h1-join --role join --host h1") {
		t.Errorf("hosts revoke does not say how to let the host back: %s", stdout)
	}
	n := len(reqs)
	for _, c := range []struct{ args []string }{
		{[]string{"tls", "revoke", "agent:a/b"}},
		{[]string{"tls", "revoke", "xyz"}},
		{[]string{"tls", "revoke"}},
		{[]string{"hosts", "revoke"}},
	} {
		if code, _, _ := runCLI(t, c.args...); code == 0 {
			t.Errorf("%v accepted", c.args)
		}
	}
	if len(reqs) != n {
		t.Errorf("refused arguments sent %d revocations", len(reqs)-n)
	}
	code, stdout, stderr := runCLI(t, "tls", "revocations")
	if code != 0 {
		t.Fatalf("tls revocations: %d %s", code, stderr)
	}
	wantContains(t, "tls revocations", stdout, "CERTIFICATES", "every one of agent:h1 issued until then", "serial ab12 (operator:bob)", "token:ci", "stolen")
}
