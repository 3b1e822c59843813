package install

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// entry is one tar entry for test archives.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarBytes(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Linkname: e.link, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("header %q: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func newInstaller(t *testing.T, lim Limits) *Installer {
	t.Helper()
	in, err := New(t.TempDir(), lim, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func tmpFiles(t *testing.T, in *Installer) []string {
	t.Helper()
	es, err := os.ReadDir(in.tmpDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestFetchVerify(t *testing.T) {
	ctx := context.Background()
	data := []byte("hello artifact")
	want := Artifact{SHA256: digest(data), Size: int64(len(data))}

	t.Run("ok", func(t *testing.T) {
		in := newInstaller(t, Limits{})
		f, err := in.Fetch(ctx, bytes.NewReader(data), want)
		if err != nil {
			t.Fatal(err)
		}
		v, err := in.Verify(f, want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(v.Path())
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("file %q %v", got, err)
		}
	})
	t.Run("digest mismatch deletes", func(t *testing.T) {
		in := newInstaller(t, Limits{})
		other := Artifact{SHA256: strings.Repeat("0", 64), Size: want.Size}
		f, err := in.Fetch(ctx, bytes.NewReader(data), other)
		if err != nil {
			t.Fatal(err)
		}
		_, err = in.Verify(f, other)
		if !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("err %v", err)
		}
		// It names what was expected, never the digest or size of the bytes
		// that came (whatever answered, e.g. an internal page).
		if !strings.Contains(err.Error(), "not the assigned sha256 "+other.SHA256) || strings.Contains(err.Error(), want.SHA256) {
			t.Fatalf("error names the unverified digest, or not the expected one: %v", err)
		}
		if _, err := os.Stat(f.Path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("mismatched file kept: %v", err)
		}
	})
	t.Run("more than declared", func(t *testing.T) {
		in := newInstaller(t, Limits{})
		_, err := in.Fetch(ctx, bytes.NewReader(data), Artifact{SHA256: want.SHA256, Size: 5})
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err %v", err)
		}
		if n := tmpFiles(t, in); len(n) != 0 {
			t.Fatalf("temp files left: %v", n)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		in := newInstaller(t, Limits{})
		_, err := in.Fetch(ctx, bytes.NewReader(data), Artifact{SHA256: want.SHA256, Size: 100})
		if err == nil || !strings.Contains(err.Error(), "truncated: fewer than the declared 100 bytes") || strings.Contains(err.Error(), "14") {
			t.Fatalf("err %v (it must not say how many bytes came)", err)
		}
		if n := tmpFiles(t, in); len(n) != 0 {
			t.Fatalf("temp files left: %v", n)
		}
	})
	t.Run("over cap", func(t *testing.T) {
		in := newInstaller(t, Limits{MaxArtifactBytes: 10})
		_, err := in.Fetch(ctx, bytes.NewReader(data), want)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "over the cap 10") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("bad digest syntax", func(t *testing.T) {
		in := newInstaller(t, Limits{})
		_, err := in.Fetch(ctx, bytes.NewReader(data), Artifact{SHA256: "XYZ", Size: 3})
		if err == nil || !strings.Contains(err.Error(), "sha256") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		in := newInstaller(t, Limits{})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := in.Fetch(cctx, bytes.NewReader(data), want); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	})
}

func stageBytes(t *testing.T, in *Installer, service, version string, art []byte) (string, error) {
	t.Helper()
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	f, err := in.Fetch(context.Background(), bytes.NewReader(art), want)
	if err != nil {
		t.Fatal(err)
	}
	v, err := in.Verify(f, want)
	if err != nil {
		t.Fatal(err)
	}
	return in.Stage(context.Background(), service, version, v)
}

func TestStageAndSwitch(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t,
		entry{name: "bin/", typ: tar.TypeDir},
		entry{name: "bin/run", body: "#!/bin/sh\n", mode: 0o4777},
		entry{name: "lib/a/b.txt", body: "deep"},
		entry{name: "lib/link", typ: tar.TypeSymlink, link: "a/b.txt"},
		entry{name: "lib/a/up", typ: tar.TypeSymlink, link: "../../bin/run"},
	))
	dir, err := stageBytes(t, in, "web", "1.0.0", art)
	if err != nil {
		t.Fatal(err)
	}
	if dir != in.ReleaseDir("web", "1.0.0") {
		t.Fatalf("dir %s", dir)
	}
	fi, err := os.Stat(filepath.Join(dir, "bin/run"))
	if err != nil || fi.Mode().Perm() != 0o755 || fi.Mode()&fs.ModeSetuid != 0 {
		t.Fatalf("bin/run mode %v err %v", fi.Mode(), err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "lib/link")); err != nil || string(b) != "deep" {
		t.Fatalf("link: %q %v", b, err)
	}
	if !in.Staged("web", "1.0.0", digest(art)) || in.Staged("web", "1.0.0", strings.Repeat("1", 64)) {
		t.Fatal("Staged wrong")
	}
	if n := tmpFiles(t, in); len(n) != 0 {
		t.Fatalf("verified artifact not removed: %v", n)
	}
	// Staging the same release again keeps it.
	if _, err := stageBytes(t, in, "web", "1.0.0", art); err != nil {
		t.Fatalf("restage: %v", err)
	}
	if err := in.Switch("web", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if cur, err := in.Current("web"); err != nil || cur != "1.0.0" {
		t.Fatalf("current %q %v", cur, err)
	}
	// Another artifact under the version `current` points at is refused.
	other := gz(t, tarBytes(t, entry{name: "x", body: "other"}))
	if _, err := stageBytes(t, in, "web", "1.0.0", other); err == nil || !strings.Contains(err.Error(), "is current") {
		t.Fatalf("err %v", err)
	}
	if !in.Staged("web", "1.0.0", digest(art)) {
		t.Fatal("refused restage changed the current release")
	}
	if _, err := stageBytes(t, in, "web", "2.0.0", other); err != nil {
		t.Fatal(err)
	}
	if err := in.Switch("web", "2.0.0"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(in.serviceDir("web"), "current", "x")); err != nil || string(b) != "other" {
		t.Fatalf("through current: %q %v", b, err)
	}
	if err := in.Switch("web", "9.9"); err == nil || !strings.Contains(err.Error(), "not staged") {
		t.Fatalf("switch to unstaged: %v", err)
	}
	if err := in.Switch("web", "current"); !errors.Is(err, ErrReserved) {
		t.Fatalf("switch to reserved: %v", err)
	}
	// No temp links left behind.
	if m, _ := filepath.Glob(filepath.Join(in.serviceDir("web"), ".current-*")); len(m) != 0 {
		t.Fatalf("temp links left: %v", m)
	}
	if err := in.Prune("web", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]bool{"1.0.0": true, "2.0.0": true} {
		if _, err := os.Stat(in.ReleaseDir("web", v)); (err == nil) != want {
			t.Fatalf("after prune %s exists=%v", v, err == nil)
		}
	}
	if err := in.Switch("web", ""); err != nil {
		t.Fatal(err)
	}
	if cur, err := in.Current("web"); err != nil || cur != "" {
		t.Fatalf("current after remove %q %v", cur, err)
	}
	if err := in.Prune("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(in.ReleaseDir("web", "1.0.0")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("prune kept 1.0.0: %v", err)
	}
}

func TestStageFailureLeavesNothing(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "ok", body: "fine"}, entry{name: "../evil", body: "x"}))
	_, err := stageBytes(t, in, "web", "1", art)
	if !errors.Is(err, ErrUnsafeEntry) {
		t.Fatalf("err %v", err)
	}
	es, _ := os.ReadDir(in.serviceDir("web"))
	if len(es) != 0 {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Fatalf("left behind: %v", names)
	}
	if in.Staged("web", "1", digest(art)) {
		t.Fatal("half-unpacked release staged")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(in.serviceDir("web")), "evil")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("wrote outside")
	}
}

