package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func eventOps(events []*v1.Event) ([]clientv3.Op, error) {
	ops := make([]clientv3.Op, 0, len(events))
	for i, e := range events {
		val, err := marshal(e)
		if err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpPut(EventKey(e, i), val))
	}
	return ops, nil
}

// PutEvents records events outside a rollout write (e.g. an alert sent).
func (s *Store) PutEvents(ctx context.Context, events ...*v1.Event) error {
	ops, err := eventOps(events)
	if err != nil {
		return err
	}
	if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("put events: %w", err)
	}
	return nil
}

// ListEvents returns a service's events (of one rollout if rolloutID is
// set), oldest first.
func (s *Store) ListEvents(ctx context.Context, service, rolloutID string) ([]*v1.Event, error) {
	prefix := EventsPrefix + service + "/"
	if rolloutID != "" {
		prefix += rolloutID + "/"
	}
	return list(ctx, s, prefix, func() *v1.Event { return &v1.Event{} })
}

// RevEvent is an event with the etcd revision it was written at.
type RevEvent struct {
	Event *v1.Event
	Rev   int64
}

// maxEventBatch bounds one page of a listing of events.
const maxEventBatch = 1000

// EventsSince returns the events under prefix written after revision
// since (0 = all kept), ordered by revision then key (the order they were
// written in), and the store revision the listing was taken at; a watch from
// that revision + 1 misses nothing. Values that do not decode are skipped.
func (s *Store) EventsSince(ctx context.Context, prefix string, since int64) ([]RevEvent, int64, error) {
	var out []RevEvent
	var at int64
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(maxEventBatch)}
		if at != 0 {
			opts = append(opts, clientv3.WithRev(at))
		}
		if since > 0 {
			opts = append(opts, clientv3.WithMinModRev(since+1))
		}
		resp, err := s.c.Get(ctx, key, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list events under %s: %w", prefix, err)
		}
		if at == 0 {
			at = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			e := &v1.Event{}
			if proto.Unmarshal(kv.Value, e) == nil {
				out = append(out, RevEvent{Event: e, Rev: kv.ModRevision})
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Rev < out[j].Rev })
	return out, at, nil
}

// WatchEvents calls fn with every event written under prefix from revision
// from on, in order, until ctx ends or fn fails. It fails with an error
// naming the revision when etcd compacted it away.
func (s *Store) WatchEvents(ctx context.Context, prefix string, from int64, fn func(RevEvent) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			if wr.CompactRevision != 0 {
				return fmt.Errorf("events from revision %d were compacted (oldest kept: %d): %w", from, wr.CompactRevision, err)
			}
			return fmt.Errorf("watch events under %s: %w", prefix, err)
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			e := &v1.Event{}
			if proto.Unmarshal(ev.Kv.Value, e) != nil {
				continue
			}
			if err := fn(RevEvent{Event: e, Rev: ev.Kv.ModRevision}); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("event watch ended (etcd unavailable or no leader)")
}

// PruneEvents deletes, fenced, the recorded events of a service's rollouts
// with ids before beforeRollout (zero-padded ids sort by number), and the
// service's events recorded outside any rollout. It returns how many keys
// went.
func (s *Store) PruneEvents(ctx context.Context, f *Fence, service, beforeRollout string) (int64, error) {
	if service == "" || strings.Contains(service, "/") || beforeRollout == "" {
		return 0, fmt.Errorf("prune events: service %q, before %q", service, beforeRollout)
	}
	from := EventsPrefix + service + "/"
	resp, err := s.c.Txn(ctx).If(f.cmps()...).Then(clientv3.OpDelete(from, clientv3.WithRange(from+beforeRollout))).Commit()
	if err != nil {
		return 0, fmt.Errorf("prune events of %s: %w", service, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("prune events of %s: %w", service, ErrNotLeader)
	}
	return resp.Responses[0].GetResponseDeleteRange().Deleted, nil
}
