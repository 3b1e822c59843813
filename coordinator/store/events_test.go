package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// eventsOf makes n events of a service's rollout at one time (as a step
// writes them), each named by its message.
func eventsOf(service, rolloutID, kind string, at time.Time, tag string, n int) []*v1.Event {
	evs := make([]*v1.Event, n)
	for i := range evs {
		evs[i] = &v1.Event{At: timestamppb.New(at), Service: service, RolloutId: rolloutID, Kind: kind, Wave: 1, Host: fmt.Sprintf("h%05d", i), Message: fmt.Sprintf("%s-%d", tag, i)}
	}
	return evs
}

// The same writes (rollout steps, events outside a rollout, several
// rollouts in one PutEvents) recorded one event per key for service "old"
// and in batches for service "new": ListEvents shows the same events in
// the same order; the batched ones take few keys, each step's in its
// decision's transaction; EventsSince and WatchEvents give every event
// with the revision of its write, in order; pruning removes batches by
// rollout id as it does single events.
func TestEventBatchesReadAsSingleEvents(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	layout := EventPerKey
	s.SetEventLayout(func() EventLayout { return layout })

	start, err := s.c.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		msg string
		rev int64
	}
	var (
		mu      sync.Mutex
		watched []seen
	)
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan error, 1)
	go func() {
		wdone <- s.WatchEvents(wctx, EventsPrefixFor("new", ""), start.Header.Revision+1, func(e RevEvent) error {
			mu.Lock()
			defer mu.Unlock()
			watched = append(watched, seen{e.Event.GetMessage(), e.Rev})
			return nil
		})
	}()

	// writes records, for one service, the sequence of writes; it returns
	// each event's message with the revision its write's decision took.
	base := time.Unix(1700000000, 0)
	writes := func(svc string) (order []seen, keysAt map[int64]int) {
		t.Helper()
		r := &v1.Rollout{Id: "000001", Service: svc, ToVersion: "v1"}
		step1 := append(eventsOf(svc, "000001", "rollout_created", base, "w1c", 1), eventsOf(svc, "000001", "host_assigned", base, "w1", 2500)...)
		d1, last1, err := s.WriteRollout(ctx, nil, r, RolloutBase{}, nil, 0, step1...)
		if err != nil {
			t.Fatal(err)
		}
		outside := eventsOf(svc, "", "alert_sent", base.Add(time.Second), "w2", 3)
		if err := s.PutEvents(ctx, outside...); err != nil {
			t.Fatal(err)
		}
		r2 := &v1.Rollout{Id: "000001", Service: svc, ToVersion: "v1", Reason: "step"}
		step2 := eventsOf(svc, "000001", "host_done", base.Add(2*time.Second), "w3", 1200)
		d3, _, err := s.WriteRollout(ctx, nil, r2, RolloutBase{Rollout: r, Rev: d1}, nil, 0, step2...)
		if err != nil {
			t.Fatal(err)
		}
		at4 := base.Add(3 * time.Second)
		mixed := append(append(eventsOf(svc, "000001", "k", at4, "w4a", 2), eventsOf(svc, "", "k", at4, "w4b", 1)...), eventsOf(svc, "000001", "k", at4, "w4c", 1)...)
		mixed = append(mixed, eventsOf("other", "000001", "k", at4, "w4d", 1)...)
		if err := s.PutEvents(ctx, mixed...); err != nil {
			t.Fatal(err)
		}
		if layout == EventBatches && last1 != d1 {
			t.Errorf("a step of 2,501 events in batches: decision at %d, last events at %d: want one transaction", d1, last1)
		}
		_ = d3
		since, _, err := listSince(ctx, s, EventsPrefixFor(svc, ""), 0)
		if err != nil {
			t.Fatal(err)
		}
		keysAt = map[int64]int{}
		resp, err := s.c.Get(ctx, EventsPrefixFor(svc, ""), clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			keysAt[kv.ModRevision]++
		}
		for _, e := range since {
			order = append(order, seen{e.Event.GetMessage(), e.Rev})
		}
		return order, keysAt
	}
	oldSince, oldKeys := writes("old")
	layout = EventBatches
	newSince, newKeys := writes("new")

	// The same events, in the same order, through ListEvents.
	for _, rid := range []string{"", "000001"} {
		oldList, _, err := s.ListEvents(ctx, "old", rid, listAll)
		if err != nil {
			t.Fatal(err)
		}
		newList, _, err := s.ListEvents(ctx, "new", rid, listAll)
		if err != nil {
			t.Fatal(err)
		}
		if len(oldList) != len(newList) || len(newList) == 0 {
			t.Fatalf("rollout %q: %d events one per key, %d in batches", rid, len(oldList), len(newList))
		}
		for i := range newList {
			o := proto.Clone(oldList[i]).(*v1.Event)
			o.Service = "new"
			if !proto.Equal(o, newList[i]) {
				t.Fatalf("rollout %q event %d: one per key %v, in batches %v", rid, i, oldList[i], newList[i])
			}
		}
	}
	total := 1 + 2500 + 3 + 1200 + 4
	if len(oldSince) != total || len(newSince) != total {
		t.Fatalf("EventsSince: %d events one per key (over %d keys: pages of %d), %d in batches; want %d", len(oldSince), len(oldSince), eventPageKeys, len(newSince), total)
	}
	// Keys: one per event before; in batches 3 for the first step (1,000
	// events each at most), 1 for the 3 outside a rollout, 2 for the second
	// step, 3 for the mixed write (runs of one rollout: 2, 1, 1; a run of
	// one is a plain event).
	nkeys := 0
	for _, n := range newKeys {
		nkeys += n
	}
	okeys := 0
	for _, n := range oldKeys {
		okeys += n
	}
	if okeys != total || nkeys != 9 {
		t.Errorf("keys: %d one per key (want %d), %d in batches (want 9): %v", okeys, total, nkeys, newKeys)
	}
	// Each event with its write's revision, writes in order, each write's
	// events in key order (= written order here).
	want := map[string]int{"w1c": 0, "w1": 0, "w2": 1, "w3": 2, "w4a": 3, "w4b": 3, "w4c": 3}
	revOf := map[int]int64{}
	for i, e := range newSince {
		w := want[e.msg[:strings.LastIndex(e.msg, "-")]]
		if r, ok := revOf[w]; ok && r != e.rev {
			t.Fatalf("event %s at revision %d, its write's other events at %d", e.msg, e.rev, r)
		}
		revOf[w] = e.rev
		if i > 0 && newSince[i-1].rev > e.rev {
			t.Fatalf("EventsSince out of revision order at %d: %v then %v", i, newSince[i-1], e)
		}
	}
	if newSince[0].msg != "w1c-0" || newSince[2500].msg != "w1-2499" || newSince[2501].msg != "w2-0" {
		t.Errorf("EventsSince order: %v %v %v", newSince[0], newSince[2500], newSince[2501])
	}
	// EventsSince after the first step's revision leaves it out.
	after, _, err := listSince(ctx, s, EventsPrefixFor("new", ""), revOf[0])
	if err != nil || len(after) != total-2501 || after[0].Event.GetMessage() != "w2-0" {
		t.Fatalf("EventsSince the first step: %d events (%v), want %d from w2-0", len(after), err, total-2501)
	}
	// The watch: every event, in the order written (each write's by key),
	// with its revision.
	testkit.EventuallyErr(t, 30*time.Second, "every event watched", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(watched) < total {
			return fmt.Errorf("%d of %d events watched", len(watched), total)
		}
		return nil
	})
	wcancel()
	<-wdone
	mu.Lock()
	defer mu.Unlock()
	if len(watched) != total {
		t.Fatalf("%d events watched, want %d", len(watched), total)
	}
	byMsg := map[string]int64{}
	for _, e := range newSince {
		byMsg[e.msg] = e.rev
	}
	writeOrder := []string{"w1c-0"}
	for i := range 2500 {
		writeOrder = append(writeOrder, fmt.Sprintf("w1-%d", i))
	}
	writeOrder = append(writeOrder, "w2-0", "w2-1", "w2-2")
	for i := range 1200 {
		writeOrder = append(writeOrder, fmt.Sprintf("w3-%d", i))
	}
	// The mixed write by key, as EventsSince lists it: its event outside a
	// rollout (000000) before those of rollout 000001.
	writeOrder = append(writeOrder, "w4b-0", "w4a-0", "w4a-1", "w4c-0")
	for i, e := range watched {
		if e.msg != writeOrder[i] || e.rev != byMsg[e.msg] {
			t.Fatalf("watched event %d: %s at %d, want %s at %d", i, e.msg, e.rev, writeOrder[i], byMsg[writeOrder[i]])
		}
	}

	// Pruning by rollout id takes the batches with it.
	n, err := s.PruneEvents(ctx, nil, "new", "000002")
	if err != nil || n != 9 {
		t.Fatalf("pruned %d keys (%v), want 9", n, err)
	}
	if left, _, err := s.ListEvents(ctx, "new", "", listAll); err != nil || len(left) != 0 {
		t.Fatalf("after pruning: %d events (%v)", len(left), err)
	}
	if left, _, err := s.ListEvents(ctx, "other", "", listAll); err != nil || len(left) != 2 {
		t.Fatalf("another service after pruning: %d events (%v), want its 2", len(left), err)
	}
}

