package rollout

import (
	"sort"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Policy defaults. The policy's modes are internal/spec's (spec.ModeAuto,
// spec.ModeManual, spec.OnNewRelease*).
const (
	DefaultCanary           = 1
	DefaultMaxParallel      = 1
	DefaultProgressDeadline = 10 * time.Minute

	// ZoneLabel is the host label plans are spread over.
	ZoneLabel = "zone"

	// ReasonNoHosts is the reason of a rollout that selected no host.
	ReasonNoHosts = "no hosts selected"
)

// Host is a candidate host for a plan.
type Host struct {
	ID     string
	Labels map[string]string
}

// Selects reports whether labels match every key=value of selector (empty
// selector selects all).
func Selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		got, ok := labels[k]
		if !ok || got != v {
			return false
		}
	}
	return true
}

// WithDefaults returns a copy of p (nil allowed) with defaults filled: canary
// 1 (0 if no_canary), waves [100], max_parallel 1, bake 0, max_failures 0,
// progress_deadline 10m, mode "auto". A negative bake counts as 0 and a
// non-positive progress deadline as the default. Waves are copied as given;
// New tolerates waves that are not increasing or do not end at 100.
func WithDefaults(p *v1.RolloutPolicy) *v1.RolloutPolicy {
	out := &v1.RolloutPolicy{}
	if p != nil {
		out = proto.Clone(p).(*v1.RolloutPolicy)
	}
	if out.NoCanary {
		out.Canary = 0
	} else if out.Canary == 0 {
		out.Canary = DefaultCanary
	}
	if len(out.Waves) == 0 {
		out.Waves = []uint32{100}
	}
	if out.MaxParallel == 0 {
		out.MaxParallel = DefaultMaxParallel
	}
	if out.Bake == nil || out.Bake.AsDuration() < 0 {
		out.Bake = durationpb.New(0)
	}
	if out.ProgressDeadline == nil || out.ProgressDeadline.AsDuration() <= 0 {
		out.ProgressDeadline = durationpb.New(DefaultProgressDeadline)
	}
	if out.Mode == "" {
		out.Mode = spec.ModeAuto
	}
	return out
}

// New builds a rollout of svc to version `to` over the hosts (the engine
// filters by svc.Spec.Selector itself; hosts not selected are never in the
// plan). It is deterministic: same inputs give the same plan, whatever the
// order of hosts.
//
// Plan: first wave = canary (policy.canary hosts) unless no_canary, then one
// wave per cumulative percentage of the selected hosts (ceil), each wave
// non-empty (percentages that add no host are skipped; a percentage above 100
// counts as 100, and hosts left after the last percentage form a last wave).
// Hosts are ordered so each wave covers zones evenly where the label "zone"
// exists: sorted by id inside each zone, then zones interleaved round-robin in
// sorted order, hosts without a zone label forming one more group after the
// zones. The canary thus lands on the first zone's first host. Host ids that
// are empty are ignored; a duplicated id is planned once. With zone_order
// one_at_a_time the zones are not interleaved but planned one after the
// other, each cut by the waves' percentages of its own hosts (the canary
// from the first zone only): a zone is done, and baked, before the next
// starts. Each planned host records its zone (HostProgress.zone).
//
// from_version = svc.Status.StableVersion, generation =
// svc.Status.StableGeneration + 1, policy = WithDefaults(spec.rollout).
// state = WAITING_APPROVAL if mode "manual", else PROGRESSING with the first
// wave PROGRESSING (started_at = last_progress_at = now). All hosts are
// PENDING: the first Step assigns them. A rollout with zero selected hosts
// succeeds at once (state SUCCEEDED, reason "no hosts selected"), in either
// mode.
func New(id string, svc *v1.Service, to string, hosts []Host, now time.Time) *v1.Rollout {
	sp := svc.GetSpec()
	st := svc.GetStatus()
	pol := WithDefaults(sp.GetRollout())
	r := &v1.Rollout{
		Id:          id,
		Service:     sp.GetName(),
		FromVersion: st.GetStableVersion(),
		ToVersion:   to,
		Generation:  st.GetStableGeneration() + 1,
		Policy:      pol,
		Spec:        proto.Clone(svc.GetSpec()).(*v1.ServiceSpec),
		Waves:       planWaves(sp.GetSelector(), hosts, pol),
		CreatedAt:   timestamppb.New(now),
		// The live spec, against the one the stable release runs with.
		SpecRevision:        svc.GetSpecRevision(),
		FromSpecRevision:    st.GetStableSpecRevision(),
		AppliedSpecRevision: svc.GetSpecRevision(),
	}
	if st.GetStableSpec() != nil {
		r.SpecChanges = specdiff.HostChanges(st.GetStableSpec(), sp)
		// The rule the agents apply (lifecycle inPlaceChange) to the same
		// release: a config rollout of a change applied in place.
		r.InPlace = to == st.GetStableVersion() && specdiff.InPlace(st.GetStableSpec(), sp)
	}
	switch {
	case len(r.Waves) == 0:
		r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		r.Reason = ReasonNoHosts
		r.StartedAt = timestamppb.New(now)
		r.FinishedAt = timestamppb.New(now)
	case pol.GetMode() == spec.ModeManual:
		r.State = v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL
	default:
		start(r, now)
	}
	return r
}

