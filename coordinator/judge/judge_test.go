package judge

import (
	"math"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

// promBuckets are the Prometheus client's default bucket bounds.
var promBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.Inf(1)}

// hist makes cumulative buckets at bounds from counts per bucket.
func hist(bounds []float64, perBucket ...uint64) []Bucket {
	out := make([]Bucket, len(bounds))
	var cum uint64
	for i, ub := range bounds {
		if i < len(perBucket) {
			cum += perBucket[i]
		}
		out[i] = Bucket{UpperBound: ub, Count: cum}
	}
	return out
}

func mustValidate(t *testing.T, c Config) Config {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func errorHost(name string, canary bool, errs, reqs uint64) HostSummary {
	return HostSummary{Host: name, Canary: canary, Counts: []Counts{{Rule: "errors", Requests: reqs, Errors: errs}}}
}

func latencyHost(name string, canary bool, b []Bucket) HostSummary {
	return HostSummary{Host: name, Canary: canary, Counts: []Counts{{Rule: "latency", Buckets: b}}}
}

// TestLatencyVerdictSaysWhy: a canary clearly slower than 12 baseline hosts
// fails, and the reason names the rule, both groups' values and hosts, the
// test, the p-values and the effect size against the allowed one.
func TestLatencyVerdictSaysWhy(t *testing.T) {
	c := mustValidate(t, Config{Windows: 1, Rules: []Rule{{Name: "latency", Kind: KindLatency, Quantile: 0.99}}})
	bounds := []float64{0.05, 0.1, 0.15, 0.2, math.Inf(1)}
	w := Window{Start: t0, End: t0.Add(time.Minute)}
	for i := range 3 {
		w.Hosts = append(w.Hosts, latencyHost("c"+string(rune('0'+i)), true, hist(bounds, 20, 40, 30, 10)))
	}
	for i := range 12 {
		w.Hosts = append(w.Hosts, latencyHost("b"+string(rune('a'+i)), false, hist(bounds, 40, 50, 10)))
	}
	j, err := Judge(c, []Window{w})
	if err != nil {
		t.Fatal(err)
	}
	if j.Verdict != Fail {
		t.Fatalf("verdict %v, want fail: %s", j.Verdict, j.Reason())
	}
	want := `rule "latency": p99 latency 195 ms on 3 canary hosts vs 145 ms on 12 baseline hosts in window 1 (Mann-Whitney p=`
	if got := j.Reason(); !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "+34%; Holm-adjusted p="+pvalue(j.Results[0].AdjustedP)+" over 1 tests) > allowed +20%") {
		t.Errorf("reason\n%s\nwant it to start with\n%s\nand end with +34%% ... > allowed +20%%", got, want)
	}
	r := j.Results[0]
	if r.CanaryHosts != 3 || r.BaselineHosts != 12 || r.CanaryN != 300 || r.BaselineN != 1200 || !(r.P < 1e-10) {
		t.Errorf("result %+v", r)
	}
}

// TestSparseErrorsZeroBaseline: errors on the canary against none on the
// baseline fail when they cannot be chance, and pass when they can.
func TestSparseErrorsZeroBaseline(t *testing.T) {
	c := mustValidate(t, Config{Windows: 1, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio, MinCount: 20}}})
	w := Window{Hosts: []HostSummary{errorHost("c", true, 3, 200), errorHost("b1", false, 0, 5000), errorHost("b2", false, 0, 5000)}}
	j, err := Judge(c, []Window{w})
	if err != nil {
		t.Fatal(err)
	}
	if j.Verdict != Fail || !strings.Contains(j.Reason(), `rule "errors": error ratio 1.50% (3/200) on 1 canary host vs 0.00% (0/10000) on 2 baseline hosts in window 1 (Fisher exact p=7.4e-06, +inf% (from zero);`) {
		t.Errorf("verdict %v: %s", j.Verdict, j.Reason())
	}
	w = Window{Hosts: []HostSummary{errorHost("c", true, 1, 30), errorHost("b", false, 0, 300)}}
	j, err = Judge(c, []Window{w})
	if err != nil {
		t.Fatal(err)
	}
	if j.Verdict != Pass || !strings.Contains(j.Results[0].Reason, "(Fisher exact p=0.091, +inf% (from zero); Holm-adjusted p=0.091 over 1 tests): not significant at 0.01") {
		t.Errorf("1/30 vs 0/300: verdict %v: %s", j.Verdict, j.Results[0].Reason)
	}
}

// TestSignificantButSmallPasses: on a busy service a 5% slower canary is
// significant, and passes since +20% is allowed.
func TestSignificantButSmallPasses(t *testing.T) {
	c := mustValidate(t, Config{Windows: 1, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}}})
	w := Window{Hosts: []HostSummary{errorHost("c", true, 1100, 100000), errorHost("b", false, 10000, 1000000)}}
	j, err := Judge(c, []Window{w})
	if err != nil {
		t.Fatal(err)
	}
	r := j.Results[0]
	if j.Verdict != Pass || !(r.P < 0.01) || !strings.HasSuffix(r.Reason, ": significant, but within the allowed +20%") {
		t.Errorf("verdict %v: %+v", j.Verdict, r)
	}
}