// A batch's bounds: at most maxBatchEvents events and maxBatchBytes bytes
// per key (an event larger than that alone, as a plain event); a write
// whose events exceed MaxTxnBytes puts the rest in further transactions,
// each within it, and every event lists in order. A coordinator from
// before batches decodes a batch as an Event with no field set.
func TestEventBatchBounds(t *testing.T) {
	s := startStore(t)
	s.SetEventLayout(func() EventLayout { return EventBatches })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	at := time.Unix(1700000000, 0)

	check := func(evs []*v1.Event, wantKeys int) {
		t.Helper()
		ops, err := s.eventOps(evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(ops) != wantKeys {
			t.Errorf("%d events: %d keys, want %d", len(evs), len(ops), wantKeys)
		}
		var got []*v1.Event
		for _, op := range ops {
			es, err := DecodeEvents(op.ValueBytes())
			if err != nil {
				t.Fatal(err)
			}
			if len(es) > maxBatchEvents || (len(es) > 1 && len(op.ValueBytes()) > maxBatchBytes) {
				t.Errorf("a key of %d events, %d bytes: over %d events or %d bytes", len(es), len(op.ValueBytes()), maxBatchEvents, maxBatchBytes)
			}
			got = append(got, es...)
		}
		if len(got) != len(evs) {
			t.Fatalf("%d events decoded, %d written", len(got), len(evs))
		}
		for i := range got {
			if !proto.Equal(got[i], evs[i]) {
				t.Fatalf("event %d: %v, want %v", i, got[i], evs[i])
			}
		}
	}
	check(eventsOf("web", "000001", "host_assigned", at, "a", 2500), 3)
	check(eventsOf("web", "000001", "host_assigned", at, "a", maxBatchEvents), 1)
	check(eventsOf("web", "000001", "host_assigned", at, "a", maxBatchEvents+1), 2)
	big := eventsOf("web", "000001", "host_failed", at, "b", 300)
	for _, e := range big {
		e.Message += strings.Repeat("x", 1024)
	}
	check(big, 3) // 1 KiB each: 126 to a key
	huge := eventsOf("web", "000001", "host_failed", at, "c", 3)
	huge[1].Message = strings.Repeat("y", maxBatchBytes)
	check(huge, 3)
	if ops, _ := s.eventOps(huge); len(ops) == 3 {
		if num, _, _ := protowire.ConsumeTag(ops[1].ValueBytes()); num == batchEventsField {
			t.Errorf("an event over maxBatchBytes stored as a batch, want a plain event")
		}
	}

	// An old reader: a batch unmarshalled as one Event sets no field.
	ops, err := s.eventOps(eventsOf("web", "000001", "host_assigned", at, "d", 10))
	if err != nil || len(ops) != 1 {
		t.Fatalf("10 events: %d keys (%v)", len(ops), err)
	}
	old := &v1.Event{}
	if err := proto.Unmarshal(ops[0].ValueBytes(), old); err != nil {
		t.Fatalf("a batch read as an Event: %v", err)
	}
	old.ProtoReflect().SetUnknown(nil)
	if !proto.Equal(old, &v1.Event{}) {
		t.Errorf("a batch read as an Event by an old reader: %v, want no field set", old)
	}

	// A write over MaxTxnBytes: 2,000 events of 1 KiB.
	evs := eventsOf("web", "000001", "host_failed", at, "e", 2000)
	for _, e := range evs {
		e.Message += strings.Repeat("z", 1024)
	}
	r := &v1.Rollout{Id: "000001", Service: "web", ToVersion: "v1"}
	decision, last, err := s.WriteRollout(ctx, nil, r, RolloutBase{}, nil, 0, evs...)
	if err != nil {
		t.Fatal(err)
	}
	if last <= decision {
		t.Errorf("2 MiB of events: decision %d, last %d: want further transactions", decision, last)
	}
	resp, err := s.c.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	perTxn := map[int64]int{}
	for _, kv := range resp.Kvs {
		perTxn[kv.ModRevision] += len(kv.Key) + len(kv.Value)
	}
	for rev, n := range perTxn {
		if n > MaxTxnBytes {
			t.Errorf("transaction at %d put %d bytes, over MaxTxnBytes (%d)", rev, n, MaxTxnBytes)
		}
	}
	got, _, err := s.ListEvents(ctx, "web", "000001", listAll)
	if err != nil || len(got) != len(evs) {
		t.Fatalf("%d events listed (%v), want %d", len(got), err, len(evs))
	}
	for i := range got {
		if got[i].GetMessage() != evs[i].GetMessage() {
			t.Fatalf("event %d: %.10s, want %.10s", i, got[i].GetMessage(), evs[i].GetMessage())
		}
	}
}

// A listing page is bounded in events and bytes well within what the etcd
// client receives in one response (DialTLS: 64 MiB).
func TestEventPageBounded(t *testing.T) {
	if b := eventPageKeys * maxBatchBytes; b > 32<<20 {
		t.Errorf("a page of events can hold %d bytes, over 32 MiB", b)
	}
	if n := eventPageKeys * maxBatchEvents; n > 256000 {
		t.Errorf("a page of events can hold %d events, over 256,000", n)
	}
}

// BenchmarkWriteRolloutStep writes a 5,000-host step of a 10,000-host
// split rollout (5,000 host_done and 5,000 host_assigned events; the
// 10 parts of the second wave's hosts) in each event layout, against the embedded
// etcd: one key per event takes the decision's transaction and 99 more;
// batches take one.
func BenchmarkWriteRolloutStep(b *testing.B) {
	for _, layout := range []EventLayout{EventPerKey, EventBatches} {
		b.Run(strings.ReplaceAll(layout.String(), " ", "-"), func(b *testing.B) {
			emb, err := StartEmbedded(b.TempDir(), zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			defer emb.Close()
			c, err := emb.Dial()
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			s := New(c)
			s.SetEventLayout(func() EventLayout { return layout })
			ctx := context.Background()
			r := testRollout("000001", 5000, 5000)
			rev, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{Layout: Split}, nil, 0)
			if err != nil {
				b.Fatal(err)
			}
			at := time.Unix(1700000000, 0)
			b.ResetTimer()
			for i := range b.N {
				next := proto.Clone(r).(*v1.Rollout)
				for _, h := range next.GetWaves()[1].GetHosts() {
					h.Phase = v1.Phase(1 + (i+1)%8)
				}
				at = at.Add(time.Second)
				evs := append(eventsOf("web", "000001", "host_done", at, "d", 5000), eventsOf("web", "000001", "host_assigned", at, "a", 5000)...)
				rev, _, err = s.WriteRollout(ctx, nil, next, RolloutBase{Rollout: r, Rev: rev, Layout: Split}, nil, 0, evs...)
				if err != nil {
					b.Fatal(err)
				}
				r = next
			}
		})
	}
}

// Two writes of events with the same time and index, from one store (two
// decisions in one nanosecond on a coarse clock) or from two (two
// coordinators), keep every event: the keys name the write. One store's
// writes of one nanosecond list in the order written. In either layout.
func TestEventKeysUniquePerWrite(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	other := New(s.c) // a second coordinator's store
	at := time.Unix(1700000000, 0)
	for _, layout := range []EventLayout{EventPerKey, EventBatches} {
		svc := "web" + strings.ReplaceAll(layout.String(), " ", "")
		s.SetEventLayout(func() EventLayout { return layout })
		other.SetEventLayout(func() EventLayout { return layout })
		for _, w := range []struct {
			st  *Store
			tag string
		}{{s, "a"}, {s, "b"}, {other, "c"}, {s, "d"}} {
			if err := w.st.PutEvents(ctx, eventsOf(svc, "000001", "k", at, w.tag, 2)...); err != nil {
				t.Fatal(err)
			}
		}
		got, _, err := s.ListEvents(ctx, svc, "000001", listAll)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []string
		for _, e := range got {
			msgs = append(msgs, e.GetMessage())
		}
		if len(msgs) != 8 {
			t.Fatalf("%s: %d events listed, want the 8 written: %v", layout, len(msgs), msgs)
		}
		var mine []string
		for _, m := range msgs {
			if !strings.HasPrefix(m, "c-") {
				mine = append(mine, m)
			}
		}
		if want := "a-0 a-1 b-0 b-1 d-0 d-1"; strings.Join(mine, " ") != want {
			t.Errorf("%s: one store's writes of one nanosecond listed as %v, want %s", layout, mine, want)
		}
		since, _, err := listSince(ctx, s, EventsPrefixFor(svc, ""), 0)
		if err != nil || len(since) != 8 {
			t.Fatalf("%s: EventsSince: %d events (%v), want 8", layout, len(since), err)
		}
	}
}

// Keys written by older versions (<time>-<index, six digits>) still list,
// in time order among the new ones, through ListEvents and EventsSince,
// and prune by rollout id.
func TestEventKeysOfOlderVersionsList(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := time.Unix(1700000000, 0)
	oldKey := func(e *v1.Event, n int) string {
		return fmt.Sprintf("%sweb/000001/%020d-%06d", EventsPrefix, e.GetAt().AsTime().UnixNano(), n)
	}
	old1 := eventsOf("web", "000001", "k", base, "o1", 2)
	old3 := eventsOf("web", "000001", "k", base.Add(2*time.Second), "o3", 1)
	for i, e := range append(old1, old3...) {
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.c.Put(ctx, oldKey(e, i%2), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutEvents(ctx, eventsOf("web", "000001", "k", base.Add(time.Second), "n2", 2)...); err != nil {
		t.Fatal(err)
	}
	want := "o1-0 o1-1 n2-0 n2-1 o3-0"
	got, _, err := s.ListEvents(ctx, "web", "000001", listAll)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, e := range got {
		msgs = append(msgs, e.GetMessage())
	}
	if strings.Join(msgs, " ") != want {
		t.Errorf("listed %v, want %s", msgs, want)
	}
	since, _, err := listSince(ctx, s, EventsPrefixFor("web", ""), 0)
	if err != nil || len(since) != 5 {
		t.Fatalf("EventsSince: %d events (%v), want 5", len(since), err)
	}
	if n, err := s.PruneEvents(ctx, nil, "web", "000002"); err != nil || n != 5 {
		t.Fatalf("pruned %d keys (%v), want 5", n, err)
	}
}

// A record that does not decode is skipped, the same way, by ListEvents,
// EventsSince and WatchEvents: the others list; each skip is counted
// (UndecodableEvents) and logged with its key.
func TestUndecodableEventSkipped(t *testing.T) {
	s := startStore(t)
	var logBuf syncBuffer
	s.SetLogger(zerolog.New(&logBuf))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start, err := s.c.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1700000000, 0)
	if err := s.PutEvents(ctx, eventsOf("web", "000001", "k", at, "a", 1)...); err != nil {
		t.Fatal(err)
	}
	bad := fmt.Sprintf("%sweb/000001/%020d-%06d", EventsPrefix, at.Add(time.Second).UnixNano(), 0)
	if _, err := s.c.Put(ctx, bad, "\xff\xff\xff"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutEvents(ctx, eventsOf("web", "000001", "k", at.Add(2*time.Second), "b", 1)...); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.ListEvents(ctx, "web", "000001", listAll)
	if err != nil || len(got) != 2 || got[0].GetMessage() != "a-0" || got[1].GetMessage() != "b-0" {
		t.Fatalf("ListEvents past a bad record: %v (%v), want a-0 and b-0", got, err)
	}
	if n := s.UndecodableEvents(); n != 1 {
		t.Errorf("after ListEvents: %d undecodable records counted, want 1", n)
	}
	since, _, err := listSince(ctx, s, EventsPrefixFor("web", ""), 0)
	if err != nil || len(since) != 2 {
		t.Fatalf("EventsSince past a bad record: %d events (%v), want 2", len(since), err)
	}
	if n := s.UndecodableEvents(); n != 2 {
		t.Errorf("after EventsSince: %d undecodable records counted, want 2", n)
	}
	var watched []string
	err = s.WatchEvents(ctx, EventsPrefixFor("web", ""), start.Header.Revision+1, func(e RevEvent) error {
		watched = append(watched, e.Event.GetMessage())
		if len(watched) == 2 {
			return errStopWatch
		}
		return nil
	})
	if !errors.Is(err, errStopWatch) || strings.Join(watched, " ") != "a-0 b-0" {
		t.Fatalf("WatchEvents past a bad record: %v (%v), want a-0 b-0", watched, err)
	}
	if n := s.UndecodableEvents(); n != 3 {
		t.Errorf("after WatchEvents: %d undecodable records counted, want 3", n)
	}
	if l := logBuf.String(); strings.Count(l, `"key":"`+bad+`"`) != 3 {
		t.Errorf("log does not name the bad key three times: %s", l)
	}
}

var errStopWatch = errors.New("stop watching")

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// PutAudit takes a sequence of 0 to MaxAuditSeq (six digits, which sort
// by number) and refuses one beyond, naming it, writing nothing.
func TestPutAuditSequenceBounded(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Unix(1700000000, 0)
	for _, n := range []int{0, MaxAuditSeq} {
		if err := s.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.New(at), Method: fmt.Sprint(n)}, n); err != nil {
			t.Fatalf("sequence %d: %v", n, err)
		}
	}
	for _, n := range []int{-1, MaxAuditSeq + 1} {
		err := s.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.New(at), Method: "bad"}, n)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("sequence %d", n)) {
			t.Errorf("sequence %d: %v, want an error naming it", n, err)
		}
	}
	got, err := s.ListAudit(ctx, 10)
	if err != nil || len(got) != 2 || got[0].GetMethod() != "0" || got[1].GetMethod() != fmt.Sprint(MaxAuditSeq) {
		t.Fatalf("audit log: %v (%v), want the entries of 0 and %d in order", got, err, MaxAuditSeq)
	}
}

