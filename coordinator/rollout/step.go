package rollout

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// maxListed bounds how many hosts a reason names.
const maxListed = 5

// Observation is what the coordinator knows of one host right now.
type Observation struct {
	Connected bool // the host's agent stream is up
	// Gossip is the host's gossip state ("alive", "suspect", "dead", "left",
	// or "" when unknown). A hint only: "dead" or "left" makes a host whose
	// stream still looks up count as unknown at once (a dead host's stream
	// takes keepalive timeouts to drop); nothing else follows from it.
	Gossip string
	Report *v1.ServiceReport // the host's last report for this service, nil if none
}

// Result says what a Step did.
type Result struct {
	Changed bool // the returned rollout differs from the input: persist it
	Events  []Event
	// NextWake is the earliest time a Step is needed even without new
	// observations (bake end, progress deadline); zero if none.
	NextWake time.Time
	// ProgressOnly: what changed is only progress that nothing else was
	// decided on: hosts' phases last reported (only displays show them)
	// and hosts of a wave become DONE (with the rollout's last progress)
	// while their wave goes on as it was, with their host_done events.
	// The caller may write it later, with the next change: until then each
	// Step derives it again from the same reports.
	ProgressOnly bool
}

// Terminal reports whether r has ended: SUCCEEDED, FAILED or SUPERSEDED (a
// nil rollout has not). It is the one definition of an ended rollout; the
// coordinator, the CLI and the tests use it.
func Terminal(r *v1.Rollout) bool {
	switch r.GetState() {
	case v1.RolloutState_ROLLOUT_STATE_SUCCEEDED,
		v1.RolloutState_ROLLOUT_STATE_FAILED,
		v1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
		return true
	}
	return false
}

// policy is the effective policy of a rollout, defaults applied.
type policy struct {
	maxParallel int
	maxFailures uint32
	bake        time.Duration
	deadline    time.Duration
}

func effective(p *v1.RolloutPolicy) policy {
	out := policy{
		maxParallel: int(p.GetMaxParallel()),
		maxFailures: p.GetMaxFailures(),
		bake:        p.GetBake().AsDuration(),
		deadline:    p.GetProgressDeadline().AsDuration(),
	}
	if out.maxParallel <= 0 {
		out.maxParallel = DefaultMaxParallel
	}
	if p.GetBake() == nil || out.bake < 0 {
		out.bake = 0
	}
	if p.GetProgressDeadline() == nil || out.deadline <= 0 {
		out.deadline = DefaultProgressDeadline
	}
	return out
}

// Step advances r given observations (a function so callers with 10k hosts
// need not build a map; nil means nothing is observed) at time now. obs is
// only asked about hosts in r's plan. It never mutates r: it returns a new
// *v1.Rollout or r itself if nothing changed. Terminal rollouts and
// WAITING_APPROVAL are returned unchanged.
//
// Rules, in the order they apply:
//   - Every UPDATING or DONE host of a started wave is observed: unknown is
//     set while its stream is down and cleared when it is back; a report of
//     the rollout's generation sets its displayed phase, makes an UPDATING
//     host DONE (HEALTHY on to_version) and makes an UPDATING or DONE host
//     FAILED (phase FAILED or REVERTED), counting against its own wave's
//     budget. Reports of another generation are ignored.
//   - A wave with more failures than max_failures fails the rollout.
//   - The current wave (lowest not DONE) moves on: when all its hosts are
//     DONE or FAILED it bakes (bake > 0) or is DONE; a baked wave is DONE when
//     now reaches bake_until; then the next wave starts in the same Step. A
//     progressing wave fails the rollout once now reaches last_progress_at +
//     progress_deadline; otherwise PENDING hosts are moved to UPDATING, in
//     plan order, while fewer than max_parallel are UPDATING, skipping a
//     host whose zone has max_unavailable_per_zone hosts unavailable
//     (Unavailable: updating, failed, or done but unreachable). When a
//     zone's failed hosts alone fill its limit and it has pending hosts in
//     the current wave, the rollout fails (they could never move).
//   - When every wave is DONE the rollout SUCCEEDED.
func Step(r *v1.Rollout, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, Result) {
	return stepGated(r, obs, now, "")
}

