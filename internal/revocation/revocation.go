// Package revocation is what a revocation covers and the set of
// revocations an agent holds. The coordinators keep revocations in etcd
// (coordinator/revoke.go) and check certificates against their mirror;
// agents receive them over their stream and check the certificates of the
// peers that fetch from them and of the coordinators they reach against a
// Set, with the same rule (Check).
//
// A Set only grows by what a coordinator sends: an entry is merged (an
// identity's revoked_at and any entry's expires_at can only move later),
// never replaced by an older or narrower one, and it goes only when what it
// covers has expired (Prune: expires_at before now, the coordinators'
// pruning rule). A coordinator, even a compromised one, cannot withdraw a
// revocation an agent holds.
package revocation

import (
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// DefaultMax is how many revocations a Set holds at most (the
// coordinators' default --max-revocations).
const DefaultMax = 10000

// MaxEntryBytes bounds one revocation's encoding: a 40-digit serial, an
// identity, a subject, who revoked it (each a bounded identity) and a
// reason of at most 256 bytes fit in well under it.
const MaxEntryBytes = 1024

// Key names a revocation: "serial/<hex>" or "identity/<kind>/<name>" (the
// coordinators' etcd keys below /fleetwave/v1/revocations/).
func Key(r *v1.Revocation) string {
	if r.GetSerial() != "" {
		return "serial/" + r.GetSerial()
	}
	return "identity/" + strings.Replace(r.GetIdentity(), ":", "/", 1)
}

// Lookup finds the revocations that could cover a certificate.
type Lookup interface {
	// RevokedSerial is the revocation of the certificate with this serial
	// (as tlsutil.SerialString writes it).
	RevokedSerial(serial string) (*v1.Revocation, bool)
	// RevokedIdentityAt is the revocation of every certificate of an
	// identity issued at or before its revoked_at.
	RevokedIdentityAt(kind, name string) (*v1.Revocation, bool)
}

// Refused is the error for a certificate a revocation covers.
type Refused struct {
	Subject string // the identity of the refused leaf ("" if it names none)
	Serial  string // the serial of the revoked certificate (the leaf or a CA)
	R       *v1.Revocation
}

func (e *Refused) Error() string {
	what := "certificate serial " + e.Serial
	if e.R.GetIdentity() != "" {
		what = "every certificate of " + e.R.GetIdentity() + " issued until then"
	} else if e.Subject != "" {
		what += " (" + e.Subject + ")"
	}
	msg := fmt.Sprintf("%s was revoked at %s by %s", what, e.R.GetRevokedAt().AsTime().UTC().Format(time.RFC3339), e.R.GetRevokedBy())
	if e.R.GetReason() != "" {
		msg += ": " + e.R.GetReason()
	}
	return msg
}

// Check returns the revocation covering a verified chain (leaf first), or
// nil: any certificate in it by serial, or the leaf by its identity when
// it was issued (tlsutil.IssuedAt) at or before the identity's revocation.
func Check(chain []*x509.Certificate, l Lookup) *Refused {
	if len(chain) == 0 {
		return nil
	}
	leaf := chain[0]
	subject := ""
	id, idErr := tlsutil.IdentityFromCert(leaf)
	if idErr == nil {
		subject = id.Kind + ":" + id.Name
	}
	for _, cert := range chain {
		serial := tlsutil.SerialString(cert)
		if r, ok := l.RevokedSerial(serial); ok {
			return &Refused{Subject: subject, Serial: serial, R: r}
		}
	}
	if idErr != nil {
		return nil
	}
	if r, ok := l.RevokedIdentityAt(id.Kind, id.Name); ok && !tlsutil.IssuedAt(leaf).After(r.GetRevokedAt().AsTime()) {
		return &Refused{Subject: subject, Serial: tlsutil.SerialString(leaf), R: r}
	}
	return nil
}

// Validate checks one revocation as received: exactly one of serial
// (canonical hex) and identity (KIND:NAME), revoked_at and expires_at set
// and valid, and at most MaxEntryBytes encoded. Errors name the field and
// its value.
func Validate(r *v1.Revocation) error {
	if r == nil {
		return errors.New("revocation: empty")
	}
	if n := proto.Size(r); n > MaxEntryBytes {
		return fmt.Errorf("revocation %s: %d bytes, over %d", clip(Key(r)), n, MaxEntryBytes)
	}
	switch {
	case (r.GetSerial() == "") == (r.GetIdentity() == ""):
		return fmt.Errorf("revocation: serial %q, identity %q: want exactly one", clip(r.GetSerial()), clip(r.GetIdentity()))
	case r.GetSerial() != "":
		s, err := tlsutil.ParseSerial(r.GetSerial())
		if err != nil {
			return fmt.Errorf("revocation.serial: %w", err)
		}
		if s != r.GetSerial() {
			return fmt.Errorf("revocation.serial %q: not canonical (want %q)", clip(r.GetSerial()), s)
		}
	default:
		kind, name, err := tlsutil.ParseIdentityName(r.GetIdentity())
		if err != nil {
			return fmt.Errorf("revocation.identity: %w", err)
		}
		if kind+":"+name != r.GetIdentity() {
			return fmt.Errorf("revocation.identity %q: not canonical", clip(r.GetIdentity()))
		}
	}
	if r.GetRevokedAt() == nil || r.GetRevokedAt().CheckValid() != nil {
		return fmt.Errorf("revocation %s: revoked_at %v: want a valid time", Key(r), r.GetRevokedAt())
	}
	if r.GetExpiresAt() == nil || r.GetExpiresAt().CheckValid() != nil {
		return fmt.Errorf("revocation %s: expires_at %v: want a valid time", Key(r), r.GetExpiresAt())
	}
	return nil
}

func clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	return strings.ToValidUTF8(s[:64], "") + "…"
}

