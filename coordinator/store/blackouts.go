package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// PutBlackout stores a new blackout and returns the revision it was
// written at. It is refused with ErrExists when the id is taken and with
// ErrLimit when max blackouts are stored already (counted just before the
// write: coordinators creating at the same moment can each pass it by one).
func (s *Store) PutBlackout(ctx context.Context, b *v1.Blackout, max int) (int64, error) {
	val, err := marshal(b)
	if err != nil {
		return 0, err
	}
	n, err := s.c.Get(ctx, BlackoutsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count blackouts: %w", err)
	}
	if n.Count >= int64(max) {
		return 0, fmt.Errorf("%d blackouts stored, the limit %d (delete one, or wait until one ends): %w", n.Count, max, ErrLimit)
	}
	key := BlackoutKey(b.GetId())
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return 0, fmt.Errorf("put blackout %s: %w", b.GetId(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("blackout %s: %w", b.GetId(), ErrExists)
	}
	return resp.Header.Revision, nil
}

// DeleteBlackout deletes a blackout and returns the revision; ErrNotFound
// when there is none with that id.
func (s *Store) DeleteBlackout(ctx context.Context, id string) (int64, error) {
	resp, err := s.c.Delete(ctx, BlackoutKey(id))
	if err != nil {
		return 0, fmt.Errorf("delete blackout %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return 0, fmt.Errorf("blackout %s: %w", id, ErrNotFound)
	}
	return resp.Header.Revision, nil
}

// PruneBlackouts deletes, fenced, the blackouts that ended before now
// (each only if unchanged since it was read) and returns how many went.
func (s *Store) PruneBlackouts(ctx context.Context, f *Fence, now time.Time) (int, error) {
	resp, err := s.c.Get(ctx, BlackoutsPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list blackouts: %w", err)
	}
	deleted := 0
	for _, kv := range resp.Kvs {
		b := &v1.Blackout{}
		if err := proto.Unmarshal(kv.Value, b); err != nil || b.GetTo() == nil || !b.GetTo().AsTime().Before(now) {
			continue
		}
		key := string(kv.Key)
		cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision))
		tr, err := s.c.Txn(ctx).If(cmps...).Then(clientv3.OpDelete(key)).Commit()
		if err != nil {
			return deleted, fmt.Errorf("prune blackout %s: %w", key, err)
		}
		if tr.Succeeded {
			deleted++
		}
	}
	return deleted, nil
}
