package install

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// deepArchive is the tar of issue 13: one directory entry, comp/ n times.
func deepArchive(t testing.TB, comp string, n int) []byte {
	t.Helper()
	return tarBytes(t, entry{name: strings.Repeat(comp+"/", n), typ: tar.TypeDir})
}

// newRoot makes an empty root beside nothing else, for assertNothingOutside.
func newRoot(t testing.TB) (parent, root string) {
	t.Helper()
	parent = t.TempDir()
	root = filepath.Join(parent, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return parent, root
}

// treeStats counts what is under a root on disk.
type treeStats struct {
	dirs, files, links, depth int
	bytes                     int64
}

// statTree walks root through os.Root (names may be over PATH_MAX once
// joined to the temp dir).
func statTree(t testing.TB, root string) treeStats {
	t.Helper()
	r, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var s treeStats
	var walk func(r *os.Root, depth int)
	walk = func(r *os.Root, depth int) {
		d, err := r.Open(".")
		if err != nil {
			t.Fatal(err)
		}
		es, err := d.ReadDir(-1)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			s.depth = max(s.depth, depth+1)
			switch {
			case e.Type()&fs.ModeSymlink != 0:
				s.links++
			case e.IsDir():
				s.dirs++
				sub, err := r.OpenRoot(e.Name())
				if err != nil {
					t.Fatal(err)
				}
				walk(sub, depth+1)
				sub.Close()
			default:
				fi, err := e.Info()
				if err != nil {
					t.Fatal(err)
				}
				s.files++
				s.bytes += fi.Size()
			}
		}
	}
	walk(r, 0)
	return s
}

// checkResources fails t if an unpack (finished or refused) made more than
// its limits allow, or did more work than its entries justify. The work is
// counted, not timed: path components resolved through the os.Root are at
// most the depth limit plus one per entry read plus four per directory made
// (made, opened, and opened and synced for the fsync), and never over
// their budget; symlink checking stays within its own.
func checkResources(t testing.TB, u *unpacker, lim Limits, root string) {
	t.Helper()
	lim = lim.withDefaults()
	if u == nil {
		return // the root could not be opened
	}
	s := statTree(t, root)
	if n := s.dirs + s.files + s.links; n > lim.MaxEntries {
		t.Fatalf("%d names made (%+v), over the %d entries allowed", n, s, lim.MaxEntries)
	}
	if s.dirs != u.dirs {
		t.Fatalf("%d directories on disk, %d counted", s.dirs, u.dirs)
	}
	if s.depth > maxPathDepth {
		t.Fatalf("depth %d on disk, over %d", s.depth, maxPathDepth)
	}
	if s.bytes > lim.MaxTotalBytes || u.total > lim.MaxTotalBytes {
		t.Fatalf("%d bytes on disk (%d counted), over %d", s.bytes, u.total, lim.MaxTotalBytes)
	}
	if bound := u.headers*(maxPathDepth+1) + 4*u.dirs + 1; u.walk > bound {
		t.Fatalf("%d path lookups for %d entries and %d directories, over %d", u.walk, u.headers, u.dirs, bound)
	}
	if u.walk > pathWalkLimit+1 {
		t.Fatalf("%d path lookups, over the budget %d", u.walk, pathWalkLimit)
	}
	if u.linkBytes > maxLinkBytes || u.linkSteps > maxLinkComponents+1 {
		t.Fatalf("symlinks: %d bytes kept, %d components checked", u.linkBytes, u.linkSteps)
	}
	if len(u.stack) != 1 {
		t.Fatalf("%d directories left open besides the root", len(u.stack)-1)
	}
}

