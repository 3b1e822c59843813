package revocation

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

var t0 = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

func ident(id string, revoked, expires time.Time) *v1.Revocation {
	return &v1.Revocation{Identity: id, RevokedAt: timestamppb.New(revoked), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(expires)}
}

func serial(s string, revoked, expires time.Time) *v1.Revocation {
	return &v1.Revocation{Serial: s, RevokedAt: timestamppb.New(revoked), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(expires)}
}

func mustMerge(t *testing.T, s *Set, rev int64, rs ...*v1.Revocation) int {
	t.Helper()
	n, err := s.Merge(&v1.RevocationSet{Revision: rev, Revocations: rs}, t0)
	if err != nil {
		t.Fatalf("merge: %v", err)
	}
	return n
}

// A coordinator cannot narrow or withdraw what an agent holds: an older or
// earlier-expiring copy of an entry changes nothing, a later one widens it,
// and entries it leaves out stay.
func TestSetMergeNeverNarrows(t *testing.T) {
	s := NewSet(0, time.Time{})
	if n := mustMerge(t, s, 10, ident("agent:b", t0, t0.Add(48*time.Hour)), serial("abc", t0, t0.Add(time.Hour))); n != 2 {
		t.Fatalf("added %d, want 2", n)
	}
	// Narrower: revoked earlier, expiring earlier. Nothing changes.
	if n := mustMerge(t, s, 11, ident("agent:b", t0.Add(-time.Hour), t0.Add(time.Hour)), serial("abc", t0, t0.Add(time.Minute))); n != 0 {
		t.Fatalf("narrowing copies changed %d entries", n)
	}
	r, _ := s.RevokedIdentityAt("agent", "b")
	if !r.GetRevokedAt().AsTime().Equal(t0) || !r.GetExpiresAt().AsTime().Equal(t0.Add(48*time.Hour)) {
		t.Fatalf("agent:b narrowed to %v", r)
	}
	// An empty set from a coordinator withdraws nothing.
	mustMerge(t, s, 12)
	if s.Len() != 2 || s.Revision() != 12 {
		t.Fatalf("len %d revision %d, want 2 and 12", s.Len(), s.Revision())
	}
	// Wider: revoked later (covers more), expiring later.
	later := ident("agent:b", t0.Add(time.Hour), t0.Add(time.Hour))
	later.Reason = "again"
	if n := mustMerge(t, s, 13, later, serial("abc", t0, t0.Add(2*time.Hour))); n != 2 {
		t.Fatalf("widening copies changed %d entries, want 2", n)
	}
	r, _ = s.RevokedIdentityAt("agent", "b")
	if !r.GetRevokedAt().AsTime().Equal(t0.Add(time.Hour)) || !r.GetExpiresAt().AsTime().Equal(t0.Add(48*time.Hour)) || r.GetReason() != "again" {
		t.Fatalf("agent:b = %v, want revoked_at +1h, expires +48h (kept), reason again", r)
	}
	r, _ = s.RevokedSerial("abc")
	if !r.GetExpiresAt().AsTime().Equal(t0.Add(2 * time.Hour)) {
		t.Fatalf("serial abc expires %v, want +2h", r.GetExpiresAt().AsTime())
	}
}

