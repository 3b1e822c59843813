package coordinator

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The coordinator reaches an external etcd that requires TLS with client
// certificates (--etcd-ca, --etcd-cert, --etcd-key); without them it cannot.
func TestExternalEtcdOverTLS(t *testing.T) {
	pki := t.TempDir()
	ca, err := tlsutil.NewCA("etcd test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, id tlsutil.Identity, hosts []string) (string, string) {
		cert, key, err := ca.IssueKeyPair(id, hosts, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(pki, name+".pem"), filepath.Join(pki, name+"-key.pem")
		if err := tlsutil.WriteKeyPair(c, k, cert, key); err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	if err := tlsutil.WriteFileAtomic(filepath.Join(pki, "ca.pem"), ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := write("etcd", tlsutil.Identity{Kind: tlsutil.KindCoordinator, Name: "etcd"}, []string{"127.0.0.1"})
	cliCert, cliKey := write("client", tlsutil.Identity{Kind: tlsutil.KindCoordinator, Name: "c1"}, nil)

	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(t.TempDir(), "etcd.log")}
	cu, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d", ports.Port(t)))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports.Port(t)))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: filepath.Join(pki, "ca.pem"), ClientCertAuth: true}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		t.Fatal("etcd not ready")
	}

	run := func(c Config) (string, error) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		addrc := make(chan string, 1)
		done := make(chan error, 1)
		c.Listen, c.DataDir, c.Insecure, c.LeaseTTL, c.EtcdTimeout = "127.0.0.1:0", t.TempDir(), true, 2*time.Second, 3*time.Second
		c.EtcdEndpoints = []string{cu.String()}
		c.Ready = func(a string) { addrc <- a }
		go func() { done <- Run(ctx, c, zerolog.Nop()) }()
		select {
		case a := <-addrc:
			cc, err := dialInsecure(a)
			if err != nil {
				return "", err
			}
			defer cc.Close()
			cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
			defer ccancel()
			st, err := v1.NewOperatorServiceClient(cc).ClusterStatus(cctx, &v1.ClusterStatusRequest{})
			cancel()
			<-done
			if err != nil {
				return "", err
			}
			return fmt.Sprint(len(st.GetEtcdMembers()), st.GetEtcdMembers()[0].GetHealthy()), nil
		case err := <-done:
			return "", err
		case <-time.After(40 * time.Second):
			cancel()
			return "", fmt.Errorf("coordinator neither served nor failed: %w", <-done)
		}
	}
	got, err := run(Config{EtcdCA: filepath.Join(pki, "ca.pem"), EtcdCert: cliCert, EtcdKey: cliKey})
	if err != nil || got != "1 true" {
		t.Fatalf("with etcd TLS: %q %v", got, err)
	}
	if _, err := run(Config{}); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("a coordinator without etcd TLS settings: %v, want it to fail naming etcd", err)
	}
}

func dialInsecure(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}
