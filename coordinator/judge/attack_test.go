package judge

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// Tests of what a faulty or hostile agent, a skewed clock or a leader
// failover can do to a comparison (issue 17's review).

var attackCfg = Config{Windows: 4, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio, MinCount: 100}}}

func errCounts(errs, reqs uint64) []Counts {
	return []Counts{{Rule: "errors", Requests: reqs, Errors: errs}}
}

// TestTrackerBadSummaryIsOneHostsProblem: one host's summary that makes no
// sense (more errors than requests, a rule twice, buckets going down) is
// refused when added, with an error naming the host and field; the window
// is still judged on the other hosts. (Before: Judge failed on the window
// for good, so one agent could switch the comparison off.)
func TestTrackerBadSummaryIsOneHostsProblem(t *testing.T) {
	span := 30 * time.Second
	tr, err := NewTracker(attackCfg, span, t0, t0)
	if err != nil {
		t.Fatal(err)
	}
	w1 := t0.Add(span)
	for _, bad := range []struct {
		host   string
		counts []Counts
		want   string
	}{
		{"b9", errCounts(5, 1), `b9 rule "errors": errors 5 more than requests 1`},
		{"b8", append(errCounts(0, 1000), errCounts(0, 1000)...), `b8 rule "errors": given twice`},
		{"b7", []Counts{{Rule: "errors", Buckets: []Bucket{{1, 5}, {math.Inf(1), 3}}}}, `b7 rule "errors": buckets[1].count 3: below the previous cumulative count 5`},
	} {
		if ok, err := tr.Add(bad.host, false, w1, bad.counts, w1); ok || err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: taken %v, error %v, want %q", bad.host, ok, err, bad.want)
		}
		if ok, err := tr.Add(bad.host, false, w1, bad.counts, w1); ok || err != nil {
			t.Errorf("%s again: taken %v, error %v: want ignored quietly", bad.host, ok, err)
		}
	}
	mustAdd(t, tr, "c1", true, w1, errCounts(1, 500), w1)
	mustAdd(t, tr, "b1", false, w1, errCounts(1, 500), w1)
	j, looked, err := tr.Judge(w1.Add(span / 2))
	if err != nil || !looked || j.Verdict != Pass {
		t.Fatalf("window 1: looked %v, %v, %v: %s", looked, err, j.Verdict, j.Reason())
	}
	if r := j.Results[0]; r.BaselineHosts != 1 || r.BaselineN != 500 {
		t.Errorf("the refused hosts counted: %+v", r)
	}
}

// TestJudgeRefusesRuleTwice: a host giving a rule's counts twice would be
// counted twice (a baseline host could double its weight); Judge refuses it.
func TestJudgeRefusesRuleTwice(t *testing.T) {
	w := Window{Hosts: []HostSummary{{Host: "b1", Counts: append(errCounts(0, 1000), errCounts(0, 1000)...)}, {Host: "c1", Canary: true, Counts: errCounts(0, 1000)}}}
	if _, err := Judge(attackCfg, []Window{w}); err == nil || !strings.Contains(err.Error(), `windows[0].hosts[0] (b1) rule "errors": given twice`) {
		t.Errorf("rule twice: %v", err)
	}
}

// TestTrackerEndsMustBeWindows: a summary must be of a clock-aligned window
// that has ended by the leader's clock (within span/2 of skew). Before, any
// end was a window of its own: one agent sending ends 1 ns apart spent every
// look of the comparison in one window's time, and it then passed unjudged.
func TestTrackerEndsMustBeWindows(t *testing.T) {
	span := 30 * time.Second
	tr, err := NewTracker(attackCfg, span, t0, t0)
	if err != nil {
		t.Fatal(err)
	}
	now := t0.Add(span)
	for i := range 10 {
		end := t0.Add(time.Duration(i+1) * time.Millisecond)
		if ok, err := tr.Add("b1", false, end, errCounts(0, 1000), now); ok || err == nil || !strings.Contains(err.Error(), "not a multiple of the 30s window") {
			t.Fatalf("unaligned end %v: taken %v, %v", end, ok, err)
		}
	}
	ahead := now.Add(span)
	if ok, err := tr.Add("b1", false, ahead, errCounts(0, 1000), now); ok || err == nil || !strings.Contains(err.Error(), "b1: window end "+ahead.Format(time.RFC3339Nano)+": 30s ahead of the leader's clock") {
		t.Fatalf("end in the future: taken %v, %v", ok, err)
	}
	// A clock ahead by less than span/2 is still in time.
	mustAdd(t, tr, "b1", false, now, errCounts(0, 1000), now.Add(-span/2))
	if _, looked, err := tr.Judge(ahead.Add(span)); err != nil || !looked || tr.Looks() != 1 {
		t.Fatalf("looks %d (%v, %v), want 1: only the aligned window", tr.Looks(), looked, err)
	}
}

