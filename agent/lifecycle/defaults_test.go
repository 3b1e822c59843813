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