// Two coordinators count their audit sequences apart: entries of the same
// nanosecond and sequence are both kept (the second under the next free
// sequence), and none is written over.
func TestPutAuditKeepsEntriesOfTheSameKey(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Unix(1700000000, 0)
	for _, c := range []string{"coord-a", "coord-b", "coord-c"} {
		if err := s.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.New(at), Method: "Create", Coordinator: c}, 7); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
	got, err := s.ListAudit(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range got {
		names = append(names, e.GetCoordinator())
	}
	if strings.Join(names, ",") != "coord-a,coord-b,coord-c" {
		t.Fatalf("audit log: %v, want the entries of coord-a, coord-b and coord-c in order", names)
	}
	// Every key of the bound taken: an error naming the method, nothing
	// written over.
	for n := 0; n < auditPutAttempts; n++ {
		if err := s.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.New(at.Add(time.Second)), Method: "Fill", Actor: fmt.Sprint(n)}, n); err != nil {
			t.Fatalf("fill %d: %v", n, err)
		}
	}
	err = s.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.New(at.Add(time.Second)), Method: "Late"}, 0)
	if err == nil || !strings.Contains(err.Error(), "audit Late: keys "+AuditPrefix) || !strings.Contains(err.Error(), "-000000 and the 15 sequences after it all taken") {
		t.Fatalf("every key taken: %v, want an error naming the method", err)
	}
	got, err = s.ListAudit(ctx, 100)
	if err != nil || len(got) != 3+auditPutAttempts {
		t.Fatalf("audit log after the refused entry: %d entries (%v), want %d", len(got), err, 3+auditPutAttempts)
	}
	for i, e := range got[3:] {
		if e.GetMethod() != "Fill" || e.GetActor() != fmt.Sprint(i) {
			t.Errorf("entry %d: %s by %q, want Fill by %q: nothing written over", 3+i, e.GetMethod(), e.GetActor(), fmt.Sprint(i))
		}
	}
}

