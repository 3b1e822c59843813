package sim

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// The artifact-spread model on paper: how long a rollout takes to put an
// artifact on every host, and what the coordinator sends, from the fleet's
// size, the artifact's size, the rates and the waves. It is a flow model,
// pure and deterministic (no I/O, no clock), checked against the measured
// 1,000 and 5,000 host rows of the spread table (artifact_spread_test.go) and used
// for fleets too large to measure here (docs/BENCHMARKS.md).
//
// Without staging, the waves run one after the other. The hosts of a wave
// all ask for the artifact when the wave starts:
//
//   - without peer-to-peer, the coordinator serves them all at once:
//     its rate shared by c hosts, each at most its download rate:
//     Size / min(Down, Coord/c);
//   - with peer-to-peer, the sources are the D hosts done before the wave
//     (the coordinator names only those); each serves at most
//     PeerMaxUploads at once, so min(n, D*PeerMaxUploads) hosts fetch from
//     peers and the others, refused, from the coordinator as above. The
//     coordinator spreads the asking hosts over the sources by a hash of
//     their ids, so the most loaded source serves more than the mean p/D:
//     about p/D + sqrt(2 (p/D) ln D) (balls into bins), at most
//     PeerMaxUploads; its transfers, at min(Down, Up/load) each, end the
//     peers' part. The wave's transfer ends with the slower of the two
//     groups.
//
// A wave then takes WaveOverhead more (install, health checks, the
// coordinator noticing the wave is done and assigning the next).
//
// With staging, hosts fetch ahead of their wave by the rollout engine's
// tree (coordinator/rollout/stage.go, PlanStage), and only once the first
// (canary) wave has passed: the first wave installs as without staging
// (from the coordinator: nobody holds the artifact yet) and ends
// WaveOverhead later; nothing stages meanwhile. Then the plan's hosts in
// plan order form a FanOut-ary tree whose first holders are the first
// wave's hosts: they serve their FanOut children not in the first wave
// (FanOut*c - (c-1) for a first wave of c), and in each later round the
// hosts that became holders in the round before serve their FanOut
// children, so the holders grow about FanOut-fold a round (1, 5, 21, 85,
// … with the defaults), and a round lasts one transfer at FanOut
// downloads per holder, Size/min(Down, Up/FanOut). The coordinator serves
// the first wave only (no root: a host without a holder above it is a
// root only when the hosts above serve nobody, which with peer-to-peer
// they all do). The model admits a round's hosts all at once (the engine
// admits a holder's children as soon as it reports staged), and lets the
// tree serve the second wave's hosts too (the engine starts that wave
// when the first ends: its hosts install from the holders, PeerMaxUploads
// each, rather than stage). A later wave ends WaveOverhead after the later
// of the previous wave's end and the round in which its hosts all hold
// the artifact. Origin does not enter the model with peer-to-peer (the
// engine's StageOrigin bounds the roots, and there are none).
//
// Without peer-to-peer no host has a peer address, so the engine never has
// a holder: it stages Origin hosts at a time from the coordinator, whose
// NIC stays the bound; the model then gives the unstaged answer (Rounds
// 0).

// ArtifactParams describes one rollout for the model. Rates are in bytes
// per second.
type ArtifactParams struct {
	Hosts int
	Size  int64 // the artifact, bytes
	// Down and Up are each host's rates; Coord the coordinator's NIC.
	Down, Up, Coord float64
	// PeerMaxUploads is how many peer downloads a host serves at once.
	PeerMaxUploads int
	P2P            bool
	// Stage is rollout.stage_ahead: hosts fetch ahead of their wave,
	// Origin roots at a time from the coordinator, FanOut children per
	// holder (the callers pass rollout.StageOrigin and rollout.StageFanout:
	// the simulator does not import the coordinator's packages).
	Stage          bool
	Origin, FanOut int
	// Canary and Waves are the rollout policy's (cumulative percentages).
	Canary int
	Waves  []uint32
	// WaveOverhead is a wave's time after its hosts hold the artifact.
	WaveOverhead time.Duration
}

// ArtifactResult is the model's answer.
type ArtifactResult struct {
	// Spread is from release create to every host holding the artifact;
	// Done to the last wave done (the rollout SUCCEEDED).
	Spread, Done time.Duration
	// Egress is the coordinator's bytes; PeerBytes those between hosts.
	Egress, PeerBytes int64
	// Rounds is the number of staging rounds (Stage only).
	Rounds int
	// WaveSizes are the hosts of each wave.
	WaveSizes []int
}