func TestStageReservedAndCorrupt(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "a", body: "b"}))
	if _, err := stageBytes(t, in, "web", "current", art); !errors.Is(err, ErrReserved) {
		t.Fatalf("err %v", err)
	}
	if _, err := stageBytes(t, in, "web", "1", []byte("not gzip at all")); err == nil || !strings.Contains(err.Error(), "gzip") {
		t.Fatalf("err %v", err)
	}
}

func TestUnpackRejects(t *testing.T) {
	big := strings.Repeat("x", 100)
	lim := Limits{MaxFileBytes: 64, MaxTotalBytes: 100, MaxEntries: 5}
	tests := []struct {
		name    string
		entries []entry
		sent    error
		msg     string
	}{
		{"absolute", []entry{{name: "/etc/passwd", body: "x"}}, ErrUnsafeEntry, `entry "/etc/passwd": absolute path`},
		{"dotdot", []entry{{name: "a/../../x", body: "x"}}, ErrUnsafeEntry, `entry "a/../../x": ".." in path`},
		{"dotdot inside", []entry{{name: "a/../b", body: "x"}}, ErrUnsafeEntry, `entry "a/../b": ".." in path`},
		{"symlink absolute", []entry{{name: "l", typ: tar.TypeSymlink, link: "/etc"}}, ErrUnsafeEntry, `entry "l": symlink to absolute path "/etc"`},
		{"symlink escape", []entry{{name: "a/l", typ: tar.TypeSymlink, link: "../../x"}}, ErrUnsafeEntry, `entry "a/l": symlink target "../../x" leaves`},
		{"symlink escape via link", []entry{
			{name: "s", typ: tar.TypeSymlink, link: "."},
			{name: "b", typ: tar.TypeSymlink, link: "s/../x"},
		}, ErrUnsafeEntry, `entry "b": symlink target "s/../x" leaves`},
		{"symlink escape via deeper link", []entry{
			{name: "d/e/f", body: "x"},
			{name: "up", typ: tar.TypeSymlink, link: "d/e"},
			{name: "d/l", typ: tar.TypeSymlink, link: "../up/../../../x"},
		}, ErrUnsafeEntry, `entry "d/l": symlink target "../up/../../../x" leaves`},
		{"symlink loop", []entry{
			{name: "a", typ: tar.TypeSymlink, link: "b"},
			{name: "b", typ: tar.TypeSymlink, link: "a"},
		}, ErrUnsafeEntry, `too many levels of symlinks`},
		{"under symlink", []entry{
			{name: "d", typ: tar.TypeSymlink, link: "."},
			{name: "d/f", body: "x"},
		}, ErrUnsafeEntry, `entry "d/f": parent "d" is a symlink`},
		{"hard link", []entry{{name: "f", body: "x"}, {name: "h", typ: tar.TypeLink, link: "f"}}, ErrUnsafeEntry, `entry "h": hard link to "f" not allowed`},
		{"char device", []entry{{name: "null", typ: tar.TypeChar}}, ErrUnsafeEntry, `entry "null": device file not allowed`},
		{"block device", []entry{{name: "sda", typ: tar.TypeBlock}}, ErrUnsafeEntry, `entry "sda": device file not allowed`},
		{"fifo", []entry{{name: "p", typ: tar.TypeFifo}}, ErrUnsafeEntry, `entry "p": fifo not allowed`},
		{"duplicate", []entry{{name: "f", body: "x"}, {name: "./f", body: "y"}}, ErrUnsafeEntry, `entry "./f": duplicate entry`},
		{"file over dir", []entry{{name: "d/f", body: "x"}, {name: "d", body: "y"}}, ErrUnsafeEntry, `entry "d": already exists as a directory`},
		{"file too big", []entry{{name: "big", body: big}}, ErrLimit, `entry "big": size 100 over the per-file limit 64`},
		{"total too big", []entry{{name: "a", body: big[:60]}, {name: "b", body: big[:60]}}, ErrLimit, `entry "b": total size over the limit 100`},
		{"too many entries", []entry{{name: "1"}, {name: "2"}, {name: "3"}, {name: "4"}, {name: "5"}, {name: "6"}}, ErrLimit, `entry "6": more than 5 entries`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			err := UnpackTar(context.Background(), bytes.NewReader(tarBytes(t, tt.entries...)), root, lim)
			if !errors.Is(err, tt.sent) {
				t.Fatalf("err %v, want %v", err, tt.sent)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err %q does not contain %q", err, tt.msg)
			}
			assertNothingOutside(t, parent, root)
		})
	}
}