// stepGated is Step and StepHeld (gate.go): held is why the next wave may not
// start ("" when nothing holds it).
func stepGated(r *v1.Rollout, obs func(hostID string) Observation, now time.Time, held string) (*v1.Rollout, Result) {
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		return r, Result{}
	}
	s := &stepper{in: r, r: r, now: now, pol: effective(r.GetPolicy()), held: held}
	if obs != nil {
		s.observe(obs)
	}
	if held == "" && r.GetHeld() != "" {
		s.mut().Held = ""
		s.mut().LastProgressAt = s.ts() // the deadline counts from the release
		s.emit(EventWaveReleased, NoWave, "", "hold ended: the next wave may start")
	}
	// Paused: hosts already moving are still observed and their failures
	// still count, but nothing new starts and no deadline runs.
	if !s.checkBudgets() && !r.GetPaused() {
		s.advance()
	}
	s.res.Changed = s.r != s.in
	s.res.ProgressOnly = s.res.Changed && !s.decided
	return s.r, s.res
}

// stepper carries one Step. Reads go through s.r, which is the input until
// the first write and a copy after it; writes go through mut, wave and
// host, which copy what they return on first use (the rest is shared with
// the input, read only). A pointer read from s.r before a write may be the
// input's: only what no Step writes is read through it afterwards.
type stepper struct {
	in   *v1.Rollout
	r    *v1.Rollout // s.in until the first write
	now  time.Time
	pol  policy
	res  Result
	held string // why the next wave may not start ("" = it may)
	// decided: a write other than one of progress (progress) was made.
	decided bool
	// onlyProgress: observe records progress and nothing else (no host
	// failed or unknown): WithProgress.
	onlyProgress bool
	// copied says which waves (non-nil) and hosts of s.r are copies (mut).
	copied [][]bool
}

// WithProgress is r with the progress a Step at now would record from
// obs (hosts' phases, hosts done, the rollout's last progress) and
// nothing it would decide, with the host_done events; r itself and no
// events when there is none. The leader defers a Step that records only
// progress (Result.ProgressOnly); a rollout that ends from its stored copy
// (an abort, a supersede, a failed comparison) ends from this instead, so
// that the deferred progress is recorded with the end rather than lost.
func WithProgress(r *v1.Rollout, obs func(hostID string) Observation, now time.Time) (*v1.Rollout, []Event) {
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING || obs == nil {
		return r, nil
	}
	s := &stepper{in: r, r: r, now: now, pol: effective(r.GetPolicy()), onlyProgress: true}
	s.observe(obs)
	return s.r, s.res.Events
}

// mut, wave and host copy on write: the rollout, a wave, a host are
// copied when first written (shallow: what they hold is shared with the
// input until written through these), so a Step that marks hosts done
// copies those hosts, not the 10,000 others (BenchmarkStep10k). Nothing
// the input holds is ever written: every write goes through them.
func (s *stepper) mut() *v1.Rollout {
	s.decided = true
	if s.r == s.in {
		s.r = shallowCopy(s.in, "waves")
		s.r.Waves = slices.Clone(s.in.Waves)
		s.copied = make([][]bool, len(s.r.Waves))
	}
	return s.r
}

func (s *stepper) wave(i int) *v1.Wave {
	r := s.mut()
	if s.copied[i] == nil {
		in := r.Waves[i]
		r.Waves[i] = shallowCopy(in, "hosts")
		r.Waves[i].Hosts = slices.Clone(in.Hosts)
		s.copied[i] = make([]bool, len(r.Waves[i].Hosts))
	}
	return r.Waves[i]
}

func (s *stepper) host(i, j int) *v1.HostProgress {
	w := s.wave(i)
	if !s.copied[i][j] {
		w.Hosts[j] = copyHost(w.Hosts[j])
		s.copied[i][j] = true
	}
	return w.Hosts[j]
}

// copyHost is a shallow copy of h (its timestamps and its unknown fields'
// bytes shared: nothing writes them in place), written out: 10,000 of them by reflection took twice a deep
// clone's time. TestCopyHostCopiesEveryField fails when HostProgress
// gains a field this does not copy.
func copyHost(h *v1.HostProgress) *v1.HostProgress {
	c := &v1.HostProgress{HostId: h.HostId, State: h.State, Unknown: h.Unknown, Reason: h.Reason, StartedAt: h.StartedAt,
		DoneAt: h.DoneAt, Phase: h.Phase, Zone: h.Zone, InPlace: h.InPlace}
	if u := h.ProtoReflect().GetUnknown(); len(u) > 0 {
		c.ProtoReflect().SetUnknown(u)
	}
	return c
}

