package install

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// brokenReader returns its bytes, then an error (a connection that broke).
type brokenReader struct{ r io.Reader }

func (b brokenReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, errors.New("connection reset")
	}
	return n, err
}

// leave writes b's first n bytes to want's partial download and breaks.
func leave(t *testing.T, in *Installer, want Artifact, b []byte) {
	t.Helper()
	p, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Fetch(context.Background(), brokenReader{bytes.NewReader(b)}); err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("a broken fetch: %v", err)
	}
}

func partialPath(in *Installer, sha string) string { return filepath.Join(in.partialDir(), sha) }

// TestPartialResumes: a download that broke is kept on disk; the next
// OpenPartial of that sha256 (here after a restart: a new Installer on the
// same dir) continues from its length, and the complete file has the
// digest of all its bytes and leaves nothing in partial/.
func TestPartialResumes(t *testing.T) {
	dir := t.TempDir()
	in, err := New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	art := randomBytes(t, 300<<10)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	leave(t, in, want, art[:100<<10])
	if n := in.PartialBytes(want.SHA256); n != 100<<10 {
		t.Fatalf("partial bytes %d, want %d", n, 100<<10)
	}

	in, err = New(dir, Limits{}, zerolog.Nop()) // the agent restarts
	if err != nil {
		t.Fatal(err)
	}
	p, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Offset() != 100<<10 || p.Resumed() != 100<<10 {
		t.Fatalf("offset %d resumed %d, want %d", p.Offset(), p.Resumed(), 100<<10)
	}
	f, err := p.Fetch(context.Background(), bytes.NewReader(art[p.Offset():]))
	if err != nil {
		t.Fatal(err)
	}
	if f.SHA256 != want.SHA256 || f.Size != want.Size {
		t.Fatalf("fetched %s %d, want %s %d", f.SHA256, f.Size, want.SHA256, want.Size)
	}
	if _, err := in.Verify(f, want); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(partialPath(in, want.SHA256)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the complete download is still in partial/: %v", err)
	}
	if !strings.HasPrefix(f.Path, in.tmpDir()) {
		t.Fatalf("fetched to %s, not under tmp/", f.Path)
	}
}

// TestPartialNeverTrusted: kept bytes that are not the artifact's give a
// digest that is not the assigned one (Verify refuses and removes it);
// kept bytes longer than the declared size are discarded when opened;
// bytes past the declared size remove the file (ErrTooLarge); Restart
// empties it.
func TestPartialNeverTrusted(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := randomBytes(t, 64<<10)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}

	bad := append(randomBytes(t, 1000), art[1000:2000]...)
	leave(t, in, want, bad)
	p, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	f, err := p.Fetch(context.Background(), bytes.NewReader(art[p.Offset():]))
	p.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Verify(f, want); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("bad kept bytes verified: %v", err)
	}
	if _, err := os.Stat(f.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a file that failed verification stays")
	}
	if in.PartialBytes(want.SHA256) != 0 {
		t.Fatal("a partial file stays after the download completed")
	}

	// Longer than declared: discarded at open.
	if err := os.WriteFile(partialPath(in, want.SHA256), append(append([]byte(nil), art...), 'x'), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err = in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	if p.Offset() != 0 {
		t.Fatalf("a partial file longer than the declared size resumed at %d", p.Offset())
	}
	// Too many bytes from the source: ErrTooLarge, the file is gone.
	if _, err := p.Fetch(context.Background(), bytes.NewReader(append(append([]byte(nil), art...), 'x'))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too many bytes: %v", err)
	}
	p.Close()
	if _, err := os.Stat(partialPath(in, want.SHA256)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the partial file of a too-large download stays: %v", err)
	}

	// Restart: the source answers from byte 0.
	leave(t, in, want, art[:5000])
	p, err = in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	f, err = p.Fetch(context.Background(), bytes.NewReader(art))
	if err != nil {
		t.Fatal(err)
	}
	if f.SHA256 != want.SHA256 {
		t.Fatal("a restarted download has another digest")
	}
	if _, err := p.Fetch(context.Background(), bytes.NewReader(art)); err == nil {
		t.Fatal("a second Fetch on an ended download")
	}
}