// listSince collects what EventsSince gives.
func listSince(ctx context.Context, s *Store, prefix string, since int64) ([]RevEvent, int64, error) {
	var out []RevEvent
	at, err := s.EventsSince(ctx, prefix, since, func(e RevEvent) error {
		out = append(out, e)
		return nil
	})
	return out, at, err
}

// EventsSince holds a bounded part of the log at once: with passes of a
// few keys and values read two at a time, events of several services
// written interleaved (revisions out of key order, batches, one write in
// several transactions) come exactly as from one unbounded listing: every
// event after since once, ordered by revision then key. A pass keeps whole
// revisions, and its bound is more than a transaction writes.
func TestEventsSinceBounded(t *testing.T) {
	if eventsSinceKeys <= MaxMaxTxnOps {
		t.Fatalf("eventsSinceKeys %d: not over MaxMaxTxnOps %d, a revision might not fit in a pass", eventsSinceKeys, MaxMaxTxnOps)
	}
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := time.Unix(1700000000, 0)
	layout := EventPerKey
	s.SetEventLayout(func() EventLayout { return layout })
	// Written newest-first in time for svc "b", so key order and revision
	// order differ; some writes put several keys at one revision.
	var want []string
	for i := range 12 {
		svc := []string{"a", "b", "c"}[i%3]
		at := base.Add(time.Duration(i) * time.Second)
		if svc == "b" {
			at = base.Add(-time.Duration(i) * time.Second)
		}
		n := 1 + i%4
		if i == 7 {
			layout = EventBatches
		}
		evs := eventsOf(svc, "000001", "k", at, fmt.Sprintf("w%02d", i), n)
		if err := s.PutEvents(ctx, evs...); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			want = append(want, e.GetMessage())
		}
	}
	full, at, err := listSince(ctx, s, EventsPrefix, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range full {
		got = append(got, e.Event.GetMessage())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("unbounded listing %v, want the write order %v", got, want)
	}
	for _, since := range []int64{0, full[3].Rev, full[len(full)/2].Rev, at} {
		var wantSince []RevEvent
		for _, e := range full {
			if e.Rev > since {
				wantSince = append(wantSince, e)
			}
		}
		for _, bounds := range [][3]int{{4, 2, 0}, {5, 1, 0}, {6, 3, 0}, {1000, 256, 0}, {6, 3, 2}, {1000, 256, 5}} {
			s.keysPage = bounds[2] // key pages (0: eventKeysPage)
			var gotSince []RevEvent
			gotAt, err := s.eventsSince(ctx, EventsPrefix, since, bounds[0], bounds[1], func(e RevEvent) error {
				gotSince = append(gotSince, e)
				return nil
			})
			if err != nil || gotAt != at {
				t.Fatalf("since %d, bounds %v: at %d (%v), want %d", since, bounds, gotAt, err, at)
			}
			if len(gotSince) != len(wantSince) {
				t.Fatalf("since %d, bounds %v: %d events, want %d", since, bounds, len(gotSince), len(wantSince))
			}
			for i := range gotSince {
				if gotSince[i].Rev != wantSince[i].Rev || gotSince[i].Event.GetMessage() != wantSince[i].Event.GetMessage() {
					t.Fatalf("since %d, bounds %v: event %d %s@%d, want %s@%d", since, bounds, i,
						gotSince[i].Event.GetMessage(), gotSince[i].Rev, wantSince[i].Event.GetMessage(), wantSince[i].Rev)
				}
			}
		}
	}
	// A pass selects at most its bound of keys, whole revisions only.
	sel, through, _, err := s.selectEventKeys(ctx, EventsPrefix, 0, 0, 5)
	if err != nil || len(sel) == 0 || len(sel) > 5 {
		t.Fatalf("a pass of 5 keys selected %d (%v)", len(sel), err)
	}
	for _, k := range sel {
		if k.rev > through {
			t.Errorf("key %s at %d past the pass's revision %d", k.key, k.rev, through)
		}
	}
	all, _, _, err := s.selectEventKeys(ctx, EventsPrefix, 0, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range all {
		if k.rev <= through {
			n++
		}
	}
	if n != len(sel) {
		t.Errorf("a pass up to revision %d selected %d keys, there are %d", through, len(sel), n)
	}
	// A revision with more keys than a pass holds (no writer of ours
	// makes one; another etcd client might) is listed whole, by itself, in
	// key order, with the revisions around it: not an error, which ended
	// every listing from before it and had a follower retry for ever.
	layout = EventPerKey
	var wantD []string
	for i, n := range []int{2, 8, 3, 7} {
		evs := eventsOf("d", "000001", "k", base.Add(time.Duration(i)*time.Second), fmt.Sprintf("d%d", i), n)
		if err := s.PutEvents(ctx, evs...); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			wantD = append(wantD, e.GetMessage())
		}
	}
	fullD, atD, err := listSince(ctx, s, EventsPrefixFor("d", ""), 0)
	if err != nil || len(fullD) != len(wantD) {
		t.Fatalf("revisions of 2, 8, 3, 7 keys: %d events (%v), want %d", len(fullD), err, len(wantD))
	}
	for _, since := range []int64{0, fullD[0].Rev, fullD[2].Rev, fullD[len(fullD)-1].Rev} {
		var wantSince []RevEvent
		for _, e := range fullD {
			if e.Rev > since {
				wantSince = append(wantSince, e)
			}
		}
		var got []RevEvent
		gotAt, err := s.eventsSince(ctx, EventsPrefixFor("d", ""), since, 5, 2, func(e RevEvent) error {
			got = append(got, e)
			return nil
		})
		if err != nil || gotAt != atD || len(got) != len(wantSince) {
			t.Fatalf("since %d, passes of 5: %d events at %d (%v), want %d at %d", since, len(got), gotAt, err, len(wantSince), atD)
		}
		for i := range got {
			if got[i].Rev != wantSince[i].Rev || got[i].Event.GetMessage() != wantSince[i].Event.GetMessage() {
				t.Fatalf("since %d, passes of 5: event %d %s@%d, want %s@%d", since, i, got[i].Event.GetMessage(), got[i].Rev, wantSince[i].Event.GetMessage(), wantSince[i].Rev)
			}
		}
	}
	// fn's error ends the listing.
	stop := errors.New("stop")
	calls := 0
	if _, err := s.EventsSince(ctx, EventsPrefix, 0, func(RevEvent) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("fn failing: %v after %d calls", err, calls)
	}
}

