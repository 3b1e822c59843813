package rollout

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// world is the leader loop and its store without the I/O: one service, its
// releases and rollouts, the hosts and what is observed of them, and a
// logical clock for creations (etcd revisions, in the leader). It acts on
// the engine the way coordinator/leader_reconcile.go and leader_ops.go do,
// so the scenario traces (testdata/*.txt) and the policy simulation
// exercise the whole policy: Decide, Begin, Step, the operator calls,
// RollbackTarget, Conclude and Desired.
//
// After every action it checks the world's invariants (check); a violation
// is reported through fail, which the caller sets (t.Fatalf, or the
// simulation's fatalf naming the seed).
type world struct {
	svc      *v1.Service
	releases []Release
	rollouts []*v1.Rollout    // oldest first
	created  map[string]int64 // rollout id -> logical creation time
	rev      int64            // the logical clock
	hosts    []Host
	obs      map[string]Observation // absent: connected, no report
	now      time.Time
	wake     time.Time // NextWake of the last reconcile
	fail     func(format string, args ...any)
	log      []string // what happened since the last take

	// For invariants: the newest generation Desired gave each host, the
	// version each (host, generation) was given, every release that
	// started a rollout that was not a rollback, and the stable versions a
	// conclusion may leave.
	lastGen     map[string]int64
	genVersion  map[string]map[int64]told
	started     map[string]string // "version@spec revision" -> rollout id
	goodStables map[string]bool
	goodSpecs   map[int64]bool   // spec revisions a conclusion or a record may leave stable
	applied     map[string]int64 // rollout id -> the service's spec revision when it was created
	unfrozen    map[string]bool  // rollouts whose freeze an operator lifted
	steps       int
	stats       map[string]int // decisions and rollout ends, for the simulation's coverage

	// gates: blackouts and upstream services (gate.go), as the leader
	// reads them from its mirror.
	gates Gates

	// deferProgress, when set, is the leader's progressWriteEvery: a step
	// that changes only progress (Result.ProgressOnly) is not committed
	// (nor are its events) until that long after the last commit; the
	// steps until then derive it again. written is the last commit's time.
	deferProgress time.Duration
	written       time.Time

	// stored is every rollout the world stored, with a copy taken when it
	// was stored: Step shares what it does not write with its input (copy
	// on write), so nothing may write a stored rollout afterwards
	// (checkStored).
	stored [][2]*v1.Rollout
}

// keep records r as stored and checks the newest stored rollouts.
func (w *world) keep(r *v1.Rollout) {
	if r != nil {
		w.stored = append(w.stored, [2]*v1.Rollout{r, proto.Clone(r).(*v1.Rollout)})
	}
	w.checkStored(len(w.stored) - 8)
}

// checkStored checks that the stored rollouts from index from on are as
// they were when stored.
func (w *world) checkStored(from int) {
	for _, h := range w.stored[max(from, 0):] {
		if !proto.Equal(h[0], h[1]) {
			w.fail("stored rollout %s changed after it was stored:\nnow  %v\nthen %v", h[1].GetId(), h[0], h[1])
			return
		}
	}
}

func newWorld(svc *v1.Service, hosts []Host, now time.Time, fail func(string, ...any)) *world {
	w := &world{svc: svc, hosts: hosts, now: now, fail: fail, created: map[string]int64{}, obs: map[string]Observation{},
		lastGen: map[string]int64{}, genVersion: map[string]map[int64]told{}, started: map[string]string{},
		goodStables: map[string]bool{"": true}, goodSpecs: map[int64]bool{0: true}, applied: map[string]int64{},
		unfrozen: map[string]bool{}, stats: map[string]int{}}
	if svc.Status == nil {
		svc.Status = &v1.ServiceStatus{}
	}
	w.goodStables[svc.GetStatus().GetStableVersion()] = true
	w.goodSpecs[svc.GetStatus().GetStableSpecRevision()] = true
	w.check()
	return w
}

// holdGates are w.gates with the service's windows parsed, as the
// leader's gates (coordinator/policy.go) parse them outside the engine.
func (w *world) holdGates() Gates {
	g := w.gates
	g.Windows, g.WindowsErr = spec.ParseWindows(w.svc.GetSpec().GetRollout().GetWindows())
	return g
}

func (w *world) name() string { return w.svc.GetSpec().GetName() }

func (w *world) logf(format string, args ...any) { w.log = append(w.log, fmt.Sprintf(format, args...)) }

