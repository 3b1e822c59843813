package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetwave/fleetwave/agent/analysis"
	"github.com/fleetwave/fleetwave/agent/analysis/fetch"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/probe"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// analyser is the run loop's analysis of one service: the caller's side of
// package analysis (see its doc.go). It measures the running process with
// the rules of one spec: the target's while an install is before its
// switch, else the running release's. Only the loop touches it; its scraper
// goroutine only fetches inputs and sends them to the loop (sampleEv).
//
// The window is fed every interval while a release runs, also in steady
// state, so that the old release's baseline is ready at the next switch. At
// that switch the machine says when to freeze the baseline
// (ActFreezeBaseline, just before it stops the old release); when a process
// starts, the window is emptied and measures that process only. A process started without such a switch (a first install, a
// revert, a recovery) has no baseline: its rules compare against their
// maximum only.
type analyser struct {
	asg     *v1.Assignment    // the assignment whose spec it is compiled from
	cfg     analysis.Config   // compiled, with URLs as written
	metrics string            // expanded metrics URL ("" = no rule reads it)
	queries map[string]string // promql rule name -> expanded query
	prom    string            // prometheus_url

	win    *analysis.Window
	since  time.Time // samples taken before this are of another process
	base   analysis.Baseline
	frozen *analysis.Baseline // frozen at the switch, for the next start

	epoch uint64      // process measured (its ActStart's Epoch; 0 = none)
	exits []time.Time // its exits, for restarts rules

	promql    map[string]analysis.PromQLResult
	scrapeErr error
	// summarized is the end of the last window summarized for the
	// coordinator's comparison (analysis.compare).
	summarized time.Time
	verdict    lifecycle.Verdict // last verdict fed, for logging changes (0 = none)

	// judging is set while the machine uses this analyser's verdicts: only
	// then are the promql queries run (they need no baseline).
	judging *atomic.Bool

	id   uint64 // tags its scraper's samples
	stop context.CancelFunc
}

// sampleEv is one round of an analyser's scraper.
type sampleEv struct {
	svc    string
	id     uint64
	sample analysis.Sample
	err    error // the scrape failed (sample is empty)
	promql map[string]analysis.PromQLResult
}

// compileAnalysis compiles an assignment's analysis section for this host;
// ok is false when it has no rules. Errors name the field.
func compileAnalysis(asg *v1.Assignment, hostID string, labels map[string]string) (cfg analysis.Config, metrics string, queries map[string]string, ok bool, err error) {
	cfg, err = analysis.Compile(asg.GetSpec().GetAnalysis())
	if err != nil {
		return cfg, "", nil, false, fmt.Errorf("spec.%w", err)
	}
	if len(cfg.Rules) == 0 {
		return cfg, "", nil, false, nil
	}
	if cfg.NeedsMetrics() {
		if cfg.MetricsURL == "" {
			return cfg, "", nil, false, fmt.Errorf("spec.analysis.metrics_url: required by the error_ratio and latency rules")
		}
		if metrics, err = spec.Expand(cfg.MetricsURL, hostID, labels); err != nil {
			return cfg, "", nil, false, fmt.Errorf("spec.analysis.metrics_url: %v", err)
		}
	}
	for i, r := range cfg.Rules {
		if r.Kind != analysis.KindPromQL {
			continue
		}
		if cfg.PrometheusURL == "" {
			return cfg, "", nil, false, fmt.Errorf("spec.analysis.prometheus_url: required by promql rule %q", r.Name)
		}
		q, err := spec.Expand(r.Query, hostID, labels)
		if err != nil {
			return cfg, "", nil, false, fmt.Errorf("spec.analysis.rules[%d].promql.query: %v", i, err)
		}
		if queries == nil {
			queries = map[string]string{}
		}
		queries[r.Name] = q
	}
	return cfg, metrics, queries, true, nil
}

// analysisTarget is the assignment whose rules the service's window uses
// now: the target's from the start of an install until its switch, else the
// release `current` points at.
func analysisTarget(m *lifecycle.Machine) *v1.Assignment {
	switch m.Phase() {
	case v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING, v1.Phase_PHASE_SWITCHING:
		return m.Target()
	}
	return m.Current()
}

