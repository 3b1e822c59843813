package lifecycle

import (
	"fmt"
	"time"

	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Config rollouts. The coordinator may assign the release a host runs
// again with another spec (a config rollout). Whether that is a change is
// decided by the one rule of package specdiff:
//
//   - the new spec changes what runs on hosts (run, hooks, ...; with or
//     beside how it is judged and its resource limits): it is an install
//     of the same release (FETCHING .. CHECKING: the
//     staged release is only re-verified by its digest, `current` is
//     switched to the same directory, the process is stopped and started
//     with the new spec, checked, analysed and watched), and a failure
//     reverts locally to the last good (release, spec) pair, which is the
//     same release with the spec it ran before.
//   - it changes only how the release is judged (checks, min_healthy_time,
//     healthy_deadline, analysis) and/or its resource limits (resources:
//     specdiff.InPlace) and the machine is settled on that release,
//     healthy, its one process serving: it is installed IN PLACE
//     (inPlace). Nothing is fetched, switched, stopped or started:
//     `current` is the new spec at once (the process runs the same run
//     spec), its new limits are written to the process's cgroup when they
//     changed (ActSetLimits, a long step: nothing passes before it is
//     done, and its error fails the install), and that same process is
//     checked (CHECKING, a fresh checking period), analysed and watched
//     under the new spec. A failure reverts in place too: `current` is the
//     last good spec again, its limits are written back (ActSetLimits;
//     if that fails, the revert restarts the process with the last good
//     spec, as any revert), and the process, still the same, is re-checked
//     with its checks (REVERTING → REVERTED). Except after a resize during
//     whose check or watch the process exited (killed at a lowered
//     memory_max, say): the supervisor restarted it under the new limits,
//     so it is not kept: the revert is the ordinary one, which stops it
//     and starts the last good spec (revertsInPlace). When the machine is
//     not settled healthy on the release (a failed process, one being
//     started), the change is installed as any other. A newer assignment while it is checked does
//     not wait for the check (newerInPlace): the same spec at a newer
//     generation carries the check on; anything else drops it at once
//     (nothing was started or switched) and is applied from the last good
//     spec, unless the process exited in the check or fails a check the
//     last good spec has unchanged (it then waits for the check's end,
//     whose failure reverts in place and re-checks the last good spec).
//     A crash loop in its check or watch reverts it like any failure
//     (README, "Config changes roll out like code"). A resize in its check
//     is never dropped so: its limits are on the process, so the newer
//     assignment waits for the check's end (or its revert, which writes
//     the last good limits back).
//   - it changes only what the coordinator reads (rollout policy, alerts,
//     selector): taken as the running release at a newer generation, no
//     restart (as for the same spec).
//
// After an agent restart in the middle of such an install (STARTING,
// CHECKING) or of its revert (REVERTING), the processes found running of
// the release are told apart by their epochs (PID records name the release
// and the epoch, not the spec): the target's process is the one started
// at Snapshot.TargetEpoch, which is made durable before that start; any
// other runs the last good spec. So the install is finished (the target's
// process adopted and checked afresh) or reverted (the last good's adopted,
// the target's stopped) exactly once, with no process started again. A
// state written before the epoch was recorded (TargetEpoch 0) cannot tell
// them apart: the process is stopped and the right spec's started (one
// restart more, never the wrong spec left running).

// An agent restart in the middle of an in-place install or of its revert
// finds the one process of the release running: as the two specs run the
// same, it is the target's and the last good's process alike (inPlaceChange),
// so it is adopted and checked again with the spec the snapshot judges
// (Current), whatever its epoch. As the limits on its cgroup may be either
// spec's (the agent may have stopped before or after the write), an
// adoption while Snapshot.InPlace holds writes the adopted spec's limits
// again (ActAdopt.Limits; idempotent).
//
// Reports say which installs were in place (ServiceReport.in_place, from
// Snapshot.InPlace): set by installInPlace, for the assignment it
// installed and its in-place revert, and cleared by the next assignment
// and by any process start (a reboot's, a recovery's), so it never claims
// a process was kept that was started.

// runsAsIs reports whether assignment a is what the machine runs, healthy:
// the same release with a spec that runs the same on hosts, so taking it
// needs no restart.
func (m *Machine) runsAsIs(a *v1.Assignment) bool {
	return a != nil && m.current != nil && Version(m.current) == Version(a) && m.currentOK &&
		!specdiff.HostAffecting(m.current.GetSpec(), a.GetSpec())
}

// specChange reports whether a and b are the same release with specs that
// run differently on hosts.
func specChange(a, b *v1.Assignment) bool {
	return a != nil && b != nil && Version(a) == Version(b) && specdiff.HostAffecting(a.GetSpec(), b.GetSpec())
}

// inPlaceChange reports whether a and b are the same release with specs
// that differ only in how it is judged and in its resource limits
// (specdiff.InPlace): a process of it runs the same under either, once
// the limits are written (resized).
func inPlaceChange(a, b *v1.Assignment) bool {
	return a != nil && b != nil && Version(a) == Version(b) && specdiff.InPlace(a.GetSpec(), b.GetSpec())
}

// sameRun reports whether a process of a runs as one of b does: the same
// release, with specs that differ at most in how it is judged (not in
// what runs, not in its resource limits).
func sameRun(a, b *v1.Assignment) bool {
	return a != nil && b != nil && Version(a) == Version(b) && (!specChange(a, b) || inPlaceChange(a, b) && !resized(a, b))
}

// resized reports whether a and b have different resource limits
// (specdiff.Resized): applying one in place of the other writes them.
func resized(a, b *v1.Assignment) bool {
	return specdiff.Resized(a.GetSpec(), b.GetSpec())
}

// setLimits writes a's resource limits to process p's cgroup
// (ActSetLimits, a long step): the checks begun beside it pass nothing
// before it is done (evaluate), and its error fails the op (limitsDone).
func (m *Machine) setLimits(a *v1.Assignment, p *proc) {
	m.seq++
	m.inflight = ActSetLimits
	m.emit(Action{Kind: ActSetLimits, Seq: m.seq, Epoch: p.epoch, Version: Version(a), Assignment: a})
}

// limitsDone takes the end of the ActSetLimits in flight. Written: the
// check goes on, or fails with a failure that came meanwhile (deferred). Failed in an install: the install failed, reverted (in
// place: the last good limits are written back). Failed in its revert:
// the process may run with limits of neither spec, so the revert is done
// by a restart with the last good spec (revertNext: stopped, `current`
// already points at the release, started).
func (m *Machine) limitsDone(err error, t time.Time) {
	if len(m.procs) == 1 {
		m.procs[0].limitsUnknown = err != nil // the process written to (inPlace, revertsInPlace)
	}
	if d := m.deferred; d != "" && err == nil {
		// The checks failed while the limits were written (a crash loop).
		m.deferred = ""
		m.checksFailed(d, t)
		return
	}
	m.deferred = ""
	if err == nil {
		m.evaluate(t)
		return
	}
	switch m.op {
	case opInstall:
		m.checksFailed(fmt.Sprintf("setting resource limits: %v", err), t)
	case opRevert:
		m.stopChecks()
		m.reason = joinReasons(m.reason, fmt.Sprintf("writing back the last good resource limits: %v: restarting it", err))
		m.report()
		m.revertNext(t)
	}
}

// inPlace reports whether assignment a is installed in place: the machine
// is settled on a's release, healthy (its last good spec, passed and not
// restarted since), with the one process of it serving, and a's spec
// differs from the running one only in how it is judged and in its
// resource limits.
func (m *Machine) inPlace(a *v1.Assignment) bool {
	return m.op == opNone && m.currentOK && m.fresh == nil && len(m.procs) == 1 && m.procs[0].v == Version(a) &&
		m.lastGood != nil && Version(m.lastGood) == Version(m.current) &&
		!specdiff.HostAffecting(m.lastGood.GetSpec(), m.current.GetSpec()) && inPlaceChange(m.current, a)
}

// installInPlace installs a in place (inPlace holds): `current` takes its
// spec, its limits are written to the process's cgroup when they changed
// (after the persist: an agent restart before the write writes them on
// adoption), and the process that serves is checked (a fresh checking
// period), analysed and watched under it, as if it had just been started
// for it.
func (m *Machine) installInPlace(a *v1.Assignment, t time.Time) {
	p := m.procs[0]
	from := m.current
	m.target = a
	m.current = a
	m.currentOK = false // not yet passed under this spec
	m.targetEpoch = p.epoch
	m.installedInPlace = true
	m.reason = ""
	m.op = opInstall
	p.a = a
	m.phase = v1.Phase_PHASE_CHECKING
	m.persist()
	if resized(from, a) {
		m.setLimits(a, p)
	}
	m.beginChecks(a, p.epoch, t) // reports
	m.evaluate(t)
}

// checkingInPlace reports whether the machine checks an install in place
// (CHECKING, no hook or step in flight): nothing was started, stopped or
// switched for it.
func (m *Machine) checkingInPlace() bool {
	return m.op == opInstall && m.installedInPlace && m.phase == v1.Phase_PHASE_CHECKING &&
		m.inflight == 0 && m.hook == nil && m.fresh == nil && len(m.procs) == 1 && m.procs[0].v == Version(m.lastGood)
}

// newerInPlace takes newer assignment p while an install in place is
// checked (checkingInPlace holds). The same spec as far as hosts go (the
// same release): the check carries on with p's generation, and it returns
// true. Anything else does not wait for the check (up to healthy_deadline):
// nothing was started, stopped or switched for it, so it is dropped at
// once, as an install is before its switch, and the machine is back where
// it was before it, on the last good spec (which the process runs the
// same, and which passed), settled: it returns false and p is applied.
// Unless the process exited during the check: then it is not dropped, and
// p waits for the check's end (returns false with the install under way).
func (m *Machine) newerInPlace(p *pendingAssign) bool {
	if p.a != nil && !p.isRemove() && Version(p.a) == Version(m.target) && !specdiff.HostAffecting(m.target.GetSpec(), p.a.GetSpec()) {
		m.pending = nil
		m.gen, m.refused = p.gen, ""
		m.target, m.current, m.procs[0].a = p.a, p.a, p.a
		m.persist()
		m.report()
		return true
	}
	if m.chk.exits > 0 || m.failsLastGoodCheck() || resized(m.lastGood, m.target) {
		// The process exited during the check, or fails a check the last
		// good spec has too: that is about the process under the last good
		// spec as well, so "it passed" no longer holds. Or its limits were
		// rewritten (a resize): it does not run as under the last good spec
		// any more. Not dropped: p waits (op is still the install) and the
		// check's end settles it, or its failure reverts (in place: the last
		// good limits written back) and re-checks the last good spec, as
		// any failure (README).
		return false
	}
	m.stopChecks()
	m.current = m.lastGood
	m.procs[0].a = m.lastGood
	m.currentOK = true
	m.installedInPlace = false
	m.checks, m.rules = nil, nil // the dropped spec's
	m.reason = ""
	m.op = opNone
	return false
}

// failsLastGoodCheck reports whether the check in place has a failing
// result of a check that the last good spec has unchanged (same name, same
// definition): the process fails under the last good spec too.
func (m *Machine) failsLastGoodCheck() bool {
	for _, r := range m.checks {
		if r.OK {
			continue
		}
		for _, c := range m.chk.a.GetSpec().GetChecks() {
			if c.GetName() != r.Name {
				continue
			}
			for _, g := range m.lastGood.GetSpec().GetChecks() {
				if g.GetName() == r.Name && sameCheck(g, c) {
					return true
				}
			}
		}
	}
	return false
}

// sameCheck reports whether checks a and b are defined alike (specdiff's
// comparison, proto equality, of specs holding only them).
func sameCheck(a, b *v1.Check) bool {
	return !specdiff.HostAffecting(&v1.ServiceSpec{Checks: []*v1.Check{a}}, &v1.ServiceSpec{Checks: []*v1.Check{b}})
}

// revertsInPlace reports whether the revert under way can be done in
// place: the one process that serves is of the release being reverted,
// which runs the same under the last good spec (inPlaceChange), unless
// the change resized it and it exited since (the supervisor restarted it
// under the new limits; an OOM kill at a lowered memory_max): that is
// reverted as any other, by a restart with the last good spec. So is a
// process that runs another spec (runsInPlaceOf), or one of unknown limits
// or spec (limitsUnknown) but in an install in place, whose own failed
// write of the limits made them unknown.
func (m *Machine) revertsInPlace() bool {
	return m.fresh == nil && len(m.procs) == 1 && m.procs[0].v == Version(m.current) && inPlaceChange(m.lastGood, m.current) &&
		!(resized(m.lastGood, m.current) && m.chk.exits > 0) && runsInPlaceOf(m.procs[0].a, m.lastGood) &&
		(!m.procs[0].limitsUnknown || m.installedInPlace)
}

// runsInPlaceOf reports whether a process of a runs as one of b does once
// b's limits are written: not one that runs another spec (a process a
// failed revert kept serving, left when the install's own process failed
// to start).
func runsInPlaceOf(a, b *v1.Assignment) bool {
	return sameRun(a, b) || inPlaceChange(a, b)
}

// revertInPlace reverts in place (revertsInPlace holds; op, reason set):
// `current` is the last good spec again, its limits are written back when
// they differ (ActSetLimits), and the same process is re-checked with its
// checks.
func (m *Machine) revertInPlace(t time.Time) {
	p := m.procs[0]
	from := m.current
	m.switched = true
	m.current = m.lastGood
	p.a = m.lastGood
	m.setPhase(v1.Phase_PHASE_REVERTING, true)
	if resized(from, m.lastGood) {
		m.setLimits(m.lastGood, p)
	}
	m.beginChecks(m.lastGood, p.epoch, t)
	m.evaluate(t)
}
