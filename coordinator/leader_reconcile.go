package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func (l *leader) reconcileAll(ctx context.Context, fence *store.Fence) (time.Time, error) {
	var next time.Time
	for name := range l.compared {
		if _, ok := l.c.mirror.Service(name); !ok {
			delete(l.compared, name) // the service was deleted
		}
	}
	for _, vs := range l.c.mirror.Services() {
		w, err := l.reconcile(ctx, fence, vs.Val.GetSpec().GetName())
		if err != nil {
			if errors.Is(err, store.ErrNotLeader) || ctx.Err() != nil {
				return next, err
			}
			l.c.log.Warn().Err(err).Str("service", vs.Val.GetSpec().GetName()).Msg("reconcile failed; will retry")
			continue
		}
		if !w.IsZero() && (next.IsZero() || w.Before(next)) {
			next = w
		}
	}
	return next, nil
}

// engineEvents turns the engine's events into stored events.
func engineEvents(r *v1.Rollout, evs []rollout.Event, now time.Time) []*v1.Event {
	out := make([]*v1.Event, 0, len(evs))
	for _, ev := range evs {
		out = append(out, &v1.Event{At: timestamppb.New(now), Service: r.GetService(), RolloutId: r.GetId(),
			Kind: ev.Kind, Wave: int32(ev.Wave), Host: ev.Host, Message: ev.Message})
	}
	return out
}

func event(r *v1.Rollout, service, kind, actor, msg string, now time.Time) *v1.Event {
	return &v1.Event{At: timestamppb.New(now), Service: service, RolloutId: r.GetId(), Kind: kind, Wave: rollout.NoWave, Actor: actor, Message: msg}
}

// commit writes a rollout's next state (concluding the service when it
// ended) with its events, fenced, and sends the alert when the rollout
// failed. It waits until the mirror has the write, except for a step that
// wrote the rollout alone while the loop reconciles on its own (l.lazy):
// then the loop keeps what it wrote (l.own) and reads it in place of the
// mirror's older copy.
func (l *leader) commit(ctx context.Context, fence *store.Fence, vs store.Versioned[*v1.Service], next *v1.Rollout, curRev int64, events []*v1.Event) error {
	svc := vs.Val
	var newSvc *v1.Service
	if rollout.Terminal(next) {
		newSvc = proto.Clone(svc).(*v1.Service)
		newSvc.Status = rollout.Conclude(svc.GetStatus(), next)
		if newSvc.GetStatus().GetRemoved() && !svc.GetStatus().GetRemoved() {
			events = append(events, serviceDeleted(next, time.Now()))
		}
	}
	name := next.GetService()
	prev, _ := l.rollout(name, next.GetId())
	base := store.RolloutBase{Rollout: prev.Val, Rev: curRev, Layout: l.c.mirror.RolloutLayout(name, next.GetId())}
	decision, rev, err := l.c.store.WriteRollout(ctx, fence, next, base, newSvc, vs.Rev, events...)
	if errors.Is(err, store.ErrHistoryShort) {
		l.c.log.Error().Err(err).Str("service", svc.GetSpec().GetName()).Str("rollout", next.GetId()).Msg("decision committed, events lost")
		err = nil
	}
	if err != nil {
		return err
	}
	l.written[name] = time.Now()
	l.c.metrics.rolloutWritten(prev.Val, next, l.c.mirror.Release)
	if rollout.Terminal(next) {
		l.pruneEvents(ctx, fence, next)
		l.c.log.Info().Str("service", svc.GetSpec().GetName()).Str("rollout", next.GetId()).Str("state", next.GetState().String()).Str("reason", next.GetReason()).Msg("rollout ended")
		l.c.alerts.rolloutEnded(svc, next)
	}
	if l.lazy && newSvc == nil {
		l.own[name] = ownWrite{rollout: store.Versioned[*v1.Rollout]{Val: next, Rev: decision, Created: prev.Created}, last: rev}
		return nil
	}
	delete(l.own, name)
	if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
		return err
	}
	if rollout.Terminal(next) {
		l.pruneEnded(ctx, fence, name)
	}
	return nil
}

