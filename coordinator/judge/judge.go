package judge

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// Rule kinds; the names are those of the analysis rules.
const (
	KindErrorRatio = spec.RuleErrorRatio
	KindLatency    = spec.RuleLatency
)

// Defaults and limits (see Config); those of the spec are spec's.
const (
	DefaultAlpha       = spec.DefaultCompareAlpha
	DefaultMinRequests = spec.DefaultCompareMinRequests
	DefaultMinSamples  = spec.DefaultCompareMinSamples
	DefaultMaxIncrease = spec.DefaultCompareMaxIncrease
	MaxAlpha           = spec.MaxCompareAlpha
	MaxWindows         = spec.MaxCompareWindows
	MaxRules           = spec.MaxCompareRules
	MaxBuckets         = spec.MaxCompareBuckets
	MaxHostsPerWindow  = 100_000
	// MaxGroupCount bounds a group's requests (observations) in a window,
	// where the tests' floating point stays exact to many digits (a
	// billion requests per window is 33 million a second over 30 s).
	MaxGroupCount = 1_000_000_000
	// MaxHostWeight bounds one host's weight in its group: before a rule's
	// counts are pooled, a host with more than MaxHostWeight times the
	// requests (observations) of its group's median host (the lower
	// median of the hosts with any) has its counts scaled down to that,
	// keeping its ratio and its histogram's shape (capHost). One host,
	// faulty or compromised, claiming a billion requests can then weigh
	// as much as 4 typical hosts, not drown the rest of its group and hide
	// a bad canary. Hosts of a group serving alike (what pooling assumes)
	// are never scaled.
	MaxHostWeight   = 4
	testFisher      = "Fisher exact"
	testMannWhitney = "Mann-Whitney"
)

// Verdict is the outcome of one comparison, or of a whole judgement (the
// worst of its comparisons, see Judge).
type Verdict int

// Verdicts, from best to worst.
const (
	Pass Verdict = iota + 1
	// Inconclusive: too little data to compare (a group without hosts, or
	// fewer requests than the rule's minimum).
	Inconclusive
	Fail
)

