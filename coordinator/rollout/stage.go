package rollout

import (
	"sort"

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
//   - holders are the hosts of the plan that are DONE on the target
//     (PeersOf) or whose latest report says staged_sha256 = the target's
//     artifact sha256, with a peer address (not revoked, not a bad source:
//     the caller's hosts map leaves those out), ordered by wave, then id;
//   - waiting hosts are the PENDING hosts of the plan that do not report it
//     staged, in wave order (then plan order): later waves' hosts get the
//     artifact in the order their waves will need it;
//   - hosts that cannot stage now (out: not connected, or their latest
//     report says their staging of this artifact failed,
//     stage_failed_sha256) are neither waiting nor holders: an admission
//     slot never stays with a host that will not fill it, so a
//     disconnected or failing stager never stalls the others (a failed
//     host fetches the release when its wave comes);
//   - fan-out admission: the first StageOrigin + StageFanout × holders of
//     the waiting hosts are admitted (get stage now); the others wait. The
//     admitted host at position i names holders starting at holder
//     (i / StageFanout) mod holders as its sources (at most n); without
//     holders it names none and fetches from the release's URL or the
//     coordinator. Each holder is thus the first source of at most
//     StageFanout + StageOrigin hosts, under the peers' default
//     --peer-max-uploads (8);
//   - as admitted hosts report staged they become holders and admit
//     StageFanout more each: with every admitted host finishing in about one
//     artifact transfer time T, the holders grow 1 → 5 → 25 → … (×(1 +
//     StageFanout) a round), so N hosts hold the artifact after about
//     log₅(N) rounds, while the coordinator serves about StageOrigin copies
//     (plus what the canary's install fetches) instead of one per host.
//
// The admitted set only grows while holders do: a host that becomes a
// holder leaves the waiting list and admits StageFanout more, so an
// admitted host stays admitted (its sources may shift to other holders; the
// agent keeps a staging fetch in flight for the same release).
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
	// a peer address, by wave then id.
	Holders []Peer
	// Staged is how many hosts of the plan report the artifact staged
	// (with or without a peer address).
	Staged int
	// Waiting is how many PENDING hosts do not have it yet.
	Waiting int
	// Out is how many hosts of the plan cannot stage now (see PlanStage's
	// out) and do not report the artifact staged.
	Out      int
	admitted map[string]int // waiting host → its position among the admitted
	staged   map[string]bool
	n        int
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
	seen := map[string]bool{}
	var waiting []string
	for wi, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			id := hp.GetHostId()
			if seen[id] {
				continue
			}
			seen[id] = true
			st := hp.GetState()
			h, hasAddr := hosts[id]
			hasAddr = hasAddr && h.Address != "" && !out[id]
			switch {
			case st == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE:
				if hasAddr {
					p.Holders = append(p.Holders, Peer{ID: id, Address: h.Address, Zone: h.Labels[ZoneLabel], Wave: wi})
				}
			case staged[id]:
				p.Staged++
				if hasAddr {
					p.Holders = append(p.Holders, Peer{ID: id, Address: h.Address, Zone: h.Labels[ZoneLabel], Wave: wi})
				}
			case st != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_UNSPECIFIED:
			case out[id]:
				p.Out++
			default:
				waiting = append(waiting, id)
			}
		}
	}
	sort.SliceStable(p.Holders, func(i, j int) bool {
		if p.Holders[i].Wave != p.Holders[j].Wave {
			return p.Holders[i].Wave < p.Holders[j].Wave
		}
		return p.Holders[i].ID < p.Holders[j].ID
	})
	p.Waiting = len(waiting)
	k := min(StageOrigin+StageFanout*len(p.Holders), len(waiting))
	for i, id := range waiting[:k] {
		p.admitted[id] = i
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
// sources (none: it fetches from the release's URL or the coordinator). A
// host that reports the artifact staged keeps its stage (without sources):
// an assignment without one drops it.
func (p *StagePlan) Stage(host string) (bool, []Peer) {
	if p == nil {
		return false, nil
	}
	if p.staged[host] {
		return true, nil
	}
	i, ok := p.admitted[host]
	if !ok {
		return false, nil
	}
	h := len(p.Holders)
	if h == 0 || p.n == 0 {
		return true, nil
	}
	first := i / StageFanout
	out := make([]Peer, 0, min(p.n, h))
	for j := 0; j < h && len(out) < p.n; j++ {
		out = append(out, p.Holders[(first+j)%h])
	}
	return true, out
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