// shallowCopy is a new message with m's fields but skip (the caller sets
// it): messages they hold (a field's, a list's elements, a map's values)
// are m's, lists and maps are new (so that writing an element or appending
// never writes m's).
func shallowCopy[M proto.Message](m M, skip protoreflect.Name) M {
	src := m.ProtoReflect()
	dst := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Name() == skip:
		case fd.IsList():
			from, to := v.List(), dst.Mutable(fd).List()
			for i := range from.Len() {
				to.Append(from.Get(i))
			}
		case fd.IsMap():
			to := dst.Mutable(fd).Map()
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				to.Set(k, mv)
				return true
			})
		default:
			dst.Set(fd, v)
		}
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(u) // shared, as copyHost's
	}
	return dst.Interface().(M)
}

// progress is host for a change of progress only (Result.ProgressOnly).
func (s *stepper) progress(i, j int) *v1.HostProgress {
	decided := s.decided
	h := s.host(i, j)
	s.decided = decided
	return h
}

// progressed records the rollout's last progress (Result.ProgressOnly).
func (s *stepper) progressed() {
	decided := s.decided
	s.mut().LastProgressAt = s.ts()
	s.decided = decided
}

func (s *stepper) ts() *timestamppb.Timestamp { return timestamppb.New(s.now) }

func (s *stepper) emit(kind string, wave int, host, msg string) {
	s.res.Events = append(s.res.Events, Event{Kind: kind, Wave: wave, Host: host, Message: msg})
}

func waveStarted(w *v1.Wave) bool {
	switch w.GetState() {
	case v1.WaveState_WAVE_STATE_PROGRESSING, v1.WaveState_WAVE_STATE_BAKING,
		v1.WaveState_WAVE_STATE_DONE, v1.WaveState_WAVE_STATE_FAILED:
		return true
	}
	return false
}

func (s *stepper) observe(obs func(string) Observation) {
	gen, to, svc := s.r.GetGeneration(), s.r.GetToVersion(), s.r.GetService()
	for i := range s.r.Waves {
		if w := s.r.Waves[i]; w == nil || !waveStarted(w) {
			continue
		}
		for j := range s.r.Waves[i].Hosts {
			h := s.r.Waves[i].Hosts[j]
			if h == nil {
				continue
			}
			st := h.GetState()
			if st != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING && st != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
				continue
			}
			id := h.GetHostId()
			o := obs(id)
			goneByGossip := o.Gossip == "dead" || o.Gossip == "left"
			reachable := o.Connected && !goneByGossip
			switch {
			case s.onlyProgress:
			case !reachable && !h.GetUnknown():
				s.host(i, j).Unknown = true
				msg := "agent stream down: host counts as unavailable"
				switch {
				case o.Connected:
					msg = "gossip says the host is " + o.Gossip + " (its stream has not dropped yet): host counts as unavailable"
				case o.Gossip == "alive" || o.Gossip == "suspect":
					msg = "agent stream down but the host is " + o.Gossip + " in gossip (reconnecting?): host counts as unavailable"
				case goneByGossip:
					msg = "agent stream down and the host is " + o.Gossip + " in gossip: host counts as unavailable"
				}
				s.emit(EventHostUnknown, i, id, msg)
			case reachable && h.GetUnknown():
				s.host(i, j).Unknown = false
				s.emit(EventHostBack, i, id, "agent stream up again")
			}
			rep := o.Report
			if rep == nil || rep.GetGeneration() != gen || (rep.GetService() != "" && svc != "" && rep.GetService() != svc) {
				continue
			}
			ph := rep.GetPhase()
			if ph != s.r.Waves[i].Hosts[j].GetPhase() {
				s.progress(i, j).Phase = ph
			}
			if rep.GetInPlace() != s.r.Waves[i].Hosts[j].GetInPlace() {
				s.progress(i, j).InPlace = rep.GetInPlace()
			}
			switch {
			case s.onlyProgress && (ph == v1.Phase_PHASE_FAILED || ph == v1.Phase_PHASE_REVERTED):
			case ph == v1.Phase_PHASE_FAILED || ph == v1.Phase_PHASE_REVERTED:
				reason := rep.GetReason()
				if reason == "" {
					reason = "phase " + phaseName(ph) + " without a reason"
				}
				hp := s.host(i, j)
				hp.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED
				hp.Reason = clip(reason, maxHostReason)
				s.wave(i).Failures++
				msg := reason
				if st == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
					msg = phaseName(ph) + " after it was done: " + reason
				}
				if rep.GetInPlace() {
					msg += " (in place: no restart)"
				}
				s.emit(EventHostFailed, i, id, msg)
			case st == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING && s.r.GetRemove() && ph == v1.Phase_PHASE_REMOVED:
				hp := s.progress(i, j)
				hp.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
				hp.DoneAt = s.ts()
				s.progressed()
				s.emit(EventHostDone, i, id, "removed: stopped, its files gone")
			case st == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING && !s.r.GetRemove() && ph == v1.Phase_PHASE_HEALTHY && rep.GetCurrentVersion() == to:
				hp := s.progress(i, j)
				hp.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
				hp.DoneAt = s.ts()
				s.progressed()
				msg := "healthy on " + targetName(s.r)
				if rep.GetInPlace() {
					msg += ", applied in place (no restart)"
				}
				s.emit(EventHostDone, i, id, msg)
			}
		}
	}
}