func (v Verdict) String() string {
	switch v {
	case Pass:
		return "pass"
	case Inconclusive:
		return "inconclusive"
	case Fail:
		return "fail"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Config is what a comparison checks, with its defaults applied by
// Validate.
type Config struct {
	// Alpha is the family-wise error rate: the probability that an A/A
	// comparison (both groups on the same release) fails, over every rule
	// and every window (default DefaultAlpha, at most MaxAlpha).
	Alpha float64
	// Windows is how many windows the comparison may look at in all (for
	// example a canary's bake divided by the window length): the multiple
	// testing correction covers Rules x Windows tests, so looking again
	// every window does not raise the false positive rate (1..MaxWindows).
	Windows int
	Rules   []Rule
}

// Rule is one metric compared between the groups.
type Rule struct {
	Name string
	Kind string // KindErrorRatio or KindLatency
	// Quantile of a latency rule, in (0, 1): the effect size is this
	// quantile's relative increase.
	Quantile float64
	// MaxIncrease is the allowed relative increase of the canary's value
	// over the baseline's (0.2 = +20%): a significant difference smaller
	// than that passes (default DefaultMaxIncrease).
	MaxIncrease float64
	// MinCount is the fewest requests (error_ratio) or observations
	// (latency) each group needs in a window for it to be compared
	// (default DefaultMinRequests, DefaultMinSamples).
	MinCount uint64
}

// Validate checks c and applies its defaults. Errors name the field and
// its value.
func (c *Config) Validate() error {
	var errs []error
	switch {
	case c.Alpha == 0:
		c.Alpha = DefaultAlpha
	case !(c.Alpha > 0 && c.Alpha <= MaxAlpha):
		errs = append(errs, fmt.Errorf("alpha %g: must be in (0, %g]", c.Alpha, MaxAlpha))
	}
	if c.Windows < 1 || c.Windows > MaxWindows {
		errs = append(errs, fmt.Errorf("windows %d: must be 1 to %d", c.Windows, MaxWindows))
	}
	if len(c.Rules) == 0 || len(c.Rules) > MaxRules {
		errs = append(errs, fmt.Errorf("rules: %d given, must be 1 to %d", len(c.Rules), MaxRules))
	}
	seen := map[string]bool{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Name == "" {
			r.Name = r.Kind
		}
		if seen[r.Name] {
			errs = append(errs, fmt.Errorf("rules[%d].name %q: used twice", i, r.Name))
		}
		seen[r.Name] = true
		switch r.Kind {
		case KindErrorRatio:
			if r.MinCount == 0 {
				r.MinCount = DefaultMinRequests
			}
		case KindLatency:
			if !(r.Quantile > 0 && r.Quantile < 1) {
				errs = append(errs, fmt.Errorf("rules[%d].quantile %g: must be in (0, 1)", i, r.Quantile))
			}
			if r.MinCount == 0 {
				r.MinCount = DefaultMinSamples
			}
		default:
			errs = append(errs, fmt.Errorf("rules[%d].kind %q: must be %s or %s", i, r.Kind, KindErrorRatio, KindLatency))
		}
		switch {
		case r.MaxIncrease == 0:
			r.MaxIncrease = DefaultMaxIncrease
		case !(r.MaxIncrease > 0) || math.IsInf(r.MaxIncrease, 0):
			errs = append(errs, fmt.Errorf("rules[%d].max_increase %g: must be a positive number", i, r.MaxIncrease))
		}
	}
	return errors.Join(errs...)
}

// Window is what every host of both groups measured over the same span of
// time: the increases of its counters and histogram buckets.
type Window struct {
	Start, End time.Time
	Hosts      []HostSummary
	// scaled: by rule, the hosts the Tracker scaled down already
	// (capHosts), counted in Result.ScaledHosts.
	scaled map[string]map[string]bool
}

// HostSummary is one host's increases over a window, per rule (at most
// one HostSummary per host in a window; Counts of rules the Config does not
// have are ignored).
type HostSummary struct {
	Host string
	// Canary is true for a host on the new release, false for a baseline
	// host still on the stable release.
	Canary bool
	Counts []Counts
}

// Counts is one rule's increases on one host over a window.
type Counts struct {
	Rule string
	// Requests and Errors (error_ratio): the counter's increase over all
	// its series and over its error series; Errors <= Requests.
	Requests, Errors uint64
	// Buckets (latency): the histogram's cumulative bucket increases by
	// increasing upper bound, the last one +Inf.
	Buckets []Bucket
}

// Bucket is one cumulative histogram bucket: Count observations were at or
// under UpperBound.
type Bucket struct {
	UpperBound float64
	Count      uint64
}

// Result is one rule compared over one window.
type Result struct {
	Rule       string
	Window     int // index in the windows given to Judge
	Start, End time.Time
	Verdict    Verdict
	// Test is "Fisher exact" or "Mann-Whitney".
	Test string
	// Hosts and totals (requests or observations) of each group, after
	// the hosts weighing more than MaxHostWeight times their group's
	// median were scaled down (ScaledHosts of them, in both groups).
	CanaryHosts, BaselineHosts int
	ScaledHosts                int
	CanaryN, BaselineN         uint64
	// The groups' values: error ratios (0..1) or the quantile in seconds.
	CanaryValue, BaselineValue float64
	// Change is the effect size: CanaryValue's relative increase over
	// BaselineValue (+Inf when the baseline is 0 and the canary is not).
	Change float64
	// P is the test's one-sided p-value (the canary is worse); AdjustedP is
	// it after the Holm-Bonferroni correction over Tests tests. Both are 1
	// when the comparison is inconclusive.
	P, AdjustedP float64
	Tests        int
	// Reason says all of the above in plain words.
	Reason string
}

// Judgement is the outcome of a comparison so far.
type Judgement struct {
	// Verdict: Fail when any result failed; else Inconclusive when some
	// rule had no window with enough data; else Pass.
	Verdict Verdict
	Results []Result // per window, per rule in Config order
}

// Reason is the failing results' reasons (or, when none failed, the
// inconclusive ones'), joined by "; ".
func (j Judgement) Reason() string {
	var out []string
	for _, r := range j.Results {
		if r.Verdict == j.Verdict {
			out = append(out, r.Reason)
		}
	}
	return strings.Join(out, "; ")
}

// Judge compares the canary hosts with the baseline hosts over each window,
// for each rule of c (validated here, with its defaults; c is not changed),
// correcting for multiple testing over
// c.Rules x c.Windows tests. It is pure and deterministic. It fails on
// input that cannot be compared (more windows than c.Windows, a count that
// makes no sense); the error names the window, host and field.
func Judge(c Config, windows []Window) (Judgement, error) {
	c.Rules = slices.Clone(c.Rules)
	if err := c.Validate(); err != nil {
		return Judgement{}, fmt.Errorf("compare: %w", err)
	}
	if len(windows) > c.Windows {
		return Judgement{}, fmt.Errorf("%d windows given, more than the %d the comparison was planned (and corrected) for", len(windows), c.Windows)
	}
	var raw []Result
	for wi, w := range windows {
		rs, err := judgeWindow(c, wi, w)
		if err != nil {
			return Judgement{}, err
		}
		raw = append(raw, rs...)
	}
	return decide(c, raw), nil
}

// judgeWindow checks window wi and compares each rule of c (validated)
// over it: the results before the correction for multiple testing (see
// decide), which depend on this window alone.
func judgeWindow(c Config, wi int, w Window) ([]Result, error) {
	if len(w.Hosts) > MaxHostsPerWindow {
		return nil, fmt.Errorf("windows[%d]: %d hosts, more than %d", wi, len(w.Hosts), MaxHostsPerWindow)
	}
	seen := make(map[string]int, len(w.Hosts))
	for hi, h := range w.Hosts {
		if first, dup := seen[h.Host]; dup {
			return nil, fmt.Errorf("windows[%d].hosts[%d] (%s): the same host as hosts[%d]", wi, hi, h.Host, first)
		}
		seen[h.Host] = hi
		if err := checkHost(h.Counts); err != nil {
			return nil, fmt.Errorf("windows[%d].hosts[%d] (%s) %w", wi, hi, h.Host, err)
		}
	}
	results := make([]Result, 0, len(c.Rules))
	for _, rule := range c.Rules {
		r, err := compare(rule, wi, w)
		if err != nil {
			return nil, err
		}
		r.Tests = len(c.Rules) * c.Windows
		results = append(results, r)
	}
	return results, nil
}

// decide applies the Holm-Bonferroni correction over c.Rules x c.Windows
// tests to the results of judgeWindow (not changed) and gives the verdicts.
func decide(c Config, raw []Result) Judgement {
	results := slices.Clone(raw)
	var ps []float64
	var tested []int // results index of each p
	for i, r := range results {
		if r.Verdict != Inconclusive {
			ps = append(ps, r.P)
			tested = append(tested, i)
		}
	}
	reject, adjusted := holm(ps, len(c.Rules)*c.Windows, c.Alpha)
	for i, ri := range tested {
		r := &results[ri]
		r.AdjustedP = adjusted[i]
		r.Verdict = Pass
		if reject[i] && r.Change > ruleOf(c, r.Rule).MaxIncrease {
			r.Verdict = Fail
		}
		r.Reason = reason(ruleOf(c, r.Rule), *r, reject[i], c.Alpha)
	}
	j := Judgement{Verdict: Pass, Results: results}
	conclusive := map[string]bool{}
	for _, r := range results {
		if r.Verdict == Fail {
			j.Verdict = Fail
		}
		if r.Verdict != Inconclusive {
			conclusive[r.Rule] = true
		}
	}
	if j.Verdict != Fail {
		for _, rule := range c.Rules {
			if !conclusive[rule.Name] {
				j.Verdict = Inconclusive
			}
		}
	}
	return j
}

func ruleOf(c Config, name string) Rule {
	for _, r := range c.Rules {
		if r.Name == name {
			return r
		}
	}
	return Rule{}
}

// compare computes one rule's test over one window; the verdict is
// Inconclusive (with its reason) or left for Judge to set.
func compare(rule Rule, wi int, w Window) (Result, error) {
	r := Result{Rule: rule.Name, Window: wi, Start: w.Start, End: w.End, P: 1, AdjustedP: 1}
	var errs [2]uint64 // by group: 0 baseline, 1 canary
	var reqs [2]uint64 // requests or observations
	var hists [2][][]Bucket
	type hostCounts struct {
		g     int
		host  string
		ct    Counts
		where string
	}
	var hcs []hostCounts
	var weights [2][]uint64
	for hi, h := range w.Hosts {
		g := 0
		if h.Canary {
			g = 1
		}
		for _, ct := range h.Counts {
			if ct.Rule != rule.Name {
				continue
			}
			where := fmt.Sprintf("windows[%d].hosts[%d] (%s) rule %q", wi, hi, h.Host, rule.Name)
			switch rule.Kind {
			case KindErrorRatio:
				if ct.Errors > ct.Requests {
					return r, fmt.Errorf("%s: errors %d more than requests %d", where, ct.Errors, ct.Requests)
				}
			case KindLatency:
				if err := checkBuckets(ct.Buckets); err != nil {
					return r, fmt.Errorf("%s: %w", where, err)
				}
			}
			hcs = append(hcs, hostCounts{g: g, host: h.Host, ct: ct, where: where})
			weights[g] = append(weights[g], hostWeight(rule.Kind, ct))
		}
	}
	caps := [2]uint64{groupCap(weights[0]), groupCap(weights[1])}
	for _, hc := range hcs {
		g, ct, where := hc.g, hc.ct, hc.where
		capped, ok := capHost(rule.Kind, ct, caps[g])
		if ok {
			ct = capped
		}
		if ok || w.scaled[rule.Name][hc.host] {
			r.ScaledHosts++
		}
		switch rule.Kind {
		case KindErrorRatio:
			if ct.Requests > MaxGroupCount-reqs[g] {
				return r, fmt.Errorf("%s: requests %d: the group's total passes %d", where, ct.Requests, uint64(MaxGroupCount))
			}
			errs[g] += ct.Errors
			reqs[g] += ct.Requests
		case KindLatency:
			if len(ct.Buckets) == 0 {
				continue
			}
			total := ct.Buckets[len(ct.Buckets)-1].Count
			if total > MaxGroupCount-reqs[g] {
				return r, fmt.Errorf("%s: observations %d: the group's total passes %d", where, total, uint64(MaxGroupCount))
			}
			reqs[g] += total
			hists[g] = append(hists[g], ct.Buckets)
		}
		if g == 1 {
			r.CanaryHosts++
		} else {
			r.BaselineHosts++
		}
	}
	r.CanaryN, r.BaselineN = reqs[1], reqs[0]
	switch rule.Kind {
	case KindErrorRatio:
		r.Test = testFisher
		r.CanaryValue, r.BaselineValue = ratio(errs[1], reqs[1]), ratio(errs[0], reqs[0])
		r.Change = change(r.CanaryValue, r.BaselineValue)
		if why := tooFew(rule, r); why != "" {
			r.Verdict, r.Reason = Inconclusive, fmt.Sprintf("%s: inconclusive: %s", describe(rule, r, errs), why)
			return r, nil
		}
		r.P = fisherGreater(errs[1], reqs[1], errs[0], reqs[0])
		r.Reason = describe(rule, r, errs)
	case KindLatency:
		r.Test = testMannWhitney
		bounds := commonBounds(hists[0], hists[1])
		var counts [2][]uint64
		for g := range 2 {
			pooled := pool(bounds, hists[g])
			counts[g] = perBucket(pooled)
			if q, ok := quantile(rule.Quantile, bounds, pooled); ok {
				if g == 1 {
					r.CanaryValue = q
				} else {
					r.BaselineValue = q
				}
			}
		}
		r.Change = change(r.CanaryValue, r.BaselineValue)
		if why := tooFew(rule, r); why != "" {
			r.Verdict, r.Reason = Inconclusive, fmt.Sprintf("%s: inconclusive: %s", describe(rule, r, errs), why)
			return r, nil
		}
		r.P = mannWhitneyGreater(counts[1], counts[0]).P
		r.Reason = describe(rule, r, errs)
	}
	return r, nil
}

// hostWeight is a host's requests (error_ratio) or observations (latency)
// for a rule.
func hostWeight(kind string, ct Counts) uint64 {
	if kind == KindLatency {
		if n := len(ct.Buckets); n > 0 {
			return ct.Buckets[n-1].Count
		}
		return 0
	}
	return ct.Requests
}

// groupCap is the most a host of a group weighs (MaxHostWeight): its
// hosts' weights given, MaxHostWeight times the lower median of those
// above zero; no bound when none is.
func groupCap(weights []uint64) uint64 {
	nz := make([]uint64, 0, len(weights))
	for _, w := range weights {
		if w > 0 {
			nz = append(nz, w)
		}
	}
	if len(nz) == 0 {
		return math.MaxUint64
	}
	slices.Sort(nz)
	return nz[(len(nz)-1)/2] * MaxHostWeight
}

// capHost is ct scaled down to weigh limit, and true, when it weighs more
// (hostWeight): requests become limit and errors keep their ratio; a
// histogram's cumulative counts are scaled alike (rounded to the nearest,
// which keeps them non-decreasing) and end at limit.
func capHost(kind string, ct Counts, limit uint64) (Counts, bool) {
	w := hostWeight(kind, ct)
	if w <= limit {
		return ct, false
	}
	f := float64(limit) / float64(w)
	scale := func(n uint64) uint64 { return min(limit, uint64(math.Round(float64(n)*f))) }
	out := Counts{Rule: ct.Rule}
	switch kind {
	case KindErrorRatio:
		out.Requests, out.Errors = limit, scale(ct.Errors)
	case KindLatency:
		out.Buckets = make([]Bucket, len(ct.Buckets))
		for i, b := range ct.Buckets {
			out.Buckets[i] = Bucket{UpperBound: b.UpperBound, Count: scale(b.Count)}
		}
		out.Buckets[len(out.Buckets)-1].Count = limit
	}
	return out, true
}

// capHosts scales down, for each rule, every host of sums (by key) that
// weighs more than its group allows (groupCap, capHost), as compare does
// to a window's: the Tracker keeps its cumulative counts so, before it
// halves them (halveOver), so that one host's claims cannot make it halve
// every other host's evidence, look after look. Scaling is idempotent:
// hosts scaled stay at or above their group's median. It returns the
// hosts (keys) it scaled, by rule.
func capHosts(sums map[string]HostSummary, keys []string, rules []Rule) map[string]map[string]bool {
	scaled := map[string]map[string]bool{}
	for _, rule := range rules {
		var weights [2][]uint64
		for _, k := range keys {
			g := 0
			if sums[k].Canary {
				g = 1
			}
			for _, c := range sums[k].Counts {
				if c.Rule == rule.Name {
					weights[g] = append(weights[g], hostWeight(rule.Kind, c))
				}
			}
		}
		caps := [2]uint64{groupCap(weights[0]), groupCap(weights[1])}
		for _, k := range keys {
			h := sums[k]
			g := 0
			if h.Canary {
				g = 1
			}
			for i, c := range h.Counts {
				if c.Rule != rule.Name {
					continue
				}
				if capped, ok := capHost(rule.Kind, c, caps[g]); ok {
					h.Counts = slices.Clone(h.Counts)
					h.Counts[i] = capped
					sums[k] = h
					if scaled[rule.Name] == nil {
						scaled[rule.Name] = map[string]bool{}
					}
					scaled[rule.Name][k] = true
				}
			}
		}
	}
	return scaled
}

func tooFew(rule Rule, r Result) string {
	what := "requests"
	if rule.Kind == KindLatency {
		what = "observations"
	}
	switch {
	case r.CanaryHosts == 0:
		return "no canary host reported"
	case r.BaselineHosts == 0:
		return "no baseline host reported"
	case r.CanaryN < rule.MinCount:
		return fmt.Sprintf("%d canary %s, fewer than the %d needed", r.CanaryN, what, rule.MinCount)
	case r.BaselineN < rule.MinCount:
		return fmt.Sprintf("%d baseline %s, fewer than the %d needed", r.BaselineN, what, rule.MinCount)
	}
	return ""
}

func ratio(e, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return float64(e) / float64(n)
}

// change is the relative increase of v over base.
func change(v, base float64) float64 {
	switch {
	case base > 0:
		return v/base - 1
	case v > 0:
		return math.Inf(1)
	}
	return 0
}

// checkHost checks one host's counts of a window, whatever the rules'
// kinds: at most MaxRules rules, each once, at most MaxGroupCount requests
// (observations), errors not above requests, well-formed buckets. The error starts with the rule's name.
func checkHost(counts []Counts) error {
	if len(counts) > MaxRules {
		return fmt.Errorf("counts: %d rules, more than %d", len(counts), MaxRules)
	}
	for i, c := range counts {
		for _, prev := range counts[:i] {
			if prev.Rule == c.Rule {
				return fmt.Errorf("rule %q: given twice", c.Rule)
			}
		}
		if c.Requests > MaxGroupCount {
			return fmt.Errorf("rule %q: requests %d: more than %d", c.Rule, c.Requests, uint64(MaxGroupCount))
		}
		if n := len(c.Buckets); n > 0 && c.Buckets[n-1].Count > MaxGroupCount {
			return fmt.Errorf("rule %q: observations %d: more than %d", c.Rule, c.Buckets[n-1].Count, uint64(MaxGroupCount))
		}
		if c.Errors > c.Requests {
			return fmt.Errorf("rule %q: errors %d more than requests %d", c.Rule, c.Errors, c.Requests)
		}
		if err := checkBuckets(c.Buckets); err != nil {
			return fmt.Errorf("rule %q: %w", c.Rule, err)
		}
	}
	return nil
}

// checkBuckets checks a host's cumulative buckets: at most MaxBuckets,
// increasing finite upper bounds, the last +Inf, counts not decreasing. No
// bucket at all is allowed (nothing observed).
func checkBuckets(bs []Bucket) error {
	if len(bs) > MaxBuckets {
		return fmt.Errorf("%d buckets, more than %d", len(bs), MaxBuckets)
	}
	for i, b := range bs {
		last := i == len(bs)-1
		switch {
		case math.IsNaN(b.UpperBound) || (math.IsInf(b.UpperBound, 0) && !(last && b.UpperBound > 0)):
			return fmt.Errorf("buckets[%d].upper_bound %g: must be finite (only the last is +Inf)", i, b.UpperBound)
		case last && !math.IsInf(b.UpperBound, 1):
			return fmt.Errorf("buckets[%d].upper_bound %g: the last bucket must be +Inf", i, b.UpperBound)
		case i > 0 && !(b.UpperBound > bs[i-1].UpperBound):
			return fmt.Errorf("buckets[%d].upper_bound %g: not above the previous %g", i, b.UpperBound, bs[i-1].UpperBound)
		case i > 0 && b.Count < bs[i-1].Count:
			return fmt.Errorf("buckets[%d].count %d: below the previous cumulative count %d", i, b.Count, bs[i-1].Count)
		}
	}
	return nil
}

// commonBounds is the upper bounds every histogram given has (always
// including +Inf), increasing: with different bucket layouts, observations
// can only be ordered at the bounds all hosts share, so the comparison is
// made at that coarser granularity, never by guessing within a bucket.
func commonBounds(groups ...[][]Bucket) []float64 {
	var common map[float64]bool
	for _, g := range groups {
		for _, h := range g {
			has := make(map[float64]bool, len(h))
			for _, b := range h {
				if common == nil || common[b.UpperBound] {
					has[b.UpperBound] = true
				}
			}
			common = has
		}
	}
	out := []float64{math.Inf(1)}
	for ub := range common {
		if !math.IsInf(ub, 1) {
			out = append(out, ub)
		}
	}
	slices.Sort(out)
	return out
}

// pool sums the hosts' cumulative counts at bounds.
func pool(bounds []float64, hosts [][]Bucket) []uint64 {
	out := make([]uint64, len(bounds))
	for _, h := range hosts {
		j := 0
		for i, ub := range bounds {
			for j < len(h) && h[j].UpperBound < ub {
				j++
			}
			if j < len(h) && h[j].UpperBound == ub {
				out[i] += h[j].Count
			}
		}
	}
	return out
}

// perBucket turns cumulative counts into counts per bucket.
func perBucket(cum []uint64) []uint64 {
	out := make([]uint64, len(cum))
	var prev uint64
	for i, c := range cum {
		out[i] = c - prev
		prev = c
	}
	return out
}

// quantile estimates quantile q from cumulative counts at bounds (the last
// +Inf) as Prometheus' histogram_quantile does: linear interpolation in the
// bucket holding the rank, from 0 for the first bucket, and the largest
// finite bound when the rank is in the +Inf bucket.
func quantile(q float64, bounds []float64, cum []uint64) (float64, bool) {
	n := len(bounds)
	if n < 2 || cum[n-1] == 0 {
		return 0, false
	}
	rank := q * float64(cum[n-1])
	b := 0
	for b < n-1 && float64(cum[b]) < rank {
		b++
	}
	if b == n-1 {
		return bounds[n-2], true
	}
	start, count, below := 0.0, float64(cum[b]), 0.0
	if b > 0 {
		start, below = bounds[b-1], float64(cum[b-1])
	}
	if count-below <= 0 {
		return bounds[b], true
	}
	return start + (bounds[b]-start)*(rank-below)/(count-below), true
}
