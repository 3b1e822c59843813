// Package rollout is Fleetwave's pure rollout engine: it computes the plan of
// a rollout (canary, then waves by cumulative percentage, spread over zones)
// and advances it from what the hosts report, deciding which hosts move, when
// a wave is done or baked, and when the rollout succeeds or fails.
//
// It owns the decision logic only. Values go in (a *v1.Rollout, observations,
// the current time) and values come out (a new *v1.Rollout, a Result naming
// what happened). It must not import etcd, grpc or any I/O package, start
// goroutines, read the clock (time.Now) or use global randomness: the
// coordinator's run loop does all of that. Nothing here panics on a rollout
// read back from storage, however odd.
//
// It also holds the policy around rollouts: Decide says what to do about a
// service's newest release (nothing, wait, supersede the rollout in flight,
// start one), RollbackTarget which release a rollback goes to, Terminal when
// a rollout has ended; and the vocabulary of a rollout's history (the Event*
// kinds).
//
// The caller (the coordinator's leader loop) does the I/O, in this order:
//
//  1. Ask Decide, with the service, its newest rollout and releases (their
//     creation as a logical clock: etcd revisions). On ActionSupersede end
//     the rollout in flight with Supersede, persist it (duty 5) and ask
//     again. On ActionStart call Begin (or BeginRollback for an operator's
//     rollback to RollbackTarget): it plans the rollout with New (or
//     NewRollback) from the hosts known now and takes the first Step, so
//     the plan, the first hosts assigned, the service status naming the
//     rollout and the events are one write. A manual rollout starts in
//     WAITING_APPROVAL; Approve moves it on (and a Step right after it
//     belongs in the same write).
//  2. Call Step whenever a host of the rollout reports or its connection
//     changes, and at Result.NextWake (bake end, progress deadline) even if
//     nothing was reported. Observations are given as a function so that a
//     fleet of 10k hosts needs no map per call. Several reports may be
//     folded into one Step: the engine is level-triggered and only looks at
//     the latest report of each host.
//  3. When Result.Changed, persist the returned rollout (with a fenced
//     transaction) before acting on it. If the write fails, drop the result
//     and retry from the stored rollout: Step never mutates its input. When
//     Changed is false the returned rollout is the input itself.
//  4. After persisting, push assignments: every host named by a
//     EventHostAssigned event, and any host that (re)connects, gets what
//     Desired (or DesiredFunc, for many hosts) says, given its labels and
//     its last report (a release, or to remove the service).
//  5. When the rollout is terminal (Terminal), store Conclude's status for
//     the service, then push Desired to every selected host: after a failure
//     that is last good with a newer generation, and the service is frozen.
//     Fail (abort, or an external reason) and Supersede end a rollout by hand
//     and are followed by the same duty.
//
// Events in Result are for logs and `rollout watch`; the persisted rollout is
// the only state.
//
// Besides releases: config rollouts (spec.go: a spec that changes what runs
// on hosts rolls the stable release out again with it), removals
// (remove.go: `service delete`, BeginRemoval, Delete), a selector change's
// removal of the hosts it leaves out in waves (remove.go: Placement,
// ActionLeave, BeginLeave) and hosts moving (Desired: a host that has the
// service but is selected by neither the live selector nor the placement,
// or whose service is deleted, is told to remove it, given its last
// report).
package rollout
