package rollout

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Gates are what holds a service's rollouts besides its own state (issue
// 18), as values the caller reads from its store:
//
//   - the service's deploy windows (spec rollout.windows): a rollout starts,
//     and a started one begins its next wave, only inside one of them;
//   - coordinator-wide blackouts (fleetwave freeze): no rollout starts
//     and rollouts in flight wait at their next wave boundary while one
//     is on;
//   - the services it comes after (spec rollout.after): a rollout starts only
//     when the newest rollout of each of them has succeeded; a failed one,
//     or a rollback (an operator undid the upstream's release), holds it.
//
// An admin's override (status hold_override) lifts all three for one
// release with the spec live when it was given (a spec applied later is
// held again). A rollback is never held (it is an operator's repair).
type Gates struct {
	Blackouts []*v1.Blackout
	// Upstream: for each service named in rollout.after, its newest rollout
	// (Deciding), nil when it has none; a name absent from the map is a
	// service that does not exist.
	Upstream map[string]*v1.Rollout
	// Cycle: a cycle of rollout.after through the service (AfterCycle,
	// nil when none). Apply refuses one, but two specs applied at the same
	// time can close it; every service on it would wait forever, so it
	// holds with a reason that says what to do.
	Cycle []string
	// Windows are the service's rollout.windows as the caller parsed them
	// (spec.ParseWindows, once per change of the windows), WindowsErr why
	// they do not parse (only a record written before validation): the
	// engine only evaluates them. Parsing resolves time zones
	// (time.LoadLocation reads the machine's zoneinfo), which is I/O the
	// engine must not do. A count that does not match the spec's holds
	// (a caller that forgot to parse them must not roll out unwindowed).
	Windows    []spec.Window
	WindowsErr error
}

// Hold is what holds svc's rollouts at now.
type Hold struct {
	// Clock: a window is closed or a blackout is on; rollouts in flight
	// wait at their next wave boundary. "" when neither.
	Clock string
	// After: an upstream service has not succeeded (only new rollouts
	// wait). "" when none.
	After string
	// Wake is when Clock may next change by time alone (a window opens or
	// closes, a blackout starts or ends); zero if never.
	Wake time.Time
}

// Reason is why a new rollout waits ("" when nothing holds it).
func (h Hold) Reason() string {
	switch {
	case h.Clock != "" && h.After != "":
		return h.Clock + "; " + h.After
	case h.Clock != "":
		return h.Clock
	}
	return h.After
}

// Holding is what holds svc's rollouts at now, given the gates. The
// override (status hold_override) for version and svc's spec revision
// lifts every hold; version is
// the release a rollout would roll out ("" when none is named). The
// windows are g.Windows (parsed by the caller); a spec whose windows do
// not parse (g.WindowsErr: only a record written before validation)
// holds with the parse error.
func Holding(svc *v1.Service, g Gates, version string, now time.Time) Hold {
	var h Hold
	if Overridden(svc, version) {
		return h
	}
	pol := svc.GetSpec().GetRollout()
	var clock []string
	ws := g.Windows
	if err := g.WindowsErr; err != nil {
		clock = append(clock, "deploy windows unreadable: "+err.Error())
	} else if len(ws) != len(pol.GetWindows()) {
		clock = append(clock, fmt.Sprintf("deploy windows not parsed: the spec has %d, the gates %d", len(pol.GetWindows()), len(ws)))
	} else if open, next := spec.InWindows(ws, now); !open {
		h.Wake = next
		names := make([]string, len(ws))
		for i, w := range ws {
			names[i] = w.String()
		}
		clock = append(clock, fmt.Sprintf("outside the deploy windows (%s); next opens %s", strings.Join(names, ", "), fmtTime(spec.NextOpening(ws, now))))
	} else {
		h.Wake = next
	}
	for _, b := range sortedBlackouts(g.Blackouts) {
		from, to := b.GetFrom().AsTime(), b.GetTo().AsTime()
		switch {
		case !now.Before(to):
			continue
		case now.Before(from):
			h.Wake = earliest(h.Wake, from)
			continue
		}
		h.Wake = earliest(h.Wake, to)
		clock = append(clock, fmt.Sprintf("blackout %s until %s: %s", b.GetId(), fmtTime(to), b.GetReason()))
	}
	h.Clock = strings.Join(clock, "; ")
	var after []string
	if len(g.Cycle) > 0 {
		after = append(after, fmt.Sprintf("rollout.after closes a cycle: %s (specs applied at the same time): apply one of them without it, or fleetwave rollout override", strings.Join(g.Cycle, " → ")))
	}
	for _, name := range pol.GetAfter() {
		if why := upstreamHold(name, g.Upstream); why != "" {
			after = append(after, why)
		}
	}
	h.After = strings.Join(after, "; ")
	return h
}

// upstreamHold is why a service named in rollout.after holds a rollout, ""
// when it does not.
func upstreamHold(name string, up map[string]*v1.Rollout) string {
	r, ok := up[name]
	switch {
	case !ok:
		return fmt.Sprintf("waits for service %s (after), which does not exist", name)
	case r == nil:
		return fmt.Sprintf("waits for service %s (after): it has no rollout yet", name)
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED && r.GetRollback():
		// An operator undid the upstream's release: what this service's
		// release comes after is not out.
		return fmt.Sprintf("held by service %s (after): its newest rollout %s rolled it back to %s; a rollout of %s must succeed first", name, r.GetId(), orNone(r.GetToVersion()), name)
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
		return ""
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED:
		return fmt.Sprintf("held by service %s (after): its rollout %s to %s failed (%s); a rollout of %s must succeed first", name, r.GetId(), orNone(r.GetToVersion()), r.GetReason(), name)
	}
	return fmt.Sprintf("waits for service %s (after): its rollout %s to %s is %s", name, r.GetId(), orNone(r.GetToVersion()), strings.ToLower(stateName(r.GetState())))
}

