package analysis

import (
	"math"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// MaxSummaryBuckets bounds the buckets of one latency rule in a summary
// (the coordinator's judge takes at most as many).
const MaxSummaryBuckets = spec.MaxCompareBuckets

// Summarize measures the error_ratio and latency rules over w's samples in
// the window ending at now, as Evaluate reads them, into whole counts for
// the coordinator's comparison (analysis.compare): requests and errors, or
// cumulative bucket increases ending with +Inf. A rule without usable data
// (no or stale scrapes, no series, no +Inf bucket, more than
// MaxSummaryBuckets buckets, counts that are not finite) is left out. The
// summary is labelled with [start, end) and version; it is nil when no rule
// could be measured.
func Summarize(rules []Rule, w *Window, now, start, end time.Time, version string) *v1.MetricSummary {
	var out []*v1.RuleCounts
	for _, r := range rules {
		if r.Kind != KindErrorRatio && r.Kind != KindLatency {
			continue
		}
		sel := w.selectAt(now)
		if len(sel.samples) < 2 || sel.stale > 0 {
			continue
		}
		switch r.Kind {
		case KindErrorRatio:
			inc, seen := increases(sel.samples, counterExtractor(r.Metric, r.ErrorLabel, r.ErrorRegex))
			if !seen {
				continue
			}
			var n, e float64
			for k, v := range inc {
				n += v
				if k.isErr {
					e += v
				}
			}
			if !isFinite(n) || !isFinite(e) || n >= math.MaxUint64/2 {
				continue
			}
			out = append(out, &v1.RuleCounts{Rule: r.Name, Requests: uint64(math.Round(n)), Errors: uint64(math.Round(min(e, n)))})
		case KindLatency:
			inc, seen := increases(sel.samples, bucketExtractor(r.Metric))
			if !seen {
				continue
			}
			buckets := sumBuckets(inc)
			if n := len(buckets); n == 0 || n > MaxSummaryBuckets || !math.IsInf(buckets[n-1].upper, 1) || !isFinite(buckets[n-1].count) || buckets[n-1].count >= math.MaxUint64/2 {
				continue
			}
			rc := &v1.RuleCounts{Rule: r.Name}
			for _, b := range buckets {
				if math.IsInf(b.upper, -1) {
					continue
				}
				rc.Buckets = append(rc.Buckets, &v1.HistogramBucket{UpperBound: b.upper, Count: uint64(math.Round(b.count))})
			}
			out = append(out, rc)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return &v1.MetricSummary{Start: timestamppb.New(start), End: timestamppb.New(end), Version: version, Rules: out}
}

// SummaryWindow is the window of length span, aligned to the clock (its
// end a multiple of span since the Unix epoch), that ended last at or
// before now: every host summarizes the same windows.
func SummaryWindow(now time.Time, span time.Duration) (start, end time.Time) {
	if span <= 0 {
		return now, now
	}
	end = now.Truncate(span)
	return end.Add(-span), end
}