// syncAnalysis makes the service's analyser follow analysisTarget: a new
// spec carries the samples and the process's state over (Window.Retarget).
func (a *agent) syncAnalysis(s *service) {
	want := analysisTarget(s.m)
	old := s.ana
	if old != nil && old.asg == want {
		return
	}
	if want == nil {
		a.stopAnalysis(s)
		return
	}
	cfg, metrics, queries, ok, err := compileAnalysis(want, a.cfg.HostID, a.cfg.Labels)
	if err != nil {
		// Validated on arrival; only labels changed since (a restart) get here.
		a.log.Error().Str("service", s.name).Str("version", lifecycle.Version(want)).Err(err).Msg("analysis disabled")
	}
	if !ok {
		a.stopAnalysis(s)
		return
	}
	an := &analyser{asg: want, cfg: cfg, metrics: metrics, queries: queries, prom: cfg.PrometheusURL, judging: new(atomic.Bool)}
	if old != nil {
		an.win = old.win.Retarget(cfg)
		an.since, an.base, an.frozen = old.since, old.base, old.frozen
		an.epoch, an.exits, an.promql = old.epoch, old.exits, old.promql
		an.verdict, an.summarized = old.verdict, old.summarized
	} else {
		an.win = analysis.NewWindow(cfg)
	}
	a.stopAnalysis(s)
	a.anaSeq++
	an.id = a.anaSeq
	s.ana = an
	a.startScraper(s.name, an)
}

// updateJudging tells the scraper whether the machine uses the verdicts now.
func (a *agent) updateJudging(s *service) {
	if an := s.ana; an != nil {
		epoch, ok := s.m.AnalysisEpoch()
		an.judging.Store(ok && epoch == an.epoch)
	}
}

func (a *agent) stopAnalysis(s *service) {
	if s.ana != nil {
		s.ana.stop()
		s.ana = nil
		a.rep.setMetrics(s.name, nil)
	}
}

// summarize sends, once per clock-aligned window of the analysis window,
// the metric rules' increases over the last window for the coordinator's
// comparison (analysis.compare), labelled with the release that ran. A
// window that ended before the measured process started is skipped: its
// samples are of another process.
func (a *agent) summarize(s *service, an *analyser, at time.Time) {
	start, end := analysis.SummaryWindow(at, an.cfg.Window)
	if !end.After(an.summarized) || end.Before(an.since) {
		return
	}
	an.summarized = end
	if m := analysis.Summarize(an.cfg.Rules, an.win, at, start, end, lifecycle.Version(s.m.Current())); m != nil {
		a.rep.setMetrics(s.name, m)
	}
}

// freezeBaseline carries out ActFreezeBaseline (the old release is about to
// be stopped for the install of act.Version): the baseline is what the
// window measured of it, with the new release's rules.
func (a *agent) freezeBaseline(s *service, act lifecycle.Action) {
	an := s.ana
	if an == nil || an.frozen != nil {
		return
	}
	if lifecycle.Version(an.asg) != act.Version {
		// The analyser follows the release `current` points at, which the
		// machine switched to act.Version just before.
		a.log.Warn().Str("service", s.name).Str("version", act.Version).Str("analyser", lifecycle.Version(an.asg)).
			Msg("no baseline frozen: the analyser measures another release's rules")
		return
	}
	b := an.win.Freeze(an.cfg.Rules, time.Now())
	an.frozen = &b
	var known []string
	for _, r := range an.cfg.Rules {
		if v, ok := b.Value(r.Name); ok {
			known = append(known, fmt.Sprintf("rule %q: %g", r.Name, v))
		}
	}
	a.log.Info().Str("service", s.name).Str("version", lifecycle.Version(an.asg)).
		Strs("reason", known).Msg("analysis baseline frozen from the old release, for this version")
}

// analysisStart is called when a process starts: the window measures it
// alone from now on, against the baseline frozen at the switch, if any.
func (a *agent) analysisStart(s *service, act lifecycle.Action) {
	an := s.ana
	if an == nil {
		return
	}
	an.win.Reset()
	an.since = time.Now()
	an.base = analysis.Baseline{}
	if an.frozen != nil && lifecycle.Version(an.asg) == act.Version {
		an.base = *an.frozen
	}
	an.frozen = nil
	an.epoch, an.exits, an.promql, an.verdict = act.Epoch, nil, nil, 0
}

// analysisExit records an exit of the measured process (restarts rules).
func (a *agent) analysisExit(s *service, epoch uint64, at time.Time) {
	an := s.ana
	if an == nil || epoch != an.epoch {
		return
	}
	start := at.Add(-an.cfg.Window)
	kept := an.exits[:0]
	for _, t := range an.exits {
		if t.After(start) {
			kept = append(kept, t)
		}
	}
	an.exits = append(kept, at)
}

