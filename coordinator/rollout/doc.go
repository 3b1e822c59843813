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
// The caller (the coordinator's leader loop) has these duties, in order:
//
//  1. Build a rollout with New (the plan is computed once, here, from the
//     hosts known now and the service's policy) and persist it, together
//     with the service status (rollout_seq, last_rollout_id). A manual
//     rollout starts in WAITING_APPROVAL; Approve moves it on, persist again.
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
//     "host_assigned" event, and any host that (re)connects, gets what
//     Desired (or DesiredFunc, for many hosts) says.
//  5. When the rollout is terminal (Terminal), store Conclude's status for
//     the service, then push Desired to every selected host: after a failure
//     that is last good with a newer generation, and the service is frozen.
//     Fail (abort, or an external reason) and Supersede end a rollout by hand
//     and are followed by the same duty.
//
// Events in Result are for logs and `rollout watch`; the persisted rollout is
// the only state.
package rollout
