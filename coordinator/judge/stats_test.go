package judge

import (
	"math"
	"math/big"
	"slices"
	"testing"
)

func near(t *testing.T, what string, got, want, rel float64) {
	t.Helper()
	if math.Abs(got-want) > rel*math.Abs(want) {
		t.Errorf("%s = %.10g, want %.10g (relative tolerance %g)", what, got, want, rel)
	}
}

// TestFisherTextbook checks Fisher's exact test against published values:
// the lady tasting tea (3 of 4 cups right: p = 17/70; 4 of 4: 1/70) and the
// example of scipy.stats.fisher_exact's documentation ([[1, 9], [11, 3]]:
// two-sided p = 0.002759, one-sided half of it, 0.0013797).
func TestFisherTextbook(t *testing.T) {
	near(t, "tea 3/4 vs 1/4", fisherGreater(3, 4, 1, 4), 17.0/70, 1e-12)
	near(t, "tea 4/4 vs 0/4", fisherGreater(4, 4, 0, 4), 1.0/70, 1e-12)
	near(t, "scipy [[11,3],[1,9]]", fisherGreater(11, 14, 1, 10), 0.0013797, 1e-4)
	// The package documentation's sparse examples.
	near(t, "3/200 vs 0/10000", fisherGreater(3, 200, 0, 10000), exactFisher(3, 200, 0, 10000), 1e-9)
	if p := fisherGreater(3, 200, 0, 10000); p > 1e-5 {
		t.Errorf("3/200 vs 0/10000: p = %g, want < 1e-5", p)
	}
	near(t, "1/30 vs 0/300", fisherGreater(1, 30, 0, 300), 30.0/330, 1e-12)
}

// TestFisherEdges: no error anywhere, an empty group, the canary's fewest
// possible errors, and every error on the canary.
func TestFisherEdges(t *testing.T) {
	for _, c := range []struct {
		e1, n1, e0, n0 uint64
		want           float64
	}{
		{0, 100, 0, 100, 1},
		{0, 0, 5, 100, 1},
		{5, 100, 0, 0, 1},
		{0, 100, 7, 100, 1},
		{10, 10, 0, 10, 1.0 / 184756}, // C(20,10)
		{100, 100, 100, 100, 1},
	} {
		near(t, "p", fisherGreater(c.e1, c.n1, c.e0, c.n0), c.want, 1e-9)
	}
}

// TestFisherAgainstExact compares with an independent computation in exact
// rational arithmetic (math/big) over many tables, sparse and dense, small
// and large.
func TestFisherAgainstExact(t *testing.T) {
	cases := [][4]uint64{{1, 1000, 0, 12000}, {21, 1000, 114, 12000}, {9, 1000, 110, 12000}, {40, 2000, 20, 2000}, {20, 2000, 40, 2000}}
	for n1 := uint64(1); n1 <= 12; n1 += 3 {
		for n0 := uint64(1); n0 <= 12; n0 += 4 {
			for e1 := uint64(0); e1 <= n1; e1++ {
				for e0 := uint64(0); e0 <= n0; e0 += 2 {
					cases = append(cases, [4]uint64{e1, n1, e0, n0})
				}
			}
		}
	}
	for _, c := range cases {
		got, want := fisherGreater(c[0], c[1], c[2], c[3]), exactFisher(c[0], c[1], c[2], c[3])
		if math.Abs(got-want) > 1e-9*want+1e-15 {
			t.Errorf("fisher %v = %.12g, exact %.12g", c, got, want)
		}
	}
}

// exactFisher is P(X >= e1) summed in exact rationals.
func exactFisher(e1, n1, e0, n0 uint64) float64 {
	k, n := e1+e0, n1+n0
	num := new(big.Int)
	for x := e1; x <= min(k, n1); x++ {
		if k-x > n0 {
			continue
		}
		term := new(big.Int).Mul(binom(k, x), binom(n-k, n1-x))
		num.Add(num, term)
	}
	f, _ := new(big.Rat).SetFrac(num, binom(n, n1)).Float64()
	return f
}

func binom(n, k uint64) *big.Int { return new(big.Int).Binomial(int64(n), int64(k)) }