// onSample takes one scraper round and, while the machine analyses the
// measured process, evaluates the rules and feeds the verdict.
func (a *agent) onSample(ev sampleEv) {
	s := a.services[ev.svc]
	if s == nil || s.ana == nil || s.ana.id != ev.id {
		return // an analyser since replaced
	}
	an := s.ana
	an.scrapeErr = ev.err
	if ev.err == nil && !ev.sample.At.Before(an.since) {
		// A sample over analysis.MaxSamplePoints is refused like a failed
		// scrape (the rules' reasons name it).
		if err := an.win.Add(ev.sample); errors.Is(err, analysis.ErrTooManyPoints) {
			an.scrapeErr = err
		} else if an.cfg.Compare {
			a.summarize(s, an, ev.sample.At)
		}
	}
	if ev.promql != nil {
		an.promql = ev.promql
	}
	epoch, ok := s.m.AnalysisEpoch()
	if !ok || epoch != an.epoch {
		return
	}
	now := time.Now()
	results := analysis.Evaluate(an.cfg.Rules, an.win, an.base, now, an.exits, an.promql)
	a.metrics.analysis(s.name, results)
	verdict := analysis.Overall(results)
	rules := make([]lifecycle.RuleResult, len(results))
	for i, r := range results {
		rules[i] = r.RuleResult
		if r.Verdict == lifecycle.VerdictInconclusive && an.scrapeErr != nil && (an.cfg.Rules[i].Kind == analysis.KindErrorRatio || an.cfg.Rules[i].Kind == analysis.KindLatency) {
			rules[i].Reason += fmt.Sprintf(" (last scrape: %v)", an.scrapeErr)
		}
	}
	if verdict != an.verdict {
		an.verdict = verdict
		ev := a.log.Info()
		if verdict == lifecycle.VerdictFail {
			ev = a.log.Warn()
		}
		var why []string
		for _, r := range rules {
			if r.Verdict != lifecycle.VerdictPass || verdict == lifecycle.VerdictPass {
				why = append(why, r.Reason)
			}
		}
		ev.Str("service", s.name).Str("version", lifecycle.Version(an.asg)).Int64("generation", s.m.Generation()).
			Strs("reason", why).Msg("analysis " + verdict.String())
	}
	a.step(s, lifecycle.Analysis(epoch, now, verdict, rules...))
}

// startScraper scrapes an's metrics URL every interval and, while the
// machine judges the release, runs its promql queries, sending each round to
// the loop, until an.stop.
func (a *agent) startScraper(name string, an *analyser) {
	ctx, cancel := context.WithCancel(a.ctx)
	an.stop = cancel
	id, metrics, prom, queries, interval, judging := an.id, an.metrics, an.prom, an.queries, an.cfg.Interval, an.judging
	client := a.httpClient
	a.background(func() {
		defer cancel()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			ev := sampleEv{svc: name, id: id}
			if metrics != "" {
				sctx, c := context.WithTimeout(ctx, interval)
				ev.sample, ev.err = fetch.Scrape(sctx, client, metrics, time.Now())
				c()
			}
			if len(queries) > 0 && judging.Load() {
				// All queries at once under one deadline, so a round lasts at
				// most about two intervals however many rules there are (a
				// longer round would make the metrics sample stale).
				ev.promql = make(map[string]analysis.PromQLResult, len(queries))
				qctx, c := context.WithTimeout(ctx, interval)
				var mu sync.Mutex
				var wg sync.WaitGroup
				for rule, q := range queries {
					wg.Go(func() {
						v, ok, err := fetch.QueryPromQL(qctx, client, prom, q)
						mu.Lock()
						ev.promql[rule] = analysis.PromQLResult{Value: v, OK: ok, Err: err}
						mu.Unlock()
					})
				}
				wg.Wait()
				c()
			}
			if ctx.Err() != nil || !a.send(ev) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
}

// newAnalysisClient is the HTTP client of scrapes and queries, with an
// overall timeout as a backstop to the per-request contexts. It follows
// redirects only on a request's own scheme, host and port (the service's
// metrics endpoint answers it: probe.SameOriginRedirects).
func newAnalysisClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxResponseHeaderBytes = probe.MaxResponseHeaderBytes
	return &http.Client{Transport: tr, Timeout: time.Minute, CheckRedirect: probe.SameOriginRedirects}
}
