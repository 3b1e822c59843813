package install

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzUnpack feeds arbitrary tar streams to UnpackTar and checks that it
// never panics, never writes or links outside the root, and stays within
// its limits and work bounds (checkResources).
func FuzzUnpack(f *testing.F) {
	seeds := [][]entry{
		{{name: "ok/file", body: "x"}, {name: "ok/link", typ: tar.TypeSymlink, link: "file"}},
		{{name: "../escape", body: "x"}},
		{{name: "a/../../escape", body: "x"}},
		{{name: "/abs", body: "x"}},
		{{name: "l", typ: tar.TypeSymlink, link: "/etc"}},
		{{name: "l", typ: tar.TypeSymlink, link: "../outside"}},
		{{name: "l", typ: tar.TypeSymlink, link: ".."}, {name: "l/escape", body: "x"}},
		{{name: "b", typ: tar.TypeSymlink, link: "s/../x"}, {name: "s", typ: tar.TypeSymlink, link: "."}},
		{{name: "s", typ: tar.TypeSymlink, link: "."}, {name: "s/l", typ: tar.TypeSymlink, link: "../x"}},
		{{name: "f", body: "x"}, {name: "h", typ: tar.TypeLink, link: "f"}},
		{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}},
		{{name: "dev", typ: tar.TypeChar}, {name: "fifo", typ: tar.TypeFifo}},
		{{name: "d/", typ: tar.TypeDir}, {name: "d", body: "x"}},
	}
	for _, s := range seeds {
		f.Add(tarBytes(f, s...))
	}
	f.Add([]byte("not a tar"))
	lim := Limits{MaxFileBytes: 1 << 14, MaxTotalBytes: 1 << 16, MaxEntries: 64}
	fsyncUnpacked = false
	f.Cleanup(func() { fsyncUnpacked = true })
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		// A decoy beside the root: no link may reach it, nothing may change it.
		decoy := filepath.Join(parent, "x")
		if err := os.WriteFile(decoy, []byte("decoy"), 0o644); err != nil {
			t.Fatal(err)
		}
		u, _ := unpackTar(context.Background(), bytes.NewReader(data), root, lim) // errors are fine; escapes are not
		if b, err := os.ReadFile(decoy); err != nil || string(b) != "decoy" {
			t.Fatalf("decoy changed: %q %v", b, err)
		}
		checkResources(t, u, lim, root)
		// Even a rejected archive must not leave a link pointing out.
		assertNothingOutside(t, parent, root, "x")
	})
}

// FuzzUnpackEntries fuzzes the entry list instead of the tar bytes (tar
// checksums make raw mutations mostly invalid): each line is
// "<kind> <name> [<link target>]" with kind f (file), d (dir), l (symlink),
// h (hard link), c (char device), p (fifo). Same invariants as FuzzUnpack.
func FuzzUnpackEntries(f *testing.F) {
	for _, s := range []string{
		"f ok/file\nl ok/link file",
		"f ../escape",
		"f /abs",
		"l l ../outside",
		"l l ..\nf l/escape",
		"l b s/../x\nl s .",
		"l s .\nl s/l ../x",
		"d a\nl a/b ../../x",
		"l a b\nl b a",
		"f f\nh h f",
		"c dev\np fifo",
		"l up d/e\nf d/e/f\nl d/l ../up/../../../x",
	} {
		f.Add(s)
	}
	lim := Limits{MaxFileBytes: 1 << 10, MaxTotalBytes: 1 << 12, MaxEntries: 32}
	fsyncUnpacked = false
	f.Cleanup(func() { fsyncUnpacked = true })
	kinds := map[string]byte{"f": tar.TypeReg, "d": tar.TypeDir, "l": tar.TypeSymlink, "h": tar.TypeLink, "c": tar.TypeChar, "p": tar.TypeFifo}
	f.Fuzz(func(t *testing.T, spec string) {
		var entries []entry
		for _, line := range strings.Split(spec, "\n") {
			parts := strings.SplitN(line, " ", 3)
			if len(parts) < 2 || parts[1] == "" {
				continue
			}
			typ, ok := kinds[parts[0]]
			if !ok {
				continue
			}
			e := entry{name: parts[1], typ: typ, body: "x"}
			if len(parts) == 3 {
				e.link = parts[2]
			}
			entries = append(entries, e)
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link, Format: tar.FormatPAX}
			if e.typ == tar.TypeReg {
				hdr.Size = int64(len(e.body))
			}
			if tw.WriteHeader(hdr) != nil {
				return // not representable in tar
			}
			if e.typ == tar.TypeReg {
				tw.Write([]byte(e.body))
			}
		}
		tw.Close()
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		decoy := filepath.Join(parent, "x")
		if err := os.WriteFile(decoy, []byte("decoy"), 0o644); err != nil {
			t.Fatal(err)
		}
		u, _ := unpackTar(context.Background(), bytes.NewReader(buf.Bytes()), root, lim)
		if b, err := os.ReadFile(decoy); err != nil || string(b) != "decoy" {
			t.Fatalf("decoy changed: %q %v", b, err)
		}
		checkResources(t, u, lim, root)
		assertNothingOutside(t, parent, root, "x")
	})
}

