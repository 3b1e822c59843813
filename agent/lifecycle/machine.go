package lifecycle

import (
	"fmt"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/hookspec"
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
	opAdopt             // Restore adopted the expected process and stops another found beside it first
	opRemove            // REMOVING (remove.go)
)

// proc is a process of the service that the machine knows of: started by
// an ActStart, or found running at Restore.
type proc struct {
	epoch uint64
	v     string         // its release's version ("" unknown)
	a     *v1.Assignment // its release; nil: unknown (found running, of a release the snapshot does not name)
	// ready: it has been serving (ready: started once running, ready:
	// notify once READY=1; an adopted or found process is taken as
	// serving). Only a process that served is drained when stopped.
	ready bool
	// limitsUnknown: a write of limits to its cgroup failed (ActSetLimits),
	// or a failed revert left it serving with the reverted spec's limits
	// (launchFailed): it may run with limits of neither spec the snapshot
	// names, so it is no release's.
	limitsUnknown bool
}

// stopKind says why the ActStop in flight stops its process.
type stopKind int

const (
	stopOp    stopKind = iota // the op's own step (stop before start, a revert's stop)
	stopOld                   // a handover: the new process is ready, the old one goes
	stopFresh                 // the new process did not become ready: it goes, the old one stays
)

// hookRun is the ActHook in flight.
type hookRun struct {
	name string
	a    *v1.Assignment
	// before_stop: the process to stop once it ran, and why it is stopped
	p   *proc
	why stopKind
}

// recoverKind is what to do once recovery has re-checked the release.
type recoverKind int

const (
	recSettled recoverKind = iota // back to the restored phase
	recResume                     // resume the install of the target (crash before the switch)
)

// pendingAssign is a newer assignment waiting for the machine to settle.
type pendingAssign struct {
	gen int64
	// replaces is the accepted generation this one replaces though it is
	// lower (Assignment.replaces_generation; 0 = none): see older.
	replaces int64
	a        *v1.Assignment // nil when invalid
	invalid  string
}

func assigned(a *v1.Assignment, invalid string) *pendingAssign {
	return &pendingAssign{gen: a.GetGeneration(), replaces: a.GetReplacesGeneration(), a: a, invalid: invalid}
}

// older says whether p is older than accepted, the accepted generation: a
// replay, or a coordinator gone back in time. Not when p names accepted as
// the generation it replaces: the leader does that for a generation no
// coordinator of its fleet issued (one far above its own, which a
// compromised coordinator could have sent: rollout.MaxGenerationAhead),
// which would otherwise keep the host from every later assignment.
// Only a generation above 0 replaces one (an invalid assignment is fed to
// the machine too, and one below 1 would lower the accepted generation to
// one the state file refuses, holding the service's later actions: found
// by an attack review).
func (p *pendingAssign) older(accepted int64) bool {
	return older(p.gen, p.replaces, accepted)
}

// older is pendingAssign.older for an assignment of generation gen that
// replaces generation replaces (0: none); the agent's own upgrades follow
// it too (AgentAssign).
func older(gen, replaces, accepted int64) bool {
	return gen < accepted && !(gen > 0 && replaces > 0 && replaces == accepted)
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
	epoch      uint64 // of the checked process
	a          *v1.Assignment
	start      time.Time
	deadline   time.Time
	minHealthy time.Duration
	zeroChecks bool
	passing    bool
	passSince  time.Time
	exits      int    // since the process started (checking and watch)
	lastExit   string // how the last exit with a reason ended (ExitedBecause)
	lastWhy    string

	// validated: the release's validate hook ran and passed (HEALTHY
	// needs it when the release has one; only an install runs it).
	validated bool

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
	// targetEpoch is the epoch of the process started for target by the
	// install under way (0: none yet; Snapshot.TargetEpoch).
	targetEpoch uint64
	// installedInPlace: target was installed in place and no process has been
	// started since (Snapshot.InPlace, ServiceReport.in_place; spec.go).
	installedInPlace bool

	// The service's processes. procs serve (one, or two found at Restore);
	// fresh is the one being started until it is ready and the old ones are
	// stopped (it then becomes the only one in procs). A handover starts
	// fresh beside the one in procs.
	procs    []*proc
	fresh    *proc
	readyBy  time.Time // fresh must be ready by then (zero: not waiting)
	failWhy  string    // why fresh is being stopped (stopFresh)
	stopping *proc     // the process the ActStop in flight stops
	stopWhy  stopKind

	op       op
	pending  *pendingAssign
	inflight ActionKind // long step in flight, 0 = none
	seq      uint64
	switched bool // revert/recover: the switch step is done
	// relink: an install restored from SWITCHING, whose switch may have
	// happened unseen: `current` is switched back to the release that runs
	// (current) and read back before the fetch resumes (resumeFetch).
	relink bool

	epoch  uint64
	chk    checkState
	checks []CheckResult
	rules  []RuleResult // latest analysis results of the checked release
	// periods counts the checking periods begun (beginChecks): a Step
	// whose expiry began one takes its check results as the ended one's.
	periods uint64

	rec      recoverKind
	restored v1.Phase
	recWhat  *v1.Assignment // the release recovery runs
	// the watch the restored HEALTHY release was in
	resumeUntil time.Time
	resumePrev  *v1.Assignment

	// hook is the ActHook in flight (nil: none). hookWhy says which hooks
	// of the release a revert or a recovery starts failed (it goes on
	// regardless, and ends FAILED saying so). deferred is a failure of the
	// checks that came while validate ran, or while an ActSetLimits was in
	// flight: acted on when it ends.
	hook     *hookRun
	hookWhy  string
	deferred string

	now  time.Time
	acts []Action
}

// New returns the machine of a service with nothing installed (IDLE).
func New(service string) *Machine {
	return &Machine{service: service, phase: v1.Phase_PHASE_IDLE}
}

