package coordinator

import (
	"fmt"
	"slices"
	"strings"

	"context"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/store"

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

// A delta larger than the bound of one message goes in several, in the
// order the revocations were written, each at most the bound (whole
// revisions) with the revision it is complete up to, the last at the
// mirror's: together every revocation once. Failed before (one message
// carried the whole delta: 10,000 revocations of 1,024 bytes, or more
// with a larger --max-revocations, came near or over the agent's 16 MiB
// receive limit, and a message over it ends the stream at every
// connection).
func TestRevocationDeltaSplitIntoBoundedMessages(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx := t.Context()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	reason := strings.Repeat("r", 200)
	var want []string
	for i := range 7 {
		host := fmt.Sprintf("h%d", 10+i)
		if _, err := admin.RevokeCertificate(ctx, &v1.RevokeCertificateRequest{Identity: "agent:" + host, Reason: reason}); err != nil {
			t.Fatal(err)
		}
		want = append(want, "identity/agent/"+host)
	}
	c := coordinatorOf(t, f)
	const maxBytes = 600 // two of these revocations, not three
	c.hub.revDelta.mu.Lock()
	c.hub.revDelta.maxBytes = maxBytes
	c.hub.revDelta.mu.Unlock()

	stream, m := helloRev(t, f, "h1", proto.Int64(0))
	var got []string
	var last int64
	for {
		set := m.GetRevocations()
		if n := len(set.GetRevocations()); n == 0 || n > 2 {
			t.Fatalf("message with %d revocations (%v), want 1 or 2 (at most %d bytes)", n, revKeys(set), maxBytes)
		}
		if set.GetRevision() <= last {
			t.Fatalf("revision %d after %d", set.GetRevision(), last)
		}
		last = set.GetRevision()
		got = append(got, revKeys(set)...)
		if len(got) >= len(want) {
			break
		}
		var err error
		if m, err = stream.Recv(); err != nil {
			t.Fatal(err)
		}
		if !m.GetRevocationsOnly() && len(m.GetRevocations().GetRevocations()) == 0 {
			m.Revocations = nil // an assignment set queued meanwhile
			if m, err = stream.Recv(); err != nil {
				t.Fatal(err)
			}
		}
	}
	slices.Sort(got)
	if !sameKeys(got, want...) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// The last message is complete up to the mirror's revision then
	// (other writes may have moved it since), past the last revocation.
	all, at := c.mirror.RevocationsSince(0)
	if last < all[len(all)-1].Rev || last > at {
		t.Fatalf("last message at revision %d, want from the last revocation's %d to the mirror's %d", last, all[len(all)-1].Rev, at)
	}
	// A revision in the middle resumes after it.
	_, first := helloRev(t, f, "h2", proto.Int64(all[3].Rev))
	if k := revKeys(first.GetRevocations()); !sameKeys(k, want[4], want[5]) {
		t.Fatalf("after revision of %s: got %v, want %v", want[3], k, want[4:6])
	}
}

// cutRevocations cuts only between revisions and takes at least one
// revision whatever its size.
func TestCutRevocations(t *testing.T) {
	r := func(id string, rev int64) store.Versioned[*v1.Revocation] {
		return store.Versioned[*v1.Revocation]{Val: &v1.Revocation{Identity: id, Reason: strings.Repeat("r", 100)}, Rev: rev}
	}
	all := []store.Versioned[*v1.Revocation]{r("agent:b", 5), r("agent:a", 5), r("agent:c", 6)}
	for _, tc := range []struct {
		name     string
		maxBytes int
		want     []string
		at       int64
		more     bool
	}{
		{"all fit", 1 << 20, []string{"identity/agent/a", "identity/agent/b", "identity/agent/c"}, 9, false},
		{"one revision's pair over the bound is kept whole", 10, []string{"identity/agent/a", "identity/agent/b"}, 5, true},
	} {
		e := cutRevocations(all, 9, tc.maxBytes)
		var got []string
		for _, x := range e.out {
			got = append(got, revocation.Key(x))
		}
		if !sameKeys(got, tc.want...) || e.at != tc.at || e.more != tc.more {
			t.Errorf("%s: got %v at %d more %v, want %v at %d more %v", tc.name, got, e.at, e.more, tc.want, tc.at, tc.more)
		}
	}
	if e := cutRevocations(nil, 9, 0); len(e.out) != 0 || e.at != 9 || e.more {
		t.Errorf("empty: %+v", e)
	}
}