// withProgress is the base a rollout in progress ends from (an abort, a
// supersede, a failed comparison): its stored copy with the progress its
// hosts' reports show (rollout.WithProgress: progress the loop deferred,
// progressWriteEvery, is recorded with the end, not lost), and that
// progress's events, to be written with the end's.
func (l *leader) withProgress(r *v1.Rollout, now time.Time) (*v1.Rollout, []*v1.Event) {
	next, evs := rollout.WithProgress(r, l.observe(r.GetService()), now)
	return next, engineEvents(next, evs, now)
}

// progressWriteEvery is how often at most the leader writes a rollout step
// that changes only progress (rollout.Result.ProgressOnly: hosts' phases,
// hosts done while their wave goes on): each write is a transaction the
// leader waits for, and during a wave such steps were most of them, each
// delaying the step that moves the wave on when its last host is done
// (issue 16). Displays show a phase or a host done at most this late;
// every decision (a wave moving, a host failing or unknown, a host
// started) is written at once, with the progress before it.
const progressWriteEvery = 500 * time.Millisecond

// ownWrite is a rollout as the loop wrote it, before its mirror has it:
// the rollout with the revision of the decision (which the next write
// compares), and the highest revision of the write.
type ownWrite struct {
	rollout store.Versioned[*v1.Rollout]
	last    int64
}

// rollout is the mirror's copy of a rollout, or what the loop last wrote
// of it when the mirror has not caught up with that yet.
func (l *leader) rollout(service, id string) (store.Versioned[*v1.Rollout], bool) {
	vr, ok := l.c.mirror.Rollout(service, id)
	o, has := l.own[service]
	switch {
	case !has:
	case ok && vr.Rev >= o.rollout.Rev:
		delete(l.own, service) // the mirror caught up
	case o.rollout.Val.GetId() == id:
		return o.rollout, true
	}
	return vr, ok
}

// settle waits until the mirror has every write the loop did not wait
// for, so that what reads the mirror (operator requests) sees them.
func (l *leader) settle(ctx context.Context) error {
	var last int64
	for _, o := range l.own {
		last = max(last, o.last)
	}
	if last == 0 {
		return nil
	}
	if err := l.c.mirror.WaitRev(ctx, last); err != nil {
		return err
	}
	clear(l.own)
	return nil
}

// current returns the service's newest rollout with its revisions.
func (l *leader) current(name string, svc *v1.Service) (store.Versioned[*v1.Rollout], bool, error) {
	id := svc.GetStatus().GetLastRolloutId()
	if id == "" {
		return store.Versioned[*v1.Rollout]{}, false, nil
	}
	vr, ok := l.rollout(name, id)
	if !ok {
		return vr, false, fmt.Errorf("rollout %s/%s named by the service is missing", name, id)
	}
	return vr, true, nil
}