// TestInconclusive: too few requests, or a group without hosts, is
// inconclusive and says which; a later window with enough data decides.
func TestInconclusive(t *testing.T) {
	c := mustValidate(t, Config{Windows: 3, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}}})
	ws := []Window{
		{Hosts: []HostSummary{errorHost("c", true, 0, 50), errorHost("b", false, 0, 5000)}},
		{Hosts: []HostSummary{errorHost("c", true, 0, 500)}},
	}
	j, err := Judge(c, ws)
	if err != nil {
		t.Fatal(err)
	}
	if j.Verdict != Inconclusive {
		t.Fatalf("verdict %v", j.Verdict)
	}
	for i, want := range []string{"inconclusive: 50 canary requests, fewer than the 200 needed", "inconclusive: no baseline host reported"} {
		if !strings.HasSuffix(j.Results[i].Reason, want) {
			t.Errorf("window %d: %q, want it to end with %q", i, j.Results[i].Reason, want)
		}
	}
	ws = append(ws, Window{Hosts: []HostSummary{errorHost("c", true, 5, 500), errorHost("b", false, 40, 5000)}})
	if j, err = Judge(c, ws); err != nil || j.Verdict != Pass {
		t.Errorf("with a third window: %v %v: %s", j.Verdict, err, j.Reason())
	}
	if _, err := Judge(c, append(ws, ws[2])); err == nil || !strings.Contains(err.Error(), "4 windows given, more than the 3") {
		t.Errorf("a 4th window: %v", err)
	}
}

// TestSameSpikeEverywherePasses: a traffic spike that makes every host
// slower and fail more is not the release's fault.
func TestSameSpikeEverywherePasses(t *testing.T) {
	c := mustValidate(t, Config{Windows: 1, Rules: []Rule{{Name: "latency", Kind: KindLatency, Quantile: 0.99}}})
	spike := hist(promBuckets, 0, 0, 0, 10, 50, 200, 500, 200, 30, 10)
	w := Window{Hosts: []HostSummary{latencyHost("c", true, spike), latencyHost("b1", false, spike), latencyHost("b2", false, spike)}}
	if j, err := Judge(c, []Window{w}); err != nil || j.Verdict != Pass {
		t.Errorf("%v %v: %s", j.Verdict, err, j.Reason())
	}
}

// TestBucketLayoutsDiffer: hosts exposing different buckets are compared
// at the bounds they share.
func TestBucketLayoutsDiffer(t *testing.T) {
	fine := []float64{0.1, 0.15, 0.2, 0.3, math.Inf(1)}
	coarse := []float64{0.1, 0.2, math.Inf(1)}
	if got := commonBounds([][]Bucket{hist(fine)}, [][]Bucket{hist(coarse), hist(fine)}); len(got) != 3 || got[0] != 0.1 || got[1] != 0.2 {
		t.Errorf("common bounds %v", got)
	}
	c := mustValidate(t, Config{Windows: 1, Rules: []Rule{{Name: "latency", Kind: KindLatency, Quantile: 0.5, MinCount: 10}}})
	w := Window{Hosts: []HostSummary{latencyHost("c", true, hist(fine, 0, 10, 40, 50)), latencyHost("b", false, hist(coarse, 100, 0))}}
	j, err := Judge(c, []Window{w})
	if err != nil {
		t.Fatal(err)
	}
	r := j.Results[0]
	if j.Verdict != Fail || r.CanaryN != 100 || r.BaselineN != 100 || r.CanaryValue != 0.2 {
		t.Errorf("verdict %v: %+v", j.Verdict, r)
	}
}