// take returns and clears what happened.
func (w *world) take() []string {
	out := w.log
	w.log = nil
	return out
}

func (w *world) observe(id string) Observation {
	if o, ok := w.obs[id]; ok {
		return o
	}
	return Observation{Connected: true}
}

// current is the service's newest rollout and when it was created.
func (w *world) current() (*v1.Rollout, int64) {
	id := w.svc.GetStatus().GetLastRolloutId()
	for _, r := range w.rollouts {
		if r.GetId() == id {
			return r, w.created[id]
		}
	}
	return nil, 0
}

// deciding is the rollout Decide is given and when it was created: the
// newest, before any ended removal of hosts left out (Deciding), as the
// leader's.
func (w *world) deciding() (*v1.Rollout, int64) {
	r, created := w.current()
	for r != nil && !Deciding(r) {
		id := PrevID(r)
		r, created = nil, 0
		for _, p := range w.rollouts {
			if p.GetId() == id {
				r, created = p, w.created[id]
			}
		}
	}
	return r, created
}

func (w *world) active() *v1.Rollout {
	if r, _ := w.current(); r != nil && !Terminal(r) {
		return r
	}
	return nil
}

// release creates a release, later than everything so far.
func (w *world) release(v string) {
	for _, rel := range w.releases {
		if rel.Version == v {
			w.fail("release %s exists", v)
		}
	}
	w.rev++
	w.releases = append(w.releases, Release{Version: v, Created: w.rev})
}

// apply stores a spec as the store's ApplySpec does: a spec that differs
// from the live one gets the next revision; a deleted service is created
// anew (Recreate). It returns the revision.
func (w *world) apply(sp *v1.ServiceSpec) int64 {
	if w.svc.GetStatus().GetRemoved() {
		w.svc.Status = Recreate(w.svc.GetStatus())
		w.svc.Spec = sp
		w.svc.SpecRevision++
		w.logf("service %s created anew", w.name())
		return w.svc.GetSpecRevision()
	}
	if !proto.Equal(sp, w.svc.GetSpec()) {
		w.svc.Spec = sp
		w.svc.SpecRevision++
	}
	return w.svc.GetSpecRevision()
}

func (w *world) events(r *v1.Rollout, evs []Event) {
	for _, e := range evs {
		var where string
		if e.Wave != NoWave {
			where += fmt.Sprintf(" w%d", e.Wave)
		}
		if e.Host != "" {
			where += " " + e.Host
		}
		w.logf("%s %s%s: %s", r.GetId(), e.Kind, where, e.Message)
	}
}

// commit stores a rollout's next state, concluding the service when it
// ended (the leader's commit).
func (w *world) commit(next *v1.Rollout) {
	w.checkEndKeepsProgress(next)
	if !w.put(next) {
		return
	}
	w.written = w.now
	if Terminal(next) {
		w.stats[stateName(next.GetState())]++
		if IsConfig(next) {
			w.stats["config "+strings.ToLower(stateName(next.GetState()))]++
		}
		if next.GetLeft() {
			w.stats["leave "+strings.ToLower(stateName(next.GetState()))]++
		} else if next.GetRemove() {
			w.stats["removal "+strings.ToLower(stateName(next.GetState()))]++
		}
		w.svc.Status = Conclude(w.svc.GetStatus(), next)
		if next.GetState() == rOK {
			w.goodStables[next.GetToVersion()] = true
			w.goodSpecs[next.GetSpecRevision()] = true
		}
		if next.GetRemove() && !next.GetLeft() && next.GetState() == rOK {
			w.logf("%s %s", next.GetId(), EventServiceDeleted)
		}
	}
}

// withProgress is the leader's base for a decision on a rollout's stored
// copy: cur with the progress its observations show (WithProgress), and
// that progress's events (logged with the decision's).
func (w *world) withProgress(cur *v1.Rollout) (*v1.Rollout, []Event) {
	before := proto.Clone(cur).(*v1.Rollout)
	next, evs := WithProgress(cur, w.observe, w.now)
	if !proto.Equal(before, cur) {
		w.fail("WithProgress mutated its input")
	}
	w.keep(nil)
	return next, evs
}

