package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestRotateLogCopyTruncate: a writer that opened the log O_APPEND (as the
// service does) keeps writing to it after a rotation, from the start; the
// old content is in .1; old files are shifted and bounded by keep.
func TestRotateLogCopyTruncate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// max: two lines of 60 bytes.
	const max, keep = 120, 2
	line := func(c byte) []byte { return append(bytes.Repeat([]byte{c}, 59), '\n') } // 60 bytes
	write := func(c byte) {
		if _, err := w.Write(line(c)); err != nil {
			t.Fatal(err)
		}
	}

	write('a')
	if rotated, err := RotateLog(path, max, keep); err != nil || rotated {
		t.Fatalf("under the limit: rotated=%v err=%v", rotated, err)
	}
	for i, c := range []byte("bcdef") {
		write(c)
		rotated, err := RotateLog(path, max, keep)
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if rotated != (i%2 == 0) { // 120 bytes rotate, 60 do not
			t.Fatalf("write %c: rotated=%v", c, rotated)
		}
	}
	// Writes: a b | c d | e f | g: the live file holds what came after the
	// last rotation, at offset 0 (O_APPEND), .1 the rotation before, .2 the
	// one before that; a b is dropped (keep 2).
	write('g')
	got := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return strings.ReplaceAll(string(b), "\n", "")
	}
	rep := func(s string) string {
		var b strings.Builder
		for _, c := range s {
			b.WriteString(strings.Repeat(string(c), 59))
		}
		return b.String()
	}
	if s := got(path); s != rep("g") {
		t.Fatalf("live log holds %q, want the g line only", s)
	}
	if s := got(path + ".1"); s != rep("ef") {
		t.Fatalf(".1 holds %q", s)
	}
	if s := got(path + ".2"); s != rep("cd") {
		t.Fatalf(".2 holds %q", s)
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf(".3: %v, want none (keep %d)", err, keep)
	}
	if n := fileSize(t, path); n != 60 {
		t.Fatalf("live log is %d bytes, want 60 (written at the start after the truncation)", n)
	}
}

func TestRotateLogLimits(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.log")
	if rotated, err := RotateLog(path, 10, 1); err != nil || rotated {
		t.Fatalf("missing file: rotated=%v err=%v", rotated, err)
	}
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 50), 0o644); err != nil {
		t.Fatal(err)
	}
	if rotated, err := RotateLog(path, 0, 1); err != nil || rotated {
		t.Fatalf("maxBytes 0 (off): rotated=%v err=%v", rotated, err)
	}
	if _, err := RotateLog(path, 10, -1); err == nil {
		t.Fatal("negative keep accepted")
	}
	// keep 0: truncated, no old file.
	if rotated, err := RotateLog(path, 10, 0); err != nil || !rotated {
		t.Fatalf("keep 0: rotated=%v err=%v", rotated, err)
	}
	if n := fileSize(t, path); n != 0 {
		t.Fatalf("keep 0: %d bytes left", n)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Fatalf("keep 0 left %d files", len(ents))
	}
}

// TestRotateLogKeepsTheLastMaxBytes: a log that grew far past the limit
// (while no agent ran) is rotated to its last maxBytes bytes only, so that
// .1 is no larger than the limit (and the copy needs no more room than
// that); the live log is truncated.
func TestRotateLogKeepsTheLastMaxBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	var all []byte
	for i := range 1000 {
		all = fmt.Appendf(all, "line %04d of the service's output\n", i) // 34 bytes
	}
	if err := os.WriteFile(path, all, 0o644); err != nil {
		t.Fatal(err)
	}
	const limit = 1000 // not a multiple of the line: the first line in .1 is cut
	rotated, err := RotateLog(path, limit, 2)
	if err != nil || !rotated {
		t.Fatalf("rotated=%v err=%v", rotated, err)
	}
	b, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, all[len(all)-limit:]) {
		t.Fatalf(".1 holds %d bytes, starting %q, want the log's last %d bytes", len(b), b[:min(len(b), 40)], limit)
	}
	if n := fileSize(t, path); n != 0 {
		t.Fatalf("live log is %d bytes after the rotation, want 0", n)
	}
	if _, err := os.Lstat(RotateTemp(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp file %s: %v, want none", RotateTemp(path), err)
	}
}

// TestRotateLogTruncatesWhenTheCopyFails: a copy to .1 that fails (here:
// its temp name is taken by a directory; on a full disk, ENOSPC, see the
// agent's TestServiceLogTruncatedWhenTheCopyFails) still truncates the log,
// and says so with the copy's error.
func TestRotateLogTruncatesWhenTheCopyFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x\n"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(RotateTemp(path), "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	rotated, err := RotateLog(path, 100, 3)
	if !rotated || err == nil || !strings.Contains(err.Error(), "truncated without a copy") {
		t.Fatalf("rotated=%v err=%v, want true and the copy's error", rotated, err)
	}
	if n := fileSize(t, path); n != 0 {
		t.Fatalf("live log is %d bytes after a failed copy, want 0 (truncated all the same)", n)
	}
	if _, err := os.Lstat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf(".1: %v, want none", err)
	}
}
