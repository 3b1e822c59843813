package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/fleetwave/fleetwave/coordinator"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// An agent without a certificate joins with a one-time token, connects
// with the certificate it got, and renews it before it expires (here: a
// 12 s certificate, renewed at two thirds), staying connected.
func TestAgentJoinsAndRenews(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Operators: map[string]string{"admin": tlsutil.RoleAdmin}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cctx, ccancel := context.WithCancel(ctx)
	addrc := make(chan string, 1)
	cdone := make(chan error, 1)
	go func() {
		cdone <- coordinator.Run(cctx, coordinator.Config{Listen: "127.0.0.1:0", Name: "c1", DataDir: t.TempDir(), LeaseTTL: 2 * time.Second,
			TLSCert: filepath.Join(pki, "coordinator-c1.pem"), TLSKey: filepath.Join(pki, "coordinator-c1-key.pem"),
			TLSCA: filepath.Join(pki, "ca.pem"), TLSCAKey: filepath.Join(pki, "ca-key.pem"), AgentCertTTL: 12 * time.Second,
			Ready: func(a string) { addrc <- a }}, zerolog.Nop())
	}()
	defer func() {
		ccancel()
		<-cdone
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-cdone:
		t.Fatalf("coordinator: %v", err)
	}
	tc, err := tlsutil.ClientConfig(filepath.Join(pki, "operator-admin.pem"), filepath.Join(pki, "operator-admin-key.pem"), filepath.Join(pki, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	op := v1.NewOperatorServiceClient(cc)
	tok, err := op.CreateToken(ctx, &v1.CreateTokenRequest{Name: "h1-join", Role: "join", HostId: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok.GetSecret()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	cfg := Config{Coordinators: []string{addr}, HostID: "h1", DataDir: dataDir, TLSCA: filepath.Join(pki, "ca.pem"), JoinTokenFile: tokenFile}
	actx, acancel := context.WithCancel(ctx)
	adone := make(chan error, 1)
	go func() { adone <- Run(actx, cfg, zerolog.Nop()) }()
	defer func() {
		acancel()
		<-adone
	}()

	connected := func() bool {
		h, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return false
		}
		for _, x := range h.GetHosts() {
			if x.GetId() == "h1" && x.GetConnected() {
				return true
			}
		}
		return false
	}
	certFile := filepath.Join(dataDir, "tls", "agent.pem")
	var first time.Time
	testkit.Eventually(t, time.Minute, "joined and connected", func() bool {
		_, na, err := certValidity(certFile)
		first = na
		return err == nil && connected()
	})
	if time.Until(first) > 13*time.Second {
		t.Fatalf("joined certificate valid until %v, want about 12 s", first)
	}
	testkit.Eventually(t, time.Minute, "certificate renewed", func() bool {
		_, na, err := certValidity(certFile)
		return err == nil && na.After(first)
	})
	// Past the first certificate's expiry the agent is still connected
	// (its next connection uses the renewed certificate).
	testkit.Eventually(t, time.Minute, "the first certificate expires", func() bool { return time.Now().After(first.Add(time.Second)) })
	testkit.Eventually(t, time.Minute, "still connected", connected)
}