// checkBudgets fails the rollout if a wave is over its failure budget and
// reports whether it did.
func (s *stepper) checkBudgets() bool {
	for i, w := range s.r.Waves {
		if w.GetFailures() <= s.pol.maxFailures {
			continue
		}
		var failed []string
		for _, h := range w.GetHosts() {
			if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED {
				failed = append(failed, h.GetHostId()+": "+h.GetReason())
			}
		}
		reason := fmt.Sprintf("%s: %d host(s) failed, budget %d: %s",
			waveName(i, w), w.GetFailures(), s.pol.maxFailures, listed(failed, "; "))
		s.fail(i, reason)
		return true
	}
	return false
}

// fail ends the rollout FAILED; wave i (if >= 0) is marked FAILED.
func (s *stepper) fail(i int, reason string) {
	r := s.mut()
	r.State = v1.RolloutState_ROLLOUT_STATE_FAILED
	r.Reason = reason
	r.FinishedAt = s.ts()
	r.FailedAt = s.ts()
	if i >= 0 {
		w := s.wave(i)
		w.State = v1.WaveState_WAVE_STATE_FAILED
		w.DoneAt = s.ts()
	}
	s.emit(EventRolloutFailed, i, "", reason)
	s.res.NextWake = time.Time{}
}

// advance moves the current wave (and the ones after it) as far as the rules
// allow at s.now. Every iteration either returns or moves one wave strictly
// forward (PENDING -> PROGRESSING -> BAKING -> DONE), so it ends.
func (s *stepper) advance() {
	for {
		i := -1
		for k, w := range s.r.Waves {
			if w.GetState() != v1.WaveState_WAVE_STATE_DONE {
				i = k
				break
			}
		}
		if i < 0 {
			r := s.mut()
			r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
			r.FinishedAt = s.ts()
			msg := fmt.Sprintf("%s now runs %s on %d host(s)", r.GetService(), targetName(r), countHosts(r))
			if r.GetLeft() {
				msg = fmt.Sprintf("%s removed from the %d host(s) the selector left", r.GetService(), countHosts(r))
			} else if r.GetRemove() {
				msg = fmt.Sprintf("%s removed from %d host(s)", r.GetService(), countHosts(r))
			}
			s.emit(EventRolloutSucceeded, NoWave, "", msg)
			return
		}
		w := s.r.Waves[i]
		if w == nil {
			s.fail(NoWave, fmt.Sprintf("wave %d is missing from the plan", i))
			return
		}
		switch w.GetState() {
		case v1.WaveState_WAVE_STATE_PENDING, v1.WaveState_WAVE_STATE_UNSPECIFIED:
			if s.r.GetPolicy().GetApproveEachWave() && i > 0 && !w.GetApproved() {
				// A person approves each wave: wait, with no deadline running.
				if !w.GetWaitingApproval() {
					s.wave(i).WaitingApproval = true
					s.emit(EventWaveWaitingApproval, i, "", fmt.Sprintf("%s waits for approval: fleetwave rollout approve %s --wave %d", waveName(i, w), s.r.GetService(), i))
				}
				return
			}
			if s.held != "" {
				// A closed window or a blackout: wait at the boundary, with
				// no deadline running.
				if s.r.GetHeld() != s.held {
					s.mut().Held = s.held
					s.emit(EventWaveHeld, i, "", fmt.Sprintf("%s waits: %s", waveName(i, w), s.held))
				}
				return
			}
			nw := s.wave(i)
			nw.State = v1.WaveState_WAVE_STATE_PROGRESSING
			nw.StartedAt = s.ts()
			s.mut().LastProgressAt = s.ts()
			s.emit(EventWaveStarted, i, "", fmt.Sprintf("%s started: %d host(s)", waveName(i, w), len(w.GetHosts())))
		case v1.WaveState_WAVE_STATE_PROGRESSING:
			if !s.progressWave(i) {
				return
			}
		case v1.WaveState_WAVE_STATE_BAKING:
			until := w.GetBakeUntil().AsTime()
			if s.now.Before(until) {
				s.res.NextWake = until
				return
			}
			s.waveDone(i, "baked")
		default: // FAILED in a progressing rollout: only a corrupt record.
			s.fail(i, fmt.Sprintf("%s is failed", waveName(i, w)))
			return
		}
	}
}