// checkEndKeepsProgress: a rollout in progress that ends records every
// host its observations show done (progress a deferred Step had not
// written: WithProgress), not UPDATING.
func (w *world) checkEndKeepsProgress(next *v1.Rollout) {
	i := slices.IndexFunc(w.rollouts, func(r *v1.Rollout) bool { return r.GetId() == next.GetId() })
	if i < 0 || w.rollouts[i].GetState() != rProg || !Terminal(next) {
		return
	}
	for _, wv := range next.GetWaves() {
		for _, h := range wv.GetHosts() {
			if h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
				continue
			}
			rep := w.observe(h.GetHostId()).Report
			if rep.GetGeneration() != next.GetGeneration() {
				continue
			}
			if done := (next.GetRemove() && rep.GetPhase() == v1.Phase_PHASE_REMOVED) ||
				(!next.GetRemove() && rep.GetPhase() == v1.Phase_PHASE_HEALTHY && rep.GetCurrentVersion() == next.GetToVersion()); done {
				w.fail("rollout %s ended %s with host %s UPDATING, its report done (%s on %s): progress lost",
					next.GetId(), stateName(next.GetState()), h.GetHostId(), rep.GetPhase(), rep.GetCurrentVersion())
				return
			}
		}
	}
}

// put stores a rollout's next state alone (the leader's write of
// restored_at, which leaves the service as it is).
func (w *world) put(next *v1.Rollout) bool {
	i := slices.IndexFunc(w.rollouts, func(r *v1.Rollout) bool { return r.GetId() == next.GetId() })
	if i < 0 {
		w.fail("write of unknown rollout %s", next.GetId())
		return false
	}
	w.rollouts[i] = next
	w.keep(next)
	return true
}

// begin stores a rollout from Begin or BeginRollback (the leader's start).
func (w *world) begin(r *v1.Rollout, st *v1.ServiceStatus, res Result) {
	if cur := w.active(); cur != nil {
		w.fail("rollout %s begins while %s is %s", r.GetId(), cur.GetId(), cur.GetState())
	}
	if prev, _ := w.current(); prev != nil && r.GetGeneration() <= prev.GetGeneration() {
		w.fail("rollout %s has generation %d, not above %s's %d", r.GetId(), r.GetGeneration(), prev.GetId(), prev.GetGeneration())
	}
	if r.GetAppliedSpecRevision() != w.svc.GetSpecRevision() && !r.GetLeft() {
		w.fail("rollout %s records applied spec revision %d, the service is at %d", r.GetId(), r.GetAppliedSpecRevision(), w.svc.GetSpecRevision())
	}
	w.rev++
	w.created[r.GetId()] = w.rev
	w.applied[r.GetId()] = r.GetAppliedSpecRevision()
	w.rollouts = append(w.rollouts, r)
	w.keep(r)
	w.written = w.now
	w.svc.Status = st
	if Terminal(r) && r.GetState() == rOK {
		w.goodStables[r.GetToVersion()] = true
		w.goodSpecs[r.GetSpecRevision()] = true
	}
	w.events(r, res.Events)
	w.wake = res.NextWake
}

// step runs Step on the rollout in flight, checks the engine's invariants
// and commits a change.
func (w *world) step(cur *v1.Rollout) {
	before := proto.Clone(cur).(*v1.Rollout)
	h := Holding(w.svc, w.holdGates(), cur.GetToVersion(), w.now)
	out, res := StepHeld(cur, w.observe, w.now, h.Clock)
	if h.Clock != "" && !cur.GetRollback() {
		for i, wv := range out.GetWaves() {
			if before.GetWaves()[i].GetState() == v1.WaveState_WAVE_STATE_PENDING && wv.GetState() != v1.WaveState_WAVE_STATE_PENDING {
				w.fail("wave %d started while held: %s", i, h.Clock)
			}
		}
	}
	if hasEvent(res.Events, EventWaveHeld, "") {
		w.stats["wave held"]++
	}
	if !h.Wake.IsZero() && out.GetState() == rProg {
		res.NextWake = earliest(res.NextWake, h.Wake)
	}
	if !proto.Equal(before, cur) {
		w.fail("Step mutated its input")
	}
	if res.Changed != (out != cur) || res.Changed == proto.Equal(out, cur) {
		w.fail("Changed=%v but out==in %v, equal %v", res.Changed, out == cur, proto.Equal(out, cur))
	}
	checkStep(w.fail, w.steps, cur, out, res, effective(cur.GetPolicy()), planIDs(cur), w.now)
	checkGates(w.fail, w.steps, cur, out)
	w.steps++
	w.wake = res.NextWake
	if res.Changed && res.ProgressOnly && w.deferProgress > 0 && w.now.Sub(w.written) < w.deferProgress {
		w.stats["progress deferred"]++
		w.wake = earliest(w.wake, w.written.Add(w.deferProgress))
		return
	}
	w.events(out, res.Events)
	if res.Changed {
		w.commit(out)
	}
}

