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
// The watch ends (or reverts) before anything else happens at a time: check
// results fed then are the watched spec's, and the checking period of a
// revert that began then takes nothing from them.
// A revert (like a recovery) whose switch back fails ends FAILED at once,
// starts nothing, and reports as current what the link says.
//
// Starts, readiness and the handover. A started process is ready once it
// runs, or, when its release says ready: notify, once it sent READY=1
// (InputReady) within ready_timeout (DefaultReadyTimeout); a process that
// exits first or misses the deadline is stopped (not drained: it never
// served) and its start has failed (an install reverts, a revert ends
// FAILED, a recovery fails). Only a ready process is checked. When the
// release to start and the release of the one process that serves both
// declare sockets, the new process starts beside the old one on the same
// sockets (ActStart with Beside) and the old one is stopped only once the
// new one is ready: no gap (a handover). Otherwise the old one is stopped
// first. Every stop of a process that served is drained (ActStop with
// Drain: its pre_stop, its shutdown_delay, then the stop signal). A revert
// hands over the same way (switch back, start the last good release
// beside the failed one, stop the failed one once it is ready); when the
// failed release never took over (its new process was not ready), the last
// good release's process still serves and is only checked again. A
// revert or a recovery whose new process does not become ready leaves the
// one that served running (FAILED, saying so), rather than nothing.
//
// Hooks. The machine decides when a release's hooks run (ActHook, a long
// step; internal/hookspec reads them from the spec, run.pre_stop being before_stop's
// alias): after_install once the release is staged, before the switch;
// before_start right before its process starts; after_start once that
// process is ready and serves alone, before its checks; validate once the
// checks (and the analysis) passed, before HEALTHY; before_stop before
// every stop of a process that served, of the release being stopped. A
// hook that fails or times out fails an install as a failing check does:
// after_install before the switch (FAILED, nothing changed), any other by
// a local revert whose reason names the hook, the release, why and the end
// of its output (at most MaxHookOutput bytes). A before_stop that fails
// while an install replaces its process keeps that process running (not
// signalled) and the install reverts to it; a failing before_stop of a
// revert, a recovery or a restore is noted and the stop goes on. A revert
// or a recovery runs before_start and after_start of the release it
// starts (not after_install, which ran when it was installed, nor
// validate, as it is re-checked with its health checks alone); their
// failures are noted, it goes on, and it ends FAILED saying so. While
// validate runs nothing is decided: a crash loop or an analysis fail
// meanwhile reverts when it ends. Hooks run at least once: an agent restart
// during an install runs them again with the step they precede (Restore of
// STARTING with the target running runs its after_start again).
//
// Agent restarts. Services outlive the agent, so Restore takes, besides the
// snapshot, what the caller found running (Running: the release and epoch a
// verified PID record names; two processes when the agent stopped during a
// handover) and decides: the process the snapshot expects is adopted
// (ActAdopt; taken as ready, supervised, checked and watched again, never
// restarted), a process beside it is stopped (drained) first, as the
// handover would have, and any other is stopped (or, when both declare
// sockets, handed over from) before anything else starts. A
// settled release keeps its phase (a HEALTHY one still in its watch is
// watched for the rest of it); an install resumes the step it was in (at
// the fetch before its switch, where a staged release is only re-verified;
// after it, the target is adopted or started and checked with a fresh
// checking period); a revert resumes. An install restored in SWITCHING may
// have switched unseen: `current` is first switched back to the release
// that runs and read back, and FETCHING is durable only then (should the
// link stay elsewhere, the install ends FAILED at once, starts nothing and
// reports as current what the link says, as a failed switch back does), so
// an install abandoned or failed before its own switch leaves `current` on
// the release that runs. An agent restart is never a
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
// running release with such a spec is an install of it, in place when only
// how the release is judged and its resource limits change: no restart,
// the limits written to the running process, see spec.go). Its behaviour is written down as scenario
// traces in testdata/ (TestTraces: inputs, the actions they return, the
// phase after each; -rewrite updates them) and checked by a seeded
// simulation against invariants (TestSimulation; -seed N replays one seed).
//
// The caller's duties, in order, for every slice of Actions returned by Step
// or Restore:
//
//  0. Before Restore, find what runs of the service (the processes proven
//     by their PID records) and pass them as found; keep each until an
//     action adopts it (ActAdopt, only from Restore) or stops it (an ActStop
//     with its recorded epoch, from Restore or later).
//  1. Carry out the actions in order. ActPersist must be durable before any
//     later action of the same slice starts (the persisted phase is what
//     crash recovery relies on). ActReport, ActAdopt, ActBeginChecks,
//     ActStopChecks and ActFreezeBaseline are quick and are done inline.
//  2. The long steps (ActFetch, ActVerify, ActStage, ActSwitch, ActStart,
//     ActStop, ActHook, ActRemove, ActSetLimits) may run in the background.
//     At most one is in flight per Machine. An ActStart with Beside starts the process next to the one
//     that serves (stopping nothing); an ActStop stops only the process
//     with its Epoch, first running its release's pre_stop and waiting its
//     shutdown_delay when it says Drain (its release's before_stop is an
//     ActHook of its own, before it). An ActHook runs its hook from its
//     release's directory and kills it at its Timeout; feed its end with
//     HookDone(action.Seq, err, output, now). When another step finishes,
//     feed Done(action.Seq, err, now); for
//     ActSwitch feed SwitchDone with the version `current` points at after
//     the attempt (read back), so a failed switch is never taken for one that
//     happened. An ActFetch for which FetchSuperseded reports true may be
//     cancelled; its Done is still fed.
//  3. Feed Ready(epoch, now) when a process started by an ActStart of a
//     release with ready: notify sends READY=1 (even before that ActStart's
//     Done), and every exit of such a process with Exited(epoch, now).
//     While checking is on (between ActBeginChecks and ActStopChecks; this
//     includes the watch after HEALTHY), feed the results of all probers
//     with Checks(action.Epoch, now, results), and every unexpected exit of
//     the process started by the ActStart (or adopted by the ActAdopt) with
//     that Epoch with Exited(epoch, now) (ExitedBecause(epoch, why, now)
//     when how it ended is worth reporting: killed at its memory limit; the
//     crash loop's reason names the last such exit). While AnalysisEpoch
//     reports ok, feed every analysis
//     round of that epoch's process with Analysis(epoch, now, verdict,
//     results...) (see package analysis). The baseline those verdicts
//     compare with is frozen at ActFreezeBaseline, which the machine emits
//     just before it stops the old release for the install of a release
//     with analysis rules (a first install, a revert and a recovery have
//     no baseline).
//  4. Feed Tick(now) periodically (about once a second) so deadlines fire
//     (a readiness deadline too), and at HealthyAt, so that a release is
//     HEALTHY as soon as its checks have passed for min_healthy_time.
//     Run each check again ProbeDelay after its last run: before it first
//     passes in a checking period a failing check is retried sooner than
//     its interval (the process is usually still starting).
//  5. Feed assignments from the coordinator with Assign (after validating
//     them) and invalid ones with Invalid.
//
// Phases move only along these edges (besides staying put):
//
//	IDLE                      -> FETCHING, FAILED           (a new assignment; FAILED: an invalid one)
//	HEALTHY, REVERTED, FAILED -> FETCHING, HEALTHY, FAILED  (HEALTHY: assigned the release already running healthy)
//	HEALTHY, REVERTED, FAILED -> CHECKING                   (an install in place: only how it is judged or its limits change, spec.go)
//	FETCHING  -> VERIFYING, FAILED, FETCHING, HEALTHY, CHECKING (FETCHING/HEALTHY/FAILED/CHECKING: a newer assignment replaced the install)
//	VERIFYING -> STAGING,   FAILED, FETCHING, HEALTHY, CHECKING
//	STAGING   -> SWITCHING, FAILED, FETCHING, HEALTHY, CHECKING
//	SWITCHING -> STARTING, FAILED                           (FAILED: the switch did not happen)
//	STARTING  -> CHECKING, REVERTING
//	CHECKING  -> HEALTHY, REVERTING
//	CHECKING  -> FETCHING, HEALTHY, FAILED, REMOVING        (an install in place being checked, dropped for a newer assignment: spec.go; never a resize)
//	HEALTHY   -> REVERTING                                  (a failure during the watch)
//	REVERTING -> REVERTED, FAILED
//	IDLE, HEALTHY, REVERTED, FAILED, FETCHING .. STAGING -> REMOVING  (a removal: remove.go)
//	REMOVING  -> REMOVED, FAILED                            (FAILED: the files could not be removed)
//	REMOVED   -> FETCHING, REMOVING, FAILED                 (any later release, whatever its generation)
//
// Restore reports first, from the snapshot's phase: REMOVING for a
// removal (resumed), else that same phase (a
// settled service whose release is adopted; REVERTING resumed), FETCHING
// (an install before its switch), CHECKING or STARTING (an install after
// its switch: its target adopted alone, or adopted beside another process,
// or started) and carries on along the
// edges above; or, when it recovers, STARTING -> CHECKING -> (the restored
// phase, FAILED or FETCHING), or STARTING straight to one of those. A
// recovery never reverts: it ends REVERTED only when it restored REVERTED.
package lifecycle
