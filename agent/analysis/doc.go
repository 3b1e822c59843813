// Package analysis is the agent's local quality gate: it decides from a
// service's own Prometheus metrics whether a new release is worse than the
// one before (more errors, slower, restarting), even while its health checks
// pass. It owns the rule semantics of the Analysis section of the service
// spec (proto/fleetwave/v1/types.proto) and nothing else: no scheduling, no
// lifecycle decisions.
//
// The package (Compile, Parse, Window, Evaluate) is pure: no goroutines, no
// clock, no network; time comes in as an argument (a test checks its
// imports). The I/O that fetches its inputs, fetch.Scrape and
// fetch.QueryPromQL, lives in package agent/analysis/fetch. Its verdicts
// are the lifecycle's type (a Result embeds a lifecycle.RuleResult), so
// they go to the machine as they are. Besides lifecycle it must not import
// any agent package, etcd or the coordinator.
//
// The caller's duties, in order:
//
//  1. cfg, err := Compile(spec.GetAnalysis()) once per spec; skip analysis
//     when len(cfg.Rules) == 0. Expand cfg.MetricsURL and each promql
//     Rule.Query for the host with spec.Expand.
//  2. When an assignment for a new release arrives, create w := NewWindow(cfg)
//     (the new spec's rules decide which metrics are kept), or carry over
//     the samples of a window already filled while the old release ran with
//     w = old.Retarget(cfg), and, every cfg.Interval until the switch,
//     w.Add(fetch.Scrape(...)) from the RUNNING (old) release's metrics
//     endpoint. A failed scrape adds nothing.
//  3. At the switch (the lifecycle's ActFreezeBaseline), base :=
//     w.Freeze(cfg.Rules, now): the baseline is
//     measured over the last cfg.Window of the old release's samples, and
//     the window is emptied so that the new release's increases never
//     include the old release's samples. With too little data before the
//     switch (a first install, a short fetch) a rule's baseline is unknown
//     and the rule compares against its absolute maximum only.
//  4. From the switch until cfg.Watch after the host became healthy, every
//     cfg.Interval: w.Add(fetch.Scrape(...)) from the new release; for each
//     promql rule, fetch.QueryPromQL into a PromQLResult keyed by rule name;
//     then results := Evaluate(cfg.Rules, w, base, now, restarts, promql),
//     where restarts are the times the supervisor restarted the new
//     release's process. Overall(results) is Fail when any rule failed
//     (feed it to the lifecycle with lifecycle.Analysis): revert at once,
//     with the failing Results' Reason. Inconclusive means too little data:
//     with cfg.FailInconclusive, fail at once; otherwise keep waiting, and
//     fail if still inconclusive at the healthy deadline.
//
// A Window is not safe for concurrent use; Evaluate only reads it.
package analysis