// progressWave handles the PROGRESSING current wave i. It reports whether
// the wave moved on (to BAKING or DONE) so the caller should look again.
func (s *stepper) progressWave(i int) bool {
	w := s.r.Waves[i]
	updating, complete := 0, true
	for _, h := range w.GetHosts() {
		switch h.GetState() {
		case v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED:
		case v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING:
			updating++
			complete = false
		default:
			complete = false
		}
	}
	if complete {
		if s.pol.bake > 0 {
			until := s.now.Add(s.pol.bake)
			nw := s.wave(i)
			nw.State = v1.WaveState_WAVE_STATE_BAKING
			nw.BakeUntil = timestamppb.New(until)
			s.emit(EventWaveBaking, i, "", fmt.Sprintf("%s baking for %s, until %s", waveName(i, w), s.pol.bake, until.UTC().Format(time.RFC3339)))
			return true
		}
		s.waveDone(i, "done")
		return true
	}

	if s.r.GetLastProgressAt() == nil { // corrupt record: start counting now
		s.mut().LastProgressAt = s.ts()
	}
	deadlineAt := s.r.GetLastProgressAt().AsTime().Add(s.pol.deadline)
	if !s.now.Before(deadlineAt) {
		var ups []string
		for _, h := range s.r.Waves[i].GetHosts() {
			if h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
				continue
			}
			d := phaseName(h.GetPhase())
			if h.GetPhase() == v1.Phase_PHASE_UNSPECIFIED {
				d = "no report yet"
			}
			if h.GetUnknown() {
				d += ", unknown"
			}
			ups = append(ups, fmt.Sprintf("%s (%s)", h.GetHostId(), d))
		}
		s.fail(i, fmt.Sprintf("progress deadline %s exceeded: %d host(s) updating: %s", s.pol.deadline, len(ups), listed(ups, ", ")))
		return false
	}

	zones := s.zoneRoom()
	if zones != nil {
		if z, failed, ok := s.zoneStuck(i); ok {
			s.fail(i, fmt.Sprintf("%s: %d host(s) failed, max_unavailable_per_zone %s allows %d unavailable: its pending hosts can never move",
				zoneName(z), failed, s.r.GetPolicy().GetMaxUnavailablePerZone(), ZoneLimits(s.r)[z]))
			return false
		}
	}
	for j := range s.r.Waves[i].Hosts {
		if updating >= s.pol.maxParallel {
			break
		}
		h := s.r.Waves[i].Hosts[j]
		if h == nil || h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING {
			continue
		}
		if zones != nil {
			if zones[h.GetZone()] <= 0 {
				continue // its zone is at max_unavailable_per_zone
			}
			zones[h.GetZone()]--
		}
		hp := s.host(i, j)
		hp.State = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
		hp.StartedAt = s.ts()
		updating++
		s.emit(EventHostAssigned, i, hp.GetHostId(), fmt.Sprintf("assigned %s generation %d", targetName(s.r), s.r.GetGeneration()))
	}
	s.res.NextWake = deadlineAt
	return false
}

