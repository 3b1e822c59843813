package analysis

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
)

// Result is one rule's outcome: the lifecycle's RuleResult (the rule, its
// verdict and the reason, which the machine decides on and reports) with
// what was measured. Value, Baseline and Threshold are always finite
// numbers (never NaN or ±Inf).
//
// The verdict type is the lifecycle's (lifecycle.Verdict): the lifecycle is
// the pure core that must not import this package, and a verdict means
// nothing but what the machine does with it, so this package, which
// produces verdicts, uses the consumer's type rather than a copy of it.
type Result struct {
	// RuleResult's Reason names the rule, the measured value and the
	// limit, e.g.
	//   rule "error_ratio": error ratio 0.200 over 30s (40/200 requests) > max 0.050
	//   rule "p99": p99 latency 0.84s over 30s (200 observations) > 2.0 × baseline 0.12s
	//   rule "error_ratio": inconclusive: 3 requests in 30s, need 20
	lifecycle.RuleResult
	// Value is what was measured: the error ratio, the latency quantile in
	// seconds, the restart count or the query's value (0 when nothing could
	// be measured).
	Value float64
	// Baseline is the old release's value the rule compared against (0
	// when it did not: no factor, or no usable baseline).
	Baseline float64
	// Threshold is the limit that was exceeded (Fail) or, otherwise, the
	// tightest limit that applies.
	Threshold float64
}

// PromQLResult is the outcome of one promql rule's query (see QueryPromQL):
// the value when OK, no sample when !OK, or the error.
type PromQLResult struct {
	Value float64
	OK    bool
	Err   error
}

// Overall is the worst verdict of results: Fail if any failed, else
// Inconclusive if any is, else Pass (also for no results).
func Overall(results []Result) lifecycle.Verdict {
	v := lifecycle.VerdictPass
	for _, r := range results {
		switch r.Verdict {
		case lifecycle.VerdictFail:
			return lifecycle.VerdictFail
		case lifecycle.VerdictInconclusive:
			v = lifecycle.VerdictInconclusive
		}
	}
	return v
}

// Baseline holds what the metric rules measured on the old release over the
// window ending at the switch. The zero value is an empty baseline: every
// rule compares against its absolute maximum only.
type Baseline struct {
	m map[string]measurement
}

// NewBaseline measures rules over w's samples at now, like Evaluate, without
// changing w. Window.Freeze is NewBaseline followed by Reset.
func NewBaseline(rules []Rule, w *Window, now time.Time) Baseline {
	b := Baseline{m: map[string]measurement{}}
	for _, r := range rules {
		if r.Kind == KindErrorRatio || r.Kind == KindLatency {
			b.m[r.Name] = measure(r, w, now)
		}
	}
	return b
}

// Value is the baseline of the named rule; ok is false when it is unknown
// (not a metric rule, or too little data before the switch).
func (b Baseline) Value(rule string) (v float64, ok bool) {
	m, found := b.m[rule]
	if !found || !m.ok {
		return 0, false
	}
	return m.value, true
}

// Evaluate judges every rule at now: metric rules over w's samples in the
// window ending at now (w holds only the new release's samples; see
// Window.Freeze), compared with base; restarts rules over restarts, the
// times the supervisor restarted the new release's process; promql rules
// from promql, keyed by rule name. The results are in the order of rules.
func Evaluate(rules []Rule, w *Window, base Baseline, now time.Time, restarts []time.Time, promql map[string]PromQLResult) []Result {
	out := make([]Result, 0, len(rules))
	for _, r := range rules {
		var res Result
		switch r.Kind {
		case KindErrorRatio, KindLatency:
			res = evalMetric(r, measure(r, w, now), base)
		case KindRestarts:
			res = evalRestarts(r, w, now, restarts)
		case KindPromQL:
			res = evalPromQL(r, promql)
		default:
			res = Result{RuleResult: lifecycle.RuleResult{Verdict: lifecycle.VerdictInconclusive, Reason: fmt.Sprintf("inconclusive: unknown rule kind %q", r.Kind)}}
		}
		res.Rule = r.Name
		res.Reason = fmt.Sprintf("rule %q: %s", r.Name, res.Reason)
		res.Value, res.Baseline, res.Threshold = finite(res.Value), finite(res.Baseline), finite(res.Threshold)
		out = append(out, res)
	}
	return out
}

// measurement is one metric rule measured over a window.
type measurement struct {
	ok     bool    // enough data; else why says what is missing
	why    string  // without the rule name or "inconclusive: "
	value  float64 // ratio or seconds
	count  float64 // requests or observations
	errors float64 // error requests
	span   time.Duration
}

