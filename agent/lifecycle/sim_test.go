package lifecycle

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/hookspec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// edges are the allowed phase changes of a machine outside recovery (see
// doc.go). CHECKING from a settled phase or an install before its switch:
// an install in place (spec.go).
var edges = map[v1.Phase][]v1.Phase{
	v1.Phase_PHASE_IDLE:      {v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_HEALTHY:   {v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REVERTING, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_REVERTED:  {v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_FAILED:    {v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_FETCHING:  {v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_VERIFYING: {v1.Phase_PHASE_STAGING, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_STAGING:   {v1.Phase_PHASE_SWITCHING, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_SWITCHING: {v1.Phase_PHASE_STARTING, v1.Phase_PHASE_FAILED},
	v1.Phase_PHASE_STARTING:  {v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_REVERTING},
	v1.Phase_PHASE_CHECKING:  {v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTING},
	v1.Phase_PHASE_REVERTING: {v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED},
	// Removal (remove.go): from anything settled or an install before its
	// switch; a removed service takes a new release or a removal again.
	v1.Phase_PHASE_REMOVING: {v1.Phase_PHASE_REMOVED, v1.Phase_PHASE_FAILED},
	v1.Phase_PHASE_REMOVED:  {v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REMOVING},
}

// inPlaceEdges are the extra edges of a machine checking an install in
// place: a newer assignment drops it at once (spec.go, newerInPlace) and is
// applied from the last good spec, settled.
var inPlaceEdges = map[v1.Phase][]v1.Phase{
	v1.Phase_PHASE_CHECKING: {v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REMOVING},
}

// recoveryEdges are the extra edges between Restore and the end of a
// recovery (nothing adoptable ran: the last good release is put back and
// re-checked). A recovery never reverts anything: it ends REVERTED only
// when it restored REVERTED.
var recoveryEdges = map[v1.Phase][]v1.Phase{
	v1.Phase_PHASE_STARTING: {v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_IDLE, v1.Phase_PHASE_REMOVING},
	v1.Phase_PHASE_CHECKING: {v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_REMOVING},
}

// restoreKind is what a Restore must do, decided by the simulation's own
// model from the snapshot and what runs.
type restoreKind int

const (
	restoreRecover       restoreKind = iota + 1 // put the last good release back and re-check it
	restoreAdoptSettled                         // settled, the current release runs: adopt it, keep the phase
	restoreResumeFetch                          // an install before its switch: resume at FETCHING
	restoreResumeInstall                        // an install after its switch: adopt or start the target, check it
	restoreResumeRevert                         // a revert: resume it
	restoreResumeRemove                         // a removal: resume it (what runs is stopped)
)

func (k restoreKind) String() string {
	return [...]string{"?", "recover", "adopt-settled", "resume-fetch", "resume-install", "resume-revert", "resume-remove"}[k]
}

// expectRestore decides what Restore must do with snapshot p when the
// processes of found run, and the first phase it reports.
func expectRestore(p *Snapshot, running []Running) (restoreKind, v1.Phase) {
	var found []string
	for _, f := range running {
		found = append(found, f.Version)
	}
	cur, good, tgt := Version(p.Current), Version(p.LastGood), Version(p.Target)
	has := func(v string) bool { return v != "" && slices.Contains(found, v) }
	restored := p.Phase
	switch ph := p.Phase; {
	case ph == v1.Phase_PHASE_REMOVING || ph == v1.Phase_PHASE_REMOVED:
		return restoreResumeRemove, v1.Phase_PHASE_REMOVING
	case preSwitch(ph):
		if tgt == "" {
			restored = v1.Phase_PHASE_FAILED // inconsistent: handled as settled
			break
		}
		if has(cur) || (len(found) == 0 && cur == "" && good == "") {
			return restoreResumeFetch, v1.Phase_PHASE_FETCHING
		}
		return restoreRecover, v1.Phase_PHASE_STARTING
	case ph == v1.Phase_PHASE_STARTING || ph == v1.Phase_PHASE_CHECKING:
		if tgt == "" || cur != tgt {
			restored = v1.Phase_PHASE_FAILED // inconsistent: handled as settled
			break
		}
		// A config install (the target is the last good release with a
		// spec that runs differently): what runs of the release is the
		// target's when its epoch is (TargetEpoch); without one it may run
		// either spec, so it is not adopted.
		// An in-place install: the process runs the same under either
		// spec, so it is the target's whatever its epoch.
		// A resize installed as any other (not in place) is a config
		// install: the process before its start has the old limits.
		isTarget := !specChange(p.Target, p.LastGood) || restoredInPlace(p) || p.TargetEpoch != 0 && len(running) == 1 && running[0].Epoch == p.TargetEpoch
		if has(tgt) && len(found) == 1 && isTarget && !limitsUnknown(p, running[0]) {
			if ph == v1.Phase_PHASE_STARTING && hookspec.Of(p.Target.GetSpec(), hookspec.AfterStart) != nil {
				return restoreResumeInstall, v1.Phase_PHASE_STARTING // after_start runs again first
			}
			return restoreResumeInstall, v1.Phase_PHASE_CHECKING
		}
		// Not running, or running beside another process that goes first.
		return restoreResumeInstall, v1.Phase_PHASE_STARTING
	case ph == v1.Phase_PHASE_REVERTING:
		return restoreResumeRevert, v1.Phase_PHASE_REVERTING
	case !settled(ph):
		restored = v1.Phase_PHASE_FAILED
	case ph == v1.Phase_PHASE_HEALTHY && good != tgt:
		restored = v1.Phase_PHASE_FAILED
	}
	if restored != v1.Phase_PHASE_IDLE && has(cur) {
		return restoreAdoptSettled, restored
	}
	return restoreRecover, v1.Phase_PHASE_STARTING
}

// limitsUnknown reports whether r, found running, is the process the
// snapshot says runs with limits of neither spec it names
// (Snapshot.LimitsUnknown): no release's, so not adopted as the target's
// or the last good's, unless the adoption writes limits (InPlace).
func limitsUnknown(p *Snapshot, r Running) bool {
	return !p.InPlace && p.LimitsUnknown != 0 && r.Epoch == p.LimitsUnknown
}

func allowed(m map[v1.Phase][]v1.Phase, from, to v1.Phase) bool {
	for _, p := range m[from] {
		if p == to {
			return true
		}
	}
	return false
}

func settled(p v1.Phase) bool {
	switch p {
	case v1.Phase_PHASE_IDLE, v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
		return true
	}
	return false
}

func preSwitch(p v1.Phase) bool {
	switch p {
	case v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING, v1.Phase_PHASE_SWITCHING:
		return true
	}
	return false
}

// sim drives one machine with random events and checks invariants on every
// action it returns. Its model of the world is independent of the machine.
type sim struct {
	t        *testing.T
	seed     uint64
	rnd      *rand.Rand
	specs    map[string]*v1.ServiceSpec // the spec each version was last assigned with
	m        *Machine
	now      time.Time
	log      []string
	inflight *Action
	epoch    uint64 // epoch of the last ActStart
	maxGen   int64
	// replacing: (generation replaced, generation) of the assignments sent
	// naming the one they replace (assign).
	replacing map[[2]int64]bool
	pOK       float64

	// model of the checking period
	checking   bool
	chkEpoch   uint64
	chkA       *v1.Assignment
	chkStart   time.Time
	passSince  time.Time // zero: not passing
	zeroChecks bool
	chkInstall bool // an install's check
	inPlaces   int  // installs in place (spec.go)
	// reverts in place (spec.go)
	inPlaceReverts int
	// newer assignments taken while an install in place was checked
	// (dropped or carried on: spec.go, newerInPlace)
	inPlaceNewer int
	// resizes: limits written to a running process (ActSetLimits), of
	// them failed, and written again on adoption (ActAdopt.Limits)
	resizes, resizesFailed, resizeAdoptions int
	chkAnalyse                              bool      // analysed when it has rules: an install's check or a resumed watch
	verdict                                 Verdict   // latest analysis verdict fed for chkEpoch
	failFed                                 bool      // a Fail verdict was fed in this checking period
	exits                                   int       // exits of chkEpoch's process
	failSince                               time.Time // checks failing continuously since (zero: not)
	// failSince before the input being stepped changed it
	failSinceBefore time.Time

	// model of the watch after HEALTHY
	watching   bool
	watchUntil time.Time
	prevGood   string // last good before the watched release
	// the watch a restart interrupted, resumed after recovery
	resumeUntil time.Time
	resumePrev  string
	// a revert during the watch must end on prevGood at that generation
	expectRevert    bool
	expectTo        string
	expectGen       int64
	in              Input  // the input being stepped
	cause           string // why the machine may revert a watched release on it
	lastGoodBefore  string // LastGoodVersion of the previous report
	watchReverts    int
	analysisReverts int
	resumedWatches  int

	// model of the host: the processes that run, by epoch
	procs map[uint64]*simProc
	link  string // target of `current`
	// READY=1 of a process whose start is in flight (taken when it ends)
	earlyReady map[uint64]bool

	everHealthy map[string]bool
	edgesSeen   map[[2]v1.Phase]int
	persisted   *Snapshot
	prev        v1.Phase
	prevGen     int64
	// prevInPlace: the last report said its install was in place
	// (ServiceReport.in_place).
	prevInPlace  bool
	recovering   bool
	afterRestore bool // the next switch must be the recovery's, to the last good release
	// relinking: an install restored from SWITCHING (the switch may have
	// happened): its next long step must switch `current` back to the
	// persisted current, before the fetch
	relinking bool

	// the Restore being applied (0: none), what it must report first, and
	// the processes it found
	restoring    restoreKind
	restoreFirst v1.Phase
	firstSeen    bool // Restore's first report was checked
	found        []Running
	// Restore adopted the settled release beside another process: its
	// watch resumes once that one is stopped (at the ActBeginChecks)
	resumeBeside bool
	// the install's switch just finished: the next stop or start may be
	// preceded by ActFreezeBaseline (and must, with rules, when a process
	// runs)
	installSwitched                       bool
	restoredFrom                          v1.Phase // the phase of the snapshot last restored
	adoptions                             int
	restores                              map[restoreKind]int
	stoppedSinceFetch, switchedSinceFetch bool
	linkAtFetch                           string
	procsAtFetch                          string
	// handovers counts what the handover exercised
	handovers simHandovers

	// hooks: the last hook that ended well (the next step it precedes
	// must follow), the epochs whose before_stop ran (a drained stop
	// needs it when the release has one), the epoch whose validate passed,
	// and what the simulation exercised.
	hookOK     *Action
	stopHooked map[uint64]bool
	validated  uint64
	hookStats  simHooks
	// Restore adopted a settled release's process beside another, which
	// it stops first (drained: its before_stop may take a while)
	adoptingBeside bool
}

// simHooks counts the hooks the simulation ran and failed, by name, and
// the before_stops that failed while an install replaced their process.
type simHooks struct {
	ran, failed map[string]int
	keptRunning int
}

// simProc is a process of the modelled host.
type simProc struct {
	v string
	// limits are the resource limits on its cgroup: its ActStart's, or the
	// last ActSetLimits's (or ActAdopt.Limits's) written to it; limitsBad:
	// a write of them failed (some may be written, some not)
	limits    *v1.Resources
	limitsBad bool
	// run is the assignment it was started with: what it runs (its
	// command, environment, sockets...), whatever the machine later takes
	// it for
	run *v1.Assignment
	// a is its release as the machine knows it: the ActStart's, or the
	// persisted snapshot's of its version once found at a restart (nil:
	// unknown)
	a *v1.Assignment
	// ready: served (ready: started once running, ready: notify once
	// READY=1 was fed, a found process always)
	ready bool
	// readyBy: a ready: notify process whose start was reported must be
	// ready by then (zero: not waiting)
	readyBy time.Time
}

// simHandovers counts the handover's branches the simulation took.
type simHandovers struct {
	beside, drained, notReady, exitedBeforeReady, foundBeside int
}

// procList describes the processes that run, for logs and comparisons.
func (s *sim) procList() string {
	var out []string
	for e, p := range s.procs {
		out = append(out, fmt.Sprintf("%s@%d", p.v, e))
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// only returns the one process that runs (nil: none, or more than one).
func (s *sim) only() (uint64, *simProc) {
	if len(s.procs) != 1 {
		return 0, nil
	}
	for e, p := range s.procs {
		return e, p
	}
	return 0, nil
}

// simSeed replays one seed of TestSimulation.
var (
	simSeed  = flag.Uint64("seed", 0, "TestSimulation: run only this seed and print all its events on failure")
	simSeeds = flag.Int("seeds", 400, "TestSimulation: how many seeds to run (20,000 pass; 50 with -short)")
)

// replayCommand is how to run one seed again.
func replayCommand(seed uint64) string {
	return fmt.Sprintf("go test ./agent/lifecycle -run 'TestSimulation$' -seed %d -v", seed)
}

func (s *sim) fatalf(format string, args ...any) {
	s.t.Helper()
	tail, what := s.log, "all events"
	if len(tail) > 40 && *simSeed == 0 {
		tail, what = tail[len(tail)-40:], "last events"
	}
	s.t.Fatalf("seed %d: %s\n%s:\n  %s\nreplay this seed with all its events: %s",
		s.seed, fmt.Sprintf(format, args...), what, strings.Join(tail, "\n  "), replayCommand(s.seed))
}

// assignment is an assignment of version at gen: mostly with the spec the
// version was last assigned with (a newer generation of the same thing),
// sometimes with a new random spec (a config rollout when the version is
// the one running).
// newer says whether generation gen is newer than prev: above it, or sent
// naming prev as the one it replaces (assign).
func (s *sim) newer(prev, gen int64) bool {
	return gen > prev || s.replacing[[2]int64{prev, gen}]
}

// assign sends a (invalid: as an invalid assignment, with that reason) as
// the leader does: naming the generation the host reports when it is one no
// coordinator issued (above every generation the leader sent, s.maxGen),
// which it replaces. An assignment newer than every one sent is never
// refused as a replay, whatever generation a coordinator made up before.
func (s *sim) assign(a *v1.Assignment, invalid string) {
	s.t.Helper()
	if rep := s.m.Report().GetGeneration(); rep > s.maxGen {
		a.ReplacesGeneration = rep
		if s.replacing == nil {
			s.replacing = map[[2]int64]bool{}
		}
		s.replacing[[2]int64{rep, a.GetGeneration()}] = true
	}
	newest := a.GetGeneration() > s.maxGen
	s.maxGen = max(s.maxGen, a.GetGeneration())
	if invalid != "" {
		s.step(Invalid(a, invalid, s.now))
	} else {
		s.step(Assign(a, s.now))
	}
	if why := fmt.Sprintf("refused assignment: generation %d ", a.GetGeneration()); newest && strings.Contains(s.m.Report().GetReason(), why) {
		s.fatalf("assignment %d (replaces %d), newer than every one sent, refused: %s", a.GetGeneration(), a.GetReplacesGeneration(), s.m.Report().GetReason())
	}
}

func (s *sim) assignment(version string, gen int64) *v1.Assignment {
	if sp := s.specs[version]; sp != nil && s.rnd.IntN(5) == 0 {
		// A spec that changes only how the release is judged (installed
		// in place when it runs healthy): other checks and durations; or
		// only its resource limits (written to the running process), or
		// both.
		a := asgChecks(version, gen, s.rnd.IntN(3))
		j := proto.Clone(sp).(*v1.ServiceSpec)
		switch s.rnd.IntN(3) {
		case 0:
			j.Resources = s.resources()
		case 1:
			j.Resources = s.resources()
			fallthrough
		default:
			j.Checks = a.Spec.Checks
			j.MinHealthyTime = durationpb.New(time.Duration(s.rnd.IntN(15)) * time.Second)
			j.HealthyDeadline = durationpb.New(time.Duration(20+s.rnd.IntN(40)) * time.Second)
		}
		a.Spec = j
		s.specs[version] = j
		return a
	}
	if sp := s.specs[version]; sp != nil && s.rnd.IntN(3) > 0 {
		a := asgChecks(version, gen, 0)
		a.Spec = sp
		return a
	}
	a := s.newAssignment(version, gen)
	if s.specs == nil {
		s.specs = map[string]*v1.ServiceSpec{}
	}
	s.specs[version] = a.Spec
	return a
}

// resources draws resource limits (nil: none).
func (s *sim) resources() *v1.Resources {
	if s.rnd.IntN(4) == 0 {
		return nil
	}
	return &v1.Resources{MemoryMax: fmt.Sprintf("%dMi", 64<<s.rnd.IntN(4)), CpuWeight: uint32(50 * s.rnd.IntN(4))}
}

func (s *sim) newAssignment(version string, gen int64) *v1.Assignment {
	a := asgChecks(version, gen, s.rnd.IntN(3))
	a.Spec.Resources = s.resources()
	a.Spec.MinHealthyTime = durationpb.New(time.Duration(s.rnd.IntN(15)) * time.Second)
	a.Spec.HealthyDeadline = durationpb.New(time.Duration(20+s.rnd.IntN(40)) * time.Second)
	for _, c := range a.Spec.Checks {
		if s.rnd.IntN(2) == 0 {
			c.Interval = durationpb.New(time.Duration(1+s.rnd.IntN(3)) * time.Second)
		}
	}
	if s.rnd.IntN(3) > 0 {
		a.Spec.Analysis = &v1.Analysis{
			Watch: durationpb.New(time.Duration(5+s.rnd.IntN(60)) * time.Second),
			Rules: []*v1.AnalysisRule{{Name: "errors", Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{}}}},
		}
		if s.rnd.IntN(3) == 0 {
			a.Spec.Analysis.Inconclusive = "fail"
		}
	} else if s.rnd.IntN(2) == 0 {
		// No rules: watched for analysis.watch all the same.
		a.Spec.Analysis = &v1.Analysis{Watch: durationpb.New(time.Duration(5+s.rnd.IntN(60)) * time.Second)}
	}
	if s.rnd.IntN(3) > 0 {
		a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:8080"}}
	}
	if s.rnd.IntN(2) == 0 {
		a.Spec.Run.Ready = ReadyNotify
		if s.rnd.IntN(2) == 0 {
			a.Spec.Run.ReadyTimeout = durationpb.New(time.Duration(2+s.rnd.IntN(20)) * time.Second)
		}
	}
	if s.rnd.IntN(2) == 0 {
		a.Spec.Hooks = &v1.Hooks{}
		hook := func() *v1.Hook {
			if s.rnd.IntN(3) > 0 {
				return nil
			}
			return &v1.Hook{Command: []string{"./hook"}, Timeout: durationpb.New(time.Duration(1+s.rnd.IntN(30)) * time.Second)}
		}
		h := a.Spec.Hooks
		h.AfterInstall, h.BeforeStart, h.AfterStart, h.Validate, h.BeforeStop = hook(), hook(), hook(), hook(), hook()
		if h.BeforeStop == nil && s.rnd.IntN(3) == 0 {
			a.Spec.Run.PreStop = &v1.PreStop{Command: []string{"./pre-stop"}} // the alias
		}
	}
	return a
}

// ready feeds a READY=1: mostly of the process waiting to be ready (or of
// one whose start is in flight), sometimes of another (ignored).
func (s *sim) ready() {
	if a := s.inflight; a != nil && a.Kind == ActStart && NotifiesReady(a.Assignment) && s.rnd.IntN(4) == 0 {
		s.feedReady(a.Epoch) // READY=1 before the start's own report
		return
	}
	for e, p := range s.procs {
		if !p.ready && !p.readyBy.IsZero() {
			s.feedReady(e)
			return
		}
	}
	if s.epoch > 0 && s.rnd.IntN(3) == 0 {
		s.feedReady(s.rnd.Uint64N(s.epoch) + 1) // mostly an old or a serving process's: ignored
	}
}

// feedReady feeds a READY=1 of the process with epoch e and updates the
// model as the machine takes it: the process being started becomes ready,
// unless its deadline has passed.
func (s *sim) feedReady(e uint64) {
	if a := s.inflight; a != nil && a.Kind == ActStart && a.Epoch == e {
		s.earlyReady[e] = true
	} else if p := s.procs[e]; p != nil && !p.ready && !p.readyBy.IsZero() && s.now.Before(p.readyBy) {
		p.ready, p.readyBy = true, time.Time{}
	}
	s.step(Ready(e, s.now))
}

// checkFreeze: the baseline is frozen right before the first stop or start
// after an install's switch when a process runs and the target has rules
// (before it stops, or before the new process shares its sockets), and at
// no other stop or start.
func (s *sim) checkFreeze(acts []Action, i int) {
	s.t.Helper()
	j := i - 1
	for j >= 0 && acts[j].Kind == ActPersist && acts[i].Kind == ActStart {
		j-- // a config install's epoch is made durable before its start
	}
	froze := j >= 0 && acts[j].Kind == ActFreezeBaseline
	want := s.installSwitched && len(s.procs) > 0 && HasAnalysis(s.m.Target())
	s.installSwitched = false
	if froze != want {
		s.fatalf("%v in %v (recovering=%v) of an install of %q (rules %v, running %s): baseline frozen=%v",
			acts[i], s.prev, s.recovering, Version(s.m.Target()), HasAnalysis(s.m.Target()), s.procList(), froze)
	}
}

// analysing is whether the model expects the machine to use analysis now.
func (s *sim) analysing() bool {
	return s.checking && s.chkAnalyse && HasAnalysis(s.chkA)
}

// watchCause says why the machine may revert a watched release on the
// input being stepped ("" = no reason).
func (s *sim) watchCause() string {
	if !s.watching {
		return ""
	}
	in := s.in
	// Failing checks are judged before the input's own results count.
	if !s.failSinceBefore.IsZero() {
		at := s.failSinceBefore.Add(WatchFailAfter(s.chkA))
		if !in.At.Before(at) && at.Before(s.watchUntil) {
			return "checks failing"
		}
	}
	if !in.At.Before(s.watchUntil) {
		return ""
	}
	switch {
	case in.Kind == InputAnalysis && in.Epoch == s.chkEpoch && in.Verdict == VerdictFail && HasAnalysis(s.chkA):
		return "analysis fail"
	case in.Kind == InputExit && in.Epoch == s.chkEpoch && s.exits >= CrashLoopExits:
		return "crash loop"
	}
	return ""
}

// reverted reports whether acts report REVERTING.
func reverted(acts []Action) bool {
	return slices.ContainsFunc(acts, func(a Action) bool {
		return a.Kind == ActReport && a.Report.GetPhase() == v1.Phase_PHASE_REVERTING
	})
}

// restoredInPlace: after a restart, a process of the release is the
// target's and the last good's alike: an in-place change (not a resize
// installed as any other, whose old process has the old limits).
func restoredInPlace(p *Snapshot) bool {
	return inPlaceChange(p.Target, p.LastGood) && (p.InPlace || !resized(p.Target, p.LastGood))
}

// revertedInPlace reports whether the revert that acts begin is in place:
// persisted with the last good and the target the same release judged
// differently, and no long step until it ends (or the slice does).
func revertedInPlace(acts []Action) bool {
	var snap *Snapshot
	begun := false
	for _, a := range acts {
		switch {
		case a.Kind == ActPersist && !begun:
			snap = a.Snapshot
		case a.Kind == ActReport && a.Report.GetPhase() == v1.Phase_PHASE_REVERTING:
			begun = true
		case a.Kind == ActReport && begun:
			return snap != nil && inPlaceChange(snap.LastGood, snap.Target)
		case a.Kind.Long() && begun && a.Kind != ActSetLimits: // writing the last good limits back
			return false
		}
	}
	return snap != nil && inPlaceChange(snap.LastGood, snap.Target)
}

func (s *sim) step(in Input) {
	s.t.Helper()
	line := fmt.Sprintf("%s t=%s in %s seq=%d epoch=%d verdict=%v", s.m.Phase(), in.At.Sub(t0), in.Kind, in.Seq, in.Epoch, in.Verdict)
	if a := in.Assignment; a != nil {
		line += fmt.Sprintf(" %q gen=%d replaces=%d remove=%v", Version(a), a.GetGeneration(), a.GetReplacesGeneration(), a.GetRemove())
	}
	s.log = append(s.log, line)
	s.in = in
	s.cause = s.watchCause()
	wasAnalysing := s.analysing()
	// The watch as it was before the step (a watch that ends at this
	// input's time ends before the input counts).
	wasWatching, wasUntil := s.watching, s.watchUntil
	wasPhase := s.m.Phase()
	acts := s.m.Step(in)
	s.apply(acts)
	if wasPhase != v1.Phase_PHASE_REVERTING && reverted(acts) && slices.ContainsFunc(acts, func(a Action) bool { return a.Kind == ActBeginChecks }) {
		// A revert in place (spec.go): the process that served is
		// re-checked under the last good spec, nothing stopped or started.
		if !revertedInPlace(acts) {
			s.fatalf("a revert in place of %q (%v), but the specs run differently or a long step started", Version(s.m.Target()), acts)
		}
		s.inPlaceReverts++
	}
	// A process not ready by its deadline is stopped then, not later.
	for e, p := range s.procs {
		if !p.ready && !p.readyBy.IsZero() && !in.At.Before(p.readyBy) &&
			(s.inflight == nil || s.inflight.Kind != ActStop || s.inflight.Epoch != e) {
			s.fatalf("%s@%d not ready by %v and not stopped at %v", p.v, e, p.readyBy.Sub(t0), in.At.Sub(t0))
		}
	}
	if s.watching && !in.At.Before(s.watchUntil) && s.m.Phase() == v1.Phase_PHASE_HEALTHY {
		if s.m.Watching() {
			s.fatalf("still watching at %v, the watch ended at %v", in.At.Sub(t0), s.watchUntil.Sub(t0))
		}
		if s.checking {
			s.fatalf("the watch ended without ActStopChecks")
		}
	}
	if _, ok := s.m.AnalysisEpoch(); ok != s.analysing() {
		s.fatalf("machine analyses=%v, model %v", ok, s.analysing())
	}
	// The time the agent wakes up for is when the model's checks will
	// have passed for min_healthy_time, while it checks and they pass.
	if at, ok := s.m.HealthyAt(); ok != (s.checking && !s.watching && !s.passSince.IsZero()) ||
		(ok && !at.Equal(s.passSince.Add(MinHealthyTime(s.chkA)))) {
		s.fatalf("HealthyAt %v %v; model: checking %v watching %v passing since %v", ok, at.Sub(t0), s.checking, s.watching, s.passSince.Sub(t0))
	}
	// A Fail reverts at once, while checking or watching.
	if wasAnalysing && in.Kind == InputAnalysis && in.Verdict == VerdictFail && in.Epoch == s.chkEpoch &&
		(!wasWatching || in.At.Before(wasUntil)) && s.m.Phase() != v1.Phase_PHASE_REVERTING &&
		!reverted(acts) && // a revert in place may end at once (spec.go)
		!(s.inflight != nil && (s.inflight.Kind == ActHook || s.inflight.Kind == ActSetLimits)) { // while validate runs or limits are written: when it ends
		s.fatalf("analysis Fail did not revert at once (phase %v)", s.m.Phase())
	}
}

// apply checks and carries out (in the model) the actions of one step.
func (s *sim) apply(acts []Action) {
	s.t.Helper()
	for i := range acts {
		a := acts[i]
		s.log = append(s.log, "  -> "+a.String())
		switch a.Kind {
		case ActFetch:
			// An install restored from SWITCHING resumes knowing where
			// `current` points: switched back first (its switch may have
			// happened; what it fails or is abandoned back to is what runs).
			if s.relinking {
				s.fatalf("%v restored from SWITCHING before `current` was switched back (it points at %q)", a, s.link)
			}
			s.stoppedSinceFetch, s.switchedSinceFetch = false, false
			s.linkAtFetch, s.procsAtFetch = s.link, s.procList()
		case ActStop:
			s.stoppedSinceFetch = true
			s.checkFreeze(acts, i)
			p := s.procs[a.Epoch]
			if p == nil {
				s.fatalf("%v, but no process with epoch %d runs (%s)", a, a.Epoch, s.procList())
			}
			// A process that served is stopped only after its release's
			// before_stop ran (well, or in a revert or a recovery at all).
			if a.Drain && hookspec.Of(p.a.GetSpec(), hookspec.BeforeStop) != nil && !s.stopHooked[a.Epoch] {
				s.fatalf("%v of %s without its before_stop", a, p.v)
			}

			if a.Drain != p.ready {
				s.fatalf("%v of a process that served=%v", a, p.ready)
			}
			if !a.Drain {
				// Only a new process that failed to become ready is stopped
				// without a drain: at its deadline, or once it exited.
				exited := s.in.Kind == InputExit && s.in.Epoch == a.Epoch
				if !exited && (p.readyBy.IsZero() || s.in.At.Before(p.readyBy)) {
					s.fatalf("%v before its readiness deadline %v (input %v at %v)", a, p.readyBy.Sub(t0), s.in.Kind, s.in.At.Sub(t0))
				}
				if exited {
					s.handovers.exitedBeforeReady++
				} else {
					s.handovers.notReady++
				}
			} else {
				s.handovers.drained++
			}
			// Zero downtime: the only process that serves is not stopped
			// before its successor is ready when the two can share the
			// sockets.
			if _, only := s.only(); only == p && p.ready && !s.recovering {
				var next *v1.Assignment
				switch s.prev {
				case v1.Phase_PHASE_STARTING:
					next = s.m.Target()
				case v1.Phase_PHASE_REVERTING:
					next = s.m.LastGood()
				}
				if next != nil && p.a != nil && HasSockets(p.a) && HasSockets(next) && s.restoring == 0 {
					s.fatalf("%v stops the only process that serves (%s) in %v although %s could take over from it",
						a, p.v, s.prev, Version(next))
				}
			}
		case ActHook:
			s.checkHook(acts, i)
		case ActFreezeBaseline:
			j := i + 1
			for j < len(acts) && acts[j].Kind == ActPersist {
				j++ // a config install's epoch is made durable before its start
			}
			if j == len(acts) || (acts[j].Kind != ActStop && acts[j].Kind != ActHook && !(acts[j].Kind == ActStart && acts[j].Beside)) {
				s.fatalf("%v not right before a stop or a start beside the old process", a)
			}
			if a.Version != s.link || !HasAnalysis(a.Assignment) {
				s.fatalf("%v: `current` points at %q; rules %v", a, s.link, HasAnalysis(a.Assignment))
			}
		case ActSwitch:
			s.switchedSinceFetch = true
			if s.relinking && a.Version != Version(s.persisted.Current) {
				s.fatalf("restored from SWITCHING, switched to %q, not back to %q", a.Version, Version(s.persisted.Current))
			}

			if s.afterRestore {
				s.afterRestore = false
				if a.Version != Version(s.persisted.LastGood) {
					s.fatalf("recovery switched to %q, last good is %q", a.Version, Version(s.persisted.LastGood))
				}
			}
		case ActStart:
			s.checkFreeze(acts, i)
			if hookspec.Of(a.Assignment.GetSpec(), hookspec.BeforeStart) != nil && (s.hookOK == nil || s.hookOK.Hook != hookspec.BeforeStart) &&
				!s.recovering && s.prev != v1.Phase_PHASE_REVERTING {
				s.fatalf("%v of an install without its before_start", a)
			}

			if a.Beside {
				// A handover: beside the one process that serves, both
				// releases declaring sockets.
				_, p := s.only()
				if p == nil || p.a == nil || !HasSockets(p.a) || !HasSockets(a.Assignment) || !p.ready {
					s.fatalf("%v beside %s", a, s.procList())
				}
				s.handovers.beside++
			} else if len(s.procs) > 0 {
				// Otherwise whatever ran was stopped first.
				s.fatalf("start %s while %s runs", a.Version, s.procList())
			}
		case ActSetLimits:
			// Only to the one process that serves, of the release, in an
			// install in place or its revert (spec.go).
			p := s.procs[a.Epoch]
			if e, only := s.only(); only == nil || e != a.Epoch || p.v != a.Version || !p.ready {
				s.fatalf("%v, but %s runs", a, s.procList())
			}
			if ph := s.m.Phase(); ph != v1.Phase_PHASE_CHECKING && ph != v1.Phase_PHASE_REVERTING {
				s.fatalf("%v in %v", a, ph)
			}
			if p.a == nil || !runsSame(p.a, a.Assignment) {
				s.fatalf("%v to a process of another run spec", a)
			}
			s.resizes++
		case ActRemove:
			// Files go only once nothing runs, and only when removing.
			if len(s.procs) > 0 || s.m.Phase() != v1.Phase_PHASE_REMOVING {
				s.fatalf("remove in %v while %s runs", s.m.Phase(), s.procList())
			}
		case ActAdopt:
			if s.restoring == 0 {
				s.fatalf("%v outside Restore", a)
			}
			var f *Running
			for i := range s.found {
				if s.found[i].Version == a.Version && (s.found[i].Epoch == a.Epoch || s.found[i].Epoch == 0) {
					f = &s.found[i]
				}
			}
			if f == nil || s.procs[f.Epoch] == nil {
				s.fatalf("%v, but %v runs", a, s.found)
			}
			if f.Epoch != a.Epoch {
				// An unrecorded epoch gets a new one.
				s.procs[a.Epoch] = s.procs[f.Epoch]
				delete(s.procs, f.Epoch)
			}
			s.procs[a.Epoch].a = a.Assignment // adopted as the release the machine names
			s.epoch = a.Epoch
			s.adoptions++
			if a.Limits {
				s.procs[a.Epoch].limits, s.procs[a.Epoch].limitsBad = a.Assignment.GetSpec().GetResources(), false
				s.resizeAdoptions++
			}
		case ActBeginChecks:
			s.checking = true
			s.watching = false
			s.chkEpoch = a.Epoch
			s.chkA = a.Assignment
			s.chkStart = s.now
			// A recovery's checks that passed with a newer assignment of the
			// same release waiting go on to its install in place at once,
			// with no settled phase between: the recovery is over.
			afterRecovery := s.recovering && s.restoring == 0 && s.prev == v1.Phase_PHASE_CHECKING && s.newer(s.prevGen, s.m.Generation())
			if afterRecovery {
				s.recovering = false
			}
			s.chkInstall = !s.recovering && s.prev == v1.Phase_PHASE_STARTING
			if !s.recovering && s.m.Phase() == v1.Phase_PHASE_CHECKING && (settled(s.prev) || preSwitch(s.prev) || s.dropsInPlace() || afterRecovery) {
				// An install in place (spec.go): the process that serves,
				// judged under a spec that differs only in how it is judged.
				if p := s.procs[a.Epoch]; p == nil || p.a == nil || !runsSame(p.a, a.Assignment) {
					s.fatalf("in-place install of %q epoch %d, but its process runs another spec", a.Version, a.Epoch)
				}
				s.chkInstall = true
				s.inPlaces++
			}
			if s.restoring != 0 {
				s.chkInstall = s.restoring == restoreResumeInstall
			}
			s.chkAnalyse = s.chkInstall
			s.verdict, s.failFed = 0, false
			s.exits = 0
			s.failSince = time.Time{}
			s.zeroChecks = len(a.Assignment.GetSpec().GetChecks()) == 0
			s.passSince = time.Time{}
			if s.zeroChecks {
				s.passSince = s.now
			}
			if e, p := s.only(); p == nil || e != a.Epoch || p.v != a.Version || !p.ready {
				s.fatalf("checking %q epoch %d but %s runs", a.Version, a.Epoch, s.procList())
			}
			if s.resumeBeside {
				// The adopted release's watch, resumed once the process
				// beside it is gone.
				s.resumeBeside = false
				if s.m.Phase() == v1.Phase_PHASE_HEALTHY && s.now.Before(s.persisted.WatchUntil) {
					s.watching = true
					s.watchUntil = s.persisted.WatchUntil
					s.prevGood = Version(s.persisted.Previous)
					s.chkAnalyse = true
					s.resumedWatches++
				}
			}
		case ActStopChecks:
			s.checking = false
			s.watching = false
		case ActPersist:
			s.persisted = a.Snapshot
			// Only a HEALTHY release is watched; Previous only with a watch.
			if w := !a.Snapshot.WatchUntil.IsZero(); (w && a.Snapshot.Phase != v1.Phase_PHASE_HEALTHY) || (!w && a.Snapshot.Previous != nil) {
				s.fatalf("persisted %v with watch until %v previous %q", a.Snapshot.Phase, a.Snapshot.WatchUntil, Version(a.Snapshot.Previous))
			}
		case ActReport:
			s.checkReport(a.Report)
		}
		if a.Kind.Long() && a.Kind != ActHook {
			s.followsHook(a)
		}
		if a.Kind.Long() {
			if s.inflight != nil {
				s.fatalf("second long step %v while %v in flight", a, *s.inflight)
			}
			s.inflight = &a
			if a.Kind == ActStart {
				s.epoch = a.Epoch
			}
		}
	}
}

func (s *sim) checkReport(r *v1.ServiceReport) {
	s.t.Helper()
	p := r.Phase
	if p == v1.Phase_PHASE_STARTING && s.prev == v1.Phase_PHASE_SWITCHING && !s.recovering && s.restoring == 0 {
		s.installSwitched = true
	}
	if s.restoring != 0 && !s.firstSeen {
		// Restore's first report: what the model decided, from where the
		// snapshot was (not an edge of the machine's own).
		if p != s.restoreFirst {
			s.fatalf("restore (%v) of %v with %v running reported %v first, want %v",
				s.restoring, s.persisted.Phase, s.found, p, s.restoreFirst)
		}
		if s.restoring == restoreAdoptSettled && p == v1.Phase_PHASE_HEALTHY && s.now.Before(s.persisted.WatchUntil) && !s.resumeBeside {
			// The adopted release is watched for the rest of its window.
			if !s.checking {
				s.fatalf("adopted HEALTHY release within its watch (until %v) is not checked", s.persisted.WatchUntil.Sub(t0))
			}
			s.watching = true
			s.watchUntil = s.persisted.WatchUntil
			s.prevGood = Version(s.persisted.Previous)
			s.failSince = time.Time{}
			s.chkAnalyse = true
			s.resumedWatches++
		}
		s.firstSeen = true
	} else if p != s.prev {
		ok := allowed(edges, s.prev, p) || (s.recovering && allowed(recoveryEdges, s.prev, p)) ||
			(s.dropsInPlace() && s.newer(s.prevGen, r.Generation) && allowed(inPlaceEdges, s.prev, p))
		if !ok {
			s.fatalf("phase edge %v -> %v not allowed (recovering=%v)", s.prev, p, s.recovering)
		}
	}
	if s.recovering && p == v1.Phase_PHASE_REVERTED && s.restoredFrom != v1.Phase_PHASE_REVERTED {
		s.fatalf("a recovery from %v ended REVERTED", s.restoredFrom)
	}
	if strings.Contains(r.Reason, "agent restarted before") {
		s.fatalf("%v blames the agent's restart on the release: %s", p, r.Reason)
	}
	if r.Generation < s.prevGen && s.prev != v1.Phase_PHASE_REMOVED && !s.newer(s.prevGen, r.Generation) {
		// (A removed service takes any later assignment: remove.go. An
		// assignment sent naming the generation it replaces takes its
		// place: assign.)
		s.fatalf("generation went back %d -> %d", s.prevGen, r.Generation)
	}
	// Healthy only after passing continuously for min_healthy_time.
	fromChecks := (s.prev == v1.Phase_PHASE_CHECKING || s.prev == v1.Phase_PHASE_REVERTING) && p != s.prev &&
		!(s.dropsInPlace() && s.newer(s.prevGen, r.Generation)) &&
		(p == v1.Phase_PHASE_HEALTHY || p == v1.Phase_PHASE_REVERTED || (s.recovering && settled(p) && p != v1.Phase_PHASE_FAILED))
	if fromChecks {
		install := s.prev == v1.Phase_PHASE_CHECKING && p == v1.Phase_PHASE_HEALTHY && !s.recovering
		resumed := s.prev == v1.Phase_PHASE_CHECKING && p == v1.Phase_PHASE_HEALTHY && s.recovering &&
			s.now.Before(s.resumeUntil)
		if s.checking != (install || resumed) {
			s.fatalf("%v: checks running=%v, want %v (the watch of an install, or resumed after a restart)", p, s.checking, install || resumed)
		}
		if resumed {
			s.resumedWatches++
			s.watching = true
			s.watchUntil = s.resumeUntil
			s.prevGood = s.resumePrev
			s.failSince = time.Time{}
			s.chkAnalyse = true
		}
		if install && HasAnalysis(s.chkA) && s.verdict != VerdictPass {
			s.fatalf("HEALTHY with analysis rules while the latest verdict is %v", s.verdict)
		}
		if install && hookspec.Of(s.chkA.GetSpec(), hookspec.Validate) != nil && s.validated != s.chkEpoch {
			s.fatalf("HEALTHY on %s without its validate", r.CurrentVersion)
		}
		if install {
			s.watching = true
			s.watchUntil = s.now.Add(Watch(s.chkA))
			s.prevGood = s.lastGoodBefore
			s.failSince = time.Time{}
		}
		min := MinHealthyTime(s.chkA)
		if s.passSince.IsZero() || s.now.Sub(s.passSince) < min {
			s.fatalf("%v on %s but checks passed only since %v (now %v, min %v)", p, r.CurrentVersion, s.passSince, s.now, min)
		}
		if Version(s.chkA) != r.CurrentVersion {
			s.fatalf("%v on %q but %q was checked", p, r.CurrentVersion, Version(s.chkA))
		}
		if s.prev == v1.Phase_PHASE_CHECKING && p == v1.Phase_PHASE_HEALTHY && !s.recovering {
			s.everHealthy[r.CurrentVersion] = true
		}
	}
	if r.LastGoodVersion != "" && !s.everHealthy[r.LastGoodVersion] {
		s.fatalf("last good %q never became healthy", r.LastGoodVersion)
	}
	switch p {
	case v1.Phase_PHASE_REMOVED:
		if r.CurrentVersion != "" || r.LastGoodVersion != "" || r.TargetVersion != "" || len(s.procs) > 0 || s.link != "" {
			s.fatalf("REMOVED with current=%q last good=%q target=%q, running %s, link %q",
				r.CurrentVersion, r.LastGoodVersion, r.TargetVersion, s.procList(), s.link)
		}
		s.everHealthy = map[string]bool{} // nothing of the service remains
	case v1.Phase_PHASE_HEALTHY:
		// A HEALTHY release's process runs with the current spec (a newer
		// generation of it is taken without a restart, hooks included).
		for _, q := range s.procs {
			if q.v == r.CurrentVersion {
				q.a = s.m.Current()
			}
		}
		if r.CurrentVersion == "" || r.CurrentVersion != r.LastGoodVersion || r.CurrentVersion != r.TargetVersion {
			s.fatalf("HEALTHY with current=%q last good=%q target=%q", r.CurrentVersion, r.LastGoodVersion, r.TargetVersion)
		}
		if _, only := s.only(); only == nil || only.v != r.CurrentVersion {
			s.fatalf("HEALTHY on %q but %s runs", r.CurrentVersion, s.procList())
		}
		s.checkLimits(r)
	case v1.Phase_PHASE_REVERTED:
		if r.CurrentVersion == "" || r.CurrentVersion != r.LastGoodVersion {
			s.fatalf("REVERTED with current=%q last good=%q", r.CurrentVersion, r.LastGoodVersion)
		}
		if _, only := s.only(); only == nil || only.v != r.CurrentVersion {
			s.fatalf("REVERTED on %q but %s runs", r.CurrentVersion, s.procList())
		}
		s.checkLimits(r)
	case v1.Phase_PHASE_FAILED:
		if s.prev == v1.Phase_PHASE_REMOVING && len(s.procs) > 0 {
			s.fatalf("a removal ended FAILED with %s running", s.procList())
		}
		if preSwitch(s.prev) {
			if s.stoppedSinceFetch {
				s.fatalf("FAILED before the switch but the old release was stopped")
			}
			if s.procList() != s.procsAtFetch || s.link != s.linkAtFetch {
				s.fatalf("FAILED before the switch changed the host: running %q->%q link %q->%q",
					s.procsAtFetch, s.procList(), s.linkAtFetch, s.link)
			}
		}
	}
	if settled(p) && len(s.procs) > 1 && !s.adoptingBeside {
		s.fatalf("settled in %v with %s running", p, s.procList())
	}
	if settled(p) && r.CurrentVersion != "" && r.CurrentVersion != r.LastGoodVersion {
		// Only after a switch back that failed may this be said, and only
		// truthfully: FAILED, the link points there, and nothing runs but
		// that release, the last good one (kept serving in a handover), or
		// the one that served when the install began (a handover whose new
		// process never became ready kept it, and the revert's switch back
		// then failed: seen once config installs of a running release,
		// issue 14, took the simulation down new paths). That one may be
		// of neither release: a FAILED revert whose restart of the last good
		// release failed left it serving (the release it reverted), and the
		// next install began beside it.
		_, only := s.only()
		if p != v1.Phase_PHASE_FAILED || r.CurrentVersion != s.link ||
			(len(s.procs) > 0 && (only == nil || (only.v != r.CurrentVersion && only.v != r.LastGoodVersion && only.v != s.linkAtFetch &&
				s.procList() != s.procsAtFetch))) {
			s.fatalf("settled in %v with current %q != last good %q (link %q, running %s)",
				p, r.CurrentVersion, r.LastGoodVersion, s.link, s.procList())
		}
	}
	if s.recovering && p == v1.Phase_PHASE_REVERTED && s.link != r.CurrentVersion {
		s.fatalf("REVERTED on %q after a restart but `current` points at %q", r.CurrentVersion, s.link)
	}
	if s.prev == v1.Phase_PHASE_HEALTHY && p == v1.Phase_PHASE_REVERTING {
		cause := s.cause
		if cause == "" {
			s.fatalf("reverted a HEALTHY release without cause (watching=%v until %v, in %v at %v)",
				s.watching, s.watchUntil.Sub(t0), s.in.Kind, s.in.At.Sub(t0))
		}
		if r.Generation != s.prevGen || r.LastGoodVersion != s.prevGood {
			s.fatalf("watch revert (%s) at gen %d to last good %q, want gen %d and %q", cause, r.Generation, r.LastGoodVersion, s.prevGen, s.prevGood)
		}
		s.expectRevert, s.expectTo, s.expectGen = true, s.prevGood, r.Generation
		s.watchReverts++
		if cause == "analysis fail" {
			s.analysisReverts++
		}
	}
	if s.expectRevert && settled(p) {
		s.expectRevert = false
		switch {
		case p == v1.Phase_PHASE_REVERTED && (r.CurrentVersion != s.expectTo || r.Generation != s.expectGen):
			s.fatalf("watch revert ended on %q gen %d, want %q gen %d", r.CurrentVersion, r.Generation, s.expectTo, s.expectGen)
		case p == v1.Phase_PHASE_REVERTED && s.expectTo == "":
			s.fatalf("watch revert without a last good release ended REVERTED")
		case p != v1.Phase_PHASE_REVERTED && p != v1.Phase_PHASE_FAILED:
			s.fatalf("watch revert ended %v", p)
		}
	}
	if s.recovering && (settled(p) || p == v1.Phase_PHASE_FETCHING) {
		s.recovering = false
	}
	if s.dropsInPlace() && s.newer(s.prevGen, r.Generation) {
		s.inPlaceNewer++
	}
	if s.edgesSeen != nil && p != s.prev {
		s.edgesSeen[[2]v1.Phase{s.prev, p}]++
	}
	s.prev = p
	s.prevGen = r.Generation
	s.prevInPlace = r.InPlace
	s.lastGoodBefore = r.LastGoodVersion
}

// checkLimits: a release reported HEALTHY or REVERTED runs with the
// resource limits of the current spec on its process's cgroup (started
// with them, or written: an in-place resize, its revert, an adoption in
// the middle of either).
func (s *sim) checkLimits(r *v1.ServiceReport) {
	s.t.Helper()
	_, p := s.only()
	snap := s.persisted // made durable right before the report (the machine may have gone on in the same step)
	if p == nil || snap == nil || snap.Phase != r.Phase || snap.Generation != r.Generation {
		return
	}
	if want := snap.Current.GetSpec().GetResources(); p.limitsBad || !proto.Equal(p.limits, want) {
		s.fatalf("%v on %q with limits %v (a write failed: %v) on its process, the current spec's are %v",
			r.Phase, r.CurrentVersion, p.limits, p.limitsBad, want)
	}
	// And what runs: the process was started with a spec that runs as the
	// current one does (differing at most in how it is judged, and in
	// limits, checked above).
	if p.run != nil && specChange(p.run, snap.Current) && !inPlaceChange(p.run, snap.Current) {
		s.fatalf("%v on %q while its process runs another spec: started with %v, the current spec is %v",
			r.Phase, r.CurrentVersion, p.run.GetSpec(), snap.Current.GetSpec())
	}
}

// dropsInPlace reports whether the machine was checking an install in
// place at its last report: a newer assignment drops that check at once.
func (s *sim) dropsInPlace() bool {
	return !s.recovering && s.prev == v1.Phase_PHASE_CHECKING && s.prevInPlace
}

// finish completes the step in flight in the model and feeds Done.
func (s *sim) finish() {
	a := *s.inflight
	s.inflight = nil
	var err error
	if s.rnd.Float64() < 0.15 {
		err = errors.New("random failure")
	}
	switch a.Kind {
	case ActSwitch:
		if err == nil {
			s.link = a.Version
		}
	case ActSetLimits:
		if p := s.procs[a.Epoch]; p != nil {
			if err == nil {
				p.limits, p.limitsBad = a.Assignment.GetSpec().GetResources(), false
			} else {
				p.limitsBad = true
				s.resizesFailed++
			}
		}
	case ActStart:
		if err == nil {
			p := &simProc{v: a.Version, a: a.Assignment, ready: !NotifiesReady(a.Assignment) || s.earlyReady[a.Epoch],
				limits: a.Assignment.GetSpec().GetResources(), run: a.Assignment}
			if !p.ready {
				p.readyBy = s.now.Add(ReadyTimeout(a.Assignment))
			}
			s.procs[a.Epoch] = p
		}
		delete(s.earlyReady, a.Epoch)
	case ActStop:
		delete(s.procs, a.Epoch) // a failed stop still ends the process (SIGKILL)
		if len(s.procs) <= 1 {
			s.adoptingBeside = false
		}
	case ActHook:
		s.hookEnded(a, err)
		return
	case ActRemove:
		if err == nil {
			s.link = ""
		}
	}
	if a.Kind == ActSwitch && s.relinking {
		// The switch back after a restart from SWITCHING: if it failed,
		// the install ends FAILED on what the link says, the host as it
		// is now (the switch before the restart changed it).
		s.relinking = false
		s.stoppedSinceFetch, s.switchedSinceFetch = false, false
		s.linkAtFetch, s.procsAtFetch = s.link, s.procList()
	}
	if a.Kind == ActSwitch {
		s.step(SwitchDone(a.Seq, err, s.link, s.now))
		return
	}
	s.step(Done(a.Seq, err, s.now))
}

// restart restarts the agent: the step in flight may or may not have
// happened; the service's process outlives the agent (unless the host
// rebooted or it died meanwhile) and Restore is told what runs.
func (s *sim) restart() {
	s.log = append(s.log, "RESTART")
	if a := s.inflight; a != nil && s.rnd.IntN(2) == 0 {
		// It happened, but nobody was told.
		switch a.Kind {
		case ActSwitch:
			s.link = a.Version
		case ActStart:
			s.procs[a.Epoch] = &simProc{v: a.Version, limits: a.Assignment.GetSpec().GetResources(), run: a.Assignment}
		case ActStop:
			delete(s.procs, a.Epoch)
		case ActRemove:
			s.link = ""
		case ActSetLimits:
			if p := s.procs[a.Epoch]; p != nil {
				p.limits, p.limitsBad = a.Assignment.GetSpec().GetResources(), false
			}
		}
		s.log = append(s.log, "  (the "+a.Kind.String()+" in flight happened)")
	}
	s.inflight = nil
	s.hookOK = nil
	s.checking = false
	s.watching = false
	s.expectRevert = false
	s.installSwitched = false
	s.earlyReady = map[uint64]bool{}
	switch x := s.rnd.IntN(10); {
	case x < 2:
		clear(s.procs) // a reboot, or the processes died while no agent watched
		s.log = append(s.log, "  (nothing runs)")
	case x < 3 && len(s.procs) > 1:
		for e := range s.procs {
			delete(s.procs, e) // one of two died
			break
		}
		s.log = append(s.log, "  (one process died)")
	}
	if s.persisted == nil {
		if len(s.procs) > 0 {
			s.fatalf("%s runs but nothing was ever persisted", s.procList())
		}
		s.m = New("web")
		s.prev = v1.Phase_PHASE_IDLE
		s.prevGen = 0
		s.prevInPlace = false
		return
	}
	s.resumeUntil, s.resumePrev = time.Time{}, ""
	if s.persisted.Phase == v1.Phase_PHASE_HEALTHY {
		s.resumeUntil, s.resumePrev = s.persisted.WatchUntil, Version(s.persisted.Previous)
	}
	// What runs is found, in some order, each taken as serving and known
	// to the machine by its version only.
	var found []Running
	var versions []string
	for e, p := range s.procs {
		found = append(found, Running{Version: p.v, Epoch: e})
		// Its spec as far as the snapshot can tell (its limits stay what
		// they are: p.limits).
		p.a, p.ready, p.readyBy = s.persisted.runs(found[len(found)-1]), true, time.Time{}
	}
	slices.SortFunc(found, func(a, b Running) int { return cmp.Compare(a.Epoch, b.Epoch) })
	if s.rnd.IntN(2) == 0 {
		slices.Reverse(found)
	}
	for _, f := range found {
		versions = append(versions, f.Version)
	}
	s.found = found
	s.restoring, s.restoreFirst = expectRestore(s.persisted, found)
	s.firstSeen = false
	kind := s.restoring
	s.restoredFrom = s.persisted.Phase
	s.restores[kind]++
	wanted := ""
	switch kind {
	case restoreAdoptSettled, restoreResumeFetch:
		wanted = Version(s.persisted.Current)
	case restoreResumeInstall:
		wanted = Version(s.persisted.Target)
	case restoreResumeRevert:
		wanted = Version(s.persisted.LastGood)
	}
	wantAdopt := wanted != "" && slices.Contains(versions, wanted)
	if kind == restoreResumeInstall || kind == restoreResumeRevert {
		// A process of unknown limits is no release's: not adopted.
		wantAdopt = wanted != "" && slices.ContainsFunc(found, func(r Running) bool {
			return r.Version == wanted && !limitsUnknown(s.persisted, r)
		})
	}
	if (kind == restoreResumeInstall || kind == restoreResumeRevert) && specChange(s.persisted.Target, s.persisted.LastGood) &&
		!restoredInPlace(s.persisted) {
		// A config install: what runs of the release runs the target's spec
		// when its epoch is the target's, else the last good's; without a
		// recorded epoch it may run either (spec.go).
		te := s.persisted.TargetEpoch
		wantAdopt = te != 0 && slices.ContainsFunc(found, func(r Running) bool {
			return r.Version == wanted && (r.Epoch == te) == (kind == restoreResumeInstall) && !limitsUnknown(s.persisted, r)
		})
	}
	s.resumeBeside = kind == restoreAdoptSettled && wantAdopt && len(found) > 1
	s.adoptingBeside = s.resumeBeside
	if wantAdopt && len(found) > 1 {
		s.handovers.foundBeside++
	}
	s.log = append(s.log, fmt.Sprintf("  restore %v with %v running: %v", s.persisted.Phase, found, kind))
	m, acts := Restore(*s.persisted, found, s.now)
	s.m = m
	s.prevGen = s.persisted.Generation
	s.prevInPlace = s.persisted.InPlace
	s.recovering = kind == restoreRecover
	s.afterRestore = kind == restoreRecover
	s.relinking = kind == restoreResumeFetch && s.persisted.Phase == v1.Phase_PHASE_SWITCHING
	s.prev = s.persisted.Phase
	adopted, long := 0, []ActionKind{}
	for _, a := range acts {
		if a.Kind == ActAdopt {
			adopted++
		}
		if a.Kind.Long() {
			long = append(long, a.Kind)
		}
	}
	s.apply(acts)
	s.restoring = 0
	if !s.firstSeen {
		s.fatalf("Restore (%v) reported nothing", kind)
	}
	// What runs is adopted when Restore wants that release (any process
	// beside it is stopped first), else stopped or handed over from before
	// anything else starts; an adopted release is not restarted.
	switch {
	case wantAdopt && adopted != 1:
		s.fatalf("Restore (%v) with %v running adopted %d times", kind, found, adopted)
	case wantAdopt:
		for _, k := range long {
			// (A revert whose switch back was not recorded switches back:
			// the link may still point at the failed release.)
			// (Nor an install restored from SWITCHING: the switch may have
			// happened.)
			switchBack := kind == restoreResumeRevert && Version(s.persisted.Current) != wanted || s.relinking
			if k == ActStart || (k == ActSwitch && !switchBack) || (k == ActStop && len(found) == 1) {
				s.fatalf("Restore (%v) adopted %q and also emitted %v", kind, wanted, k)
			}
		}
	case adopted != 0:
		s.fatalf("Restore (%v) adopted a process of %v, which it must not run", kind, found)
	case len(found) > 0 && len(long) == 0:
		s.fatalf("Restore (%v) left %v running unadopted (long steps %v)", kind, found, long)
	}
	if kind == restoreAdoptSettled && m.Phase() != s.persisted.Phase && s.persisted.Phase == v1.Phase_PHASE_HEALTHY && m.Phase() != v1.Phase_PHASE_FAILED {
		s.fatalf("adopted HEALTHY release ended %v", m.Phase())
	}
}

// simStats counts what the simulation exercised.
type simStats struct {
	watchReverts, analysisReverts, resumedWatches, adoptions int
	inPlaces, inPlaceReverts, inPlaceNewer                   int
	resizes, resizesFailed, resizeAdoptions                  int
	restores                                                 map[restoreKind]int
	handovers                                                simHandovers
	hooks                                                    simHooks
}

func runSim(t *testing.T, seed uint64, steps int, seen map[[2]v1.Phase]int, st *simStats) {
	s := &sim{edgesSeen: seen,
		t: t, seed: seed, rnd: rand.New(rand.NewPCG(seed, 0x5eed)), m: New("web"), now: t0,
		everHealthy: map[string]bool{}, prev: v1.Phase_PHASE_IDLE, restores: map[restoreKind]int{},
		procs: map[uint64]*simProc{}, earlyReady: map[uint64]bool{}, stopHooked: map[uint64]bool{},
		hookStats: simHooks{ran: map[string]int{}, failed: map[string]int{}},
	}
	defer func() {
		if st != nil {
			st.watchReverts += s.watchReverts
			st.analysisReverts += s.analysisReverts
			st.resumedWatches += s.resumedWatches
			st.adoptions += s.adoptions
			st.inPlaces += s.inPlaces
			st.inPlaceReverts += s.inPlaceReverts
			st.inPlaceNewer += s.inPlaceNewer
			st.resizes += s.resizes
			st.resizesFailed += s.resizesFailed
			st.resizeAdoptions += s.resizeAdoptions
			st.handovers.beside += s.handovers.beside
			st.handovers.drained += s.handovers.drained
			st.handovers.notReady += s.handovers.notReady
			st.handovers.exitedBeforeReady += s.handovers.exitedBeforeReady
			st.handovers.foundBeside += s.handovers.foundBeside
			if st.hooks.ran == nil {
				st.hooks = simHooks{ran: map[string]int{}, failed: map[string]int{}}
			}
			for k, n := range s.hookStats.ran {
				st.hooks.ran[k] += n
			}
			for k, n := range s.hookStats.failed {
				st.hooks.failed[k] += n
			}
			st.hooks.keptRunning += s.hookStats.keptRunning
			if st.restores == nil {
				st.restores = map[restoreKind]int{}
			}
			for k, n := range s.restores {
				st.restores[k] += n
			}
		}
	}()
	s.pOK = []float64{0.5, 0.9, 0.99}[s.rnd.IntN(3)]
	pPass := []float64{0.5, 0.8, 0.97}[s.rnd.IntN(3)]
	versions := []string{"v1", "v2", "v3", "v4"}
	for i := 0; i < steps; i++ {
		s.failSinceBefore = s.failSince
		s.now = s.now.Add(time.Duration(s.rnd.IntN(3000)) * time.Millisecond)
		switch x := s.rnd.IntN(100); {
		case x < 30:
			if s.inflight != nil {
				s.finish()
			}
		case x < 55:
			if s.checking {
				n := len(s.chkA.GetSpec().GetChecks())
				var res []CheckResult
				all := n > 0
				for j := 0; j < n; j++ {
					ok := s.rnd.Float64() < s.pOK
					all = all && ok
					res = append(res, CheckResult{Name: fmt.Sprintf("c%d", j), OK: ok})
				}
				epoch := s.chkEpoch
				if s.rnd.IntN(20) == 0 {
					epoch-- // a late result from an older process: must be ignored
				} else if !s.zeroChecks {
					if all {
						if s.passSince.IsZero() {
							s.passSince = s.now
						}
						s.failSince = time.Time{}
					} else {
						s.passSince = time.Time{}
						if s.failSince.IsZero() {
							s.failSince = s.now
						}
					}
				}
				s.step(Checks(epoch, s.now, res...))
			}
		case x < 58:
			if len(s.procs) > 0 {
				var epochs []uint64
				for e := range s.procs {
					epochs = append(epochs, e)
				}
				slices.Sort(epochs)
				epoch := epochs[s.rnd.IntN(len(epochs))]
				if s.checking && epoch == s.chkEpoch {
					s.exits++
					if !s.watching {
						if s.zeroChecks {
							s.passSince = s.now
						} else {
							s.passSince = time.Time{}
						}
					}
				}
				s.step(Exited(epoch, s.now))
			}
		case x < 61:
			s.ready()
		case x < 66:
			if s.checking {
				v := VerdictPass
				if r := s.rnd.Float64(); r > pPass {
					v = []Verdict{VerdictInconclusive, VerdictInconclusive, VerdictFail}[s.rnd.IntN(3)]
				}
				epoch := s.chkEpoch
				if s.rnd.IntN(20) == 0 {
					epoch-- // a late verdict on an older process: must be ignored
				} else if s.analysing() {
					s.verdict = v
					s.failFed = s.failFed || v == VerdictFail
				}
				res := RuleResult{Rule: "errors", Verdict: v, Reason: fmt.Sprintf("rule %q: %v", "errors", v)}
				s.step(Analysis(epoch, s.now, v, res))
			}
		case x < 82:
			s.now = s.now.Add(time.Duration(s.rnd.IntN(5000)) * time.Millisecond)
			s.step(Tick(s.now))
		case x < 91:
			gen := s.maxGen + 1
			if s.rnd.IntN(4) == 0 && s.maxGen > 0 {
				gen = s.maxGen - int64(s.rnd.IntN(2)) // repeat or stale
			}
			if s.rnd.IntN(8) == 0 {
				// The service removed from the host.
				s.assign(&v1.Assignment{Service: "web", Generation: gen, Remove: true}, "")
				break
			}
			s.assign(s.assignment(versions[s.rnd.IntN(len(versions))], gen), "")
		case x < 92:
			// A generation no coordinator issued (a compromised one sent
			// it; up to 2^63-1), of any release: the leader's later
			// assignments replace it (assign).
			gen := s.maxGen + 1 + s.rnd.Int64N(1<<40)
			if s.rnd.IntN(4) == 0 {
				gen = math.MaxInt64
			}
			s.step(Assign(s.assignment(versions[s.rnd.IntN(len(versions))], gen), s.now))
		case x < 94:
			s.assign(&v1.Assignment{Service: "web", Generation: s.maxGen + 1}, "release.version: invalid")
		case x < 97:
			s.restart()
		default:
			// nothing happens for a while
			s.now = s.now.Add(time.Duration(s.rnd.IntN(20)) * time.Second)
		}
	}
}

// TestSimulation runs the machine through 400 seeded random histories (50
// with -short), checking invariants on every action. A failure names its
// seed; -seed N replays that seed alone and prints all its events.
func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		var st simStats
		runSim(t, *simSeed, 600, map[[2]v1.Phase]int{}, &st)
		t.Logf("seed %d passed: %d watch reverts (%d on analysis), %d watches resumed after a restart",
			*simSeed, st.watchReverts, st.analysisReverts, st.resumedWatches)
		return
	}
	seeds := *simSeeds
	if testing.Short() {
		seeds = min(seeds, 50)
	}
	seen := map[[2]v1.Phase]int{}
	var st simStats
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		runSim(t, seed, 600, seen, &st)
	}
	if testing.Short() {
		return // too few seeds to demand every edge
	}
	if st.watchReverts == 0 || st.analysisReverts == 0 || st.resumedWatches == 0 || st.adoptions == 0 {
		t.Errorf("simulation reverted %d watched releases, %d on analysis, resumed %d watches, adopted %d processes: not exercised",
			st.watchReverts, st.analysisReverts, st.resumedWatches, st.adoptions)
	}
	if st.resizes == 0 || st.resizesFailed == 0 || st.resizeAdoptions == 0 {
		t.Errorf("limits written in place %d, failed %d, written on adoption %d: not exercised", st.resizes, st.resizesFailed, st.resizeAdoptions)
	}
	if st.inPlaces == 0 || st.inPlaceReverts == 0 || st.inPlaceNewer == 0 {
		t.Errorf("installs in place %d, reverts in place %d, newer assignments while checking in place %d: not exercised", st.inPlaces, st.inPlaceReverts, st.inPlaceNewer)
	}
	if h := st.handovers; h.beside == 0 || h.drained == 0 || h.notReady == 0 || h.exitedBeforeReady == 0 || h.foundBeside == 0 {
		t.Errorf("handovers not exercised: %+v", h)
	}
	for _, name := range []string{hookspec.AfterInstall, hookspec.BeforeStart, hookspec.AfterStart, hookspec.Validate, hookspec.BeforeStop} {
		if st.hooks.ran[name] == 0 || st.hooks.failed[name] == 0 {
			t.Errorf("hook %s ran %d times, failed %d times: not exercised", name, st.hooks.ran[name], st.hooks.failed[name])
		}
	}
	if st.hooks.keptRunning == 0 {
		t.Errorf("no before_stop failed while an install replaced its process")
	}
	for k := restoreRecover; k <= restoreResumeRemove; k++ {
		if st.restores[k] == 0 {
			t.Errorf("simulation never restored with %v", k)
		}
	}
	// The simulation must actually reach every normal edge.
	for from, tos := range edges {
		for _, to := range tos {
			if from != to && seen[[2]v1.Phase{from, to}] == 0 {
				t.Errorf("simulation never took edge %v -> %v", from, to)
			}
		}
	}
	t.Logf("edges taken: %d distinct; watch reverts %d (analysis %d); watches resumed after a restart %d; processes adopted %d; installs in place %d, reverts in place %d, newer assignments while checking in place %d; limits written in place %d (failed %d), on adoption %d; restores %v; handovers %+v; hooks %+v",
		len(seen), st.watchReverts, st.analysisReverts, st.resumedWatches, st.adoptions, st.inPlaces, st.inPlaceReverts, st.inPlaceNewer, st.resizes, st.resizesFailed, st.resizeAdoptions, st.restores, st.handovers, st.hooks)
}

// checkHook checks an ActHook against the model: each hook runs from the
// release it belongs to, at its point of the release's life.
func (s *sim) checkHook(acts []Action, i int) {
	s.t.Helper()
	a := acts[i]
	if hookspec.Of(a.Assignment.GetSpec(), a.Hook) == nil || a.Timeout != hookspec.Timeout(a.Assignment.GetSpec(), a.Hook) {
		s.fatalf("%v: the release has no such hook, or timeout %v is not its own", a, a.Timeout)
	}
	s.hookStats.ran[a.Hook]++
	p := s.procs[a.Epoch]
	switch a.Hook {
	case hookspec.AfterInstall:
		if s.prev != v1.Phase_PHASE_STAGING || a.Version != Version(s.m.Target()) || s.switchedSinceFetch || s.stoppedSinceFetch {
			s.fatalf("%v in %v (target %q; switched %v, stopped %v since the fetch)", a, s.prev, Version(s.m.Target()), s.switchedSinceFetch, s.stoppedSinceFetch)
		}
	case hookspec.BeforeStart:
		s.checkFreeze(acts, i)
		if s.link != a.Version {
			s.fatalf("%v while `current` points at %q", a, s.link)
		}
	case hookspec.AfterStart:
		if _, only := s.only(); only == nil || only != p || p.v != a.Version || !p.ready {
			s.fatalf("%v (epoch %d) but %s runs", a, a.Epoch, s.procList())
		}
	case hookspec.Validate:
		if !s.checking || !s.chkInstall || a.Epoch != s.chkEpoch || a.Version != Version(s.chkA) {
			s.fatalf("%v outside an install's checks of that process (checking %v epoch %d)", a, s.checking, s.chkEpoch)
		}
		if s.passSince.IsZero() || s.now.Sub(s.passSince) < MinHealthyTime(s.chkA) {
			s.fatalf("%v before the checks passed for %v", a, MinHealthyTime(s.chkA))
		}
	case hookspec.BeforeStop:
		// From the release being stopped, of a process that served.
		s.checkFreeze(acts, i)
		if p == nil || p.v != a.Version || !p.ready || p.a == nil {
			s.fatalf("%v of epoch %d, but %s runs", a, a.Epoch, s.procList())
		}
	}
}

// hookEnded feeds the end of the ActHook a (failed when err is set) and
// checks what the machine made of it: a failed hook of an install fails it
// (FAILED before the switch, else a revert naming the hook); a failed
// before_stop of a process an install replaces keeps that process.
func (s *sim) hookEnded(a Action, err error) {
	s.t.Helper()
	if err != nil {
		err = errors.New("exit status 1")
		if s.rnd.IntN(3) == 0 {
			err = fmt.Errorf("timed out after %s: killed", a.Timeout)
		}
		s.hookStats.failed[a.Hook]++
	}
	before, recovering, gen := s.m.Phase(), s.recovering, s.m.Generation()
	install := !recovering && (before == v1.Phase_PHASE_STAGING || before == v1.Phase_PHASE_STARTING || before == v1.Phase_PHASE_CHECKING)
	s.hookOK = nil
	if err == nil {
		s.hookOK = &a
		switch a.Hook {
		case hookspec.BeforeStop:
			s.stopHooked[a.Epoch] = true
		case hookspec.Validate:
			s.validated = a.Epoch
		}
	} else if a.Hook == hookspec.BeforeStop && !install {
		s.stopHooked[a.Epoch] = true // noted, and the stop goes on
	}
	s.step(HookDone(a.Seq, err, "some output\nthe last line", s.now))
	if err == nil || !install {
		return
	}
	r := s.m.Report()
	want := fmt.Sprintf("hook %s of %s failed", a.Hook, a.Version)
	switch p := s.m.Phase(); {
	case before == v1.Phase_PHASE_STAGING:
		if p == v1.Phase_PHASE_FAILED && r.Generation == gen && !strings.Contains(r.Reason, want) {
			s.fatalf("after_install failed: FAILED with reason %q, want it to name %q", r.Reason, want)
		}
	case p == v1.Phase_PHASE_REVERTED && r.LastGoodVersion == a.Version && r.CurrentVersion == a.Version:
		// The hook's release is the last good one (assigned again after a
		// rollback): its process is kept and re-checked, which may end the
		// revert at once.
	case p != v1.Phase_PHASE_REVERTING || !strings.Contains(r.Reason, want) && !(s.failFed && strings.Contains(r.Reason, "rule ")) &&
		!strings.Contains(r.Reason, "crash loop"):
		// (An analysis failure, even one a later verdict passed, or a
		// crash loop that came while the hook ran, held until it ended,
		// may be the reason the revert names: the first failure it saw.)
		s.fatalf("%v failed in %v: now %v with reason %q", a, before, p, r.Reason)
	case a.Hook == hookspec.BeforeStop:
		if s.procs[a.Epoch] == nil {
			s.fatalf("%v failed but its process is gone", a)
		}
		s.hookStats.keptRunning++
	}
}

// followsHook checks that the long step a is what the hook that ended
// well before it precedes: before_start its start, before_stop the stop
// of its process, after_install the switch.
func (s *sim) followsHook(a Action) {
	s.t.Helper()
	h := s.hookOK
	if h == nil {
		return
	}
	s.hookOK = nil
	ok := true
	switch h.Hook {
	case hookspec.BeforeStart:
		ok = a.Kind == ActStart && a.Version == h.Version
	case hookspec.BeforeStop:
		ok = a.Kind == ActStop && a.Epoch == h.Epoch && a.Drain
	case hookspec.AfterInstall:
		// the switch, or a newer assignment's fetch
		ok = a.Kind == ActSwitch && a.Version == h.Version
	}
	if !ok && !(h.Hook == hookspec.AfterInstall && a.Kind != ActSwitch) {
		s.fatalf("%v after %v", a, *h)
	}
}

// runsSame reports whether a process started with a runs as one started
// with b: the same release with specs equal on hosts or differing only in
// how they are judged.
func runsSame(a, b *v1.Assignment) bool {
	return Version(a) == Version(b) && (!specdiff.HostAffecting(a.GetSpec(), b.GetSpec()) || specdiff.InPlace(a.GetSpec(), b.GetSpec()))
}
