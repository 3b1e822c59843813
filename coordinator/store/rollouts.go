package store

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// GetRollout returns one rollout.
func (s *Store) GetRollout(ctx context.Context, service, id string) (*v1.Rollout, error) {
	r, _, err := get(ctx, s, RolloutKey(service, id), &v1.Rollout{})
	return r, err
}

// WriteRollout writes a rollout and, when svc is not nil, its service (for
// example the status naming a new rollout, or the status after a rollout
// ended) in one fenced transaction. It compares the mod revisions the caller
// read: rolloutRev 0 means the rollout must not exist yet. It returns the
// revision of the write.
func (s *Store) WriteRollout(ctx context.Context, f *Fence, r *v1.Rollout, rolloutRev int64, svc *v1.Service, serviceRev int64, events ...*v1.Event) (int64, error) {
	rkey := RolloutKey(r.GetService(), r.GetId())
	rval, err := marshal(r)
	if err != nil {
		return 0, err
	}
	cmps := f.cmps()
	if rolloutRev == 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(rkey), "=", 0))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(rkey), "=", rolloutRev))
	}
	ops := []clientv3.Op{clientv3.OpPut(rkey, rval)}
	evOps, err := eventOps(events)
	if err != nil {
		return 0, err
	}
	// etcd bounds the operations in one transaction (--max-txn-ops, 128 by
	// default): the decision and the first events go together, the rest
	// follow in batches once the decision is committed.
	var later []clientv3.Op
	if len(evOps) > maxEventOpsInTxn {
		evOps, later = evOps[:maxEventOpsInTxn], evOps[maxEventOpsInTxn:]
	}
	ops = append(ops, evOps...)
	if svc != nil {
		skey := ServiceKey(svc.GetSpec().GetName())
		sval, err := marshal(svc)
		if err != nil {
			return 0, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(skey), "=", serviceRev))
		ops = append(ops, clientv3.OpPut(skey, sval))
	}
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("write rollout %s/%s: %w", r.GetService(), r.GetId(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("write rollout %s/%s: %w", r.GetService(), r.GetId(), fenceErr(f, resp))
	}
	rev := resp.Header.Revision
	if len(later) == 0 {
		return rev, nil
	}
	// The rest in batches, maxEventTxns at once: one after the other they
	// cost a disk sync each, which at thousands of hosts per wave made the
	// leader wait seconds per step. Their keys order them, not their
	// revisions.
	var (
		mu     sync.Mutex
		failed int
		errs   []error
		wg     sync.WaitGroup
		slots  = make(chan struct{}, maxEventTxns)
	)
	for len(later) > 0 {
		n := min(len(later), maxEventOpsInTxn)
		batch := later[:n]
		later = later[n:]
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			er, err := s.c.Txn(ctx).Then(batch...).Commit()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed += len(batch)
				errs = append(errs, err)
				return
			}
			rev = max(rev, er.Header.Revision)
		})
	}
	wg.Wait()
	if failed > 0 {
		// The decision stands; only history is short.
		return rev, fmt.Errorf("write rollout %s/%s: %d events not recorded: %w (%w)", r.GetService(), r.GetId(), failed, ErrHistoryShort, errors.Join(errs...))
	}
	return rev, nil
}

// maxEventTxns is how many transactions of a decision's further events are
// in flight at once.
const maxEventTxns = 8

// maxEventOpsInTxn keeps a transaction under etcd's default limit of 128
// operations, with room for the rollout and service writes.
const maxEventOpsInTxn = 100
