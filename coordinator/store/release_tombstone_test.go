package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/client/v3/concurrency"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// A deleted release leaves a tombstone written with the delete: its
// version is never created again (ErrTombstoned, naming both digests),
// with another artifact or its own; the delete is compare-and-swap on
// the release's revision and fenced; the mirror drops the release on the
// delete.
func TestDeleteReleaseTombstone(t *testing.T) {
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := NewMirror(s, zerolog.Nop())
	go func() { _ = m.Run(ctx) }()
	sess, err := concurrency.NewSession(s.Client(), concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(sess, ElectionPrefix)
	if err := e.Campaign(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	fence := &Fence{Key: e.Key(), Rev: e.Rev()}
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	rel := &v1.Release{Service: "web", Version: "v1", Artifact: &v1.Artifact{Sha256: a, Size: 1}}
	rev, err := s.CreateRelease(ctx, rel)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitRev(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Release("web", "v1"); !ok {
		t.Fatal("v1 not mirrored")
	}
	// Compare-and-swap on the release's revision.
	if _, err := s.DeleteRelease(ctx, fence, rel, rev-1, time.Unix(1000, 0)); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete at a stale revision: %v, want ErrConflict", err)
	}
	if _, err := s.GetReleaseTombstone(ctx, "web", "v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tombstone after a failed delete: %v, want none", err)
	}
	del, err := s.DeleteRelease(ctx, fence, rel, rev, time.Unix(1000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetRelease(ctx, "web", "v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("v1 after its delete: %v, want ErrNotFound", err)
	}
	tomb, err := s.GetReleaseTombstone(ctx, "web", "v1")
	if err != nil || tomb.GetSha256() != a || tomb.GetService() != "web" || tomb.GetVersion() != "v1" || !tomb.GetDeletedAt().AsTime().Equal(time.Unix(1000, 0)) {
		t.Fatalf("tombstone %v, %v", tomb, err)
	}
	if err := m.WaitRev(ctx, del); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Release("web", "v1"); ok || len(m.Releases("web")) != 0 || len(m.AllReleases()) != 0 {
		t.Fatal("the mirror kept the deleted release")
	}
	// The version is never created again: with another artifact (both
	// digests named) nor with its own.
	other := &v1.Release{Service: "web", Version: "v1", Artifact: &v1.Artifact{Sha256: b, Size: 1}}
	_, err = s.CreateRelease(ctx, other)
	if !errors.Is(err, ErrTombstoned) || !strings.Contains(err.Error(), "artifact sha256 "+a) || !strings.Contains(err.Error(), "this release's is "+b) ||
		!strings.Contains(err.Error(), "version v1 was deleted at 1970-01-01T00:16:40Z") {
		t.Fatalf("v1 with another artifact: %v", err)
	}
	if _, err := s.CreateRelease(ctx, rel); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("v1 again with its own artifact: %v, want ErrTombstoned", err)
	}
	// The refusal is the transaction's, not only the look before it
	// (CheckReleaseTombstone): a deletion between a caller's look and its
	// create is seen.
	if err := s.CheckReleaseTombstone(ctx, other); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("CheckReleaseTombstone: %v, want ErrTombstoned", err)
	}
	if _, err := s.GetRelease(ctx, "web", "v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("v1 after the refused creates: %v, want ErrNotFound", err)
	}
	if _, err := s.GetReleaseTombstone(ctx, "web", "v1"); err != nil {
		t.Fatalf("the tombstone after the refused creates: %v", err)
	}
	// Another version is created, and deleted by a deposed leader: nothing.
	rel2 := &v1.Release{Service: "web", Version: "v2", Artifact: &v1.Artifact{Sha256: a, Size: 1}}
	rev2, err := s.CreateRelease(ctx, rel2)
	if err != nil {
		t.Fatalf("v2 with v1's artifact: %v", err)
	}
	if _, err := s.CreateRelease(ctx, rel2); !errors.Is(err, ErrExists) {
		t.Fatalf("v2 a second time: %v, want ErrExists", err)
	}
	if err := m.WaitRev(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	// A deposed leader deletes nothing.
	vr := m.Releases("web")[0]
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteRelease(ctx, fence, vr.Val, vr.Rev, time.Unix(2000, 0)); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("delete after losing leadership: %v, want ErrNotLeader", err)
	}
	if _, err := s.GetRelease(ctx, "web", "v2"); err != nil {
		t.Fatalf("v2 after a deposed leader's delete: %v", err)
	}
	if _, err := s.GetReleaseTombstone(ctx, "web", "v2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tombstone after a deposed leader's delete: %v, want none", err)
	}
}
