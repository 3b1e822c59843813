package rollout

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
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
	genVersion  map[string]map[int64]string
	started     map[string]string
	goodStables map[string]bool
	unfrozen    map[string]bool // rollouts whose freeze an operator lifted
	steps       int
	stats       map[string]int // decisions and rollout ends, for the simulation's coverage
}

func newWorld(svc *v1.Service, hosts []Host, now time.Time, fail func(string, ...any)) *world {
	w := &world{svc: svc, hosts: hosts, now: now, fail: fail, created: map[string]int64{}, obs: map[string]Observation{},
		lastGen: map[string]int64{}, genVersion: map[string]map[int64]string{}, started: map[string]string{},
		goodStables: map[string]bool{"": true}, unfrozen: map[string]bool{}, stats: map[string]int{}}
	if svc.Status == nil {
		svc.Status = &v1.ServiceStatus{}
	}
	w.goodStables[svc.GetStatus().GetStableVersion()] = true
	w.check()
	return w
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
	if !w.put(next) {
		return
	}
	if Terminal(next) {
		w.stats[stateName(next.GetState())]++
		w.svc.Status = Conclude(w.svc.GetStatus(), next)
		if next.GetState() == rOK {
			w.goodStables[next.GetToVersion()] = true
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
	w.rev++
	w.created[r.GetId()] = w.rev
	w.rollouts = append(w.rollouts, r)
	w.svc.Status = st
	if Terminal(r) && r.GetState() == rOK {
		w.goodStables[r.GetToVersion()] = true
	}
	w.events(r, res.Events)
	w.wake = res.NextWake
}

// step runs Step on the rollout in flight, checks the engine's invariants
// and commits a change.
func (w *world) step(cur *v1.Rollout) {
	before := proto.Clone(cur).(*v1.Rollout)
	out, res := Step(cur, w.observe, w.now)
	if !proto.Equal(before, cur) {
		w.fail("Step mutated its input")
	}
	if res.Changed != (out != cur) || res.Changed == proto.Equal(out, cur) {
		w.fail("Changed=%v but out==in %v, equal %v", res.Changed, out == cur, proto.Equal(out, cur))
	}
	checkStep(w.fail, w.steps, cur, out, res, effective(cur.GetPolicy()), planIDs(cur), w.now)
	checkGates(w.fail, w.steps, cur, out)
	w.steps++
	w.events(out, res.Events)
	w.wake = res.NextWake
	if res.Changed {
		w.commit(out)
	}
}

// reconcile is the leader's reconcile: record a restored fleet, act on
// Decide, step the rollout in flight.
func (w *world) reconcile() {
	w.wake = time.Time{}
	for range 10 {
		cur, created := w.current()
		if cur.GetState() == rFailed && cur.GetRestoredAt() == nil && Restored(cur, w.observe) {
			next := proto.Clone(cur).(*v1.Rollout)
			next.RestoredAt = timestamppb.New(w.now)
			w.logf("%s %s", cur.GetId(), EventFleetRestored)
			w.put(next)
			continue
		}
		d := Decide(w.svc, cur, created, w.releases)
		w.stats[d.Action.String()]++
		if d.Action != ActionNone {
			w.logf("decide: %s", d)
		}
		w.checkDecision(d, cur, created)
		switch d.Action {
		case ActionSupersede:
			next := Supersede(cur, d.Reason, w.now)
			w.logf("%s %s: %s", next.GetId(), EventRolloutSuperseded, next.GetReason())
			w.commit(next)
			continue
		case ActionStart:
			w.started[d.Version] = NextID(w.svc)
			w.begin(Begin(w.svc, d.Version, w.hosts, w.observe, w.now))
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

// checkDecision checks what Decide said against the world, independently
// of how Decide works it out.
func (w *world) checkDecision(d Decision, cur *v1.Rollout, created int64) {
	var newest Release
	for _, rel := range w.releases {
		if rel.Created > newest.Created {
			newest = rel
		}
	}
	pending := newest.Version != "" && (cur == nil && newest.Version != w.svc.GetStatus().GetStableVersion() || cur != nil && newest.Created > created)
	frozen := w.svc.GetStatus().GetFrozen()
	switch d.Action {
	case ActionStart:
		if !pending || frozen || (cur != nil && !Terminal(cur)) || d.Version != newest.Version {
			w.fail("start %s: pending %v frozen %v rollout in flight %v newest %s", d.Version, pending, frozen, cur != nil && !Terminal(cur), newest.Version)
		}
		if id, again := w.started[d.Version]; again {
			w.fail("release %s starts again (it started rollout %s)", d.Version, id)
		}
	case ActionSupersede:
		ok := pending && cur != nil && (cur.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL ||
			cur.GetState() == rProg && !cur.GetRollback() && !frozen && w.svc.GetSpec().GetRollout().GetOnNewRelease() != spec.OnNewReleaseQueue)
		if !ok || d.Version != newest.Version {
			w.fail("supersede %v by %s: pending %v frozen %v policy %q", cur.GetState(), d.Version, pending, frozen, w.svc.GetSpec().GetRollout().GetOnNewRelease())
		}
	case ActionWait:
		if !pending || !(frozen || cur != nil && !Terminal(cur)) {
			w.fail("wait (%s) with pending %v frozen %v", d.Reason, pending, frozen)
		}
	case ActionNone:
		if pending && (frozen || cur != nil && !Terminal(cur)) {
			w.fail("none (%s) while %s waits", d.Reason, newest.Version)
		}
		if pending && !frozen && (cur == nil || Terminal(cur)) {
			w.fail("none (%s): release %s is lost", d.Reason, newest.Version)
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
	if cur, _ := w.current(); cur.GetState() == rFailed && !w.svc.GetStatus().GetFrozen() && !w.unfrozen[cur.GetId()] {
		w.fail("rollout %s failed but the service is not frozen", cur.GetId())
	}
	// What each host is told: generations never go back, and a generation
	// names one version.
	cur, _ := w.current()
	desired := DesiredFunc(w.svc, cur)
	for _, h := range w.hosts {
		v, g, ok := desired(h.ID, h.Labels)
		if !ok {
			continue
		}
		if g < w.lastGen[h.ID] {
			w.fail("%s is told generation %d (%s) after %d", h.ID, g, v, w.lastGen[h.ID])
		}
		w.lastGen[h.ID] = g
		if w.genVersion[h.ID] == nil {
			w.genVersion[h.ID] = map[int64]string{}
		}
		if was, seen := w.genVersion[h.ID][g]; seen && was != v {
			w.fail("%s is told %s at generation %d, which was %s", h.ID, v, g, was)
		}
		w.genVersion[h.ID][g] = v
	}
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
	next, err := Pause(cur)
	if err != nil {
		return err
	}
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
	next, err := Resume(cur, w.now)
	if err != nil {
		return err
	}
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
	next := Fail(cur, "aborted by op: "+reason, w.now)
	w.logf("%s %s: %s", next.GetId(), EventRolloutAborted, next.GetReason())
	w.commit(next)
	w.check()
	return nil
}

func (w *world) rollback(to string) error {
	cur := w.active()
	target, err := RollbackTarget(w.svc, w.rollouts, cur, w.releases, to)
	if err != nil {
		return err
	}
	w.checkRollbackTarget(target, cur, to)
	if cur != nil {
		next := Supersede(cur, "rolled back to "+target+" by op", w.now)
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
	if st.GetFrozen() {
		line += ", frozen (" + st.GetFrozenReason() + ")"
	}
	out := []string{line}
	cur, _ := w.current()
	if cur == nil {
		return out
	}
	kind := "rollout"
	if cur.GetRollback() {
		kind = "rollback"
	}
	line = fmt.Sprintf("%s %s %s → %s gen %d: %s", kind, cur.GetId(), orNone(cur.GetFromVersion()), cur.GetToVersion(), cur.GetGeneration(), stateName(cur.GetState()))
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
		v, g, ok := desired(h.ID, h.Labels)
		if !ok {
			out = append(out, h.ID+": nothing")
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s gen %d", h.ID, v, g))
	}
	return out
}
