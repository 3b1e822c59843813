package spec

import (
	"fmt"
	"math"
	"net/url"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/alertfmt"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Defaults and limits of the analysis section (see Analysis in
// proto/fleetwave/v1/types.proto). The agent's analysis package applies the
// same defaults.
const (
	DefaultAnalysisInterval = time.Second
	DefaultAnalysisWindow   = 30 * time.Second
	DefaultAnalysisWatch    = 5 * time.Minute
	DefaultErrorLabel       = "code"
	DefaultErrorRegex       = "5.."
	DefaultMinRequests      = 20
	DefaultMinSamples       = 20
	// MinAnalysisInterval keeps the agent from scraping a service in a
	// tight loop.
	MinAnalysisInterval = 100 * time.Millisecond
	// MaxAnalysisSamples bounds window/interval: the agent keeps that many
	// scrapes in memory.
	MaxAnalysisSamples = 3600
)

// Defaults and limits of analysis.compare (the coordinator's judge,
// coordinator/judge, applies the same).
const (
	CompareBaselineHosts      = "baseline_hosts"
	DefaultCompareWindows     = 10
	MaxCompareWindows         = 1000
	DefaultCompareAlpha       = 0.01
	MaxCompareAlpha           = 0.2
	DefaultCompareMaxIncrease = 0.2
	DefaultCompareMinRequests = 200
	DefaultCompareMinSamples  = 50
	// MaxCompareBuckets bounds a latency rule's buckets in a host's
	// summary.
	MaxCompareBuckets = 256
	// MaxCompareRules bounds the error_ratio and latency rules compared
	// (each is in every host's summary, and coordinators refuse a summary
	// of more).
	MaxCompareRules = 32
)

// Names of the analysis rule kinds; a rule's name defaults to its kind.
const (
	RuleErrorRatio = "error_ratio"
	RuleLatency    = "latency"
	RuleRestarts   = "restarts"
	RulePromQL     = "promql"
)

var (
	metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// AnchoredRegexp compiles a label regex the way PromQL's =~ matches: the
// whole value must match.
func AnchoredRegexp(expr string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + expr + ")$")
}

// RuleKind returns the kind of an analysis rule ("error_ratio", "latency",
// "restarts", "promql"), or "" when no kind is set.
func RuleKind(r *v1.AnalysisRule) string {
	switch r.GetKind().(type) {
	case *v1.AnalysisRule_ErrorRatio:
		return RuleErrorRatio
	case *v1.AnalysisRule_Latency:
		return RuleLatency
	case *v1.AnalysisRule_Restarts:
		return RuleRestarts
	case *v1.AnalysisRule_Promql:
		return RulePromQL
	}
	return ""
}

// validateAnalysisAndAlerts checks the analysis and alerts sections of s.
func validateAnalysisAndAlerts(p *problems, s *v1.ServiceSpec) {
	validateAnalysis(p, s.GetAnalysis())
	al := s.GetAlerts()
	for _, err := range alertfmt.Check(al.GetFormat(), al.GetTemplate(), al.GetContentType(), al.GetMinSeverity()) {
		p.addErr(err)
	}
	if raw := s.GetAlerts().GetWebhookUrl(); raw != "" {
		checkPlainHTTPURL(p, "alerts.webhook_url", raw)
	}
}

func validateAnalysis(p *problems, a *v1.Analysis) {
	if a == nil {
		return
	}
	if raw := a.GetMetricsUrl(); raw != "" {
		if s, ok := checkTemplate(p, "analysis.metrics_url", raw); ok {
			checkHTTPURL(p, "analysis.metrics_url", raw, s)
		}
	}
	interval := positiveDuration(p, "analysis.interval", a.GetInterval(), DefaultAnalysisInterval)
	window := positiveDuration(p, "analysis.window", a.GetWindow(), DefaultAnalysisWindow)
	positiveDuration(p, "analysis.watch", a.GetWatch(), DefaultAnalysisWatch)
	if interval.d > 0 && interval.d < MinAnalysisInterval {
		p.add("analysis.interval", "%s is less than %s", interval.d, MinAnalysisInterval)
	}
	if interval.d > 0 && window.d > 0 && (a.GetInterval() != nil || a.GetWindow() != nil) {
		if window.d < 2*interval.d {
			p.add("analysis.window", "%s%s is less than 2 × interval %s%s", window.d, window.note, interval.d, interval.note)
		} else if window.d/interval.d > MaxAnalysisSamples {
			p.add("analysis.window", "%s%s is more than %d × interval %s%s", window.d, window.note, MaxAnalysisSamples, interval.d, interval.note)
		}
	}
	switch a.GetInconclusive() {
	case "", "wait", "fail":
	default:
		p.add("analysis.inconclusive", "%q is not wait or fail", a.GetInconclusive())
	}
	if raw := a.GetPrometheusUrl(); raw != "" {
		checkPlainHTTPURL(p, "analysis.prometheus_url", raw)
	}

	names := map[string]int{}
	needScrape := -1 // index of the first rule that reads metrics_url
	for i, r := range a.GetRules() {
		field := fmt.Sprintf("analysis.rules[%d]", i)
		kind := RuleKind(r)
		switch k := r.GetKind().(type) {
		case *v1.AnalysisRule_ErrorRatio:
			validateErrorRatioRule(p, field+".error_ratio", k.ErrorRatio)
		case *v1.AnalysisRule_Latency:
			validateLatencyRule(p, field+".latency", k.Latency)
		case *v1.AnalysisRule_Restarts:
		case *v1.AnalysisRule_Promql:
			validatePromQLRule(p, field+".promql", k.Promql, a.GetPrometheusUrl())
		default:
			p.add(field, "exactly one of error_ratio, latency, restarts, promql must be set")
		}
		if (kind == RuleErrorRatio || kind == RuleLatency) && needScrape < 0 {
			needScrape = i
		}
		name := r.GetName()
		if name != "" && !checkNameRE.MatchString(name) {
			p.add(field+".name", "invalid rule name %q (want [A-Za-z0-9][A-Za-z0-9._-]{0,62})", name)
		}
		if name == "" {
			name = kind
		}
		if prev, dup := names[name]; dup && name != "" {
			p.add(field+".name", "%q is also the name of analysis.rules[%d] (names default to the kind; set name to tell them apart)", name, prev)
		} else {
			names[name] = i
		}
	}
	if c := a.GetCompare(); c != nil {
		validateCompare(p, c, needScrape >= 0, a.GetRules())
	}
	if needScrape >= 0 && a.GetMetricsUrl() == "" {
		p.add("analysis.metrics_url", "must be set: analysis.rules[%d] (%s) reads the service's metrics", needScrape, RuleKind(a.GetRules()[needScrape]))
	}
}

func validateCompare(p *problems, c *v1.Compare, hasMetricRule bool, rules []*v1.AnalysisRule) {
	if c.GetAgainst() != CompareBaselineHosts {
		p.add("analysis.compare.against", "%q is not %s (the only comparison)", c.GetAgainst(), CompareBaselineHosts)
	}
	if !hasMetricRule {
		p.add("analysis.compare", "compares the error_ratio and latency rules, and analysis.rules has none")
	}
	metric := 0
	for _, r := range rules {
		if r.GetErrorRatio() != nil || r.GetLatency() != nil {
			metric++
		}
	}
	if metric > MaxCompareRules {
		p.add("analysis.compare", "compares %d error_ratio and latency rules, more than %d (each is in every host's summary)", metric, MaxCompareRules)
	}
	if w := c.GetWindows(); w > MaxCompareWindows {
		p.add("analysis.compare.windows", "%d is more than %d", w, MaxCompareWindows)
	}
	if a := c.GetAlpha(); !(a >= 0 && a <= MaxCompareAlpha) {
		p.add("analysis.compare.alpha", "%v is not in (0, %v] (0 = the default %v)", a, MaxCompareAlpha, DefaultCompareAlpha)
	}
	if m := c.GetMaxIncrease(); !(m >= 0) || math.IsInf(m, 0) {
		p.add("analysis.compare.max_increase", "%v is not a finite number >= 0 (0 = the default %v)", m, DefaultCompareMaxIncrease)
	}
}

func validateErrorRatioRule(p *problems, field string, r *v1.ErrorRatioRule) {
	checkMetricName(p, field+".metric", r.GetMetric())
	if l := r.GetErrorLabel(); l != "" && !labelNameRE.MatchString(l) {
		p.add(field+".error_label", "invalid label name %q (want [a-zA-Z_][a-zA-Z0-9_]*)", l)
	}
	if re := r.GetErrorRegex(); re != "" {
		if _, err := AnchoredRegexp(re); err != nil {
			p.add(field+".error_regex", "invalid regular expression %q: %v", re, err)
		}
	}
	if m := r.GetMax(); !(m >= 0 && m <= 1) {
		p.add(field+".max", "%v is not a ratio in 0..1", m)
	}
	checkFactor(p, field+".max_baseline_factor", r.GetMaxBaselineFactor())
}

func validateLatencyRule(p *problems, field string, r *v1.LatencyRule) {
	checkMetricName(p, field+".metric", r.GetMetric())
	if q := r.GetQuantile(); !(q > 0 && q < 1) {
		p.add(field+".quantile", "%v is not between 0 and 1 (exclusive), e.g. 0.99", q)
	}
	if m := r.GetMaxSeconds(); !(m > 0) || math.IsInf(m, 0) {
		p.add(field+".max_seconds", "%v is not a positive number of seconds", m)
	}
	checkFactor(p, field+".max_baseline_factor", r.GetMaxBaselineFactor())
}

func validatePromQLRule(p *problems, field string, r *v1.PromQLRule, promURL string) {
	if promURL == "" {
		p.add(field, "needs analysis.prometheus_url")
	}
	if q := r.GetQuery(); strings.TrimSpace(q) == "" {
		p.add(field+".query", "must not be empty")
	} else {
		checkTemplate(p, field+".query", q)
	}
	if m := r.GetMax(); math.IsNaN(m) {
		p.add(field+".max", "NaN is not a number")
	}
	if r.Min != nil {
		switch m := r.GetMin(); {
		case math.IsNaN(m):
			p.add(field+".min", "NaN is not a number")
		case m > r.GetMax():
			p.add(field+".min", "%v is greater than max %v", m, r.GetMax())
		}
	}
}

func checkMetricName(p *problems, field, name string) {
	if name == "" {
		p.add(field, "must not be empty")
		return
	}
	if !metricNameRE.MatchString(name) {
		p.add(field, "invalid metric name %q (want [a-zA-Z_:][a-zA-Z0-9_:]*, no labels or suffix expressions)", name)
	}
}

func checkFactor(p *problems, field string, f float64) {
	if !(f >= 0) || math.IsInf(f, 0) {
		p.add(field, "%v is not a factor >= 0 (0 = no baseline comparison)", f)
	}
}

// positiveDuration is validDuration for durations that must be positive
// when set; it returns the effective value (the default when unset), or a
// zero value after recording a problem.
func positiveDuration(p *problems, field string, d *durationpb.Duration, def time.Duration) effDuration {
	if d == nil {
		return effDuration{def, " (default)"}
	}
	if err := d.CheckValid(); err != nil {
		p.add(field, "invalid duration %ds %dns", d.GetSeconds(), d.GetNanos())
		return effDuration{}
	}
	if v := d.AsDuration(); v <= 0 {
		p.add(field, "%s is not positive (leave it out for the default %s)", v, def)
		return effDuration{}
	}
	return effDuration{d.AsDuration(), ""}
}

// checkHTTPURL checks that s (raw after a trial expansion) is an http(s) URL
// with a host.
func checkHTTPURL(p *problems, field, raw, s string) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		p.add(field, "invalid URL %q: %v", raw, unwrapURLError(err))
	case u.Scheme != "http" && u.Scheme != "https":
		p.add(field, "%q is not an http:// or https:// URL", raw)
	case u.Host == "":
		p.add(field, "%q has no host", raw)
	}
}

// checkPlainHTTPURL is checkHTTPURL for fields without placeholders.
func checkPlainHTTPURL(p *problems, field, raw string) {
	if strings.Contains(raw, "${") {
		p.add(field, "%q: placeholders are not allowed here", raw)
		return
	}
	checkHTTPURL(p, field, raw, raw)
}
