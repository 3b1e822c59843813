package rollout

import (
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Staging ahead (rollout.stage_ahead).
//
// While a rollout with stage_ahead runs (PROGRESSING, not a rollback, not a
// removal, and a new release: to_version differs from from_version), the
// hosts of its later waves that wait for their wave (PENDING) fetch, verify
// and unpack its target release without switching to it
// (Assignment.stage), so that when their wave starts the install finds the
// release staged and fetches nothing. Which of them stage now, and from
// whom, is decided here, deterministically from the rollout, the hosts'
// peer addresses and which hosts report the target's artifact staged:
//
//   - nothing stages before the rollout's canary wave (its first, unless
//     no_canary: Wave.canary) has finished: every host of it DONE or
//     FAILED. The canary exists to reject a bad release; staging it
//     on the fleet while the canary may still reject it spends the fleet's
//     and the coordinator's bandwidth for nothing, and the canary, once
//     DONE, is the tree's first holder, so the coordinator serves one copy
//     (the canary's install) instead of the canary's and its children's.
//     A canary host without a peer address, or out, still holds the gate
//     shut until its wave finishes (a disconnected canary is not a passed
//     one);
//   - holders are the hosts of the plan that are DONE on the target
//     (PeersOf) or whose latest report says staged_sha256 = the target's
//     artifact sha256, with a peer address (not revoked, not a bad source:
//     the caller's hosts map leaves those out), in plan order (wave by
//     wave; by id within a zone, zones interleaved);
//   - future holders are the hosts in their wave and not DONE (UPDATING:
//     installing or checking the target), with a peer address and not out:
//     they will hold the artifact when their install finishes, so the
//     waiting hosts below them wait for them rather than become roots;
//   - waiting hosts are the PENDING hosts of the plan that do not report it
//     staged, in wave order (then plan order): later waves' hosts get the
//     artifact in the order their waves will need it;
//   - hosts that cannot stage now (out: not connected, or their latest
//     report says their staging of this artifact failed,
//     stage_failed_sha256) are neither waiting nor holders: an admission
//     slot never stays with a host that will not fill it, so a
//     disconnected or failing stager never stalls the others (a failed
//     host fetches the release when its wave comes);
//   - the tree: the plan's hosts in plan order (wave by wave) form a
//     StageFanout-ary tree (host q's parent is host (q-1)/StageFanout). A
//     waiting host looks up the tree, past hosts that serve nobody (no peer
//     address, out, or FAILED, or in their wave without a peer address),
//     to its first ancestor: a holder → it is admitted and that holder is
//     its first source (then a window of the other holders starting at a
//     hash of its id, up to n); a waiting host or a future holder → it
//     waits for it; none → it is a root, and the first StageOrigin roots
//     (plan order) are admitted without sources (the release's URL or the
//     coordinator serves them);
//   - a holder that is out (DONE or staged, with a peer address, but not
//     connected: a flapping or restarting holder) serves nobody now, but
//     the waiting hosts it would admit keep their admission (kept): they
//     look past it as above, and when that finds no holder they stay
//     admitted rather than wait or become roots, named a window of the
//     other holders (at a hash of their id, up to n; none left: the
//     coordinator or the release's URL serves them), so that while a
//     holder is out the fleet, not the coordinator, serves them when it
//     can (a coordinator that fails drops all its connections at once).
//     Their partial downloads are in
//     flight: dropping their admission made their agents cancel the
//     staging and drop what they had fetched, and a holder that flapped
//     made its children start over at every flap. The kept hosts are the
//     ones the holder admitted while connected (at most its StageFanout
//     children, more only past hosts that serve nobody), so the number of
//     admitted hosts does not grow when a holder goes;
//   - so a holder is the first source of at most its StageFanout children
//     (more only when a child serves nobody and its children look past
//     it), whatever order hosts finish in, and a host keeps its parent as
//     holders come and go: its staging fetch in flight stays counted where
//     it is. (An earlier rule, admitted host i named holder i/StageFanout,
//     held within one plan only: as hosts finished in any order the new
//     admits wrapped to holder 0, and the canary was asked for 300
//     stagings at once at 1,000 hosts; TestStageInFlightLoadPerHolder.)
//   - with every admitted host finishing in about one artifact transfer
//     time T, the holders grow StageFanout-fold a round (1 → 5 → 21 → 85
//     …), so N hosts hold the artifact after about log₄(N) rounds, while
//     the coordinator serves only the roots (none when the canary is done
//     with a peer address; StageOrigin at a time when no host above them
//     serves) instead of one copy per host. (Before the canary gate and
//     future holders, the canary's StageFanout children were roots while
//     it was in its wave: 1+StageFanout copies left the coordinator.)
//
// Rollbacks do not stage: their target is the release hosts ran before,
// usually still unpacked on them (Config.KeepReleases). A rollout
// superseded by a new release ends (SUPERSEDED): the next rollout's plan
// stages its own target, and agents drop the stage they no longer get.
const (
	// StageOrigin is how many waiting hosts stage at once without a holder
	// to name (the coordinator or the release's URL serves them).
	StageOrigin = 2
	// StageFanout is how many staging hosts each holder admits (and serves
	// as first source).
	StageFanout = 4
)

// StagePlan is which hosts of a rollout stage its target now.
type StagePlan struct {
	// Sha256 is the artifact staged.
	Sha256 string
	// Holders are the hosts that hold the artifact (DONE or staged), with
	// a peer address, in plan order (wave by wave, zones interleaved).
	Holders []Peer
	// Staged is how many hosts of the plan report the artifact staged
	// (with or without a peer address).
	Staged int
	// Waiting is how many PENDING hosts do not have it yet.
	Waiting int
	// Out is how many hosts of the plan cannot stage now (see PlanStage's
	// out) and do not report the artifact staged.
	Out int
	// CanaryWave says the rollout's canary wave (Wave.canary) has not
	// finished (a host of it PENDING or UPDATING): no host is admitted.
	CanaryWave bool
	// Kept is how many of the admitted hosts are admitted only because a
	// holder above them in the tree is out (they keep the admission it
	// gave them; see PlanStage).
	Kept     int
	admitted map[string]int  // waiting host → its position among the admitted
	first    map[string]Peer // admitted host → its parent holder (none: from the origin)
	kept     map[string]bool // admitted hosts kept without a holder above (a window of holders)
	staged   map[string]bool
	// left are the hosts the plan leaves out that would stage (waiting) or
	// serve (holders) if they could: Found.
	left []string
	n    int
}

// Stages reports whether a rollout stages ahead at all: stage_ahead, in
// flight, a new release, not a rollback or a removal.
func Stages(r *v1.Rollout) bool {
	return r.GetPolicy().GetStageAhead() && r.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING &&
		!r.GetRollback() && !r.GetRemove() && r.GetToVersion() != "" && r.GetToVersion() != r.GetFromVersion()
}

// PlanStage decides which waiting hosts of r stage its target (artifact
// sha) now and from which holders; staged are the hosts whose latest report
// says staged_sha256 = sha, out the hosts that cannot stage now (not
// connected, or their staging of sha failed: neither admitted nor
// holders), hosts the hosts with a peer address (see PeersOf), n the
// number of sources per assignment (clamped to [0, MaxSources]). nil when
// r does not stage (Stages) or sha is empty.
func PlanStage(r *v1.Rollout, sha string, hosts map[string]PeerHost, staged, out map[string]bool, n int) *StagePlan {
	if !Stages(r) || sha == "" {
		return nil
	}
	p := &StagePlan{Sha256: sha, admitted: map[string]int{}, staged: staged, n: min(max(n, 0), MaxSources)}
	// The plan's hosts in plan order (wave by wave), each once: the tree.
	type node struct {
		id    string
		peer  Peer
		class int
	}
	const (
		gone    = iota // serves nobody: no peer address, out, or FAILED
		holder         // DONE or staged, with a peer address
		waiting        // PENDING, not staged, not out: will hold it once staged
		future         // UPDATING (in its wave), with a peer address: will hold it once DONE
		lost           // DONE or staged, with a peer address, but out: serves nobody now; its children keep their admission
	)
	seen := map[string]bool{}
	var nodes []node
	for wi, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			id := hp.GetHostId()
			if seen[id] {
				continue
			}
			seen[id] = true
			st := hp.GetState()
			if w.GetCanary() && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED {
				p.CanaryWave = true
			}
			h, hasAddr := hosts[id]
			hasAddr = hasAddr && h.Address != ""
			// A holder with a peer address that is out is lost (left: it
			// serves again once back).
			holds := func() int {
				switch {
				case hasAddr && !out[id]:
					return holder
				case hasAddr:
					p.left = append(p.left, id)
					return lost
				}
				return gone
			}
			nd := node{id: id, peer: Peer{ID: id, Address: h.Address, Zone: h.Labels[ZoneLabel], Wave: wi}}
			switch {
			case st == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE:
				nd.class = holds()
			case staged[id]:
				p.Staged++
				nd.class = holds()
			case st == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING:
				if hasAddr && !out[id] {
					nd.class = future
				}
			case st != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_UNSPECIFIED:
			case out[id]:
				p.Out++
				p.left = append(p.left, id)
			default:
				nd.class = waiting
				p.Waiting++
			}
			if nd.class == holder {
				p.Holders = append(p.Holders, nd.peer)
			}
			nodes = append(nodes, nd)
		}
	}
	p.first, p.kept = map[string]Peer{}, map[string]bool{}
	if p.CanaryWave {
		p.left = nil // nobody stages before the canary passes, whoever comes back
		return p     // staging waits for the canary to pass
	}
	origin := 0
	for q, nd := range nodes {
		if nd.class != waiting {
			continue
		}
		// Up the tree past hosts that serve nobody: the first holder is
		// the source; a waiting ancestor or a future holder means wait for
		// it; none is a root (the coordinator or the release's URL serves
		// it). Past a lost holder (out), the host keeps the admission that
		// holder gave it.
		a, src, root, kept := q, -1, true, false
		for a > 0 {
			a = (a - 1) / StageFanout
			if nodes[a].class == gone {
				continue
			}
			if nodes[a].class == lost {
				kept = true
				continue
			}
			root = false
			if nodes[a].class == holder {
				src = a
			}
			break
		}
		switch {
		case src >= 0:
			p.admitted[nd.id] = len(p.admitted)
			p.first[nd.id] = nodes[src].peer
		case kept:
			p.Kept++
			p.admitted[nd.id] = len(p.admitted)
			p.kept[nd.id] = true
		case root && origin < StageOrigin:
			origin++
			p.admitted[nd.id] = len(p.admitted)
		}
	}
	return p
}

