package judge

import (
	"math"
	"slices"
	"testing"
	"time"
)

// twoProportionZ is the one-sided p-value of the two-proportion z test with
// a continuity correction: Fisher's exact test converges to it for large
// counts.
func twoProportionZ(e1, n1, e0, n0 uint64) float64 {
	p := float64(e1+e0) / float64(n1+n0)
	se := math.Sqrt(p * (1 - p) * (1/float64(n1) + 1/float64(n0)))
	d := float64(e1)/float64(n1) - float64(e0)/float64(n0) - 0.5*(1/float64(n1)+1/float64(n0))
	return normalUpper(d / se)
}

// TestFisherAtExtremeSizes: at up to MaxGroupCount requests per group and
// millions of errors, Fisher's p-value is finite, in [0, 1], agrees with
// the normal approximation (which is excellent at these sizes) and takes
// little time.
func TestFisherAtExtremeSizes(t *testing.T) {
	for _, c := range []struct{ e1, n1, e0, n0 uint64 }{
		{10_050, 10_000_000, 10_000, 10_000_000},
		{1_003_000, MaxGroupCount / 2, 1_000_000, MaxGroupCount / 2},
		{5_010_000, MaxGroupCount / 2, 5_000_000, MaxGroupCount / 2},
		{100_000, 1_000_000, 9_990_000, MaxGroupCount - 1_000_000},
		{250_000_000, MaxGroupCount / 2, 249_950_000, MaxGroupCount / 2},
	} {
		start := time.Now()
		p := fisherGreater(c.e1, c.n1, c.e0, c.n0)
		took := time.Since(start)
		z := twoProportionZ(c.e1, c.n1, c.e0, c.n0)
		t.Logf("%+v: fisher %.6g, z %.6g, %s", c, p, z, took)
		if !(p >= 0 && p <= 1) || math.Abs(p-z) > 0.02*z+1e-12 {
			t.Errorf("%+v: fisher p %g, normal approximation %g", c, p, z)
		}
	}
}

// BenchmarkTrackerLook is one look of a long comparison of a large fleet
// (the leader does it every window): 200 hosts, an error_ratio and a
// 64-bucket latency rule, at look 100 of MaxWindows.
func BenchmarkTrackerLook(b *testing.B) {
	c := Config{Windows: MaxWindows, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}, {Name: "latency", Kind: KindLatency, Quantile: 0.99}}}
	span := 30 * time.Second
	tr, err := NewTracker(c, span, t0, t0)
	if err != nil {
		b.Fatal(err)
	}
	var buckets []Bucket
	for i := range 63 {
		buckets = append(buckets, Bucket{UpperBound: 0.001 * math.Pow(1.25, float64(i)), Count: uint64(100 * (i + 1))})
	}
	buckets = append(buckets, Bucket{UpperBound: math.Inf(1), Count: 6400})
	counts := []Counts{{Rule: "errors", Requests: 1_000_000, Errors: 1000}, {Rule: "latency", Buckets: buckets}}
	end := t0
	look := func() {
		end = end.Add(span)
		for h := range 200 {
			if _, err := tr.Add(hostName(h), h%10 == 0, end, counts, end); err != nil {
				b.Fatal(err)
			}
		}
		if _, looked, err := tr.Judge(end.Add(span)); !looked || err != nil {
			b.Fatal(looked, err)
		}
	}
	for range 99 {
		look()
	}
	b.ResetTimer()
	for range b.N {
		look()
	}
}

func hostName(i int) string { return "host-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) }

// TestMannWhitneyAtExtremeSizes: with 5e8 observations a group, alike
// groups give p near 0.5, every observation in one bucket p = 1, and 1% of
// the observations (5e6) moved one bucket up is found (0.1% is
// not: z = 0.85, rightly); never NaN.
func TestMannWhitneyAtExtremeSizes(t *testing.T) {
	const n = MaxGroupCount / 2
	alike := make([]uint64, 64)
	for i := range alike {
		alike[i] = n / 64
	}
	if r := mannWhitneyGreater(alike, alike); !(r.P > 0.45 && r.P < 0.55) || math.Abs(r.Superiority-0.5) > 1e-9 {
		t.Errorf("alike: %+v", r)
	}
	one := []uint64{0, n, 0}
	if r := mannWhitneyGreater(one, one); r.P != 1 {
		t.Errorf("one bucket: %+v", r)
	}
	shifted := slices.Clone(alike)
	shifted[10] -= n / 100
	shifted[11] += n / 100
	if r := mannWhitneyGreater(shifted, alike); !(r.P < 1e-6) || math.IsNaN(r.P) {
		t.Errorf("shifted: %+v", r)
	}
}
