package artifacts

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

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
	s, err := New(dir, 16, zerolog.Nop())
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
