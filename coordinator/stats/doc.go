// Package stats computes Fleetwave's lead time and DORA figures (the answer
// to OperatorService.GetStats) from the history the coordinator keeps in
// etcd: releases and rollouts, per service.
//
// It owns the definitions below and nothing else. It is pure: values in, a
// *v1.GetStatsResponse out; the time "now" is an argument. It must not import
// etcd, grpc, the coordinator or any I/O package, start goroutines or read
// the clock; it imports only the standard library and the generated types.
//
// # Definitions
//
// Window. The figures cover the window [now-since, now] (since <= 0 means
// DefaultSince, 30 days). A rollout belongs to the window when it ended
// (finished_at) inside it, both ends included. Rollouts still running are
// not counted.
//
// What is counted. Only deployments: rollouts that are not rollbacks
// (rollout.rollback unset) or removals (rollout.remove, `service delete`)
// and whose plan has at least one host (a rollout that selected no host
// deployed nothing). Rollback rollouts are never counted as deployments,
// successes or failures; they only mark what they undid and end failures
// (time to restore). Config rollouts (the stable release rolled out again
// with a new spec: from_version == to_version, spec revisions differ) are
// deployments like any other and are also counted in config_rollouts; they
// have no commit, so they add no lead time, commit_to_release or
// release_to_start (their rollout and bake times count).
//
// Results (the counts; every counted rollout has exactly one):
//   - rolled_back: a deployment undone by a rollback, in either of two ways:
//     it was still running when a rollback superseded it (the rollout that
//     follows it in the service's history is a rollback), or it succeeded,
//     was the newest succeeded rollout of the service when a rollback started
//     (rollback.from_version == its to_version), and the rollback went to a
//     different release. Whatever became of the rollback itself.
//   - succeeded: state SUCCEEDED and not rolled back.
//   - failed: state FAILED (the engine or a person stopped it; its hosts went
//     back to last good).
//   - superseded: state SUPERSEDED by a newer release (not by a rollback).
//   - rollouts = succeeded + failed + rolled_back + superseded.
//
// History order is by created_at (then id).
//
// Deployment frequency. deploys_per_day = completed deployments / days.
// Completed deployments are the SUCCEEDED ones, including those later rolled
// back (they reached production; their failure shows in the change failure
// rate). days = min(since, max(now - first, 24h)) / 24h, where first is the
// created_at of the service's earliest rollout of any kind (the fleet's
// earliest for the fleet): a service younger than the window is not diluted
// by days before it existed, and a very young one is measured over at least
// a day. With no rollout at all in the history the figure is 0 and its band
// is "".
//
// Lead time for changes, per completed deployment in the window whose
// release records a commit time: commit_time -> live, where live is the
// moment the last host became healthy on the release (the latest host
// done_at; finished_at when no host records one). Its breakdown:
//   - commit_to_release (CI): commit_time -> release.created_at; sample:
//     completed deployments whose release has both times.
//   - release_to_start (queue and approval): release.created_at ->
//     rollout.started_at; includes waiting behind another rollout (queue
//     mode) and for approval (manual mode); sample: completed deployments
//     whose release is known.
//   - rollout: started_at -> live; sample: every completed deployment.
//     Waits for per-wave approval (approve_each_wave) are part of it.
//   - bake: per rollout, the sum of its waves' bake intervals inside
//     [started_at, live]; one value (possibly 0) per rollout of the rollout
//     sample. A wave's bake starts when its hosts were all done (bake_until
//     minus the policy's bake; the wave's latest host done_at when the
//     policy does not say) and ends at the wave's done_at (or the rollout's
//     finished_at). The last wave's bake comes after every host is live, so
//     it is not part of lead time and not counted.
//
// A negative span (clock skew between CI and the coordinator) counts as 0,
// so parts need not add up exactly; medians never add up anyway.
//
// Change failure rate = (failed + rolled_back) / (succeeded + failed +
// rolled_back); superseded rollouts are left out (they were neither a
// success nor a failure). 0 with band "" when the denominator is 0.
//
// Time to restore, per failed or rolled back deployment in the window:
//   - failed: from failed_at (finished_at if unset) to restored_at (every
//     host that moved ran a good release again); if restored_at is unset, to
//     the finished_at of the next SUCCEEDED rollout of the service (a
//     rollback or a fix forward) that finished after the failure.
//   - rolled back: from the rollback's created_at (when the failure was
//     acted on) to the finished_at of the first SUCCEEDED rollout from the
//     rollback on (normally the rollback itself).
//
// A failure with no such end is not restored: it is left out of the sample,
// so failed + rolled_back - time_to_restore.count is the number of failures
// not (yet) restored.
//
// Percentiles (median, p90) are nearest-rank on the sorted sample: the
// ceil(p/100 * n)-th smallest value.
//
// The fleet aggregates every service: counts add up, samples are pooled,
// deploys_per_day divides all completed deployments by the fleet's days.
//
// # DORA bands
//
// The elite line is the one the issue quotes, from the 2021 Accelerate State
// of DevOps report (lead time < 1 h, deploys on demand, change failure rate
// <= 15%, restore < 1 h). The other lines follow the reports' high, medium
// and low clusters, with the gaps between the published ranges closed so
// every value has a band:
//
//	figure                        elite       high         medium        low
//	lead time (median)            < 1 h       < 1 week     < 30 days     otherwise
//	deployment frequency          >= 1/day    >= 1/week    >= 1/30 days  otherwise
//	change failure rate           <= 15%      <= 30%       <= 45%        otherwise
//	time to restore (median)      < 1 h       < 1 day      < 1 week      otherwise
//
// "On demand" cannot be seen in a count, so at least one deployment a day is
// elite. A figure with no data has band "". The overall band is the worst of
// the four figures' bands that are set, "" when none is.
//
// Events in ServiceHistory are not used by these definitions (every time
// they need is on the rollouts and releases); callers may leave them nil.
package stats
