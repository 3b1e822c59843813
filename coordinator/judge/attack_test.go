package judge

import (
	"math"
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