// Admitted is how many waiting hosts stage now.
func (p *StagePlan) Admitted() int {
	if p == nil {
		return 0
	}
	return len(p.admitted)
}

// Stage reports whether host stages now, and the holders to name as its
// sources (none: it fetches from the release's URL or the coordinator): its
// parent holder in the tree first, then a window of the other holders
// starting at a hash of its id (a host kept below a holder that is out,
// with no holder above it: the window only). A host that reports the artifact staged
// keeps its stage (without sources): an assignment without one drops it.
func (p *StagePlan) Stage(host string) (bool, []Peer) {
	if p == nil {
		return false, nil
	}
	if p.staged[host] {
		return true, nil
	}
	if _, ok := p.admitted[host]; !ok {
		return false, nil
	}
	first, ok := p.first[host]
	h := len(p.Holders)
	if (!ok && !p.kept[host]) || h == 0 || p.n == 0 {
		return true, nil
	}
	out := make([]Peer, 0, min(p.n, h))
	if ok {
		out = append(out, first)
	}
	start := hashID(host)
	for j := 0; j < h && len(out) < p.n; j++ {
		if c := p.Holders[(start+uint64(j))%uint64(h)]; c.ID != first.ID {
			out = append(out, c)
		}
	}
	return true, out
}

// Lost reports whether a host the plan counts on is no longer connected
// (connected says): an admitted host not staged yet (its admission slot
// and its children wait for it) or a holder (it serves its children).
// The plan was made with the hosts then connected; after such a
// disconnect it is out of date until the next plan (the hub replans).
func (p *StagePlan) Lost(connected func(host string) bool) bool {
	if p == nil {
		return false
	}
	for id := range p.admitted {
		if !p.staged[id] && !connected(id) {
			return true
		}
	}
	for _, h := range p.Holders {
		if !connected(h.ID) {
			return true
		}
	}
	return false
}

// Found reports whether a host the plan left out because it could not
// stage or serve then (out: a waiting host, or a holder) can now (canStage
// says: connected, and its staging of the artifact not failed). The plan
// was made without it; after it reconnects it is out of date until the
// next plan (the hub replans): a waiting host would stage nothing, and a
// holder serve nobody, until some other change replanned.
func (p *StagePlan) Found(canStage func(host string) bool) bool {
	if p == nil {
		return false
	}
	for _, id := range p.left {
		if canStage(id) {
			return true
		}
	}
	return false
}

// StagedHolders are the holders that hold the artifact staged (not DONE):
// added to the sources of installs of the target.
func (p *StagePlan) StagedHolders() []Peer {
	if p == nil {
		return nil
	}
	var out []Peer
	for _, h := range p.Holders {
		if p.staged[h.ID] {
			out = append(out, h)
		}
	}
	return out
}