// ErrFull is returned (wrapped) by Merge for entries refused because the
// set holds its maximum.
var ErrFull = errors.New("revocation set full")

// Set is the revocations an agent holds. Safe for concurrent use.
type Set struct {
	max int
	// maxExpiry caps every entry's expires_at: the latest expiry of the
	// CAs certificates must chain to (no certificate they cover can be
	// valid later). Zero: no cap.
	maxExpiry time.Time

	mu       sync.RWMutex
	entries  map[string]*v1.Revocation
	revision int64
	// refused: a merge since the last Resume refused new entries at the
	// maximum; the revision stays until then (a stream sends each entry
	// once: a later delta on it does not bring the refused ones).
	refused bool
}

// NewSet makes an empty set of at most max entries (0: DefaultMax) whose
// entries expire at the latest at maxExpiry (zero: not capped).
func NewSet(max int, maxExpiry time.Time) *Set {
	if max <= 0 {
		max = DefaultMax
	}
	return &Set{max: max, maxExpiry: maxExpiry, entries: map[string]*v1.Revocation{}}
}

// RevokedSerial implements Lookup.
func (s *Set) RevokedSerial(serial string) (*v1.Revocation, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.entries["serial/"+serial]
	return r, ok
}

// RevokedIdentityAt implements Lookup.
func (s *Set) RevokedIdentityAt(kind, name string) (*v1.Revocation, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.entries["identity/"+kind+"/"+name]
	return r, ok
}

// Check is Check against the set.
func (s *Set) Check(chain []*x509.Certificate) *Refused { return Check(chain, s) }

// Max is the most entries Merge lets the set hold (it can hold more: see
// Load).
func (s *Set) Max() int { return s.max }

// Len is how many entries the set holds.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.entries)
}

// Revision is the revision of the last set merged (what the agent tells
// the coordinator it holds).
func (s *Set) Revision() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.revision
}

// ForgetRevision sets the revision to 0, so the next coordinator sends
// every revocation again (the entries stay): after leaving a coordinator
// whose certificate is revoked, which may have withheld revocations.
func (s *Set) ForgetRevision() {
	s.mu.Lock()
	s.revision = 0
	s.mu.Unlock()
}

// Merge adds what a coordinator sent at now and takes its revision (not
// when new entries were skipped at the maximum: they are to come again;
// nor, until Resume, after such a merge).
// Each entry is validated on its own: an invalid one, one already expired
// at now, and a new one past the maximum are skipped (the error names
// them), the others are merged. Merging never removes and never narrows: an entry
// already held keeps the later revoked_at (an identity's revocation then
// covers more) and the later expires_at. It returns how many entries were
// added or changed.
func (s *Set) Merge(in *v1.RevocationSet, now time.Time) (changed int, err error) {
	return s.merge(in, now, s.max)
}