func measure(r Rule, w *Window, now time.Time) measurement {
	var sel selection
	window := spec.DefaultAnalysisWindow
	if w != nil {
		sel = w.selectAt(now)
		window = w.span
	}
	m := measurement{span: sel.span}
	switch n := len(sel.samples); {
	case n == 0:
		m.why = fmt.Sprintf("no scrape of the metrics in the last %s, need 2", fmtSpan(window))
		return m
	case sel.stale > 0:
		m.why = fmt.Sprintf("last scrape %s ago, need one within %s", fmtSpan(sel.stale), fmtSpan(w.staleAfter()))
		return m
	case n < 2:
		m.why = fmt.Sprintf("1 scrape in the last %s, need 2", fmtSpan(window))
		return m
	}
	switch r.Kind {
	case KindErrorRatio:
		measureErrorRatio(r, sel, &m)
	case KindLatency:
		measureLatency(r, sel, &m)
	}
	return m
}

func measureErrorRatio(r Rule, sel selection, m *measurement) {
	inc, seen := increases(sel.samples, counterExtractor(r.Metric, r.ErrorLabel, r.ErrorRegex))
	if !seen {
		m.why = fmt.Sprintf("no series of counter %s in %d scrapes over %s", r.Metric, len(sel.samples), fmtSpan(sel.span))
		return
	}
	for k, v := range inc {
		m.count += v
		if k.isErr {
			m.errors += v
		}
	}
	if !isFinite(m.count) || !isFinite(m.errors) {
		m.count, m.errors = 0, 0
		m.why = fmt.Sprintf("the increase of %s is not a finite number", r.Metric)
		return
	}
	if m.count > 0 {
		m.value = m.errors / m.count
	}
	if need := max(r.MinCount, 1); m.count < float64(need) {
		m.why = fmt.Sprintf("%s requests in %s, need %d", fmtCount(m.count), fmtSpan(sel.span), need)
		return
	}
	m.ok = true
}

func measureLatency(r Rule, sel selection, m *measurement) {
	inc, seen := increases(sel.samples, bucketExtractor(r.Metric))
	if !seen {
		m.why = fmt.Sprintf("no histogram buckets of %s in %d scrapes over %s", r.Metric, len(sel.samples), fmtSpan(sel.span))
		return
	}
	buckets := sumBuckets(inc)
	if n := len(buckets); n == 0 || !math.IsInf(buckets[n-1].upper, 1) {
		m.why = fmt.Sprintf("histogram %s has no +Inf bucket", r.Metric)
		return
	}
	m.count = buckets[len(buckets)-1].count
	if !isFinite(m.count) {
		m.count = 0
		m.why = fmt.Sprintf("the increase of %s is not a finite number", r.Metric)
		return
	}
	if m.count < float64(r.MinCount) {
		m.why = fmt.Sprintf("%s observations of %s in %s, need %d", fmtCount(m.count), r.Metric, fmtSpan(sel.span), r.MinCount)
		return
	}
	v, ok := bucketQuantile(r.Quantile, buckets)
	if !ok {
		m.why = fmt.Sprintf("histogram %s has no finite bucket to estimate %s from", r.Metric, fmtQuantile(r.Quantile))
		return
	}
	m.value, m.ok = v, true
}

func evalMetric(r Rule, m measurement, base Baseline) Result {
	res := Result{Value: m.value, Threshold: r.Max}
	if !m.ok {
		res.Verdict = lifecycle.VerdictInconclusive
		res.Reason = "inconclusive: " + m.why
		return res
	}
	fmtV, what := fmtRatio, ""
	switch r.Kind {
	case KindErrorRatio:
		what = fmt.Sprintf("error ratio %s over %s (%s/%s requests)", fmtRatio(m.value), fmtSpan(m.span), fmtCount(m.errors), fmtCount(m.count))
	case KindLatency:
		fmtV = fmtSeconds
		what = fmt.Sprintf("%s latency %s over %s (%s observations)", fmtQuantile(r.Quantile), fmtSeconds(m.value), fmtSpan(m.span), fmtCount(m.count))
	}
	maxDesc := "max " + fmtV(r.Max)

	b, hasBase := base.m[r.Name]
	useBase := r.MaxBaselineFactor > 0 && hasBase && b.ok && b.value > 0
	var baseLimit float64
	var baseDesc, baseNote string
	if useBase {
		res.Baseline = b.value
		baseLimit = r.MaxBaselineFactor * b.value
		baseDesc = fmt.Sprintf("%s × baseline %s", fmtFactor(r.MaxBaselineFactor), fmtV(b.value))
	} else if r.MaxBaselineFactor > 0 {
		switch {
		case !hasBase:
			baseNote = " (no baseline)"
		case !b.ok:
			baseNote = " (no baseline: " + b.why + ")"
		default:
			baseNote = " (baseline 0: max only)"
		}
	}

	switch {
	case m.value > r.Max:
		res.Verdict = lifecycle.VerdictFail
		res.Reason = what + " > " + maxDesc
	case useBase && m.value > baseLimit:
		res.Verdict, res.Threshold = lifecycle.VerdictFail, baseLimit
		res.Reason = what + " > " + baseDesc
	case useBase && baseLimit < r.Max:
		res.Verdict, res.Threshold = lifecycle.VerdictPass, baseLimit
		res.Reason = what + " <= " + baseDesc
	default:
		res.Verdict = lifecycle.VerdictPass
		res.Reason = what + " <= " + maxDesc + baseNote
	}
	return res
}

