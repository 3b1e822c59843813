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
// dropping what expired before now. A missing file is an empty set. A file
// over the bound of s's maximum, one that does not decode, or one with an
// invalid entry is an error naming the file: nothing is merged then.
func (s *Set) Load(file string, now time.Time) error {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("revocations file: %w", err)
	}
	defer f.Close()
	limit := maxFileBytes(s.max)
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return fmt.Errorf("revocations file %s: %w", file, err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("revocations file %s: over %d bytes (%d revocations at most)", file, limit, s.max)
	}
	in := &v1.RevocationSet{}
	if err := proto.Unmarshal(b, in); err != nil {
		return fmt.Errorf("revocations file %s: %w", file, err)
	}
	for i, r := range in.GetRevocations() {
		if err := Validate(r); err != nil {
			return fmt.Errorf("revocations file %s: revocations[%d]: %w", file, i, err)
		}
	}
	if _, err := s.Merge(in, now); err != nil {
		return fmt.Errorf("revocations file %s: %w", file, err)
	}
	return nil
}