// reconcile is the leader's reconcile: record a restored fleet, act on
// Decide, step the rollout in flight.
func (w *world) reconcile() {
	w.wake = time.Time{}
	for range 10 {
		cur, _ := w.current()
		if cur.GetState() == rFailed && cur.GetRestoredAt() == nil && Restored(cur, w.observe) {
			next := proto.Clone(cur).(*v1.Rollout)
			next.RestoredAt = timestamppb.New(w.now)
			w.logf("%s %s", cur.GetId(), EventFleetRestored)
			w.put(next)
			continue
		}
		dr, created := w.deciding()
		d := Decide(w.svc, dr, created, w.releases)
		w.checkDecision(d, dr, created)
		h := Holding(w.svc, w.holdGates(), d.Version, w.now)
		if g := Gated(d, h); g.Action != d.Action {
			w.stats["held"]++
		}
		if d = Gated(d, h); h.Reason() != "" && (d.Action == ActionStart || d.Action == ActionSupersede || d.Action == ActionLeave) {
			w.fail("%s while held: %s", d, h.Reason())
		}
		if d.Action == ActionWait && !h.Wake.IsZero() {
			w.wake = earliest(w.wake, h.Wake)
		}
		w.stats[d.Action.String()]++
		if d.Action != ActionNone {
			w.logf("decide: %s", d)
		}
		switch d.Action {
		case ActionLeave:
			r, st, res := BeginLeave(w.svc, dr, w.hosts, w.observe, w.now)
			if r == nil {
				w.logf("%s: selector %s recorded: no host that has the service leaves", EventSpecRecorded, FmtLabels(w.svc.GetSpec().GetSelector()))
				w.svc.Status = st
				continue
			}
			w.begin(r, st, res)
		case ActionSupersede:
			base, progress := w.withProgress(cur)
			next := Supersede(base, d.Reason, w.now)
			w.events(next, progress)
			w.logf("%s %s: %s", next.GetId(), EventRolloutSuperseded, next.GetReason())
			w.commit(next)
			if !d.Replan {
				continue
			}
			// Planned again with the newer spec, in the same pass.
			w.started[w.startKey(d.Version)] = NextID(w.svc)
			w.begin(Begin(w.svc, d.Version, w.hosts, w.observe, w.now))
		case ActionStart:
			if d.Config {
				w.stats["config start"]++
			}
			w.started[w.startKey(d.Version)] = NextID(w.svc)
			w.begin(Begin(w.svc, d.Version, w.hosts, w.observe, w.now))
		case ActionRecordSpec:
			w.logf("%s: %s", EventSpecRecorded, SpecRecorded(w.svc))
			w.svc.Status = RecordSpec(w.svc)
			w.goodSpecs[w.svc.GetSpecRevision()] = true
			continue
		default:
			if cur != nil && !Terminal(cur) {
				w.step(cur)
			}
		}
		w.check()
		return
	}
	w.fail("reconcile did not settle in 10 rounds:\n%s", strings.Join(w.log, "\n"))
}

// startKey names what a start rolls out: the release with the live spec.
func (w *world) startKey(version string) string {
	return fmt.Sprintf("%s@%d", version, w.svc.GetSpecRevision())
}

