package sim

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
)

const (
	gbit = 125_000_000.0
	mb50 = 50_000_000
)

func baseParams(n int) ArtifactParams {
	return ArtifactParams{Hosts: n, Size: mb50, Down: gbit, Up: gbit, Coord: 10 * gbit, PeerMaxUploads: 8,
		Origin: rollout.StageOrigin, FanOut: rollout.StageFanout, Canary: 1, Waves: []uint32{2, 10, 50, 100}}
}

func TestWaveSizes(t *testing.T) {
	for _, c := range []struct {
		n, canary int
		waves     []uint32
		want      []int
	}{
		{1000, 1, []uint32{2, 10, 50, 100}, []int{1, 19, 80, 400, 500}},
		{3, 1, []uint32{50, 100}, []int{1, 1, 1}},
		{10, 0, []uint32{50}, []int{5, 5}},         // the rest forms a last wave
		{4, 1, []uint32{10, 25, 200}, []int{1, 3}}, // 10% and 25% add no host; 200% counts as 100
		{2, 5, nil, []int{2}},                      // canary larger than the fleet
	} {
		if got := WaveSizes(c.n, c.canary, c.waves); !slices.Equal(got, c.want) {
			t.Errorf("WaveSizes(%d, %d, %v) = %v, want %v", c.n, c.canary, c.waves, got, c.want)
		}
	}
}

