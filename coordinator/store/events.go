package store

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// EventLayout is how events are stored in etcd.
type EventLayout int

const (
	// EventPerKey is one Event under each EventKey; every coordinator
	// version reads it.
	EventPerKey EventLayout = iota
	// EventBatches packs the events of one write into EventBatch values
	// (a write's single event stays one Event): each holds consecutive
	// events of one service's rollout, at most maxBatchEvents of them and
	// maxBatchBytes encoded, under the EventKey of its first event with
	// the batch's number in the write. Readers expand a batch in place, in
	// order. Coordinators from before it read a batch as an Event with no
	// field set.
	EventBatches
)

func (l EventLayout) String() string {
	if l == EventBatches {
		return "batches"
	}
	return "one per key"
}

// An event batch's bounds: 1,000 events of a step (host_assigned,
// host_done: about 80 bytes each) make one key of about 80 KiB, so a
// 5,000-host step's 10,000 events are 10 keys that go into the decision's
// own transaction (MaxTxnBytes). An event larger than maxBatchBytes is
// stored alone.
const (
	maxBatchEvents = 1000
	maxBatchBytes  = 128 << 10
)

// batchEventsField is EventBatch.events' field number: a value whose
// first field has it is a batch (an Event never has it: types.proto
// reserves it).
var batchEventsField = (&v1.EventBatch{}).ProtoReflect().Descriptor().Fields().ByName("events").Number()

// SetEventLayout sets how the store writes events from now on: the layout
// f returns at each write (nil: EventPerKey). The coordinator sets it once,
// before it writes, to the layout every registered coordinator reads.
func (s *Store) SetEventLayout(f func() EventLayout) { s.eventLayout = f }

func (s *Store) writesBatches() bool {
	return s.eventLayout != nil && s.eventLayout() == EventBatches
}

// eventOps returns the puts that record events, in their order: one per
// event, or (EventBatches) one per batch.
func (s *Store) eventOps(events []*v1.Event) ([]clientv3.Op, error) {
	if len(events) == 0 {
		return nil, nil
	}
	write := s.eventWrite()
	if len(events) < 2 || !s.writesBatches() {
		ops := make([]clientv3.Op, 0, len(events))
		for i, e := range events {
			val, err := marshal(e)
			if err != nil {
				return nil, err
			}
			ops = append(ops, clientv3.OpPut(EventKey(e, write, i), val))
		}
		return ops, nil
	}
	var (
		ops   []clientv3.Op
		first *v1.Event // the current batch's
		n     int       // its events
		val   []byte    // its value: EventBatch's encoding
		one   []byte    // its only event's encoding, while it has one
	)
	flush := func() {
		if first == nil {
			return
		}
		if n == 1 {
			val = one // a batch of one is stored as the event
		}
		ops = append(ops, clientv3.OpPut(EventKey(first, write, len(ops)), string(val)))
		first, n, val, one = nil, 0, nil, nil
	}
	for _, e := range events {
		b, err := proto.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("marshal %T: %w", e, err)
		}
		size := protowire.SizeTag(batchEventsField) + protowire.SizeBytes(len(b))
		if first != nil && (n == maxBatchEvents || len(val)+size > maxBatchBytes ||
			e.GetService() != first.GetService() || e.GetRolloutId() != first.GetRolloutId()) {
			flush()
		}
		if first == nil {
			first, one = e, b
		}
		val = protowire.AppendTag(val, batchEventsField, protowire.BytesType)
		val = protowire.AppendBytes(val, b)
		n++
	}
	flush()
	return ops, nil
}

// eventWrite names a new write of events in its keys (EventKey): the
// store's random id (8 hex digits) and its count of event writes (12 hex
// digits, in order).
func (s *Store) eventWrite() string {
	return fmt.Sprintf("%s%012x", s.writer, s.eventWrites.Add(1))
}

// skipUndecodable logs and counts an event record whose value does not
// decode. Listings and watches skip it: one bad record must not hide the
// others from an operator.
func (s *Store) skipUndecodable(key []byte, err error) {
	s.undecodable.Add(1)
	s.log.Warn().Str("key", string(key)).Err(err).Msg("event record does not decode: skipped")
}

// UndecodableEvents is how many event records listings and watches
// skipped because their values did not decode.
func (s *Store) UndecodableEvents() uint64 { return s.undecodable.Load() }

