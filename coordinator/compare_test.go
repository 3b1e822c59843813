package coordinator

import (
	"strings"
	"testing"
	"time"

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

// TestCompareConfig: the judge's config from a spec's analysis section:
// the error_ratio and latency rules (names defaulting to the kind), the
// compare settings, the defaults for windows and window.
func TestCompareConfig(t *testing.T) {
	a := &v1.Analysis{
		Rules: []*v1.AnalysisRule{
			{Kind: &v1.AnalysisRule_ErrorRatio{ErrorRatio: &v1.ErrorRatioRule{Metric: "m"}}},
			{Name: "p99", Kind: &v1.AnalysisRule_Latency{Latency: &v1.LatencyRule{Metric: "h", Quantile: 0.99}}},
			{Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{}}},
		},
		Compare: &v1.Compare{Against: "baseline_hosts", Alpha: 0.05, MaxIncrease: 0.3, MinRequests: 500, MinSamples: 70},
	}
	cfg, span := compareConfig(a)
	if span != 30*time.Second || cfg.Windows != 10 || cfg.Alpha != 0.05 || len(cfg.Rules) != 2 {
		t.Fatalf("config %+v, span %v", cfg, span)
	}
	want := []judge.Rule{
		{Name: "error_ratio", Kind: judge.KindErrorRatio, MaxIncrease: 0.3, MinCount: 500},
		{Name: "p99", Kind: judge.KindLatency, Quantile: 0.99, MaxIncrease: 0.3, MinCount: 70},
	}
	for i, r := range cfg.Rules {
		if r != want[i] {
			t.Errorf("rule %d: %+v, want %+v", i, r, want[i])
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	msg := lookMessage(judge.Judgement{Verdict: judge.Pass, Results: []judge.Result{
		{Window: 0, Verdict: judge.Inconclusive, Reason: "old"},
		{Window: 1, Verdict: judge.Pass, Reason: "new"},
	}}, 2, 10)
	if msg != "look 2 of 10: pass; pass: new" {
		t.Errorf("look message %q", msg)
	}
}
