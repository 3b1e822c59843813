package store

import (
	"context"
	"fmt"
	"math"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
		key := auditKey(at, n)
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
		if err != nil {
			return fmt.Errorf("audit %s: %w", e.GetMethod(), err)
		}
		if resp.Succeeded {
			return nil
		}
		n = (n + 1) % (MaxAuditSeq + 1)
	}
	return fmt.Errorf("audit %s: keys %s and the %d sequences after it all taken", e.GetMethod(), auditKey(at, first), auditPutAttempts-1)
}

// auditKey is the key of the audit entry of time t (Unix nanoseconds) and
// sequence n.
func auditKey(t int64, n int) string { return fmt.Sprintf("%s%020d-%06d", AuditPrefix, t, n) }

// ListAudit returns the newest limit audit entries, oldest first (an
// entry that does not decode is skipped).
//
// etcd honours a read's limit only in ascending key order (for any other
// it reads and sorts the whole range, then cuts it: up to AuditMaxEntries,
// 100,000 entries, for every listing), so the newest entries are found by
// counting, which etcd answers from its in-memory index without reading
// values: keys name their time, so the count of entries from a time on is
// searched for the latest time with at least limit entries after it
// (doubling back from now, then halving), and only those entries are read,
// ascending, all at the revision of the first count.
func (s *Store) ListAudit(ctx context.Context, limit int) ([]*v1.AuditEntry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list audit: limit %d, want 1 or more", limit)
	}
	end := clientv3.GetPrefixRangeEnd(AuditPrefix)
	first, err := s.c.Get(ctx, AuditPrefix, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	from := AuditPrefix
	if first.Count > int64(limit) {
		at := first.Header.GetRevision()
		count := func(key string) (int64, error) {
			resp, err := s.c.Get(ctx, key, clientv3.WithRange(end), clientv3.WithCountOnly(), clientv3.WithRev(at))
			if err != nil {
				return 0, fmt.Errorf("list audit: %w", err)
			}
			return resp.Count, nil
		}
		if from, err = auditFrom(count, int64(limit), time.Now().UnixNano()); err != nil {
			return nil, err
		}
		resp, err := s.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(at))
		if err != nil {
			return nil, fmt.Errorf("list audit: %w", err)
		}
		return decodeAudit(resp.Kvs[max(0, len(resp.Kvs)-limit):]), nil
	}
	resp, err := s.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(first.Header.GetRevision()))
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	return decodeAudit(resp.Kvs), nil
}

func decodeAudit(kvs []*mvccpb.KeyValue) []*v1.AuditEntry {
	out := make([]*v1.AuditEntry, 0, len(kvs))
	for _, kv := range kvs {
		e := &v1.AuditEntry{}
		if proto.Unmarshal(kv.Value, e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// auditSlack is how many entries over the limit ListAudit may read (an
// eighth more) rather than halve its search again.
func auditSlack(limit int64) int64 { return limit/8 + 16 }

// auditFrom finds the key from which ListAudit reads: one with at least
// limit entries from it on (count(key) says how many), and at most
// auditSlack more unless entries of one nanosecond are that many, given
// more than limit entries in all. now (Unix nanoseconds) is where the
// search starts; entries dated after it are counted like any other.
func auditFrom(count func(key string) (int64, error), limit, now int64) (string, error) {
	key := func(t int64, n int) string {
		if t < 0 {
			return AuditPrefix // every entry (none is dated before 1970)
		}
		return auditKey(t, n)
	}
	// lo: a time with at least limit entries from it on (and cLo of
	// them); hi: one with fewer.
	lo, hi, cLo := int64(-1), int64(math.MaxInt64), int64(math.MaxInt64)
	c, err := count(key(now, 0))
	if err != nil {
		return "", err
	}
	if c >= limit {
		lo, cLo = now, c
	} else {
		hi = now
		for w := int64(time.Second); ; w *= 2 {
			t := now - w
			if t <= 0 || w > math.MaxInt64/2 {
				break // lo -1: every entry, more than limit
			}
			if c, err = count(key(t, 0)); err != nil {
				return "", err
			}
			if c >= limit {
				lo, cLo = t, c
				break
			}
			hi = t
		}
	}
	for hi-lo > 1 && cLo > limit+auditSlack(limit) {
		mid := lo + (hi-lo)/2
		if c, err = count(key(mid, 0)); err != nil {
			return "", err
		}
		if c >= limit {
			lo, cLo = mid, c
		} else {
			hi = mid
		}
	}
	if cLo <= limit+auditSlack(limit) || lo < 0 {
		return key(lo, 0), nil
	}
	// Too many entries of the nanosecond lo: the same search over their
	// sequences (a key of lo's with at least limit entries from it on).
	nlo, nhi := 0, MaxAuditSeq+1
	for nhi-nlo > 1 && cLo > limit+auditSlack(limit) {
		mid := nlo + (nhi-nlo)/2
		if c, err = count(key(lo, mid)); err != nil {
			return "", err
		}
		if c >= limit {
			nlo, cLo = mid, c
		} else {
			nhi = mid
		}
	}
	return key(lo, nlo), nil
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