// start moves a not yet started rollout to PROGRESSING with its first wave
// PROGRESSING, or to SUCCEEDED if it has no wave.
func start(r *v1.Rollout, now time.Time) {
	r.StartedAt = timestamppb.New(now)
	r.LastProgressAt = timestamppb.New(now)
	if len(r.Waves) == 0 {
		r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		r.Reason = ReasonNoHosts
		r.FinishedAt = timestamppb.New(now)
		return
	}
	r.State = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	if w := r.Waves[0]; w != nil {
		w.State = v1.WaveState_WAVE_STATE_PROGRESSING
		w.StartedAt = timestamppb.New(now)
	}
}

// planned is a selected host in plan order, with its zone.
type planned struct{ id, zone string }

// planWaves is the plan of New: the selected hosts cut into waves. With
// zone_order one_at_a_time the zones go one after the other (sorted, hosts
// without a zone last), each cut by the policy's waves, the canary taken
// from the first zone; otherwise the waves spread over the zones.
func planWaves(selector map[string]string, hosts []Host, pol *v1.RolloutPolicy) []*v1.Wave {
	groups := planGroups(selector, hosts)
	if pol.GetZoneOrder() != spec.ZoneOrderOneAtATime || len(groups) < 2 {
		return buildWaves(interleave(groups), pol)
	}
	var waves []*v1.Wave
	for i, g := range groups {
		zp := pol
		if i > 0 { // the canary is the first zone's
			zp = proto.Clone(pol).(*v1.RolloutPolicy)
			zp.NoCanary, zp.Canary = true, 0
		}
		for _, w := range buildWaves(g, zp) {
			w.Index = uint32(len(waves))
			waves = append(waves, w)
		}
	}
	return waves
}

// planOrder returns the ids of the selected hosts in plan order (the
// zones interleaved).
func planOrder(selector map[string]string, hosts []Host) []string {
	order := interleave(planGroups(selector, hosts))
	ids := make([]string, len(order))
	for i, p := range order {
		ids[i] = p.id
	}
	return ids
}