// Gated is d with the hold applied: what would start a rollout or change
// hosts (start, supersede, leave) waits, with the hold's reason, while
// anything holds it. A decision with nothing to hold is returned as is.
func Gated(d Decision, h Hold) Decision {
	reason := h.Reason()
	if reason == "" {
		return d
	}
	switch d.Action {
	case ActionStart, ActionSupersede, ActionLeave:
		return Decision{Action: ActionWait, Version: d.Version, Config: d.Config, Reason: reason}
	}
	return d
}

// StepHeld is Step for a rollout whose service is held by the clock (a
// closed window, a blackout: Hold.Clock, "" when nothing holds it): hosts
// moving are still observed and the current wave finishes (and bakes),
// but the next wave does not start while held; rollout.held records why
// (EventWaveHeld when it is set, EventWaveReleased when it is cleared). No
// progress deadline runs for a held wave. A rollback is never held.
func StepHeld(r *v1.Rollout, obs func(hostID string) Observation, now time.Time, held string) (*v1.Rollout, Result) {
	if r.GetRollback() {
		held = ""
	}
	return stepGated(r, obs, now, held)
}

// PlanPreview is what a rollout of svc to version would be if it started
// at now: the plan Begin would write (New, with the id NextID), the hosts
// in it that are not reachable now (their wave would wait for them), and
// what Decide and the gates say. It changes nothing.
type PlanPreview struct {
	Rollout  *v1.Rollout
	Unknown  []string
	Decision Decision
	Hold     Hold
}

// Preview plans, without acting, a rollout of svc to version at now: the
// same New that Begin calls, so a preview and the rollout that follows it
// with the same hosts cannot disagree. d is what the policy decides now
// (Gated Decide), h the hold.
func Preview(svc *v1.Service, version string, hosts []Host, obs func(hostID string) Observation, d Decision, h Hold, now time.Time) PlanPreview {
	r := New(NextID(svc), svc, version, hosts, now)
	var unknown []string
	for _, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			o := Observation{}
			if obs != nil {
				o = obs(hp.GetHostId())
			}
			if !o.Connected || o.Gossip == "dead" || o.Gossip == "left" {
				unknown = append(unknown, hp.GetHostId())
			}
		}
	}
	return PlanPreview{Rollout: r, Unknown: unknown, Decision: d, Hold: h}
}

func sortedBlackouts(bs []*v1.Blackout) []*v1.Blackout {
	out := append([]*v1.Blackout(nil), bs...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].GetFrom().AsTime(), out[j].GetFrom().AsTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].GetId() < out[j].GetId()
	})
	return out
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// MaxOverrideReason bounds an override's reason.
const MaxOverrideReason = 256

// Override is the hold override an admin gives svc's release version
// (the newest), with svc's live spec, and a reason, at now. It refuses (naming the field and
// value) an empty or too long reason, and a service with no release.
func Override(svc *v1.Service, version, reason, by string, now time.Time) (*v1.HoldOverride, error) {
	name := svc.GetSpec().GetName()
	switch {
	case strings.TrimSpace(reason) == "":
		return nil, fmt.Errorf("reason: must be set: say why %s may roll out past its windows, blackouts and after", name)
	case len(reason) > MaxOverrideReason:
		return nil, fmt.Errorf("reason: %d bytes, more than %d", len(reason), MaxOverrideReason)
	case version == "":
		return nil, fmt.Errorf("service: %s has no release to let through", name)
	}
	return &v1.HoldOverride{Version: version, Reason: reason, By: by, At: timestamppb.New(now), SpecRevision: svc.GetSpecRevision()}, nil
}

// Overridden reports whether svc's override (status hold_override) lets
// version through: the release it names with the spec revision live when
// it was given. A spec applied since is held again: an override given
// for one change (perhaps weeks ago, by someone else) must not let a
// later one past a blackout.
func Overridden(svc *v1.Service, version string) bool {
	o := svc.GetStatus().GetHoldOverride()
	return o != nil && version != "" && o.GetVersion() == version && o.GetSpecRevision() == svc.GetSpecRevision()
}

// HoldOverridden is the message of EventHoldOverridden.
func HoldOverridden(o *v1.HoldOverride) string {
	return fmt.Sprintf("%s with %s may roll out past windows, blackouts and after: %s", o.GetVersion(), SpecName(o.GetSpecRevision()), o.GetReason())
}

// AfterCycle is the cycle of rollout.after that the spec of service name
// would close (after names the services it comes after; others the
// rollout.after of every other service, by name), as the names along it
// starting and ending with name; nil when there is none.
func AfterCycle(name string, after []string, others map[string][]string) []string {
	graph := func(n string) []string {
		if n == name {
			return after
		}
		return others[n]
	}
	// Depth-first from name, in the order given (so the cycle named is
	// the same for the same specs).
	seen := map[string]bool{}
	var path []string
	var walk func(n string) []string
	walk = func(n string) []string {
		path = append(path, n)
		for _, m := range graph(n) {
			if m == name {
				return append(append([]string(nil), path...), name)
			}
			if seen[m] {
				continue
			}
			seen[m] = true
			if c := walk(m); c != nil {
				return c
			}
		}
		path = path[:len(path)-1]
		return nil
	}
	return walk(name)
}