// TestTrackerTakeover: a new leader's tracker (made at now, after windows
// of the rollout a previous leader may have judged) counts those windows as
// looks taken and ignores their summaries, so a failover neither judges a
// window twice nor takes more looks than planned (the correction's
// guarantee). Before, the new leader started again at look 1 and could take
// Config.Windows more looks.
func TestTrackerTakeover(t *testing.T) {
	span := 30 * time.Second
	now := t0.Add(3*span + span/2) // windows 1-3 closed before the takeover
	tr, err := NewTracker(attackCfg, span, t0, now)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Looks() != 3 {
		t.Fatalf("looks %d after takeover, want 3", tr.Looks())
	}
	w3, w4, w5 := t0.Add(3*span), t0.Add(4*span), t0.Add(5*span)
	if ok, err := tr.Add("c1", true, w3, errCounts(50, 100), now); ok || err != nil {
		t.Errorf("a window the previous leader judged was taken: %v %v", ok, err)
	}
	mustAdd(t, tr, "c1", true, w4, errCounts(50, 500), now)
	mustAdd(t, tr, "b1", false, w4, errCounts(0, 500), now)
	j, looked, err := tr.Judge(w4.Add(span / 2))
	if err != nil || !looked || tr.Looks() != 4 || j.Verdict != Fail {
		t.Fatalf("look %d: %v %v %v: %s", tr.Looks(), looked, err, j.Verdict, j.Reason())
	}
	last := j.Results[len(j.Results)-1]
	if last.Window != 3 || last.Tests != 4 || !strings.Contains(last.Reason, "in window 4") {
		t.Errorf("window 4 is the 4th of 4 tests: %+v", last)
	}
	if ok, _ := tr.Add("c1", true, w5, errCounts(0, 500), w5); ok {
		t.Error("a summary was taken after the planned looks")
	}
	// A tracker made at the rollout's start has every look to take.
	if tr, _ := NewTracker(attackCfg, span, t0, t0.Add(span/2-time.Nanosecond)); tr.Looks() != 0 {
		t.Errorf("fresh tracker: %d looks", tr.Looks())
	}
}

func mustAdd(t *testing.T, tr *Tracker, host string, canary bool, end time.Time, counts []Counts, now time.Time) {
	t.Helper()
	if ok, err := tr.Add(host, canary, end, counts, now); !ok || err != nil {
		t.Fatalf("%s at %v: taken %v, %v", host, end, ok, err)
	}
}

// TestTrackerBusyFleetKeepsJudging: a busy fleet's cumulative counts pass
// MaxGroupCount after a few windows (here 180 baseline hosts with 1e6
// requests a window each: 1.08e9 at window 6). Before, every look from then
// on failed ("the group's total passes"), so the comparison stopped for the
// rest of the rollout; now the counts so far are halved, keeping the
// ratios, and a canary with 3x the errors still fails. A host's own
// window is refused over MaxGroupCount.
func TestTrackerBusyFleetKeepsJudging(t *testing.T) {
	c := Config{Windows: 13, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}}}
	span := 30 * time.Second
	tr, err := NewTracker(c, span, t0, t0)
	if err != nil {
		t.Fatal(err)
	}
	end := t0
	for w := range 12 {
		end = end.Add(span)
		for h := range 200 {
			errs := uint64(1000)
			if h%10 == 0 && w >= 8 {
				errs = 3000 // the canary gets worse from window 9 on
			}
			mustAdd(t, tr, hostName(h), h%10 == 0, end, errCounts(errs, 1_000_000), end)
		}
		j, looked, err := tr.Judge(end.Add(span / 2))
		if err != nil || !looked {
			t.Fatalf("window %d: looked %v, %v", w+1, looked, err)
		}
		last := j.Results[len(j.Results)-1]
		if last.BaselineN > MaxGroupCount || last.CanaryN > MaxGroupCount {
			t.Fatalf("window %d: %d, %d requests: over %d", w+1, last.CanaryN, last.BaselineN, MaxGroupCount)
		}
		if want := Pass; w < 8 && j.Verdict != want || w >= 9 && j.Verdict != Fail {
			t.Fatalf("window %d: %s: %s", w+1, j.Verdict, last.Reason)
		}
	}
	if ok, err := tr.Add("huge", false, end.Add(span), errCounts(0, MaxGroupCount+1), end.Add(span)); ok || err == nil || !strings.Contains(err.Error(), `huge rule "errors": requests 1000000001: more than 1000000000`) {
		t.Errorf("a host over MaxGroupCount: %v %v", ok, err)
	}
}

