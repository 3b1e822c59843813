package lifecycle

import (
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The spec's durations and their defaults (the traces in testdata/ show
// what the machine does with them).
func TestSpecDefaults(t *testing.T) {
	a := asg("v1", 1)
	if Watch(a) != DefaultWatch || HasAnalysis(a) || FailInconclusive(a) {
		t.Fatalf("defaults: watch %v rules %v", Watch(a), HasAnalysis(a))
	}
	if got := WatchFailAfter(a); got != WatchFailIntervals*DefaultCheckInterval {
		t.Fatalf("WatchFailAfter = %v", got)
	}
	if got := WatchFailAfter(asgChecks("v1", 1, 0)); got != WatchFailIntervals*DefaultCheckInterval {
		t.Fatalf("WatchFailAfter without checks = %v", got)
	}
	b := asgChecks("v1", 1, 2)
	b.Spec.Checks[1].Interval = durationpb.New(2 * time.Second)
	b.Spec.Analysis = &v1.Analysis{Watch: durationpb.New(time.Minute), Inconclusive: "fail",
		Rules: []*v1.AnalysisRule{{Name: "errors"}}}
	if got := WatchFailAfter(b); got != WatchFailIntervals*2*time.Second {
		t.Fatalf("WatchFailAfter = %v, want %d × the longest interval", got, WatchFailIntervals)
	}
	if Watch(b) != time.Minute || !HasAnalysis(b) || !FailInconclusive(b) {
		t.Fatalf("watch %v rules %v inconclusive %v", Watch(b), HasAnalysis(b), FailInconclusive(b))
	}
	if MinHealthyTime(a) != testMinHealthy || HealthyDeadline(a) != testDeadline {
		t.Fatalf("min healthy %v deadline %v", MinHealthyTime(a), HealthyDeadline(a))
	}
	var none *v1.Assignment
	if MinHealthyTime(none) != DefaultMinHealthyTime || HealthyDeadline(none) != DefaultHealthyDeadline {
		t.Fatalf("defaults: min healthy %v deadline %v", MinHealthyTime(none), HealthyDeadline(none))
	}
}

// TestProbeDelay: a check that has not passed yet is retried sooner than
// its interval, backing off to it; once passed it runs on its interval.
func TestProbeDelay(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		passed   bool
		failures int
		want     time.Duration
	}{
		{time.Second, false, 1, 100 * time.Millisecond},
		{time.Second, false, 2, 200 * time.Millisecond},
		{time.Second, false, 3, 400 * time.Millisecond},
		{time.Second, false, 4, 800 * time.Millisecond},
		{time.Second, false, 5, time.Second},
		{time.Second, false, 1000, time.Second},
		{time.Second, true, 1, time.Second},
		{time.Second, true, 0, time.Second},
		{time.Second, false, 0, time.Second}, // not run yet: the caller runs it at once
		{50 * time.Millisecond, false, 1, 50 * time.Millisecond},
		{100 * time.Millisecond, false, 3, 100 * time.Millisecond},
		{250 * time.Millisecond, false, 2, 200 * time.Millisecond},
		{250 * time.Millisecond, false, 3, 250 * time.Millisecond},
		{time.Hour, false, 100, time.Hour},
	} {
		if got := ProbeDelay(tc.interval, tc.passed, tc.failures); got != tc.want {
			t.Errorf("ProbeDelay(%v, passed %v, %d failures) = %v, want %v", tc.interval, tc.passed, tc.failures, got, tc.want)
		}
	}
}