// checkDecision checks what Decide said against the world, independently
// of how Decide works it out (the spec revisions come from the world's own
// record of when each rollout was created).
func (w *world) checkDecision(d Decision, cur *v1.Rollout, created int64) {
	var newest Release
	for _, rel := range w.releases {
		if rel.Created > newest.Created {
			newest = rel
		}
	}
	st := w.svc.GetStatus()
	pending := newest.Version != "" && (cur == nil && newest.Version != st.GetStableVersion() || cur != nil && newest.Created > created)
	frozen := w.svc.GetStatus().GetFrozen()
	inFlight := cur != nil && !Terminal(cur)
	// A newer spec that changes what hosts would run: the rollout in
	// flight's, else the stable release's.
	newerSpec := w.svc.GetSpecRevision() > w.applied[cur.GetId()]
	var pendingSpec bool
	switch {
	case inFlight:
		pendingSpec = newerSpec && specdiff.HostAffecting(cur.GetSpec(), w.svc.GetSpec())
	case st.GetStableVersion() != "" && st.GetStableSpec() != nil:
		pendingSpec = newerSpec && specdiff.HostAffecting(st.GetStableSpec(), w.svc.GetSpec())
	}
	if d.Config && pending {
		w.fail("%s decided for a spec while release %s is pending", d, newest.Version)
	}
	// A selector that differs from the one the hosts were placed by.
	leave := st.GetStableSpec() != nil && !maps.Equal(st.GetStableSpec().GetSelector(), w.svc.GetSpec().GetSelector())
	switch {
	case d.Action == ActionLeave && (!leave || inFlight || frozen):
		w.fail("leave: selector changed %v, in flight %v, frozen %v", leave, inFlight, frozen)
	case leave && !inFlight && !frozen && d.Action != ActionLeave && !st.GetRemoving() && !st.GetRemoved():
		w.fail("%s while the selector changed and nothing is in flight", d)
	case leave && d.Replan:
		w.fail("%s while the selector changed: the hosts it leaves out are removed first", d)
	case cur.GetLeft() && inFlight && d.Action != ActionNone && d.Action != ActionWait:
		w.fail("%s while removal %s of hosts left out runs", d, cur.GetId())
	case d.Action == ActionLeave:
		return
	}
	if leave && frozen && !inFlight && d.Action == ActionWait {
		return
	}
	if st.GetRemoving() || st.GetRemoved() {
		if d.Action != ActionNone {
			w.fail("%s while the service is being deleted", d)
		}
		return
	}
	switch d.Action {
	case ActionStart:
		want := newest.Version
		if d.Config {
			want = st.GetStableVersion()
		}
		if !(pending || d.Config && pendingSpec) || frozen || inFlight || d.Version != want {
			w.fail("start %s: pending %v spec %v frozen %v rollout in flight %v newest %s", d, pending, pendingSpec, frozen, inFlight, newest.Version)
		}
		if id, again := w.started[w.startKey(d.Version)]; again {
			w.fail("release %s with spec %d starts again (it started rollout %s)", d.Version, w.svc.GetSpecRevision(), id)
		}
	case ActionSupersede:
		ok := (pending || d.Config && pendingSpec) && cur != nil && (cur.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL ||
			cur.GetState() == rProg && !cur.GetRollback() && !frozen && w.svc.GetSpec().GetRollout().GetOnNewRelease() != spec.OnNewReleaseQueue)
		want := newest.Version
		if d.Config {
			want = cur.GetToVersion()
		}
		if !ok || d.Version != want {
			w.fail("supersede %v by %s: pending %v spec %v frozen %v policy %q", cur.GetState(), d, pending, pendingSpec, frozen, w.svc.GetSpec().GetRollout().GetOnNewRelease())
		}
	case ActionWait:
		if !(pending || pendingSpec) || !(frozen || inFlight) {
			w.fail("wait (%s) with pending %v spec %v frozen %v", d.Reason, pending, pendingSpec, frozen)
		}
	case ActionRecordSpec:
		if inFlight || st.GetStableSpec() == nil || w.svc.GetSpecRevision() == st.GetStableSpecRevision() ||
			specdiff.HostAffecting(st.GetStableSpec(), w.svc.GetSpec()) {
			w.fail("record spec %d: in flight %v, stable spec %d (%v)", w.svc.GetSpecRevision(), inFlight, st.GetStableSpecRevision(), st.GetStableSpec() != nil)
		}
	case ActionNone:
		if (pending || pendingSpec) && (frozen || inFlight) {
			w.fail("none (%s) while %s (spec %v) waits", d.Reason, newest.Version, pendingSpec)
		}
		if (pending || pendingSpec) && !frozen && !inFlight {
			w.fail("none (%s): release %s (spec %v) is lost", d.Reason, newest.Version, pendingSpec)
		}
		if !inFlight && st.GetStableSpec() != nil && w.svc.GetSpecRevision() != st.GetStableSpecRevision() &&
			!specdiff.HostAffecting(st.GetStableSpec(), w.svc.GetSpec()) && !pending {
			w.fail("none (%s): spec %d changes nothing on hosts and is not recorded", d.Reason, w.svc.GetSpecRevision())
		}
	}
}