// Every entry is validated on its own: a bad one is skipped with an error
// naming the field and value, the good ones of the same message merge, and
// what was held stays.
func TestSetMergeValidates(t *testing.T) {
	s := NewSet(0, time.Time{})
	mustMerge(t, s, 1, ident("agent:held", t0, t0.Add(time.Hour)))
	exp := t0.Add(time.Hour)
	long := ident("agent:x", t0, exp)
	long.Reason = strings.Repeat("r", MaxEntryBytes)
	cases := []struct {
		r    *v1.Revocation
		want string
	}{
		{&v1.Revocation{RevokedAt: timestamppb.New(t0), ExpiresAt: timestamppb.New(exp)}, "want exactly one"},
		{&v1.Revocation{Serial: "ab", Identity: "agent:x", RevokedAt: timestamppb.New(t0), ExpiresAt: timestamppb.New(exp)}, "want exactly one"},
		{serial("xyz", t0, exp), `revocation.serial: serial "xyz"`},
		{serial("00AB", t0, exp), `revocation.serial "00AB": not canonical`},
		{ident("robot:x", t0, exp), "revocation.identity"},
		{ident("agent:", t0, exp), "revocation.identity"},
		{&v1.Revocation{Identity: "agent:y", ExpiresAt: timestamppb.New(exp)}, "revocation identity/agent/y: revoked_at"},
		{&v1.Revocation{Identity: "agent:y", RevokedAt: timestamppb.New(t0)}, "revocation identity/agent/y: expires_at"},
		{&v1.Revocation{Identity: "agent:y", RevokedAt: &timestamppb.Timestamp{Seconds: 1, Nanos: -5}, ExpiresAt: timestamppb.New(exp)}, "revoked_at"},
		{long, "bytes, over 1024"},
	}
	for _, c := range cases {
		err := Validate(c.r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%v) = %v, want %q", c.r, err, c.want)
		}
	}
	in := []*v1.Revocation{ident("agent:good", t0, exp)}
	for _, c := range cases {
		in = append(in, c.r)
	}
	n, err := s.Merge(&v1.RevocationSet{Revision: 2, Revocations: in}, t0)
	if n != 1 || err == nil || !strings.Contains(err.Error(), "revocations[1]") {
		t.Fatalf("merge = %d, %v; want 1 and an error naming revocations[1]", n, err)
	}
	for _, id := range []string{"held", "good"} {
		if _, ok := s.RevokedIdentityAt("agent", id); !ok {
			t.Errorf("agent:%s missing after a merge with bad entries", id)
		}
	}
	if s.Len() != 2 {
		t.Fatalf("len %d, want 2", s.Len())
	}
}

// At its maximum the set takes no new entry (it never evicts one: that
// would withdraw it) but still widens the ones it holds; pruning makes room.
func TestSetBounds(t *testing.T) {
	s := NewSet(3, time.Time{})
	var in []*v1.Revocation
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		in = append(in, ident("agent:"+id, t0, t0.Add(time.Hour)))
	}
	in[0].ExpiresAt = timestamppb.New(t0.Add(time.Minute))
	n, err := s.Merge(&v1.RevocationSet{Revocations: in, Revision: 7}, t0)
	if n != 3 || !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "2 new revocations skipped") {
		t.Fatalf("merge = %d, %v; want 3 and ErrFull naming 2 skipped", n, err)
	}
	if s.Revision() != 0 {
		t.Fatalf("revision %d after skipping entries at the maximum, want 0 (kept: they are to come again)", s.Revision())
	}
	if n, err := s.Merge(&v1.RevocationSet{Revocations: []*v1.Revocation{ident("agent:b", t0.Add(time.Second), t0.Add(time.Hour))}}, t0); n != 1 || err != nil {
		t.Fatalf("widening at the maximum = %d, %v", n, err)
	}
	if got := s.Prune(t0.Add(2 * time.Minute)); got != 1 {
		t.Fatalf("pruned %d, want 1 (agent:a)", got)
	}
	if n, err := s.Merge(&v1.RevocationSet{Revocations: in[3:4]}, t0.Add(2*time.Minute)); n != 1 || err != nil {
		t.Fatalf("after pruning = %d, %v; want room for one", n, err)
	}
}

// Entries go only when what they cover has expired (expires_at before now,
// the coordinators' rule); one that arrives expired is not taken; an
// expiry past the CAs' is cut to it, so no entry outlives the CAs.
func TestSetPruneAndExpiryCap(t *testing.T) {
	caEnd := t0.Add(24 * time.Hour)
	s := NewSet(0, caEnd)
	mustMerge(t, s, 1,
		ident("agent:a", t0, t0.Add(time.Hour)),
		ident("agent:b", t0, t0.Add(1000*time.Hour)),
		ident("agent:old", t0.Add(-2*time.Hour), t0.Add(-time.Hour)))
	if s.Len() != 2 {
		t.Fatalf("len %d, want 2 (the expired one not taken)", s.Len())
	}
	if r, _ := s.RevokedIdentityAt("agent", "b"); !r.GetExpiresAt().AsTime().Equal(caEnd) {
		t.Fatalf("agent:b expires %v, want the CA's %v", r.GetExpiresAt().AsTime(), caEnd)
	}
	if n := s.Prune(t0.Add(time.Hour)); n != 0 {
		t.Fatalf("pruned %d at its expiry, want 0 (before, not at)", n)
	}
	if n := s.Prune(t0.Add(time.Hour + time.Second)); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	if n := s.Prune(caEnd.Add(time.Second)); n != 1 || s.Len() != 0 {
		t.Fatalf("pruned %d, len %d; want 1, 0", n, s.Len())
	}
}