// BenchmarkEventsSince lists 20,000 events stored one per key (the layout
// that makes the most keys: 200 writes of 100), from the start and from
// the last write's revision (a follower resuming), against the embedded
// etcd.
func BenchmarkEventsSince(b *testing.B) {
	s := startStore(b)
	ctx := context.Background()
	at := time.Unix(1700000000, 0)
	var last int64
	for i := range 200 {
		if err := s.PutEvents(ctx, eventsOf("web", "000001", "k", at.Add(time.Duration(i)*time.Second), "e", 100)...); err != nil {
			b.Fatal(err)
		}
	}
	resp, err := s.c.Get(ctx, "x")
	if err != nil {
		b.Fatal(err)
	}
	last = resp.Header.Revision - 1
	for _, bc := range []struct {
		name  string
		since int64
		want  int
	}{{"all", 0, 20000}, {"resume", last, 100}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				n := 0
				if _, err := s.EventsSince(ctx, EventsPrefix, bc.since, func(RevEvent) error { n++; return nil }); err != nil || n != bc.want {
					b.Fatalf("%d events (%v), want %d", n, err, bc.want)
				}
			}
		})
	}
}

// One write's events come in the same order from EventsSince and from
// WatchEvents, whatever order the write put them in: a follower that broke
// inside a revision (the CLI's --follow, the dashboard's live page) asks
// again from the revision before and skips as many of that revision's
// events as it printed, which is right only if the order is the same. A
// relabelled host's events for services "web" then "web-api" (the order of
// their names, remove.go) have keys in the other order ("web-api/" sorts
// before "web/"); so do a write's events of two rollouts put newer first.
func TestEventsSameOrderListedAndWatched(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start, err := s.c.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		watched []string
	)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wdone := make(chan error, 1)
	go func() {
		wdone <- s.WatchEvents(wctx, EventsPrefix, start.Header.Revision+1, func(e RevEvent) error {
			mu.Lock()
			defer mu.Unlock()
			watched = append(watched, e.Event.GetMessage())
			return nil
		})
	}()
	base := time.Unix(1700000000, 0)
	for _, layout := range []EventLayout{EventPerKey, EventBatches} {
		s.SetEventLayout(func() EventLayout { return layout })
		relabel := append(eventsOf("web", "000003", "host_joined", base, "web", 1), eventsOf("web-api", "000001", "host_joined", base.Add(1), "api", 1)...)
		if err := s.PutEvents(ctx, relabel...); err != nil {
			t.Fatal(err)
		}
		rollouts := append(eventsOf("db", "000002", "k", base, "r2", 2), eventsOf("db", "000001", "k", base, "r1", 2)...)
		if err := s.PutEvents(ctx, rollouts...); err != nil {
			t.Fatal(err)
		}
	}
	listed, _, err := listSince(ctx, s, EventsPrefix, start.Header.Revision)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range listed {
		want = append(want, e.Event.GetMessage())
	}
	if len(want) != 12 {
		t.Fatalf("listed %v, want 12 events", want)
	}
	testkit.EventuallyErr(t, 30*time.Second, "every event watched", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(watched) < len(want) {
			return fmt.Errorf("%d of %d events watched", len(watched), len(want))
		}
		return nil
	})
	wcancel()
	<-wdone
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(watched, " ") != strings.Join(want, " ") {
		t.Fatalf("watched %v, listed %v: a follower resuming inside a revision would print one twice and miss another", watched, want)
	}
}

