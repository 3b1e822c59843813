package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// MaxAuditSeq is the most PutAudit's n may be: its key spells n in six
// digits (a seventh would sort before them).
const MaxAuditSeq = 999999

// auditPutAttempts bounds the keys PutAudit tries for one entry.
const auditPutAttempts = 16

// PutAudit appends an entry to the audit log, under its time and n (0 to
// MaxAuditSeq: the caller's sequence, which tells entries of one
// nanosecond apart). Each coordinator counts its own sequence, so two of
// them can pick the same key: the entry is only created, never written
// over an existing one, and on a taken key the next n is tried (up to
// auditPutAttempts keys; a sequence that wraps from MaxAuditSeq to 0
// lists the later entry before the earlier one of its nanosecond).
func (s *Store) PutAudit(ctx context.Context, e *v1.AuditEntry, n int) error {
	if n < 0 || n > MaxAuditSeq {
		return fmt.Errorf("audit %s: sequence %d: want 0 to %d", e.GetMethod(), n, MaxAuditSeq)
	}
	val, err := marshal(e)
	if err != nil {
		return err
	}
	at, first := e.GetAt().AsTime().UnixNano(), n
	for range auditPutAttempts {
		key := fmt.Sprintf("%s%020d-%06d", AuditPrefix, at, n)
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
		if err != nil {
			return fmt.Errorf("audit %s: %w", e.GetMethod(), err)
		}
		if resp.Succeeded {
			return nil
		}
		n = (n + 1) % (MaxAuditSeq + 1)
	}
	return fmt.Errorf("audit %s: keys %s%020d-%06d and the %d sequences after it all taken", e.GetMethod(), AuditPrefix, at, first, auditPutAttempts-1)
}

// ListAudit returns the newest limit audit entries, oldest first.
func (s *Store) ListAudit(ctx context.Context, limit int) ([]*v1.AuditEntry, error) {
	resp, err := s.c.Get(ctx, AuditPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	out := make([]*v1.AuditEntry, 0, len(resp.Kvs))
	for i := len(resp.Kvs) - 1; i >= 0; i-- {
		e := &v1.AuditEntry{}
		if proto.Unmarshal(resp.Kvs[i].Value, e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// PruneAudit deletes, fenced, audit entries recorded before t.
func (s *Store) PruneAudit(ctx context.Context, f *Fence, before time.Time) (int64, error) {
	end := fmt.Sprintf("%s%020d", AuditPrefix, before.UnixNano())
	resp, err := s.c.Txn(ctx).If(f.cmps()...).Then(clientv3.OpDelete(AuditPrefix, clientv3.WithRange(end))).Commit()
	if err != nil {
		return 0, fmt.Errorf("prune audit: %w", err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("prune audit: %w", ErrNotLeader)
	}
	return resp.Responses[0].GetResponseDeleteRange().Deleted, nil
}

// auditPruneBatch bounds the keys one prune step reads (keys only).
const auditPruneBatch = 10000

// PruneAuditCount deletes, fenced, the oldest audit entries beyond the
// newest keep, and returns how many went.
func (s *Store) PruneAuditCount(ctx context.Context, f *Fence, keep int64) (int64, error) {
	var deleted int64
	for {
		resp, err := s.c.Get(ctx, AuditPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return deleted, fmt.Errorf("count audit: %w", err)
		}
		excess := resp.Count - keep
		if excess <= 0 {
			return deleted, nil
		}
		oldest, err := s.c.Get(ctx, AuditPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(min(excess, auditPruneBatch)))
		if err != nil {
			return deleted, fmt.Errorf("prune audit: %w", err)
		}
		if len(oldest.Kvs) == 0 {
			return deleted, nil
		}
		end := string(oldest.Kvs[len(oldest.Kvs)-1].Key) + "\x00"
		tr, err := s.c.Txn(ctx).If(f.cmps()...).Then(clientv3.OpDelete(AuditPrefix, clientv3.WithRange(end))).Commit()
		if err != nil {
			return deleted, fmt.Errorf("prune audit: %w", err)
		}
		if !tr.Succeeded {
			return deleted, fmt.Errorf("prune audit: %w", ErrNotLeader)
		}
		deleted += tr.Responses[0].GetResponseDeleteRange().Deleted
	}
}

// CountAudit is how many audit entries etcd holds.
func (s *Store) CountAudit(ctx context.Context) (int64, error) {
	resp, err := s.c.Get(ctx, AuditPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count audit: %w", err)
	}
	return resp.Count, nil
}