// Without peer-to-peer the coordinator sends every byte, and a wave of c
// hosts takes c*size over its rate (or one host's download time, if
// longer).
func TestArtifactSpreadModelWithoutPeers(t *testing.T) {
	p := baseParams(1000)
	p.WaveOverhead = time.Second
	r, err := ArtifactSpread(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Egress != 1000*mb50 || r.PeerBytes != 0 {
		t.Fatalf("egress %d, peer bytes %d; want %d, 0", r.Egress, r.PeerBytes, 1000*mb50)
	}
	// Canary: 0.4 s (its download rate); then 19, 80, 400, 500 hosts at
	// 10 Gbit/s: (19+80+400+500)*0.04 s = 39.96 s; plus 4 overheads
	// before the last wave.
	want := 0.4 + 999*0.04 + 4
	if d := r.Spread.Seconds() - want; math.Abs(d) > 1e-6 {
		t.Fatalf("spread %s, want %.3fs", r.Spread, want)
	}
	if r.Done != r.Spread+time.Second {
		t.Fatalf("done %s, want spread %s + one overhead", r.Done, r.Spread)
	}
}

// With peer-to-peer, the hosts done before a wave serve PeerMaxUploads
// each; the rest of the wave is refused and goes to the coordinator.
func TestArtifactSpreadModelWithPeers(t *testing.T) {
	p := baseParams(1000)
	p.P2P = true
	r, err := ArtifactSpread(p)
	if err != nil {
		t.Fatal(err)
	}
	// Waves 1, 19, 80, 400, 500. Sources before each: 0, 1, 20, 100, 500.
	// From peers: 0, 8, 80, 400, 500; from the coordinator: 1, 11, 0, 0, 0.
	if want := int64(12 * mb50); r.Egress != want {
		t.Fatalf("egress %d, want %d (12 hosts)", r.Egress, want)
	}
	if want := int64(988 * mb50); r.PeerBytes != want {
		t.Fatalf("peer bytes %d, want %d", r.PeerBytes, want)
	}
	// Canary 0.4 s; wave 1: 8 on the one peer (3.2 s), the coordinator
	// 11 at once (0.44 s) -> 3.2 s; wave 2: 80 on 20 peers, 4 each on
	// average, the most loaded 4+sqrt(8 ln 20) -> 9, capped at 8 (3.2 s);
	// wave 3: 400 on 100, 4+sqrt(8 ln 100) -> 11, 8 (3.2 s); wave 4: 500
	// on 500, 1+sqrt(2 ln 500) -> 5 (2.0 s).
	want := 0.4 + 3.2 + 3.2 + 3.2 + 2.0
	if d := r.Spread.Seconds() - want; math.Abs(d) > 1e-6 {
		t.Fatalf("spread %s, want %.3fs", r.Spread, want)
	}
	nop := baseParams(1000)
	r0, _ := ArtifactSpread(nop)
	if r.Spread >= r0.Spread || r.Egress >= r0.Egress {
		t.Fatalf("peer-to-peer (%s, %d bytes) no better than without (%s, %d bytes)", r.Spread, r.Egress, r0.Spread, r0.Egress)
	}
}

// Staging follows the engine's tree, and waits for the canary: the first
// wave installs from the coordinator, nothing stages until it is done,
// then each holder serves its rollout.StageFanout children: the holders
// grow about StageFanout-fold a round, and the coordinator serves the
// first wave only.
func TestArtifactSpreadModelStaged(t *testing.T) {
	p := baseParams(1000)
	p.P2P, p.Stage, p.WaveOverhead = true, true, time.Second
	r, err := ArtifactSpread(p)
	if err != nil {
		t.Fatal(err)
	}
	// Round 1: the canary's install from the coordinator, 0.4 s; its wave
	// ends 1 s later (1.4 s). Then the canary's 4 children (5 hold it),
	// their 16 (21), 64 (85), 256 (341), the last 659: 4 downloads per
	// holder (1.6 s each).
	if r.Rounds != 6 {
		t.Errorf("rounds %d, want 6", r.Rounds)
	}
	if want := 1.4 + 5*1.6; math.Abs(r.Spread.Seconds()-want) > 1e-6 {
		t.Errorf("spread %s, want %.1fs", r.Spread, want)
	}
	if r.Egress != 1*mb50 || r.PeerBytes != 999*mb50 {
		t.Errorf("egress %d, peer bytes %d; want 1 and 999 hosts' worth", r.Egress, r.PeerBytes)
	}
	// Waves of 1, 19, 80, 400, 500 (cumulative 1, 20, 100, 500, 1000):
	// the canary's ends at 1.4 s; the others are held after rounds 3, 5,
	// 6, 6 (4.6, 7.8, 9.4, 9.4 s); each ends 1 s after the later of that
	// and the previous one: 5.6, 8.8, 10.4, 11.4 s.
	if want := 11.4; math.Abs(r.Done.Seconds()-want) > 1e-6 {
		t.Errorf("done %s, want %.1fs", r.Done, want)
	}
	// A canary wave of 3: it serves its 4*3-2 = 10 children not in it.
	p.Canary = 3
	if r, _ = ArtifactSpread(p); r.Egress != 3*mb50 {
		t.Errorf("canary of 3: egress %d, want 3 hosts' worth", r.Egress)
	}
	// The whole fleet in the first wave: one round, nothing staged.
	one := baseParams(1)
	one.P2P, one.Stage = true, true
	if r, _ = ArtifactSpread(one); r.Rounds != 1 || r.Egress != mb50 || r.Spread != 400*time.Millisecond {
		t.Errorf("1 host: rounds %d, egress %d, spread %s; want 1, one copy, 0.4 s", r.Rounds, r.Egress, r.Spread)
	}

	for _, n := range []int{1000, 10_000, 100_000} {
		p := baseParams(n)
		p.P2P, p.Stage = true, true
		r, err := ArtifactSpread(p)
		if err != nil {
			t.Fatal(err)
		}
		growth := float64(rollout.StageFanout)
		bound := int(math.Ceil(math.Log(float64(n))/math.Log(growth))) + 1
		if r.Rounds < 1 || r.Rounds > bound {
			t.Errorf("%d hosts: %d rounds, want 1..%d (log%g)", n, r.Rounds, bound, growth)
		}
		if r.Egress+r.PeerBytes != int64(n)*mb50 {
			t.Errorf("%d hosts: egress %d + peers %d, want every host's artifact once", n, r.Egress, r.PeerBytes)
		}
		// The coordinator serves the canary only.
		if want := int64(1) * mb50; r.Egress != want {
			t.Errorf("%d hosts: egress %d, want %d", n, r.Egress, want)
		}
		most := rollout.StageFanout // downloads per holder a round
		if lo, hi := time.Duration(r.Rounds)*400*time.Millisecond, time.Duration(r.Rounds)*time.Duration(most)*400*time.Millisecond; r.Spread < lo || r.Spread > hi {
			t.Errorf("%d hosts: spread %s, want %d rounds of 0.4 s (one download) to %d downloads at once", n, r.Spread, r.Rounds, most)
		}
		// Waves that wait (min_healthy_time, bake) gain from staging.
		p.WaveOverhead = 5 * time.Second
		r, _ = ArtifactSpread(p)
		unstaged := p
		unstaged.Stage = false
		u, _ := ArtifactSpread(unstaged)
		if r.Done > u.Done {
			t.Errorf("%d hosts: staged rollout %s slower than unstaged %s", n, r.Done, u.Done)
		}
	}
	// Without peers the engine has no holder: the coordinator's NIC stays
	// the bound and the model gives the unstaged answer.
	p = baseParams(1000)
	p.Stage = true
	r, _ = ArtifactSpread(p)
	p.Stage = false
	u, _ := ArtifactSpread(p)
	if r.Egress != 1000*mb50 || r.Spread != u.Spread || r.Rounds != 0 {
		t.Fatalf("staged without peers: egress %d, spread %s (unstaged %s), rounds %d; want all from the coordinator as unstaged", r.Egress, r.Spread, u.Spread, r.Rounds)
	}
}

// Staging needs Origin and FanOut (the engine's constants, passed by the
// callers); other values change the growth.
func TestArtifactSpreadModelStageParams(t *testing.T) {
	p := baseParams(10_000)
	p.P2P, p.Stage = true, true
	def, _ := ArtifactSpread(p)
	zero := p
	zero.Origin, zero.FanOut = 0, 0
	if _, err := ArtifactSpread(zero); err == nil || !strings.Contains(err.Error(), "origin: 0") || !strings.Contains(err.Error(), "fan-out: 0") {
		t.Fatalf("stage without origin and fan-out: %v, want both named", err)
	}
	p.FanOut = 1
	slow, _ := ArtifactSpread(p)
	if slow.Rounds <= def.Rounds {
		t.Fatalf("fan-out 1: %d rounds, want more than the default's %d", slow.Rounds, def.Rounds)
	}
	// A fan-out above PeerMaxUploads: the refused go to the coordinator.
	p.FanOut, p.PeerMaxUploads = 16, 8
	over, _ := ArtifactSpread(p)
	if over.Egress <= def.Egress || over.Egress+over.PeerBytes != 10_000*mb50 {
		t.Fatalf("fan-out 16 over 8 uploads: egress %d, peer bytes %d; want more egress than %d, every byte once", over.Egress, over.PeerBytes, def.Egress)
	}
}

func TestMaxLoad(t *testing.T) {
	for _, c := range []struct{ n, d, want int }{
		{8, 1, 8}, {0, 5, 0}, {50, 50, 4}, {40, 10, 9}, {1000, 10, 122},
	} {
		if got := maxLoad(c.n, c.d); got != c.want {
			t.Errorf("maxLoad(%d, %d) = %d, want %d", c.n, c.d, got, c.want)
		}
	}
}

func TestArtifactSpreadModelDeterministic(t *testing.T) {
	p := baseParams(5000)
	p.P2P = true
	a, _ := ArtifactSpread(p)
	b, _ := ArtifactSpread(p)
	if !slices.Equal(a.WaveSizes, b.WaveSizes) || a.Spread != b.Spread || a.Egress != b.Egress || a.Done != b.Done {
		t.Fatalf("two runs differ: %+v, %+v", a, b)
	}
}

func TestArtifactSpreadModelBadParams(t *testing.T) {
	_, err := ArtifactSpread(ArtifactParams{Hosts: 0, Size: -1, Down: 0, Up: math.Inf(1), Coord: -1, PeerMaxUploads: 0, Origin: -1, FanOut: -1, Canary: -1, WaveOverhead: -time.Second})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"hosts: 0", "size: -1", "down: 0", "up: +Inf", "coord: -1", "peer-max-uploads: 0", "origin: -1", "fan-out: -1", "canary: -1", "wave-overhead: -1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// TestArtifactSpreadModelTable prints the model's rows of
// docs/BENCHMARKS.md (go test -run TestArtifactSpreadModelTable -v): the
// harness's spec and rates for 1,000 to 100,000 hosts.
func TestArtifactSpreadModelTable(t *testing.T) {
	t.Log("| hosts | p2p | staging | every host holds it | SUCCEEDED | coordinator egress | peer bytes | staging rounds |")
	t.Log("|---|---|---|---|---|---|---|---|")
	for _, n := range []int{1000, 5000, 10_000, 100_000} {
		for _, mode := range []struct{ p2p, stage bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
			p := baseParams(n)
			p.P2P, p.Stage, p.WaveOverhead = mode.p2p, mode.stage, time.Second
			r, err := ArtifactSpread(p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Egress+r.PeerBytes != int64(n)*mb50 {
				t.Errorf("%d hosts %+v: %d + %d bytes moved, want %d", n, mode, r.Egress, r.PeerBytes, int64(n)*mb50)
			}
			rounds := "-"
			if mode.stage {
				rounds = strconv.Itoa(r.Rounds)
			}
			t.Logf("| %d | %s | %s | %.1f s | %.1f s | %.2f GB | %.1f GB | %s |", n, onOff(mode.p2p), onOff(mode.stage),
				r.Spread.Seconds(), r.Done.Seconds(), float64(r.Egress)/1e9, float64(r.PeerBytes)/1e9, rounds)
		}
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
