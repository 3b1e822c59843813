package rollout

import (
	"sort"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Peer-to-peer artifact sources.
//
// A host that is done on a rollout's target holds its artifact, verified,
// and (when its agent has a peer listener) serves it to other agents. The
// coordinator names a few of those hosts in each assignment of the target
// (Assignment.sources); the agent tries them in order and falls back to the
// release's URL or the coordinator. Which hosts, for whom, is decided here,
// deterministically from the rollout and the host records:
//
//   - candidates are the rollout's hosts in state DONE (healthy on the
//     target), with a peer address, never the asking host itself;
//   - hosts of the asking host's zone come first, then the others;
//   - within each of those two groups the candidates are ordered by wave,
//     then id, and each asking host takes a window of consecutive ones
//     starting at a position given by a hash of its id, so the fetches of a
//     wave spread evenly over the hosts that have the artifact (each of
//     C candidates is named by about n/C of the asking hosts) instead of
//     all going to the canary; the window is ordered by wave (earlier
//     waves first).
//
// Building the index (NewPeerSet) is O(C log C) once per change of the
// desired state; picking for one host is O(n).

// Limits of the number of sources per assignment.
const (
	DefaultSources = 3
	MaxSources     = 16
)

// Peer is a host that can serve the artifact of a rollout's target.
type Peer struct {
	ID      string
	Address string
	Zone    string
	// Wave is the index of the rollout wave the host was in.
	Wave int
}

// PeerHost is what the coordinator knows of a host for choosing sources:
// its labels (the zone) and the peer address its agent advertised.
type PeerHost struct {
	Labels  map[string]string
	Address string
}

// PeersOf returns the hosts of r that are done on its target and have a
// peer address in hosts (a host missing from hosts is left out).
func PeersOf(r *v1.Rollout, hosts map[string]PeerHost) []Peer {
	var out []Peer
	for wi, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			if hp.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
				continue
			}
			h, ok := hosts[hp.GetHostId()]
			if !ok || h.Address == "" {
				continue
			}
			out = append(out, Peer{ID: hp.GetHostId(), Address: h.Address, Zone: h.Labels[ZoneLabel], Wave: wi})
		}
	}
	return out
}

// PeerSet indexes candidates for Pick.
type PeerSet struct {
	byZone map[string][]Peer
	all    []Peer
	ids    map[string]bool
}

// NewPeerSet indexes peers (a peer listed twice counts once).
func NewPeerSet(peers []Peer) *PeerSet {
	s := &PeerSet{byZone: map[string][]Peer{}, ids: map[string]bool{}}
	for _, p := range peers {
		if s.ids[p.ID] || p.ID == "" || p.Address == "" {
			continue
		}
		s.ids[p.ID] = true
		s.all = append(s.all, p)
		s.byZone[p.Zone] = append(s.byZone[p.Zone], p)
	}
	byWaveID := func(ps []Peer) {
		sort.Slice(ps, func(i, j int) bool {
			if ps[i].Wave != ps[j].Wave {
				return ps[i].Wave < ps[j].Wave
			}
			return ps[i].ID < ps[j].ID
		})
	}
	byWaveID(s.all)
	for _, ps := range s.byZone {
		byWaveID(ps)
	}
	return s
}

// Len is the number of candidates.
func (s *PeerSet) Len() int { return len(s.all) }

// Has reports whether host is a candidate (it holds the artifact: it needs
// no sources).
func (s *PeerSet) Has(host string) bool { return s != nil && s.ids[host] }

// Pick returns up to n sources for host (in zone): same zone first, each
// group's window ordered by wave. n is clamped to [0, MaxSources].
func (s *PeerSet) Pick(host, zone string, n int) []Peer {
	n = min(max(n, 0), MaxSources)
	if s == nil || n == 0 || len(s.all) == 0 {
		return nil
	}
	start := hashID(host)
	var out []Peer
	window := func(ps []Peer, skipZone bool) {
		first := len(out)
		for i := 0; i < len(ps) && len(out) < n; i++ {
			p := ps[(start+uint64(i))%uint64(len(ps))]
			if p.ID == host || (skipZone && p.Zone == zone) {
				continue
			}
			out = append(out, p)
		}
		got := out[first:]
		sort.SliceStable(got, func(i, j int) bool { return got[i].Wave < got[j].Wave })
	}
	same := s.byZone[zone]
	window(same, false)
	if len(out) < n && len(same) < len(s.all) {
		window(s.all, true)
	}
	return out
}

// hashID is FNV-1a (64 bits) of id: where a host's window starts.
func hashID(id string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h
}

// SourcesOf converts picked peers to the assignment's sources.
func SourcesOf(peers []Peer) []*v1.ArtifactSource {
	out := make([]*v1.ArtifactSource, 0, len(peers))
	for _, p := range peers {
		out = append(out, &v1.ArtifactSource{HostId: p.ID, Address: p.Address})
	}
	return out
}

// BadSourceQuorum is how many distinct hosts must name a host as their
// bad_source (it served them bytes that failed verification) before the
// coordinator stops naming it as a source to anyone. One agent alone
// (malicious, or wrong about it: a faulty disk or memory of its own) cannot
// get healthy peers excluded fleet-wide; it drops the peer for itself.
const BadSourceQuorum = 2

// BadPeers returns the hosts named as a bad source by at least
// BadSourceQuorum distinct reporters. named maps each reporter to the hosts
// its reports name (one per service; a reporter naming a host twice, or
// itself, counts once, or not at all).
func BadPeers(named map[string][]string) map[string]bool {
	by := map[string]map[string]bool{}
	for reporter, hosts := range named {
		for _, h := range hosts {
			if h == "" || h == reporter {
				continue
			}
			if by[h] == nil {
				by[h] = map[string]bool{}
			}
			by[h][reporter] = true
		}
	}
	out := map[string]bool{}
	for h, reporters := range by {
		if len(reporters) >= BadSourceQuorum {
			out[h] = true
		}
	}
	return out
}
