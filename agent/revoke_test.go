package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The agent's revocations: taken from a coordinator, enforced against a
// peer's and a coordinator's certificate (counted per side), saved and
// loaded again; a coordinator a received revocation covers is left and the
// revision forgotten; a bad file stops the start naming it; insecure keeps
// none.
func TestAgentRevocations(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1", "h2"},
		Operators: map[string]string{"admin": tlsutil.RoleAdmin}}); err != nil {
		t.Fatal(err)
	}
	chainOf := func(name string) []*x509.Certificate {
		c, err := tlsutil.ReadCertFile(filepath.Join(pki, name+".pem"))
		if err != nil {
			t.Fatal(err)
		}
		return []*x509.Certificate{c}
	}
	cfg := Config{DataDir: t.TempDir(), TLSCA: filepath.Join(pki, tlsutil.CAFile)}
	now := time.Now()
	open := func() *agent {
		t.Helper()
		r, err := openRevocations(cfg, now)
		if err != nil {
			t.Fatal(err)
		}
		return &agent{cfg: cfg, log: zerolog.Nop(), revs: r}
	}
	a := open()
	if rev := a.revs.revision(); rev == nil || *rev != 0 {
		t.Fatalf("a new agent's hello revision %v, want 0", rev)
	}
	rev := func(id string) *v1.Revocation {
		return &v1.Revocation{Identity: id, RevokedAt: timestamppb.New(now), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))}
	}
	if !a.takeRevocations(&v1.RevocationSet{Revision: 5, Revocations: []*v1.Revocation{rev("agent:h2")}}, now) {
		t.Fatal("nothing taken")
	}
	if err := a.checkRevoked(sidePeer, "", chainOf("agent-h2")); err == nil || !strings.Contains(err.Error(), "every certificate of agent:h2") {
		t.Fatalf("h2 at the peer listener: %v", err)
	}
	if err := a.checkRevoked(sidePeer, "", chainOf("agent-h1")); err != nil {
		t.Fatalf("h1: %v", err)
	}
	if got := testutil.ToFloat64(a.revs.refused.WithLabelValues(sidePeer)); got != 1 {
		t.Fatalf("refused{side=peer} = %v, want 1", got)
	}
	// Taking the same again changes nothing (and saves nothing).
	if a.takeRevocations(&v1.RevocationSet{Revision: 6, Revocations: []*v1.Revocation{rev("agent:h2")}}, now) {
		t.Fatal("a known revocation taken as new")
	}

	// Loaded at start, with no coordinator.
	b := open()
	if err := b.checkRevoked(sidePeer, "", chainOf("agent-h2")); err == nil {
		t.Fatal("h2 accepted after a restart")
	}
	if got := *b.revs.revision(); got != 5 {
		t.Fatalf("revision after a restart %d, want 5 (the last save's)", got)
	}

	// The coordinator of an open stream is revoked: left, revision forgotten.
	state := tls.ConnectionState{PeerCertificates: chainOf("coordinator-c1")}
	p := &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}}
	if err := b.checkCoordinatorRevoked("c1:443", p); err != nil {
		t.Fatalf("c1 before its revocation: %v", err)
	}
	b.takeRevocations(&v1.RevocationSet{Revision: 9, Revocations: []*v1.Revocation{rev("coordinator:c1")}}, now)
	err := b.checkCoordinatorRevoked("c1:443", p)
	if !errors.Is(err, errCoordinatorRevoked) || !strings.Contains(err.Error(), "coordinator:c1") {
		t.Fatalf("c1 after its revocation: %v", err)
	}
	if got := *b.revs.revision(); got != 0 {
		t.Fatalf("revision after leaving a revoked coordinator %d, want 0 (send all again)", got)
	}
	if got := testutil.ToFloat64(b.revs.refused.WithLabelValues(sideCoordinator)); got != 1 {
		t.Fatalf("refused{side=coordinator} = %v, want 1", got)
	}
	if got := *open().revs.revision(); got != 0 {
		t.Fatalf("revision saved after leaving a revoked coordinator %d, want 0", got)
	}

	// A damaged file stops the start, naming it.
	file := filepath.Join(cfg.DataDir, revocationsFile)
	if err := os.WriteFile(file, []byte("\xff\xff"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openRevocations(cfg, now); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("damaged file: %v", err)
	}
	// Insecure: no revocations, no revision in the hello.
	if r, err := openRevocations(Config{Insecure: true}, now); r != nil || err != nil || r.revision() != nil {
		t.Fatalf("insecure: %v, %v", r, err)
	}
}

