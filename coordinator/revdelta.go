package coordinator

// Revocations for agents (ConnectResponse.revocations): an agent that keeps
// revocations says in its hello up to which etcd revision it holds them
// (Hello.revocations_revision); its stream sends what was written after
// that (everything when it is 0 or ahead of this coordinator's etcd), with
// its first assignments, and then what is new, as revocation-only messages,
// whenever the mirror sees a revocation written. Nothing is sent again
// that the agent holds: with 10,000 agents and 10,000 revocations a new
// revocation costs one entry per agent, not the list. Deletions (pruning)
// are not sent: agents prune by the same rule themselves. A large delta goes
// in several messages of at most MaxRevocationMessageBytes.

import (
	"sort"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/revocation"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// revDelta caches the revocations since a revision, per revision asked
// for, for one revocation epoch of the mirror: after a revocation the
// agents ask for the same few deltas, so each is computed once, not once
// per agent.
type revDelta struct {
	mu    sync.Mutex
	epoch uint64
	since map[int64]revDeltaEntry
	// maxBytes bounds the revocations of one message (0:
	// MaxRevocationMessageBytes; tests set less).
	maxBytes int
}

type revDeltaEntry struct {
	out  []*v1.Revocation
	at   int64
	more bool
}

// maxRevDeltas bounds the cache: past it, it starts again.
const maxRevDeltas = 1024

// MaxRevocationMessageBytes bounds the revocations one message to an agent
// carries (their encoding): a delta larger than it (10,000 revocations of
// up to 1,024 bytes each are 10 MiB, and --max-revocations has no upper
// bound) goes in several messages, in the order the revocations were
// written, each with the revision it is complete up to, so no message
// comes near the agent's 16 MiB receive limit (a message over it would
// end the stream at every connection, and the agent would never get its
// assignments).
const MaxRevocationMessageBytes = 1 << 20

// revocationsSince returns the revocations written after since, at most
// maxBytes of them (cut where the revision changes, at least one
// revision's), the revision they are complete up to, and whether more
// were written after it.
func (h *hub) revocationsSince(since int64) ([]*v1.Revocation, int64, bool) {
	epoch := h.c.mirror.RevocationEpoch()
	d := &h.revDelta
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.epoch != epoch || d.since == nil || len(d.since) >= maxRevDeltas {
		d.epoch, d.since = epoch, map[int64]revDeltaEntry{}
	}
	if e, ok := d.since[since]; ok {
		return e.out, e.at, e.more
	}
	// Read after the epoch: what is read may be newer than the epoch it
	// is cached under, never older, so a later epoch recomputes.
	all, at := h.c.mirror.RevocationsSince(since)
	e := cutRevocations(all, at, d.maxBytes)
	d.since[since] = e
	return e.out, e.at, e.more
}

// cutRevocations takes from all (by revision) what fits in maxBytes (0:
// MaxRevocationMessageBytes): whole revisions, at least the first; at is
// the revision all is complete up to.
func cutRevocations(all []store.Versioned[*v1.Revocation], at int64, maxBytes int) revDeltaEntry {
	if maxBytes <= 0 {
		maxBytes = MaxRevocationMessageBytes
	}
	n, size := 0, 0
	for n < len(all) {
		// Each entry costs its encoding, its tag and its length.
		s := proto.Size(all[n].Val) + 4
		if n > 0 && size+s > maxBytes && all[n].Rev != all[n-1].Rev {
			break
		}
		size += s
		n++
	}
	e := revDeltaEntry{at: at, out: make([]*v1.Revocation, 0, n)}
	if n < len(all) {
		e.at, e.more = all[n-1].Rev, true
	}
	for _, r := range all[:n] {
		e.out = append(e.out, r.Val)
	}
	sort.Slice(e.out, func(i, j int) bool { return revocation.Key(e.out[i]) < revocation.Key(e.out[j]) })
	return e
}

// attachRevocations puts into m the revocations c's agent does not hold
// yet (none to an agent that does not keep them; at most
// MaxRevocationMessageBytes of them: the sender then sends the rest in
// revocation-only messages) and returns the revision it holds them up to
// once m is sent. Only c's sender calls it.
func (h *hub) attachRevocations(c *agentConn, m *v1.ConnectResponse) int64 {
	if !c.revocations {
		return 0
	}
	out, at, more := h.revocationsSince(c.revSent)
	if more {
		h.mu.Lock()
		c.revPending = true
		h.mu.Unlock()
	}
	if len(out) == 0 && (at == c.revSent || m.GetRevocationsOnly()) {
		return c.revSent
	}
	m.Revocations = &v1.RevocationSet{Revocations: out, Revision: at}
	return at
}

// pushRevocations queues a revocation-only message to every stream of an
// agent that keeps revocations (its sender sends what is new to it, if
// anything).
func (h *hub) pushRevocations() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		if !c.revocations || c.done {
			continue
		}
		c.revPending = true
		if !c.sending {
			c.sending = true
			c.senders.Add(1)
			go h.sendLoop(c)
		}
	}
}
