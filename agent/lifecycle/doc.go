// Package lifecycle is the agent's pure per-service state machine: it decides
// how one service moves from its current release to an assigned one (fetch,
// verify, stage, switch, start, check) and when it reverts to the last good
// release. It owns those decisions and nothing else.
//
// Quality gates. A release is HEALTHY when its health checks have passed
// continuously for min_healthy_time and, when its spec has analysis rules,
// the latest analysis verdict (InputAnalysis) is Pass. An analysis Fail
// reverts at once. Inconclusive waits; with analysis.inconclusive "fail" an
// Inconclusive verdict once the checks have passed for min_healthy_time
// reverts at once; still not Pass at the healthy deadline reverts. After
// HEALTHY the release is watched for analysis.watch (DefaultWatch, also
// without rules): the checks keep running, and an analysis Fail, health
// checks failing continuously for WatchFailAfter, or a crash loop
// (CrashLoopExits exits since the process started) reverts it at once to
// the release that was last good before it, reported REVERTED at the same
// generation. The report stays HEALTHY while watching; Inconclusive does
// nothing then. A new assignment (other than the running release at a newer
// generation) ends the watch; so does the end of the window, after which the
// release is only supervised. Reverts and recoveries re-check the last good
// release with its health checks only (no analysis), and are not watched.
// A revert (like a recovery) whose switch back fails ends FAILED at once,
// starts nothing, and reports as current what the link says.
//
// Agent restarts. Services outlive the agent, so Restore takes, besides the
// snapshot, what the caller found running (Running: the release and epoch a
// verified PID record names) and decides: the process the snapshot expects
// is adopted (ActAdopt; supervised, checked and watched again, never
// restarted), any other is stopped (ActStop) before anything starts. A
// settled release keeps its phase (a HEALTHY one still in its watch is
// watched for the rest of it); an install resumes the step it was in (at
// the fetch before its switch, where a staged release is only re-verified;
// after it, the target is adopted or started and checked with a fresh
// checking period); a revert resumes. An agent restart is never a
// release's failure: only the release's own behaviour reverts it. When
// nothing adoptable runs (a reboot, a process that died while no agent
// watched it), a settled service or an install before its switch recovers:
// the last good release is switched back to, restarted and re-checked.
//
// It is shaped like etcd's raft package: a Machine is a plain value that is
// not safe for concurrent use. The caller feeds it Inputs (each carrying the
// time it happened) through Step and carries out the returned Actions. The
// package does no I/O, starts no goroutines, never reads the clock and uses
// no randomness. It must not import anything but the generated protobuf
// types, the standard library and internal/specdiff (the one, pure rule for
// which spec changes affect hosts: a config rollout's assignment of the
// running release with such a spec is an install of it, see spec.go). Its behaviour is written down as scenario
// traces in testdata/ (TestTraces: inputs, the actions they return, the
// phase after each; -rewrite updates them) and checked by a seeded
// simulation against invariants (TestSimulation; -seed N replays one seed).
//
// The caller's duties, in order, for every slice of Actions returned by Step
// or Restore:
//
//  0. Before Restore, find what runs of the service (a process proven by its
//     PID record) and pass it as found; keep it until Restore's actions say
//     to adopt it (ActAdopt) or to stop it (ActStop stops whatever process
//     of the service runs, a found one included).
//  1. Carry out the actions in order. ActPersist must be durable before any
//     later action of the same slice starts (the persisted phase is what
//     crash recovery relies on). ActReport, ActAdopt, ActBeginChecks,
//     ActStopChecks and ActFreezeBaseline are quick and are done inline.
//  2. The long steps (ActFetch, ActVerify, ActStage, ActSwitch, ActStart,
//     ActStop) may run in the background. At most one is in flight per
//     Machine. When it finishes, feed Done(action.Seq, err, now); for
//     ActSwitch feed SwitchDone with the version `current` points at after
//     the attempt (read back), so a failed switch is never taken for one that
//     happened. An ActFetch for which FetchSuperseded reports true may be
//     cancelled; its Done is still fed.
//  3. While checking is on (between ActBeginChecks and ActStopChecks; this
//     includes the watch after HEALTHY), feed the results of all probers
//     with Checks(action.Epoch, now, results), and every unexpected exit of
//     the process started by the ActStart (or adopted by the ActAdopt) with
//     that Epoch with Exited(epoch, now). While AnalysisEpoch reports ok, feed every analysis
//     round of that epoch's process with Analysis(epoch, now, verdict,
//     results...) (see package analysis). The baseline those verdicts
//     compare with is frozen at ActFreezeBaseline, which the machine emits
//     just before it stops the old release for the install of a release
//     with analysis rules (a first install, a revert and a recovery have
//     no baseline).
//  4. Feed Tick(now) periodically (about once a second) so deadlines fire.
//  5. Feed assignments from the coordinator with Assign (after validating
//     them) and invalid ones with Invalid.
//
// Phases move only along these edges (besides staying put):
//
//	IDLE                      -> FETCHING, FAILED           (a new assignment; FAILED: an invalid one)
//	HEALTHY, REVERTED, FAILED -> FETCHING, HEALTHY, FAILED  (HEALTHY: assigned the release already running healthy)
//	FETCHING  -> VERIFYING, FAILED, FETCHING, HEALTHY          (FETCHING/HEALTHY/FAILED: a newer assignment replaced the install)
//	VERIFYING -> STAGING,   FAILED, FETCHING, HEALTHY
//	STAGING   -> SWITCHING, FAILED, FETCHING, HEALTHY
//	SWITCHING -> STARTING, FAILED                           (FAILED: the switch did not happen)
//	STARTING  -> CHECKING, REVERTING
//	CHECKING  -> HEALTHY, REVERTING
//	HEALTHY   -> REVERTING                                  (a failure during the watch)
//	REVERTING -> REVERTED, FAILED
//
// Restore reports first, from the snapshot's phase: that same phase (a
// settled service whose release is adopted; REVERTING resumed), FETCHING
// (an install before its switch), CHECKING or STARTING (an install after
// its switch: its target adopted, or started) and carries on along the
// edges above; or, when it recovers, STARTING -> CHECKING -> (the restored
// phase, FAILED or FETCHING), or STARTING straight to one of those. A
// recovery never reverts: it ends REVERTED only when it restored REVERTED.
package lifecycle
