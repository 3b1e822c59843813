package coordinator

import (
	"strings"
	"testing"

	"github.com/fleetwave/fleetwave/coordinator/judge"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestValidateReportMetrics: a report's metric summary is bounded (rules,
// buckets, names, version); the error names the field.
func TestValidateReportMetrics(t *testing.T) {
	ok := &v1.ServiceReport{Service: "web", Metrics: &v1.MetricSummary{Version: "v2", Rules: []*v1.RuleCounts{{Rule: "errors", Requests: 10}}}}
	if err := validateReport(ok); err != nil {
		t.Fatal(err)
	}
	manyRules := make([]*v1.RuleCounts, judge.MaxRules+1)
	manyBuckets := make([]*v1.HistogramBucket, judge.MaxBuckets+1)
	for _, tc := range []struct {
		m    *v1.MetricSummary
		want string
	}{
		{&v1.MetricSummary{Version: "bad version"}, "report.metrics.version"},
		{&v1.MetricSummary{Rules: manyRules}, "report.metrics.rules: 33 entries, over 32"},
		{&v1.MetricSummary{Rules: []*v1.RuleCounts{{Rule: strings.Repeat("x", maxField+1)}}}, "report.metrics.rules[0].rule: over 1024 bytes"},
		{&v1.MetricSummary{Rules: []*v1.RuleCounts{{Rule: "p99", Buckets: manyBuckets}}}, "report.metrics.rules[0].buckets: 257 entries, over 256"},
	} {
		r := &v1.ServiceReport{Service: "web", Metrics: tc.m}
		if err := validateReport(r); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.m, err, tc.want)
		}
	}
}