// check checks the world's invariants after an action.
func (w *world) check() {
	inFlight := 0
	for i, r := range w.rollouts {
		if !Terminal(r) {
			inFlight++
			if r.GetId() != w.svc.GetStatus().GetLastRolloutId() {
				w.fail("rollout %s in flight is not the newest (%s)", r.GetId(), w.svc.GetStatus().GetLastRolloutId())
			}
		}
		if i > 0 && (r.GetId() <= w.rollouts[i-1].GetId() || r.GetGeneration() <= w.rollouts[i-1].GetGeneration()) {
			w.fail("rollout %s (generation %d) after %s (generation %d)", r.GetId(), r.GetGeneration(), w.rollouts[i-1].GetId(), w.rollouts[i-1].GetGeneration())
		}
	}
	if inFlight > 1 {
		w.fail("%d rollouts in flight", inFlight)
	}
	if st := w.svc.GetStatus().GetStableVersion(); !w.goodStables[st] {
		w.fail("stable release %s never succeeded", st)
	}
	if st := w.svc.GetStatus().GetStableSpecRevision(); !w.goodSpecs[st] {
		w.fail("stable spec %d never succeeded nor was recorded", st)
	}
	if cur, _ := w.current(); cur.GetState() == rFailed && !w.svc.GetStatus().GetFrozen() && !w.unfrozen[cur.GetId()] {
		w.fail("rollout %s failed but the service is not frozen", cur.GetId())
	}
	// What each host is told: generations never go back, and a generation
	// names one version with one spec as hosts run it (a spec recorded
	// without a rollout differs only in what hosts do not read).
	cur, _ := w.current()
	desired := DesiredFunc(w.svc, cur)
	for _, h := range w.hosts {
		want, ok := desired(h.ID, h.Labels, w.observe(h.ID).Report)
		v, g := want.Version, want.Generation
		if !ok {
			continue
		}
		if want.Remove {
			// Removal takes a host out of the service's generations: its
			// agent takes any later assignment once it has removed it.
			if w.observe(h.ID).Report.GetPhase() != v1.Phase_PHASE_REMOVING && g <= w.lastGen[h.ID] {
				w.fail("%s is told to remove at generation %d, not above %d, the last it was told", h.ID, g, w.lastGen[h.ID])
			}
			delete(w.lastGen, h.ID)
			delete(w.genVersion, h.ID)
			continue
		}
		if g < w.lastGen[h.ID] {
			w.fail("%s is told generation %d (%s) after %d", h.ID, g, v, w.lastGen[h.ID])
		}
		w.lastGen[h.ID] = g
		if w.genVersion[h.ID] == nil {
			w.genVersion[h.ID] = map[int64]told{}
		}
		sp, rev := SpecFor(w.svc, cur, v, g)
		if was, seen := w.genVersion[h.ID][g]; seen && (was.version != v || specdiff.HostAffecting(was.spec, sp)) {
			w.fail("%s is told %s with spec %d at generation %d, which was %s with spec %d", h.ID, v, rev, g, was.version, was.rev)
		}
		w.genVersion[h.ID][g] = told{v, sp, rev}
	}
}

// told is what a host was told at one generation.
type told struct {
	version string
	spec    *v1.ServiceSpec
	rev     int64
}

// The operator calls, as coordinator/leader_ops.go serves them.

func (w *world) inProgress() (*v1.Rollout, error) {
	cur := w.active()
	if cur == nil {
		return nil, fmt.Errorf("service %s has no rollout in progress", w.name())
	}
	return cur, nil
}

func (w *world) approve(wave uint32) error {
	w.reconcile()
	cur, _ := w.current()
	if cur == nil {
		return fmt.Errorf("service %q has no rollout to approve", w.name())
	}
	next, err := Approve(cur, wave, w.now)
	if err != nil {
		return err
	}
	w.logf("%s %s", next.GetId(), EventRolloutApproved)
	// The approval and the Step after it (one write, in the leader).
	w.commit(next)
	w.step(next)
	w.check()
	return nil
}

func (w *world) pause() error {
	cur, err := w.inProgress()
	if err != nil {
		return err
	}
	base, progress := w.withProgress(cur)
	next, err := Pause(base)
	if err != nil {
		return err
	}
	w.events(next, progress)
	w.logf("%s %s", next.GetId(), EventRolloutPaused)
	w.commit(next)
	w.check()
	return nil
}

func (w *world) resume() error {
	cur, err := w.inProgress()
	if err != nil {
		return err
	}
	base, progress := w.withProgress(cur)
	next, err := Resume(base, w.now)
	if err != nil {
		return err
	}
	w.events(next, progress)
	w.logf("%s %s", next.GetId(), EventRolloutResumed)
	w.commit(next)
	w.check()
	return nil
}

