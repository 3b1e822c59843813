package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

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
	// compared holds the comparison of each service's rollout in flight
	// (analysis.compare); only the loop touches it.
	compared map[string]*comparison
	// written is when the loop last wrote each service's rollout: a step
	// that changes only progress waits progressWriteEvery after it
	// (leader_reconcile.go). Only the loop touches it.
	written map[string]time.Time
	// lazy is set while the loop reconciles on its own (not for an
	// operator's request): a step that writes the rollout alone does not
	// wait for the mirror, and own holds what it wrote, by service, until
	// the mirror has it (leader_reconcile.go). Only the loop touches them.
	lazy bool
	own  map[string]ownWrite
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
	// opDelete removes the service from its hosts (remove.go).
	opDelete
	// opOverride lets the newest release past windows, blackouts and after
	// (policy.go).
	opOverride
	// opAlerts aborts the running rollout when firing alerts name it
	// (rollout.AlertAbort; the Alertmanager receiver, alertmanager.go).
	opAlerts
)

// leaderReq is an operator request the loop serves between reconciles.
type leaderReq struct {
	service string
	op      leaderOp
	actor   string
	reason  string                // abort, override
	version string                // rollback target ("" = the previous good release)
	signed  *v1.SignedRollback    // rollback: the operator's signed statement (nil: none)
	wave    uint32                // approve: the wave (0 = whatever waits)
	force   bool                  // delete: supersede a rollout in flight
	alerts  []rollout.FiringAlert // opAlerts: the alerts firing
	reply   chan leaderReply
}

type leaderReply struct {
	rollout *v1.Rollout
	service *v1.Service
	err     error
}

func newLeader(c *Coordinator) *leader {
	return &leader{c: c, reqs: make(chan leaderReq), wake: make(chan struct{}, 1), compared: map[string]*comparison{}, written: map[string]time.Time{}, own: map[string]ownWrite{}}
}

// call sends a request to the loop; it fails fast when this coordinator
// does not lead.
func (l *leader) call(ctx context.Context, req leaderReq) (*v1.Rollout, *v1.Service, error) {
	if !l.leading.Load() {
		return nil, nil, fmt.Errorf("coordinator %s does not lead rollouts: %w", l.c.cfg.Name, store.ErrNotLeader)
	}
	req.reply = make(chan leaderReply, 1)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case <-t.C:
		return nil, nil, fmt.Errorf("coordinator %s: the rollout loop took no request for 10s (leadership changing?): %w", l.c.cfg.Name, store.ErrNotLeader)
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
	clear(l.own) // from an earlier term
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
			// The request reads the mirror: it must have the loop's writes.
			if err := l.settle(ctx); err != nil {
				req.reply <- leaderReply{err: err}
				return err
			}
			r, svc, err := l.serve(ctx, fence, req)
			req.reply <- leaderReply{r, svc, err}
			if errors.Is(err, store.ErrNotLeader) {
				return err
			}
		}
		l.pruneAudit(ctx, fence, l.pruneNow())
		l.lazy = true
		next, err := l.reconcileAll(ctx, fence)
		l.lazy = false
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

// pruneAudit keeps the audit log within its retention: entries older than
// Config.AuditRetention and those beyond the newest Config.AuditMaxEntries
// go, checked every Config.auditPruneEvery; and, as often, the expired
// revocations and blackouts, every service's old rollouts
// (pruneAllRollouts), its old releases' artifacts (pruneAllArtifacts) and
// then the records of those releases (pruneAllReleases).
func (l *leader) pruneAudit(ctx context.Context, fence *store.Fence, now time.Time) {
	if now.Sub(l.auditPruned) < l.c.cfg.auditPruneEvery {
		return
	}
	l.auditPruned = now
	l.pruneRevocations(ctx, fence, now)
	l.pruneBlackouts(ctx, fence, now)
	l.pruneAllRollouts(ctx, fence, now)
	l.pruneAllArtifacts(ctx, fence, now)
	l.pruneAllReleases(ctx, fence, now)
	old, err := l.c.store.PruneAudit(ctx, fence, now.Add(-l.c.cfg.AuditRetention))
	if err != nil {
		l.c.log.Warn().Err(err).Msg("pruning the audit log failed")
		return
	}
	over, err := l.c.store.PruneAuditCount(ctx, fence, l.c.cfg.AuditMaxEntries)
	if err != nil {
		l.c.log.Warn().Err(err).Msg("pruning the audit log failed")
	}
	if old > 0 || over > 0 {
		l.c.log.Info().Int64("older", old).Dur("retention", l.c.cfg.AuditRetention).Int64("beyond_max", over).
			Int64("max_entries", l.c.cfg.AuditMaxEntries).Msg("audit entries pruned")
	}
}