// Unavailable reports whether h counts against its zone's
// max_unavailable_per_zone: updating, failed, or done but unreachable.
func Unavailable(h *v1.HostProgress) bool {
	switch h.GetState() {
	case v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING, v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED:
		return true
	case v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE:
		return h.GetUnknown()
	}
	return false
}

// ZoneLimits is, for each zone of r's plan ("" for hosts without one), how
// many of its hosts may be unavailable at once under the policy's
// max_unavailable_per_zone; nil when the policy sets no limit.
func ZoneLimits(r *v1.Rollout) map[string]int {
	lim := r.GetPolicy().GetMaxUnavailablePerZone()
	if lim == "" {
		return nil
	}
	size := map[string]int{}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			size[h.GetZone()]++
		}
	}
	out := make(map[string]int, len(size))
	for z, n := range size {
		out[z] = spec.ZoneLimit(lim, n)
		if out[z] == 0 { // an invalid limit read back from storage: one at a time
			out[z] = 1
		}
	}
	return out
}

// zoneStuck reports a zone with a pending host in wave i whose failed
// hosts alone fill its max_unavailable_per_zone: a failed host stays
// failed, so that host can never move.
func (s *stepper) zoneStuck(i int) (zone string, failed int, stuck bool) {
	lim := ZoneLimits(s.r)
	nFailed := map[string]int{}
	for _, w := range s.r.GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED {
				nFailed[h.GetZone()]++
			}
		}
	}
	for _, h := range s.r.Waves[i].GetHosts() {
		if z := h.GetZone(); h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING && nFailed[z] >= lim[z] {
			return z, nFailed[z], true
		}
	}
	return "", 0, false
}

// zoneName is `zone "a"`, or "hosts without a zone".
func zoneName(z string) string {
	if z == "" {
		return "hosts without a zone"
	}
	return fmt.Sprintf("zone %q", z)
}

// zoneRoom is, for each zone, how many more of its hosts may become
// unavailable now (nil: no limit).
func (s *stepper) zoneRoom() map[string]int {
	room := ZoneLimits(s.r)
	if room == nil {
		return nil
	}
	for _, w := range s.r.GetWaves() {
		for _, h := range w.GetHosts() {
			if Unavailable(h) {
				room[h.GetZone()]--
			}
		}
	}
	return room
}

func (s *stepper) waveDone(i int, how string) {
	w := s.wave(i)
	w.State = v1.WaveState_WAVE_STATE_DONE
	w.DoneAt = s.ts()
	s.emit(EventWaveDone, i, "", fmt.Sprintf("%s %s: %d host(s), %d failure(s)", waveName(i, w), how, len(w.GetHosts()), w.GetFailures()))
}

func waveName(i int, w *v1.Wave) string {
	if w.GetCanary() {
		return fmt.Sprintf("wave %d (canary)", i)
	}
	return fmt.Sprintf("wave %d", i)
}

func phaseName(p v1.Phase) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "PHASE_"))
}

func stateName(st v1.RolloutState) string {
	return strings.TrimPrefix(st.String(), "ROLLOUT_STATE_")
}

// listed joins at most maxListed items and says how many were left out.
func listed(items []string, sep string) string {
	if len(items) <= maxListed {
		return strings.Join(items, sep)
	}
	return fmt.Sprintf("%s%sand %d more", strings.Join(items[:maxListed], sep), sep, len(items)-maxListed)
}

func countHosts(r *v1.Rollout) int {
	n := 0
	for _, w := range r.GetWaves() {
		n += len(w.GetHosts())
	}
	return n
}

// maxHostReason bounds the reason a failed host keeps in the rollout
// record (its event keeps the whole report's reason, up to 4 KB): a part
// of a split rollout holds 500 hosts, and 500 reasons of 4 KB made a part
// of 2 MB, over etcd's default --max-request-bytes (1.5 MiB), so a wave
// failing on most of its hosts could not be recorded.
const maxHostReason = 512