// The archive of issue 13 (153 bytes gzipped: one entry, "d/" 1,000
// times) took 4.5 s to stage, 24 s at 2,000 and 104 s at 4,000. It is
// refused now before anything is made: its name is over the depth limit.
func TestDeepArchiveRefusedBeforeAnyWork(t *testing.T) {
	for _, n := range []int{maxPathDepth + 1, 1000, 2000, 4000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tb := deepArchive(t, "d", n)
			if n == 1000 {
				t.Logf("the archive: %d bytes gzipped, %d bytes of tar", len(gz(t, tb)), len(tb))
			}
			parent, root := newRoot(t)
			u, err := unpackTar(context.Background(), bytes.NewReader(tb), root, Limits{})
			want := fmt.Sprintf("%d path components, over the limit of %d", n, maxPathDepth)
			if 2*n > maxPathBytes {
				want = fmt.Sprintf("name of %d bytes, over the limit of %d", 2*n, maxPathBytes)
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), want) {
				t.Fatalf("err %v, want ErrLimit with %q", err, want)
			}
			if u.walk != 0 || u.dirs != 0 {
				t.Fatalf("%d path lookups and %d directories before refusing, want none", u.walk, u.dirs)
			}
			if len(err.Error()) > 400 {
				t.Fatalf("the error quotes the whole name: %d bytes", len(err.Error()))
			}
			if s := statTree(t, root); s != (treeStats{}) {
				t.Fatalf("left %+v", s)
			}
			assertNothingOutside(t, parent, root)
		})
	}
}

// Names are bounded in length, depth and component length; at the limits
// they unpack.
func TestUnpackNameLimits(t *testing.T) {
	long := strings.Repeat("n", maxNameComponent)
	atDepth := strings.TrimSuffix(strings.Repeat("d/", maxPathDepth-1), "/")
	tests := []struct {
		name string
		e    entry
		msg  string // "" means accepted
	}{
		{"depth at the limit", entry{name: atDepth + "/f", body: "x"}, ""},
		{"depth over the limit", entry{name: atDepth + "/d/f", body: "x"}, "65 path components, over the limit of 64"},
		{"dir over the depth limit", entry{name: atDepth + "/d/e/", typ: tar.TypeDir}, "65 path components, over the limit of 64"},
		{"slashes do not count", entry{name: strings.Repeat("a//", maxPathDepth-1) + "f", body: "x"}, ""},
		{"component at the limit", entry{name: "a/" + long, body: "x"}, ""},
		{"component over the limit", entry{name: "a/" + long + "n", body: "x"}, "a name component of 256 bytes, over the limit of 255"},
		// (Its absolute name is over PATH_MAX: only the os.Root sees it.)
		{"name at the limit", entry{name: strings.Repeat(long[:127]+"/", 32)[:maxPathBytes-1] + "f", body: "x"}, ""},
		{"name over the limit", entry{name: strings.Repeat("x", 100) + "/" + strings.Repeat(long[:200]+"/", 20), typ: tar.TypeDir}, "name of 4121 bytes, over the limit of 4096"},
		{"symlink over the depth limit", entry{name: atDepth + "/d/l", typ: tar.TypeSymlink, link: "x"}, "65 path components"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent, root := newRoot(t)
			err := UnpackTar(context.Background(), bytes.NewReader(tarBytes(t, tt.e)), root, Limits{})
			if tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err %v, want ErrLimit with %q", err, tt.msg)
			}
			if s := statTree(t, root); s != (treeStats{}) {
				t.Fatalf("left %+v", s)
			}
			assertNothingOutside(t, parent, root)
		})
	}
}

// Every directory an entry implies counts toward the entry limit: a/b/c/f
// is four entries. They used to count as none, so one entry could make as
// many directories as its name had components.
func TestImpliedDirectoriesCountAsEntries(t *testing.T) {
	lim := Limits{MaxEntries: 5}
	ok := tarBytes(t, entry{name: "a/b/c/d/f", body: "x"}) // 4 directories + 1 file
	_, root := newRoot(t)
	if err := UnpackTar(context.Background(), bytes.NewReader(ok), root, lim); err != nil {
		t.Fatalf("5 entries with a limit of 5: %v", err)
	}
	over := tarBytes(t, entry{name: "a/b/c/d/e/f", body: "x"}) // 5 + 1
	parent, root := newRoot(t)
	err := UnpackTar(context.Background(), bytes.NewReader(over), root, lim)
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "more than 5 entries (counting the 5 directories it implies)") {
		t.Fatalf("err %v, want ErrLimit counting implied directories", err)
	}
	if s := statTree(t, root); s != (treeStats{}) {
		t.Fatalf("made %+v before refusing", s)
	}
	assertNothingOutside(t, parent, root)
	// An explicit entry for a directory made earlier is an entry too, and
	// directories made once are not counted again.
	mixed := tarBytes(t, entry{name: "a/b/f", body: "x"}, entry{name: "a/", typ: tar.TypeDir}, entry{name: "a/b/g", body: "y"})
	_, root = newRoot(t)
	u, err := unpackTar(context.Background(), bytes.NewReader(mixed), root, Limits{})
	if err != nil || u.entries != 5 || u.dirs != 2 {
		t.Fatalf("entries %d dirs %d (%v), want 5 and 2", u.entries, u.dirs, err)
	}
}

