package install

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"
)

// TestGiveAwayNote: a give-away started and not done is pending, to whom
// it was started, across a new Installer (an agent started after a kill);
// done, it is not; dropping or pruning the release removes the note with
// it (the release is unpacked again); a note's temp left by a kill during
// its write is removed at start; the note is outside the release tree.
func TestGiveAwayNote(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "v", body: "one"}))
	for _, v := range []string{"1", "2"} {
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, ok := in.GiveAwayPending("web", "1"); ok {
		t.Fatal("pending before any give-away")
	}
	if err := in.GiveAwayStarted("web", "1", 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if p, err := filepath.Rel(in.ReleaseDir("web", "1"), in.givingPath("web", "1")); err != nil || filepath.IsLocal(p) {
		t.Fatalf("note %s inside the release %s", in.givingPath("web", "1"), in.ReleaseDir("web", "1"))
	}
	again, err := New(in.dataDir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if uid, gid, ok := again.GiveAwayPending("web", "1"); !ok || uid != 1234 || gid != 5678 {
		t.Fatalf("after a restart: pending %v to %d:%d, want 1234:5678", ok, uid, gid)
	}
	if _, _, ok := again.GiveAwayPending("web", "2"); ok {
		t.Fatal("another version pending")
	}
	if err := again.GiveAwayDone("web", "1"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := again.GiveAwayPending("web", "1"); ok {
		t.Fatal("pending after done")
	}
	// Dropped (a walk that failed, a release given in part) or pruned:
	// the note goes with the tree.
	for _, v := range []string{"1", "2"} {
		if err := again.GiveAwayStarted("web", v, 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := again.DropRelease("web", "1"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := again.GiveAwayPending("web", "1"); ok {
		t.Fatal("pending after the release was dropped")
	}
	if err := again.Prune("web"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := again.GiveAwayPending("web", "2"); ok {
		t.Fatal("pending after the release was pruned")
	}
	// A kill during the note's write leaves its temp: removed at start.
	tmp := markerTemp(again.givingPath("web", "3"))
	if err := os.WriteFile(tmp, []byte("1 1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(in.dataDir, Limits{}, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tmp); !os.IsNotExist(err) {
		t.Fatalf("note temp %s left: %v", tmp, err)
	}
	// An unreadable note still counts, to no one known.
	if err := os.WriteFile(again.givingPath("web", "4"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if uid, _, ok := again.GiveAwayPending("web", "4"); !ok || uid != 1<<32-1 {
		t.Fatalf("garbled note: pending %v uid %d", ok, uid)
	}
}
