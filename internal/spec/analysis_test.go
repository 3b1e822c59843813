package spec

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// validWithAnalysis is valid() with every analysis rule kind and alerts.
func validWithAnalysis() *v1.ServiceSpec {
	s := valid()
	s.Analysis = &v1.Analysis{
		MetricsUrl:    "http://127.0.0.1:${host.label.port}/metrics",
		Interval:      durationpb.New(time.Second),
		Window:        durationpb.New(30 * time.Second),
		Watch:         durationpb.New(5 * time.Minute),
		Inconclusive:  "wait",
		PrometheusUrl: "http://prom:9090",
		Rules: []*v1.AnalysisRule{
			{Kind: &v1.AnalysisRule_ErrorRatio{ErrorRatio: &v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05, MaxBaselineFactor: 2}}},
			{Kind: &v1.AnalysisRule_Latency{Latency: &v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.99, MaxSeconds: 0.5}}},
			{Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{Max: 1}}},
			{Name: "queue", Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: `sum(queue_depth{host="${host.id}"})`, Max: 100, Min: proto.Float64(0)}}},
		},
	}
	s.Alerts = &v1.Alerts{WebhookUrl: "https://hooks.example/fleetwave"}
	return s
}

func TestValidateAnalysisOK(t *testing.T) {
	cases := map[string]func(a *v1.Analysis){
		"as is":             func(a *v1.Analysis) {},
		"all defaults":      func(a *v1.Analysis) { a.Interval, a.Window, a.Watch, a.Inconclusive = nil, nil, nil, "" },
		"fail inconclusive": func(a *v1.Analysis) { a.Inconclusive = "fail" },
		"window 2x interval": func(a *v1.Analysis) {
			a.Interval = durationpb.New(5 * time.Second)
			a.Window = durationpb.New(10 * time.Second)
		},
		"only interval":       func(a *v1.Analysis) { a.Window = nil; a.Interval = durationpb.New(15 * time.Second) },
		"https metrics":       func(a *v1.Analysis) { a.MetricsUrl = "https://${host.id}.example/metrics" },
		"no rules":            func(a *v1.Analysis) { a.Rules = nil; a.MetricsUrl = "" },
		"restarts only":       func(a *v1.Analysis) { a.Rules = a.Rules[2:3]; a.MetricsUrl = "" },
		"restarts and promql": func(a *v1.Analysis) { a.Rules = a.Rules[2:]; a.MetricsUrl = "" },
		"error ratio max 1":   func(a *v1.Analysis) { a.Rules[0].GetErrorRatio().Max = 1 },
		"error ratio max 0":   func(a *v1.Analysis) { a.Rules[0].GetErrorRatio().Max = 0 },
		"error label regex": func(a *v1.Analysis) {
			a.Rules[0].GetErrorRatio().ErrorLabel = "status"
			a.Rules[0].GetErrorRatio().ErrorRegex = "5..|429"
		},
		"promql min only equal": func(a *v1.Analysis) { a.Rules[3].GetPromql().Min = proto.Float64(100) },
		"promql no min":         func(a *v1.Analysis) { a.Rules[3].GetPromql().Min = nil },
		"two latency named": func(a *v1.Analysis) {
			a.Rules = append(a.Rules, &v1.AnalysisRule{Name: "p50", Kind: &v1.AnalysisRule_Latency{Latency: &v1.LatencyRule{Metric: "x", Quantile: 0.5, MaxSeconds: 1}}})
		},
		"compare with defaults": func(a *v1.Analysis) { a.Compare = &v1.Compare{Against: CompareBaselineHosts} },
		"compare set": func(a *v1.Analysis) {
			a.Compare = &v1.Compare{Against: CompareBaselineHosts, Windows: MaxCompareWindows, Alpha: MaxCompareAlpha, MaxIncrease: 0.5, MinRequests: 1000, MinSamples: 10}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s := validWithAnalysis()
			mutate(s.Analysis)
			if err := Validate(s); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
	s := validWithAnalysis()
	s.Analysis, s.Alerts = nil, nil
	if err := Validate(s); err != nil {
		t.Fatalf("Validate without analysis: %v", err)
	}
}

func TestValidateAnalysisErrors(t *testing.T) {
	er := func(a *v1.Analysis) *v1.ErrorRatioRule { return a.Rules[0].GetErrorRatio() }
	lat := func(a *v1.Analysis) *v1.LatencyRule { return a.Rules[1].GetLatency() }
	pq := func(a *v1.Analysis) *v1.PromQLRule { return a.Rules[3].GetPromql() }
	tests := []struct {
		name   string
		mutate func(s *v1.ServiceSpec)
		want   string // the start of one problem line
	}{
		{"metrics url scheme", func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = "ftp://x/metrics" }, `analysis.metrics_url: "ftp://x/metrics" is not an http:// or https:// URL`},
		{"metrics url no host", func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = "http:///metrics" }, `analysis.metrics_url: "http:///metrics" has no host`},
		{"metrics url unparsable", func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = "http://[::1/x" }, `analysis.metrics_url: invalid URL "http://[::1/x"`},
		{"metrics url placeholder", func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = "http://${host.ip}/metrics" }, `analysis.metrics_url: unknown placeholder ${host.ip}`},
		{"metrics url missing", func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = "" }, `analysis.metrics_url: must be set: analysis.rules[0] (error_ratio) reads the service's metrics`},
		{"metrics url missing latency", func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = ""; s.Analysis.Rules = s.Analysis.Rules[1:] }, `analysis.metrics_url: must be set: analysis.rules[0] (latency)`},
		{"zero interval", func(s *v1.ServiceSpec) { s.Analysis.Interval = durationpb.New(0) }, `analysis.interval: 0s is not positive (leave it out for the default 1s)`},
		{"negative window", func(s *v1.ServiceSpec) { s.Analysis.Window = durationpb.New(-time.Second) }, `analysis.window: -1s is not positive`},
		{"negative watch", func(s *v1.ServiceSpec) { s.Analysis.Watch = durationpb.New(-time.Minute) }, `analysis.watch: -1m0s is not positive`},
		{"invalid interval", func(s *v1.ServiceSpec) { s.Analysis.Interval = &durationpb.Duration{Seconds: 1, Nanos: -1} }, `analysis.interval: invalid duration 1s -1ns`},
		{"interval too short", func(s *v1.ServiceSpec) { s.Analysis.Interval = durationpb.New(time.Millisecond) }, `analysis.interval: 1ms is less than 100ms`},
		{"window < 2 interval", func(s *v1.ServiceSpec) { s.Analysis.Window = durationpb.New(1500 * time.Millisecond) }, `analysis.window: 1.5s is less than 2 × interval 1s`},
		{"window < 2 default interval", func(s *v1.ServiceSpec) {
			s.Analysis.Interval = nil
			s.Analysis.Window = durationpb.New(time.Second)
		}, `analysis.window: 1s is less than 2 × interval 1s (default)`},
		{"default window < 2 interval", func(s *v1.ServiceSpec) {
			s.Analysis.Window = nil
			s.Analysis.Interval = durationpb.New(20 * time.Second)
		}, `analysis.window: 30s (default) is less than 2 × interval 20s`},
		{"window too many intervals", func(s *v1.ServiceSpec) {
			s.Analysis.Interval = durationpb.New(100 * time.Millisecond)
			s.Analysis.Window = durationpb.New(time.Hour)
		}, `analysis.window: 1h0m0s is more than 3600 × interval 100ms`},
		{"inconclusive", func(s *v1.ServiceSpec) { s.Analysis.Inconclusive = "ignore" }, `analysis.inconclusive: "ignore" is not wait or fail`},
		{"prometheus url scheme", func(s *v1.ServiceSpec) { s.Analysis.PrometheusUrl = "prom:9090" }, `analysis.prometheus_url: "prom:9090" is not an http:// or https:// URL`},
		{"prometheus url placeholder", func(s *v1.ServiceSpec) { s.Analysis.PrometheusUrl = "http://${host.id}:9090" }, `analysis.prometheus_url: "http://${host.id}:9090": placeholders are not allowed here`},
		{"no rule kind", func(s *v1.ServiceSpec) { s.Analysis.Rules[1].Kind = nil }, `analysis.rules[1]: exactly one of error_ratio, latency, restarts, promql must be set`},
		{"bad rule name", func(s *v1.ServiceSpec) { s.Analysis.Rules[0].Name = "my rule" }, `analysis.rules[0].name: invalid rule name "my rule"`},
		{"duplicate rule name", func(s *v1.ServiceSpec) { s.Analysis.Rules[3].Name = "latency" }, `analysis.rules[3].name: "latency" is also the name of analysis.rules[1]`},
		{"duplicate default name", func(s *v1.ServiceSpec) {
			s.Analysis.Rules = append(s.Analysis.Rules, proto.Clone(s.Analysis.Rules[2]).(*v1.AnalysisRule))
		}, `analysis.rules[4].name: "restarts" is also the name of analysis.rules[2]`},
		{"error metric empty", func(s *v1.ServiceSpec) { er(s.Analysis).Metric = "" }, `analysis.rules[0].error_ratio.metric: must not be empty`},
		{"error metric selector", func(s *v1.ServiceSpec) { er(s.Analysis).Metric = `http_requests_total{job="x"}` }, `analysis.rules[0].error_ratio.metric: invalid metric name "http_requests_total{job=\"x\"}"`},
		{"error label", func(s *v1.ServiceSpec) { er(s.Analysis).ErrorLabel = "status-code" }, `analysis.rules[0].error_ratio.error_label: invalid label name "status-code"`},
		{"error regex", func(s *v1.ServiceSpec) { er(s.Analysis).ErrorRegex = "5(" }, `analysis.rules[0].error_ratio.error_regex: invalid regular expression "5("`},
		{"error max > 1", func(s *v1.ServiceSpec) { er(s.Analysis).Max = 5 }, `analysis.rules[0].error_ratio.max: 5 is not a ratio in 0..1`},
		{"error max < 0", func(s *v1.ServiceSpec) { er(s.Analysis).Max = -0.1 }, `analysis.rules[0].error_ratio.max: -0.1 is not a ratio in 0..1`},
		{"error max NaN", func(s *v1.ServiceSpec) { er(s.Analysis).Max = math.NaN() }, `analysis.rules[0].error_ratio.max: NaN is not a ratio in 0..1`},
		{"error factor", func(s *v1.ServiceSpec) { er(s.Analysis).MaxBaselineFactor = -1 }, `analysis.rules[0].error_ratio.max_baseline_factor: -1 is not a factor >= 0`},
		{"latency metric", func(s *v1.ServiceSpec) { lat(s.Analysis).Metric = "" }, `analysis.rules[1].latency.metric: must not be empty`},
		{"latency quantile 1", func(s *v1.ServiceSpec) { lat(s.Analysis).Quantile = 1 }, `analysis.rules[1].latency.quantile: 1 is not between 0 and 1 (exclusive)`},
		{"latency quantile 0", func(s *v1.ServiceSpec) { lat(s.Analysis).Quantile = 0 }, `analysis.rules[1].latency.quantile: 0 is not between 0 and 1 (exclusive)`},
		{"latency quantile 99", func(s *v1.ServiceSpec) { lat(s.Analysis).Quantile = 99 }, `analysis.rules[1].latency.quantile: 99 is not between 0 and 1`},
		{"latency max 0", func(s *v1.ServiceSpec) { lat(s.Analysis).MaxSeconds = 0 }, `analysis.rules[1].latency.max_seconds: 0 is not a positive number of seconds`},
		{"latency max Inf", func(s *v1.ServiceSpec) { lat(s.Analysis).MaxSeconds = math.Inf(1) }, `analysis.rules[1].latency.max_seconds: +Inf is not a positive number of seconds`},
		{"latency factor", func(s *v1.ServiceSpec) { lat(s.Analysis).MaxBaselineFactor = math.Inf(1) }, `analysis.rules[1].latency.max_baseline_factor: +Inf is not a factor >= 0`},
		{"promql no prometheus", func(s *v1.ServiceSpec) { s.Analysis.PrometheusUrl = "" }, `analysis.rules[3].promql: needs analysis.prometheus_url`},
		{"promql empty query", func(s *v1.ServiceSpec) { pq(s.Analysis).Query = "  " }, `analysis.rules[3].promql.query: must not be empty`},
		{"promql query placeholder", func(s *v1.ServiceSpec) { pq(s.Analysis).Query = "up{host=\"${host.name}\"}" }, `analysis.rules[3].promql.query: unknown placeholder ${host.name}`},
		{"promql min > max", func(s *v1.ServiceSpec) { pq(s.Analysis).Min = proto.Float64(101) }, `analysis.rules[3].promql.min: 101 is greater than max 100`},
		{"promql max NaN", func(s *v1.ServiceSpec) { pq(s.Analysis).Max = math.NaN() }, `analysis.rules[3].promql.max: NaN is not a number`},
		{"compare against", func(s *v1.ServiceSpec) { s.Analysis.Compare = &v1.Compare{Against: "previous_release"} }, `analysis.compare.against: "previous_release" is not baseline_hosts (the only comparison)`},
		{"compare against empty", func(s *v1.ServiceSpec) { s.Analysis.Compare = &v1.Compare{} }, `analysis.compare.against: "" is not baseline_hosts`},
		{"compare windows", func(s *v1.ServiceSpec) {
			s.Analysis.Compare = &v1.Compare{Against: CompareBaselineHosts, Windows: 1001}
		}, `analysis.compare.windows: 1001 is more than 1000`},
		{"compare alpha", func(s *v1.ServiceSpec) { s.Analysis.Compare = &v1.Compare{Against: CompareBaselineHosts, Alpha: 0.5} }, `analysis.compare.alpha: 0.5 is not in (0, 0.2] (0 = the default 0.01)`},
		{"compare alpha NaN", func(s *v1.ServiceSpec) {
			s.Analysis.Compare = &v1.Compare{Against: CompareBaselineHosts, Alpha: math.NaN()}
		}, `analysis.compare.alpha: NaN is not in (0, 0.2]`},
		{"compare max increase", func(s *v1.ServiceSpec) {
			s.Analysis.Compare = &v1.Compare{Against: CompareBaselineHosts, MaxIncrease: math.Inf(1)}
		}, `analysis.compare.max_increase: +Inf is not a finite number >= 0`},
		{"compare too many rules", func(s *v1.ServiceSpec) {
			s.Analysis.Compare = &v1.Compare{Against: CompareBaselineHosts}
			for i := 0; i < 33; i++ {
				s.Analysis.Rules = append(s.Analysis.Rules, &v1.AnalysisRule{Name: fmt.Sprintf("e%d", i),
					Kind: &v1.AnalysisRule_ErrorRatio{ErrorRatio: &v1.ErrorRatioRule{Metric: "m", Max: 0.1}}})
			}
		}, `analysis.compare: compares `},
		{"compare no metric rule", func(s *v1.ServiceSpec) {
			s.Analysis.Compare = &v1.Compare{Against: CompareBaselineHosts}
			s.Analysis.Rules = s.Analysis.Rules[2:3]
		}, `analysis.compare: compares the error_ratio and latency rules, and analysis.rules has none`},
		{"webhook scheme", func(s *v1.ServiceSpec) { s.Alerts.WebhookUrl = "mailto:ops@example.com" }, `alerts.webhook_url: "mailto:ops@example.com" is not an http:// or https:// URL`},
		{"webhook no host", func(s *v1.ServiceSpec) { s.Alerts.WebhookUrl = "https:///hook" }, `alerts.webhook_url: "https:///hook" has no host`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validWithAnalysis()
			if err := Validate(s); err != nil {
				t.Fatalf("valid spec: %v", err)
			}
			tt.mutate(s)
			err := Validate(s)
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			found := false
			for _, l := range strings.Split(err.Error(), "\n") {
				found = found || strings.HasPrefix(l, tt.want)
			}
			if !found {
				t.Errorf("no problem starting with %q in:\n%v", tt.want, err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error is not a *FieldError: %T", err)
			}
		})
	}
}

