package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// putAuditRaw writes audit entries of the given times (Unix nanoseconds)
// and sequences straight to etcd, 128 to a transaction; each entry's
// method is its index in ts.
func putAuditRaw(t testing.TB, s *Store, ts []int64, seqs []int) {
	t.Helper()
	ctx := context.Background()
	ops := make([]clientv3.Op, 0, 128)
	for i, at := range ts {
		b, err := proto.Marshal(&v1.AuditEntry{At: timestamppb.New(time.Unix(0, at)), Method: fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(auditKey(at, seqs[i]), string(b)))
		if len(ops) == cap(ops) || i == len(ts)-1 {
			if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
}

// TestListAuditNewest: ListAudit gives exactly the newest limit entries in
// key order, whatever their times: spread over days, a burst of one
// nanosecond (told apart by sequence), entries dated after now (another
// coordinator's clock ahead), fewer entries than the limit.
func TestListAuditNewest(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now().UnixNano()
	var ts []int64
	var seqs []int
	add := func(at int64, n int) { ts, seqs = append(ts, at), append(seqs, n) }
	for i := range 600 { // one every 7 minutes, the oldest three days ago
		add(now-int64(72*time.Hour)+int64(i)*int64(7*time.Minute), 0)
	}
	burst := now - int64(90*time.Second)
	for n := range 700 { // one nanosecond
		add(burst, n)
	}
	for i := range 50 { // the last minute, a second apart
		add(now-int64(time.Minute)+int64(i)*int64(time.Second), 3)
	}
	for i := range 40 { // up to an hour ahead
		add(now+int64(i+1)*int64(90*time.Second), 0)
	}
	putAuditRaw(t, s, ts, seqs)
	// The expected order is the keys' order.
	idx := make([]int, len(ts))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return strings.Compare(auditKey(ts[a], seqs[a]), auditKey(ts[b], seqs[b])) })
	for _, limit := range []int{1, 10, 39, 40, 41, 89, 90, 91, 100, 500, 789, 790, 791, 1000, len(ts) - 1, len(ts), len(ts) + 5, 10000} {
		got, err := s.ListAudit(ctx, limit)
		if err != nil {
			t.Fatalf("limit %d: %v", limit, err)
		}
		want := idx[max(0, len(idx)-limit):]
		if len(got) != len(want) {
			t.Fatalf("limit %d: %d entries, want %d", limit, len(got), len(want))
		}
		for i, e := range got {
			if e.GetMethod() != fmt.Sprint(want[i]) {
				t.Fatalf("limit %d: entry %d is %s, want %d (the newest %d in key order)", limit, i, e.GetMethod(), want[i], limit)
			}
		}
	}
	if _, err := s.ListAudit(ctx, 0); err == nil || !strings.Contains(err.Error(), "limit 0") {
		t.Fatalf("limit 0: %v, want an error naming it", err)
	}
}

// TestAuditFromBounded: the search's counts are few and what it reads is
// at most an eighth (and 16) over the limit, for logs of 100,000 entries
// at several rates, a log whose newest entry is a year old and one whose
// entries all share a nanosecond. count is answered from a sorted slice of
// keys, as etcd would.
func TestAuditFromBounded(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC).UnixNano()
	for _, tc := range []struct {
		name string
		keys func() []string
	}{
		{"one a millisecond", func() []string { return spaced(100000, now, int64(time.Millisecond)) }},
		{"one a minute", func() []string { return spaced(100000, now, int64(time.Minute)) }},
		{"newest a year old", func() []string { return spaced(100000, now-int64(365*24*time.Hour), int64(time.Second)) }},
		{"one nanosecond", func() []string {
			var k []string
			for n := range 100000 {
				k = append(k, auditKey(now-5, n))
			}
			return k
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := tc.keys()
			slices.Sort(keys)
			for _, limit := range []int64{1, 100, 1000, 10000} {
				calls := 0
				count := func(from string) (int64, error) {
					calls++
					i, _ := slices.BinarySearch(keys, from)
					return int64(len(keys) - i), nil
				}
				from, err := auditFrom(count, limit, now)
				if err != nil {
					t.Fatal(err)
				}
				read, _ := count(from)
				calls--
				if read < limit || read > limit+auditSlack(limit) {
					t.Errorf("limit %d: reads %d entries from %s, want %d to %d", limit, read, from, limit, limit+auditSlack(limit))
				}
				if calls > 64 {
					t.Errorf("limit %d: %d counts", limit, calls)
				}
				t.Logf("limit %d: %d counts, reads %d", limit, calls, read)
			}
		})
	}
}

// spaced is n audit keys, the newest at newest, step nanoseconds apart.
func spaced(n int, newest, step int64) []string {
	k := make([]string, n)
	for i := range k {
		k[i] = auditKey(newest-int64(n-1-i)*step, 0)
	}
	return k
}

// BenchmarkListAudit: the newest 100 (the CLI's and API's default) and
// 1,000 (the dashboard's) of 100,000 audit entries (AuditMaxEntries'
// default), one a second.
//
//	go test -run '^$' -bench BenchmarkListAudit -benchtime 5x ./coordinator/store
func BenchmarkListAudit(b *testing.B) {
	s := startStore(b)
	now := time.Now().UnixNano()
	const total = 100000
	ts, seqs := make([]int64, total), make([]int, total)
	for i := range ts {
		ts[i] = now - int64(total-i)*int64(time.Second)
	}
	putAuditRaw(b, s, ts, seqs)
	for _, limit := range []int{100, 1000} {
		b.Run(fmt.Sprint(limit), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				got, err := s.ListAudit(context.Background(), limit)
				if err != nil || len(got) != limit || got[limit-1].GetMethod() != fmt.Sprint(total-1) {
					b.Fatalf("%d entries: %v", len(got), err)
				}
			}
		})
	}
}
