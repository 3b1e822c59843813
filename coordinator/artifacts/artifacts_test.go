package artifacts

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestPutStatAndLimits(t *testing.T) {
	dir := t.TempDir()
	// A leftover of an interrupted upload is cleaned on open.
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "upload-1"), []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(dir, 16, 0, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Fatalf("tmp not emptied: %v", ents)
	}
	data := []byte("hello artifacts")
	digest, n, err := s.Put(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if digest != hex.EncodeToString(sum[:]) || n != int64(len(data)) {
		t.Fatalf("Put = %s %d", digest, n)
	}
	if size, err := s.Stat(digest); err != nil || size != n {
		t.Fatalf("Stat = %d %v", size, err)
	}
	if _, err := s.Stat("not-a-digest"); err == nil {
		t.Fatal("Stat accepted a malformed digest")
	}
	if _, _, err := s.Put(bytes.NewReader(make([]byte, 17))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized upload: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "sha256")); len(ents) != 1 {
		t.Fatalf("store holds %d files, want 1 (the oversized upload must leave nothing)", len(ents))
	}
}

// TestUploadsLeaveFreeSpace: the store's filesystem (faked: 64 MiB, less
// what the store's files hold) keeps its minimum free space (16 MiB):
// an upload that would go below it is refused with ErrDiskSpace naming
// the flag, leaves nothing behind, and an upload that fits is stored;
// two uploads at once together stay within the bound (less what one may
// write between two of its checks). Before, uploads
// filled the disk the coordinator's embedded etcd shares (every write of
// the control plane stops on a full disk).
func TestUploadsLeaveFreeSpace(t *testing.T) {
	dir := t.TempDir()
	const capacity, minFree = 64 << 20, 16 << 20
	used := func() int64 {
		var n int64
		_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
		return n
	}
	orig := statfs
	statfs = func(path string, st *syscall.Statfs_t) error {
		st.Bsize = 1
		st.Bavail = uint64(max(capacity-used(), 0))
		return nil
	}
	t.Cleanup(func() { statfs = orig })
	s, err := New(dir, 1<<30, minFree, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Put(bytes.NewReader(make([]byte, 8<<20))); err != nil {
		t.Fatalf("an 8 MiB upload with 64 MiB free: %v", err)
	}
	_, _, err = s.Put(bytes.NewReader(make([]byte, 100<<20)))
	if !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), "--artifact-min-free-bytes") {
		t.Fatalf("a 100 MiB upload: %v; want ErrDiskSpace naming --artifact-min-free-bytes", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "sha256")); len(ents) != 1 {
		t.Fatalf("store holds %d files, want 1 (the refused upload must leave nothing)", len(ents))
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Fatalf("tmp holds %d files after a refused upload", len(ents))
	}
	// Two at once, each of which fits alone: what they write together
	// stays within the bound.
	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			data := bytes.Repeat([]byte{byte(i + 1)}, 24<<20)
			_, _, err := s.Put(bytes.NewReader(data))
			errs <- err
		}()
	}
	var refused int
	for range 2 {
		if err := <-errs; errors.Is(err, ErrDiskSpace) {
			refused++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if refused == 0 {
		t.Fatalf("two 24 MiB uploads at once with 56 MiB free and 16 MiB kept both stored")
	}
	// Each checks before every freeCheckEvery bytes it writes, so the other
	// may have written up to that much since: the bound, less one interval.
	if free := capacity - used(); free < minFree-freeCheckEvery {
		t.Fatalf("%d bytes free after the uploads, under the %d kept (less one check's %d)", free, minFree, freeCheckEvery)
	}
}

// Files lists what Put stored; RemoveIf judges a file by its time read
// under the lock Put renames under (a file written again is judged anew),
// and counts what it removed; Ensure of an artifact that was pruned says
// so.
func TestFilesRemoveIfTouch(t *testing.T) {
	s, err := New(t.TempDir(), 1<<20, 0, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	d1, _, err := s.Put(strings.NewReader("one"))
	if err != nil {
		t.Fatal(err)
	}
	d2, _, err := s.Put(strings.NewReader("two!"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := s.Files()
	if err != nil || len(files) != 2 {
		t.Fatalf("Files: %v, %v", files, err)
	}
	sizes := map[string]int64{}
	for _, f := range files {
		sizes[f.SHA256] = f.Size
	}
	if sizes[d1] != 3 || sizes[d2] != 4 {
		t.Fatalf("sizes %v", sizes)
	}
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(s.path(d1), past, past); err != nil {
		t.Fatal(err)
	}
	old := func(mod time.Time) bool { return mod.Before(time.Now().Add(-time.Minute)) }
	// Written again: its new time keeps it.
	if _, _, err := s.Put(strings.NewReader("one")); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RemoveIf(d1, old); ok || err != nil {
		t.Fatalf("RemoveIf of a file written again: %v, %v", ok, err)
	}
	if err := os.Chtimes(s.path(d1), past, past); err != nil {
		t.Fatal(err)
	}
	if err := s.Touch(d1); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RemoveIf(d1, old); ok || err != nil {
		t.Fatalf("RemoveIf of a touched file: %v, %v", ok, err)
	}
	if err := os.Chtimes(s.path(d1), past, past); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RemoveIf(d1, old); !ok || err != nil {
		t.Fatalf("RemoveIf of an old file: %v, %v", ok, err)
	}
	if ok, err := s.RemoveIf(d1, old); ok || err != nil {
		t.Fatalf("RemoveIf of a missing file: %v, %v", ok, err)
	}
	if s.Removed() != 1 {
		t.Errorf("removed %d, want 1", s.Removed())
	}
	if _, err := s.Stat(d2); err != nil {
		t.Errorf("the other file: %v", err)
	}
	s.SetPruned(func(d string) string {
		if d == d1 {
			return "pruned, restore it"
		}
		return ""
	})
	if _, err := s.Ensure(t.Context(), d1); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "pruned, restore it") {
		t.Errorf("Ensure of a pruned artifact: %v", err)
	}
}
