package install

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// Versions that look like the temp names New cleans up keep their markers
// across agent restarts (they used to lose them: Staged false, and Stage
// failed "already exists" for ever).
func TestMarkersSurviveRestartForAnyVersionName(t *testing.T) {
	dir := t.TempDir()
	in, err := New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	art := gz(t, tarBytes(t, entry{name: "a", body: "b"}))
	versions := []string{"stage-1", "current-2", "1.0.0", "x.tmp"}
	for _, v := range versions {
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatalf("stage %s: %v", v, err)
		}
	}
	// An interrupted install leaves temp names behind; the restart removes
	// those and nothing else.
	if err := os.Mkdir(filepath.Join(in.serviceDir("web"), ".stage-9-123"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("1.0.0", filepath.Join(in.serviceDir("web"), ".current-77")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(markerTemp(in.markerPath("web", "2.0.0")), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err = New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range versions {
		if !in.Staged("web", v, digest(art)) {
			t.Fatalf("%s lost its marker on restart", v)
		}
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatalf("restage %s: %v", v, err)
		}
	}
	for _, leftover := range []string{".stage-9-123", ".current-77", markerDirName + "/.2.0.0.tmp"} {
		if _, err := os.Lstat(filepath.Join(in.serviceDir("web"), leftover)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("leftover %s kept: %v", leftover, err)
		}
	}
}

// A crash in the middle of Prune (or of any removal) leaves a partial tree:
// it must not count as staged, and the next Stage replaces it.
func TestStageReplacesHalfRemovedRelease(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "bin/run", body: "run"}, entry{name: "lib/x", body: "x"}))
	if _, err := stageBytes(t, in, "web", "1", art); err != nil {
		t.Fatal(err)
	}
	// What Prune does before a crash: marker gone (durably), part of the tree gone.
	if err := in.removeMarker("web", "1"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(in.ReleaseDir("web", "1"), "lib")); err != nil {
		t.Fatal(err)
	}
	if in.Staged("web", "1", digest(art)) {
		t.Fatal("half-removed release counts as staged")
	}
	dir, err := stageBytes(t, in, "web", "1", art)
	if err != nil {
		t.Fatalf("restage after a crash mid-prune: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "lib/x")); err != nil || string(b) != "x" {
		t.Fatalf("restaged tree incomplete: %q %v", b, err)
	}
	if !in.Staged("web", "1", digest(art)) {
		t.Fatal("not staged after restage")
	}
	// A release of another digest under a version that is not current is
	// replaced too (the artifact was verified; the old tree is not running).
	other := gz(t, tarBytes(t, entry{name: "new", body: "n"}))
	if _, err := stageBytes(t, in, "web", "1", other); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bin/run")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old tree kept: %v", err)
	}
	if !in.Staged("web", "1", digest(other)) || in.Staged("web", "1", digest(art)) {
		t.Fatal("marker not updated")
	}
	if n := tmpFiles(t, in); len(n) != 0 {
		t.Fatalf("tmp files left: %v", n)
	}
}

func TestPruneRemovesMarkers(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "a", body: "b"}))
	for _, v := range []string{"1", "2"} {
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Prune("web", "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(in.markerPath("web", "1")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("marker of pruned release kept: %v", err)
	}
	if !in.Staged("web", "2", digest(art)) {
		t.Fatal("kept release lost its marker")
	}
}

// Once rename(2) has happened the switch has happened: a failing fsync of
// the directory must not be reported as a switch that did not happen.
func TestSwitchFsyncFailureIsNotAFailedSwitch(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "a", body: "b"}))
	if _, err := stageBytes(t, in, "web", "2", art); err != nil {
		t.Fatal(err)
	}
	syncDirFn = func(string) error { return errors.New("EIO") }
	t.Cleanup(func() { syncDirFn = syncDir })
	if err := in.Switch("web", "2"); err != nil {
		t.Fatalf("switch reported failed after rename: %v", err)
	}
	if cur, err := in.Current("web"); err != nil || cur != "2" {
		t.Fatalf("current %q %v", cur, err)
	}
	// A switch that really fails (nothing staged) still says so.
	if err := in.Switch("web", "3"); err == nil {
		t.Fatal("switch to an unstaged release succeeded")
	}
}

func TestDiscardVerified(t *testing.T) {
	in := newInstaller(t, Limits{})
	data := []byte("artifact")
	want := Artifact{SHA256: digest(data), Size: int64(len(data))}
	f, err := in.Fetch(t.Context(), bytes.NewReader(data), want)
	if err != nil {
		t.Fatal(err)
	}
	v, err := in.Verify(f, want)
	if err != nil {
		t.Fatal(err)
	}
	in.DiscardVerified(v)
	in.DiscardVerified(nil)
	if n := tmpFiles(t, in); len(n) != 0 {
		t.Fatalf("verified file kept: %v", n)
	}
}

// chainEntries are a file and symlinks whose targets are long (about 1600
// components) and each end in the previous link: every link resolves
// through all links before it; fanOut more links point at the chain's end.
func chainEntries(chain, fanOut int) []entry {
	pad := strings.Repeat("x/", chainPad) + strings.Repeat("../", chainPad)
	es := []entry{{name: "f", body: "x"}}
	prev := "f"
	for i := 0; i < chain; i++ {
		n := fmt.Sprintf("c%02d", i)
		es = append(es, entry{name: n, typ: tar.TypeSymlink, link: pad + prev})
		prev = n
	}
	for i := 0; i < fanOut; i++ {
		es = append(es, entry{name: fmt.Sprintf("f%03d", i), typ: tar.TypeSymlink, link: pad + prev})
	}
	return es
}