// An agent whose every coordinator is revoked fails closed: here c1 (a
// compromised coordinator, say) sends revocations of c1 and c2; the agent
// leaves c1 and then refuses each in the handshake, again and again with
// backoff, never sending a hello, while its service keeps running as it
// was. The operator's recovery (docs/SECURITY.md): stop the agent, remove
// DATA_DIR/revocations.pb, start it: it starts with no revocations and
// connects to the first coordinator, its service still the same.
func TestAgentFailsClosedOnRevokedCoordinators(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil, "c2": nil}, Agents: []string{testHostID},
		Operators: map[string]string{"admin": tlsutil.RoleAdmin}}); err != nil {
		t.Fatal(err)
	}
	c1, c2 := newTLSFakeCoordinator(t, pki, "c1"), newTLSFakeCoordinator(t, pki, "c2")
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := c1.addArtifact(art)
	c1.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))

	cfg := Config{Coordinators: []string{c1.addr, c2.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir(),
		TLSCA: filepath.Join(pki, tlsutil.CAFile), TLSCert: filepath.Join(pki, "agent-"+testHostID+".pem"), TLSKey: filepath.Join(pki, "agent-"+testHostID+"-key.pem"),
		MetricsListen: "127.0.0.1:0"}
	start := func() (url string, stop func()) {
		t.Helper()
		addrc := make(chan string, 1)
		opts := testOptions()
		opts.metricsReady = func(a string) { addrc <- a }
		ctx, cancel := context.WithCancel(context.Background())
		done := runAgent(t, ctx, cfg, opts)
		select {
		case a := <-addrc:
			url = "http://" + a + "/metrics"
		case err := <-done:
			cancel()
			t.Fatalf("agent exited: %v", err)
		case <-time.After(10 * time.Second): // failure deadline
			cancel()
			t.Fatal("metrics not serving after 10s")
		}
		return url, func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent: %v", err)
			}
		}
	}
	metric := func(url, name string, labels ...string) float64 {
		_, mfs := scrapeMetrics(t, url)
		v, _, _ := metricValue(mfs, name, labels...)
		return v
	}
	url, stop := start()
	c1.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})

	now := time.Now()
	rev := func(id string) *v1.Revocation {
		return &v1.Revocation{Identity: id, RevokedAt: timestamppb.New(now), RevokedBy: "operator:admin", Reason: "made up",
			ExpiresAt: timestamppb.New(now.Add(time.Hour))}
	}
	c1.mu.Lock()
	c1.revocations = &v1.RevocationSet{Revision: 7, Revocations: []*v1.Revocation{rev("coordinator:c1"), rev("coordinator:c2")}}
	c1.notifyLocked()
	c1.mu.Unlock()
	// Left c1 on the revocation (1), then each refused in the handshake at
	// least twice (the agent tries them in turn).
	testkit.Eventually(t, 30*time.Second, "c1 and c2 each refused twice", func() bool {
		return metric(url, "fleetwave_agent_revoked_refused_total", "side", sideCoordinator) >= 5
	})
	c1.mu.Lock()
	streams1 := c1.streams
	c1.mu.Unlock()
	c2.mu.Lock()
	streams2 := c2.streams
	c2.mu.Unlock()
	if streams1 != 1 || streams2 != 0 {
		t.Fatalf("streams (hellos) c1 %d, c2 %d: want 1 (before the revocations), 0", streams1, streams2)
	}
	if got := metric(url, "fleetwave_agent_revocations"); got != 2 {
		t.Fatalf("fleetwave_agent_revocations = %v, want 2", got)
	}
	_, mfs := scrapeMetrics(t, url)
	expectMetrics(t, mfs,
		want{"fleetwave_agent_phase", []string{"service", testSvc, "phase", "healthy"}, 1, 1},
		want{"fleetwave_agent_installs_total", []string{"service", testSvc, "result", "succeeded"}, 1, 1})
	stop()

	// The recovery: no file, no revocations; c1 no longer sends them.
	if err := os.Remove(filepath.Join(cfg.DataDir, revocationsFile)); err != nil {
		t.Fatal(err)
	}
	c1.mu.Lock()
	c1.revocations = nil
	c1.mu.Unlock()
	url, stop = start()
	defer stop()
	c1.waitFor(t, "a hello to c1 after the recovery", 20*time.Second, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) == 2 })
	c1.mu.Lock()
	h := c1.hellos[1]
	c1.mu.Unlock()
	if len(h.GetServices()) != 1 || h.GetServices()[0].GetCurrentVersion() != "1.0.0" || h.GetServices()[0].GetPhase() != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("hello after the recovery: %v", h.GetServices())
	}
	if got := metric(url, "fleetwave_agent_revocations"); got != 0 {
		t.Fatalf("fleetwave_agent_revocations after the recovery = %v, want 0", got)
	}
}