// DecodeEvents returns the events stored under one event key, in order:
// a batch's, or the one event.
func DecodeEvents(val []byte) ([]*v1.Event, error) {
	if num, _, n := protowire.ConsumeTag(val); n > 0 && num == batchEventsField {
		b := &v1.EventBatch{}
		if err := proto.Unmarshal(val, b); err != nil {
			return nil, fmt.Errorf("decode event batch: %w", err)
		}
		return b.GetEvents(), nil
	}
	e := &v1.Event{}
	if err := proto.Unmarshal(val, e); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	return []*v1.Event{e}, nil
}

// PutEvents records events outside a rollout write (e.g. an alert sent).
func (s *Store) PutEvents(ctx context.Context, events ...*v1.Event) error {
	ops, err := s.eventOps(events)
	if err != nil {
		return err
	}
	if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("put events: %w", err)
	}
	return nil
}

// MaxListEvents is the most events one ListEvents returns (the operator
// API's limit); eventListPageKeys bounds the keys of one read of values:
// 32 keys are at most 32,000 events and 4 MiB of values (event batches,
// maxBatchEvents and maxBatchBytes each).
const (
	MaxListEvents     = 10000
	eventListPageKeys = 32
)

// ListEvents returns a service's newest limit events in key order (of one
// rollout if rolloutID is set; a service's: by rollout, then time, events
// of no rollout first), oldest first, and whether older ones were left
// out. It reads at one revision: the keys first (not their values, in
// ascending pages, which etcd bounds: a descending read makes etcd read
// and sort the whole range for every page), keeping the newest limit of
// them (a key holds one event or more); then their values, newest key
// first, eventListPageKeys at a time, until it has limit events. It holds
// at most limit keys, and limit events and a page. A record that does not
// decode is skipped (skipUndecodable); an older one that does not decode
// still counts as left out.
func (s *Store) ListEvents(ctx context.Context, service, rolloutID string, limit int) ([]*v1.Event, bool, error) {
	if limit <= 0 {
		return nil, false, fmt.Errorf("list events of %s: limit %d, want 1 or more", service, limit)
	}
	prefix := EventsPrefixFor(service, rolloutID)
	// The newest limit keys, a ring: newest[head] is the oldest of them
	// once it is full.
	newest := make([]revKey, 0, min(limit, eventKeysPage))
	head, older := 0, false
	at, err := s.eventKeys(ctx, prefix, 0, func(key []byte, modRev int64) error {
		k := revKey{rev: modRev, key: string(key)}
		if len(newest) < limit {
			newest = append(newest, k)
			return nil
		}
		newest[head], head, older = k, (head+1)%limit, true
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	keys := append(newest[head:len(newest):len(newest)], newest[:head]...) // oldest first
	var pages [][]*v1.Event                                                // a page's events each, newest page first
	n := 0
	for len(keys) > 0 && n < limit {
		page := keys[max(0, len(keys)-eventListPageKeys):]
		keys = keys[:len(keys)-len(page)]
		var evs []*v1.Event
		if err := s.eventValues(ctx, prefix, at, page, func(e RevEvent) error {
			evs = append(evs, e.Event)
			return nil
		}); err != nil {
			return nil, false, err
		}
		pages = append(pages, evs)
		n += len(evs)
	}
	truncated := older || len(keys) > 0 || n > limit
	if n > limit { // the oldest page's newest events only
		last := pages[len(pages)-1]
		pages[len(pages)-1] = last[n-limit:]
		n = limit
	}
	return oldestFirst(pages, n), truncated, nil
}

// oldestFirst joins n events read a page at a time, newest page first.
func oldestFirst(newest [][]*v1.Event, n int) []*v1.Event {
	out := make([]*v1.Event, 0, n)
	for i := len(newest) - 1; i >= 0; i-- {
		out = append(out, newest[i]...)
	}
	return out
}

// RevEvent is an event with the etcd revision it was written at.
type RevEvent struct {
	Event *v1.Event
	Rev   int64
}

// eventPageKeys bounds the keys of one read of event values (EventsSince
// reads at most this many, or the store's transaction size if smaller):
// 256 keys are at most 256,000 events (maxBatchEvents each) and 32 MiB of
// values (maxBatchBytes each), half of what the etcd client receives in
// one response (DialTLS).
const eventPageKeys = 256

// eventsSinceKeys bounds the event keys one pass of EventsSince selects
// (their keys and revisions only, about 100 bytes each: under 2 MiB). It
// is more than one transaction of ours writes (MaxMaxTxnOps), so a pass
// holds whole revisions (a larger one is listed by itself:
// eventsOfRevision). eventKeysPage bounds one read of keys: etcd counts
// the rest of the range for every read with a limit (it visits every key
// after the page in its index), so a listing in pages costs about the
// square of the keys over the page: at 100,000 keys a listing took 1.26 s
// in pages of 1,024 and 0.15 s in pages of 16,384 (about 1.6 MB of keys).
const (
	eventsSinceKeys = 16384
	eventKeysPage   = 16384
)

// EventsSince calls fn with each event under prefix written after revision
// since (0 = all kept), ordered by revision then key (the order they were
// written in; a batch's events in its order, each with the batch's
// revision), and returns the store revision the listing was taken at; a
// watch from that revision + 1 misses nothing. A record that does not
// decode is skipped (skipUndecodable). What it holds at once is bounded,
// however many events there are: it reads the keys (not the values) in
// passes of at most eventsSinceKeys, the oldest revisions first, and their
// values eventPageKeys at a time.
func (s *Store) EventsSince(ctx context.Context, prefix string, since int64, fn func(RevEvent) error) (int64, error) {
	return s.eventsSince(ctx, prefix, since, eventsSinceKeys, min(eventPageKeys, s.txnOps), fn)
}

// eventsSince is EventsSince with its bounds: passes of passKeys keys,
// values read pageKeys at a time.
func (s *Store) eventsSince(ctx context.Context, prefix string, since int64, passKeys, pageKeys int, fn func(RevEvent) error) (int64, error) {
	var at int64
	for {
		sel, through, rev, err := s.selectEventKeys(ctx, prefix, since, at, passKeys)
		var big *bigRevisionError
		if errors.As(err, &big) {
			// A revision with more keys than a pass holds (no writer of
			// ours makes one: a transaction is at most MaxMaxTxnOps): it
			// alone, streamed in key order, rather than a listing that
			// fails at it for good (and a follower that retries for ever).
			at = big.at
			if err := s.eventsOfRevision(ctx, prefix, big.rev, at, pageKeys, fn); err != nil {
				return 0, err
			}
			since = big.rev
			continue
		}
		if err != nil {
			return 0, err
		}
		at = rev
		for len(sel) > 0 {
			n := min(pageKeys, len(sel))
			if err := s.eventValues(ctx, prefix, at, sel[:n], fn); err != nil {
				return 0, err
			}
			sel = sel[n:]
		}
		if through >= at {
			return at, nil
		}
		since = through
	}
}

// eventValues reads the values of keys (at revision at) and calls fn with
// their events, in the keys' order.
func (s *Store) eventValues(ctx context.Context, prefix string, at int64, keys []revKey, fn func(RevEvent) error) error {
	if len(keys) == 0 {
		return nil
	}
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k.key, clientv3.WithRev(at))
	}
	resp, err := s.c.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("list events under %s at revision %d: %w", prefix, at, err)
	}
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			evs, err := DecodeEvents(kv.Value)
			if err != nil {
				s.skipUndecodable(kv.Key, err)
				continue
			}
			for _, e := range evs {
				if err := fn(RevEvent{Event: e, Rev: kv.ModRevision}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// eventsOfRevision calls fn with the events under prefix written at
// revision rev (read at revision at), in key order, holding pageKeys keys
// at a time however many the revision wrote.
func (s *Store) eventsOfRevision(ctx context.Context, prefix string, rev, at int64, pageKeys int, fn func(RevEvent) error) error {
	page := make([]revKey, 0, pageKeys)
	_, err := s.eventKeys(ctx, prefix, at, func(key []byte, modRev int64) error {
		if modRev != rev {
			return nil
		}
		page = append(page, revKey{rev: rev, key: string(key)})
		if len(page) < pageKeys {
			return nil
		}
		err := s.eventValues(ctx, prefix, at, page, fn)
		page = page[:0]
		return err
	})
	if err != nil {
		return fmt.Errorf("events of revision %d: %w", rev, err)
	}
	return s.eventValues(ctx, prefix, at, page, fn)
}

// eventKeys calls fn with every key under prefix and its revision, in key
// order, read eventKeysPage at a time at revision at (0: now), and returns
// the revision read at.
func (s *Store) eventKeys(ctx context.Context, prefix string, at int64, fn func(key []byte, modRev int64) error) (int64, error) {
	page := eventKeysPage
	if s.keysPage > 0 {
		page = s.keysPage
	}
	return s.scan(ctx, prefix, at, scanOpts{keysOnly: true, first: page, maxKeys: page}, func(kv *mvccpb.KeyValue) error {
		return fn(kv.Key, kv.ModRevision)
	})
}

// bigRevisionError: revision rev wrote more event keys than a pass of
// selectEventKeys holds (read at revision at).
type bigRevisionError struct {
	prefix  string
	rev, at int64
	limit   int
}

func (e *bigRevisionError) Error() string {
	return fmt.Sprintf("list events under %s: revision %d wrote more than %d event keys", e.prefix, e.rev, e.limit)
}

// revKey is an event key with the revision it was written at.
type revKey struct {
	rev int64
	key string
}

func (a revKey) less(b revKey) bool { return a.rev < b.rev || (a.rev == b.rev && a.key < b.key) }

// revKeyHeap is a max-heap of revKeys (container/heap).
type revKeyHeap []revKey

func (h revKeyHeap) Len() int           { return len(h) }
func (h revKeyHeap) Less(i, j int) bool { return h[j].less(h[i]) }
func (h revKeyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *revKeyHeap) Push(x any)        { *h = append(*h, x.(revKey)) }
func (h *revKeyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// selectEventKeys reads the keys under prefix (at revision at; 0 = now,
// returned as rev) written after revision since, and returns, ordered by
// revision then key, those of the oldest revisions: all of them, or (when
// there are more than limit) the most of whole revisions that fit in
// limit; through is the revision they cover up to.
func (s *Store) selectEventKeys(ctx context.Context, prefix string, since, at int64, limit int) (sel []revKey, through, rev int64, err error) {
	h := make(revKeyHeap, 0, min(limit, eventKeysPage)+1)
	var dropped int64 // the oldest revision some of whose keys did not fit
	at, err = s.eventKeys(ctx, prefix, at, func(key []byte, modRev int64) error {
		if modRev <= since || (dropped != 0 && modRev >= dropped) {
			return nil
		}
		heap.Push(&h, revKey{rev: modRev, key: string(key)})
		if len(h) > limit {
			out := heap.Pop(&h).(revKey)
			if dropped == 0 || out.rev < dropped {
				dropped = out.rev
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	through = at
	if dropped != 0 {
		// Keep whole revisions: those before the oldest one cut.
		through = dropped - 1
		kept := h[:0]
		for _, k := range h {
			if k.rev < dropped {
				kept = append(kept, k)
			}
		}
		h = kept
		if len(h) == 0 {
			return nil, 0, 0, &bigRevisionError{prefix: prefix, rev: dropped, at: at, limit: limit}
		}
	}
	sel = []revKey(h)
	sort.Slice(sel, func(i, j int) bool { return sel[i].less(sel[j]) })
	return sel, through, at, nil
}

// WatchEvents calls fn with every event written under prefix from revision
// from on, ordered by revision then key (as EventsSince), until ctx ends or
// fn fails. It fails with an error naming the revision when etcd compacted
// it away.
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
		// Each revision's events by key, as EventsSince lists them: the
		// order a write put them in may differ (a relabelled host's events
		// of "web" then "web-api", whose keys sort the other way), and a
		// follower resuming inside a revision skips the ones it printed by
		// count. A watch response holds whole revisions.
		sort.SliceStable(wr.Events, func(i, j int) bool {
			a, b := wr.Events[i].Kv, wr.Events[j].Kv
			return a.ModRevision < b.ModRevision || (a.ModRevision == b.ModRevision && bytes.Compare(a.Key, b.Key) < 0)
		})
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			evs, err := DecodeEvents(ev.Kv.Value)
			if err != nil {
				s.skipUndecodable(ev.Kv.Key, err)
				continue
			}
			for _, e := range evs {
				if err := fn(RevEvent{Event: e, Rev: ev.Kv.ModRevision}); err != nil {
					return err
				}
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
// went (an event or a batch each).
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
