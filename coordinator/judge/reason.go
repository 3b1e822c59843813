package judge

import (
	"fmt"
	"math"
	"strconv"
)

// describe says what a result compared: the rule, both groups' values and
// hosts, and, once tested, the test, its p-value and the effect size, e.g.
//
//	rule "latency": p99 latency 182 ms on 3 canary hosts vs 120 ms on 12 baseline hosts (Mann-Whitney p=0.0004, +52%)
func describe(rule Rule, r Result, errs [2]uint64) string {
	var s string
	switch rule.Kind {
	case KindErrorRatio:
		s = fmt.Sprintf("rule %q: error ratio %s (%d/%d) on %s vs %s (%d/%d) on %s",
			r.Rule, percent(r.CanaryValue), errs[1], r.CanaryN, hosts(r.CanaryHosts, "canary"),
			percent(r.BaselineValue), errs[0], r.BaselineN, hosts(r.BaselineHosts, "baseline"))
	case KindLatency:
		s = fmt.Sprintf("rule %q: %s latency %s on %s vs %s on %s",
			r.Rule, quantileName(rule.Quantile), seconds(r.CanaryValue, r.CanaryN), hosts(r.CanaryHosts, "canary"),
			seconds(r.BaselineValue, r.BaselineN), hosts(r.BaselineHosts, "baseline"))
	}
	if r.ScaledHosts > 0 {
		s += fmt.Sprintf(" (%s scaled down to %d× its group's median host)", hostCount(r.ScaledHosts), MaxHostWeight)
	}
	return s + fmt.Sprintf(" in window %d", r.Window+1)
}

func hostCount(n int) string {
	if n == 1 {
		return "1 host"
	}
	return fmt.Sprintf("%d hosts", n)
}

// reason completes a tested result's description with the test and the
// decision.
func reason(rule Rule, r Result, significant bool, alpha float64) string {
	s := fmt.Sprintf("%s (%s p=%s, %s; Holm-adjusted p=%s over %d tests)", r.Reason, r.Test, pvalue(r.P), signed(r.Change), pvalue(r.AdjustedP), r.Tests)
	switch {
	case r.Verdict == Fail:
		return s + " > allowed " + signed(rule.MaxIncrease)
	case significant:
		return s + ": significant, but within the allowed " + signed(rule.MaxIncrease)
	}
	return s + fmt.Sprintf(": not significant at %s", pvalue(alpha))
}

func hosts(n int, group string) string {
	if n == 1 {
		return "1 " + group + " host"
	}
	return fmt.Sprintf("%d %s hosts", n, group)
}

func quantileName(q float64) string {
	return "p" + strconv.FormatFloat(q*100, 'f', -1, 64)
}

func percent(v float64) string { return strconv.FormatFloat(v*100, 'f', 2, 64) + "%" }

// seconds writes a latency in ms (3 significant digits), "-" when there was
// no observation.
func seconds(v float64, n uint64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatFloat(v*1000, 'g', 3, 64) + " ms"
}

// signed writes a relative change as a signed whole percentage.
func signed(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+inf% (from zero)"
	case math.Round(v*100) >= 0:
		return fmt.Sprintf("+%.0f%%", math.Abs(math.Round(v*100)))
	}
	return fmt.Sprintf("%.0f%%", v*100)
}

// pvalue writes a p-value with 2 significant digits.
func pvalue(p float64) string {
	if p < 1e-6 {
		return strconv.FormatFloat(p, 'e', 1, 64)
	}
	return strconv.FormatFloat(p, 'g', 2, 64)
}