// merge is Merge with new entries refused at limit held.
func (s *Set) merge(in *v1.RevocationSet, now time.Time, limit int) (changed int, err error) {
	var errs []error
	var full int
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range in.GetRevocations() {
		if verr := Validate(r); verr != nil {
			errs = append(errs, fmt.Errorf("revocations[%d]: %w", i, verr))
			continue
		}
		r = s.capped(r)
		if r.GetExpiresAt().AsTime().Before(now) {
			continue // expired: covers nothing valid
		}
		key := Key(r)
		old, ok := s.entries[key]
		if !ok {
			if len(s.entries) >= limit {
				full++
				continue
			}
			s.entries[key] = r
			changed++
			continue
		}
		if m := merged(old, r); m != old {
			s.entries[key] = m
			changed++
		}
	}
	if full > 0 {
		// The revision stays: the next coordinator sends them again, and
		// they are taken once pruning made room.
		// Later merges keep it too until Resume: the coordinator's
		// stream goes on from this delta's revision, and a revision
		// taken from a later delta would be past the refused entries.
		errs = append(errs, fmt.Errorf("%d new revocations skipped: %d held, the maximum (--max-revocations %d): %w", full, len(s.entries), limit, ErrFull))
		s.refused = true
	} else if !s.refused {
		s.revision = in.GetRevision()
	}
	return changed, errors.Join(errs...)
}

// capped returns r with expires_at no later than the set's maxExpiry (a
// copy when it changes).
func (s *Set) capped(r *v1.Revocation) *v1.Revocation {
	if s.maxExpiry.IsZero() || !r.GetExpiresAt().AsTime().After(s.maxExpiry) {
		return r
	}
	c := proto.Clone(r).(*v1.Revocation)
	c.ExpiresAt = timestamppb.New(s.maxExpiry)
	return c
}

// merged is old widened by r: the record of the later revocation, with
// the later revoked_at and the later expires_at of the two; old itself
// when r widens nothing.
func merged(old, r *v1.Revocation) *v1.Revocation {
	laterRevoke := r.GetRevokedAt().AsTime().After(old.GetRevokedAt().AsTime())
	laterExpiry := r.GetExpiresAt().AsTime().After(old.GetExpiresAt().AsTime())
	if !laterRevoke && !laterExpiry {
		return old
	}
	base := old
	if laterRevoke {
		base = r
	}
	m := proto.Clone(base).(*v1.Revocation)
	if laterExpiry {
		m.ExpiresAt = r.GetExpiresAt()
	} else {
		m.ExpiresAt = old.GetExpiresAt()
	}
	// The other's expires_at can be longer than base's (nanoseconds): what
	// the entry says rather than what it covers (the reason, then who
	// revoked it and the subject) gives way, so every entry held passes
	// Validate (and the file saved with it loads).
	for _, f := range []*string{&m.Reason, &m.RevokedBy, &m.Subject} {
		if over := proto.Size(m) - MaxEntryBytes; over > 0 {
			*f = strings.ToValidUTF8((*f)[:max(0, len(*f)-over)], "")
		}
	}
	return m
}

// Prune drops the entries whose expires_at is before now (no certificate
// they cover is valid) and returns how many went.
func (s *Set) Prune(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, r := range s.entries {
		if r.GetExpiresAt().AsTime().Before(now) {
			delete(s.entries, k)
			n++
		}
	}
	return n
}

// Snapshot returns the set (entries by key) with its revision.
func (s *Set) Snapshot() *v1.RevocationSet {
	s.mu.RLock()
	defer s.mu.RUnlock()
	keys := make([]string, 0, len(s.entries))
	for k := range s.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := &v1.RevocationSet{Revision: s.revision, Revocations: make([]*v1.Revocation, 0, len(keys))}
	for _, k := range keys {
		out.Revocations = append(out.Revocations, s.entries[k])
	}
	return out
}

// Resume lets merges take revisions again after one refused new entries
// (Merge): at the start of a coordinator stream, whose Hello says a
// revision from before the refused ones, so it sends them again.
func (s *Set) Resume() {
	s.mu.Lock()
	s.refused = false
	s.mu.Unlock()
}
