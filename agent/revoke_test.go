package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/revocation"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
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
		r, err := openRevocations(cfg, now, zerolog.Nop())
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
	// Enforced at once; the Hello says what the file holds (nothing yet:
	// the saver has not run) until it is saved.
	if rev := *a.revs.revision(); rev != 0 {
		t.Fatalf("hello revision before the save %d, want 0 (the file's)", rev)
	}
	a.flushRevocations()
	if rev := *a.revs.revision(); rev != 5 {
		t.Fatalf("hello revision after the save %d, want 5", rev)
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
	// Taking the same again adds nothing; its later revision is saved
	// (else the next connection has the same delta sent again).
	if a.takeRevocations(&v1.RevocationSet{Revision: 6, Revocations: []*v1.Revocation{rev("agent:h2")}}, now) {
		t.Fatal("a known revocation taken as new")
	}
	a.flushRevocations()
	if rev := *a.revs.revision(); rev != 6 {
		t.Fatalf("hello revision after a delta of nothing new %d, want 6", rev)
	}
	a.flushRevocations() // nothing unsaved: nothing written
	if got := testutil.ToFloat64(a.revs.saves.WithLabelValues(saveSaved)); got != 2 {
		t.Fatalf("saves %v, want 2", got)
	}

	// Loaded at start, with no coordinator.
	b := open()
	if err := b.checkRevoked(sidePeer, "", chainOf("agent-h2")); err == nil {
		t.Fatal("h2 accepted after a restart")
	}
	if got := *b.revs.revision(); got != 6 {
		t.Fatalf("revision after a restart %d, want 6 (the last save's)", got)
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
	if _, err := openRevocations(cfg, now, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("damaged file: %v", err)
	}
	// Insecure: no revocations, no revision in the hello.
	if r, err := openRevocations(Config{Insecure: true}, now, zerolog.Nop()); r != nil || err != nil || r.revision() != nil {
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

// A flood of revocation messages (1,000 over 7 s, each adding one) is
// enforced message by message but written once per save interval (1 s):
// 8 writes (the first at once, then one per interval while changes come),
// not 1,000; a clean shutdown with nothing unsaved writes nothing more,
// and the file then holds them all with the last revision.
func TestRevocationSavesCoalesced(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	leaf, err := tlsutil.ReadCertFile(filepath.Join(pki, "agent-h1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: t.TempDir(), TLSCA: filepath.Join(pki, tlsutil.CAFile), RevocationsSaveInterval: time.Second}
	var now time.Time // the bubble's
	synctest.Test(t, func(t *testing.T) {
		now = time.Now()
		r, err := openRevocations(cfg, now, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		a := &agent{cfg: cfg, log: zerolog.Nop(), revs: r}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.saveRevocationsLoop(ctx) }()
		const n = 1000
		for i := range n {
			serial := tlsutil.SerialString(leaf)
			if i < n-1 {
				serial = fmt.Sprintf("%x", 0x1000+i) // others
			}
			in := &v1.RevocationSet{Revision: int64(i + 1), Revocations: []*v1.Revocation{{Serial: serial, RevokedAt: timestamppb.New(now),
				RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))}}}
			if !a.takeRevocations(in, time.Now()) {
				t.Fatalf("message %d: nothing taken", i)
			}
			time.Sleep(7 * time.Millisecond) // the bubble's clock: 7 s in all
		}
		// The last one is enforced before any save could take it.
		if err := a.checkRevoked(sidePeer, "", []*x509.Certificate{leaf}); err == nil {
			t.Fatal("h1 accepted right after its revocation")
		}
		time.Sleep(2 * time.Second) // past the last interval
		synctest.Wait()
		if got := testutil.ToFloat64(r.saves.WithLabelValues(saveSaved)); got != 8 {
			t.Fatalf("saves after 1,000 messages over 7 s = %v, want 8 (one per 1 s interval)", got)
		}
		if rev := *r.revision(); rev != n {
			t.Fatalf("hello revision %d, want %d", rev, n)
		}
		cancel()
		<-done
		a.flushRevocations()
		if got := testutil.ToFloat64(r.saves.WithLabelValues(saveSaved)); got != 8 {
			t.Fatalf("saves after a shutdown with nothing unsaved = %v, want 8", got)
		}
	})
	l := revocation.NewSet(0, time.Time{})
	if err := l.Load(filepath.Join(cfg.DataDir, revocationsFile), now, 0); err != nil || l.Len() != 1000 || l.Revision() != 1000 {
		t.Fatalf("file: %d entries, revision %d, %v; want 1000, 1000", l.Len(), l.Revision(), err)
	}
}

// A failed save is retried after the interval (counted, logged once), and
// the Hello keeps the revision last saved; a clean shutdown saves what the
// saver has not.
func TestRevocationSaveFailureRetried(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := Config{DataDir: filepath.Join(dir, "data"), TLSCA: filepath.Join(pki, tlsutil.CAFile), RevocationsSaveInterval: time.Second}
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		r, err := openRevocations(cfg, now, zerolog.Nop()) // no data dir: every save fails
		if err != nil {
			t.Fatal(err)
		}
		a := &agent{cfg: cfg, log: zerolog.Nop(), revs: r}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.saveRevocationsLoop(ctx) }()
		a.takeRevocations(&v1.RevocationSet{Revision: 3, Revocations: []*v1.Revocation{{Identity: "agent:h1", RevokedAt: timestamppb.New(now),
			RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))}}}, now)
		time.Sleep(2500 * time.Millisecond) // the bubble's clock: three save attempts
		synctest.Wait()
		if got := testutil.ToFloat64(r.saves.WithLabelValues(saveFailed)); got != 3 {
			t.Fatalf("failed saves over 2.5 s = %v, want 3 (at 0, 1 and 2 s)", got)
		}
		if rev := *r.revision(); rev != 0 {
			t.Fatalf("hello revision with no save %d, want 0", rev)
		}
		cancel()
		<-done
		if err := os.Mkdir(cfg.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		a.flushRevocations()
		if got := testutil.ToFloat64(r.saves.WithLabelValues(saveSaved)); got != 1 {
			t.Fatalf("saves at the shutdown = %v, want 1", got)
		}
		if rev := *r.revision(); rev != 3 {
			t.Fatalf("hello revision after the save %d, want 3", rev)
		}
	})
}