// reconcile acts on rollout.Decide for the service (supersede the rollout
// in flight, or start one for the newest release) and steps the rollout in
// flight. It returns when it next needs to run.
func (l *leader) reconcile(ctx context.Context, fence *store.Fence, name string) (time.Time, error) {
	vs, ok := l.c.mirror.Service(name)
	if !ok {
		return time.Time{}, nil
	}
	svc := vs.Val
	log := l.c.log.With().Str("service", name).Logger()
	now := time.Now()
	vr, has, err := l.current(name, svc)
	if err != nil {
		return time.Time{}, err
	}
	cur := vr.Val

	// A coordinator that does not read split rollouts registered (late,
	// or a downgrade): the service's rollout is rewritten in one key, or
	// that coordinator would assign its hosts as if none ran.
	if old := l.c.splitUnreader(); has && old != "" && l.c.mirror.RolloutLayout(name, cur.GetId()) == store.Split {
		rev, err := l.c.store.UnsplitRollout(ctx, fence, store.RolloutBase{Rollout: cur, Rev: vr.Rev, Layout: store.Split})
		if err != nil {
			return time.Time{}, err
		}
		log.Warn().Str("rollout", cur.GetId()).Str("coordinator", old).Msg("rollout rewritten in one key: a registered coordinator does not read split rollouts")
		delete(l.own, name)
		if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
			return time.Time{}, err
		}
		return l.reconcile(ctx, fence, name)
	}

	// A failed rollout records when every host it moved ran a good release
	// again (time to restore). Only the rollout is written: the service's
	// status (its freeze) was concluded when it failed.
	if has && cur.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED && cur.GetRestoredAt() == nil && rollout.Restored(cur, l.observe(name)) {
		next := proto.Clone(cur).(*v1.Rollout)
		next.RestoredAt = timestamppb.New(now)
		took := now.Sub(cur.GetFailedAt().AsTime()).Round(time.Millisecond)
		ev := event(next, name, rollout.EventFleetRestored, "", fmt.Sprintf("every host that moved runs %s again, %s after the failure", orNone(cur.GetFromVersion()), took), now)
		base := store.RolloutBase{Rollout: cur, Rev: vr.Rev, Layout: l.c.mirror.RolloutLayout(name, cur.GetId())}
		_, rev, err := l.c.store.WriteRollout(ctx, fence, next, base, nil, 0, ev)
		if err != nil {
			return time.Time{}, err
		}
		log.Info().Str("rollout", cur.GetId()).Dur("after", took).Msg("fleet restored after failed rollout")
		if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
			return time.Time{}, err
		}
		return l.reconcile(ctx, fence, name)
	}

	dr, created, err := l.deciding(name, vr)
	if err != nil {
		return time.Time{}, err
	}
	d := rollout.Decide(svc, dr, created, l.releases(name))
	// Windows, blackouts and after hold what would change hosts (policy.go).
	hold := l.c.holding(svc, d.Version, now)
	d = rollout.Gated(d, hold)
	switch d.Action {
	case rollout.ActionLeave:
		// The hosts the selector leaves out are removed in waves.
		r, st, res := rollout.BeginLeave(svc, dr, l.hosts(), l.observe(name), now)
		if r != nil {
			return res.NextWake, l.start(ctx, fence, vs, r, st, res, "", now)
		}
		next := proto.Clone(svc).(*v1.Service)
		next.Status = st
		msg := fmt.Sprintf("selector %s recorded: no host that has the service is left out", rollout.FmtLabels(svc.GetSpec().GetSelector()))
		rev, err := l.c.store.PutService(ctx, fence, next, vs.Rev, event(cur, name, rollout.EventSpecRecorded, "", msg, now))
		if err != nil {
			return time.Time{}, err
		}
		log.Info().Msg(msg)
		if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
			return time.Time{}, err
		}
		return l.reconcile(ctx, fence, name)
	case rollout.ActionSupersede:
		base, evs := l.withProgress(cur, now)
		next := rollout.Supersede(base, d.Reason, now)
		ev := event(next, name, rollout.EventRolloutSuperseded, "", next.GetReason(), now)
		if err := l.commit(ctx, fence, vs, next, vr.Rev, append(evs, ev)); err != nil {
			return time.Time{}, err
		}
		if !d.Replan {
			return l.reconcile(ctx, fence, name)
		}
		// A newer spec: the superseded rollout's release planned again
		// with it, without deciding again (its release is older than the
		// superseded rollout).
		if vs, ok = l.c.mirror.Service(name); !ok {
			return time.Time{}, nil
		}
		r, st, res := rollout.Begin(vs.Val, d.Version, l.hosts(), l.observe(name), now)
		return res.NextWake, l.start(ctx, fence, vs, r, st, res, "", now)
	case rollout.ActionStart:
		r, st, res := rollout.Begin(svc, d.Version, l.hosts(), l.observe(name), now)
		return res.NextWake, l.start(ctx, fence, vs, r, st, res, "", now)
	case rollout.ActionRecordSpec:
		// Nothing changes on hosts: the spec becomes the stable spec.
		next := proto.Clone(svc).(*v1.Service)
		next.Status = rollout.RecordSpec(svc)
		ev := event(cur, name, rollout.EventSpecRecorded, "", rollout.SpecRecorded(svc), now)
		rev, err := l.c.store.PutService(ctx, fence, next, vs.Rev, ev)
		if err != nil {
			return time.Time{}, err
		}
		log.Info().Int64("spec_revision", svc.GetSpecRevision()).Msg("spec recorded without a rollout: it changes nothing hosts run")
		if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
			return time.Time{}, err
		}
		return l.reconcile(ctx, fence, name)
	}

	if !has || rollout.Terminal(cur) {
		delete(l.compared, name)
		if d.Action == rollout.ActionWait {
			return hold.Wake, nil // a window opens, a blackout ends
		}
		return time.Time{}, nil
	}
	why, compareWake := l.compare(ctx, cur, now)
	if why != "" {
		base, evs := l.withProgress(cur, now)
		next := rollout.CompareFailed(base, why, now)
		delete(l.compared, name)
		ev := event(next, name, rollout.EventComparisonFailed, "", next.GetReason(), now)
		return time.Time{}, l.commit(ctx, fence, vs, next, vr.Rev, append(evs, ev))
	}
	held := l.c.holding(svc, cur.GetToVersion(), now)
	next, res := rollout.StepHeld(cur, l.observe(name), now, held.Clock)
	if !held.Wake.IsZero() && !rollout.Terminal(next) && (res.NextWake.IsZero() || held.Wake.Before(res.NextWake)) {
		res.NextWake = held.Wake
	}
	if !compareWake.IsZero() && (res.NextWake.IsZero() || compareWake.Before(res.NextWake)) {
		res.NextWake = compareWake
	}
	if !res.Changed {
		return res.NextWake, nil
	}
	if at, ok := l.written[name]; ok && res.ProgressOnly && now.Sub(at) < l.c.cfg.progressWriteEvery {
		// Only progress: written with the next decision, or
		// progressWriteEvery after the last write (the steps until then
		// derive it again, with its events).
		if wake := at.Add(l.c.cfg.progressWriteEvery); res.NextWake.IsZero() || wake.Before(res.NextWake) {
			res.NextWake = wake
		}
		return res.NextWake, nil
	}
	logEvents(log, cur.GetId(), res.Events)
	return res.NextWake, l.commit(ctx, fence, vs, next, vr.Rev, engineEvents(next, res.Events, now))
}

