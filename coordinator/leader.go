package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

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
}

type leaderOp int

const (
	// opReconcile reconciles the service now and returns its newest rollout.
	opReconcile leaderOp = iota
	// opApprove approves the service's rollout that waits for approval.
	opApprove
	// opUnfreeze clears the service's freeze.
	opUnfreeze
)

// leaderReq is an operator request the loop serves between reconciles.
type leaderReq struct {
	service string
	op      leaderOp
	reply   chan leaderReply
}

type leaderReply struct {
	rollout *v1.Rollout
	service *v1.Service
	err     error
}

func newLeader(c *Coordinator) *leader {
	return &leader{c: c, reqs: make(chan leaderReq)}
}

func (l *leader) run(ctx context.Context) {
	log := l.c.log
	for ctx.Err() == nil {
		e := concurrency.NewElection(l.c.sess, store.ElectionPrefix)
		if err := e.Campaign(ctx, l.c.cfg.Name); err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("campaign failed; retrying")
				time.Sleep(time.Second)
			}
			continue
		}
		fence := &store.Fence{Key: e.Key(), Rev: e.Rev()}
		log.Info().Str("key", fence.Key).Int64("rev", fence.Rev).Msg("became rollout leader")
		err := l.lead(ctx, fence)
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

func (l *leader) lead(ctx context.Context, fence *store.Fence) error {
	l.leading.Store(true)
	defer l.leading.Store(false)
	ch, unsub := l.c.mirror.Subscribe()
	defer unsub()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.c.sess.Done():
			return errors.New("etcd session expired")
		case <-ch:
		case <-timer.C:
		case req := <-l.reqs:
			r, svc, err := l.serve(ctx, fence, req)
			req.reply <- leaderReply{r, svc, err}
			if errors.Is(err, store.ErrNotLeader) {
				return err
			}
		}
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
	if req.op == opUnfreeze {
		svc, err := l.unfreeze(ctx, fence, req.service)
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
	next, err := rollout.Approve(vr.Val, time.Now())
	if err != nil {
		return nil, nil, err
	}
	rev, err := l.c.store.WriteRollout(ctx, fence, next, vr.Rev, nil, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
		return nil, nil, err
	}
	if _, err := l.reconcile(ctx, fence, req.service); err != nil {
		return nil, nil, err
	}
	vr, _ = l.c.mirror.Rollout(req.service, id)
	return vr.Val, vs.Val, nil
}

// unfreeze clears a service's freeze. The release that failed is not
// retried (its rollout stays the newest one); the next release rolls out.
func (l *leader) unfreeze(ctx context.Context, fence *store.Fence, name string) (*v1.Service, error) {
	vs, ok := l.c.mirror.Service(name)
	if !ok {
		return nil, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
	}
	if !vs.Val.GetStatus().GetFrozen() {
		return vs.Val, nil
	}
	svc := proto.Clone(vs.Val).(*v1.Service)
	svc.Status.Frozen, svc.Status.FrozenReason = false, ""
	rev, err := l.c.store.PutService(ctx, fence, svc, vs.Rev)
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
	var cur *v1.Rollout
	var curRev int64
	if id := svc.GetStatus().GetLastRolloutId(); id != "" {
		vr, ok := l.c.mirror.Rollout(name, id)
		if !ok {
			return time.Time{}, fmt.Errorf("rollout %s/%s named by the service is missing", name, id)
		}
		cur, curRev = vr.Val, vr.Rev
	}

	// A rollout still waiting for approval moved no host: a newer release
	// replaces it, so approve always ships the newest release.
	if cur != nil && cur.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		rels := l.c.mirror.Releases(name)
		if n := len(rels); n > 0 && rels[n-1].GetVersion() != cur.GetToVersion() {
			next := rollout.Supersede(cur, "superseded by release "+rels[n-1].GetVersion()+" before approval", now)
			newSvc := proto.Clone(svc).(*v1.Service)
			newSvc.Status = rollout.Conclude(svc.GetStatus(), next)
			rev, err := l.c.store.WriteRollout(ctx, fence, next, curRev, newSvc, vs.Rev)
			if err != nil {
				return time.Time{}, err
			}
			log.Info().Str("rollout", cur.GetId()).Str("version", rels[n-1].GetVersion()).Msg("waiting rollout superseded by a newer release")
			if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
				return time.Time{}, err
			}
			return l.reconcile(ctx, fence, name)
		}
	}

	if cur != nil && !terminal(cur.GetState()) {
		obs := func(host string) rollout.Observation {
			return rollout.Observation{Connected: l.c.mirror.Connected(host), Report: l.c.mirror.Report(host, name)}
		}
		next, res := rollout.Step(cur, obs, now)
		for _, ev := range res.Events {
			log.Info().Str("rollout", cur.GetId()).Str("event", ev.Kind).Int("wave", ev.Wave).Str("host", ev.Host).Msg(ev.Message)
		}
		if !res.Changed {
			return res.NextWake, nil
		}
		var newSvc *v1.Service
		if terminal(next.GetState()) {
			newSvc = proto.Clone(svc).(*v1.Service)
			newSvc.Status = rollout.Conclude(svc.GetStatus(), next)
			log.Info().Str("rollout", next.GetId()).Str("state", next.GetState().String()).Str("reason", next.GetReason()).Msg("rollout ended")
		}
		rev, err := l.c.store.WriteRollout(ctx, fence, next, curRev, newSvc, vs.Rev)
		if err != nil {
			return time.Time{}, err
		}
		return res.NextWake, l.c.mirror.WaitRev(ctx, rev)
	}

	// No rollout in flight: start one for the newest release if it is new.
	if svc.GetStatus().GetFrozen() {
		return time.Time{}, nil
	}
	rels := l.c.mirror.Releases(name)
	if len(rels) == 0 {
		return time.Time{}, nil
	}
	newest := rels[len(rels)-1]
	if newest.GetVersion() == svc.GetStatus().GetStableVersion() || (cur != nil && cur.GetToVersion() == newest.GetVersion()) {
		return time.Time{}, nil
	}
	var hosts []rollout.Host
	for _, h := range l.c.mirror.Hosts() {
		hosts = append(hosts, rollout.Host{ID: h.GetId(), Labels: h.GetLabels()})
	}
	st := svc.GetStatus()
	id := fmt.Sprintf("%06d", st.GetRolloutSeq()+1)
	r := rollout.New(id, svc, newest.GetVersion(), hosts, now)
	newSvc := proto.Clone(svc).(*v1.Service)
	if newSvc.Status == nil {
		newSvc.Status = &v1.ServiceStatus{}
	}
	newSvc.Status.RolloutSeq = st.GetRolloutSeq() + 1
	newSvc.Status.LastRolloutId = id
	if terminal(r.GetState()) {
		newSvc.Status = rollout.Conclude(newSvc.Status, r)
	}
	rev, err := l.c.store.WriteRollout(ctx, fence, r, 0, newSvc, vs.Rev)
	if err != nil {
		return time.Time{}, err
	}
	waves := make([]int, len(r.GetWaves()))
	for i, w := range r.GetWaves() {
		waves[i] = len(w.GetHosts())
	}
	log.Info().Str("rollout", id).Str("from", r.GetFromVersion()).Str("version", r.GetToVersion()).Ints("waves", waves).Str("state", r.GetState().String()).Msg("rollout created")
	if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
		return time.Time{}, err
	}
	// Step it at once so the canary is assigned without waiting.
	return l.reconcile(ctx, fence, name)
}