// The limits of Config.RevocationsSaveInterval.
func TestRevocationsSaveIntervalLimits(t *testing.T) {
	base := Config{Coordinators: []string{"c:1"}, HostID: "h1", DataDir: "d", Insecure: true}
	for _, d := range []time.Duration{0, MinRevocationsSaveInterval, MaxRevocationsSaveInterval} {
		c := base
		c.RevocationsSaveInterval = d
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	for _, d := range []time.Duration{-time.Second, MinRevocationsSaveInterval - 1, MaxRevocationsSaveInterval + 1} {
		c := base
		c.RevocationsSaveInterval = d
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "revocations_save_interval: "+d.String()) {
			t.Errorf("%s: %v", d, err)
		}
	}
}

// kill -9 of the real agent binary between receiving a revocation and
// saving it (--revocations-save-interval 1h: only the first message is
// saved, at once) loses it from the file only: the restarted agent's
// Hello says the revision of the file, the coordinator (which sends what
// was written since) sends it again, and it is enforced again; a clean
// stop then saves it.
func TestAgentKilledBeforeRevocationsSaved(t *testing.T) {
	bin := buildAgent(t)
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{testHostID, "h2", "h3"}}); err != nil {
		t.Fatal(err)
	}
	fc := newTLSFakeCoordinator(t, pki, "c1")
	now := time.Now()
	rev := func(id string) *v1.Revocation {
		return &v1.Revocation{Identity: id, RevokedAt: timestamppb.New(now), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))}
	}
	setRevs := func(rs *v1.RevocationSet) {
		fc.mu.Lock()
		fc.revocations = rs
		fc.notifyLocked()
		fc.mu.Unlock()
	}
	setRevs(&v1.RevocationSet{Revision: 5, Revocations: []*v1.Revocation{rev("agent:h2")}})
	dataDir := t.TempDir()
	file := filepath.Join(dataDir, revocationsFile)
	lw := &testWriter{t: t}
	t.Cleanup(func() { lw.mu.Lock(); lw.done = true; lw.mu.Unlock() })
	metrics := ports.Addr(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--coordinator", fc.addr, "--host-id", testHostID, "--data-dir", dataDir,
			"--tls-ca", filepath.Join(pki, tlsutil.CAFile), "--tls-cert", filepath.Join(pki, "agent-"+testHostID+".pem"),
			"--tls-key", filepath.Join(pki, "agent-"+testHostID+"-key.pem"), "--metrics-listen", metrics,
			"--revocations-save-interval", "1h", "--log-level", "debug")
		cmd.Stderr = lw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	metric := func(name string, labels ...string) float64 {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return -1 // not serving yet
		}
		resp.Body.Close()
		_, mfs := scrapeMetrics(t, "http://"+metrics+"/metrics")
		v, _, _ := metricValue(mfs, name, labels...)
		return v
	}
	saved := func() *v1.RevocationSet {
		l := revocation.NewSet(0, time.Time{})
		if err := l.Load(file, time.Now(), 0); err != nil {
			t.Fatal(err)
		}
		return l.Snapshot()
	}

	cmd := start()
	testkit.Eventually(t, 30*time.Second, "revision 5 saved", func() bool {
		return metric("fleetwave_agent_revocation_saves_total", "result", saveSaved) == 1
	})
	if s := saved(); s.GetRevision() != 5 || len(s.GetRevocations()) != 1 {
		t.Fatalf("file after the first message: %v", s)
	}
	setRevs(&v1.RevocationSet{Revision: 6, Revocations: []*v1.Revocation{rev("agent:h2"), rev("agent:h3")}})
	testkit.Eventually(t, 30*time.Second, "h3's revocation held", func() bool { return metric("fleetwave_agent_revocations") == 2 })
	p := &agentProc{t: t}
	p.kill9(cmd)
	if s := saved(); s.GetRevision() != 5 || len(s.GetRevocations()) != 1 {
		t.Fatalf("file after kill -9 with revision 6 unsaved: %v (want revision 5, h2 only)", s)
	}

	cmd = start()
	fc.waitFor(t, "the restarted agent's hello", 30*time.Second, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) == 2 })
	fc.mu.Lock()
	h := fc.hellos[1]
	fc.mu.Unlock()
	if h.RevocationsRevision == nil || h.GetRevocationsRevision() != 5 {
		t.Fatalf("restarted agent's hello revision %v, want 5 (the file's)", h.RevocationsRevision)
	}
	testkit.Eventually(t, 30*time.Second, "h3's revocation held again", func() bool { return metric("fleetwave_agent_revocations") == 2 })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent after SIGTERM: %v", err)
	}
	if s := saved(); s.GetRevision() != 6 || len(s.GetRevocations()) != 2 {
		t.Fatalf("file after a clean stop: %v (want revision 6, h2 and h3)", s)
	}
}