// deciding is the rollout rollout.Decide is given and the revision that
// created it: the newest (vr), or, when that is an ended removal of hosts
// a selector left out, the one before it (rollout.Deciding).
func (l *leader) deciding(name string, vr store.Versioned[*v1.Rollout]) (*v1.Rollout, int64, error) {
	for vr.Val != nil && !rollout.Deciding(vr.Val) {
		id := rollout.PrevID(vr.Val)
		if id == "" {
			return nil, 0, nil
		}
		prev, ok := l.c.mirror.Rollout(name, id)
		if !ok {
			return nil, 0, fmt.Errorf("rollout %s/%s before removal %s is missing", name, id, vr.Val.GetId())
		}
		vr = prev
	}
	return vr.Val, vr.Created, nil
}

// observe is what the mirror and gossip say of a host, for the engine.
func (l *leader) observe(service string) func(host string) rollout.Observation {
	return func(host string) rollout.Observation {
		return l.c.observation(host, service)
	}
}

// releases are the service's releases for the policy, by creation revision.
func (l *leader) releases(service string) []rollout.Release {
	vrs := l.c.mirror.Releases(service)
	out := make([]rollout.Release, len(vrs))
	for i, r := range vrs {
		out[i] = rollout.Release{Version: r.Val.GetVersion(), Created: r.Created}
	}
	return out
}

func (l *leader) hosts() []rollout.Host {
	var hosts []rollout.Host
	for _, h := range l.c.mirror.Hosts() {
		hosts = append(hosts, rollout.Host{ID: h.GetId(), Labels: h.GetLabels()})
	}
	return hosts
}

// start writes a new rollout from rollout.Begin (its plan and first Step)
// with the service status naming it and its events, in one fenced
// transaction; a rollout to a release whose artifact was pruned is refused
// (artifactPruned). The creation event carries actor (who asked, for a rollback).
func (l *leader) start(ctx context.Context, fence *store.Fence, vs store.Versioned[*v1.Service], r *v1.Rollout, st *v1.ServiceStatus, res rollout.Result, actor string, now time.Time) error {
	svc := vs.Val
	name := svc.GetSpec().GetName()
	// Every rollout of a release begins here: none to one whose artifact
	// was pruned (the hosts could not fetch it).
	if !r.GetRemove() {
		if err := l.c.artifactPruned(name, r.GetToVersion()); err != nil {
			return err
		}
	}
	newSvc := proto.Clone(svc).(*v1.Service)
	newSvc.Status = st
	evs := engineEvents(r, res.Events, now)
	for _, ev := range evs {
		if ev.GetKind() == rollout.EventRolloutCreated || ev.GetKind() == rollout.EventRollbackCreated {
			ev.Actor = actor
		}
	}
	_, rev, err := l.c.store.WriteRollout(ctx, fence, r, store.RolloutBase{Layout: l.c.newRolloutLayout()}, newSvc, vs.Rev, evs...)
	if errors.Is(err, store.ErrHistoryShort) {
		l.c.log.Error().Err(err).Str("service", name).Str("rollout", r.GetId()).Msg("rollout created, events lost")
		err = nil
	}
	if err != nil {
		return err
	}
	l.written[name] = time.Now()
	if rollout.Terminal(r) {
		l.pruneEvents(ctx, fence, r)
	}
	l.c.metrics.rolloutWritten(nil, r, l.c.mirror.Release)
	waves := make([]int, len(r.GetWaves()))
	for i, w := range r.GetWaves() {
		waves[i] = len(w.GetHosts())
	}
	l.c.log.Info().Str("service", name).Str("rollout", r.GetId()).Str("from", r.GetFromVersion()).Str("version", r.GetToVersion()).
		Ints("waves", waves).Bool("rollback", r.GetRollback()).Str("state", r.GetState().String()).Msg("rollout created")
	logEvents(l.c.log.With().Str("service", name).Logger(), r.GetId(), res.Events)
	if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
		return err
	}
	if rollout.Terminal(r) {
		l.pruneEnded(ctx, fence, name)
	}
	return nil
}