func TestUnpackAllowsInnerLinks(t *testing.T) {
	root := t.TempDir()
	err := UnpackTar(context.Background(), bytes.NewReader(tarBytes(t,
		entry{name: "lib/libx.so.1", body: "so"},
		entry{name: "lib/libx.so", typ: tar.TypeSymlink, link: "libx.so.1"},
		entry{name: "bin/tool", typ: tar.TypeSymlink, link: "../lib/libx.so"},
		entry{name: "dangling", typ: tar.TypeSymlink, link: "missing/x"},
		entry{name: "self", typ: tar.TypeSymlink, link: "."},
	)), root, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "bin/tool")); err != nil || string(b) != "so" {
		t.Fatalf("%q %v", b, err)
	}
}

// Archives from old tar writers mark regular files with typeflag '\x00'
// (the deprecated tar.TypeRegA, which tar.Writer no longer writes): they
// unpack like TypeReg files, and such a name ending in "/" as a directory.
func TestUnpackLegacyTypeflag(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "d_", Typeflag: tar.TypeReg, Mode: 0o755, Format: tar.FormatUSTAR}, // d/ below
		{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2, Format: tar.FormatUSTAR},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte("hi")[:h.Size]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	// Rewrite both headers (at 0 and 1024: d/f's data takes one block) to
	// typeflag '\x00' with a checksum to match, and name the first "d/",
	// which tar.Writer refuses for a regular file.
	b := buf.Bytes()
	b[1] = '/'
	for _, off := range []int{0, 1024} {
		h := b[off : off+512]
		h[156] = 0
		copy(h[148:156], "        ")
		sum := 0
		for _, c := range h {
			sum += int(c)
		}
		copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	}
	root := t.TempDir()
	if err := UnpackTar(context.Background(), bytes.NewReader(b), root, Limits{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "d")); err != nil || !fi.IsDir() {
		t.Fatalf("d: %v %v, want a directory", fi, err)
	}
	if got, err := os.ReadFile(filepath.Join(root, "d/f")); err != nil || string(got) != "hi" {
		t.Fatalf("d/f: %q %v", got, err)
	}
}

// assertNothingOutside fails if parent holds anything but root, or if any
// symlink under root resolves outside it.
func assertNothingOutside(t testing.TB, parent, root string, allow ...string) {
	t.Helper()
	es, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Name() != filepath.Base(root) && !slices.Contains(allow, e.Name()) {
			t.Fatalf("wrote outside the root: %s", e.Name())
		}
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		r, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil // dangling or a loop: never leaves (checked by resolve)
		}
		if r != realRoot && !strings.HasPrefix(r, realRoot+string(filepath.Separator)) {
			t.Fatalf("symlink %s resolves outside the root to %s", p, r)
		}
		return nil
	})
}