// TestPartialHeldByOneFetch: while one fetch holds a sha256's partial
// file, another fetch of it writes a temp file from byte 0, removed at
// Close; the kept file is untouched.
func TestPartialHeldByOneFetch(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := randomBytes(t, 10<<10)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	leave(t, in, want, art[:4096])
	p1, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	if p1.Offset() != 4096 || p2.Offset() != 0 {
		t.Fatalf("offsets %d and %d, want 4096 and 0", p1.Offset(), p2.Offset())
	}
	if _, err := p2.Fetch(context.Background(), brokenReader{bytes.NewReader(art[:100])}); err == nil {
		t.Fatal("a broken fetch succeeded")
	}
	p2.Close()
	if ents, _ := os.ReadDir(in.tmpDir()); len(ents) != 0 {
		t.Fatalf("the second fetch's temp file stays: %v", ents)
	}
	p1.Close()
	if n := in.PartialBytes(want.SHA256); n != 4096 {
		t.Fatalf("kept %d bytes, want 4096", n)
	}
	// Released: the next open resumes it.
	p3, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Close()
	if p3.Offset() != 4096 {
		t.Fatalf("offset %d after release, want 4096", p3.Offset())
	}
}

// TestPartialsBounded: at most MaxPartials files; one more removes the
// least recently written that no fetch holds; PrunePartials removes those
// not named (held ones stay); New removes those older than PartialMaxAge
// and stray names.
func TestPartialsBounded(t *testing.T) {
	dir := t.TempDir()
	in, err := New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var wants []Artifact
	base := time.Now().Add(-time.Hour)
	for i := range MaxPartials + 1 {
		art := randomBytes(t, 2048)
		want := Artifact{SHA256: digest(art), Size: int64(len(art))}
		wants = append(wants, want)
		leave(t, in, want, art[:1024])
		// Written one minute apart, in order.
		at := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(partialPath(in, want.SHA256), at, at); err != nil {
			t.Fatal(err)
		}
	}
	if in.PartialBytes(wants[0].SHA256) != 0 {
		t.Fatal("the oldest partial file stays past MaxPartials")
	}
	for _, w := range wants[1:] {
		if in.PartialBytes(w.SHA256) != 1024 {
			t.Fatalf("partial %s removed", w.SHA256)
		}
	}
	if ents, _ := os.ReadDir(in.partialDir()); len(ents) != MaxPartials {
		t.Fatalf("%d partial files, want %d", len(ents), MaxPartials)
	}

	// Every slot held: a new download gets a temp file, nothing is removed.
	var held []*Partial
	for _, w := range wants[1:] {
		p, err := in.OpenPartial(w)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	p, err := in.OpenPartial(wants[0])
	if err != nil {
		t.Fatal(err)
	}
	if p.kept {
		t.Fatal("a partial file past MaxPartials while every slot is held")
	}
	p.Close()
	// Pruned: wants[1] named, wants[2] held, the others go.
	held[2].Close()
	held[3].Close()
	in.PrunePartials(map[string]bool{wants[1].SHA256: true}, time.Now().Add(PartialGrace+time.Minute))
	for i, want := range []int64{0, 1024, 1024, 0, 0} {
		if n := in.PartialBytes(wants[i].SHA256); n != want {
			t.Errorf("after prune, partial %d: %d bytes, want %d", i, n, want)
		}
	}
	held[0].Close()
	held[1].Close()

	// At start: older than PartialMaxAge, and stray names, are removed.
	old := time.Now().Add(-PartialMaxAge - time.Minute)
	if err := os.Chtimes(partialPath(in, wants[1].SHA256), old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in.partialDir(), "not-a-sha"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir, Limits{}, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(in.partialDir())
	if len(ents) != 1 || ents[0].Name() != wants[2].SHA256 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("after a restart: %v, want only %s", names, wants[2].SHA256)
	}
}

// TestPartialBadInput: an invalid artifact is refused with its field and
// value, and nothing is created.
func TestPartialBadInput(t *testing.T) {
	in := newInstaller(t, Limits{MaxArtifactBytes: 1000})
	for _, c := range []struct {
		want Artifact
		msg  string
	}{
		{Artifact{SHA256: "../x", Size: 10}, "sha256"},
		{Artifact{SHA256: strings.Repeat("a", 64), Size: 0}, "size 0"},
		{Artifact{SHA256: strings.Repeat("a", 64), Size: 1001}, "over the cap 1000"},
	} {
		if _, err := in.OpenPartial(c.want); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: %v, want an error naming %q", c.want, err, c.msg)
		}
	}
	if ents, _ := os.ReadDir(in.partialDir()); len(ents) != 0 {
		t.Fatalf("bad input left %v", ents)
	}
	if in.PartialBytes("../../etc/passwd") != 0 {
		t.Fatal("PartialBytes took a path")
	}
}