func TestSetPersistence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "revocations.pb")
	s := NewSet(0, time.Time{})
	if err := s.Load(file, t0, 0); err != nil || s.Len() != 0 {
		t.Fatalf("missing file: %v, len %d", err, s.Len())
	}
	mustMerge(t, s, 42, ident("agent:a", t0, t0.Add(time.Hour)), serial("abc", t0, t0.Add(2*time.Hour)))
	if _, err := s.Save(file); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file %v mode %v, want 0600", err, fi.Mode())
	}
	l := NewSet(0, time.Time{})
	if err := l.Load(file, t0, 0); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(l.Snapshot(), s.Snapshot()) {
		t.Fatalf("loaded %v, saved %v", l.Snapshot(), s.Snapshot())
	}
	// Loaded after agent:a expired: it is not taken.
	l = NewSet(0, time.Time{})
	if err := l.Load(file, t0.Add(90*time.Minute), 0); err != nil || l.Len() != 1 {
		t.Fatalf("load later: %v, len %d; want 1", err, l.Len())
	}

	bad := func(name string, data []byte, max int, want string) {
		t.Helper()
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
		l := NewSet(max, time.Time{})
		err := l.Load(f, t0, 0)
		if err == nil || !strings.Contains(err.Error(), f) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming the file and %q", name, err, want)
		}
		if l.Len() != 0 {
			t.Errorf("%s: %d entries merged from a bad file", name, l.Len())
		}
	}
	bad("garbage", []byte("\xff\xff\xff"), 0, "cannot parse")
	bad("big", make([]byte, maxFileBytes(2)+1), 2, "over")
	inv, _ := proto.Marshal(&v1.RevocationSet{Revocations: []*v1.Revocation{ident("agent:a", t0, t0.Add(time.Hour)), serial("XYZ", t0, t0.Add(time.Hour))}})
	bad("invalid", inv, 0, "revocations[1]")
}