// The work of unpacking is counted in path components resolved through the
// os.Root. Directories stay open along the path of the latest entry, so an
// archive in the usual order costs about one lookup per entry and two per
// directory (and two more per directory for the fsyncs), whatever the depth;
// one that jumps between deep directories costs at most the depth per entry.
func TestUnpackWorkIsLinear(t *testing.T) {
	deep := strings.TrimSuffix(strings.Repeat("d/", maxPathDepth-1), "/")
	t.Run("many files in a deep directory", func(t *testing.T) {
		var es []entry
		for i := range 1000 {
			es = append(es, entry{name: fmt.Sprintf("%s/f%04d", deep, i), body: "x"})
		}
		_, root := newRoot(t)
		u, err := unpackTar(context.Background(), bytes.NewReader(tarBytes(t, es...)), root, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		// 63 directories: mkdir + open each; 1,000 files: one create each;
		// fsync: the root synced, each directory opened and synced.
		want := 2*63 + 1000 + 1 + 2*63
		if u.walk != want || u.entries != 1063 || u.dirs != 63 {
			t.Fatalf("%d lookups, %d entries, %d dirs; want %d, 1063, 63 (it was 64 lookups per file)", u.walk, u.entries, u.dirs, want)
		}
	})
	t.Run("deepest directory", func(t *testing.T) {
		_, root := newRoot(t)
		u, err := unpackTar(context.Background(), bytes.NewReader(deepArchive(t, "d", maxPathDepth)), root, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if want := 1 + 2*63 + 1 + 2*64; u.walk != want || u.dirs != 64 || u.entries != 64 {
			t.Fatalf("%d lookups, %d dirs, %d entries; want %d, 64, 64", u.walk, u.dirs, u.entries, want)
		}
	})
	t.Run("jumping between deep directories", func(t *testing.T) {
		es := []entry{{name: "a/" + deep[2:] + "/", typ: tar.TypeDir}, {name: "b/" + deep[2:] + "/", typ: tar.TypeDir}}
		for i := range 200 {
			es = append(es, entry{name: fmt.Sprintf("%c/%s/f%03d", "ab"[i%2], deep[2:], i), body: "x"})
		}
		_, root := newRoot(t)
		u, err := unpackTar(context.Background(), bytes.NewReader(tarBytes(t, es...)), root, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if bound := u.headers*(maxPathDepth+1) + 4*u.dirs; u.walk > bound {
			t.Fatalf("%d lookups, over %d", u.walk, bound)
		}
		if u.walk < 200*(maxPathDepth-1) {
			t.Fatalf("%d lookups: the jumps are not counted", u.walk)
		}
	})
	t.Run("over the budget", func(t *testing.T) {
		defer func(n int) { pathWalkLimit = n }(pathWalkLimit)
		pathWalkLimit = 1000
		es := []entry{}
		for i := range 100 {
			es = append(es, entry{name: fmt.Sprintf("%c/%s/f%03d", "ab"[i%2], deep[2:], i), body: "x"})
		}
		parent, root := newRoot(t)
		u, err := unpackTar(context.Background(), bytes.NewReader(tarBytes(t, es...)), root, Limits{})
		if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "unpacking took over 1000 path lookups") {
			t.Fatalf("err %v, want ErrLimit on the lookups", err)
		}
		if u.walk != 1001 {
			t.Fatalf("stopped after %d lookups, want 1001", u.walk)
		}
		assertNothingOutside(t, parent, root)
	})
}

// The names and targets of an archive's symlinks, kept until all are
// checked, are bounded.
func TestSymlinkBytesLimit(t *testing.T) {
	target := strings.Repeat("t/", maxLinkTarget/2-1) + "t" // 4095 bytes, lexically inside
	var es []entry
	per := len(target) + len("l0000")
	n := maxLinkBytes/per + 1
	for i := range n {
		es = append(es, entry{name: fmt.Sprintf("l%04d", i), typ: tar.TypeSymlink, link: target})
	}
	parent, root := newRoot(t)
	fsyncUnpacked = false
	defer func() { fsyncUnpacked = true }()
	u, err := unpackTar(context.Background(), bytes.NewReader(tarBytes(t, es...)), root, Limits{})
	want := fmt.Sprintf(`entry "l%04d": symlink names and targets over %d bytes`, n-1, maxLinkBytes)
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v, want %q", err, want)
	}
	if u.linkBytes > maxLinkBytes {
		t.Fatalf("kept %d bytes", u.linkBytes)
	}
	assertNothingOutside(t, parent, root)
}

// cancelAfter cancels a context once n bytes have been read through it.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= n
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

// Unpacking stops when its context is cancelled: a newer assignment or the
// agent's shutdown does not wait for an archive to be unpacked.
func TestUnpackIsCancellable(t *testing.T) {
	var es []entry
	for i := range 100 {
		es = append(es, entry{name: fmt.Sprintf("d/f%03d", i), body: strings.Repeat("x", 1000)})
	}
	tb := tarBytes(t, es...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, root := newRoot(t)
	// Cancelled once the first file's data has been read.
	r := &cancelAfter{r: bytes.NewReader(tb), n: 3 * 512, cancel: cancel}
	u, err := unpackTar(ctx, r, root, Limits{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if u.headers > 2 {
		t.Fatalf("read %d entries after the cancel", u.headers)
	}
	// Stage: cancelled before it starts, it leaves nothing.
	in := newInstaller(t, Limits{})
	art := gz(t, tb)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	f, err := in.Fetch(context.Background(), bytes.NewReader(art), want)
	if err != nil {
		t.Fatal(err)
	}
	v, err := in.Verify(f, want)
	if err != nil {
		t.Fatal(err)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if _, err := in.Stage(done, "web", "1", v); !errors.Is(err, context.Canceled) {
		t.Fatalf("stage: %v, want context.Canceled", err)
	}
	if es, _ := os.ReadDir(in.serviceDir("web")); len(es) != 0 {
		t.Fatalf("left %v", es)
	}
	if n := tmpFiles(t, in); len(n) != 0 {
		t.Fatalf("verified file kept: %v", n)
	}
}

// BenchmarkUnpackDeep unpacks, with fsync, the archive of issue 13 (one
// entry "d/" N times: 153 bytes gzipped at N=1,000), which took 4.5 s at
// N=1,000, 24 s at 2,000 and 104 s at 4,000 on the attacker's machine; the
// deepest directory allowed; 1,000 files in it; and 1,000 files jumping
// between two directories of that depth. It reports the path lookups per
// archive (the counted work) besides the time.
func BenchmarkUnpackDeep(b *testing.B) {
	deep := strings.TrimSuffix(strings.Repeat("d/", maxPathDepth-1), "/")
	files := func(name func(i int) string) func(testing.TB) []byte {
		return func(t testing.TB) []byte {
			var es []entry
			for i := range 1000 {
				es = append(es, entry{name: name(i), body: "x"})
			}
			return tarBytes(t, es...)
		}
	}
	cases := []struct {
		name string
		tar  func(testing.TB) []byte
	}{
		{"issue13/N=250", func(t testing.TB) []byte { return deepArchive(t, "d", 250) }},
		{"issue13/N=500", func(t testing.TB) []byte { return deepArchive(t, "d", 500) }},
		{"issue13/N=1000", func(t testing.TB) []byte { return deepArchive(t, "d", 1000) }},
		{"issue13/N=2000", func(t testing.TB) []byte { return deepArchive(t, "d", 2000) }},
		{"depth=64", func(t testing.TB) []byte { return deepArchive(t, "d", maxPathDepth) }},
		{"depth=64/files=1000", files(func(i int) string { return fmt.Sprintf("%s/f%04d", deep, i) })},
		{"depth=64/files=1000/jumping", files(func(i int) string { return fmt.Sprintf("%c/%s/f%04d", "ab"[i%2], deep[2:], i) })},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			tb := c.tar(b)
			parent := b.TempDir()
			walk := 0
			for i := 0; b.Loop(); i++ {
				root := filepath.Join(parent, fmt.Sprint(i))
				if err := os.Mkdir(root, 0o755); err != nil {
					b.Fatal(err)
				}
				u, err := unpackTar(context.Background(), bytes.NewReader(tb), root, Limits{})
				if err != nil && !errors.Is(err, ErrLimit) {
					b.Fatal(err)
				}
				walk = u.walk
			}
			b.ReportMetric(float64(walk), "lookups/op")
		})
	}
}