func evalRestarts(r Rule, w *Window, now time.Time, restarts []time.Time) Result {
	span := spec.DefaultAnalysisWindow
	if w != nil {
		span = w.span
	}
	start := now.Add(-span)
	n := 0
	for _, t := range restarts {
		if t.After(start) && !t.After(now) {
			n++
		}
	}
	res := Result{Value: float64(n), Threshold: r.Max}
	desc := fmt.Sprintf("%d restarts in %s", n, fmtSpan(span))
	if float64(n) > r.Max {
		res.Verdict = lifecycle.VerdictFail
		res.Reason = fmt.Sprintf("%s > max %s", desc, fmtCount(r.Max))
	} else {
		res.Verdict = lifecycle.VerdictPass
		res.Reason = fmt.Sprintf("%s <= max %s", desc, fmtCount(r.Max))
	}
	return res
}

func evalPromQL(r Rule, results map[string]PromQLResult) Result {
	res := Result{Threshold: r.Max}
	limits := "max " + fmtNum(r.Max)
	if r.HasMin {
		limits = "min " + fmtNum(r.Min) + ", " + limits
	}
	q, found := results[r.Name]
	switch {
	case !found:
		res.Verdict = lifecycle.VerdictInconclusive
		res.Reason = fmt.Sprintf("inconclusive: no query result yet (%s)", limits)
		return res
	case q.Err != nil:
		res.Verdict = lifecycle.VerdictInconclusive
		res.Reason = fmt.Sprintf("inconclusive: query failed (%s): %v", limits, q.Err)
		return res
	case !q.OK:
		res.Verdict = lifecycle.VerdictInconclusive
		res.Reason = fmt.Sprintf("inconclusive: query returned no sample (%s)", limits)
		return res
	case !isFinite(q.Value):
		res.Verdict = lifecycle.VerdictInconclusive
		res.Reason = fmt.Sprintf("inconclusive: query returned %s (%s)", fmtNum(q.Value), limits)
		return res
	}
	res.Value = q.Value
	desc := "query value " + fmtNum(q.Value)
	switch {
	case q.Value > r.Max:
		res.Verdict = lifecycle.VerdictFail
		res.Reason = desc + " > max " + fmtNum(r.Max)
	case r.HasMin && q.Value < r.Min:
		res.Verdict, res.Threshold = lifecycle.VerdictFail, r.Min
		res.Reason = desc + " < min " + fmtNum(r.Min)
	default:
		res.Verdict = lifecycle.VerdictPass
		res.Reason = desc + " within " + limits
	}
	return res
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func finite(v float64) float64 {
	if isFinite(v) {
		return v
	}
	return 0
}

// fmtRatio prints a ratio with three decimals, or three significant digits
// when it is small but not zero (so 0.0004 does not print as 0.000).
func fmtRatio(v float64) string {
	if v != 0 && math.Abs(v) < 0.01 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func fmtSeconds(v float64) string {
	if math.Abs(v) >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64) + "s"
	}
	return strconv.FormatFloat(v, 'g', 3, 64) + "s"
}

func fmtFactor(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e6 {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// fmtCount prints a count as an integer when it is one.
func fmtCount(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func fmtNum(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

func fmtQuantile(q float64) string {
	return "p" + strconv.FormatFloat(math.Round(q*100*1e6)/1e6, 'f', -1, 64)
}

func fmtSpan(d time.Duration) string {
	if d >= time.Second {
		d = d.Round(100 * time.Millisecond)
	} else {
		d = d.Round(time.Millisecond)
	}
	return d.String()
}