// chainPad is how many "x/" (and as many "../") lead every chain target.
const chainPad = 800

func chainTar(t testing.TB, chain, fanOut int) []byte {
	t.Helper()
	return tarBytes(t, chainEntries(chain, fanOut)...)
}

// checkChain runs the link check of chainEntries the way checkLinks does
// and returns the error and the path components it processed.
func checkChain(chain, fanOut int) (used int, err error) {
	links := map[string]string{}
	var names []string
	for _, e := range chainEntries(chain, fanOut) {
		if e.typ == tar.TypeSymlink {
			links[e.name] = e.link
			names = append(names, e.name)
		}
	}
	lt := newLinkTree(links)
	index := map[string]int32{}
	for i := range lt.nodes {
		if lt.nodes[i].link != "" {
			index[lt.nodes[i].link] = int32(i)
		}
	}
	budget := maxLinkComponents
	for _, n := range names {
		if err = lt.resolve(index[n], &budget); err != nil {
			break
		}
	}
	return maxLinkComponents - budget, err
}

// Checking links is bounded: a small archive of chained long links once
// took 0.7 s for 30 links and 12 s for 39 links plus 200 into the end of
// the chain. The work is counted here, in path components against the
// archive's budget; BenchmarkLinkCheck measures the time.
func TestLinkCheckIsBounded(t *testing.T) {
	t.Run("30 chained links accepted", func(t *testing.T) {
		b := chainTar(t, 30, 0)
		if err := UnpackTar(context.Background(), bytes.NewReader(b), t.TempDir(), Limits{}); err != nil {
			t.Fatalf("%d-byte archive: %v", len(b), err)
		}
		// Link k resolves through its own target and those of the k links
		// before it, each component once: 2*chainPad+1 per target.
		want := 0
		for k := range 30 {
			want += (k + 1) * (2*chainPad + 1)
		}
		used, err := checkChain(30, 0)
		if err != nil || used != want {
			t.Fatalf("checked %d path components (%v), want %d: each component once per resolution", used, err, want)
		}
	})
	t.Run("fan-out over the budget rejected", func(t *testing.T) {
		b := chainTar(t, 39, 200)
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		err := UnpackTar(context.Background(), bytes.NewReader(b), root, Limits{})
		if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), `entry "c`) ||
			!strings.Contains(err.Error(), "path components") {
			t.Fatalf("%d-byte archive: err %v, want ErrLimit naming an entry", len(b), err)
		}
		// The check stops as soon as the budget is spent.
		if used, err := checkChain(39, 200); !errors.Is(err, ErrLimit) || used != maxLinkComponents+1 {
			t.Fatalf("checked %d path components (%v), want to stop at the budget %d", used, err, maxLinkComponents)
		}
		assertNothingOutside(t, parent, root)
		// The rejected archive's links are gone too.
		if es, _ := os.ReadDir(root); len(es) != 1 {
			t.Fatalf("left %d entries, want only the file", len(es))
		}
	})
}

// BenchmarkLinkCheck measures the link check of the archives of
// TestLinkCheckIsBounded (it took 0.7 s and 12 s when it was unbounded).
func BenchmarkLinkCheck(b *testing.B) {
	for _, c := range []struct{ chain, fanOut int }{{30, 0}, {39, 200}} {
		b.Run(fmt.Sprintf("chain=%d/fanout=%d", c.chain, c.fanOut), func(b *testing.B) {
			for b.Loop() {
				_, _ = checkChain(c.chain, c.fanOut)
			}
		})
	}
}

// An agent upgraded from the layout with markers at releases/<svc>/
// .<version>.sha256 still knows what its releases were unpacked from, even
// for versions named like the temp files New cleans up.
func TestOldMarkerLocationIsRead(t *testing.T) {
	dir := t.TempDir()
	in, err := New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	art := gz(t, tarBytes(t, entry{name: "a", body: "b"}))
	versions := []string{"1.0.0", "stage-1", "current-2"}
	for _, v := range versions {
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatal(err)
		}
		// What the old agent left: the marker beside the release.
		if err := os.Rename(in.markerPath("web", v), in.oldMarkerPath("web", v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Switch("web", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	in, err = New(dir, Limits{}, zerolog.Nop()) // the upgraded agent starts
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range versions {
		if !in.Staged("web", v, digest(art)) {
			t.Fatalf("%s: old marker not read", v)
		}
	}
	// The running release is restaged as is (it is current: replacing it
	// would be an error).
	if _, err := stageBytes(t, in, "web", "1.0.0", art); err != nil {
		t.Fatalf("restage current: %v", err)
	}
	// Removing a release removes its old marker too.
	if err := in.Prune("web", "stage-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(in.oldMarkerPath("web", "current-2")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old marker of a pruned release kept: %v", err)
	}
	if in.Staged("web", "current-2", digest(art)) || !in.Staged("web", "stage-1", digest(art)) {
		t.Fatal("wrong releases pruned")
	}
}