func TestValidateAnalysisFromYAML(t *testing.T) {
	in := string(readTestdata(t, "web.yaml")) + `
analysis:
  metrics_url: http://127.0.0.1:${host.label.port}/metrics
  interval: 1s
  window: 20s
  rules:
    - error_ratio: {metric: http_requests_total, max: 0.05, max_baseline_factor: 2}
    - name: p99
      latency: {metric: http_request_duration_seconds, quantile: 0.99, max_seconds: 0.5}
    - restarts: {max: 0}
alerts:
  webhook_url: https://hooks.example/x
`
	s, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(s); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if got := s.GetAnalysis().GetRules()[1].GetLatency().GetQuantile(); got != 0.99 {
		t.Errorf("quantile = %v", got)
	}
	bad := strings.Replace(in, "quantile: 0.99", "quantile: 99", 1)
	s, err = Parse([]byte(bad))
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(s); err == nil || !strings.Contains(err.Error(), "analysis.rules[1].latency.quantile: 99 is not between 0 and 1") {
		t.Errorf("Validate = %v", err)
	}
}

func TestAnchoredRegexpAndRuleKind(t *testing.T) {
	re, err := AnchoredRegexp(DefaultErrorRegex)
	if err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]bool{"500": true, "503": true, "200": false, "5000": false, "x500": false, "": false} {
		if got := re.MatchString(v); got != want {
			t.Errorf("%q matches %v, want %v", v, got, want)
		}
	}
	re, _ = AnchoredRegexp("a|b")
	if re.MatchString("ab") || !re.MatchString("b") {
		t.Error("alternation is not anchored as a whole")
	}
	a := validWithAnalysis().Analysis
	want := []string{RuleErrorRatio, RuleLatency, RuleRestarts, RulePromQL}
	for i, r := range a.Rules {
		if got := RuleKind(r); got != want[i] {
			t.Errorf("RuleKind(rules[%d]) = %q, want %q", i, got, want[i])
		}
	}
	if RuleKind(&v1.AnalysisRule{}) != "" || RuleKind(nil) != "" {
		t.Error("RuleKind of an empty rule is not empty")
	}
}
