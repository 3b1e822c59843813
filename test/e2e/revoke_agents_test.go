package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/testkit/testcluster"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// peerHandshake connects to the peer listener at addr as the agent whose
// certificate is pki/agent-<as>.pem, expecting agent <want> there, and
// reads the listener's first bytes (its HTTP/2 settings): nil when the
// listener accepted the certificate. In TLS 1.3 a client learns that the
// server refused its certificate on its first read (the alert).
func peerHandshake(pki, as, want, addr string) error {
	tc, err := tlsutil.PeerClientConfig(filepath.Join(pki, "agent-"+as+".pem"), filepath.Join(pki, "agent-"+as+"-key.pem"),
		filepath.Join(pki, tlsutil.CAFile), want)
	if err != nil {
		return err
	}
	tc.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, tc)
	if err != nil {
		return err
	}
	defer conn.Close()
	// A guard against a listener that never answers, not a measurement.
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

// A revoked host's certificate no longer opens other agents' peer
// listeners: `hosts revoke host-2` reaches host-1 over its stream, host-1
// refuses host-2's certificate in the handshake (counted), still accepts
// others, and keeps refusing it after a restart with no coordinator
// running (the set is on disk). Before agents learnt revocations host-2's
// certificate opened host-1's listener until it expired.
func TestAgentPeerListenerRefusesRevokedHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	f, err := testfleet.NewFleetWith(ctx, bins, dir, testfleet.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, fleet: f, dir: dir}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			e.dumpLogs()
		}
	})
	peerAddr := ports.Addr(t)
	a1, err := f.AddAgentWith("host-1", "a", testfleet.AgentOptions{Args: []string{"--peer-listen", peerAddr}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddAgentWith("host-2", "b", testfleet.AgentOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitConnected(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, time.Minute, "host-2's certificate opens host-1's peer listener", func() error {
		return peerHandshake(f.PKI, "host-2", "host-1", peerAddr)
	})

	revoked := time.Now()
	if r := f.CLI(ctx, "hosts", "revoke", "host-2", "--reason", "stolen"); r.Code != 0 {
		t.Fatalf("hosts revoke: %s%s", r.Stdout, r.Stderr)
	}
	testkit.EventuallyErr(t, time.Minute, "host-1 refuses host-2's certificate", func() error {
		if err := peerHandshake(f.PKI, "host-2", "host-1", peerAddr); err == nil {
			return fmt.Errorf("accepted")
		} else if !strings.Contains(err.Error(), "bad certificate") {
			return fmt.Errorf("refused, but not in the handshake: %v", err)
		}
		return nil
	})
	t.Logf("host-1 refused host-2's certificate %s after the revoke command started", time.Since(revoked).Round(time.Millisecond))
	if err := peerHandshake(f.PKI, "host-1", "host-1", peerAddr); err != nil {
		t.Fatalf("a certificate that is not revoked: %v", err)
	}
	if got := e.metric(a1.MetricsAddr, `fleetwave_agent_revoked_refused_total{side="peer"}`); got < 1 {
		t.Errorf("fleetwave_agent_revoked_refused_total{side=\"peer\"} = %v, want at least 1", got)
	}
	if got := e.metric(a1.MetricsAddr, "fleetwave_agent_revocations"); got != 1 {
		t.Errorf("fleetwave_agent_revocations = %v, want 1", got)
	}
	if log := a1.Tail(20000); !strings.Contains(log, "TLS handshake refused: revoked certificate") || !strings.Contains(log, "agent:host-2") {
		t.Errorf("host-1's log does not name the refusal:\n%s", log)
	}

	// Without any coordinator, a restarted host-1 still refuses it.
	f.Coord.Stop(15 * time.Second)
	a1.Stop(15 * time.Second)
	if _, err := os.Stat(filepath.Join(a1.DataDir, "revocations.pb")); err != nil {
		t.Fatalf("host-1 kept no revocations file: %v", err)
	}
	if err := a1.Restart(); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, time.Minute, "the restarted host-1 serves its peer listener", func() error {
		return peerHandshake(f.PKI, "host-1", "host-1", peerAddr)
	})
	if err := peerHandshake(f.PKI, "host-2", "host-1", peerAddr); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("host-1 restarted without coordinators: host-2's certificate: %v, want refused in the handshake", err)
	}
}