// An agent at --max-revocations that refused a new revocation does not
// save or say a later revision of the same stream (a widening, or new ones
// once pruning made room): the coordinator's stream never sends the
// refused one again, so only a Hello from before it brings it back. The
// next stream's Hello says that revision and the agent takes the
// revisions of that stream again.
func TestRevisionStaysBehindRefusedRevocation(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: t.TempDir(), TLSCA: filepath.Join(pki, tlsutil.CAFile), MaxRevocations: 2}
	now := time.Now()
	r, err := openRevocations(cfg, now, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{cfg: cfg, log: zerolog.Nop(), revs: r, rep: newReporter(spec.MaxServicesPerHost)}
	rev := func(id string, revoked, expires time.Time) *v1.Revocation {
		return &v1.Revocation{Identity: id, RevokedAt: timestamppb.New(revoked), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(expires)}
	}
	take := func(at time.Time, revision int64, rs ...*v1.Revocation) {
		t.Helper()
		a.takeRevocations(&v1.RevocationSet{Revision: revision, Revocations: rs}, at)
		a.saveRevocations()
	}
	if h := a.hello(); h.GetRevocationsRevision() != 0 {
		t.Fatalf("first hello revision %d", h.GetRevocationsRevision())
	}
	take(now, 4, rev("agent:a", now, now.Add(time.Minute)), rev("agent:b", now, now.Add(time.Hour)))
	take(now, 5, rev("agent:c", now, now.Add(time.Hour))) // refused: full
	take(now, 6, rev("agent:b", now.Add(time.Second), now.Add(time.Hour)))
	if got := *r.revision(); got != 4 {
		t.Fatalf("revision saved after c was refused and b widened: %d, want 4 (c comes again only from there)", got)
	}
	later := now.Add(2 * time.Minute) // a expired: room for c
	take(later, 7, rev("agent:d", now, now.Add(3*time.Minute)))
	if got := *r.revision(); got != 4 || r.set.Len() != 2 {
		t.Fatalf("after d took the room on the same stream: revision %d, %d held; want 4, 2", got, r.set.Len())
	}
	// The next stream: its Hello says 4, the coordinator sends what came
	// since; c is refused again (d took the room), then, once d expired
	// too, taken with the stream's revision.
	if h := a.hello(); h.GetRevocationsRevision() != 4 {
		t.Fatalf("next hello revision %d, want 4", h.GetRevocationsRevision())
	}
	take(later, 7, rev("agent:b", now.Add(time.Second), now.Add(time.Hour)), rev("agent:c", now, now.Add(time.Hour)), rev("agent:d", now, now.Add(3*time.Minute)))
	if got := *r.revision(); got != 4 {
		t.Fatalf("c refused again: revision %d, want 4", got)
	}
	if h := a.hello(); h.GetRevocationsRevision() != 4 {
		t.Fatalf("third hello revision %d, want 4", h.GetRevocationsRevision())
	}
	take(now.Add(4*time.Minute), 8, rev("agent:b", now.Add(time.Second), now.Add(time.Hour)), rev("agent:c", now, now.Add(time.Hour)))
	if got := *r.revision(); got != 8 {
		t.Fatalf("revision on a stream that refused nothing: %d, want 8", got)
	}
	if _, ok := r.set.RevokedIdentityAt("agent", "c"); !ok {
		t.Fatal("c not held")
	}
}
