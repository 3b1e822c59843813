package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// ErrNotLeader is returned by calls that need the rollout leader when this
// coordinator is not it.
var ErrNotLeader = errors.New("this coordinator is not the rollout leader")

// leader campaigns for leadership and, while leader, runs the rollout loop:
// the only place rollout decisions are made and written (fenced).
type leader struct {
	c       *Coordinator
	reqs    chan leaderReq
	leading atomic.Bool
	// wake asks the loop to reconcile now (gossip changes are not in etcd).
	wake chan struct{}
	// auditPruned is when the loop last pruned the audit log.
	auditPruned time.Time
}

// poke has the loop reconcile soon; it never blocks.
func (l *leader) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

type leaderOp int

const (
	// opReconcile reconciles the service now and returns its newest rollout.
	opReconcile leaderOp = iota
	// opApprove approves the service's rollout that waits for approval.
	opApprove
	// opUnfreeze clears the service's freeze.
	opUnfreeze
	opPause
	opResume
	// opAbort fails the running rollout (hosts that moved go back, freeze).
	opAbort
	// opRollback starts a fast rollout to an earlier release.
	opRollback
)

// leaderReq is an operator request the loop serves between reconciles.
type leaderReq struct {
	service string
	op      leaderOp
	actor   string
	reason  string // abort
	version string // rollback target ("" = the previous good release)
	wave    uint32 // approve: the wave (0 = whatever waits)
	reply   chan leaderReply
}

type leaderReply struct {
	rollout *v1.Rollout
	service *v1.Service
	err     error
}

func newLeader(c *Coordinator) *leader {
	return &leader{c: c, reqs: make(chan leaderReq), wake: make(chan struct{}, 1)}
}

func (l *leader) run(ctx context.Context) {
	log := l.c.log
	for ctx.Err() == nil {
		sess := l.c.session()
		select {
		case <-sess.Done():
			// Lost; wait for the session loop to replace it.
			select {
			case <-ctx.Done():
			case <-l.c.sessionChanged():
			}
			continue
		default:
		}
		e := concurrency.NewElection(sess, store.ElectionPrefix)
		// A campaign on a session that is lost meanwhile must not return as
		// won: it ends with the session.
		cctx, ccancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
				ccancel()
			case <-cctx.Done():
			}
		}()
		err := e.Campaign(cctx, l.c.cfg.Name)
		ccancel()
		if err == nil {
			select {
			case <-sess.Done():
				err = errors.New("etcd session lost while campaigning")
			default:
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("campaign failed; retrying")
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		fence := &store.Fence{Key: e.Key(), Rev: e.Rev()}
		log.Info().Str("key", fence.Key).Int64("rev", fence.Rev).Msg("became rollout leader")
		err = l.lead(ctx, sess, fence)
		log.Warn().Err(err).Msg("stopped leading")
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = e.Resign(rctx)
		cancel()
	}
}