// TestPartialPrivate: a partial download, and the file it becomes (kept
// for peers as artifacts/<sha256> by a hard link), are readable by the
// agent's user only, as a temp download always was (os.CreateTemp: 0600):
// an archive may hold files its entries mark private, and the data dir
// is traversable by every local user.
func TestPartialPrivate(t *testing.T) {
	dir := t.TempDir()
	in, err := New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	art := randomBytes(t, 64<<10)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	leave(t, in, want, art[:10<<10])
	fi, err := os.Stat(partialPath(in, want.SHA256))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("partial download mode %v: readable by others", fi.Mode().Perm())
	}
	p, err := in.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f, err := p.Fetch(context.Background(), bytes.NewReader(art[p.Offset():]))
	if err != nil {
		t.Fatal(err)
	}
	fi, err = os.Stat(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("fetched file mode %v: readable by others", fi.Mode().Perm())
	}
}

// TestPartialsBoundedWhileOpening: a sha256 held whose file is not created
// yet (fetches of several services starting at once: OpenPartial creates
// the file after holdPartial returns) counts towards MaxPartials, so the
// files on disk never exceed it.
func TestPartialsBoundedWhileOpening(t *testing.T) {
	dir := t.TempDir()
	in, err := New(dir, Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for range MaxPartials - 1 {
		art := randomBytes(t, 2048)
		leave(t, in, Artifact{SHA256: digest(art), Size: int64(len(art))}, art[:1024])
	}
	var held []string
	for range 2 {
		sha := digest(randomBytes(t, 32))
		if in.holdPartial(sha) {
			held = append(held, sha)
		}
	}
	for _, sha := range held { // what OpenPartial does next
		if err := os.WriteFile(partialPath(in, sha), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := os.ReadDir(in.partialDir()); len(ents) > MaxPartials {
		t.Fatalf("%d partial files, at most %d", len(ents), MaxPartials)
	}
}

// TestFetchSpaceCountsThePartial: the bytes of a partial download are on
// the filesystem already: a fetch of that artifact needs
// FreeSpaceFactor × its size less them free, so a host whose download
// broke near the limit is not refused by its own kept bytes.
func TestFetchSpaceCountsThePartial(t *testing.T) {
	in, err := New(t.TempDir(), Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	art := randomBytes(t, 4<<20)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	leave(t, in, want, art[:2<<20])
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Bavail, st.Bsize = 2560, 4096 // 10 MiB: 12 MiB less the 2 kept
		return nil
	}
	if err := checkSpace(in, want); err != nil {
		t.Fatalf("with 2 MiB of 4 kept: %v", err)
	}
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Bavail, st.Bsize = 2304, 4096 // 9 MiB
		return nil
	}
	wantErr := "not enough free space on the filesystem of " + in.dataDir + ": 9.0 MiB free, need 10.0 MiB (3 × the artifact's 4.0 MiB: download, unpack and margin, 2.0 MiB of the download on disk already)"
	if err := checkSpace(in, want); err == nil || err.Error() != wantErr {
		t.Fatalf("err %v\nwant %s", err, wantErr)
	}
}

// TestPartialWrittenInTheFuturePruned: a partial download whose time is
// ahead of the clock (the clock was stepped back after it was written)
// is not "written within PartialGrace" for ever: an assignment set that
// does not name it removes it.
func TestPartialWrittenInTheFuturePruned(t *testing.T) {
	in, err := New(t.TempDir(), Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	art := randomBytes(t, 2048)
	want := Artifact{SHA256: digest(art), Size: int64(len(art))}
	leave(t, in, want, art[:1024])
	now := time.Now()
	ahead := now.Add(2 * time.Hour)
	if err := os.Chtimes(partialPath(in, want.SHA256), ahead, ahead); err != nil {
		t.Fatal(err)
	}
	in.PrunePartials(nil, now)
	if n := in.PartialBytes(want.SHA256); n != 0 {
		t.Fatalf("a partial download dated 2 h ahead of the clock stays (%d bytes)", n)
	}
}
