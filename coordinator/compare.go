package coordinator

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/judge"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// comparison is the leader's canary-versus-baseline comparison of one
// rollout in flight whose spec sets analysis.compare; coordinator/judge
// does the statistics. It lives in the leader's memory only: a new leader
// starts it again from the windows that close after it took over; the
// windows that closed before count as looks taken (with nothing learnt), so
// no window is judged twice and the correction still covers every look.
type comparison struct {
	rollout string
	tr      *judge.Tracker
	broken  bool // the config could not be compiled (logged once)
	windows int  // looks planned
}

// compareConfig is the judge's config for a spec's analysis section: every
// error_ratio and latency rule, with compare's settings.
func compareConfig(a *v1.Analysis) (judge.Config, time.Duration) {
	c := a.GetCompare()
	cfg := judge.Config{Windows: int(c.GetWindows()), Alpha: c.GetAlpha()}
	if cfg.Windows == 0 {
		cfg.Windows = spec.DefaultCompareWindows
	}
	for _, r := range a.GetRules() {
		rule := judge.Rule{Name: r.GetName(), Kind: spec.RuleKind(r), MaxIncrease: c.GetMaxIncrease()}
		if rule.Name == "" {
			rule.Name = rule.Kind
		}
		switch rule.Kind {
		case spec.RuleErrorRatio:
			rule.MinCount = c.GetMinRequests()
		case spec.RuleLatency:
			rule.Quantile, rule.MinCount = r.GetLatency().GetQuantile(), c.GetMinSamples()
		default:
			continue
		}
		cfg.Rules = append(cfg.Rules, rule)
	}
	span := a.GetWindow().AsDuration()
	if a.GetWindow() == nil || span <= 0 {
		span = spec.DefaultAnalysisWindow
	}
	return cfg, span
}

// compare feeds the latest window summaries of r's hosts to its comparison
// and judges the windows closed at now. Hosts reporting r's to_version are
// the canary, hosts reporting its from_version the baseline. It returns the
// judge's reason when the comparison failed ("" otherwise) and when to look
// again (zero: no window pending). Each look is recorded as an event
// (comparison_judged) with the newest window's results. Rollbacks,
// removals and config rollouts (the same release on both sides) are not
// compared.
func (l *leader) compare(ctx context.Context, r *v1.Rollout, now time.Time) (string, time.Time) {
	name := r.GetService()
	a := r.GetSpec().GetAnalysis()
	if a.GetCompare() == nil || r.GetRollback() || r.GetRemove() || r.GetFromVersion() == "" || r.GetFromVersion() == r.GetToVersion() {
		delete(l.compared, name)
		return "", time.Time{}
	}
	log := l.c.log.With().Str("service", name).Str("rollout", r.GetId()).Logger()
	cmp := l.compared[name]
	if cmp == nil || cmp.rollout != r.GetId() {
		cfg, span := compareConfig(a)
		from := r.GetStartedAt().AsTime()
		if r.GetStartedAt() == nil {
			from = r.GetCreatedAt().AsTime()
		}
		tr, err := judge.NewTracker(cfg, span, from, now)
		cmp = &comparison{rollout: r.GetId(), tr: tr, broken: err != nil, windows: cfg.Windows}
		l.compared[name] = cmp
		if err != nil {
			log.Error().Err(err).Msg("analysis.compare disabled for this rollout")
		}
	}
	if cmp.broken {
		return "", time.Time{}
	}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			m := l.c.mirror.Report(h.GetHostId(), name).GetMetrics()
			if m == nil || m.GetEnd() == nil {
				continue
			}
			var canary bool
			switch m.GetVersion() {
			case r.GetToVersion():
				canary = true
			case r.GetFromVersion():
			default:
				continue
			}
			if _, err := cmp.tr.Add(h.GetHostId(), canary, m.GetEnd().AsTime(), summaryCounts(m), now); err != nil {
				log.Warn().Err(err).Str("host", h.GetHostId()).Msg("metric summary refused for the comparison")
			}
		}
	}
	j, looked, err := cmp.tr.Judge(now)
	if err != nil {
		log.Warn().Err(err).Msg("comparison window not judged")
	}
	if looked {
		ev := log.Info()
		if j.Verdict == judge.Fail {
			ev = log.Warn()
		}
		msg := lookMessage(j, cmp.tr.Looks(), cmp.windows)
		ev.Int("look", cmp.tr.Looks()).Str("verdict", j.Verdict.String()).Str("reason", msg).Msg("canary compared with baseline hosts")
		if err := l.c.store.PutEvents(ctx, event(r, name, rollout.EventComparisonJudged, "", msg, now)); err != nil {
			log.Warn().Err(err).Msg("comparison event not recorded")
		}
	}
	if j.Verdict == judge.Fail {
		return j.Reason(), time.Time{}
	}
	return "", cmp.tr.NextWake()
}

// summaryCounts is a report's metric summary as the judge's counts.
func summaryCounts(m *v1.MetricSummary) []judge.Counts {
	out := make([]judge.Counts, 0, len(m.GetRules()))
	for _, rc := range m.GetRules() {
		c := judge.Counts{Rule: rc.GetRule(), Requests: rc.GetRequests(), Errors: rc.GetErrors()}
		for _, b := range rc.GetBuckets() {
			c.Buckets = append(c.Buckets, judge.Bucket{UpperBound: b.GetUpperBound(), Count: b.GetCount()})
		}
		out = append(out, c)
	}
	return out
}

// lookMessage says what a look found: its number, the verdict so far and
// the newest window's results.
func lookMessage(j judge.Judgement, look, planned int) string {
	var why []string
	for _, r := range j.Results {
		if r.Window == look-1 {
			why = append(why, r.Verdict.String()+": "+r.Reason)
		}
	}
	return fmt.Sprintf("look %d of %d: %s; %s", look, planned, j.Verdict, strings.Join(why, "; "))
}
