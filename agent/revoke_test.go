package agent

import (
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
	if err := a.checkRevoked(sidePeer, chainOf("agent-h2")); err == nil || !strings.Contains(err.Error(), "every certificate of agent:h2") {
		t.Fatalf("h2 at the peer listener: %v", err)
	}
	if err := a.checkRevoked(sidePeer, chainOf("agent-h1")); err != nil {
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
	if err := b.checkRevoked(sidePeer, chainOf("agent-h2")); err == nil {
		t.Fatal("h2 accepted after a restart")
	}
	if got := *b.revs.revision(); got != 5 {
		t.Fatalf("revision after a restart %d, want 5 (the last save's)", got)
	}

	// The coordinator of an open stream is revoked: left, revision forgotten.
	state := tls.ConnectionState{PeerCertificates: chainOf("coordinator-c1")}
	p := &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}}
	if err := b.checkCoordinatorRevoked(p); err != nil {
		t.Fatalf("c1 before its revocation: %v", err)
	}
	b.takeRevocations(&v1.RevocationSet{Revision: 9, Revocations: []*v1.Revocation{rev("coordinator:c1")}}, now)
	err := b.checkCoordinatorRevoked(p)
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

// The last resort against revocations of every coordinator: only when
// each address of the list failed since one was last accepted, at least
// one refused as revoked, once, and then the record starts again; an
// accepted coordinator clears it. Before it, an agent given made-up
// revocations of every other coordinator (by one of them, gone since)
// refused them all for good.
func TestCoordinatorLastResort(t *testing.T) {
	addrs := []string{"c1:1", "c2:1", "c3:1"}
	var c coordRefusals
	if c.lastResort(addrs) {
		t.Fatal("last resort with nothing failed")
	}
	for _, a := range addrs {
		c.failed(a)
	}
	if c.lastResort(addrs) {
		t.Fatal("last resort with every coordinator unreachable, none refused as revoked")
	}
	c.accepted()
	c.refused("c1:1")
	c.refused("c2:1")
	if c.lastResort(addrs) {
		t.Fatal("last resort with c3 not failed since")
	}
	c.failed("c3:1")
	c.failed("c1:1") // a refusal recorded stays
	if !c.lastResort(addrs) {
		t.Fatal("no last resort with c1, c2 refused as revoked and c3 unreachable")
	}
	if c.lastResort(addrs) {
		t.Fatal("a second last resort without the coordinators failing again")
	}
	c.refused("c1:1")
	c.refused("c2:1")
	c.accepted()
	c.refused("c3:1")
	if c.lastResort(addrs) {
		t.Fatal("last resort although c1 and c2 were accepted since")
	}
	c.refused("c1:1")
	c.refused("c2:1")
	c.refused("other:1") // not in the list: changes nothing
	if !c.lastResort(addrs) {
		t.Fatal("no last resort with every coordinator refused")
	}
	if c.lastResort(nil) {
		t.Fatal("last resort with no coordinators")
	}
	var none *revocations // an insecure agent
	none.accepted()
	none.failed("c1:1")
	if none.lastResort(addrs) {
		t.Fatal("last resort without revocations")
	}
}