// ListEvents returns the newest limit events, oldest first, and says
// whether older ones were left out: across pages of keys (one event per
// key, more keys than a page), and inside a batch (the batch's newest
// events only).
func TestListEventsNewestWithinLimit(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s.SetEventLayout(func() EventLayout { return EventPerKey })
	at := time.Unix(1700000000, 0)
	const single = 3*eventListPageKeys + 5
	var all []*v1.Event
	for i := range single {
		e := eventsOf("web", "000001", "host_done", at.Add(time.Duration(i)*time.Second), fmt.Sprintf("single-%d", i), 1)[0]
		if err := s.PutEvents(ctx, e); err != nil {
			t.Fatal(err)
		}
		all = append(all, e)
	}
	s.SetEventLayout(func() EventLayout { return EventBatches })
	batched := eventsOf("web", "000002", "host_assigned", at.Add(time.Hour), "batched", 2500)
	if err := s.PutEvents(ctx, batched...); err != nil {
		t.Fatal(err)
	}
	all = append(all, batched...)
	messages := func(evs []*v1.Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.GetMessage())
		}
		return out
	}
	for _, keysPage := range []int{0, 7} { // eventKeysPage, and pages of 7 keys
		s.keysPage = keysPage
		listEventsCases(t, ctx, s, single, all, batched, messages)
	}
	if _, _, err := s.ListEvents(ctx, "web", "", 0); err == nil || !strings.Contains(err.Error(), "limit 0") {
		t.Errorf("limit 0: %v, want an error naming it", err)
	}
}

