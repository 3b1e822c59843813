package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/etcdtest"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// startDefaultEtcd runs an etcd with etcd's own defaults (--max-txn-ops
// 128), as an operator's cluster would be, and returns a store on it.
func startDefaultEtcd(t *testing.T) *Store {
	t.Helper()
	c, err := Dial([]string{etcdtest.Start(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return New(c)
}

// The store takes etcd's --max-txn-ops as told, within bounds, and checks
// it against etcd: an etcd with the default 128 refuses a transaction of
// 1024 operations and the check says so, before any batch would fail.
func TestMaxTxnOpsCheckedAgainstEtcd(t *testing.T) {
	s := startDefaultEtcd(t)
	ctx := context.Background()
	for _, n := range []int{0, 127, MaxMaxTxnOps + 1} {
		if err := s.SetMaxTxnOps(n); err == nil || !strings.Contains(err.Error(), fmt.Sprint(n)) {
			t.Errorf("SetMaxTxnOps(%d): %v, want an error naming it", n, err)
		}
	}
	if s.Batch() != DefaultMaxTxnOps-txnHeadroom {
		t.Fatalf("a refused SetMaxTxnOps changed the batch to %d", s.Batch())
	}
	if err := s.CheckMaxTxnOps(ctx); err != nil {
		t.Fatalf("etcd's default (%d) refused: %v", DefaultMaxTxnOps, err)
	}
	if err := s.SetMaxTxnOps(EmbeddedMaxTxnOps); err != nil {
		t.Fatal(err)
	}
	err := s.CheckMaxTxnOps(ctx)
	if !errors.Is(err, rpctypes.ErrTooManyOps) || !strings.Contains(err.Error(), "1024 operations") {
		t.Fatalf("CheckMaxTxnOps(1024) on an etcd of 128: %v, want ErrTooManyOps naming 1024", err)
	}
}

// With the embedded etcd (room for MaxMaxTxnOps) a store told 1024 writes
// Batch reports in one transaction and a step's 1,050 events in two (the
// decision's and one more), where 128 took eleven.
func TestLargerTxnOpsBatches(t *testing.T) {
	s := startStore(t)
	kv := &testkit.TxnCounter{KV: s.c.KV}
	s.c.KV = kv
	ctx := context.Background()
	if err := s.SetMaxTxnOps(EmbeddedMaxTxnOps); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckMaxTxnOps(ctx); err != nil {
		t.Fatalf("the embedded etcd refused %d operations: %v", EmbeddedMaxTxnOps, err)
	}
	n := s.Batch()
	if n != EmbeddedMaxTxnOps-txnHeadroom {
		t.Fatalf("Batch %d, want %d", n, EmbeddedMaxTxnOps-txnHeadroom)
	}
	reps := make([]HostReport, n+1)
	for i := range reps {
		h := fmt.Sprintf("h%04d", i)
		if _, err := s.c.Put(ctx, HostKey(h), "x"); err != nil {
			t.Fatal(err)
		}
		reps[i] = HostReport{Host: h, Report: &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v1"}}
	}
	if _, err := s.PutReports(ctx, reps); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d in one batch, at most %d", n+1, n)) {
		t.Fatalf("PutReports of %d: %v, want refused", n+1, err)
	}
	before := kv.Txns()
	put, err := s.PutReports(ctx, reps[:n])
	if err != nil || put.Written != n {
		t.Fatalf("PutReports of %d: %d written, %v", n, put.Written, err)
	}
	if got := kv.Txns() - before; got != 1 {
		t.Fatalf("%d reports took %d transactions, want 1", n, got)
	}
	r := &v1.Rollout{Id: "000001", Service: "web", ToVersion: "v1"}
	now := time.Now()
	var evs []*v1.Event
	for i := range 1050 {
		evs = append(evs, &v1.Event{At: timestamppb.New(now), Service: "web", RolloutId: "000001", Kind: "host_assigned", Host: fmt.Sprintf("h%04d", i)})
	}
	before = kv.Txns()
	if _, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{}, nil, 0, evs...); err != nil {
		t.Fatal(err)
	}
	if got := kv.Txns() - before; got != 2 {
		t.Fatalf("a rollout write with %d events took %d transactions, want 2", len(evs), got)
	}
	got, _, err := s.ListEvents(ctx, "web", "000001", listAll)
	if err != nil || len(got) != len(evs) {
		t.Fatalf("%d events recorded (%v), want %d", len(got), err, len(evs))
	}
	for i, e := range got {
		if e.GetHost() != fmt.Sprintf("h%04d", i) {
			t.Fatalf("event %d is for %s", i, e.GetHost())
		}
	}
}

// One write's event keys sort in write order past 9,999 events (the
// index had four digits: "-10000" sorted before "-1001") and past 999,999
// (six digits: "-1000000" sorted before "-999999"), up to an int's most.
func TestEventKeysSortPastTenThousand(t *testing.T) {
	e := &v1.Event{At: timestamppb.New(time.Unix(1, 0)), Service: "web", RolloutId: "000001"}
	var ns []int
	for n := 0; n <= 20000; n++ {
		ns = append(ns, n)
	}
	ns = append(ns, 99999, 100000, 999998, 999999, 1000000, 1000001, 9999999, 10000000, math.MaxInt32, math.MaxInt-1, math.MaxInt)
	prev := EventKey(e, "w", ns[0])
	for i, n := range ns[1:] {
		k := EventKey(e, "w", n)
		if k <= prev {
			t.Fatalf("key %d %q sorts at or before key %d %q", n, k, ns[i], prev)
		}
		prev = k
	}
}

// BenchmarkPutReports writes a full batch of reports (Batch(): as many as
// the embedded etcd takes in one transaction), each guarded by its host's
// record, against the embedded etcd: the report writer's transaction in a
// wave's burst.
func BenchmarkPutReports(b *testing.B) {
	s := startStore(b)
	if err := s.SetMaxTxnOps(EmbeddedMaxTxnOps); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	reps := make([]HostReport, s.Batch())
	for i := range reps {
		h := fmt.Sprintf("host-%05d", i)
		if _, err := s.c.Put(ctx, HostKey(h), "x"); err != nil {
			b.Fatal(err)
		}
		reps[i] = HostReport{Host: h, Report: &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, Generation: 3, CurrentVersion: "v2", TargetVersion: "v2", LastGoodVersion: "v1", At: timestamppb.New(time.Unix(1700000000, 0))}}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		for _, r := range reps {
			r.Report.Phase = v1.Phase(1 + i%8)
		}
		put, err := s.PutReports(ctx, reps)
		if err != nil || put.Written != len(reps) || put.Txns != 1 {
			b.Fatalf("%d of %d written in %d transactions: %v", put.Written, len(reps), put.Txns, err)
		}
	}
	b.ReportMetric(float64(len(reps)), "reports/op")
}

// A batch with a report of a host without a record (removed while its
// report was queued) writes the others, and not that one: the batch's
// guard fails, the guarded retry writes what it may (two transactions);
// a batch of hosts with records takes one.
func TestPutReportsSkipsHostsWithoutRecord(t *testing.T) {
	s := startStore(t)
	kv := &testkit.TxnCounter{KV: s.c.KV}
	s.c.KV = kv
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, h := range []string{"h1", "h3"} {
		if err := s.PutHost(ctx, &v1.Host{Id: h}); err != nil {
			t.Fatal(err)
		}
	}
	var reps []HostReport
	for _, h := range []string{"h1", "h2", "h3"} {
		reps = append(reps, HostReport{Host: h, Report: &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v1"}})
	}
	before := kv.Txns()
	put, err := s.PutReports(ctx, reps)
	if err != nil || put.Written != 2 || put.Txns != 2 || kv.Txns()-before != 2 {
		t.Fatalf("PutReports: %+v (%v), %d transactions counted, want 2 written in 2", put, err, kv.Txns()-before)
	}
	for _, h := range []string{"h1", "h2", "h3"} {
		resp, err := s.c.Get(ctx, ReportKey(h, "web"))
		if err != nil {
			t.Fatal(err)
		}
		if want := h != "h2"; (len(resp.Kvs) == 1) != want {
			t.Errorf("%s's report stored: %v, want %v", h, len(resp.Kvs) == 1, want)
		} else if want && resp.Kvs[0].ModRevision != put.Rev {
			t.Errorf("%s's report at revision %d, PutReports said %d", h, resp.Kvs[0].ModRevision, put.Rev)
		}
	}
	// Every host with a record: one transaction, its revision returned.
	before = kv.Txns()
	put, err = s.PutReports(ctx, []HostReport{reps[0], reps[2]})
	if err != nil || put.Written != 2 || put.Txns != 1 || kv.Txns()-before != 1 {
		t.Fatalf("PutReports of two hosts with records: %+v (%v), %d transactions counted, want 2 written in 1", put, err, kv.Txns()-before)
	}
	resp, err := s.c.Get(ctx, ReportKey("h3", "web"))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != put.Rev {
		t.Fatalf("h3's report after the second batch: %v (%v), want it at revision %d", resp.Kvs, err, put.Rev)
	}
}