// Check covers a chain by any certificate's serial, and the leaf by its
// identity when issued at or before the identity's revocation.
func TestCheck(t *testing.T) {
	ca, err := tlsutil.NewCA("test", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.IssueKeyPair(tlsutil.Identity{Kind: tlsutil.KindAgent, Name: "b"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{leaf, ca.Cert}
	issued := tlsutil.IssuedAt(leaf)
	exp := issued.Add(time.Hour)
	for _, c := range []struct {
		name string
		r    *v1.Revocation
		want bool
	}{
		{"none", nil, false},
		{"leaf serial", serial(tlsutil.SerialString(leaf), issued, exp), true},
		{"CA serial", serial(tlsutil.SerialString(ca.Cert), issued, exp), true},
		{"other serial", serial("1234", issued, exp), false},
		{"identity after issue", ident("agent:b", issued.Add(time.Second), exp), true},
		{"identity at issue", ident("agent:b", issued, exp), true},
		{"identity before issue", ident("agent:b", issued.Add(-time.Second), exp), false},
		{"other identity", ident("agent:c", issued.Add(time.Second), exp), false},
	} {
		s := NewSet(0, time.Time{})
		if c.r != nil {
			if _, err := s.Merge(&v1.RevocationSet{Revocations: []*v1.Revocation{c.r}}, issued); err != nil {
				t.Fatal(err)
			}
		}
		got := s.Check(chain)
		if (got != nil) != c.want {
			t.Errorf("%s: Check = %v, want refused %v", c.name, got, c.want)
		}
		if got != nil && got.Subject != "agent:b" {
			t.Errorf("%s: subject %q", c.name, got.Subject)
		}
	}
}

// A full set (DefaultMax entries, each near its largest) saves and loads
// within the file bound; the figures are the README's.
func TestSetAtMaximum(t *testing.T) {
	s := NewSet(0, time.Time{})
	in := &v1.RevocationSet{Revision: 1}
	for i := range DefaultMax {
		r := serial(fmt.Sprintf("f%039x", i), t0, t0.Add(time.Hour)) // 40 hex digits, the most
		r.Subject = fmt.Sprintf("agent:host-%06d", i)
		r.Reason = strings.Repeat("r", 256)
		r.RevokedBy = "operator:" + strings.Repeat("a", 60)
		in.Revocations = append(in.Revocations, r)
	}
	wire := proto.Size(in)
	began := time.Now()
	if n, err := s.Merge(in, t0); n != DefaultMax || err != nil {
		t.Fatalf("merge = %d, %v", n, err)
	}
	merged := time.Since(began)
	file := filepath.Join(t.TempDir(), "revocations.pb")
	if _, err := s.Save(file); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > maxFileBytes(DefaultMax) {
		t.Fatalf("file %d bytes, over the bound %d", fi.Size(), maxFileBytes(DefaultMax))
	}
	l := NewSet(0, time.Time{})
	began = time.Now()
	if err := l.Load(file, t0, 0); err != nil || l.Len() != DefaultMax {
		t.Fatalf("load: %v, %d entries", err, l.Len())
	}
	t.Logf("%d revocations of up to %d bytes: %d bytes on the wire and on disk (bound %d), merged in %s, loaded in %s",
		DefaultMax, proto.Size(in.Revocations[0]), wire, maxFileBytes(DefaultMax), merged.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	// One more new one is refused; none held is evicted.
	if _, err := s.Merge(&v1.RevocationSet{Revocations: []*v1.Revocation{ident("agent:late", t0, t0.Add(time.Hour))}}, t0); !errors.Is(err, ErrFull) || s.Len() != DefaultMax {
		t.Fatalf("past the maximum: %v, %d held", err, s.Len())
	}
}

// An entry merged from two (the later revoke's record, the other's later
// expires_at) stays within MaxEntryBytes, so the file saved with it loads:
// a coordinator sending an entry of exactly MaxEntryBytes after one with
// a longer expires_at (nanoseconds) made a held entry over the bound, and
// the agent then refused to start on its own file. Failed before (Load:
// "1029 bytes, over 1024").
func TestMergedEntryStaysWithinBound(t *testing.T) {
	s := NewSet(0, time.Time{})
	first := ident("agent:h1", t0, t0.Add(48*time.Hour+time.Nanosecond*123456789))
	mustMerge(t, s, 1, first)
	second := ident("agent:h1", t0.Add(time.Hour), t0.Add(24*time.Hour))
	second.Reason = strings.Repeat("x", MaxEntryBytes) // trimmed below to exactly the bound
	second.Reason = second.Reason[:MaxEntryBytes-(proto.Size(second)-MaxEntryBytes)]
	if n := proto.Size(second); n != MaxEntryBytes {
		t.Fatalf("test entry is %d bytes, want %d", n, MaxEntryBytes)
	}
	if n := mustMerge(t, s, 2, second); n != 1 {
		t.Fatalf("merged %d, want 1", n)
	}
	r, _ := s.RevokedIdentityAt("agent", "h1")
	if n := proto.Size(r); n > MaxEntryBytes {
		t.Fatalf("held entry is %d bytes, over %d", n, MaxEntryBytes)
	}
	if !r.GetRevokedAt().AsTime().Equal(t0.Add(time.Hour)) || !r.GetExpiresAt().AsTime().Equal(first.GetExpiresAt().AsTime()) {
		t.Fatalf("held %v, want the later revoked_at and the later expires_at", r)
	}
	file := filepath.Join(t.TempDir(), "revocations.pb")
	if _, err := s.Save(file); err != nil {
		t.Fatal(err)
	}
	if err := NewSet(0, time.Time{}).Load(file, t0, 0); err != nil {
		t.Fatalf("the agent's own file: %v", err)
	}
	// The same with the bytes in revoked_by and no reason.
	third := ident("agent:h2", t0.Add(time.Hour), t0.Add(24*time.Hour))
	third.RevokedBy = strings.Repeat("y", MaxEntryBytes)
	third.RevokedBy = third.RevokedBy[:MaxEntryBytes-(proto.Size(third)-MaxEntryBytes)]
	mustMerge(t, s, 3, ident("agent:h2", t0, first.GetExpiresAt().AsTime()), third)
	if r, _ := s.RevokedIdentityAt("agent", "h2"); Validate(r) != nil {
		t.Fatalf("held entry: %v", Validate(r))
	}
}

// A file saved under a larger maximum is loaded whole (up to atMost) by a
// set of a smaller one: nothing dropped, the file's revision taken; the
// set then refuses new entries (keeping its revision, so they come again)
// but still widens the ones it holds; a file over atMost is refused naming
// the file and the count.
func TestSetLoadOverMaximum(t *testing.T) {
	file := filepath.Join(t.TempDir(), "revocations.pb")
	s := NewSet(3, time.Time{})
	mustMerge(t, s, 7, ident("agent:a", t0, t0.Add(time.Hour)), ident("agent:b", t0, t0.Add(time.Hour)), ident("agent:c", t0, t0.Add(time.Hour)))
	if _, err := s.Save(file); err != nil {
		t.Fatal(err)
	}
	l := NewSet(2, time.Time{})
	if err := l.Load(file, t0, 3); err != nil || l.Len() != 3 || l.Revision() != 7 {
		t.Fatalf("load 3 under a maximum of 2: %v, len %d, revision %d; want 3, 7", err, l.Len(), l.Revision())
	}
	n, err := l.Merge(&v1.RevocationSet{Revision: 9, Revocations: []*v1.Revocation{ident("agent:d", t0, t0.Add(time.Hour))}}, t0)
	if n != 0 || !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "--max-revocations 2") || l.Revision() != 7 {
		t.Fatalf("a new one past the maximum: %d, %v, revision %d; want refused, revision 7", n, err, l.Revision())
	}
	if n, err := l.Merge(&v1.RevocationSet{Revision: 9, Revocations: []*v1.Revocation{ident("agent:a", t0.Add(time.Minute), t0.Add(time.Hour))}}, t0); n != 1 || err != nil {
		t.Fatalf("widening one held: %d, %v; want 1 changed", n, err)
	}
	err = NewSet(2, time.Time{}).Load(file, t0, 0)
	if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "3 revocations, over 2") {
		t.Fatalf("load 3 with at most 2: %v", err)
	}
}

// A coordinator's stream sends each revocation once: after a merge that
// refused new entries at the maximum, the later deltas of the same stream
// (a widening, an empty one, new entries taken once pruning made room)
// must not take their revision, else the refused entries are behind the
// revision the agent saves and says, and no coordinator sends them again.
// A new stream (Resume) takes revisions again.
func TestSetRevisionStaysBehindRefused(t *testing.T) {
	s := NewSet(2, time.Time{})
	mustMerge(t, s, 4, ident("agent:a", t0, t0.Add(time.Minute)), ident("agent:b", t0, t0.Add(time.Hour)))
	if _, err := s.Merge(&v1.RevocationSet{Revision: 5, Revocations: []*v1.Revocation{ident("agent:c", t0, t0.Add(time.Hour))}}, t0); !errors.Is(err, ErrFull) || s.Revision() != 4 {
		t.Fatalf("c past the maximum: %v, revision %d; want refused, 4", err, s.Revision())
	}
	// The same stream: a widening of b, then (a expired and pruned) d.
	mustMerge(t, s, 6, ident("agent:b", t0.Add(time.Minute), t0.Add(time.Hour)))
	if s.Revision() != 4 {
		t.Fatalf("revision %d after a widening on the stream that refused c, want 4", s.Revision())
	}
	if n := s.Prune(t0.Add(2 * time.Minute)); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	if n := mustMerge(t, s, 7, ident("agent:d", t0, t0.Add(time.Hour))); n != 1 || s.Revision() != 4 {
		t.Fatalf("d after pruning: %d merged, revision %d; want 1, 4 (c is not held)", n, s.Revision())
	}
	// The next stream sends everything since 4: c is refused again (full).
	s.Resume()
	if _, err := s.Merge(&v1.RevocationSet{Revision: 7, Revocations: []*v1.Revocation{ident("agent:c", t0, t0.Add(time.Hour))}}, t0); !errors.Is(err, ErrFull) || s.Revision() != 4 {
		t.Fatalf("c again, still full: %v, revision %d; want refused, 4", err, s.Revision())
	}
	// With room (the maximum raised is a restart: a new set), taken.
	s.Resume()
	s.max = 3
	if n := mustMerge(t, s, 7, ident("agent:c", t0, t0.Add(time.Hour))); n != 1 || s.Revision() != 7 {
		t.Fatalf("c with room: %d merged, revision %d; want 1, 7", n, s.Revision())
	}
}
