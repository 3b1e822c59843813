package judge

import (
	"strings"
	"testing"
	"time"
)

// TestTracker: windows are judged span/2 after their end, cumulatively, in
// order; summaries of judged windows or from before the rollout are
// dropped; a host moving to the canary counts in each group; the looks
// stop at Config.Windows.
func TestTracker(t *testing.T) {
	c := Config{Windows: 3, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio, MinCount: 100}}}
	span := 30 * time.Second
	tr, err := NewTracker(c, span, t0, t0)
	if err != nil {
		t.Fatal(err)
	}
	e := func(errs, reqs uint64) []Counts { return []Counts{{Rule: "errors", Requests: reqs, Errors: errs}} }
	w1, w2, w3, w4 := t0.Add(span), t0.Add(2*span), t0.Add(3*span), t0.Add(4*span)
	if addOK(t, tr, "b1", false, t0, e(0, 1000)) {
		t.Error("a window ending at the rollout's start was taken")
	}
	addOK(t, tr, "c1", true, w1, e(1, 60))
	addOK(t, tr, "b1", false, w1, e(1, 600))
	if addOK(t, tr, "b1", false, w1, e(1, 600)) {
		t.Error("the same host's window taken twice")
	}
	if got := tr.NextWake(); !got.Equal(w1.Add(span / 2)) {
		t.Errorf("next wake %v, want %v", got, w1.Add(span/2))
	}
	if _, looked, err := tr.Judge(w1.Add(span/2 - time.Millisecond)); looked || err != nil {
		t.Fatalf("judged before the window closed: %v %v", looked, err)
	}
	j, looked, err := tr.Judge(w1.Add(span / 2))
	if !looked || err != nil || j.Verdict != Inconclusive || tr.Looks() != 1 {
		t.Fatalf("window 1: %v %v %v: %s", looked, err, j.Verdict, j.Reason())
	}
	if addOK(t, tr, "c1", true, w1, e(100, 100)) {
		t.Error("a judged window's summary was taken")
	}
	// Window 2: c1 is alike, b1 moved to the canary; b2 is the baseline.
	addOK(t, tr, "c1", true, w2, e(1, 100))
	addOK(t, tr, "b1", true, w2, e(0, 200))
	addOK(t, tr, "b2", false, w2, e(3, 900))
	j, _, err = tr.Judge(w2.Add(span))
	if err != nil || j.Verdict != Pass {
		t.Fatalf("window 2: %v %v: %s", err, j.Verdict, j.Reason())
	}
	last := j.Results[len(j.Results)-1]
	if last.CanaryHosts != 2 || last.BaselineHosts != 2 || last.CanaryN != 360 || last.BaselineN != 1500 {
		t.Errorf("window 2 is cumulative with host keys per group: %+v", last)
	}
	// Windows 3 and 4 close together: only 3 is judged (3 looks planned).
	addOK(t, tr, "c1", true, w3, e(30, 300))
	addOK(t, tr, "b2", false, w3, e(3, 1000))
	addOK(t, tr, "c1", true, w4, e(30, 300))
	j, _, err = tr.Judge(w4.Add(span))
	if err != nil || tr.Looks() != 3 || j.Verdict != Fail || !strings.Contains(j.Reason(), "on 2 canary hosts vs") {
		t.Fatalf("window 3: looks %d, %v %v: %s", tr.Looks(), err, j.Verdict, j.Reason())
	}
	if addOK(t, tr, "c1", true, w4.Add(span), e(0, 100)) || !tr.NextWake().IsZero() {
		t.Error("a summary was taken after the last look")
	}
}

// TestTrackerRefusesBadInput: a bad config or window length is an error
// naming it; bad counts are refused when added, naming the host.
func TestTrackerRefusesBadInput(t *testing.T) {
	if _, err := NewTracker(Config{Windows: 0, Rules: []Rule{{Kind: KindErrorRatio}}}, time.Second, t0, t0); err == nil || !strings.Contains(err.Error(), "compare: windows 0") {
		t.Errorf("windows 0: %v", err)
	}
	if _, err := NewTracker(Config{Windows: 1, Rules: []Rule{{Kind: KindErrorRatio}}}, 0, t0, t0); err == nil || !strings.Contains(err.Error(), "compare: window 0s: must be positive") {
		t.Errorf("span 0: %v", err)
	}
	tr, err := NewTracker(Config{Windows: 2, Rules: []Rule{{Name: "errors", Kind: KindErrorRatio}}}, time.Second, t0, t0)
	if err != nil {
		t.Fatal(err)
	}
	end := t0.Add(time.Second)
	if ok, err := tr.Add("c1", true, end, []Counts{{Rule: "errors", Requests: 1, Errors: 2}}, end); ok || err == nil || !strings.Contains(err.Error(), `c1 rule "errors": errors 2 more than requests 1`) {
		t.Errorf("bad counts: taken %v, %v", ok, err)
	}
}

// addOK adds a summary at the leader's time end; it must not be refused.
func addOK(t *testing.T, tr *Tracker, host string, canary bool, end time.Time, counts []Counts) bool {
	t.Helper()
	ok, err := tr.Add(host, canary, end, counts, end)
	if err != nil {
		t.Fatalf("%s at %v: %v", host, end, err)
	}
	return ok
}
