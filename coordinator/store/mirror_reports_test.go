package store

import (
	"slices"
	"testing"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestMirrorReportsSortedSlice checks the mirror's compact per-host report
// list (a sorted slice, not a map): puts in any order, replacing, deleting
// the first, middle and last, and a host with none left.
func TestMirrorReportsSortedSlice(t *testing.T) {
	m := NewMirror(nil, zerolog.Nop())
	apply := func(typ mvccpb.Event_EventType, host, svc string, gen int64) {
		t.Helper()
		kv := &mvccpb.KeyValue{Key: []byte(ReportKey(host, svc))}
		if typ == mvccpb.PUT {
			b, err := proto.Marshal(&v1.ServiceReport{Service: svc, Generation: gen})
			if err != nil {
				t.Fatal(err)
			}
			kv.Value = b
		}
		m.mu.Lock()
		m.applyLocked(typ, kv)
		m.mu.Unlock()
	}
	list := func(host string) (out []string) {
		for _, r := range m.Reports(host) {
			out = append(out, r.GetService())
		}
		return out
	}
	for _, svc := range []string{"web", "api", "zeta", "db"} {
		apply(mvccpb.PUT, "h1", svc, 1)
	}
	apply(mvccpb.PUT, "h2", "web", 1)
	apply(mvccpb.PUT, "h1", "db", 7) // replaces
	if got, want := list("h1"), []string{"api", "db", "web", "zeta"}; !slices.Equal(got, want) {
		t.Fatalf("h1 reports %v, want %v", got, want)
	}
	if g := m.Report("h1", "db").GetGeneration(); g != 7 {
		t.Fatalf("h1/db generation %d, want 7 (replaced)", g)
	}
	if r := m.Report("h1", "nope"); r != nil {
		t.Fatalf("h1/nope: %v, want none", r)
	}
	apply(mvccpb.DELETE, "h1", "api", 0)
	apply(mvccpb.DELETE, "h1", "zeta", 0)
	apply(mvccpb.DELETE, "h1", "missing", 0) // no such report: nothing changes
	if got, want := list("h1"), []string{"db", "web"}; !slices.Equal(got, want) {
		t.Fatalf("h1 reports after deletes %v, want %v", got, want)
	}
	apply(mvccpb.DELETE, "h1", "db", 0)
	apply(mvccpb.DELETE, "h1", "web", 0)
	if got := list("h1"); len(got) != 0 {
		t.Fatalf("h1 reports %v, want none", got)
	}
	if _, ok := m.reports["h1"]; ok {
		t.Fatal("h1 still has an (empty) entry")
	}
	if got, want := list("h2"), []string{"web"}; !slices.Equal(got, want) {
		t.Fatalf("h2 reports %v, want %v", got, want)
	}
}