// newRolloutLayout is the layout a new rollout is written in: split when
// every registered coordinator (this one included) reads it, else one key,
// so that a coordinator from before the split layout, during a rolling
// upgrade, never finds a rollout it cannot read. A rollout keeps its layout
// to the end, except that a service's current rollout is rewritten in one
// key when such a coordinator registers after it was created (reconcile,
// splitUnreader).
func (c *Coordinator) newRolloutLayout() store.RolloutLayout {
	coords := c.mirror.Coordinators()
	if len(coords) == 0 {
		return store.OneKey
	}
	for _, ci := range coords {
		if !ci.GetReadsSplitRollouts() {
			return store.OneKey
		}
	}
	return store.Split
}

// eventLayout is the layout events are written in: batches when every
// registered coordinator (this one included) reads them, else one per key,
// so that a coordinator from before batches, during a rolling upgrade,
// lists every event written while it runs. Events are history: batches
// written before such a coordinator registered stay (it shows each as an
// event with no field set) until pruned.
func (c *Coordinator) eventLayout() store.EventLayout {
	coords := c.mirror.Coordinators()
	if len(coords) == 0 {
		return store.EventPerKey
	}
	for _, ci := range coords {
		if !ci.GetReadsEventBatches() {
			return store.EventPerKey
		}
	}
	return store.EventBatches
}

// splitUnreader names a registered coordinator that does not read split
// rollouts ("" when none).
func (c *Coordinator) splitUnreader() string {
	for _, ci := range c.mirror.Coordinators() {
		if !ci.GetReadsSplitRollouts() {
			return ci.GetName()
		}
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// pruneEvents keeps the recorded events of the service's newest
// KeepRolloutEvents rollouts, once one ends. History only: failures are
// logged and retried at the next end.
func (l *leader) pruneEvents(ctx context.Context, fence *store.Fence, r *v1.Rollout) {
	n, err := strconv.Atoi(r.GetId())
	keep := l.c.cfg.KeepRolloutEvents
	if err != nil || keep <= 0 || n <= keep {
		return
	}
	before := fmt.Sprintf("%06d", n-keep+1)
	deleted, err := l.c.store.PruneEvents(ctx, fence, r.GetService(), before)
	if err != nil {
		l.c.log.Warn().Err(err).Str("service", r.GetService()).Msg("pruning old rollout events failed")
		return
	}
	if deleted > 0 {
		l.c.log.Info().Str("service", r.GetService()).Str("before", before).Int64("keys", deleted).Msg("events of old rollouts pruned")
	}
}

// logEvents logs a decision's events: a host assigned or done at debug
// level (a 10,000-host rollout has 20,000 of them; they are in the event
// log, `fleetwave events`), everything else at info.
func logEvents(log zerolog.Logger, rolloutID string, events []rollout.Event) {
	for _, ev := range events {
		// The level first: an event begun at info and dropped for debug
		// was built (context copied) and never given back to zerolog's
		// pool, for each of a step's thousands of host events.
		lvl := zerolog.InfoLevel
		if ev.Kind == rollout.EventHostAssigned || ev.Kind == rollout.EventHostDone {
			lvl = zerolog.DebugLevel
		}
		log.WithLevel(lvl).Str("rollout", rolloutID).Str("event", ev.Kind).Int("wave", ev.Wave).Str("host", ev.Host).Msg(ev.Message)
	}
}