// TestMannWhitneyByHand: two canary observations in the top bucket, two
// baseline ones in the bottom bucket: U = 4 of 4 pairs; mean 2; variance
// n1 n0 / 12 ((N+1) - sum(t^3-t)/(N(N-1))) = 4/12 (5 - 12/12) = 4/3;
// z = (4 - 2 - 0.5) / sqrt(4/3) = 1.299; p = 0.09697.
func TestMannWhitneyByHand(t *testing.T) {
	r := mannWhitneyGreater([]uint64{0, 0, 2}, []uint64{2, 0, 0})
	near(t, "U", r.U, 4, 0)
	near(t, "superiority", r.Superiority, 1, 0)
	near(t, "p", r.P, normalUpper(1.5/math.Sqrt(4.0/3)), 1e-12)
	near(t, "p", r.P, 0.09697, 1e-3)
	// Alike: every observation in one bucket cannot show a difference.
	if r := mannWhitneyGreater([]uint64{0, 50, 0}, []uint64{0, 80, 0}); r.P != 1 || r.Superiority != 0.5 {
		t.Errorf("all tied: %+v, want P 1, superiority 0.5", r)
	}
	if r := mannWhitneyGreater([]uint64{0, 0}, []uint64{3, 1}); r.P != 1 {
		t.Errorf("no canary observation: %+v", r)
	}
}

// TestMannWhitneyAgainstRanks compares the bucket formula with the textbook
// computation on the expanded observations: midranks of the pooled sample,
// U1 = R1 - n1(n1+1)/2, the tie-corrected variance from the tie groups'
// sizes, one-sided normal p with continuity correction.
func TestMannWhitneyAgainstRanks(t *testing.T) {
	cases := [][2][]uint64{
		{{1, 4, 9, 3, 0}, {5, 8, 2, 1, 1}},
		{{0, 0, 10, 30, 5}, {3, 20, 40, 20, 0}},
		{{7, 0, 0, 0, 1}, {0, 2, 2, 2, 2}},
		{{2, 2, 2, 2, 2}, {2, 2, 2, 2, 2}},
	}
	for _, c := range cases {
		got := mannWhitneyGreater(c[0], c[1])
		u, p := ranksMWU(c[0], c[1])
		near(t, "U", got.U, u, 1e-12)
		near(t, "p", got.P, p, 1e-9)
	}
}

func ranksMWU(canary, baseline []uint64) (u, p float64) {
	type obs struct {
		v      int
		canary bool
	}
	var all []obs
	for i := range canary {
		for range canary[i] {
			all = append(all, obs{i, true})
		}
		for range baseline[i] {
			all = append(all, obs{i, false})
		}
	}
	slices.SortStableFunc(all, func(a, b obs) int { return a.v - b.v })
	n := float64(len(all))
	var r1, n1, ties float64
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].v == all[i].v {
			j++
		}
		mid := float64(i+j+1) / 2 // ranks i+1..j
		for k := i; k < j; k++ {
			if all[k].canary {
				r1 += mid
				n1++
			}
		}
		t := float64(j - i)
		ties += t*t*t - t
		i = j
	}
	n0 := n - n1
	u = r1 - n1*(n1+1)/2
	sd := math.Sqrt(n1 * n0 / 12 * ((n + 1) - ties/(n*(n-1))))
	return u, 0.5 * math.Erfc((u-n1*n0/2-0.5)/sd/math.Sqrt2)
}

// TestHolmTextbook: p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05: 0.005 <=
// 0.05/4 and 0.01 <= 0.05/3 are rejected, 0.03 > 0.05/2 stops. Adjusted:
// 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06).
func TestHolmTextbook(t *testing.T) {
	rej, adj := holm([]float64{0.01, 0.04, 0.03, 0.005}, 4, 0.05)
	if !slices.Equal(rej, []bool{true, false, false, true}) {
		t.Errorf("rejected %v", rej)
	}
	for i, want := range []float64{0.03, 0.06, 0.06, 0.02} {
		near(t, "adjusted", adj[i], want, 1e-12)
	}
	// Untested hypotheses count: the same p-values among 40 planned tests.
	rej, _ = holm([]float64{0.01, 0.04, 0.03, 0.005}, 40, 0.05)
	if slices.Contains(rej, true) {
		t.Errorf("with m = 40: rejected %v, want none (0.005 > 0.05/40)", rej)
	}
}
