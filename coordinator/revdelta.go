package coordinator

// Revocations for agents (ConnectResponse.revocations): an agent that keeps
// revocations says in its hello up to which etcd revision it holds them
// (Hello.revocations_revision); its stream sends what was written after
// that (everything when it is 0 or ahead of this coordinator's etcd), with
// its first assignments, and then what is new, as revocation-only messages,
// whenever the mirror sees a revocation written. Nothing is sent again
// that the agent holds: with 10,000 agents and 10,000 revocations a new
// revocation costs one entry per agent, not the list. Deletions (pruning)
// are not sent: agents prune by the same rule themselves.

import (
	"sync"

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
}

type revDeltaEntry struct {
	out []*v1.Revocation
	at  int64
}

// maxRevDeltas bounds the cache: past it, it starts again.
const maxRevDeltas = 1024

// revocationsSince returns the revocations written after since and the
// revision they are complete up to.
func (h *hub) revocationsSince(since int64) ([]*v1.Revocation, int64) {
	epoch := h.c.mirror.RevocationEpoch()
	d := &h.revDelta
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.epoch != epoch || d.since == nil || len(d.since) >= maxRevDeltas {
		d.epoch, d.since = epoch, map[int64]revDeltaEntry{}
	}
	if e, ok := d.since[since]; ok {
		return e.out, e.at
	}
	// Read after the epoch: what is read may be newer than the epoch it
	// is cached under, never older, so a later epoch recomputes.
	out, at := h.c.mirror.RevocationsSince(since)
	d.since[since] = revDeltaEntry{out: out, at: at}
	return out, at
}

// attachRevocations puts into m the revocations c's agent does not hold
// yet (none to an agent that does not keep them) and returns the revision
// it holds them up to once m is sent. Only c's sender calls it.
func (h *hub) attachRevocations(c *agentConn, m *v1.ConnectResponse) int64 {
	if !c.revocations {
		return 0
	}
	out, at := h.revocationsSince(c.revSent)
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
