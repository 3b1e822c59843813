// Package judge compares a canary with its baseline like a statistician:
// hosts on the new release against hosts still on the stable release, over
// the same windows of time, so that a traffic spike every host sees is not
// blamed on the release, and "1 error in 30 requests" is told apart from
// noise. It owns the statistics of `analysis.compare: baseline_hosts` and
// nothing else.
//
// It is pure: values in (a Config, per-window per-host summaries of counter
// and histogram bucket increases), a Judgement out. It must not import etcd,
// grpc, the coordinator or any I/O package, start goroutines or read the
// clock; it imports only the standard library (a test checks).
//
// # Tests
//
// Error ratio (error_ratio rules): each group's requests and errors are
// pooled over its hosts and compared with Fisher's exact test, one-sided
// (the canary's ratio is greater). It is exact for any counts, so sparse
// errors and a baseline with no error at all are judged correctly: 3 errors
// in 200 canary requests against 0 in 10,000 baseline requests is
// significant (p = 7.4e-6), 1 in 30 against 0 in 300 is not (p = 0.09).
//
// Latency (latency rules): the Mann-Whitney U test, one-sided (canary
// requests are slower), on the pooled histogram buckets. Observations in the
// same bucket are ties; the variance carries the tie correction and the
// statistic a continuity correction (normal approximation, which the
// minimum sample size makes sound). Hosts with different bucket layouts are
// compared at the bounds they all share, never by guessing within a bucket.
//
// Effect size: a significant difference fails only when the canary's value
// (error ratio, or the rule's quantile estimated from the buckets as
// Prometheus' histogram_quantile does) is more than MaxIncrease above the
// baseline's, so a tiny but significant difference on a busy service
// passes. A baseline of zero errors makes any canary error an infinite
// increase: it fails when significant.
//
// Minimum sample size: a window where a group has no host or fewer
// requests (observations) than the rule's MinCount is Inconclusive for that
// rule, and says which group lacks what.
//
// Multiple testing: every rule in every window is one test; the
// Holm-Bonferroni procedure keeps the family-wise error rate at Alpha over
// Rules x Windows tests, where Windows is the number of windows the
// comparison may look at in all (windows not yet seen count as p = 1). So
// looking again every window does not raise the A/A false positive rate.
//
// Host weight: before a rule's counts are pooled, a host weighing more
// than MaxHostWeight (4) times its group's median host (requests or
// observations; the lower median of the hosts with any) is scaled down to
// that, keeping its error ratio and its histogram's shape; the Tracker
// keeps its cumulative counts so before it halves them. One host, faulty
// or compromised, then weighs at most as much as 4 typical hosts of its
// group: it can no longer drown the rest and hide a bad canary by volume
// (what it claims within that weight still counts). Hosts serving alike
// are never scaled.
//
// Limits: a host's counts per window are at most MaxGroupCount (refused
// above); the Tracker halves a rule's cumulative counts, every host's, when
// a group's total passes it, so the tests stay exact and fast. A Tracker's
// memory is one cumulative summary per host and group, the pending windows'
// summaries and the earlier looks' results: it does not grow with looks.
//
// Assumptions: requests are independent, and hosts of a group are alike
// (pooling); a host that is itself an outlier on the stable release makes
// the baseline noisier, not the canary worse.
//
// A Verdict here is the coordinator's, not the agent's lifecycle.Verdict
// (the coordinator does not import agent packages); the values mean the
// same.
package judge