// TestConfigValidate: defaults, and every bad field named with its value.
func TestConfigValidate(t *testing.T) {
	c := Config{Windows: 5, Rules: []Rule{{Kind: KindErrorRatio}, {Kind: KindLatency, Quantile: 0.9}}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Alpha != DefaultAlpha || c.Rules[0].Name != KindErrorRatio || c.Rules[0].MinCount != DefaultMinRequests ||
		c.Rules[1].MinCount != DefaultMinSamples || c.Rules[1].MaxIncrease != DefaultMaxIncrease {
		t.Errorf("defaults: %+v", c)
	}
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Windows: 0, Rules: []Rule{{Kind: KindErrorRatio}}}, "windows 0: must be 1 to 1000"},
		{Config{Windows: MaxWindows + 1, Rules: []Rule{{Kind: KindErrorRatio}}}, "windows 1001: must be 1 to 1000"},
		{Config{Windows: 1, Alpha: 0.5, Rules: []Rule{{Kind: KindErrorRatio}}}, "alpha 0.5: must be in (0, 0.2]"},
		{Config{Windows: 1, Alpha: math.NaN(), Rules: []Rule{{Kind: KindErrorRatio}}}, "alpha NaN"},
		{Config{Windows: 1}, "rules: 0 given, must be 1 to 32"},
		{Config{Windows: 1, Rules: make([]Rule, MaxRules+1)}, "rules: 33 given"},
		{Config{Windows: 1, Rules: []Rule{{Kind: "restarts"}}}, `rules[0].kind "restarts": must be error_ratio or latency`},
		{Config{Windows: 1, Rules: []Rule{{Kind: KindLatency, Quantile: 1}}}, "rules[0].quantile 1: must be in (0, 1)"},
		{Config{Windows: 1, Rules: []Rule{{Kind: KindLatency, Quantile: 0.5, MaxIncrease: -1}}}, "rules[0].max_increase -1: must be a positive number"},
		{Config{Windows: 1, Rules: []Rule{{Kind: KindErrorRatio, MaxIncrease: math.Inf(1)}}}, "rules[0].max_increase +Inf"},
		{Config{Windows: 1, Rules: []Rule{{Kind: KindErrorRatio}, {Kind: KindErrorRatio}}}, `rules[1].name "error_ratio": used twice`},
	} {
		if err := tc.c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}

// TestBadCountsRefused: counts that make no sense are an error naming the
// window, host, rule and field, not a verdict.
func TestBadCountsRefused(t *testing.T) {
	c := mustValidate(t, Config{Windows: 1, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}, {Name: "latency", Kind: KindLatency, Quantile: 0.99}}})
	many := make([]Bucket, MaxBuckets+1)
	for i := range many {
		many[i] = Bucket{UpperBound: float64(i)}
	}
	many[MaxBuckets].UpperBound = math.Inf(1)
	for _, tc := range []struct {
		h    HostSummary
		want string
	}{
		{errorHost("h1", true, 5, 4), `windows[0].hosts[0] (h1) rule "errors": errors 5 more than requests 4`},
		{latencyHost("h1", true, []Bucket{{1, 5}, {2, 4}, {math.Inf(1), 6}}), "buckets[1].count 4: below the previous cumulative count 5"},
		{latencyHost("h1", true, []Bucket{{1, 5}, {1, 5}, {math.Inf(1), 6}}), "buckets[1].upper_bound 1: not above the previous 1"},
		{latencyHost("h1", true, []Bucket{{1, 5}, {2, 6}}), "buckets[1].upper_bound 2: the last bucket must be +Inf"},
		{latencyHost("h1", true, []Bucket{{math.NaN(), 5}, {math.Inf(1), 6}}), "buckets[0].upper_bound NaN: must be finite"},
		{latencyHost("h1", true, many), "257 buckets, more than 256"},
	} {
		if _, err := Judge(c, []Window{{Hosts: []HostSummary{tc.h}}}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.h, err, tc.want)
		}
	}
	dup := Window{Hosts: []HostSummary{errorHost("a", true, 0, 10), errorHost("b", false, 0, 10), errorHost("a", true, 0, 10)}}
	if _, err := Judge(c, []Window{dup}); err == nil || !strings.Contains(err.Error(), "windows[0].hosts[2] (a): the same host as hosts[0]") {
		t.Errorf("a host twice: %v", err)
	}
	for _, w := range []Window{
		// Alike (within MaxHostWeight of each other: not scaled), together
		// over the limit.
		{Hosts: []HostSummary{errorHost("a", true, 0, MaxGroupCount), errorHost("b", true, 0, MaxGroupCount/2+1)}},
		{Hosts: []HostSummary{latencyHost("a", false, hist(promBuckets, MaxGroupCount)), latencyHost("b", false, hist(promBuckets, MaxGroupCount/2+1))}},
	} {
		if _, err := Judge(c, []Window{w}); err == nil || !strings.Contains(err.Error(), "the group's total passes 1000000000") {
			t.Errorf("over the limit: %v", err)
		}
	}
	if _, err := Judge(c, []Window{{Hosts: []HostSummary{errorHost("a", true, 0, math.MaxUint64)}}}); err == nil || !strings.Contains(err.Error(), `(a) rule "errors": requests 18446744073709551615: more than 1000000000`) {
		t.Errorf("a host over the limit: %v", err)
	}
	at := Window{Hosts: []HostSummary{errorHost("a", true, 10_000_000, MaxGroupCount), errorHost("b", false, 10_000_000, MaxGroupCount)}}
	if j, err := Judge(c, []Window{at}); err != nil || !(j.Results[0].P > 0.45 && j.Results[0].P < 0.55) {
		t.Errorf("at the limit, alike: %v, p %v", err, j.Results)
	}
	if _, err := Judge(c, []Window{{Hosts: make([]HostSummary, MaxHostsPerWindow+1)}}); err == nil || !strings.Contains(err.Error(), "100001 hosts, more than 100000") {
		t.Errorf("too many hosts: %v", err)
	}
}