// interleave takes one host of each group in turn.
func interleave(groups [][]planned) []planned {
	var out []planned
	for round := 0; ; round++ {
		added := false
		for _, g := range groups {
			if round < len(g) {
				out = append(out, g[round])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

// planGroups returns the selected hosts by zone: each zone's hosts sorted
// by id, the zones sorted, hosts without a zone label one more group after
// them.
func planGroups(selector map[string]string, hosts []Host) [][]planned {
	type cand struct {
		id, zone string
		hasZone  bool
	}
	cands := make([]cand, 0, len(hosts))
	for _, h := range hosts {
		if h.ID == "" || !Selects(selector, h.Labels) {
			continue
		}
		z, ok := h.Labels[ZoneLabel]
		cands = append(cands, cand{id: h.ID, zone: z, hasZone: ok})
	}
	// Sort by id, then by zone so that a duplicated id resolves the same
	// way whatever the input order.
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.id != b.id {
			return a.id < b.id
		}
		if a.hasZone != b.hasZone {
			return a.hasZone
		}
		return a.zone < b.zone
	})
	byZone := map[string][]planned{}
	var zones []string
	var noZone []planned
	for i, c := range cands {
		if i > 0 && cands[i-1].id == c.id {
			continue
		}
		if !c.hasZone {
			noZone = append(noZone, planned{id: c.id})
			continue
		}
		if _, ok := byZone[c.zone]; !ok {
			zones = append(zones, c.zone)
		}
		byZone[c.zone] = append(byZone[c.zone], planned{id: c.id, zone: c.zone})
	}
	sort.Strings(zones)
	groups := make([][]planned, 0, len(zones)+1)
	for _, z := range zones {
		groups = append(groups, byZone[z])
	}
	if len(noZone) > 0 {
		groups = append(groups, noZone)
	}
	return groups
}

// buildWaves cuts the ordered hosts into waves following pol (defaulted).
func buildWaves(order []planned, pol *v1.RolloutPolicy) []*v1.Wave {
	n := len(order)
	var waves []*v1.Wave
	add := func(ids []planned, canary bool) {
		w := &v1.Wave{
			Index:  uint32(len(waves)),
			State:  v1.WaveState_WAVE_STATE_PENDING,
			Canary: canary,
			Hosts:  make([]*v1.HostProgress, len(ids)),
		}
		for i, p := range ids {
			w.Hosts[i] = &v1.HostProgress{HostId: p.id, Zone: p.zone, State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING}
		}
		waves = append(waves, w)
	}
	covered := 0
	if !pol.GetNoCanary() {
		if c := min(int64(pol.GetCanary()), int64(n)); c > 0 {
			add(order[:c], true)
			covered = int(c)
		}
	}
	for _, p := range pol.GetWaves() {
		p = min(p, 100)
		target := int((int64(n)*int64(p) + 99) / 100)
		if target <= covered {
			continue
		}
		add(order[covered:target], false)
		covered = target
	}
	if covered < n {
		add(order[covered:], false)
	}
	return waves
}

// NewRollback builds a fast rollout of svc back to an earlier release `to`:
// no canary, one wave of every selected host, no bake, no approval, and a
// failure budget as large as the fleet (a rollback does not stop half way:
// hosts that fail it show as failed). It is still policy-aware: at most
// max(policy.max_parallel, a quarter of the hosts) change at once, so a
// rollback never restarts the whole fleet in one go. When `to` is the stable
// release it runs with the stable spec.
func NewRollback(id string, svc *v1.Service, to string, hosts []Host, now time.Time) *v1.Rollout {
	pol := WithDefaults(svc.GetSpec().GetRollout())
	n := 0
	for _, h := range hosts {
		if Selects(svc.GetSpec().GetSelector(), h.Labels) {
			n++
		}
	}
	fast := proto.Clone(svc).(*v1.Service)
	if st := svc.GetStatus().GetStableSpec(); st != nil && to == svc.GetStatus().GetStableVersion() {
		fast.Spec = proto.Clone(st).(*v1.ServiceSpec)
		fast.SpecRevision = svc.GetStatus().GetStableSpecRevision()
	}
	if fast.Spec == nil {
		fast.Spec = &v1.ServiceSpec{}
	}
	fast.Spec.Selector = svc.GetSpec().GetSelector()
	fast.Spec.Rollout = &v1.RolloutPolicy{
		NoCanary:         true,
		Waves:            []uint32{100},
		MaxParallel:      max(pol.GetMaxParallel(), uint32((n+3)/4)),
		Bake:             durationpb.New(0),
		MaxFailures:      uint32(n),
		ProgressDeadline: pol.GetProgressDeadline(),
		Mode:             spec.ModeAuto,
	}
	r := New(id, fast, to, hosts, now)
	r.Rollback = true
	// The live spec's revision: a spec applied before the rollback does not
	// roll out after it (it is not undone by what it rolled back).
	r.AppliedSpecRevision = svc.GetSpecRevision()
	return r
}
