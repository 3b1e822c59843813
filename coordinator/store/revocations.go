package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// ErrLimit is returned when a write would pass a limit on what is stored.
var ErrLimit = errors.New("limit reached")

// PutRevocation stores a revocation (replacing one with the same key) and
// returns the revision it was written at. A new key is refused with
// ErrLimit when max revocations are stored already (counted just before
// the write: coordinators revoking at the same moment can each pass it by
// one).
func (s *Store) PutRevocation(ctx context.Context, r *v1.Revocation, max int) (int64, error) {
	val, err := marshal(r)
	if err != nil {
		return 0, err
	}
	key := RevocationKey(r)
	n, err := s.c.Get(ctx, RevocationsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count revocations: %w", err)
	}
	// Put when there is room, or (at the limit) when the key exists.
	var cmps []clientv3.Cmp
	if n.Count >= int64(max) {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), ">", 0))
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return 0, fmt.Errorf("put revocation %s: %w", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("%d revocations stored, the limit (--max-revocations %d): %w", n.Count, max, ErrLimit)
	}
	return resp.Header.Revision, nil
}

// PruneRevocations deletes, fenced, the revocations that expired before
// now (each only if unchanged since it was read) and returns how many went.
func (s *Store) PruneRevocations(ctx context.Context, f *Fence, now time.Time) (int, error) {
	resp, err := s.c.Get(ctx, RevocationsPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list revocations: %w", err)
	}
	deleted := 0
	for _, kv := range resp.Kvs {
		r := &v1.Revocation{}
		if err := proto.Unmarshal(kv.Value, r); err != nil || r.GetExpiresAt() == nil || !r.GetExpiresAt().AsTime().Before(now) {
			continue
		}
		key := string(kv.Key)
		cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision))
		tr, err := s.c.Txn(ctx).If(cmps...).Then(clientv3.OpDelete(key)).Commit()
		if err != nil {
			return deleted, fmt.Errorf("prune revocation %s: %w", key, err)
		}
		if tr.Succeeded {
			deleted++
		}
	}
	return deleted, nil
}
