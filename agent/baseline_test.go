package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/analysis"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	dto "github.com/prometheus/client_model/go"
)

// ActFreezeBaseline freezes what the analyser measured of the old release,
// for the release being installed only; ActStop alone freezes nothing.
func TestFreezeBaselineAction(t *testing.T) {
	rules := &v1.Analysis{Rules: []*v1.AnalysisRule{{Name: "errors", Kind: &v1.AnalysisRule_ErrorRatio{
		ErrorRatio: &v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5, MaxBaselineFactor: 2, MinRequests: 1}}}}}
	cfg, err := analysis.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	analyser := func(version string) *analyser {
		asg := testAssignment(version, 2, strings.Repeat("a", 64), 10, "")
		asg.Spec.Analysis = rules
		w := analysis.NewWindow(cfg)
		for i, n := range []float64{100, 200} {
			w.Add(analysis.Sample{At: t0.Add(time.Duration(i-2) * time.Second), Families: map[string]*dto.MetricFamily{
				"http_requests_total": counter("http_requests_total", n)}})
		}
		return &analyser{asg: asg, cfg: cfg, win: w}
	}
	a := newLoopAgent(t)
	s := &service{name: testSvc, ana: analyser("2.0.0")}
	a.do(s, lifecycle.Action{Kind: lifecycle.ActFreezeBaseline, Version: "2.0.0"})
	if s.ana.frozen == nil {
		t.Fatal("no baseline frozen")
	}
	if _, ok := s.ana.frozen.Value("errors"); !ok || s.ana.win.Len() != 0 {
		t.Fatalf("baseline %+v, window of %d samples", *s.ana.frozen, s.ana.win.Len())
	}
	s.ana = analyser("3.0.0")
	a.do(s, lifecycle.Action{Kind: lifecycle.ActFreezeBaseline, Version: "2.0.0"})
	if s.ana.frozen != nil {
		t.Fatal("froze a baseline for another release's rules")
	}
}

func counter(name string, v float64) *dto.MetricFamily {
	typ := dto.MetricType_COUNTER
	return &dto.MetricFamily{Name: &name, Type: &typ, Metric: []*dto.Metric{{Counter: &dto.Counter{Value: &v}}}}
}
