package lifecycle

import (
	"fmt"
	"strings"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// op is what the machine is in the middle of.
type op int

const (
	opNone    op = iota // settled: IDLE, HEALTHY, REVERTED or FAILED
	opInstall           // FETCHING .. CHECKING
	opRevert            // REVERTING
	opRecover           // restarting the last good release after Restore (nothing adoptable ran)
)

// recoverKind is what to do once recovery has re-checked the release.
type recoverKind int

const (
	recSettled recoverKind = iota // back to the restored phase
	recResume                     // resume the install of the target (crash before the switch)
)

// pendingAssign is a newer assignment waiting for the machine to settle.
type pendingAssign struct {
	gen     int64
	a       *v1.Assignment // nil when invalid
	invalid string
}

// describe names what was assigned: "release V" or "an invalid assignment".
func (p *pendingAssign) describe() string {
	if p.a == nil {
		return "an invalid assignment"
	}
	return "release " + Version(p.a)
}

// joinReasons joins non-empty reasons with "; ".
func joinReasons(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// checkState tracks the checking period of one started release and, after
// it became HEALTHY, its watch. Checks run (between ActBeginChecks and
// ActStopChecks) exactly while active.
type checkState struct {
	active     bool
	a          *v1.Assignment
	start      time.Time
	deadline   time.Time
	minHealthy time.Duration
	zeroChecks bool
	passing    bool
	passSince  time.Time
	exits      int // since the process started (checking and watch)
	lastWhy    string

	// analyse: an install of a release with analysis rules; HEALTHY also
	// needs the latest verdict to be Pass.
	analyse          bool
	failInconclusive bool
	verdict          Verdict // latest verdict of this epoch, 0 = none yet

	// The watch after HEALTHY: checks, exits and analysis go on until
	// watchUntil; a failure reverts to prevGood.
	watching   bool
	watchUntil time.Time
	failAfter  time.Duration
	failSince  time.Time // checks failing continuously since (zero: passing)
	prevGood   *v1.Assignment
}

// Machine is the lifecycle of one service. The zero value is not usable;
// use New or Restore. It is not safe for concurrent use.
type Machine struct {
	service string
	phase   v1.Phase
	gen     int64
	reason  string
	// refused says why the newest assignment older than gen was refused (a
	// replay); it is part of every report until a newer one is accepted.
	refused   string
	current   *v1.Assignment
	lastGood  *v1.Assignment
	target    *v1.Assignment
	currentOK bool // current passed its checks and has not been restarted since
	running   bool // a process of this service is (supposed to be) running

	op       op
	pending  *pendingAssign
	inflight ActionKind // long step in flight, 0 = none
	seq      uint64
	switched bool // revert/recover: the switch step is done

	epoch  uint64
	chk    checkState
	checks []CheckResult
	rules  []RuleResult // latest analysis results of the checked release

	rec      recoverKind
	restored v1.Phase
	recWhat  *v1.Assignment // the release recovery runs
	// the watch the restored HEALTHY release was in
	resumeUntil time.Time
	resumePrev  *v1.Assignment

	now  time.Time
	acts []Action
}

// New returns the machine of a service with nothing installed (IDLE).
func New(service string) *Machine {
	return &Machine{service: service, phase: v1.Phase_PHASE_IDLE}
}

// Restore rebuilds the machine of a service from its persisted snapshot
// after an agent restart. found is what the caller found running of the
// service (nil: nothing; see Running): services outlive the agent, so
// usually the process the snapshot expects still runs. Restore decides
// whether to adopt it (ActAdopt: supervised again, not restarted) or to
// stop it (ActStop, for a process of a release that must not run), and
// resumes where the machine was:
//
//   - settled (IDLE, HEALTHY, REVERTED, FAILED) with the current release
//     running: adopted, the phase stays; a HEALTHY release still in its
//     watch is watched for the rest of it (checks, exits, analysis).
//   - an install before its switch (FETCHING .. SWITCHING), with the
//     current release running (or none ever ran): the install resumes at
//     FETCHING (a staged release is only re-verified) and the running
//     release is adopted.
//   - an install after its switch (STARTING, CHECKING): the target's
//     process is adopted or, if it is not running, started (the old
//     release's stopped first), and checked with a fresh checking period:
//     only the release's own behaviour can fail it, not the restart.
//   - a revert (REVERTING) resumes: the last good release is adopted and
//     re-checked, or the failed one stopped, `current` switched back and
//     the last good one started.
//
// When what the snapshot expects is not running (a reboot, a process that
// died while no agent watched it), Restore never leaves an unverified
// release active: it switches `current` back to the last good release (or
// removes it when there is none), restarts that release and checks it
// again. Afterwards the machine returns to the restored phase, or resumes
// an install interrupted before its switch. If the switch back fails,
// recovery ends FAILED at once, starts nothing, and reports as current what
// the link says (see SwitchDone; unknown, so none, if the caller could not
// tell).
func Restore(s Snapshot, found *Running, now time.Time) (*Machine, []Action) {
	m := &Machine{
		service:  s.Service,
		phase:    s.Phase,
		gen:      s.Generation,
		reason:   s.Reason,
		current:  s.Current,
		lastGood: s.LastGood,
		target:   s.Target,
		now:      now,
		restored: s.Phase,
		// HEALTHY and REVERTED mean the current release passed its checks.
		currentOK: s.CurrentOK || s.Phase == v1.Phase_PHASE_HEALTHY || s.Phase == v1.Phase_PHASE_REVERTED,
	}
	if found != nil {
		m.epoch = found.Epoch // epochs go on from the running process's
	}
	cur, good, tgt := Version(s.Current), Version(s.LastGood), Version(s.Target)
	runs := func(v string) bool { return found != nil && v != "" && found.Version == v }
	switch s.Phase {
	case v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING, v1.Phase_PHASE_SWITCHING:
		switch {
		case m.target == nil:
			m.restored = v1.Phase_PHASE_FAILED
		case runs(cur) || (found == nil && m.current == nil && m.lastGood == nil):
			// The release before the install runs on (or there is none):
			// resume the install where it can be proven, at the fetch.
			if runs(cur) {
				m.adopt(m.current)
			}
			m.op = opInstall
			m.setPhase(v1.Phase_PHASE_FETCHING, true)
			m.startStep(ActFetch, m.target)
			return m, m.take()
		default:
			m.rec = recResume
		}
	case v1.Phase_PHASE_STARTING, v1.Phase_PHASE_CHECKING:
		if m.target == nil || cur != tgt {
			// After the switch `current` is the target; anything else on
			// disk is inconsistent.
			m.restored = v1.Phase_PHASE_FAILED
			break
		}
		m.op = opInstall
		m.currentOK = false
		switch {
		case runs(tgt):
			m.adopt(m.target)
			m.phase = v1.Phase_PHASE_CHECKING
			m.persist()
			m.beginChecks(m.target, now) // a fresh checking period (reports)
			m.evaluate(now)
		case found != nil:
			// The release before the install still runs (or another):
			// stopped, then the target starts (installDone's ActStop).
			m.running = true
			m.setPhase(v1.Phase_PHASE_STARTING, false)
			m.startStep(ActStop, nil)
		default:
			m.setPhase(v1.Phase_PHASE_STARTING, false)
			m.startStep(ActStart, m.target)
		}
		return m, m.take()
	case v1.Phase_PHASE_REVERTING:
		m.op = opRevert
		m.currentOK = false
		m.report()
		if runs(good) {
			// The revert had started the last good release: re-check it.
			m.adopt(m.lastGood)
			m.switched = true
			m.current = m.lastGood
			m.beginChecks(m.lastGood, now)
			m.evaluate(now)
		} else {
			m.running = found != nil // the failed release (or another): stopped first
			m.revertNext(now)
		}
		return m, m.take()
	case v1.Phase_PHASE_IDLE, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
		m.rec = recSettled
	default:
		m.rec = recSettled
		m.restored = v1.Phase_PHASE_FAILED
	}
	if m.rec == recSettled && m.restored == v1.Phase_PHASE_HEALTHY && good != tgt {
		// HEALTHY always means healthy on the target; anything else on disk
		// is inconsistent, so do not claim it.
		m.restored = v1.Phase_PHASE_FAILED
		m.currentOK = false
	}
	if m.rec == recSettled && m.restored != v1.Phase_PHASE_IDLE && runs(cur) {
		// Settled, and the current release runs: adopted as it is.
		m.adopt(m.current)
		m.phase = m.restored
		if m.restored == v1.Phase_PHASE_HEALTHY && now.Before(s.WatchUntil) {
			// Still in its watch: watched for the rest of it.
			m.beginChecks(m.current, now)
			m.beginWatch(s.Previous, s.WatchUntil)
			m.persist()
		} else {
			m.persist() // a watch that ended meanwhile is over
			m.report()
		}
		return m, m.take()
	}
	if m.rec == recSettled && m.restored == v1.Phase_PHASE_HEALTHY {
		// Once re-checked, the release is watched for the rest of its window.
		m.resumeUntil, m.resumePrev = s.WatchUntil, s.Previous
	}
	m.op = opRecover
	m.recWhat = m.lastGood
	m.currentOK = false
	m.setPhase(v1.Phase_PHASE_STARTING, false)
	if found != nil {
		m.running = true // a process of another release: stopped first
		m.startStep(ActStop, nil)
	} else {
		m.startStep(ActSwitch, m.recWhat)
	}
	return m, m.take()
}

// adopt makes the found process (of a's release, with the restored epoch)
// the running one: ActAdopt.
func (m *Machine) adopt(a *v1.Assignment) {
	m.running = true
	if m.epoch == 0 {
		m.epoch = 1 // an unrecorded epoch: 0 means none
	}
	m.emit(Action{Kind: ActAdopt, Epoch: m.epoch, Version: Version(a), Assignment: a})
}

// Step feeds one input and returns what to do next.
func (m *Machine) Step(in Input) []Action {
	if in.At.After(m.now) {
		m.now = in.At
	}
	t := in.At
	// The watch ends (or reverts, on checks that failed long enough before
	// it ended) before anything else happens at t.
	m.expireWatch(t)
	switch in.Kind {
	case InputAssign:
		if in.Assignment != nil {
			m.onAssign(&pendingAssign{gen: in.Assignment.GetGeneration(), a: in.Assignment}, t)
		}
	case InputInvalid:
		m.onAssign(&pendingAssign{gen: in.Generation, invalid: in.Reason}, t)
	case InputDone:
		m.onDone(in, t)
	case InputChecks:
		m.onChecks(in.Epoch, in.Checks, t)
	case InputExit:
		m.onExit(in.Epoch, t)
	case InputAnalysis:
		m.onAnalysis(in.Epoch, in.Verdict, in.Rules, t)
	case InputTick:
		m.evaluate(t)
	}
	return m.take()
}

// Phase is the current phase.
func (m *Machine) Phase() v1.Phase { return m.phase }

// Generation is the generation of the accepted assignment.
func (m *Machine) Generation() int64 { return m.gen }

// Current is the release `current` points at (nil = none).
func (m *Machine) Current() *v1.Assignment { return m.current }

// Target is the accepted assignment being installed or last installed
// (nil = none).
func (m *Machine) Target() *v1.Assignment { return m.target }

// LastGood is the last release that became healthy here (nil = none).
func (m *Machine) LastGood() *v1.Assignment { return m.lastGood }

// Busy reports whether the machine is in the middle of an install, a revert
// or a recovery (as opposed to settled in IDLE, HEALTHY, REVERTED or FAILED).
func (m *Machine) Busy() bool { return m.op != opNone }

// InFlight is the long step in flight and its Seq (0, 0 when none).
func (m *Machine) InFlight() (ActionKind, uint64) {
	if m.inflight == 0 {
		return 0, 0
	}
	return m.inflight, m.seq
}

// FetchSuperseded reports whether the ActFetch in flight will be thrown away
// when it finishes: a newer assignment of another release (or an invalid
// one) is waiting. The caller may cancel the fetch; it still feeds Done for
// it (with the cancellation error, which is then not a failure).
func (m *Machine) FetchSuperseded() bool {
	return m.inflight == ActFetch && m.InstallSuperseded()
}

// InstallSuperseded is FetchSuperseded for any step before the switch:
// the ActFetch, ActVerify or ActStage in flight will be thrown away when it
// finishes. The caller may cancel it; it still feeds Done for it.
func (m *Machine) InstallSuperseded() bool {
	switch m.inflight {
	case ActFetch, ActVerify, ActStage:
	default:
		return false
	}
	if m.op != opInstall || m.pending == nil {
		return false
	}
	p := m.pending
	return p.a == nil || Version(p.a) != Version(m.target)
}

// AnalysisEpoch is the epoch of the process whose analysis verdicts the
// machine uses now (while it checks an install of a release with analysis
// rules, or watches it after HEALTHY); ok is false when it uses none.
func (m *Machine) AnalysisEpoch() (epoch uint64, ok bool) {
	if m.chk.active && m.chk.analyse {
		return m.epoch, true
	}
	return 0, false
}

// Watching reports whether the release is in its watch after HEALTHY.
func (m *Machine) Watching() bool { return m.chk.active && m.chk.watching }

// Snapshot is the durable state now.
func (m *Machine) Snapshot() *Snapshot {
	s := &Snapshot{
		Service:    m.service,
		Phase:      m.phase,
		Generation: m.gen,
		Reason:     m.reason,
		Current:    m.current,
		LastGood:   m.lastGood,
		Target:     m.target,
		CurrentOK:  m.currentOK && m.current != nil,
	}
	if m.chk.active && m.chk.watching {
		s.WatchUntil, s.Previous = m.chk.watchUntil, m.chk.prevGood
	}
	return s
}

// Report is what this machine says to the coordinator now.
func (m *Machine) Report() *v1.ServiceReport {
	r := &v1.ServiceReport{
		Service:         m.service,
		Generation:      m.gen,
		Phase:           m.phase,
		CurrentVersion:  Version(m.current),
		TargetVersion:   Version(m.target),
		LastGoodVersion: Version(m.lastGood),
		Reason:          m.reason,
	}
	if m.refused != "" {
		r.Reason = joinReasons(m.reason, m.refused)
	}
	if !m.now.IsZero() {
		r.At = timestamppb.New(m.now)
	}
	for _, c := range m.checks {
		r.Checks = append(r.Checks, &v1.CheckResult{Name: c.Name, Ok: c.OK, Detail: c.Detail})
	}
	for _, x := range m.rules {
		r.Checks = append(r.Checks, &v1.CheckResult{Name: AnalysisCheckPrefix + x.Rule, Ok: x.Verdict == VerdictPass, Detail: x.Reason})
	}
	return r
}

// AnalysisCheckPrefix prefixes the name of a rule's result in
// ServiceReport.checks.
const AnalysisCheckPrefix = "analysis:"

func (m *Machine) take() []Action {
	a := m.acts
	m.acts = nil
	return a
}

func (m *Machine) emit(a Action) { m.acts = append(m.acts, a) }

func (m *Machine) report() { m.emit(Action{Kind: ActReport, Report: m.Report()}) }

func (m *Machine) persist() { m.emit(Action{Kind: ActPersist, Snapshot: m.Snapshot()}) }

// setPhase changes the phase and emits a report (and a persist when durable).
func (m *Machine) setPhase(p v1.Phase, durable bool) {
	m.phase = p
	if durable {
		m.persist()
	}
	m.report()
}

func (m *Machine) startStep(k ActionKind, a *v1.Assignment) {
	m.seq++
	m.inflight = k
	act := Action{Kind: k, Seq: m.seq, Version: Version(a), Assignment: a}
	if k == ActStart {
		m.epoch++
		act.Epoch = m.epoch
	}
	m.emit(act)
}

// onAssign handles a valid or invalid assignment.
func (m *Machine) onAssign(p *pendingAssign, t time.Time) {
	switch {
	case p.gen < m.gen:
		// A replay (or a coordinator gone back in time): refused, and said
		// in every report until a newer assignment is accepted.
		m.refused = fmt.Sprintf("refused assignment: generation %d (%s) is older than the accepted generation %d",
			p.gen, p.describe(), m.gen)
		m.report()
		return
	case p.gen == m.gen:
		m.report() // repeat: say again where we are
		return
	case m.pending != nil && p.gen <= m.pending.gen:
		return // stale or repeat of the one already waiting
	}
	if m.op != opNone {
		m.pending = p // taken up when the step in flight finishes or the machine settles
		return
	}
	m.apply(p, t)
}

// apply starts acting on an assignment; the machine is settled (or is
// abandoning an install before its switch).
func (m *Machine) apply(p *pendingAssign, t time.Time) {
	m.pending = nil
	m.op = opNone
	m.gen = p.gen
	m.refused = ""
	v := Version(p.a)
	if p.a == nil || m.current == nil || Version(m.current) != v || !m.currentOK {
		m.stopChecks() // a new assignment ends the watch of the running release
	}
	if p.a == nil {
		m.reason = "invalid assignment: " + p.invalid
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		return
	}
	if m.current != nil && Version(m.current) == v && m.currentOK {
		// Already running it and healthy: take the new generation, no restart.
		if Version(m.lastGood) == v {
			m.lastGood = p.a
		}
		m.current = p.a
		m.target = p.a
		m.reason = ""
		m.setPhase(v1.Phase_PHASE_HEALTHY, true)
		return
	}
	m.target = p.a
	m.reason = ""
	m.op = opInstall
	m.setPhase(v1.Phase_PHASE_FETCHING, true)
	m.startStep(ActFetch, m.target)
}

// settle takes up a waiting assignment once nothing is in progress.
func (m *Machine) settle(t time.Time) {
	if m.op == opNone && m.pending != nil {
		m.apply(m.pending, t)
	}
}

func (m *Machine) onDone(in Input, t time.Time) {
	if m.inflight == 0 || in.Seq != m.seq {
		return // not the step in flight: ignore
	}
	k, err := m.inflight, in.Err
	m.inflight = 0
	switch m.op {
	case opInstall:
		m.installDone(k, err, t)
	case opRevert:
		if k == ActSwitch && err != nil {
			if !(in.LinkKnown && in.Link == Version(m.lastGood)) {
				m.revertSwitchFailed(err, in, t)
				return
			}
			err = nil // the link is where the revert wanted it: done
		}
		m.revertDone(k, err, t)
	case opRecover:
		if k == ActSwitch && err != nil && !(in.LinkKnown && in.Link == Version(m.recWhat)) {
			m.recoverSwitchFailed(err, in, t)
			return
		}
		// A failed switch that left the link where recovery wanted it is done.
		m.recoverDone(k, err, t)
	}
}

func (m *Machine) installDone(k ActionKind, err error, t time.Time) {
	v := Version(m.target)
	switch k {
	case ActFetch, ActVerify, ActStage:
		if p := m.pending; p != nil {
			if err == nil && p.a != nil && Version(p.a) == v {
				// Same release, newer generation: carry on with it.
				m.pending = nil
				m.gen = p.gen
				m.target = p.a
				m.persist()
				m.report()
			} else {
				// Abandon before the switch: the old release is untouched.
				m.apply(p, t)
				return
			}
		}
		if err != nil {
			m.failBeforeSwitch(k, err, t)
			return
		}
		switch k {
		case ActFetch:
			m.setPhase(v1.Phase_PHASE_VERIFYING, true)
			m.startStep(ActVerify, m.target)
		case ActVerify:
			m.setPhase(v1.Phase_PHASE_STAGING, true)
			m.startStep(ActStage, m.target)
		case ActStage:
			m.setPhase(v1.Phase_PHASE_SWITCHING, true)
			m.startStep(ActSwitch, m.target)
		}
	case ActSwitch:
		if err != nil {
			// rename(2) did not happen: nothing changed, the old release runs on.
			m.failBeforeSwitch(k, err, t)
			return
		}
		m.current = m.target
		m.currentOK = false
		m.setPhase(v1.Phase_PHASE_STARTING, true)
		if m.running {
			if HasAnalysis(m.target) {
				// The old release's last samples are its baseline.
				m.emit(Action{Kind: ActFreezeBaseline, Version: Version(m.target), Assignment: m.target})
			}
			m.startStep(ActStop, nil)
		} else {
			m.startStep(ActStart, m.target)
		}
	case ActStop:
		// A failed stop has still ended the supervisor; go on.
		m.running = false
		m.startStep(ActStart, m.target)
	case ActStart:
		if err != nil {
			m.running = false
			m.beginRevert(fmt.Sprintf("start %s: %v", v, err), t)
			return
		}
		m.running = true
		m.phase = v1.Phase_PHASE_CHECKING
		m.persist()
		m.beginChecks(m.target, t) // reports (and clears old check results)
		m.evaluate(t)
	}
}

func (m *Machine) failBeforeSwitch(k ActionKind, err error, t time.Time) {
	m.op = opNone
	m.reason = fmt.Sprintf("%s %s: %v", k, Version(m.target), err)
	m.setPhase(v1.Phase_PHASE_FAILED, true)
	m.settle(t)
}

// beginRevert starts going back to the last good release after the target
// failed after its switch.
func (m *Machine) beginRevert(why string, t time.Time) {
	m.op = opRevert
	m.switched = false
	m.reason = why
	m.setPhase(v1.Phase_PHASE_REVERTING, true)
	m.revertNext(t)
}

func (m *Machine) revertNext(t time.Time) {
	switch {
	case m.running:
		m.startStep(ActStop, nil)
	case !m.switched:
		m.startStep(ActSwitch, m.lastGood)
	case m.lastGood != nil:
		m.startStep(ActStart, m.lastGood)
	default:
		m.op = opNone
		m.current = nil
		m.currentOK = false
		m.reason += "; no last good release: service stopped"
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		m.settle(t)
	}
}

func (m *Machine) revertDone(k ActionKind, err error, t time.Time) {
	switch k {
	case ActStop:
		m.running = false
		m.revertNext(t)
	case ActSwitch:
		m.switched = true
		m.current = m.lastGood
		m.persist()
		m.report()
		m.revertNext(t)
	case ActStart:
		if err != nil {
			m.op = opNone
			m.running = false
			m.current = nil
			m.currentOK = false
			m.reason += fmt.Sprintf("; restart last good %s: %v", Version(m.lastGood), err)
			m.setPhase(v1.Phase_PHASE_FAILED, true)
			m.settle(t)
			return
		}
		m.running = true
		m.beginChecks(m.lastGood, t)
		m.evaluate(t)
	}
}

func (m *Machine) recoverDone(k ActionKind, err error, t time.Time) {
	switch k {
	case ActSwitch:
		m.current = m.recWhat
		if m.recWhat == nil {
			m.recoverOutcome(false, "no last good release to run", t)
			return
		}
		m.startStep(ActStart, m.recWhat)
	case ActStart:
		if err != nil {
			m.running = false
			m.current = nil
			m.recoverOutcome(false, fmt.Sprintf("restart %s: %v", Version(m.recWhat), err), t)
			return
		}
		m.running = true
		m.phase = v1.Phase_PHASE_CHECKING
		m.beginChecks(m.recWhat, t)
		m.evaluate(t)
	case ActStop:
		// A process of another release found at Restore is gone (a failed
		// stop has still ended it): now put the last good release back.
		m.running = false
		m.startStep(ActSwitch, m.recWhat)
	}
}

// revertSwitchFailed ends a revert when `current` could not be switched
// back to the last good release: the link may still point at the failed
// release, so nothing is started, nothing is claimed as reverted, and
// current is what the link says.
func (m *Machine) revertSwitchFailed(err error, in Input, t time.Time) {
	m.op = opNone
	m.running = false
	m.currentOK = false
	m.reason += "; " + m.switchBackFailed(m.lastGood, err, in)
	m.setPhase(v1.Phase_PHASE_FAILED, true)
	m.settle(t)
}

// switchBackFailed sets current to what the link says after a failed switch
// back to a (nil: removing the link) and says why.
func (m *Machine) switchBackFailed(a *v1.Assignment, err error, in Input) string {
	why := fmt.Sprintf("switch back to %q: %v", Version(a), err)
	if a == nil {
		why = fmt.Sprintf("remove `current`: %v", err)
	}
	switch {
	case !in.LinkKnown:
		m.current = nil
		why += "; where `current` points is unknown"
	case in.Link == "":
		m.current = nil
		why += "; no `current` link"
	default:
		m.current = m.known(in.Link)
		if m.current == nil {
			why += fmt.Sprintf("; `current` points at unknown %q", in.Link)
		} else {
			why += fmt.Sprintf("; `current` still points at %q", in.Link)
		}
	}
	return why
}

// recoverSwitchFailed ends recovery when `current` could not be switched
// back: the link may still point at an unverified release, so nothing is
// started, nothing is claimed as reverted, and current is what the link says.
func (m *Machine) recoverSwitchFailed(err error, in Input, t time.Time) {
	m.op = opNone
	m.running = false
	m.currentOK = false
	m.reason = "after agent restart " + m.switchBackFailed(m.recWhat, err, in)
	m.setPhase(v1.Phase_PHASE_FAILED, true)
	m.settle(t)
}

// known returns the assignment of a version the machine knows (current,
// last good or target), nil for any other.
func (m *Machine) known(version string) *v1.Assignment {
	for _, a := range []*v1.Assignment{m.current, m.lastGood, m.target} {
		if a != nil && Version(a) == version {
			return a
		}
	}
	return nil
}

// recoverOutcome ends recovery: ok says whether the restarted release passed
// its checks, why says what went wrong otherwise.
func (m *Machine) recoverOutcome(ok bool, why string, t time.Time) {
	m.op = opNone
	m.currentOK = ok && m.recWhat != nil
	switch m.rec {
	case recResume:
		if m.pending != nil {
			m.settle(t)
			return
		}
		m.op = opInstall
		m.reason = ""
		m.setPhase(v1.Phase_PHASE_FETCHING, true)
		m.startStep(ActFetch, m.target)
		return
	case recSettled:
		switch {
		case m.recWhat == nil:
			if m.restored == v1.Phase_PHASE_IDLE {
				m.reason = ""
			}
			p := m.restored
			if p != v1.Phase_PHASE_IDLE {
				p = v1.Phase_PHASE_FAILED
			}
			m.setPhase(p, true)
		case ok:
			m.setPhase(m.restored, true)
		default:
			m.reason = fmt.Sprintf("after agent restart %s", why)
			m.setPhase(v1.Phase_PHASE_FAILED, true)
		}
	}
	m.settle(t)
}

// beginChecks starts a checking period for a just started release.
func (m *Machine) beginChecks(a *v1.Assignment, t time.Time) {
	n := len(a.GetSpec().GetChecks())
	m.chk = checkState{
		active:     true,
		a:          a,
		start:      t,
		deadline:   t.Add(HealthyDeadline(a)),
		minHealthy: MinHealthyTime(a),
		zeroChecks: n == 0,
		// Only an install is analysed: a revert's or a recovery's re-check
		// of the last good release needs its health checks alone.
		analyse:          m.op == opInstall && HasAnalysis(a),
		failInconclusive: FailInconclusive(a),
	}
	if n == 0 {
		// Nothing to probe: healthy means running without exiting.
		m.chk.passing = true
		m.chk.passSince = t
	}
	m.checks = nil
	m.rules = nil
	m.emit(Action{Kind: ActBeginChecks, Epoch: m.epoch, Version: Version(a), Assignment: a})
	m.report()
}

// stopChecks ends the checking period or the watch.
func (m *Machine) stopChecks() {
	if m.chk.active {
		m.chk.active = false
		m.chk.watching = false
		m.emit(Action{Kind: ActStopChecks})
	}
}

// beginWatch turns the checking period of a release that just became
// HEALTHY into its watch until `until` (the checks keep running). prev is
// what a revert during the watch returns to.
func (m *Machine) beginWatch(prev *v1.Assignment, until time.Time) {
	c := &m.chk
	c.watching = true
	c.analyse = HasAnalysis(c.a)
	c.watchUntil = until
	c.failAfter = WatchFailAfter(c.a)
	c.failSince = time.Time{}
	c.prevGood = prev
}

// watchFailed reverts a watched release to the release that was last good
// before it.
func (m *Machine) watchFailed(why string, t time.Time) {
	prev := m.chk.prevGood
	m.stopChecks()
	m.lastGood = prev
	m.currentOK = false
	m.beginRevert(fmt.Sprintf("%s: %s", Version(m.current), why), t)
}

func (m *Machine) onChecks(epoch uint64, results []CheckResult, t time.Time) {
	c := &m.chk
	if !c.active || epoch != m.epoch || t.Before(c.start) || c.zeroChecks {
		return
	}
	changed := len(results) != len(m.checks)
	for i := range results {
		if !changed && (results[i].Name != m.checks[i].Name || results[i].OK != m.checks[i].OK) {
			changed = true
		}
	}
	m.checks = append([]CheckResult(nil), results...)
	allOK := len(results) > 0
	var failing []string
	for _, r := range results {
		if !r.OK {
			allOK = false
			failing = append(failing, fmt.Sprintf("%s: %s", r.Name, r.Detail))
		}
	}
	if allOK {
		if !c.passing {
			c.passing = true
			c.passSince = t
		}
		c.failSince = time.Time{}
	} else {
		if c.failSince.IsZero() {
			c.failSince = t
		}
		c.passing = false
		if len(failing) > 0 {
			c.lastWhy = strings.Join(failing, "; ")
		} else {
			c.lastWhy = "no check results"
		}
	}
	if changed {
		m.report()
	}
	m.evaluate(t)
}

func (m *Machine) onExit(epoch uint64, t time.Time) {
	c := &m.chk
	if !c.active || epoch != m.epoch || t.Before(c.start) {
		return // neither checking nor watching (the supervisor restarts it), or an old process
	}
	c.exits++
	if c.watching {
		if c.exits >= CrashLoopExits {
			m.watchFailed(fmt.Sprintf("crash loop after healthy: %d exits within %s", c.exits, t.Sub(c.start)), t)
		}
		return
	}
	c.lastWhy = fmt.Sprintf("process exited (%d times)", c.exits)
	if c.zeroChecks {
		c.passing = true
		c.passSince = t
	} else {
		c.passing = false
	}
	if c.exits >= CrashLoopExits {
		m.checksFailed(fmt.Sprintf("crash loop: %d exits within %s", c.exits, t.Sub(c.start)), t)
		return
	}
	m.evaluate(t)
}

// onAnalysis takes the verdict of one analysis round.
func (m *Machine) onAnalysis(epoch uint64, v Verdict, results []RuleResult, t time.Time) {
	c := &m.chk
	if !c.active || !c.analyse || epoch != m.epoch || t.Before(c.start) {
		return
	}
	changed := len(results) != len(m.rules)
	for i := range results {
		if !changed && (results[i].Rule != m.rules[i].Rule || results[i].Verdict != m.rules[i].Verdict) {
			changed = true
		}
	}
	c.verdict = v
	m.rules = append([]RuleResult(nil), results...)
	if v == VerdictFail {
		// Worse than allowed: revert at once, while checking or watching.
		why := reasons(results, VerdictFail)
		if why == "" {
			why = "analysis failed"
		}
		if c.watching {
			m.watchFailed(why, t)
		} else {
			m.checksFailed(why, t)
		}
		return
	}
	if changed {
		m.report()
	}
	if !c.watching {
		m.evaluate(t)
	}
}

// reasons joins the reasons of the results with verdict v.
func reasons(results []RuleResult, v Verdict) string {
	var out []string
	for _, r := range results {
		if r.Verdict == v {
			out = append(out, r.Reason)
		}
	}
	return strings.Join(out, "; ")
}

// expireWatch ends the watch if it is over at t (or reverts, if the checks
// failed long enough before it ended).
func (m *Machine) expireWatch(t time.Time) {
	if m.chk.active && m.chk.watching {
		m.evaluate(t)
	}
}

// evaluate decides a checking period or a watch at time t.
func (m *Machine) evaluate(t time.Time) {
	c := &m.chk
	if !c.active {
		return
	}
	if c.watching {
		if !c.failSince.IsZero() {
			at := c.failSince.Add(c.failAfter)
			if !t.Before(at) && at.Before(c.watchUntil) {
				m.watchFailed(fmt.Sprintf("health checks failing for %s after healthy: %s", t.Sub(c.failSince), c.lastWhy), t)
				return
			}
		}
		if !t.Before(c.watchUntil) {
			// The watch is over: only supervised from now on, and the
			// release before it need not be kept any more.
			m.stopChecks()
			m.persist()
		}
		return
	}
	checksOK := c.passing && t.Sub(c.passSince) >= c.minHealthy
	if checksOK {
		switch {
		case !c.analyse || c.verdict == VerdictPass:
			m.checksPassed(t)
			return
		case c.verdict == VerdictInconclusive && c.failInconclusive:
			m.checksFailed(fmt.Sprintf("analysis inconclusive (inconclusive: fail): %s", m.inconclusiveWhy()), t)
			return
		}
	}
	if !t.Before(c.deadline) {
		if checksOK {
			m.checksFailed(fmt.Sprintf("analysis inconclusive at the healthy deadline (%s): %s",
				c.deadline.Sub(c.start), m.inconclusiveWhy()), t)
			return
		}
		why := c.lastWhy
		if why == "" {
			why = "checks did not pass"
		}
		m.checksFailed(fmt.Sprintf("not healthy within %s (checks must pass for %s): %s",
			c.deadline.Sub(c.start), c.minHealthy, why), t)
	}
}

// inconclusiveWhy says why the analysis has not passed yet.
func (m *Machine) inconclusiveWhy() string {
	if m.chk.verdict == 0 {
		return "no analysis verdict yet"
	}
	if why := reasons(m.rules, VerdictInconclusive); why != "" {
		return why
	}
	return "verdict " + m.chk.verdict.String()
}

func (m *Machine) checksPassed(t time.Time) {
	switch m.op {
	case opInstall:
		m.op = opNone
		prev := m.lastGood
		m.lastGood = m.current
		m.currentOK = true
		m.reason = ""
		m.beginWatch(prev, t.Add(Watch(m.chk.a))) // the checks keep running
		m.setPhase(v1.Phase_PHASE_HEALTHY, true)
		m.settle(t)
	case opRevert:
		m.stopChecks()
		m.op = opNone
		m.currentOK = true
		m.setPhase(v1.Phase_PHASE_REVERTED, true)
		m.settle(t)
	case opRecover:
		if m.rec == recSettled && m.restored == v1.Phase_PHASE_HEALTHY && t.Before(m.resumeUntil) {
			m.beginWatch(m.resumePrev, m.resumeUntil) // the agent restarted during the watch
		} else {
			m.stopChecks()
		}
		m.recoverOutcome(true, "", t)
	}
}

func (m *Machine) checksFailed(why string, t time.Time) {
	m.stopChecks()
	switch m.op {
	case opInstall:
		m.beginRevert(fmt.Sprintf("%s: %s", Version(m.target), why), t)
	case opRevert:
		// The last good release fails too: keep it running, say so.
		m.op = opNone
		m.currentOK = false
		m.reason += fmt.Sprintf("; last good %s failed too: %s", Version(m.lastGood), why)
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		m.settle(t)
	case opRecover:
		m.recoverOutcome(false, fmt.Sprintf("%s failed its checks: %s", Version(m.recWhat), why), t)
	}
}
