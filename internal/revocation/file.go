package revocation

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// maxFileBytes bounds the file of a set of max entries: each entry, its
// tag and length, and the revision.
func maxFileBytes(max int) int64 { return int64(max)*(MaxEntryBytes+8) + 64 }

// Save writes the set to file atomically (mode 0600): a crash leaves the
// old file or the new one. It returns the revision it wrote: the file's
// entries and revision are one snapshot, so a set loaded from it says the
// revision of what it holds (and a coordinator sends what came after).
func (s *Set) Save(file string) (revision int64, err error) {
	snap := s.Snapshot()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err != nil {
		return 0, fmt.Errorf("encode revocations: %w", err)
	}
	if err := tlsutil.WriteFileAtomic(file, b, 0o600); err != nil {
		return 0, fmt.Errorf("save revocations: %w", err)
	}
	return snap.GetRevision(), nil
}

// Load reads a set saved by Save into s (merged: s is normally empty),
// dropping what expired before now. A file is loaded whole up to atMost
// entries (at least s's maximum), also past s's maximum: a file saved
// under a larger maximum loses none of its revocations (the set then
// refuses new ones until pruning brings it under its maximum). A missing
// file is an empty set. A file over the bound of atMost entries, one that
// does not decode, or one with an invalid entry is an error naming the
// file: nothing is merged then.
func (s *Set) Load(file string, now time.Time, atMost int) error {
	atMost = max(atMost, s.max)
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("revocations file: %w", err)
	}
	defer f.Close()
	limit := maxFileBytes(atMost)
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return fmt.Errorf("revocations file %s: %w", file, err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("revocations file %s: over %d bytes (%d revocations at most)", file, limit, atMost)
	}
	in := &v1.RevocationSet{}
	if err := proto.Unmarshal(b, in); err != nil {
		return fmt.Errorf("revocations file %s: %w", file, err)
	}
	if n := len(in.GetRevocations()); n > atMost {
		return fmt.Errorf("revocations file %s: %d revocations, over %d", file, n, atMost)
	}
	for i, r := range in.GetRevocations() {
		if err := Validate(r); err != nil {
			return fmt.Errorf("revocations file %s: revocations[%d]: %w", file, i, err)
		}
	}
	if _, err := s.merge(in, now, atMost); err != nil {
		return fmt.Errorf("revocations file %s: %w", file, err)
	}
	return nil
}
