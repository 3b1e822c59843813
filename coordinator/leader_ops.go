package coordinator

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// serve runs one operator request on the loop: reconcile now (after a new
// release), approve, unfreeze, or the decisions in decide.
func (l *leader) serve(ctx context.Context, fence *store.Fence, req leaderReq) (*v1.Rollout, *v1.Service, error) {
	switch req.op {
	case opPause, opResume, opAbort, opRollback, opAlerts:
		r, err := l.decide(ctx, fence, req)
		return r, nil, err
	case opDelete:
		return l.deleteService(ctx, fence, req)
	case opOverride:
		svc, err := l.override(ctx, fence, req)
		return nil, svc, err
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
	ev := event(next, req.service, rollout.EventRolloutApproved, req.actor, what+" approved: "+orNone(next.GetFromVersion())+" → "+next.GetToVersion(), now)
	// The approval and the Step that moves the hosts it lets go are one
	// write.
	next, res := rollout.StepHeld(next, l.observe(req.service), now, l.c.holding(vs.Val, next.GetToVersion(), now).Clock)
	if err := l.commit(ctx, fence, vs, next, vr.Rev, append([]*v1.Event{ev}, engineEvents(next, res.Events, now)...)); err != nil {
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
	active := has && !rollout.Terminal(vr.Val)
	if req.op == opRollback {
		return l.rollback(ctx, fence, vs, vr, active, req, now)
	}
	if !active {
		if req.op == opAlerts {
			return nil, nil // ended meanwhile: nothing to abort
		}
		return nil, fmt.Errorf("service %s has no rollout in progress", req.service)
	}
	// The decision is made on the stored copy with the progress the
	// leader deferred (withProgress), written with it: an end would lose
	// it otherwise.
	base, progress := l.withProgress(vr.Val, now)
	var next *v1.Rollout
	var kind, msg string
	switch req.op {
	case opAlerts:
		why, abort := rollout.AlertAbort(base, req.alerts)
		if !abort {
			return nil, nil
		}
		why = "aborted by " + orNone(req.actor) + ": " + why
		next = rollout.Fail(base, why, now)
		kind, msg = rollout.EventRolloutAborted, why
	case opPause:
		next, err = rollout.Pause(base)
		kind, msg = rollout.EventRolloutPaused, "paused: hosts already moving finish, nothing new starts"
	case opResume:
		next, err = rollout.Resume(base, now)
		kind, msg = rollout.EventRolloutResumed, "resumed"
	case opAbort:
		why := "aborted by " + orNone(req.actor)
		if req.reason != "" {
			why += ": " + req.reason
		}
		next = rollout.Fail(base, why, now)
		kind, msg = rollout.EventRolloutAborted, why
	}
	if err != nil {
		return nil, err
	}
	if err := l.commit(ctx, fence, vs, next, vr.Rev, append(progress, event(next, req.service, kind, req.actor, msg, now))); err != nil {
		return nil, err
	}
	return next, nil
}

// releaseDeleted says, of a rollback to version refused with err, that
// the release's record was deleted (pruneAllReleases), when it was, and
// what to do instead; err itself when the release exists or has no
// tombstone.
func (l *leader) releaseDeleted(ctx context.Context, service, version string, err error) error {
	if version == "" {
		return err
	}
	if _, ok := l.c.mirror.Release(service, version); ok {
		return err
	}
	t, terr := l.c.store.GetReleaseTombstone(ctx, service, version)
	if terr != nil {
		return err
	}
	return fmt.Errorf("%w: to_version: service %s release %s was deleted at %s (its artifact pruned or a URL, older than --rollout-retention); "+
		"a deleted version is never created again: to run its artifact (sha256 %s) again, create it under a new version (a new release: it rolls out as the newest)",
		rollout.ErrRollback, service, version, t.GetDeletedAt().AsTime().UTC().Format(time.RFC3339), t.GetSha256())
}

// rollback starts a fast rollout to the release rollout.RollbackTarget
// picks (the one the service ran before, or the operator's). A rollout in
// flight is superseded first; the rollback's plan and first Step are then
// one write.
func (l *leader) rollback(ctx context.Context, fence *store.Fence, vs store.Versioned[*v1.Service], vr store.Versioned[*v1.Rollout], active bool, req leaderReq, now time.Time) (*v1.Rollout, error) {
	name := req.service
	var inFlight *v1.Rollout
	if active {
		inFlight = vr.Val
	}
	target, err := rollout.RollbackTarget(vs.Val, l.c.mirror.Rollouts(name), inFlight, l.releases(name), req.version)
	if err != nil {
		return nil, l.releaseDeleted(ctx, name, req.version, err)
	}
	// Before the rollout in flight is superseded (start checks too).
	if err := l.c.artifactPruned(name, target); err != nil {
		return nil, err
	}
	if active {
		// The rollout in flight ends: its hosts are rolled back by the
		// rollback rollout (or, if they never moved, stay where they are).
		base, evs := l.withProgress(vr.Val, now)
		next := rollout.Supersede(base, "rolled back to "+target+" by "+orNone(req.actor), now)
		ev := event(next, name, rollout.EventRolloutSuperseded, req.actor, next.GetReason(), now)
		if err := l.commit(ctx, fence, vs, next, vr.Rev, append(evs, ev)); err != nil {
			return nil, err
		}
		var ok bool
		if vs, ok = l.c.mirror.Service(name); !ok {
			return nil, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
		}
	}
	if req.signed != nil {
		// The statement names one signed manifest of the target: refuse a
		// mismatch here rather than on every host.
		st, err := signing.ParseRollback(req.signed)
		if err != nil {
			return nil, err
		}
		rel, _ := l.c.mirror.Release(name, target)
		if d := signing.ManifestDigest(rel); d == "" || d != st.GetToManifestSha256() {
			return nil, fmt.Errorf("the signed rollback names manifest sha256 %s of %s, which is %q here", st.GetToManifestSha256(), target, d)
		}
	}
	r, st, res := rollout.BeginRollback(vs.Val, target, l.hosts(), l.observe(name), now)
	// Sent with every assignment of the target (hub.assignments).
	r.SignedRollback = req.signed
	if err := l.start(ctx, fence, vs, r, st, res, req.actor, now); err != nil {
		return nil, err
	}
	return r, nil
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
	ev := event(last.Val, name, rollout.EventServiceUnfrozen, actor, "unfrozen (was: "+was+")", time.Now())
	rev, err := l.c.store.PutService(ctx, fence, svc, vs.Rev, ev)
	if err != nil {
		return nil, err
	}
	return svc, l.c.mirror.WaitRev(ctx, rev)
}
