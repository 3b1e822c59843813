package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Removing a service and hosts moving (issue 14). The decisions are the
// engine's (coordinator/rollout/remove.go, rollout.Desired); here is the
// I/O around them:
//
//   - DeleteService (admin, leader-only, audited) asks the leader, which
//     applies rollout.Delete (refused while a rollout runs unless force)
//     and begins the removal rollout (plan, first Step, the service marked
//     removing, the events) in one fenced write. The leader loop steps it
//     like any rollout; its end is concluded by rollout.Conclude (deleted,
//     or frozen) with a service_deleted event.
//   - The hub assigns every host what rollout.Desired says given its
//     labels and its last report: a removal to hosts the removal reached,
//     and to any host that has the service but is not selected (its labels
//     changed at its agent's restart, or the selector did) or whose service
//     is deleted.
//   - A host's labels are recorded when its agent says hello with other
//     ones; then every service it leaves or joins gets a host_left or
//     host_joined event and the audit log an entry (actor: the agent). A
//     spec whose selector changes records the hosts it adds as host_joined
//     events (ApplyService's own audit entry names the caller); the hosts
//     it leaves out are removed in waves by a removal the leader begins
//     (rollout.ActionLeave, rollout.BeginLeave), whose creation records a
//     host_left event for each.

func (o *operator) DeleteService(ctx context.Context, req *v1.DeleteServiceRequest) (*v1.DeleteServiceResponse, error) {
	if err := spec.CheckName("name", req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetName() == spec.AgentService {
		return nil, status.Errorf(codes.InvalidArgument, "name: %q is the agent itself: it cannot be deleted", req.GetName())
	}
	r, svc, err := o.c.leader.call(ctx, leaderReq{service: req.GetName(), op: opDelete, actor: caller(ctx), force: req.GetForce()})
	if err != nil {
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNotLeader) || errors.Is(err, store.ErrConflict) || ctx.Err() != nil {
			return nil, grpcErr(err)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	o.c.log.Info().Str("service", req.GetName()).Str("rollout", r.GetId()).Bool("force", req.GetForce()).Str("by", caller(ctx)).Msg("service delete")
	return &v1.DeleteServiceResponse{Service: svc, Rollout: r}, nil
}

// deleteService serves DeleteService on the leader.
func (l *leader) deleteService(ctx context.Context, fence *store.Fence, req leaderReq) (*v1.Rollout, *v1.Service, error) {
	name := req.service
	vs, ok := l.c.mirror.Service(name)
	if !ok {
		return nil, nil, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
	}
	vr, has, err := l.current(name, vs.Val)
	if err != nil {
		return nil, nil, err
	}
	var active *v1.Rollout
	if has && !rollout.Terminal(vr.Val) {
		active = vr.Val
	}
	act, err := rollout.Delete(vs.Val, active, req.force)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	switch act {
	case rollout.DeleteInFlight:
		return active, vs.Val, nil
	case rollout.DeleteSupersede:
		base, evs := l.withProgress(active, now)
		next := rollout.Supersede(base, "service deleted by "+orNone(req.actor)+" (--force)", now)
		ev := event(next, name, rollout.EventRolloutSuperseded, req.actor, next.GetReason(), now)
		if err := l.commit(ctx, fence, vs, next, vr.Rev, append(evs, ev)); err != nil {
			return nil, nil, err
		}
		if vs, ok = l.c.mirror.Service(name); !ok {
			return nil, nil, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
		}
	}
	r, st, res := rollout.BeginRemoval(vs.Val, req.actor, l.hosts(), l.observe(name), now)
	if err := l.start(ctx, fence, vs, r, st, res, req.actor, now); err != nil {
		return nil, nil, err
	}
	after, _ := l.c.mirror.Service(name)
	return r, after.Val, nil
}

// serviceDeleted records the end of a removal that deleted the service.
func serviceDeleted(r *v1.Rollout, now time.Time) *v1.Event {
	return event(r, r.GetService(), rollout.EventServiceDeleted, "",
		fmt.Sprintf("removed from %d host(s); the service is deleted (its history stays; service apply creates it anew)", rollout.RolloutHosts(r)), now)
}

// hostMoved records a host whose labels changed: for every service it
// leaves or joins, an event, and one audit entry for the host.
func (c *Coordinator) hostMoved(ctx context.Context, host string, old, labels map[string]string) {
	var left, joined []string
	now := time.Now()
	var evs []*v1.Event
	for _, vs := range c.mirror.Services() {
		svc := vs.Val
		st := svc.GetStatus()
		if st.GetRemoved() || st.GetStableVersion() == "" {
			continue
		}
		sel := svc.GetSpec().GetSelector()
		was, is := rollout.Selects(sel, old), rollout.Selects(sel, labels)
		if was == is {
			continue
		}
		name := svc.GetSpec().GetName()
		kind, msg := rollout.EventHostJoined, fmt.Sprintf("%s now matches the selector %s (labels %s): it is assigned %s", host, rollout.FmtLabels(sel), rollout.FmtLabels(labels), st.GetStableVersion())
		if was {
			kind, msg = rollout.EventHostLeft, fmt.Sprintf("%s no longer matches the selector %s (labels %s): the service is stopped and removed there", host, rollout.FmtLabels(sel), rollout.FmtLabels(labels))
			if rollout.Selects(rollout.Placement(svc), labels) {
				msg = fmt.Sprintf("%s no longer matches the selector %s (labels %s): it keeps the stable release until the removal of the hosts the selector leaves out reaches it", host, rollout.FmtLabels(sel), rollout.FmtLabels(labels))
			}
			left = append(left, name)
		} else {
			joined = append(joined, name)
		}
		evs = append(evs, &v1.Event{At: timestamppb.New(now), Service: name, RolloutId: st.GetLastRolloutId(), Kind: kind, Wave: rollout.NoWave, Host: host, Message: msg})
	}
	if len(evs) == 0 {
		return
	}
	if err := c.putEvents(ctx, evs); err != nil {
		c.log.Warn().Err(err).Str("host", host).Msg("recording the services a relabelled host left or joined")
	}
	c.putAudit(ctx, &v1.AuditEntry{At: timestamppb.Now(), Actor: "agent:" + host, Role: "agent", Method: "hello: labels changed",
		Target: "host " + host, Result: codes.OK.String(), Coordinator: c.cfg.Name,
		Message: clip(fmt.Sprintf("labels %s -> %s; left %v, joined %v", rollout.FmtLabels(old), rollout.FmtLabels(labels), left, joined), 512)})
	c.log.Info().Str("host", host).Strs("left", left).Strs("joined", joined).Msg("host labels changed")
}

// selectorMoved records the hosts a changed selector adds, as
// host_joined events (those it leaves out are recorded by their removal,
// rollout.BeginLeave).
func (c *Coordinator) selectorMoved(ctx context.Context, svc *v1.Service, old map[string]string, by string) {
	sel := svc.GetSpec().GetSelector()
	st := svc.GetStatus()
	if st.GetStableVersion() == "" || equalLabels(old, sel) {
		return
	}
	now := time.Now()
	var evs []*v1.Event
	for _, h := range c.mirror.Hosts() {
		if rollout.Selects(old, h.GetLabels()) || !rollout.Selects(sel, h.GetLabels()) {
			continue
		}
		evs = append(evs, &v1.Event{At: timestamppb.New(now), Service: svc.GetSpec().GetName(), RolloutId: st.GetLastRolloutId(),
			Kind: rollout.EventHostJoined, Wave: rollout.NoWave, Host: h.GetId(), Actor: by,
			Message: fmt.Sprintf("the selector %s now selects %s: it is assigned %s", rollout.FmtLabels(sel), h.GetId(), st.GetStableVersion())})
	}
	if len(evs) == 0 {
		return
	}
	if err := c.putEvents(ctx, evs); err != nil {
		c.log.Warn().Err(err).Str("service", svc.GetSpec().GetName()).Msg("recording the hosts a selector change moved")
	}
}

// putEvents writes events outside a decision, 100 to a transaction (etcd
// takes 128 operations); each is a nanosecond after the one before, so
// their keys stay apart across transactions.
func (c *Coordinator) putEvents(ctx context.Context, evs []*v1.Event) error {
	for i, e := range evs {
		e.At = timestamppb.New(e.GetAt().AsTime().Add(time.Duration(i)))
	}
	for len(evs) > 0 {
		n := min(len(evs), 100)
		if err := c.store.PutEvents(ctx, evs[:n]...); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}