func (w *world) abort(reason string) error {
	cur, err := w.inProgress()
	if err != nil {
		return err
	}
	base, progress := w.withProgress(cur)
	next := Fail(base, "aborted by op: "+reason, w.now)
	w.events(next, progress)
	w.logf("%s %s: %s", next.GetId(), EventRolloutAborted, next.GetReason())
	w.commit(next)
	w.check()
	return nil
}

// compareFailed is the leader's duty when the comparison fails.
func (w *world) compareFailed(reason string) error {
	cur, err := w.inProgress()
	if err != nil {
		return err
	}
	base, progress := w.withProgress(cur)
	next := CompareFailed(base, reason, w.now)
	w.events(next, progress)
	w.logf("%s %s: %s", next.GetId(), EventComparisonFailed, next.GetReason())
	w.commit(next)
	w.check()
	return nil
}

// alerts is Alertmanager posting firing alerts: the leader aborts the
// rollout in progress when AlertAbort says so (else nothing happens).
func (w *world) alerts(firing []FiringAlert) {
	cur := w.active()
	if cur == nil {
		w.logf("no rollout in flight")
		return
	}
	why, ok := AlertAbort(cur, firing)
	if !ok {
		w.logf("%s: no alert of rollout.abort_on_alerts", cur.GetId())
		return
	}
	base, progress := w.withProgress(cur)
	next := Fail(base, "aborted by alertmanager: "+why, w.now)
	w.events(next, progress)
	w.logf("%s %s: %s", next.GetId(), EventRolloutAborted, next.GetReason())
	w.commit(next)
	w.check()
}

func (w *world) rollback(to string) error {
	cur := w.active()
	target, err := RollbackTarget(w.svc, w.rollouts, cur, w.releases, to)
	if err != nil {
		return err
	}
	w.checkRollbackTarget(target, cur, to)
	if cur != nil {
		base, progress := w.withProgress(cur)
		next := Supersede(base, "rolled back to "+target+" by op", w.now)
		w.events(next, progress)
		w.logf("%s %s: %s", next.GetId(), EventRolloutSuperseded, next.GetReason())
		w.commit(next)
	}
	w.begin(BeginRollback(w.svc, target, w.hosts, w.observe, w.now))
	w.check()
	return nil
}

// checkRollbackTarget checks a target RollbackTarget accepted.
func (w *world) checkRollbackTarget(target string, inFlight *v1.Rollout, requested string) {
	if requested != "" && target != requested {
		w.fail("rollback to %q went to %s", requested, target)
	}
	if !slices.ContainsFunc(w.releases, func(r Release) bool { return r.Version == target }) {
		w.fail("rollback to %s, not a release", target)
	}
	if inFlight == nil && target == w.svc.GetStatus().GetStableVersion() {
		w.fail("rollback to %s, which already runs", target)
	}
	for i := len(w.rollouts) - 1; i >= 0; i-- {
		if r := w.rollouts[i]; r.GetToVersion() == target && Terminal(r) {
			if r.GetState() == rFailed {
				w.fail("rollback onto %s, whose rollout %s failed", target, r.GetId())
			}
			break
		}
	}
}

// deleteService is `service delete` as the leader serves it.
func (w *world) deleteService(force bool) error {
	cur := w.active()
	act, err := Delete(w.svc, cur, force)
	if err != nil {
		return err
	}
	switch act {
	case DeleteInFlight:
		return nil
	case DeleteSupersede:
		base, progress := w.withProgress(cur)
		next := Supersede(base, "service deleted by op", w.now)
		w.events(next, progress)
		w.logf("%s %s: %s", next.GetId(), EventRolloutSuperseded, next.GetReason())
		w.commit(next)
	}
	w.begin(BeginRemoval(w.svc, "op", w.hosts, w.observe, w.now))
	w.check()
	return nil
}

func (w *world) unfreeze() {
	st := w.svc.GetStatus()
	if st.GetFrozen() {
		next := proto.Clone(st).(*v1.ServiceStatus)
		next.Frozen, next.FrozenReason = false, ""
		w.svc.Status = next
		w.logf("%s", EventServiceUnfrozen)
		if cur, _ := w.current(); cur != nil {
			w.unfrozen[cur.GetId()] = true
		}
	}
	w.reconcile()
}

// Printing, for traces.

// override is the leader's OverrideHold: the newest release may roll out
// past the holds.
func (w *world) override(reason string) error {
	var newest Release
	for _, rel := range w.releases {
		if rel.Created > newest.Created {
			newest = rel
		}
	}
	o, err := Override(w.svc, newest.Version, reason, "admin", w.now)
	if err != nil {
		return err
	}
	w.logf("%s: %s", EventHoldOverridden, HoldOverridden(o))
	w.svc.Status = proto.Clone(w.svc.GetStatus()).(*v1.ServiceStatus)
	w.svc.Status.HoldOverride = o
	w.reconcile()
	return nil
}