// TestHostWeightCap: one baseline host claiming 900 million requests (a
// host may report a billion a window) at the canary's error ratio, and as
// many observations as slow as the canary, drowned its eight honest
// peers: the baseline looked as bad as the canary, and a canary with 2×
// the errors and 2% of its requests slow (p99 +58%) passed. Scaled down
// to MaxHostWeight times its group's median host, it weighs as much as 4
// of them: the canary fails, and the reason says a host was scaled down.
// The same fleet without the liar fails alike.
func TestHostWeightCap(t *testing.T) {
	c := Config{Windows: 1, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}, {Name: "latency", Kind: KindLatency, Quantile: 0.99}}}
	bounds := []float64{0.05, 0.1, 0.2, 0.4, math.Inf(1)}
	host := func(name string, canary bool, errs, reqs uint64, per ...uint64) HostSummary {
		return HostSummary{Host: name, Canary: canary, Counts: []Counts{
			{Rule: "errors", Requests: reqs, Errors: errs},
			{Rule: "latency", Buckets: hist(bounds, per...)},
		}}
	}
	// Baseline: 1% errors, p99 190 ms; the canary: 2% errors, 2% of its
	// requests between 200 and 400 ms (p99 300 ms).
	honest := []HostSummary{host("c1", true, 2000, 100_000, 60_000, 29_000, 9_000, 2_000)}
	for i := range 8 {
		honest = append(honest, host(fmt.Sprint("b", i), false, 1000, 100_000, 60_000, 30_000, 10_000))
	}
	liar := host("liar", false, 18_000_000, 900_000_000, 540_000_000, 261_000_000, 81_000_000, 18_000_000)
	for name, hosts := range map[string][]HostSummary{"honest": honest, "with a liar": append(slices.Clone(honest), liar)} {
		j, err := Judge(c, []Window{{Start: t0, End: t0.Add(time.Minute), Hosts: hosts}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(j.Results) != 2 {
			t.Fatalf("%s: %d results", name, len(j.Results))
		}
		for _, r := range j.Results {
			if r.Verdict != Fail {
				t.Errorf("%s: rule %s %s: %s", name, r.Rule, r.Verdict, r.Reason)
			}
			scaled := strings.Contains(r.Reason, "(1 host scaled down to 4× its group's median host)")
			if want := name == "with a liar"; r.ScaledHosts != map[bool]int{true: 1}[want] || scaled != want {
				t.Errorf("%s: rule %s: %d hosts scaled: %s", name, r.Rule, r.ScaledHosts, r.Reason)
			}
			if name == "with a liar" && r.BaselineN != 1_200_000 {
				t.Errorf("%s: rule %s: baseline %d requests, want 8 hosts' 800,000 and the liar's 400,000", name, r.Rule, r.BaselineN)
			}
		}
	}
}

// TestHostWeightCapScaling: a host is scaled to MaxHostWeight times the
// lower median of its group's hosts that have any requests (observations),
// keeping its error ratio and its histogram's shape; hosts serving alike,
// a group of one, and a group of idle hosts are left alone.
func TestHostWeightCapScaling(t *testing.T) {
	for _, tc := range []struct {
		weights []uint64
		cap     uint64
	}{
		{[]uint64{100, 100, 100, 100_000}, 400},
		{[]uint64{100, 200, 300, 400}, 800},
		{[]uint64{1000, 10}, 40},
		{[]uint64{0, 0, 50, 0, 10_000}, 200},
		{[]uint64{7}, 28},
		{[]uint64{0, 0}, math.MaxUint64},
		{nil, math.MaxUint64},
	} {
		if got := groupCap(tc.weights); got != tc.cap {
			t.Errorf("groupCap(%v) = %d, want %d", tc.weights, got, tc.cap)
		}
	}
	got, ok := capHost(KindErrorRatio, Counts{Rule: "errors", Requests: 1_000_000, Errors: 12_345}, 1000)
	if !ok || got.Requests != 1000 || got.Errors != 12 {
		t.Errorf("error counts scaled: %+v %v", got, ok)
	}
	if same, ok := capHost(KindErrorRatio, Counts{Rule: "errors", Requests: 1000, Errors: 5}, 1000); ok || same.Requests != 1000 || same.Errors != 5 {
		t.Errorf("at the bound: %+v %v", same, ok)
	}
	b := hist(promBuckets, 1, 0, 333_333, 0, 0, 666_666, 1)
	got, ok = capHost(KindLatency, Counts{Rule: "latency", Buckets: b}, 3000)
	if !ok || len(got.Buckets) != len(b) || got.Buckets[len(b)-1].Count != 3000 || checkBuckets(got.Buckets) != nil {
		t.Fatalf("histogram scaled: %+v %v", got, ok)
	}
	for _, q := range []float64{0.2, 0.5, 0.99} {
		before, _ := quantile(q, promBuckets, cumOf(b))
		after, _ := quantile(q, promBuckets, cumOf(got.Buckets))
		if math.Abs(after-before) > 1e-3 {
			t.Errorf("quantile %g: %g after scaling, %g before: the shape was not kept: %v", q, after, before, got.Buckets)
		}
	}
	// Rounding never makes the counts go down, whatever the factor.
	for limit := uint64(1); limit < 50; limit++ {
		if got, _ := capHost(KindLatency, Counts{Rule: "latency", Buckets: b}, limit); checkBuckets(got.Buckets) != nil || got.Buckets[len(b)-1].Count != limit {
			t.Fatalf("scaled to %d: %v", limit, got.Buckets)
		}
	}
}

func cumOf(bs []Bucket) []uint64 {
	out := make([]uint64, len(bs))
	for i, b := range bs {
		out[i] = b.Count
	}
	return out
}

// TestTrackerHostWeightCap: the Tracker keeps each host's cumulative
// counts within MaxHostWeight of its group's median before it halves
// them, so a baseline host claiming 900 million requests every window
// neither hides the canary nor makes the Tracker halve every other host's
// evidence look after look (before, its claims passed MaxGroupCount from
// the second window on, and each look halved the honest hosts' counts).
func TestTrackerHostWeightCap(t *testing.T) {
	span := 30 * time.Second
	c := Config{Windows: 5, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}}}
	tr, err := NewTracker(c, span, t0, t0)
	if err != nil {
		t.Fatal(err)
	}
	end := t0
	for look := 1; look <= 5; look++ {
		end = end.Add(span)
		mustAdd(t, tr, "c1", true, end, errCounts(2000, 100_000), end)
		for i := range 8 {
			mustAdd(t, tr, fmt.Sprint("b", i), false, end, errCounts(1000, 100_000), end)
		}
		mustAdd(t, tr, "liar", false, end, errCounts(18_000_000, 900_000_000), end)
		j, looked, err := tr.Judge(end.Add(span / 2))
		if err != nil || !looked {
			t.Fatalf("look %d: looked %v, %v", look, looked, err)
		}
		r := j.Results[len(j.Results)-1]
		if j.Verdict != Fail || r.ScaledHosts != 1 || !strings.Contains(r.Reason, "1 host scaled down") {
			t.Fatalf("look %d: %s: %s", look, j.Verdict, r.Reason)
		}
		if want := uint64(look) * 1_200_000; r.BaselineN != want || r.CanaryN != uint64(look)*100_000 {
			t.Fatalf("look %d: baseline %d requests, canary %d: want %d and %d (nothing halved)", look, r.BaselineN, r.CanaryN, want, look*100_000)
		}
	}
}