// Restore rebuilds the machine of a service from its persisted snapshot
// after an agent restart. found is what the caller found running of the
// service (none; one; two when the agent stopped in the middle of a
// handover; see Running): services outlive the agent, so usually the
// process the snapshot expects still runs. Restore decides which process
// to adopt (ActAdopt: supervised again, not restarted, and taken as ready)
// and which to stop (ActStop: a process of a release that must not run),
// and resumes where the machine was:
//
//   - settled (IDLE, HEALTHY, REVERTED, FAILED) with the current release
//     running: adopted, the phase stays; a HEALTHY release still in its
//     watch is watched for the rest of it (checks, exits, analysis).
//   - an install before its switch (FETCHING .. SWITCHING), with the
//     current release running (or none ever ran): the install resumes at
//     FETCHING (a staged release is only re-verified) and the running
//     release is adopted. From SWITCHING `current` is switched back to
//     the current release first and read back (resumeFetch): the switch
//     may have happened.
//   - an install after its switch (STARTING, CHECKING): the target's
//     process is adopted or, if it is not running, started (beside the old
//     release's process when both declare sockets, else after stopping
//     it), and checked with a fresh checking period: only the release's
//     own behaviour can fail it, not the restart.
//   - a revert (REVERTING) resumes: the last good release is adopted and
//     re-checked, or `current` switched back and the last good one
//     started (handed over from the failed one, or after stopping it).
//
// A process found beside the adopted one (the agent stopped during a
// handover) is stopped first, drained (pre_stop, shutdown_delay), as the
// handover would have; the machine then carries on as above (an install
// after its switch reports STARTING until then).
//
// When what the snapshot expects is not running (a reboot, a process that
// died while no agent watched it), Restore never leaves an unverified
// release active: it switches `current` back to the last good release (or
// removes it when there is none), restarts that release and checks it
// again (a process of another release still running is stopped first, or
// handed over from when both declare sockets). Afterwards the machine
// returns to the restored phase, or resumes an install interrupted before
// its switch. If the switch back fails, recovery ends FAILED at once,
// starts nothing, and reports as current what the link says (see
// SwitchDone; unknown, so none, if the caller could not tell); a process
// kept for a handover keeps running.
func Restore(s Snapshot, found []Running, now time.Time) (*Machine, []Action) {
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
		// Epochs go on above every one the snapshot names (and every
		// running process's, below): no process started now takes the
		// recorded target's or unknown-limits epoch.
		epoch:            max(s.TargetEpoch, s.LimitsUnknown),
		targetEpoch:      s.TargetEpoch,
		installedInPlace: s.InPlace, // until a process is started (emitStart)
		// HEALTHY and REVERTED mean the current release passed its checks.
		currentOK: s.CurrentOK || s.Phase == v1.Phase_PHASE_HEALTHY || s.Phase == v1.Phase_PHASE_REVERTED,
	}
	for _, f := range found {
		m.epoch = max(m.epoch, f.Epoch) // epochs go on from the running processes'
		m.procs = append(m.procs, &proc{epoch: f.Epoch, v: f.Version, a: s.runs(f), ready: true,
			limitsUnknown: f.Epoch != 0 && f.Epoch == s.LimitsUnknown})
	}
	if s.Phase == v1.Phase_PHASE_REMOVING || s.Phase == v1.Phase_PHASE_REMOVED {
		return m, m.restoreRemove(now)
	}
	cur, good, tgt := Version(s.Current), Version(s.LastGood), Version(s.Target)
	// A config install (or its revert): a found process of the release
	// runs the target's spec when its epoch is the target's (TargetEpoch),
	// else the last good's. Without a recorded epoch it may run either, so
	// it is not adopted as the target's or the last good's: it is stopped
	// (or handed over from) like one of another release (spec.go).
	// A process whose limits are neither spec's (LimitsUnknown: a failed
	// write, or kept by a failed revert of a resize) is no release's, as
	// goodProc says in memory: not adopted as the target's or the last
	// good's, unless its adoption writes them (InPlace: ActAdopt.Limits).
	known := func(e uint64) bool { return s.InPlace || s.LimitsUnknown == 0 || e != s.LimitsUnknown }
	specInstall := specChange(s.Target, s.LastGood)
	targetOf, goodOf := m.foundEpoch(tgt, known), m.foundEpoch(good, known)
	if specInstall && s.TargetEpoch != 0 {
		targetOf = m.foundEpoch(tgt, func(e uint64) bool { return e == s.TargetEpoch && known(e) })
		goodOf = m.foundEpoch(good, func(e uint64) bool { return e != s.TargetEpoch && known(e) })
		specInstall = false
	}
	if inPlaceChange(s.Target, s.LastGood) && (s.InPlace || !resized(s.Target, s.LastGood)) {
		// An in-place install (or its revert): the process of the release
		// runs the same under either spec, so it is both's (spec.go); not
		// a resize installed as any other (not in place: the process the
		// target's start did not replace has the last good limits). Two
		// found (a handover of such a change installed as any other) are
		// still told apart by the recorded epoch.
		targetOf, goodOf, specInstall = m.foundEpoch(tgt, known), m.foundEpoch(good, known), false
		if s.TargetEpoch != 0 {
			if p := m.foundEpoch(tgt, func(e uint64) bool { return e == s.TargetEpoch && known(e) }); p != nil {
				targetOf = p
			}
			if p := m.foundEpoch(good, func(e uint64) bool { return e != s.TargetEpoch && known(e) }); p != nil {
				goodOf = p
			}
		}
	}
	switch s.Phase {
	case v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING, v1.Phase_PHASE_SWITCHING:
		p := m.foundOf(cur)
		switch {
		case m.target == nil:
			m.restored = v1.Phase_PHASE_FAILED
		case p != nil || (len(found) == 0 && m.current == nil && m.lastGood == nil):
			// The release before the install runs on (or there is none):
			// resume the install where it can be proven, at the fetch.
			// From SWITCHING the switch may have happened unseen: FETCHING
			// is durable only once `current` is read back where the
			// snapshot says (resumeFetch).
			m.op = opInstall
			m.relink = s.Phase == v1.Phase_PHASE_SWITCHING
			beside := p != nil && m.keep(p, m.current)
			m.setPhase(v1.Phase_PHASE_FETCHING, !m.relink)
			if beside {
				m.op = opAdopt // then the fetch
				m.stopProc(m.procs[0], stopOld)
			} else {
				m.resumeFetch()
			}
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
		if p := targetOf; p != nil && !specInstall {
			if m.keep(p, m.target) {
				// The handover was under way: the old process goes first.
				m.setPhase(v1.Phase_PHASE_STARTING, false)
				m.stopProc(m.procs[0], stopOld)
				return m, m.take()
			}
			if s.Phase == v1.Phase_PHASE_STARTING && hookspec.Of(m.target.GetSpec(), hookspec.AfterStart) != nil {
				// Its after_start may not have run (or not to its end):
				// hooks run at least once.
				m.setPhase(v1.Phase_PHASE_STARTING, false)
				m.startHook(hookspec.AfterStart, m.target, p, 0)
				return m, m.take()
			}
			m.phase = v1.Phase_PHASE_CHECKING
			m.persist()
			m.beginChecks(m.target, p.epoch, now) // a fresh checking period (reports)
			m.evaluate(now)
			return m, m.take()
		}
		// The release before the install still runs (or another, or
		// nothing): the target is started, beside it or after it.
		m.setPhase(v1.Phase_PHASE_STARTING, false)
		m.installStart(now)
		return m, m.take()
	case v1.Phase_PHASE_REVERTING:
		m.op = opRevert
		m.currentOK = false
		m.report()
		if p := goodOf; p != nil && !specInstall {
			// The revert had started the last good release, or kept its
			// process (the failed one never took over): re-check it, once
			// `current` is switched back (unless it was: the snapshot says).
			beside := m.keep(p, m.lastGood)
			if m.switched = cur == good; m.switched {
				m.current = m.lastGood
			}
			switch {
			case beside:
				m.stopProc(m.procs[0], stopOld)
			case m.switched:
				m.beginChecks(m.lastGood, p.epoch, now)
				m.evaluate(now)
			default:
				m.revertNext(now) // the switch back, then the checks
			}
			return m, m.take()
		}
		m.revertNext(now) // the failed release (or another) is handed over from or stopped first
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
	if m.rec == recSettled && m.restored == v1.Phase_PHASE_HEALTHY {
		// The watch the release was in, resumed for the rest of it.
		m.resumeUntil, m.resumePrev = s.WatchUntil, s.Previous
	}
	if p := m.foundOf(cur); m.rec == recSettled && m.restored != v1.Phase_PHASE_IDLE && p != nil {
		// Settled, and the current release runs: adopted as it is.
		m.phase = m.restored
		if m.keep(p, m.current) {
			m.op = opAdopt // the process beside it goes first
			m.report()
			m.stopProc(m.procs[0], stopOld)
			return m, m.take()
		}
		m.settleAdopted(now)
		return m, m.take()
	}
	m.op = opRecover
	m.recWhat = m.lastGood
	m.currentOK = false
	m.setPhase(v1.Phase_PHASE_STARTING, false)
	m.recoverNext(now) // what runs of another release is stopped (or handed over from) first
	return m, m.take()
}

// release returns the snapshot's assignment of version v (nil: none).
func (s *Snapshot) release(v string) *v1.Assignment {
	for _, a := range []*v1.Assignment{s.Current, s.Target, s.LastGood, s.Previous} {
		if a != nil && v != "" && Version(a) == v {
			return a
		}
	}
	return nil
}

// runs is the assignment a process found running runs: its release's,
// and of a release the snapshot names with two specs (a config install
// or its revert, not in place) the target's for the process started for
// it (TargetEpoch, made durable before that start), the last good's for
// any other: with no recorded epoch none was started for the target
// (spec.go; a state file of an agent before target_epoch cannot tell, and
// the old spec's process is the likelier).
func (s *Snapshot) runs(f Running) *v1.Assignment {
	if !s.InPlace && specChange(s.Target, s.LastGood) && f.Version == Version(s.Target) {
		if s.TargetEpoch != 0 && f.Epoch == s.TargetEpoch {
			return s.Target
		}
		return s.LastGood
	}
	return s.release(f.Version)
}

// foundOf returns the running process of release v (nil: none).
func (m *Machine) foundOf(v string) *proc {
	for _, p := range m.procs {
		if v != "" && p.v == v {
			return p
		}
	}
	return nil
}

// foundEpoch is the process found running of release v whose epoch is
// one of, nil if none.
func (m *Machine) foundEpoch(v string, of func(uint64) bool) *proc {
	for _, p := range m.procs {
		if v != "" && p.v == v && of(p.epoch) {
			return p
		}
	}
	return nil
}

// keep adopts p, found running, as the process of release a (ActAdopt). It
// reports whether another process was found beside it: p is then the new
// process of a handover, ready, and the caller stops the others (drained)
// before it carries on.
func (m *Machine) keep(p *proc, a *v1.Assignment) (beside bool) {
	if p.epoch == 0 {
		m.epoch++ // an unrecorded epoch: 0 means none
		p.epoch = m.epoch
	}
	if p.a != nil && !sameRun(p.a, a) && !(m.installedInPlace && inPlaceChange(p.a, a)) {
		// It runs another spec than the one it is adopted as (a process a
		// failed revert kept serving, adopted as the current release's):
		// no release's, never kept or adopted later as a's (in place, the
		// adoption writes a's limits: ActAdopt.Limits).
		p.limitsUnknown = true
	}
	p.a, p.ready = a, true
	m.procs = without(m.procs, p)
	// In the middle of an in-place change, or after one: the limits on its
	// cgroup may be either spec's, so a's are written again (spec.go).
	m.emit(Action{Kind: ActAdopt, Epoch: p.epoch, Version: Version(a), Assignment: a, Limits: m.installedInPlace})
	if len(m.procs) == 0 {
		m.procs = []*proc{p}
		return false
	}
	m.fresh = p
	return true
}

// settleAdopted settles a restored machine on the current release's
// adopted process: the phase stays; a HEALTHY release still in its watch is
// watched for the rest of it.
func (m *Machine) settleAdopted(t time.Time) {
	if m.restored == v1.Phase_PHASE_HEALTHY && t.Before(m.resumeUntil) {
		m.beginChecks(m.current, m.procs[0].epoch, t)
		m.beginWatch(m.resumePrev, m.resumeUntil)
		m.persist()
	} else {
		m.persist() // a watch that ended meanwhile is over
		m.report()
	}
	m.resumeUntil, m.resumePrev = time.Time{}, nil
}

// without returns ps without p.
func without(ps []*proc, p *proc) []*proc {
	var out []*proc
	for _, q := range ps {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

// Step feeds one input and returns what to do next.
func (m *Machine) Step(in Input) []Action {
	if in.At.After(m.now) {
		m.now = in.At
	}
	t := in.At
	// The watch ends (or reverts, on checks that failed long enough before
	// it ended), and a process late to be ready fails, before anything else
	// happens at t.
	// Check results fed at t were probed for the checking period before
	// those expiries: a period they began (a revert in place re-checks the
	// same process under the last good spec, whose checks may differ) takes
	// nothing from them.
	periods := m.periods
	m.expireWatch(t)
	m.expireReady(t)
	if in.Kind == InputChecks && m.periods != periods {
		return m.take()
	}
	switch in.Kind {
	case InputAssign:
		if in.Assignment != nil {
			m.onAssign(assigned(in.Assignment, ""), t)
		}
	case InputInvalid:
		p := assigned(in.Assignment, in.Reason)
		p.a = nil
		m.onAssign(p, t)
	case InputDone:
		m.onDone(in, t)
	case InputChecks:
		m.onChecks(in.Epoch, in.Checks, t)
	case InputExit:
		m.onExit(in.Epoch, in.Reason, t)
	case InputAnalysis:
		m.onAnalysis(in.Epoch, in.Verdict, in.Rules, t)
	case InputReady:
		m.onReady(in.Epoch, t)
	case InputTick:
		m.evaluate(t)
	}
	return m.take()
}

// Phase is the current phase.
func (m *Machine) Phase() v1.Phase { return m.phase }

// Generation is the generation of the accepted assignment.
func (m *Machine) Generation() int64 { return m.gen }

// Replays says whether the machine refuses a, a valid assignment, as older
// than the accepted one (a replay: it says so in its reports). A removed
// service takes any later release (remove.go).
func (m *Machine) Replays(a *v1.Assignment) bool {
	removed := m.phase == v1.Phase_PHASE_REMOVED && !a.GetRemove()
	return !removed && assigned(a, "").older(m.gen)
}

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
		return m.chk.epoch, true
	}
	return 0, false
}

// HealthyAt is when the checks of the checking period will have passed
// for min_healthy_time if they go on passing (ok is false when no checking
// period runs, it is a watch, or the checks do not pass now). The caller
// feeds a Tick at that time (duty 4), so that HEALTHY is decided then and
// not at the next check result or periodic tick, up to a check interval
// or a tick later. Until that time no Tick changes anything about the
// checks; after it, the decision may still wait for the analysis or the
// validate hook.
func (m *Machine) HealthyAt() (time.Time, bool) {
	c := &m.chk
	if !c.active || c.watching || !c.passing {
		return time.Time{}, false
	}
	return c.passSince.Add(c.minHealthy), true
}

// Watching reports whether the release is in its watch after HEALTHY.
func (m *Machine) Watching() bool { return m.chk.active && m.chk.watching }

// Snapshot is the durable state now.
func (m *Machine) Snapshot() *Snapshot {
	s := &Snapshot{
		Service:     m.service,
		Phase:       m.phase,
		Generation:  m.gen,
		Reason:      m.reason,
		Current:     m.current,
		LastGood:    m.lastGood,
		Target:      m.target,
		CurrentOK:   m.currentOK && m.current != nil,
		TargetEpoch: m.targetEpoch,
		InPlace:     m.installedInPlace,
	}
	if m.chk.active && m.chk.watching {
		s.WatchUntil, s.Previous = m.chk.watchUntil, m.chk.prevGood
	}
	for _, p := range m.procs {
		// A process that Restore, by this snapshot, would take for another
		// spec's than it runs (one a failed revert kept serving, its
		// release assigned again with another spec, or with its own while
		// no process was started for it) is no release's either.
		if p.limitsUnknown || p.a != nil && s.release(p.v) != nil && !sameRun(p.a, s.runs(Running{Version: p.v, Epoch: p.epoch})) {
			s.LimitsUnknown = p.epoch
		}
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
		InPlace:         m.installedInPlace,
	}
	if m.refused != "" {
		r.Reason = joinReasons(m.reason, m.refused)
	}
	r.Reason = boundReason(r.Reason)
	if !m.now.IsZero() {
		r.At = timestamppb.New(m.now)
	}
	// What a service answers its checks and scrapes with ends up in their
	// details: each is bounded, as the coordinator requires.
	for _, c := range m.checks {
		r.Checks = append(r.Checks, &v1.CheckResult{Name: boundText(c.Name, MaxCheckDetail), Ok: c.OK,
			Detail: boundText(c.Detail, MaxCheckDetail)})
	}
	for _, x := range m.rules {
		r.Checks = append(r.Checks, &v1.CheckResult{Name: boundText(AnalysisCheckPrefix+x.Rule, MaxCheckDetail),
			Ok: x.Verdict == VerdictPass, Detail: boundText(x.Reason, MaxCheckDetail)})
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
	if p == v1.Phase_PHASE_STARTING {
		m.installedInPlace = false // a process is about to be started
	}
	if durable {
		m.persist()
	}
	m.report()
}

// startStep starts a long step that is neither a start nor a stop (see
// launch and stopProc).
func (m *Machine) startStep(k ActionKind, a *v1.Assignment) {
	m.seq++
	m.inflight = k
	m.emit(Action{Kind: k, Seq: m.seq, Version: Version(a), Assignment: a})
}

// launch starts release a (ActStart): beside the process that serves when
// one does (a handover: the caller made sure canHandover), else alone. The
// op goes on with launched once the new process is ready (and the old one
// stopped), or with launchFailed.
func (m *Machine) launch(a *v1.Assignment) {
	if hookspec.Of(a.GetSpec(), hookspec.BeforeStart) != nil {
		m.startHook(hookspec.BeforeStart, a, nil, 0) // then emitStart
		return
	}
	m.emitStart(a)
}

// emitStart emits the ActStart of launch.
func (m *Machine) emitStart(a *v1.Assignment) {
	m.epoch++
	m.installedInPlace = false // a process is started: no longer in place
	if a == m.target || m.op != opInstall && sameRun(a, m.target) {
		// A process of the target's spec: also one a recovery starts for
		// a settled release (else a later revert of it, to the release
		// before, would take this process for the last good's).
		m.targetEpoch = m.epoch
		if m.op == opInstall && specChange(m.target, m.lastGood) {
			// Durable before the start: after an agent restart the epoch
			// tells the new spec's process from the old one's (spec.go).
			m.persist()
		}
	}
	m.fresh = &proc{epoch: m.epoch, v: Version(a), a: a}
	m.readyBy = time.Time{}
	m.seq++
	m.inflight = ActStart
	m.emit(Action{Kind: ActStart, Seq: m.seq, Epoch: m.epoch, Version: Version(a), Assignment: a, Beside: len(m.procs) > 0})
}

// stopProc stops p (ActStop), drained when it has been serving: its
// release's before_stop runs first (ActHook), when it has one.
func (m *Machine) stopProc(p *proc, why stopKind) {
	if p.ready && hookspec.Of(p.a.GetSpec(), hookspec.BeforeStop) != nil {
		m.startHook(hookspec.BeforeStop, p.a, p, why) // then emitStop
		return
	}
	m.emitStop(p, why)
}

// emitStop emits the ActStop of stopProc.
func (m *Machine) emitStop(p *proc, why stopKind) {
	m.seq++
	m.inflight = ActStop
	m.stopping, m.stopWhy = p, why
	m.emit(Action{Kind: ActStop, Seq: m.seq, Epoch: p.epoch, Version: p.v, Assignment: p.a, Drain: p.ready})
}

// canHandover reports whether a process of release a can take over from
// what serves without a gap: exactly one process serves, of a known
// release, and both releases declare sockets (the new process starts on
// the same sockets while the old one still accepts).
func (m *Machine) canHandover(a *v1.Assignment) bool {
	return a != nil && len(m.procs) == 1 && m.procs[0].a != nil && HasSockets(m.procs[0].a) && HasSockets(a)
}

// startDone takes the end of the ActStart in flight.
func (m *Machine) startDone(err error, t time.Time) {
	f := m.fresh
	if err != nil {
		m.fresh = nil
		m.launchFailed(err.Error(), t)
		return
	}
	if f.ready || !NotifiesReady(f.a) {
		m.handOver(t)
		return
	}
	m.readyBy = t.Add(ReadyTimeout(f.a)) // it says READY=1 by then, or it fails
}

// onReady takes a READY=1 of the process being started.
func (m *Machine) onReady(epoch uint64, t time.Time) {
	f := m.fresh
	if f == nil || f.epoch != epoch || f.ready {
		return // not the process being started, or already taken
	}
	if m.inflight == ActStart {
		f.ready = true // before its start was reported: taken then
		return
	}
	if !m.readyBy.IsZero() {
		m.handOver(t)
	}
}

// expireReady fails the process being started when it is not ready by its
// deadline.
func (m *Machine) expireReady(t time.Time) {
	if m.fresh != nil && !m.readyBy.IsZero() && !t.Before(m.readyBy) {
		m.freshFailed(fmt.Sprintf("not ready within %s (ready: notify, no READY=1)", ReadyTimeout(m.fresh.a)))
	}
}

// freshFailed stops the process being started, which did not become ready
// (not drained: it never served); what served before serves on. The op
// then goes on with launchFailed(why).
func (m *Machine) freshFailed(why string) {
	m.readyBy = time.Time{}
	m.failWhy = why
	m.stopProc(m.fresh, stopFresh)
}

// handOver: the process being started is ready. The ones that served
// before it are stopped, drained, one after another (stopOld), then it is
// the one that serves and the op goes on (launched).
func (m *Machine) handOver(t time.Time) {
	m.fresh.ready = true
	m.readyBy = time.Time{}
	if len(m.procs) > 0 {
		m.stopProc(m.procs[0], stopOld)
		return
	}
	m.procs = []*proc{m.fresh}
	m.fresh = nil
	m.launched(t)
}

// launched goes on with the op once its new process is ready and serves
// alone: its release's after_start runs (when it has one), then it is
// checked.
func (m *Machine) launched(t time.Time) {
	var a *v1.Assignment
	switch m.op {
	case opInstall:
		a = m.target
	case opRevert:
		a = m.lastGood
	case opRecover:
		a = m.recWhat
	}
	if a != nil && hookspec.Of(a.GetSpec(), hookspec.AfterStart) != nil {
		m.startHook(hookspec.AfterStart, a, m.procs[0], 0) // then checkLaunched
		return
	}
	m.checkLaunched(t)
}

// checkLaunched begins the checks of the process launched (or goes on
// with an adoption).
func (m *Machine) checkLaunched(t time.Time) {
	p := m.procs[0]
	switch m.op {
	case opInstall:
		m.phase = v1.Phase_PHASE_CHECKING
		m.persist()
		m.beginChecks(m.target, p.epoch, t) // reports (and clears old check results)
		m.evaluate(t)
	case opRevert:
		if !m.switched {
			m.revertNext(t) // adopted after a restart: `current` is switched back first
			return
		}
		m.beginChecks(m.lastGood, p.epoch, t)
		m.evaluate(t)
	case opRecover:
		m.phase = v1.Phase_PHASE_CHECKING
		m.beginChecks(m.recWhat, p.epoch, t)
		m.evaluate(t)
	case opAdopt:
		if m.phase == v1.Phase_PHASE_FETCHING {
			m.op = opInstall // the install before its switch resumes
			m.resumeFetch()
			return
		}
		m.op = opNone
		m.settleAdopted(t)
		m.settle(t)
	}
}

// launchFailed goes on with the op when its new process did not start or
// did not become ready (why). What served before serves on.
func (m *Machine) launchFailed(why string, t time.Time) {
	kept := ""
	if len(m.procs) > 0 {
		kept = fmt.Sprintf("; %s keeps serving", m.procs[0].v)
	}
	switch m.op {
	case opInstall:
		m.beginRevert(fmt.Sprintf("start %s: %s", Version(m.target), why), t)
	case opRevert:
		m.op = opNone
		m.currentOK = false
		if len(m.procs) == 0 {
			m.current = nil
		}
		for _, p := range m.procs {
			if p.a != nil && p.v == Version(m.lastGood) && resized(p.a, m.lastGood) {
				// It keeps serving with the reverted spec's limits (a resize
				// installed in place), which the snapshot does not keep as
				// its release's: after an agent restart it is no release's.
				p.limitsUnknown = true
			}
		}
		m.reason += fmt.Sprintf("; restart last good %s: %s%s", Version(m.lastGood), why, kept)
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		m.settle(t)
	case opRecover:
		if len(m.procs) == 0 {
			m.current = nil
		}
		m.recoverOutcome(false, fmt.Sprintf("restart %s: %s%s", Version(m.recWhat), why, kept), t)
	}
}

// stopDone takes the end of the ActStop in flight; it reports whether
// that ends the step (else the op goes on with its own stop).
func (m *Machine) stopDone(t time.Time) bool {
	p, why := m.stopping, m.stopWhy
	m.stopping = nil
	// A failed stop has still ended the supervisor (SIGKILL): it is gone.
	m.procs = without(m.procs, p)
	switch why {
	case stopOld:
		m.handOver(t)
		return true
	case stopFresh:
		m.fresh = nil
		m.launchFailed(m.failWhy, t)
		return true
	}
	return false
}

// onAssign handles a valid or invalid assignment.
func (m *Machine) onAssign(p *pendingAssign, t time.Time) {
	switch {
	case m.phase == v1.Phase_PHASE_REMOVED && m.op == opNone && p.a != nil && !p.isRemove():
		// Removed: any release assigned later installs (remove.go).
		m.apply(p, t)
		return
	case p.older(m.gen):
		// A replay (or a coordinator gone back in time): refused, and said
		// in every report until a newer assignment is accepted.
		m.refused = fmt.Sprintf("refused assignment: generation %d (%s) is older than the accepted generation %d",
			p.gen, p.describe(), m.gen)
		m.report()
		return
	case p.gen == m.gen:
		m.report() // repeat: say again where we are
		return
	case m.pending != nil && p.gen <= m.pending.gen && p.gen >= m.gen:
		return // stale or repeat of the one already waiting (a replacement replaces it too)
	}
	if m.checkingInPlace() && m.newerInPlace(p) {
		return // the check carries on with it (spec.go)
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
	m.installedInPlace = false // until installInPlace
	v := Version(p.a)
	if !m.runsAsIs(p.a) {
		m.stopChecks() // a new assignment ends the watch of the running release
	}
	if p.a == nil {
		m.reason = "invalid assignment: " + p.invalid
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		return
	}
	if p.isRemove() {
		m.beginRemove(t)
		return
	}
	if m.runsAsIs(p.a) {
		// Already running it (with a spec that runs the same) and healthy:
		// take the new generation, no restart. A spec that changes what
		// runs is an install of the same release (spec.go).
		if Version(m.lastGood) == v {
			m.lastGood = p.a
		}
		m.current = p.a
		m.target = p.a
		for _, q := range m.procs {
			if q.v == v {
				// Its next stop uses this spec's before_stop (a broken
				// one is fixed by applying a spec without it).
				q.a = p.a
			}
		}
		m.reason = ""
		m.setPhase(v1.Phase_PHASE_HEALTHY, true)
		return
	}
	if m.inPlace(p.a) {
		// Only how it is judged changes: the process serves on (spec.go).
		m.installInPlace(p.a, t)
		return
	}
	m.target = p.a
	m.targetEpoch = 0
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
	switch {
	case k == ActStart:
		m.startDone(err, t)
		return
	case k == ActHook:
		m.hookDone(err, in.Output, t)
		return
	case k == ActStop && m.stopDone(t):
		return
	case k == ActSetLimits:
		m.limitsDone(err, t) // spec.go
		return
	}
	switch m.op {
	case opInstall:
		if k == ActSwitch && m.relink {
			m.relinked(err, in, t)
			return
		}
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
	case opRemove:
		m.removeDone(k, err, t)
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
			if hookspec.Of(m.target.GetSpec(), hookspec.AfterInstall) != nil {
				m.startHook(hookspec.AfterInstall, m.target, nil, 0) // then afterInstallDone
				return
			}
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
		if len(m.procs) > 0 && HasAnalysis(m.target) {
			// The old release's last samples are its baseline: frozen before
			// it stops, or before the new one shares its sockets.
			m.emit(Action{Kind: ActFreezeBaseline, Version: Version(m.target), Assignment: m.target})
		}
		m.installStart(t)
	case ActStop:
		m.installStart(t)
	}
}

// installStart brings the target up after the switch: beside the process
// that serves when it can take over from it (a handover), else once
// nothing runs any more (each process stopped first, drained).
func (m *Machine) installStart(time.Time) {
	if len(m.procs) > 0 && !m.canHandover(m.target) {
		m.stopProc(m.procs[0], stopOp)
		return
	}
	m.launch(m.target)
}

func (m *Machine) failBeforeSwitch(k ActionKind, err error, t time.Time) {
	m.failedBeforeSwitch(fmt.Sprintf("%s %s: %v", k, Version(m.target), err), t)
}

// failedBeforeSwitch ends an install before its switch: nothing changed on
// the host, the old release runs on.
func (m *Machine) failedBeforeSwitch(why string, t time.Time) {
	m.op = opNone
	m.reason = why
	m.setPhase(v1.Phase_PHASE_FAILED, true)
	m.settle(t)
}

// beginRevert starts going back to the last good release after the target
// failed after its switch.
func (m *Machine) beginRevert(why string, t time.Time) {
	m.op = opRevert
	m.switched = false
	m.hookWhy = ""
	m.reason = why
	if m.revertsInPlace() {
		m.revertInPlace(t) // spec.go
		return
	}
	m.setPhase(v1.Phase_PHASE_REVERTING, true)
	m.revertNext(t)
}

// revertNext takes the revert's next step. Without a handover: stop what
// runs, switch back, start the last good release. With one (the failed
// release and the last good one both declare sockets): switch back, start
// the last good release beside the failed one, and stop that once the
// last good one is ready. When the last good release's process still runs
// (the failed one never took over from it), it is only checked again.
func (m *Machine) revertNext(t time.Time) {
	if g := m.goodProc(); g != nil && len(m.procs) > 1 {
		// The last good release's process serves beside the failed
		// one's (its before_stop refused a handover): that one goes.
		for _, p := range m.procs {
			if p != g {
				m.stopProc(p, stopOp)
				return
			}
		}
	}
	keep := m.keepsLastGood()
	switch {
	case len(m.procs) > 0 && !keep && !m.canHandover(m.lastGood):
		m.stopProc(m.procs[0], stopOp)
	case !m.switched:
		m.startStep(ActSwitch, m.lastGood)
	case m.lastGood == nil:
		m.op = opNone
		m.current = nil
		m.currentOK = false
		m.reason += "; no last good release: service stopped"
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		m.settle(t)
	case keep:
		m.beginChecks(m.lastGood, m.procs[0].epoch, t)
		m.evaluate(t)
	default:
		m.launch(m.lastGood)
	}
}

// keepsLastGood reports whether the one process that serves is of the
// last good release and not of the release being reverted: it served
// throughout (a new process that never became ready did not take over from
// it), so the revert keeps it and only checks it again.
func (m *Machine) keepsLastGood() bool {
	return len(m.procs) == 1 && m.goodProc() != nil
}

// goodProc returns the process that serves of the last good release, when
// that is not the release being reverted (nil: none).
func (m *Machine) goodProc() *proc {
	if m.lastGood == nil || Version(m.lastGood) == Version(m.target) {
		return nil
	}
	for _, p := range m.procs {
		if p.v == Version(m.lastGood) && !p.limitsUnknown && sameRun(p.a, m.lastGood) {
			return p
		}
	}
	return nil
}

func (m *Machine) revertDone(k ActionKind, _ error, t time.Time) {
	switch k {
	case ActStop:
		m.revertNext(t)
	case ActSwitch:
		m.switched = true
		m.current = m.lastGood
		m.persist()
		m.report()
		m.revertNext(t)
	}
}

// recoverNext takes recovery's next step: what runs of another release is
// stopped first (or, when it and the last good release both declare
// sockets, handed over from), `current` is switched back, and the last
// good release started.
func (m *Machine) recoverNext(t time.Time) {
	switch {
	case len(m.procs) > 0 && !m.canHandover(m.recWhat):
		m.stopProc(m.procs[0], stopOp)
	case !m.switched:
		m.startStep(ActSwitch, m.recWhat)
	case m.recWhat == nil:
		m.recoverOutcome(false, "no last good release to run", t)
	default:
		m.launch(m.recWhat)
	}
}

func (m *Machine) recoverDone(k ActionKind, _ error, t time.Time) {
	switch k {
	case ActSwitch:
		m.switched = true
		m.current = m.recWhat
		m.recoverNext(t)
	case ActStop:
		// A process of another release found at Restore is gone (a failed
		// stop has still ended it).
		m.recoverNext(t)
	}
}

// revertSwitchFailed ends a revert when `current` could not be switched
// back to the last good release: the link may still point at the failed
// release, so nothing is started, nothing is claimed as reverted, and
// current is what the link says.
func (m *Machine) revertSwitchFailed(err error, in Input, t time.Time) {
	m.op = opNone
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
	m.currentOK = false
	m.reason = "after agent restart " + m.switchBackFailed(m.recWhat, err, in)
	m.setPhase(v1.Phase_PHASE_FAILED, true)
	m.settle(t)
}

// resumeFetch resumes an install before its switch at the fetch (Restore).
// Restored from SWITCHING (relink), the switch may have happened while no
// agent watched: a switch is never assumed either way, so `current` is
// first switched back to the release that runs (none: the link removed),
// and read back (relinked).
func (m *Machine) resumeFetch() {
	if m.relink {
		m.startStep(ActSwitch, m.current)
		return
	}
	m.startStep(ActFetch, m.target)
}

// relinked takes the end of resumeFetch's switch back. `current` points
// where the snapshot says: FETCHING is made durable and the fetch resumes.
// Otherwise (the link may point at the target, never verified again nor
// started) the install ends FAILED at once, starts nothing, and reports as
// current what the link says, as a revert's or a recovery's failed switch
// back does.
func (m *Machine) relinked(err error, in Input, t time.Time) {
	m.relink = false
	if err != nil && !(in.LinkKnown && in.Link == Version(m.current)) {
		m.op = opNone
		m.currentOK = false
		m.reason = "after agent restart " + m.switchBackFailed(m.current, err, in)
		m.setPhase(v1.Phase_PHASE_FAILED, true)
		m.settle(t)
		return
	}
	m.persist()
	m.startStep(ActFetch, m.target)
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

// beginChecks starts a checking period of release a's process with epoch.
func (m *Machine) beginChecks(a *v1.Assignment, epoch uint64, t time.Time) {
	n := len(a.GetSpec().GetChecks())
	m.periods++
	m.chk = checkState{
		active:     true,
		epoch:      epoch,
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
	m.deferred = ""
	m.emit(Action{Kind: ActBeginChecks, Epoch: epoch, Version: Version(a), Assignment: a})
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
	if !c.active || epoch != c.epoch || t.Before(c.start) || c.zeroChecks {
		return
	}
	results = append([]CheckResult(nil), results...)
	for i := range results {
		results[i].Name, results[i].Detail = printable(results[i].Name), printable(results[i].Detail)
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

func (m *Machine) onExit(epoch uint64, why string, t time.Time) {
	if f := m.fresh; f != nil && f.epoch == epoch && !m.readyBy.IsZero() {
		// It exited before it said READY=1 (the supervisor would restart
		// it): a failed start.
		m.freshFailed("exited before it was ready (ready: notify)")
		return
	}
	c := &m.chk
	if !c.active || epoch != c.epoch || t.Before(c.start) {
		return // neither checking nor watching (the supervisor restarts it), or an old process
	}
	c.exits++
	if why != "" {
		c.lastExit = why
	}
	last := ""
	if c.lastExit != "" {
		last = "; last: " + c.lastExit
	}
	if c.watching {
		if c.exits >= CrashLoopExits {
			m.watchFailed(fmt.Sprintf("crash loop after healthy: %d exits within %s%s", c.exits, t.Sub(c.start), last), t)
		}
		return
	}
	c.lastWhy = fmt.Sprintf("process exited (%d times%s)", c.exits, last)
	if c.zeroChecks {
		c.passing = true
		c.passSince = t
	} else {
		c.passing = false
	}
	if c.exits >= CrashLoopExits {
		m.checksFailed(fmt.Sprintf("crash loop: %d exits within %s%s", c.exits, t.Sub(c.start), last), t)
		return
	}
	m.evaluate(t)
}

// onAnalysis takes the verdict of one analysis round.
func (m *Machine) onAnalysis(epoch uint64, v Verdict, results []RuleResult, t time.Time) {
	c := &m.chk
	if !c.active || !c.analyse || epoch != c.epoch || t.Before(c.start) {
		return
	}
	results = append([]RuleResult(nil), results...)
	for i := range results {
		results[i].Rule, results[i].Reason = printable(results[i].Rule), printable(results[i].Reason)
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
	if !c.active || (m.hook != nil && !c.watching) {
		return // validate runs: decided when it ends
	}
	if m.inflight == ActSetLimits && !c.watching {
		return // the new limits are being written: decided once they are (limitsDone)
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
		if !m.chk.validated && hookspec.Of(m.chk.a.GetSpec(), hookspec.Validate) != nil {
			// The checks (and the analysis) passed: validate, then HEALTHY.
			m.startHook(hookspec.Validate, m.chk.a, m.procs[0], 0) // then validateDone
			return
		}
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
		if m.hookWhy != "" {
			// It runs and passed its checks, but a hook of its start failed.
			m.currentOK = false
			m.reason = joinReasons(m.reason, fmt.Sprintf("last good %s runs, but %s", Version(m.lastGood), m.hookWhy))
			m.hookWhy = ""
			m.setPhase(v1.Phase_PHASE_FAILED, true)
			m.settle(t)
			return
		}
		m.currentOK = true
		m.setPhase(v1.Phase_PHASE_REVERTED, true)
		m.settle(t)
	case opRecover:
		if why := m.hookWhy; why != "" {
			m.hookWhy = ""
			m.stopChecks()
			m.recoverOutcome(false, fmt.Sprintf("%s runs, but %s", Version(m.recWhat), why), t)
			return
		}
		if m.rec == recSettled && m.restored == v1.Phase_PHASE_HEALTHY && t.Before(m.resumeUntil) {
			m.beginWatch(m.resumePrev, m.resumeUntil) // the agent restarted during the watch
		} else {
			m.stopChecks()
		}
		m.recoverOutcome(true, "", t)
	}
}

func (m *Machine) checksFailed(why string, t time.Time) {
	if m.hook != nil || m.inflight == ActSetLimits {
		// validate runs (a crash loop, an analysis fail), or the limits
		// are being written (a crash loop at a lowered memory_max):
		// decided when it ends (one long step at a time).
		if m.deferred == "" {
			m.deferred = why
		}
		return
	}
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

// startHook runs the hook name of release a (ActHook). p is the process it
// is about (before_stop: the one stopped afterwards, for why; after_start,
// validate: the one started; nil: none).
func (m *Machine) startHook(name string, a *v1.Assignment, p *proc, why stopKind) {
	m.seq++
	m.inflight = ActHook
	m.hook = &hookRun{name: name, a: a, p: p, why: why}
	act := Action{Kind: ActHook, Seq: m.seq, Hook: name, Version: Version(a), Assignment: a,
		Timeout: hookspec.Timeout(a.GetSpec(), name), Operation: m.operation()}
	if p != nil {
		act.Epoch = p.epoch
	}
	if name == hookspec.BeforeStop {
		act.Next = m.nextVersion()
	} else {
		act.Previous = m.previousVersion()
	}
	m.emit(act)
}

// operation names the op for a hook's environment.
func (m *Machine) operation() string {
	switch m.op {
	case opInstall:
		return OpInstall
	case opRevert:
		return OpRevert
	case opRecover:
		return OpRecover
	case opAdopt:
		return OpRestore
	case opRemove:
		return OpRemove
	}
	return ""
}

// previousVersion is what a release being started replaces: the last good
// release for an install, the failed one for a revert ("" for none or a
// recovery).
func (m *Machine) previousVersion() string {
	switch m.op {
	case opInstall:
		return Version(m.lastGood)
	case opRevert:
		return Version(m.target)
	}
	return ""
}

// nextVersion is the release that takes over from a process being
// stopped ("" for none).
func (m *Machine) nextVersion() string {
	switch m.op {
	case opInstall:
		return Version(m.target)
	case opRevert:
		return Version(m.lastGood)
	case opRecover:
		return Version(m.recWhat)
	case opAdopt:
		return Version(m.current)
	}
	return ""
}

// hookDone takes the end of the ActHook in flight. A hook that failed (or
// timed out) fails an install as a failing check does: after_install
// before the switch (FAILED, nothing changed), the others by reverting (a
// failed before_stop keeps its process: see beforeStopDone). In a revert or
// a recovery a failed hook is noted and the op goes on.
func (m *Machine) hookDone(err error, output string, t time.Time) {
	h := m.hook
	m.hook = nil
	why := ""
	if err != nil {
		note := ""
		switch {
		case h.name != hookspec.BeforeStop:
		case m.keepsOnFailedStop(h):
			note = fmt.Sprintf(" (%s keeps running)", Version(h.a))
		default:
			note = " (stopped all the same)"
		}
		why = hookFailure(h, note, err, output)
	}
	switch h.name {
	case hookspec.AfterInstall:
		m.afterInstallDone(why, t)
	case hookspec.BeforeStop:
		m.beforeStopDone(h, why, t)
	case hookspec.BeforeStart:
		if why != "" && m.op == opInstall {
			m.beginRevert(fmt.Sprintf("%s: %s", Version(m.target), why), t)
			return
		}
		m.noteHook(why)
		m.emitStart(h.a)
	case hookspec.AfterStart:
		if why != "" && m.op == opInstall {
			m.beginRevert(fmt.Sprintf("%s: %s", Version(m.target), why), t)
			return
		}
		m.noteHook(why)
		m.checkLaunched(t)
	case hookspec.Validate:
		if d := m.deferred; d != "" {
			m.deferred = ""
			m.checksFailed(d, t)
			return
		}
		if why != "" {
			m.checksFailed(why, t)
			return
		}
		m.chk.validated = true
		m.evaluate(t) // HEALTHY if the checks still pass, else checking goes on
	}
}

// noteHook records a failed hook of a revert or a recovery, which goes on.
func (m *Machine) noteHook(why string) {
	if why != "" {
		m.hookWhy = joinReasons(m.hookWhy, why)
	}
}

// afterInstallDone goes on with an install once after_install ran: to the
// switch, or FAILED (nothing was switched: the old release runs on). A
// newer assignment of another release waiting abandons the install.
func (m *Machine) afterInstallDone(why string, t time.Time) {
	if p := m.pending; p != nil {
		if p.a == nil || Version(p.a) != Version(m.target) {
			m.apply(p, t)
			return
		}
		m.pending = nil
		m.gen = p.gen
		m.target = p.a
		m.persist()
		m.report()
	}
	if why != "" {
		m.failedBeforeSwitch(fmt.Sprintf("%s: %s", Version(m.target), why), t)
		return
	}
	m.setPhase(v1.Phase_PHASE_SWITCHING, true)
	m.startStep(ActSwitch, m.target)
}

// beforeStopDone goes on once the before_stop of a process to stop ran.
// When it failed while an install replaces that process (its release says
// it may not stop now), the process is not signalled and keeps serving,
// and the install fails: the host reverts to it. Otherwise (a revert, a
// recovery, a handover finished after an agent restart) the failure is
// put in the reason and the stop goes on: the process must go.
func (m *Machine) beforeStopDone(h *hookRun, why string, t time.Time) {
	if why != "" && m.keepsOnFailedStop(h) {
		if h.why == stopOld && m.fresh != nil {
			// The new process is ready and serves beside it: the revert
			// stops it.
			m.procs = append(m.procs, m.fresh)
			m.fresh = nil
		}
		m.beginRevert(fmt.Sprintf("%s: %s", Version(m.target), why), t)
		return
	}
	if why != "" {
		m.reason = joinReasons(m.reason, why)
	}
	m.emitStop(h.p, h.why)
}

// keepsOnFailedStop reports whether a failure of before_stop h keeps its
// process running: an install replaces it.
func (m *Machine) keepsOnFailedStop(h *hookRun) bool {
	return m.op == opInstall && (h.why == stopOp || h.why == stopOld)
}

// hookFailure says which hook of which release failed (note follows) and
// why, with the end of its output.
func hookFailure(h *hookRun, note string, err error, output string) string {
	why := fmt.Sprintf("hook %s of %s failed%s: %v", h.name, Version(h.a), note, err)
	if tail := outputTail(output); tail != "" {
		why += "; last output: " + tail
	}
	return why
}

// outputTail is the end of a hook's output for a reason: at most
// MaxHookOutput bytes, from a line start when cut, valid UTF-8, its lines
// joined with " | " and other control characters shown as spaces.
func outputTail(out string) string {
	out = strings.TrimRight(out, "\n\r\t ")
	if len(out) > MaxHookOutput {
		out = out[len(out)-MaxHookOutput:]
		if i := strings.IndexByte(out, '\n'); i >= 0 && i < len(out)-1 {
			out = out[i+1:]
		}
	}
	out = strings.ToValidUTF8(out, "\uFFFD")
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		lines[i] = printable(strings.TrimRight(l, "\r"))
	}
	return strings.Join(lines, " | ")
}

// printable is s as valid UTF-8 with its control characters (C0, DEL and
// C1: terminals act on them) shown as spaces: what services, their checks
// and their hooks print reaches operators' terminals through reports.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || (r >= 0x7f && r < 0xa0) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// boundReason keeps a reason within MaxReason bytes (boundText).
func boundReason(s string) string { return boundText(s, MaxReason) }

// boundText keeps s within limit bytes: the middle of a longer one is left
// out (its start says what failed first, its end the latest).
func boundText(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const gap = " [...] "
	head := limit / 4
	tail := limit - head - len(gap)
	return strings.ToValidUTF8(s[:head], "") + gap + strings.ToValidUTF8(s[len(s)-tail:], "")
}