// validate checks the parameters; errors name the field.
func (p ArtifactParams) validate() error {
	var errs []error
	if p.Hosts < 1 {
		errs = append(errs, fmt.Errorf("hosts: %d, want at least 1", p.Hosts))
	}
	if p.Size < 1 {
		errs = append(errs, fmt.Errorf("size: %d, want at least 1", p.Size))
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"down", p.Down}, {"up", p.Up}, {"coord", p.Coord}} {
		if !(r.v > 0) || math.IsInf(r.v, 0) {
			errs = append(errs, fmt.Errorf("%s: %v bytes/s, want > 0", r.name, r.v))
		}
	}
	if p.PeerMaxUploads < 1 {
		errs = append(errs, fmt.Errorf("peer-max-uploads: %d, want at least 1", p.PeerMaxUploads))
	}
	if p.Origin < 0 || (p.Stage && p.Origin == 0) {
		errs = append(errs, fmt.Errorf("origin: %d, want at least 1 with stage (the engine's rollout.StageOrigin)", p.Origin))
	}
	if p.FanOut < 0 || (p.Stage && p.FanOut == 0) {
		errs = append(errs, fmt.Errorf("fan-out: %d, want at least 1 with stage (the engine's rollout.StageFanout)", p.FanOut))
	}
	if p.Canary < 0 {
		errs = append(errs, fmt.Errorf("canary: %d is negative", p.Canary))
	}
	if p.WaveOverhead < 0 {
		errs = append(errs, fmt.Errorf("wave-overhead: %s is negative", p.WaveOverhead))
	}
	return errors.Join(errs...)
}

// WaveSizes cuts n hosts into waves as the rollout engine does: the
// canary, then one wave per cumulative percentage (rounded up; one that
// adds no host is skipped), then the rest.
func WaveSizes(n, canary int, waves []uint32) []int {
	var out []int
	covered := min(canary, n)
	if covered > 0 {
		out = append(out, covered)
	}
	for _, p := range waves {
		p = min(p, 100)
		target := int((int64(n)*int64(p) + 99) / 100)
		if target <= covered {
			continue
		}
		out = append(out, target-covered)
		covered = target
	}
	if covered < n {
		out = append(out, n-covered)
	}
	return out
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// maxLoad is the most downloads one of d sources serves when n hosts
// each pick one by a hash of their id (balls into bins: the mean
// m = n/d plus sqrt(2 m ln d), Raab and Steger's bound, rounded up; all n
// on a single source).
func maxLoad(n, d int) int {
	if d <= 1 {
		return n
	}
	m := float64(n) / float64(d)
	return int(math.Ceil(m + math.Sqrt(2*m*math.Log(float64(d)))))
}

// coordTime is how long the coordinator takes to serve c hosts at once.
func (p ArtifactParams) coordTime(c int) float64 {
	if c == 0 {
		return 0
	}
	return float64(p.Size) / min(p.Down, p.Coord/float64(c))
}

// ArtifactSpread runs the model.
func ArtifactSpread(p ArtifactParams) (ArtifactResult, error) {
	if err := p.validate(); err != nil {
		return ArtifactResult{}, err
	}
	res := ArtifactResult{WaveSizes: WaveSizes(p.Hosts, p.Canary, p.Waves)}
	over := p.WaveOverhead.Seconds()
	if p.Stage && p.P2P {
		return p.staged(res, over), nil
	}
	t, done := 0.0, 0
	for _, n := range res.WaveSizes {
		peers := 0
		tp := 0.0
		if p.P2P && done > 0 {
			peers = min(n, done*p.PeerMaxUploads)
			per := min(p.PeerMaxUploads, maxLoad(peers, done))
			tp = float64(p.Size) / min(p.Down, p.Up/float64(per))
		}
		c := n - peers
		transfer := max(tp, p.coordTime(c))
		res.Egress += int64(c) * p.Size
		res.PeerBytes += int64(peers) * p.Size
		t += transfer
		res.Spread = seconds(t)
		t += over
		done += n
	}
	res.Done = seconds(t)
	return res, nil
}

// staged is the model with staging ahead (and peer-to-peer).
func (p ArtifactParams) staged(res ArtifactResult, over float64) ArtifactResult {
	fan := p.FanOut
	// The first (canary) wave installs from the coordinator; nothing
	// stages until it is done.
	first := res.WaveSizes[0]
	t := p.coordTime(first)
	res.Egress += int64(first) * p.Size
	holders := []int{first} // after round r+1
	ends := []float64{t}    // end of round r+1
	firstEnd := t + over
	// Then the tree from the first wave's hosts, round by round.
	h, t := first, firstEnd
	fresh := fan*first - (first - 1) // their children not in the first wave
	for h < p.Hosts {
		admitted := min(fresh, p.Hosts-h)
		if admitted <= 0 {
			admitted = min(fan, p.Hosts-h)
		}
		servers := max((admitted+fan-1)/fan, 1)
		fromPeers := min(admitted, servers*p.PeerMaxUploads)
		fromCoord := admitted - fromPeers
		per := (fromPeers + servers - 1) / servers
		round := max(float64(p.Size)/min(p.Down, p.Up/float64(per)), p.coordTime(fromCoord))
		res.Egress += int64(fromCoord) * p.Size
		res.PeerBytes += int64(fromPeers) * p.Size
		h += admitted
		t += round
		holders = append(holders, h)
		ends = append(ends, t)
		fresh = fan * admitted
	}
	res.Rounds = len(holders)
	res.Spread = seconds(t)
	if h == first {
		res.Spread = seconds(ends[0]) // the first wave is the fleet
	}
	// When k hosts hold it: the end of the first round with k holders.
	heldBy := func(k int) float64 {
		for r, n := range holders {
			if n >= k {
				return ends[r]
			}
		}
		return t
	}
	done, covered := firstEnd, first
	for _, n := range res.WaveSizes[1:] {
		covered += n
		done = max(done, heldBy(covered)) + over
	}
	res.Done = seconds(done)
	return res
}
