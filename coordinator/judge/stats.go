package judge

import (
	"math"
	"slices"
)

// fisherGreater is the one-sided p-value of Fisher's exact test that the
// canary's error ratio (e1 errors in n1 requests) is greater than the
// baseline's (e0 in n0): the probability, with the margins fixed, that the
// canary holds e1 or more of the e1+e0 errors (the hypergeometric upper
// tail). It is exact for any counts, including no error at all on either
// side (p = 1) and a zero baseline. Callers guarantee e1 <= n1, e0 <= n0.
func fisherGreater(e1, n1, e0, n0 uint64) float64 {
	k := e1 + e0 // errors in all
	if k == 0 || n1 == 0 || n0 == 0 {
		return 1
	}
	n := n1 + n0
	lo := uint64(0) // smallest possible canary error count
	if k > n0 {
		lo = k - n0
	}
	hi := min(k, n1)
	if e1 <= lo {
		return 1
	}
	// The tail away from the mode is summed, from its inner end outwards:
	// its terms decrease, so the sum stops once they no longer matter
	// (at most tailTerms terms, far more than any tail needs).
	mode := uint64(math.Floor(float64(n1+1) * float64(k+1) / float64(n+2)))
	logP := func(x uint64) float64 { return logHypergeom(x, n1, k, n) }
	if e1 > mode {
		return min(1, sumTail(logP, e1, hi, true))
	}
	return max(0, 1-sumTail(logP, e1-1, lo, false))
}

// tailTerms bounds the terms a tail sum adds after they became negligible;
// terms are added until one is below 1e-17 of the sum.
const tailTerms = 1 << 20

// sumTail sums exp(logP(x)) from `from` to `to` (upwards when up), where the
// terms decrease away from from, stopping when a term is negligible.
func sumTail(logP func(uint64) float64, from, to uint64, up bool) float64 {
	first := logP(from)
	sum := 0.0
	for i, x := 0, from; i < tailTerms; i++ {
		t := math.Exp(logP(x) - first)
		sum += t
		if t < 1e-17*sum || x == to {
			break
		}
		if up {
			x++
		} else {
			x--
		}
	}
	return sum * math.Exp(first)
}

// logHypergeom is log P(X = x) for X hypergeometric: x successes in n1
// draws without replacement from n items of which k are successes.
func logHypergeom(x, n1, k, n uint64) float64 {
	return logChoose(k, x) + logChoose(n-k, n1-x) - logChoose(n, n1)
}

func logChoose(n, k uint64) float64 {
	return lgamma(float64(n)+1) - lgamma(float64(k)+1) - lgamma(float64(n-k)+1)
}

func lgamma(x float64) float64 {
	v, _ := math.Lgamma(x)
	return v
}

// mwu is the outcome of a Mann-Whitney U test of canary against baseline
// observations given as counts per common bucket.
type mwu struct {
	// U is the canary's U statistic: the number of (canary, baseline)
	// pairs where the canary observation is larger, ties (the same bucket)
	// counting one half.
	U float64
	// Superiority is U / (n1 n0): the probability that a random canary
	// request is slower than a random baseline one (ties half), 0.5 when
	// they are alike (the common-language effect size).
	Superiority float64
	// P is the one-sided p-value that the canary is slower (normal
	// approximation with the tie correction and a continuity correction).
	P float64
}

// mannWhitneyGreater tests whether the canary's observations are
// stochastically larger than the baseline's. canary[i] and baseline[i] are
// the numbers of observations in bucket i, buckets in increasing order:
// observations in the same bucket are ties (all a histogram can tell of
// them), which the variance's tie correction accounts for. With no
// observation on a side, or every observation in one bucket, P is 1.
func mannWhitneyGreater(canary, baseline []uint64) mwu {
	var n1, n0 float64
	for i := range canary {
		n1 += float64(canary[i])
		n0 += float64(baseline[i])
	}
	if n1 == 0 || n0 == 0 {
		return mwu{P: 1, Superiority: 0.5}
	}
	var u, below, ties float64
	for i := range canary {
		c, b := float64(canary[i]), float64(baseline[i])
		u += c * (below + b/2)
		below += b
		t := c + b
		ties += t*t*t - t
	}
	n := n1 + n0
	res := mwu{U: u, Superiority: u / (n1 * n0), P: 1}
	variance := n1 * n0 / 12 * ((n + 1) - ties/(n*(n-1)))
	if !(variance > 0) {
		return res
	}
	z := (u - n1*n0/2 - 0.5) / math.Sqrt(variance)
	res.P = normalUpper(z)
	return res
}

// normalUpper is P(Z > z) for a standard normal Z.
func normalUpper(z float64) float64 { return 0.5 * math.Erfc(z/math.Sqrt2) }

// holm applies the Holm–Bonferroni procedure at family-wise level alpha to
// p-values ps, of m hypotheses in all (m >= len(ps); the ones not given,
// not tested yet, count as p = 1). It returns which of ps are rejected and
// the Holm-adjusted p-value of each (capped at 1).
func holm(ps []float64, m int, alpha float64) (reject []bool, adjusted []float64) {
	m = max(m, len(ps))
	order := make([]int, len(ps))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case ps[a] < ps[b]:
			return -1
		case ps[a] > ps[b]:
			return 1
		}
		return 0
	})
	reject = make([]bool, len(ps))
	adjusted = make([]float64, len(ps))
	running, stopped := 0.0, false
	for rank, i := range order {
		adj := min(1, float64(m-rank)*ps[i])
		running = max(running, adj) // adjusted p-values are monotonic
		adjusted[i] = running
		if !stopped && ps[i] <= alpha/float64(m-rank) {
			reject[i] = true
		} else {
			stopped = true
		}
	}
	return reject, adjusted
}