func (w *world) at(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return "t=" + t.Sub(t0).String()
}

// state prints the service, its newest rollout with its waves and hosts,
// and the next wake.
func (w *world) state() []string {
	st := w.svc.GetStatus()
	line := fmt.Sprintf("service %s: stable %s gen %d", w.name(), orNone(st.GetStableVersion()), st.GetStableGeneration())
	switch {
	case st.GetRemoved():
		line += ", deleted"
	case st.GetRemoving():
		line += ", removing"
	}
	// Spec revisions once there is more than one (traces of releases alone
	// stay as they were).
	switch rev := w.svc.GetSpecRevision(); {
	case rev != st.GetStableSpecRevision() && st.GetStableSpec() != nil:
		line += fmt.Sprintf(", %s (hosts run %s)", SpecName(rev), SpecName(st.GetStableSpecRevision()))
	case rev > 1:
		line += ", " + SpecName(rev)
	}
	if st.GetFrozen() {
		line += ", frozen (" + st.GetFrozenReason() + ")"
	}
	out := []string{line}
	cur, _ := w.current()
	if cur == nil {
		return out
	}
	kind := "rollout"
	switch {
	case cur.GetRollback():
		kind = "rollback"
	case cur.GetRemove():
		kind = "removal"
	}
	line = fmt.Sprintf("%s %s %s gen %d: %s", kind, cur.GetId(), Describe(cur), cur.GetGeneration(), stateName(cur.GetState()))
	if cur.GetPaused() {
		line += ", paused"
	}
	if cur.GetReason() != "" {
		line += ": " + cur.GetReason()
	}
	out = append(out, line)
	for i, wv := range cur.GetWaves() {
		line := fmt.Sprintf("  wave %d", i)
		if wv.GetCanary() {
			line += " (canary)"
		}
		line += " " + strings.TrimPrefix(wv.GetState().String(), "WAVE_STATE_")
		if wv.GetState() == wBaking {
			line += " until " + w.at(wv.GetBakeUntil().AsTime())
		}
		if wv.GetWaitingApproval() {
			line += ", waits for approval"
		}
		if wv.GetApproved() {
			line += ", approved"
		}
		if wv.GetFailures() > 0 {
			line += fmt.Sprintf(", %d failed", wv.GetFailures())
		}
		var hs []string
		for _, h := range wv.GetHosts() {
			s := h.GetHostId() + "=" + strings.ToLower(strings.TrimPrefix(h.GetState().String(), "HOST_ROLLOUT_STATE_"))
			if h.GetPhase() != v1.Phase_PHASE_UNSPECIFIED {
				s += "(" + phaseName(h.GetPhase()) + ")"
			}
			if h.GetInPlace() {
				s += "[in place]"
			}
			if h.GetUnknown() {
				s += "?"
			}
			hs = append(hs, s)
		}
		out = append(out, line+": "+strings.Join(hs, " "))
	}
	return out
}

// wakeLine says when the leader next needs to run for the rollout in
// flight (after a pass that stepped it).
func (w *world) wakeLine() []string {
	if w.active() == nil {
		// A release held by the clock wakes the leader when it may change.
		if !w.wake.IsZero() {
			return []string{"next wake " + w.at(w.wake)}
		}
		return nil
	}
	return []string{"next wake " + w.at(w.wake)}
}

// desiredLines prints what each host is told.
func (w *world) desiredLines() []string {
	cur, _ := w.current()
	desired := DesiredFunc(w.svc, cur)
	var out []string
	for _, h := range w.hosts {
		want, ok := desired(h.ID, h.Labels, w.observe(h.ID).Report)
		v, g := want.Version, want.Generation
		if !ok {
			out = append(out, h.ID+": nothing")
			continue
		}
		line := fmt.Sprintf("%s: %s gen %d", h.ID, v, g)
		if want.Remove {
			line = fmt.Sprintf("%s: remove gen %d", h.ID, g)
		} else if _, rev := SpecFor(w.svc, cur, v, g); w.svc.GetSpecRevision() > 1 {
			line += " " + SpecName(rev)
		}
		if want.Replaces != 0 {
			line += fmt.Sprintf(" replaces %d", want.Replaces)
		}
		out = append(out, line)
	}
	return out
}
