package coordinator

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/internal/revocation"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// helloRev opens host's stream saying it holds revocations up to rev (nil:
// an agent that keeps none) and returns the stream and its first message.
func helloRev(t *testing.T, f *tlsFleet, host string, rev *int64) (v1.AgentService_ConnectClient, *v1.ConnectResponse) {
	t.Helper()
	// The deadline is a failure guard for Recv, not a measurement.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	stream, err := v1.NewAgentServiceClient(f.dial(t, "agent-"+host, "")).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: host, RevocationsRevision: rev}}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("%s's stream: %v", host, err)
	}
	return stream, first
}

func revKeys(s *v1.RevocationSet) []string {
	var out []string
	for _, r := range s.GetRevocations() {
		out = append(out, revocation.Key(r))
	}
	return out
}

func sameKeys(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// Agents that keep revocations get only what they do not hold: all of
// them with the first assignments when they hold none (or a revision
// ahead of this etcd), those written after the revision they hold
// otherwise, and each new one alone in a revocation-only message. An
// agent that does not keep them (no revocations_revision) gets none and
// no revocation-only message. Failed before agents learnt revocations
// (no revocations were sent).
func TestAgentsGetRevocationDeltas(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx := t.Context()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	revoke := func(req *v1.RevokeCertificateRequest) {
		t.Helper()
		if _, err := admin.RevokeCertificate(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	revoke(&v1.RevokeCertificateRequest{Identity: "agent:h9", Reason: "stolen"})
	revoke(&v1.RevokeCertificateRequest{Serial: "abc123"})

	h1, first := helloRev(t, f, "h1", proto.Int64(0))
	if first.GetRevocationsOnly() || !sameKeys(revKeys(first.GetRevocations()), "identity/agent/h9", "serial/abc123") {
		t.Fatalf("h1's first message: revocations %v (only %v), want both with the assignments", revKeys(first.GetRevocations()), first.GetRevocationsOnly())
	}
	r1 := first.GetRevocations().GetRevision()
	if r1 <= 0 {
		t.Fatalf("revision %d", r1)
	}
	_, old := helloRev(t, f, "h2", nil)
	if old.GetRevocations() != nil {
		t.Fatalf("an agent that keeps no revocations got %v", old.GetRevocations())
	}

	revoke(&v1.RevokeCertificateRequest{Identity: "operator:bob"})
	// The new one comes alone: in a revocation-only message, or with an
	// assignment set queued meanwhile (h2's connect may cause one).
	var m *v1.ConnectResponse
	for m == nil || len(m.GetRevocations().GetRevocations()) == 0 {
		var err error
		if m, err = h1.Recv(); err != nil {
			t.Fatal(err)
		}
		if m.GetRevocationsOnly() && len(m.GetRevocations().GetRevocations()) == 0 {
			t.Fatalf("a revocation-only message with no revocation: %v", m)
		}
	}
	if !sameKeys(revKeys(m.GetRevocations()), "identity/operator/bob") {
		t.Fatalf("after a new revocation h1 got revocations %v; want operator:bob alone", revKeys(m.GetRevocations()))
	}
	r2 := m.GetRevocations().GetRevision()
	if r2 <= r1 {
		t.Fatalf("revision %d after %d", r2, r1)
	}
	c := coordinatorOf(t, f)
	c.hub.mu.Lock()
	if h2 := c.hub.conns["h2"]; h2 == nil || h2.revocations || h2.revPending {
		t.Errorf("h2's stream: %+v, want one that gets no revocations", h2)
	}
	c.hub.mu.Unlock()

	// Reconnecting: only what is newer than what the agent holds.
	for _, tc := range []struct {
		name string
		rev  int64
		want []string
	}{
		{"up to date", r2, nil},
		{"before operator:bob", r1, []string{"identity/operator/bob"}},
		{"ahead of this etcd (another cluster)", r2 + 1<<40, []string{"identity/agent/h9", "identity/operator/bob", "serial/abc123"}},
	} {
		_, first := helloRev(t, f, "h1", proto.Int64(tc.rev))
		if got := revKeys(first.GetRevocations()); !sameKeys(got, tc.want...) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
		if first.GetRevocations().GetRevision() < r2 {
			t.Errorf("%s: revision %d, want at least %d", tc.name, first.GetRevocations().GetRevision(), r2)
		}
	}
}