// FuzzUnpackResources fuzzes the shape of archives: each line is
// "<kind>[*<n>] <name> [<link target>]" (kinds as in FuzzUnpackEntries),
// where *n repeats name n times joined by "/" (n up to 5000), so deep,
// long and wide archives are a few bytes of input. Whatever the archive,
// UnpackTar ends (no timeout needed: the work is counted) and checkResources
// holds: names made, bytes, depth, path lookups and symlink work within
// their limits, and the lookups within what the entries read justify.
func FuzzUnpackResources(f *testing.F) {
	for _, s := range []string{
		"d*1000 d",               // issue 13's archive
		"d*64 d",                 // the deepest directory allowed
		"f*64 d",                 // a file at the depth limit
		"f*63 d\nf*63 e\nf*63 d", // jumping between deep directories
		"f a/b/c/d/e/f/g",        // more implied directories than entries allowed
		"d a\nd*5 a\nf*6 a",
		"l*3 x ../../y\nf*2 x",
		"f*30 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"f*2 " + strings.Repeat("n", 256),
	} {
		f.Add(s)
	}
	lim := Limits{MaxFileBytes: 1 << 10, MaxTotalBytes: 1 << 12, MaxEntries: 64}
	fsyncUnpacked = false
	f.Cleanup(func() { fsyncUnpacked = true })
	kinds := map[string]byte{"f": tar.TypeReg, "d": tar.TypeDir, "l": tar.TypeSymlink, "h": tar.TypeLink, "c": tar.TypeChar, "p": tar.TypeFifo}
	f.Fuzz(func(t *testing.T, spec string) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for i, line := range strings.Split(spec, "\n") {
			if i >= 256 {
				break
			}
			parts := strings.SplitN(line, " ", 3)
			if len(parts) < 2 || parts[1] == "" {
				continue
			}
			kind, rep, _ := strings.Cut(parts[0], "*")
			typ, ok := kinds[kind]
			if !ok {
				continue
			}
			n := 1
			if rep != "" {
				var err error
				if n, err = strconv.Atoi(rep); err != nil || n < 1 || n > 5000 {
					continue
				}
			}
			name := strings.TrimSuffix(strings.Repeat(parts[1]+"/", n), "/")
			if typ == tar.TypeDir {
				name += "/"
			}
			hdr := &tar.Header{Name: name, Typeflag: typ, Mode: 0o644, Format: tar.FormatPAX}
			if len(parts) == 3 {
				hdr.Linkname = parts[2]
			}
			if typ == tar.TypeReg {
				hdr.Size = int64(len(parts[1]))
			}
			if tw.WriteHeader(hdr) != nil {
				return // not representable in tar
			}
			if typ == tar.TypeReg {
				tw.Write([]byte(parts[1]))
			}
		}
		tw.Close()
		parent, root := newRoot(t)
		decoy := filepath.Join(parent, "x")
		if err := os.WriteFile(decoy, []byte("decoy"), 0o644); err != nil {
			t.Fatal(err)
		}
		u, _ := unpackTar(context.Background(), bytes.NewReader(buf.Bytes()), root, lim)
		if b, err := os.ReadFile(decoy); err != nil || string(b) != "decoy" {
			t.Fatalf("decoy changed: %q %v", b, err)
		}
		checkResources(t, u, lim, root)
		assertNothingOutside(t, parent, root, "x")
	})
}
