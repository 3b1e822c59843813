package analysis

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Rule kinds (Rule.Kind); a rule's name defaults to its kind.
const (
	KindErrorRatio = spec.RuleErrorRatio
	KindLatency    = spec.RuleLatency
	KindRestarts   = spec.RuleRestarts
	KindPromQL     = spec.RulePromQL
)

// Config is a spec's Analysis section with every default applied and every
// regular expression compiled.
type Config struct {
	// MetricsURL and PrometheusURL are as written in the spec: the caller
	// expands MetricsURL's placeholders for its host.
	MetricsURL    string
	PrometheusURL string
	Interval      time.Duration
	Window        time.Duration
	Watch         time.Duration
	// FailInconclusive is true for inconclusive: "fail".
	FailInconclusive bool
	// Compare is true when analysis.compare is set: the agent summarizes
	// every clock-aligned Window for the coordinator (Summarize).
	Compare bool
	Rules   []Rule
}

// Rule is one analysis rule with its defaults applied. Which fields mean
// something depends on Kind.
type Rule struct {
	Name string // the spec's name, or the kind
	Kind string // KindErrorRatio, KindLatency, KindRestarts or KindPromQL

	// Metric is the counter (error_ratio) or the histogram without suffix
	// (latency).
	Metric string
	// ErrorLabel and ErrorRegex (anchored) select the error series of an
	// error_ratio rule.
	ErrorLabel string
	ErrorRegex *regexp.Regexp
	// Quantile of a latency rule, in (0, 1).
	Quantile float64
	// Max is the ratio (error_ratio), the seconds (latency), the restart
	// count (restarts) or the value (promql) that must not be exceeded.
	Max float64
	// Min is the value a promql rule must not go under, when HasMin.
	Min    float64
	HasMin bool
	// MaxBaselineFactor (error_ratio, latency): 0 = no baseline comparison.
	MaxBaselineFactor float64
	// MinCount is min_requests (error_ratio) or min_samples (latency).
	MinCount uint64
	// Query of a promql rule, as written (the caller expands placeholders).
	Query string
}

// Compile applies the defaults documented in types.proto to a and compiles
// its regular expressions. A nil a gives a Config with no rules. It fails on
// what spec.Validate rejects and would make a rule meaningless (no kind, a
// regex that does not compile); the error names the rule.
func Compile(a *v1.Analysis) (Config, error) {
	c := Config{
		MetricsURL:    a.GetMetricsUrl(),
		PrometheusURL: a.GetPrometheusUrl(),
		// Never under the coordinators' floor (a spec stored before it
		// existed is scraped at it, not refused: see probe.Interval).
		Interval:         max(durationOr(a.GetInterval().AsDuration(), spec.DefaultAnalysisInterval), spec.MinAnalysisInterval),
		Window:           durationOr(a.GetWindow().AsDuration(), spec.DefaultAnalysisWindow),
		Watch:            durationOr(a.GetWatch().AsDuration(), spec.DefaultAnalysisWatch),
		FailInconclusive: a.GetInconclusive() == "fail",
		Compare:          a.GetCompare() != nil,
	}
	var errs []error
	for i, r := range a.GetRules() {
		rule, err := compileRule(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("analysis.rules[%d]: %w", i, err))
			continue
		}
		c.Rules = append(c.Rules, rule)
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return c, nil
}

func compileRule(r *v1.AnalysisRule) (Rule, error) {
	rule := Rule{Name: r.GetName(), Kind: spec.RuleKind(r)}
	if rule.Name == "" {
		rule.Name = rule.Kind
	}
	switch k := r.GetKind().(type) {
	case *v1.AnalysisRule_ErrorRatio:
		e := k.ErrorRatio
		rule.Metric = e.GetMetric()
		rule.ErrorLabel = stringOr(e.GetErrorLabel(), spec.DefaultErrorLabel)
		expr := stringOr(e.GetErrorRegex(), spec.DefaultErrorRegex)
		re, err := spec.AnchoredRegexp(expr)
		if err != nil {
			return Rule{}, fmt.Errorf("error_ratio.error_regex %q: %w", expr, err)
		}
		rule.ErrorRegex = re
		rule.Max = e.GetMax()
		rule.MaxBaselineFactor = e.GetMaxBaselineFactor()
		rule.MinCount = uintOr(e.GetMinRequests(), spec.DefaultMinRequests)
	case *v1.AnalysisRule_Latency:
		l := k.Latency
		rule.Metric = l.GetMetric()
		rule.Quantile = l.GetQuantile()
		rule.Max = l.GetMaxSeconds()
		rule.MaxBaselineFactor = l.GetMaxBaselineFactor()
		rule.MinCount = uintOr(l.GetMinSamples(), spec.DefaultMinSamples)
	case *v1.AnalysisRule_Restarts:
		rule.Max = float64(k.Restarts.GetMax())
	case *v1.AnalysisRule_Promql:
		p := k.Promql
		rule.Query = p.GetQuery()
		rule.Max = p.GetMax()
		rule.Min, rule.HasMin = p.GetMin(), p.Min != nil
	default:
		return Rule{}, errors.New("no rule kind set (want error_ratio, latency, restarts or promql)")
	}
	return rule, nil
}

// NeedsMetrics reports whether any rule reads the service's metrics, that
// is whether the caller must scrape MetricsURL.
func (c Config) NeedsMetrics() bool {
	for _, r := range c.Rules {
		if r.Kind == KindErrorRatio || r.Kind == KindLatency {
			return true
		}
	}
	return false
}

func durationOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func stringOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func uintOr(v, def uint64) uint64 {
	if v == 0 {
		return def
	}
	return v
}
