package analysis

import (
	"math"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestSummarize: the error_ratio and latency rules' increases over the
// window, in whole counts, with cumulative buckets summed over series and
// ending with +Inf; restarts and promql rules are left out; no usable data
// is no summary.
func TestSummarize(t *testing.T) {
	c := compile(t, analysisOf(
		errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.1}),
		latRule(&v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.99, MaxSeconds: 1}),
		&v1.AnalysisRule{Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{}}},
	))
	w := NewWindow(c)
	if s := Summarize(c.Rules, w, sec(30), sec(0), sec(30), "v2"); s != nil {
		t.Errorf("no samples: %v", s)
	}
	_ = w.Add(parse(t, sec(0), requests(map[string]float64{"200": 100, "500": 1}, "")+histogram(`path="/",`, 10, 20, 30, 40)+histogramSeries(`path="/x",`, 1, 1, 1, 1)))
	_ = w.Add(parse(t, sec(30), requests(map[string]float64{"200": 290, "500": 11}, "")+histogram(`path="/",`, 110, 170, 190, 200)+histogramSeries(`path="/x",`, 2, 3, 4, 5)))
	s := Summarize(c.Rules, w, sec(30), sec(0), sec(30), "v2")
	if s == nil || len(s.Rules) != 2 || s.GetVersion() != "v2" || !s.GetEnd().AsTime().Equal(sec(30)) || !s.GetStart().AsTime().Equal(sec(0)) {
		t.Fatalf("summary %v", s)
	}
	if e := s.Rules[0]; e.GetRule() != "error_ratio" || e.GetRequests() != 200 || e.GetErrors() != 10 {
		t.Errorf("errors %v, want 200 requests, 10 errors", e)
	}
	l := s.Rules[1]
	want := []struct {
		ub float64
		n  uint64
	}{{0.1, 101}, {0.5, 152}, {1, 163}, {math.Inf(1), 164}}
	if l.GetRule() != "latency" || len(l.Buckets) != len(want) {
		t.Fatalf("latency %v", l)
	}
	for i, b := range l.Buckets {
		if b.GetUpperBound() != want[i].ub || b.GetCount() != want[i].n {
			t.Errorf("bucket %d: %v, want le=%v %d", i, b, want[i].ub, want[i].n)
		}
	}
	// Stale data (the endpoint stopped answering) is no summary.
	if s := Summarize(c.Rules, w, sec(60), sec(30), sec(60), "v2"); s != nil {
		t.Errorf("stale: %v", s)
	}
}

func TestSummaryWindow(t *testing.T) {
	at := time.Date(2026, 12, 5, 10, 0, 47, 0, time.UTC)
	start, end := SummaryWindow(at, 30*time.Second)
	if !start.Equal(at.Add(-47*time.Second)) || !end.Equal(at.Add(-17*time.Second)) {
		t.Errorf("window of %v: [%v, %v)", at, start, end)
	}
}