// listEventsCases checks ListEvents over the events of
// TestListEventsNewestWithinLimit (the store's key pages as set).
func listEventsCases(t *testing.T, ctx context.Context, s *Store, single int, all, batched []*v1.Event, messages func([]*v1.Event) []string) {
	t.Helper()
	for _, c := range []struct {
		rollout string
		limit   int
		want    []*v1.Event
		trunc   bool
	}{
		{"000001", single, all[:single], false},
		{"000001", single + 1, all[:single], false},
		{"000001", single - 1, all[1:single], true},
		{"000001", eventListPageKeys + 1, all[single-eventListPageKeys-1 : single], true},
		{"000001", 1, all[single-1 : single], true},
		{"000001", eventListPageKeys, all[single-eventListPageKeys : single], true},
		{"000002", 1500, batched[1000:], true},
		{"000002", 2000, batched[500:], true},
		{"000002", 2500, batched, false},
		{"", len(all), all, false},
		{"", 2600, all[len(all)-2600:], true},
	} {
		got, trunc, err := s.ListEvents(ctx, "web", c.rollout, c.limit)
		if err != nil {
			t.Fatalf("rollout %q limit %d: %v", c.rollout, c.limit, err)
		}
		if g, w := messages(got), messages(c.want); !slices.Equal(g, w) || trunc != c.trunc {
			t.Errorf("key pages %d, rollout %q limit %d: %d events (truncated %v), want %d (truncated %v); first %v, want %v", s.keysPage, c.rollout, c.limit, len(g), trunc, len(w), c.trunc, g[:min(1, len(g))], w[:min(1, len(w))])
		}
	}
}

// BenchmarkListEvents lists the newest 1,000 of a rollout's 20,000 events
// written one per key (the older layout, and writes of one event): the
// keys are read in ascending pages, values only of the newest 1,000 keys.
func BenchmarkListEvents(b *testing.B) {
	s := startStore(b)
	s.SetEventLayout(func() EventLayout { return EventPerKey })
	ctx := context.Background()
	at := time.Unix(1700000000, 0)
	const total = 20000
	for i := 0; i < total; i += 100 {
		evs := eventsOf("web", "000001", "host_done", at.Add(time.Duration(i)*time.Second), fmt.Sprint(i), 100)
		if err := s.PutEvents(ctx, evs...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		evs, truncated, err := s.ListEvents(ctx, "web", "000001", 1000)
		if err != nil || len(evs) != 1000 || !truncated {
			b.Fatalf("%d events (truncated %v): %v", len(evs), truncated, err)
		}
	}
}
