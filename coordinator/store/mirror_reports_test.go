package store

import (
	"slices"
	"testing"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// mirrorApply applies a watch event of key to m: a put of msg, or a
// delete.
func mirrorApply(t *testing.T, m *Mirror, typ mvccpb.Event_EventType, key string, msg proto.Message) {
	t.Helper()
	kv := &mvccpb.KeyValue{Key: []byte(key)}
	if typ == mvccpb.PUT {
		b, err := proto.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		kv.Value = b
	}
	m.mu.Lock()
	m.applyLocked(typ, kv)
	m.mu.Unlock()
}

// TestMirrorReportsSortedSlice checks the mirror's compact per-host report
// list (a sorted slice, not a map): puts in any order, replacing, deleting
// the first, middle and last, and a host with none left.
func TestMirrorReportsSortedSlice(t *testing.T) {
	m := NewMirror(nil, zerolog.Nop())
	apply := func(typ mvccpb.Event_EventType, host, svc string, gen int64) {
		t.Helper()
		mirrorApply(t, m, typ, ReportKey(host, svc), &v1.ServiceReport{Service: svc, Generation: gen})
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

// TestMirrorTokenBySecretHash: the mirror finds a token by its secret's
// hash through an index kept with every put and delete (a token's secret
// replaced, a token deleted, a value that does not decode leaving the
// token as it was).
func TestMirrorTokenBySecretHash(t *testing.T) {
	m := NewMirror(nil, zerolog.Nop())
	apply := func(typ mvccpb.Event_EventType, id, secret string) {
		t.Helper()
		mirrorApply(t, m, typ, TokensPrefix+id, &v1.Token{Id: id, SecretSha256: secret})
	}
	find := func(secret string) string {
		v, ok := m.TokenBySecretHash(secret)
		if !ok {
			return ""
		}
		return v.Val.GetId()
	}
	apply(mvccpb.PUT, "a", "h1")
	apply(mvccpb.PUT, "b", "h2")
	if find("h1") != "a" || find("h2") != "b" || find("h3") != "" {
		t.Fatalf("h1 %q h2 %q h3 %q, want a, b, none", find("h1"), find("h2"), find("h3"))
	}
	apply(mvccpb.PUT, "a", "h3")
	if find("h1") != "" || find("h3") != "a" {
		t.Fatalf("after a's secret changed: h1 %q h3 %q, want none, a", find("h1"), find("h3"))
	}
	m.mu.Lock()
	m.applyLocked(mvccpb.PUT, &mvccpb.KeyValue{Key: []byte(TokensPrefix + "b"), Value: []byte{0xff}})
	m.mu.Unlock()
	if find("h2") != "b" {
		t.Fatalf("after an undecodable value for b: h2 %q, want b as it was", find("h2"))
	}
	apply(mvccpb.DELETE, "b", "")
	if find("h2") != "" || find("h3") != "a" {
		t.Fatalf("after b deleted: h2 %q h3 %q, want none, a", find("h2"), find("h3"))
	}
}