// A revoked coordinator certificate is left by the agents: in a fleet of
// two coordinators (one etcd), agents connected to c1 get the revocation of
// coordinator:c1 over their stream, leave c1 (logged with the reason) and
// work with c2; they are refused by nothing else. Before agents learnt
// revocations they stayed with c1: a stolen coordinator certificate and key
// posed as a coordinator to them until it expired. With c2 gone too they
// stay off c1 (refusing it at every attempt): agents fail closed.
func TestAgentsLeaveRevokedCoordinator(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	etcd := testcluster.StartEtcd(t, 1)
	pki := filepath.Join(dir, "pki")
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil, "c2": nil},
		Agents: []string{"host-1", "host-2"}, Operators: map[string]string{"admin": tlsutil.RoleAdmin}}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(pki, tlsutil.CAFile)
	var procs []*testfleet.Proc
	t.Cleanup(func() {
		for _, p := range procs {
			p.Stop(15 * time.Second)
		}
		if t.Failed() {
			for _, n := range []string{"coordinator-c1", "coordinator-c2", "agent-host-1", "agent-host-2"} {
				b, _ := os.ReadFile(filepath.Join(dir, "logs", n+".log"))
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("==== %s ====\n%s", n, b)
			}
		}
	})
	addrs := map[string]string{}
	for _, c := range []string{"c1", "c2"} {
		addrs[c] = ports.Addr(t)
		p, err := testfleet.Start("coordinator "+c, bins.Coordinator, filepath.Join(dir, "logs", "coordinator-"+c+".log"),
			"--listen", addrs[c], "--name", c, "--data-dir", filepath.Join(dir, c), "--lease-ttl", "2s",
			"--etcd-endpoints", strings.Join(etcd.Endpoints(), ","),
			"--tls-cert", filepath.Join(pki, "coordinator-"+c+".pem"), "--tls-key", filepath.Join(pki, "coordinator-"+c+"-key.pem"), "--tls-ca", ca)
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	admin := func(addr string, args ...string) testfleet.CLIResult {
		g := []string{"--tls-ca", ca, "--tls-cert", filepath.Join(pki, "operator-admin.pem"), "--tls-key", filepath.Join(pki, "operator-admin-key.pem")}
		return testfleet.CLI(ctx, bins.CLI, addr, append(g, args...)...)
	}
	for _, c := range []string{"c1", "c2"} {
		testkit.EventuallyErr(t, time.Minute, c+" serving", func() error {
			if r := admin(addrs[c], "whoami"); r.Code != 0 {
				return fmt.Errorf("%s", r.Stderr)
			}
			return nil
		})
	}
	var agents []*testfleet.Proc
	metrics := map[string]string{}
	for _, h := range []string{"host-1", "host-2"} {
		metrics[h] = ports.Addr(t)
		p, err := testfleet.Start("agent "+h, bins.Agent, filepath.Join(dir, "logs", "agent-"+h+".log"),
			"--coordinator", addrs["c1"]+","+addrs["c2"], "--host-id", h, "--labels", "role=web", "--data-dir", filepath.Join(dir, "agents", h),
			"--metrics-listen", metrics[h], "--tls-ca", ca, "--tls-cert", filepath.Join(pki, "agent-"+h+".pem"), "--tls-key", filepath.Join(pki, "agent-"+h+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		agents = append(agents, p)
	}
	tc, err := tlsutil.ClientConfig(filepath.Join(pki, "operator-admin.pem"), filepath.Join(pki, "operator-admin-key.pem"), ca)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addrs["c2"], grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// onAll: both hosts hold a stream to coordinator want (as c2 sees it).
	onAll := func(want string) func() error {
		return func() error {
			resp, err := v1.NewOperatorServiceClient(cc).ListHosts(ctx, &v1.ListHostsRequest{})
			if err != nil {
				return err
			}
			on := map[string]string{}
			for _, h := range resp.GetHosts() {
				if h.GetConnected() {
					on[h.GetId()] = h.GetCoordinator()
				}
			}
			if on["host-1"] != want || on["host-2"] != want {
				return fmt.Errorf("streams %v, want both on %s", on, want)
			}
			return nil
		}
	}
	testkit.EventuallyErr(t, time.Minute, "both agents connected to c1 (first in their list)", onAll("c1"))

	revoked := time.Now()
	if r := admin(addrs["c2"], "tls", "revoke", "coordinator:c1", "--reason", "key leaked"); r.Code != 0 {
		t.Fatalf("tls revoke coordinator:c1: %s%s", r.Stdout, r.Stderr)
	}
	testkit.EventuallyErr(t, time.Minute, "both agents left c1 for c2", onAll("c2"))
	t.Logf("both agents on c2 %s after the revoke command started", time.Since(revoked).Round(time.Millisecond))
	for i, h := range []string{"host-1", "host-2"} {
		log := agents[i].Tail(40000)
		if !strings.Contains(log, "the coordinator's certificate is revoked") || !strings.Contains(log, "coordinator:c1 issued until then was revoked") {
			t.Errorf("%s's log does not say why it left c1:\n%s", h, log)
		}
	}

	// They stay off c1: with c2 gone they refuse c1 at every attempt
	// (counted: 1 for leaving it, then one per handshake) and stay
	// disconnected rather than go back to it (agents fail closed).
	procs[1].Stop(15 * time.Second)
	testkit.EventuallyErr(t, 2*time.Minute, "both agents refused c1 twice with c2 gone", func() error {
		for _, h := range []string{"host-1", "host-2"} {
			body, code, err := testfleet.HTTPGet(ctx, "http://"+metrics[h]+"/metrics")
			if err != nil || code != 200 {
				return fmt.Errorf("scrape %s: %d %v", h, code, err)
			}
			var n float64
			for _, line := range strings.Split(body, "\n") {
				if v, ok := strings.CutPrefix(line, `fleetwave_agent_revoked_refused_total{side="coordinator"} `); ok {
					if n, err = strconv.ParseFloat(v, 64); err != nil {
						return fmt.Errorf("%s: %q: %v", h, line, err)
					}
				}
			}
			if n < 3 {
				return fmt.Errorf("%s refused a coordinator %v times, want at least 3", h, n)
			}
		}
		return nil
	})
	cc1, err := grpc.NewClient(addrs["c1"], grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc1.Close()
	resp, err := v1.NewOperatorServiceClient(cc1).ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range resp.GetHosts() {
		if h.GetConnected() && h.GetCoordinator() == "c1" {
			t.Errorf("%s connected to the revoked c1", h.GetId())
		}
	}
}