// call sends a request to the loop; it fails fast when this coordinator
// does not lead.
func (l *leader) call(ctx context.Context, req leaderReq) (*v1.Rollout, *v1.Service, error) {
	if !l.leading.Load() {
		return nil, nil, ErrNotLeader
	}
	req.reply = make(chan leaderReply, 1)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case <-t.C:
		return nil, nil, ErrNotLeader
	}
	select {
	case r := <-req.reply:
		return r.rollout, r.service, r.err
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

func (l *leader) lead(ctx context.Context, sess *concurrency.Session, fence *store.Fence) error {
	l.leading.Store(true)
	defer l.leading.Store(false)
	ch, unsub := l.c.mirror.Subscribe()
	defer unsub()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		// A lost session ends leadership before anything else is decided.
		select {
		case <-sess.Done():
			return errors.New("etcd session expired")
		default:
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("etcd session expired")
		case <-ch:
		case <-l.wake:
		case <-timer.C:
		case req := <-l.reqs:
			r, svc, err := l.serve(ctx, fence, req)
			req.reply <- leaderReply{r, svc, err}
			if errors.Is(err, store.ErrNotLeader) {
				return err
			}
		}
		l.pruneAudit(ctx, fence, time.Now())
		next, err := l.reconcileAll(ctx, fence)
		if errors.Is(err, store.ErrNotLeader) {
			return err
		}
		wait := time.Second
		if !next.IsZero() {
			if d := time.Until(next); d < wait {
				wait = max(d, 10*time.Millisecond)
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

func (l *leader) serve(ctx context.Context, fence *store.Fence, req leaderReq) (*v1.Rollout, *v1.Service, error) {
	switch req.op {
	case opPause, opResume, opAbort, opRollback:
		r, err := l.decide(ctx, fence, req)
		return r, nil, err
	}
	if req.op == opUnfreeze {
		svc, err := l.unfreeze(ctx, fence, req.service, req.actor)
		if err != nil {
			return nil, nil, err
		}
		// Start what the freeze held back before answering, so the caller's
		// next read sees it.
		_, err = l.reconcile(ctx, fence, req.service)
		return nil, svc, err
	}
	if _, err := l.reconcile(ctx, fence, req.service); err != nil {
		return nil, nil, err
	}
	vs, ok := l.c.mirror.Service(req.service)
	if !ok {
		return nil, nil, fmt.Errorf("service %q: %w", req.service, store.ErrNotFound)
	}
	id := vs.Val.GetStatus().GetLastRolloutId()
	vr, ok := l.c.mirror.Rollout(req.service, id)
	if req.op != opApprove {
		if !ok {
			return nil, vs.Val, nil
		}
		return vr.Val, vs.Val, nil
	}
	if !ok {
		return nil, nil, fmt.Errorf("service %q has no rollout to approve", req.service)
	}
	now := time.Now()
	next, err := rollout.Approve(vr.Val, req.wave, now)
	if err != nil {
		return nil, nil, err
	}
	what := "rollout"
	if vr.Val.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		for i, w := range next.GetWaves() {
			if w.GetApproved() && !vr.Val.GetWaves()[i].GetApproved() {
				what = fmt.Sprintf("wave %d", i)
			}
		}
	}
	ev := event(next, req.service, "rollout_approved", req.actor, what+" approved: "+orNone(next.GetFromVersion())+" → "+next.GetToVersion(), now)
	if err := l.commit(ctx, fence, vs, next, vr.Rev, []*v1.Event{ev}); err != nil {
		return nil, nil, err
	}
	if _, err := l.reconcile(ctx, fence, req.service); err != nil {
		return nil, nil, err
	}
	vr, _ = l.c.mirror.Rollout(req.service, id)
	return vr.Val, vs.Val, nil
}

// decide serves pause, resume, abort and rollback.
func (l *leader) decide(ctx context.Context, fence *store.Fence, req leaderReq) (*v1.Rollout, error) {
	vs, ok := l.c.mirror.Service(req.service)
	if !ok {
		return nil, fmt.Errorf("service %q: %w", req.service, store.ErrNotFound)
	}
	vr, has, err := l.current(req.service, vs.Val)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	active := has && !terminal(vr.Val.GetState())
	if req.op == opRollback {
		return l.rollback(ctx, fence, vs, vr, active, req, now)
	}
	if !active {
		return nil, fmt.Errorf("service %s has no rollout in progress", req.service)
	}
	var next *v1.Rollout
	var kind, msg string
	switch req.op {
	case opPause:
		next, err = rollout.Pause(vr.Val)
		kind, msg = "rollout_paused", "paused: hosts already moving finish, nothing new starts"
	case opResume:
		next, err = rollout.Resume(vr.Val, now)
		kind, msg = "rollout_resumed", "resumed"
	case opAbort:
		why := "aborted by " + orNone(req.actor)
		if req.reason != "" {
			why += ": " + req.reason
		}
		next = rollout.Fail(vr.Val, why, now)
		kind, msg = "rollout_aborted", why
	}
	if err != nil {
		return nil, err
	}
	if err := l.commit(ctx, fence, vs, next, vr.Rev, []*v1.Event{event(next, req.service, kind, req.actor, msg, now)}); err != nil {
		return nil, err
	}
	return next, nil
}

// rollback starts a fast rollout to an earlier release. Without a target it
// goes to the release the service ran before: the stable one when a rollout
// is in flight, else the target of the newest successful rollout before the
// stable one. It refuses a release whose newest rollout failed.
func (l *leader) rollback(ctx context.Context, fence *store.Fence, vs store.Versioned[*v1.Service], vr store.Versioned[*v1.Rollout], active bool, req leaderReq, now time.Time) (*v1.Rollout, error) {
	name, st := req.service, vs.Val.GetStatus()
	rollouts := l.c.mirror.Rollouts(name)
	target := req.version
	if target == "" {
		if active && st.GetStableVersion() != "" && vr.Val.GetToVersion() != st.GetStableVersion() {
			target = st.GetStableVersion()
		} else {
			for i := len(rollouts) - 1; i >= 0; i-- {
				r := rollouts[i]
				if r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED && r.GetToVersion() != st.GetStableVersion() {
					target = r.GetToVersion()
					break
				}
			}
		}
		if target == "" {
			return nil, fmt.Errorf("service %s has no earlier good release to roll back to (give one with --to)", name)
		}
	}
	if _, ok := l.c.mirror.Release(name, target); !ok {
		return nil, fmt.Errorf("to_version: service %s has no release %q", name, target)
	}
	if !active && target == st.GetStableVersion() {
		return nil, fmt.Errorf("to_version: service %s already runs %s", name, target)
	}
	// Never roll back onto a release whose newest rollout failed.
	for i := len(rollouts) - 1; i >= 0; i-- {
		if r := rollouts[i]; r.GetToVersion() == target && terminal(r.GetState()) {
			if r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED {
				return nil, fmt.Errorf("to_version: %s failed in rollout %s (%s); refusing to roll back onto it", target, r.GetId(), r.GetReason())
			}
			break
		}
	}
	if active {
		// The rollout in flight ends: its hosts are rolled back by the
		// rollback rollout (or, if they never moved, stay where they are).
		next := rollout.Supersede(vr.Val, "rolled back to "+target+" by "+orNone(req.actor), now)
		ev := event(next, name, "rollout_superseded", req.actor, next.GetReason(), now)
		if err := l.commit(ctx, fence, vs, next, vr.Rev, []*v1.Event{ev}); err != nil {
			return nil, err
		}
		var ok bool
		if vs, ok = l.c.mirror.Service(name); !ok {
			return nil, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
		}
	}
	r := rollout.NewRollback(l.nextID(vs.Val), vs.Val, target, l.hosts(), now)
	if err := l.start(ctx, fence, vs, r, req.actor, now); err != nil {
		return nil, err
	}
	if _, err := l.reconcile(ctx, fence, name); err != nil {
		return nil, err
	}
	out, _ := l.c.mirror.Rollout(name, r.GetId())
	return out.Val, nil
}

// unfreeze clears a service's freeze. The release that failed is not
// retried (its rollout stays the newest one); the next release rolls out.
func (l *leader) unfreeze(ctx context.Context, fence *store.Fence, name, actor string) (*v1.Service, error) {
	vs, ok := l.c.mirror.Service(name)
	if !ok {
		return nil, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
	}
	if !vs.Val.GetStatus().GetFrozen() {
		return vs.Val, nil
	}
	svc := proto.Clone(vs.Val).(*v1.Service)
	was := svc.Status.FrozenReason
	svc.Status.Frozen, svc.Status.FrozenReason = false, ""
	last, _ := l.c.mirror.Rollout(name, svc.GetStatus().GetLastRolloutId())
	ev := event(last.Val, name, "service_unfrozen", actor, "unfrozen (was: "+was+")", time.Now())
	rev, err := l.c.store.PutService(ctx, fence, svc, vs.Rev, ev)
	if err != nil {
		return nil, err
	}
	return svc, l.c.mirror.WaitRev(ctx, rev)
}

func (l *leader) reconcileAll(ctx context.Context, fence *store.Fence) (time.Time, error) {
	var next time.Time
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

func terminal(s v1.RolloutState) bool {
	return s == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || s == v1.RolloutState_ROLLOUT_STATE_FAILED || s == v1.RolloutState_ROLLOUT_STATE_SUPERSEDED
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
	return &v1.Event{At: timestamppb.New(now), Service: service, RolloutId: r.GetId(), Kind: kind, Wave: -1, Actor: actor, Message: msg}
}

// commit writes a rollout's next state (concluding the service when it
// ended) with its events, fenced, waits until the mirror has it, and sends
// the alert when the rollout failed.
func (l *leader) commit(ctx context.Context, fence *store.Fence, vs store.Versioned[*v1.Service], next *v1.Rollout, curRev int64, events []*v1.Event) error {
	svc := vs.Val
	var newSvc *v1.Service
	if terminal(next.GetState()) {
		newSvc = proto.Clone(svc).(*v1.Service)
		newSvc.Status = rollout.Conclude(svc.GetStatus(), next)
	}
	prev, _ := l.c.mirror.Rollout(next.GetService(), next.GetId())
	rev, err := l.c.store.WriteRollout(ctx, fence, next, curRev, newSvc, vs.Rev, events...)
	if errors.Is(err, store.ErrHistoryShort) {
		l.c.log.Error().Err(err).Str("service", svc.GetSpec().GetName()).Str("rollout", next.GetId()).Msg("decision committed, events lost")
		err = nil
	}
	if err != nil {
		return err
	}
	l.c.metrics.rolloutWritten(prev.Val, next, l.c.mirror.Release)
	if terminal(next.GetState()) {
		l.pruneEvents(ctx, fence, next)
		l.c.log.Info().Str("service", svc.GetSpec().GetName()).Str("rollout", next.GetId()).Str("state", next.GetState().String()).Str("reason", next.GetReason()).Msg("rollout ended")
		if next.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED {
			l.c.alerts.rolloutFailed(svc, next)
		}
	}
	return l.c.mirror.WaitRev(ctx, rev)
}

// current returns the service's newest rollout with its revisions.
func (l *leader) current(name string, svc *v1.Service) (store.Versioned[*v1.Rollout], bool, error) {
	id := svc.GetStatus().GetLastRolloutId()
	if id == "" {
		return store.Versioned[*v1.Rollout]{}, false, nil
	}
	vr, ok := l.c.mirror.Rollout(name, id)
	if !ok {
		return vr, false, fmt.Errorf("rollout %s/%s named by the service is missing", name, id)
	}
	return vr, true, nil
}

// reconcile steps the service's rollout, or starts one for the newest
// release. It returns when it next needs to run.
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
	rels := l.c.mirror.Releases(name)

	// A rollout still waiting for approval moved no host: a newer release
	// replaces it, so approve always ships the newest release.
	if has && cur.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		if n := len(rels); n > 0 && rels[n-1].Created > vr.Created {
			newest := rels[n-1].Val.GetVersion()
			next := rollout.Supersede(cur, "superseded by release "+newest+" before approval", now)
			ev := event(cur, name, "rollout_superseded", "", next.GetReason(), now)
			if err := l.commit(ctx, fence, vs, next, vr.Rev, []*v1.Event{ev}); err != nil {
				return time.Time{}, err
			}
			return l.reconcile(ctx, fence, name)
		}
	}

	// A newer release supersedes a running rollout unless the policy queues
	// it: the hosts the running rollout moved go back to the stable release
	// (the last one verified everywhere) and the newest starts from the canary.
	if has && cur.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING && !cur.GetRollback() &&
		svc.GetSpec().GetRollout().GetOnNewRelease() != "queue" {
		if n := len(rels); n > 0 && rels[n-1].Created > vr.Created && !svc.GetStatus().GetFrozen() {
			newest := rels[n-1].Val.GetVersion()
			next := rollout.Supersede(cur, "superseded by release "+newest, now)
			ev := event(cur, name, "rollout_superseded", "", next.GetReason(), now)
			if err := l.commit(ctx, fence, vs, next, vr.Rev, []*v1.Event{ev}); err != nil {
				return time.Time{}, err
			}
			return l.reconcile(ctx, fence, name)
		}
	}

	if has && !terminal(cur.GetState()) {
		obs := func(host string) rollout.Observation {
			return rollout.Observation{Connected: l.c.mirror.Connected(host), Report: l.c.mirror.Report(host, name), Gossip: l.c.gossipHint(host)}
		}
		next, res := rollout.Step(cur, obs, now)
		for _, ev := range res.Events {
			log.Info().Str("rollout", cur.GetId()).Str("event", ev.Kind).Int("wave", ev.Wave).Str("host", ev.Host).Msg(ev.Message)
		}
		if !res.Changed {
			return res.NextWake, nil
		}
		return res.NextWake, l.commit(ctx, fence, vs, next, vr.Rev, engineEvents(next, res.Events, now))
	}

	// A failed rollout records when every host it moved ran a good release
	// again (time to restore). Only the rollout is written: the service's
	// status (its freeze) was concluded when it failed.
	if has && cur.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED && cur.GetRestoredAt() == nil {
		obs := func(host string) rollout.Observation {
			return rollout.Observation{Connected: l.c.mirror.Connected(host), Report: l.c.mirror.Report(host, name)}
		}
		if rollout.Restored(cur, obs) {
			next := proto.Clone(cur).(*v1.Rollout)
			next.RestoredAt = timestamppb.New(now)
			took := now.Sub(cur.GetFailedAt().AsTime()).Round(time.Millisecond)
			ev := event(next, name, "fleet_restored", "", fmt.Sprintf("every host that moved runs %s again, %s after the failure", orNone(cur.GetFromVersion()), took), now)
			rev, err := l.c.store.WriteRollout(ctx, fence, next, vr.Rev, nil, 0, ev)
			if err != nil {
				return time.Time{}, err
			}
			log.Info().Str("rollout", cur.GetId()).Dur("after", took).Msg("fleet restored after failed rollout")
			if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
				return time.Time{}, err
			}
		}
	}

	// No rollout in flight: start one for the newest release if it was
	// created after the newest rollout (so a failed release is never retried
	// and a rollback is not undone by an older release).
	if svc.GetStatus().GetFrozen() || len(rels) == 0 {
		return time.Time{}, nil
	}
	newest := rels[len(rels)-1]
	if newest.Val.GetVersion() == svc.GetStatus().GetStableVersion() || (has && newest.Created < vr.Created) {
		return time.Time{}, nil
	}
	r := rollout.New(l.nextID(svc), svc, newest.Val.GetVersion(), l.hosts(), now)
	if err := l.start(ctx, fence, vs, r, "", now); err != nil {
		return time.Time{}, err
	}
	// Step it at once so the canary is assigned without waiting.
	return l.reconcile(ctx, fence, name)
}

func (l *leader) nextID(svc *v1.Service) string {
	return fmt.Sprintf("%06d", svc.GetStatus().GetRolloutSeq()+1)
}

func (l *leader) hosts() []rollout.Host {
	var hosts []rollout.Host
	for _, h := range l.c.mirror.Hosts() {
		hosts = append(hosts, rollout.Host{ID: h.GetId(), Labels: h.GetLabels()})
	}
	return hosts
}

// start writes a new rollout and the service status naming it.
func (l *leader) start(ctx context.Context, fence *store.Fence, vs store.Versioned[*v1.Service], r *v1.Rollout, actor string, now time.Time) error {
	svc := vs.Val
	newSvc := proto.Clone(svc).(*v1.Service)
	if newSvc.Status == nil {
		newSvc.Status = &v1.ServiceStatus{}
	}
	newSvc.Status.RolloutSeq = svc.GetStatus().GetRolloutSeq() + 1
	newSvc.Status.LastRolloutId = r.GetId()
	if terminal(r.GetState()) {
		newSvc.Status = rollout.Conclude(newSvc.Status, r)
	}
	waves := make([]int, len(r.GetWaves()))
	for i, w := range r.GetWaves() {
		waves[i] = len(w.GetHosts())
	}
	kind := "rollout_created"
	if r.GetRollback() {
		kind = "rollback_created"
	}
	msg := fmt.Sprintf("%s → %s, waves %v, %s", orNone(r.GetFromVersion()), r.GetToVersion(), waves, strings.ToLower(strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_")))
	rev, err := l.c.store.WriteRollout(ctx, fence, r, 0, newSvc, vs.Rev, event(r, svc.GetSpec().GetName(), kind, actor, msg, now))
	if err != nil {
		return err
	}
	if terminal(r.GetState()) {
		l.pruneEvents(ctx, fence, r)
	}
	l.c.metrics.rolloutWritten(nil, r, l.c.mirror.Release)
	l.c.log.Info().Str("service", svc.GetSpec().GetName()).Str("rollout", r.GetId()).Str("from", r.GetFromVersion()).Str("version", r.GetToVersion()).
		Ints("waves", waves).Bool("rollback", r.GetRollback()).Str("state", r.GetState().String()).Msg("rollout created")
	return l.c.mirror.WaitRev(ctx, rev)
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
		l.c.log.Info().Str("service", r.GetService()).Str("before", before).Int64("events", deleted).Msg("events of old rollouts pruned")
	}
}

// pruneAudit drops audit entries older than the retention, at most hourly.
func (l *leader) pruneAudit(ctx context.Context, fence *store.Fence, now time.Time) {
	if now.Sub(l.auditPruned) < time.Hour {
		return
	}
	l.auditPruned = now
	deleted, err := l.c.store.PruneAudit(ctx, fence, now.Add(-l.c.cfg.AuditRetention))
	if err != nil {
		l.c.log.Warn().Err(err).Msg("pruning the audit log failed")
		return
	}
	if deleted > 0 {
		l.c.log.Info().Int64("entries", deleted).Dur("retention", l.c.cfg.AuditRetention).Msg("old audit entries pruned")
	}
}
