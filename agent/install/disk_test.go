package install

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestPruneKeepsTheNewest: of six staged releases, the newest (by when
// they were staged) are kept, and the one `current` points at and those
// named are kept whatever their age.
func TestPruneKeepsTheNewest(t *testing.T) {
	in := newInstaller(t, Limits{})
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 1; i <= 6; i++ {
		v := fmt.Sprintf("%d.0.0", i)
		art := gz(t, tarBytes(t, entry{name: "VERSION", body: v}))
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatal(err)
		}
		// Staged in this order (set, not slept for).
		at := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(in.markerPath("web", v), at, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Switch("web", "1.0.0"); err != nil { // the oldest is current
		t.Fatal(err)
	}
	releases := func() []string {
		es, err := os.ReadDir(in.serviceDir("web"))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	if err := in.PruneKeeping("web", 3, "2.0.0"); err != nil {
		t.Fatal(err)
	}
	if got, want := releases(), []string{"1.0.0", "2.0.0", "4.0.0", "5.0.0", "6.0.0"}; !slices.Equal(got, want) {
		t.Fatalf("keep 3 newest, current 1.0.0 and 2.0.0: %v, want %v", got, want)
	}
	if in.Staged("web", "3.0.0", "") || in.marker("web", "3.0.0") != "" {
		t.Fatal("3.0.0's marker survived its release")
	}
	if err := in.PruneKeeping("web", 1); err != nil {
		t.Fatal(err)
	}
	if got, want := releases(), []string{"1.0.0", "6.0.0"}; !slices.Equal(got, want) {
		t.Fatalf("keep the newest and current: %v, want %v", got, want)
	}
	if got, _ := in.Current("web"); got != "1.0.0" {
		t.Fatalf("current -> %q", got)
	}
}

// checkSpace is ReserveFetchSpace's answer for want, its space released at
// once.
func checkSpace(in *Installer, want Artifact) error {
	release, err := in.ReserveFetchSpace(context.Background(), want)
	if err == nil {
		release()
	}
	return err
}

// TestCheckFreeSpace: a fetch needs FreeSpaceFactor times the artifact's
// size free on the data dir's filesystem; the refusal names the
// filesystem, what is free and what is needed.
func TestCheckFreeSpace(t *testing.T) {
	in := newInstaller(t, Limits{})
	free, err := in.FreeBytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSpace(in, Artifact{Size: int64(free / 6)}); err != nil {
		t.Fatalf("a sixth of the free space (%d bytes): %v", free/6, err)
	}
	err = checkSpace(in, Artifact{Size: int64(free / 2)})
	if !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), "on the filesystem of "+in.dataDir) ||
		!strings.Contains(err.Error(), "(3 × the artifact's") {
		t.Fatalf("half the free space: %v", err)
	}
	// What statfs says is what counts (available to unprivileged writers).
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Bavail, st.Bsize = 2560, 4096 // 10 MiB
		return nil
	}
	want := "not enough free space on the filesystem of " + in.dataDir + ": 10.0 MiB free, need 12.0 MiB (3 × the artifact's 4.0 MiB: download, unpack and margin)"
	if err := checkSpace(in, Artifact{Size: 4 << 20}); err == nil || err.Error() != want {
		t.Fatalf("err %v\nwant %s", err, want)
	}
	if err := checkSpace(in, Artifact{Size: 3 << 20}); err != nil {
		t.Fatalf("9 MiB of 10: %v", err)
	}
}

// TestCheckFreeSpaceOnASmallFilesystem: on a real 8 MiB filesystem (a
// tmpfs; needs root), files that fill it make a fetch that fitted before
// refused.
func TestCheckFreeSpaceOnASmallFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
	in, err := New(filepath.Join(dir, "data"), Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSpace(in, Artifact{Size: 2 << 20}); err != nil {
		t.Fatalf("2 MiB on an empty 8 MiB filesystem: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "ballast"), make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkSpace(in, Artifact{Size: 2 << 20}); !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), "need 6.0 MiB") {
		t.Fatalf("2 MiB with 4 MiB free: %v", err)
	}
}

// TestCheckFreeSpaceCountsTheUnpackFloor: a small release on a
// filesystem whose free space would fall under the unpack floor is refused
// before its download, naming the floor; the floor counts once, not once
// a fetch. (Before, 12 MiB free was enough for a 4 MiB release on a 1 GiB
// filesystem, and its unpack then refused it below 52 MiB free.)
func TestCheckFreeSpaceCountsTheUnpackFloor(t *testing.T) {
	in := newInstaller(t, Limits{})
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	var free uint64
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Blocks, st.Bavail, st.Bsize = 1<<18, (free+4095)/4096, 4096 // 1 GiB, free (rounded up)
		return nil
	}
	floor := unpackKeepFree(1<<30) + unpackCheckEvery // 52.2 MiB
	art := Artifact{Size: 4 << 20}
	free = 8<<20 + floor - 4096
	want := "not enough free space on the filesystem of " + in.dataDir + ": 60.2 MiB free, need 60.2 MiB (2 × the artifact's 4.0 MiB: download and unpack, and the 52.2 MiB unpacking keeps free: 5% of the filesystem's 1.0 GiB, at most 1.0 GiB, and the 1.0 MiB it writes between two looks)"
	if err := checkSpace(in, art); !errors.Is(err, ErrDiskSpace) || err.Error() != want {
		t.Fatalf("a 4 MiB release with 4 KiB less than download, unpack and the floor free: %v\nwant %s", err, want)
	}
	free = 8<<20 + floor
	first, err := in.ReserveFetchSpace(context.Background(), art)
	if err != nil {
		t.Fatalf("a 4 MiB release with download, unpack and the floor free: %v", err)
	}
	defer first()
	// A second fetch needs its own 3 × 1 MiB besides the first's 12 MiB,
	// and the floor once: 12 + 2 + 52.2 MiB.
	// (Its context has ended: it must not wait.)
	free = 14<<20 + floor
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	second, err := in.ReserveFetchSpace(ended, Artifact{Size: 1 << 20})
	if err != nil {
		t.Fatalf("a second fetch of 1 MiB beside the first's 12 MiB, the floor counted once: %v", err)
	}
	second()
}

// TestReserveFetchSpaceOneAtATime: fetches started together each reserve
// the space they need: with 16 MiB free, a second fetch of 3 MiB (9 MiB
// needed) waits while the first holds its 9 MiB (it does not wait when
// the first is done; with its context ended it says what it waited for),
// and a fetch too large for the free space alone is refused at once.
// (Before: five such fetches all passed the same check and two failed
// unpacking with ENOSPC: a review.)
func TestReserveFetchSpaceOneAtATime(t *testing.T) {
	in := newInstaller(t, Limits{})
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Bavail, st.Bsize = 4096, 4096 // 16 MiB
		return nil
	}
	art := Artifact{SHA256: strings.Repeat("a", 64), Size: 3 << 20}
	first, err := in.ReserveFetchSpace(context.Background(), art)
	if err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := in.ReserveFetchSpace(ended, art); !errors.Is(err, context.Canceled) ||
		!strings.Contains(err.Error(), "wait for free space (need 9.0 MiB, 16.0 MiB free, 9.0 MiB reserved by other fetches)") {
		t.Fatalf("a second fetch while the first holds its space: %v, want it to wait (context.Canceled)", err)
	}
	if _, err := in.ReserveFetchSpace(ended, Artifact{Size: 6 << 20}); !errors.Is(err, ErrDiskSpace) {
		t.Fatalf("a fetch of 6 MiB (18 needed) on 16 MiB free: %v, want ErrDiskSpace at once", err)
	}
	got := make(chan error, 1)
	go func() {
		second, err := in.ReserveFetchSpace(context.Background(), art)
		if err == nil {
			second()
		}
		got <- err
	}()
	first()
	first() // once only
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the second fetch after the first ended: %v", err)
		}
	case <-time.After(time.Minute): // a failure bound only
		t.Fatal("the second fetch still waits after the first ended")
	}
	in.spaceMu.Lock()
	defer in.spaceMu.Unlock()
	if in.reserved != 0 {
		t.Fatalf("%d bytes still reserved after both ended", in.reserved)
	}
}

// zerosArchive is a .tar.gz of one file of size zero bytes (a small
// archive that unpacks to size), plus a small file before it.
func zerosArchive(t *testing.T, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	for _, e := range []struct {
		name string
		size int64
	}{{"VERSION", 2}, {"zeros", size}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: e.size}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(tw, zeroReader{}, e.size); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// stagedNothing fails t if anything of web's version is left: the
// release, its marker or a temp dir of the unpack.
func stagedNothing(t *testing.T, in *Installer, version string) {
	t.Helper()
	es, err := os.ReadDir(in.serviceDir("web"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Name() != markerDirName {
			t.Errorf("left in %s: %s", in.serviceDir("web"), e.Name())
		}
	}
	if in.Staged("web", version, "") || in.marker("web", version) != "" {
		t.Errorf("%s staged or marked", version)
	}
}

// TestUnpackStopsAtTheFreeSpaceFloor: on a real 64 MiB filesystem (a
// tmpfs; needs root), an archive of 200 KiB that unpacks to 128 MiB of
// zeros passed the fetch's reservation (3 × its size) and filled the
// filesystem to the last byte (ENOSPC) before it failed, taking the
// host's other writers down with it. Now the unpack stops before the free
// space goes under the floor (5% of the filesystem), with an error
// wrapping ErrDiskSpace that names the filesystem, what is free and what
// is kept free; nothing of it is left, and a release that fits is still
// unpacked.
func TestUnpackStopsAtTheFreeSpaceFloor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	in, err := New(filepath.Join(dir, "data"), Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	free := func() uint64 {
		t.Helper()
		n, err := in.FreeBytes()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	bomb := zerosArchive(t, 128<<20)
	if err := checkSpace(in, Artifact{Size: int64(len(bomb))}); err != nil {
		t.Fatalf("the fetch's reservation for %d bytes: %v", len(bomb), err)
	}
	before := free()
	// The lowest free space seen while it unpacks: statfs as the guard
	// calls it (the unpack's own checks are the moments to look).
	lowest := before
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	statfs = func(p string, st *syscall.Statfs_t) error {
		err := syscall.Statfs(p, st)
		lowest = min(lowest, st.Bavail*uint64(st.Bsize))
		return err
	}
	_, err = stageBytes(t, in, "web", "1.0.0", bomb)
	const keep = 64 << 20 / 100 * 5 // UnpackKeepFreePercent
	if !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), "on the filesystem of "+in.dataDir) ||
		!strings.Contains(err.Error(), "unpacking keeps 3.2 MiB free (5% of the filesystem's 64.0 MiB") {
		t.Fatalf("unpacking 128 MiB of zeros on a 64 MiB filesystem: %v, want ErrDiskSpace naming the filesystem and the floor", err)
	}
	t.Logf("refused: %v", err)
	if lowest < keep {
		t.Errorf("free space went down to %d bytes, under the %d kept", lowest, keep)
	}
	stagedNothing(t, in, "1.0.0")
	if after := free(); after+1<<20 < before {
		t.Errorf("%d bytes free after the refused unpack, %d before: the partial release is left", after, before)
	}
	if _, err := stageBytes(t, in, "web", "1.0.1", zerosArchive(t, 8<<20)); err != nil {
		t.Fatalf("8 MiB on the same filesystem: %v", err)
	}
}

// TestUnpackRefusedUnderTheFloor: with the free space already under the
// floor (statfs's numbers), nothing is unpacked, however small; the
// error gives the numbers.
func TestUnpackRefusedUnderTheFloor(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "VERSION", body: "1"}))
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Blocks, st.Bavail, st.Bsize = 262144, 12800, 4096 // 1 GiB, 50 MiB free: 51.2 MiB kept
		return nil
	}
	_, err := stageBytes(t, in, "web", "1.0.0", art)
	want := "not enough free space on the filesystem of " + in.dataDir + ": 50.0 MiB free, unpacking keeps 51.2 MiB free (5% of the filesystem's 1.0 GiB, at most 1.0 GiB)"
	if !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v\nwant it to contain %s", err, want)
	}
	stagedNothing(t, in, "1.0.0")
	// A large disk keeps at most UnpackKeepFreeMax.
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Blocks, st.Bavail, st.Bsize = 1<<30, 1<<18+1<<10, 4096 // 4 TiB, 1 GiB + 4 MiB free
		return nil
	}
	if _, err := stageBytes(t, in, "web", "1.0.0", art); err != nil {
		t.Fatalf("1 GiB + 4 MiB free of 4 TiB (the cap: 5%% would be 204.8 GiB): %v", err)
	}
}

// emptyFilesArchive is a .tar.gz of n empty files in directories of 500.
func emptyFilesArchive(t *testing.T, n int) []byte {
	t.Helper()
	es := make([]entry, n)
	for i := range es {
		es[i] = entry{name: fmt.Sprintf("d%d/f%d", i/500, i)}
	}
	return gz(t, tarBytes(t, es...))
}

// TestUnpackStopsAtTheInodeFloor: on a filesystem with few inodes (a
// tmpfs of 4,000; needs root), an archive of 6,000 empty files writes no
// bytes, so the free-space floor never stops it: it used up every inode
// (no other service could create a file) before it failed. Now the unpack
// stops before the free inodes go under the floor (5% of the
// filesystem's), with an error wrapping ErrDiskSpace that names the
// filesystem and the numbers; nothing of it is left, and a release that
// fits is still unpacked.
func TestUnpackStopsAtTheInodeFloor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,nr_inodes=4000"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	in, err := New(filepath.Join(dir, "data"), Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	freeInodes := func() uint64 {
		t.Helper()
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ffree
	}
	before := freeInodes()
	lowest := before
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	statfs = func(p string, st *syscall.Statfs_t) error {
		err := syscall.Statfs(p, st)
		lowest = min(lowest, st.Ffree)
		return err
	}
	_, err = stageBytes(t, in, "web", "1.0.0", emptyFilesArchive(t, 6000))
	if !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), "on the filesystem of "+in.dataDir) ||
		!strings.Contains(err.Error(), "unpacking keeps 200 free (5% of the filesystem's 4000, at most 1048576) beyond the 1000 entries") {
		t.Fatalf("6,000 empty files on a filesystem of 4,000 inodes: %v, want ErrDiskSpace naming the filesystem and the inode floor", err)
	}
	t.Logf("refused: %v", err)
	if lowest < 200 {
		t.Errorf("free inodes went down to %d, under the 200 kept", lowest)
	}
	stagedNothing(t, in, "1.0.0")
	if after := freeInodes(); after+10 < before {
		t.Errorf("%d inodes free after the refused unpack, %d before: the partial release is left", after, before)
	}
	if _, err := stageBytes(t, in, "web", "1.0.1", emptyFilesArchive(t, 1500)); err != nil {
		t.Fatalf("1,500 files on the same filesystem: %v", err)
	}
}

// TestUnpackRefusedUnderTheInodeFloor: with the free inodes already
// under the floor (statfs's numbers), nothing is unpacked; a filesystem
// that counts no inodes has no inode floor.
func TestUnpackRefusedUnderTheInodeFloor(t *testing.T) {
	in := newInstaller(t, Limits{})
	art := gz(t, tarBytes(t, entry{name: "VERSION", body: "1"}))
	defer func(f func(string, *syscall.Statfs_t) error) { statfs = f }(statfs)
	files, ffree := uint64(100000), uint64(5999) // 5,000 kept + 1,000 between looks
	statfs = func(_ string, st *syscall.Statfs_t) error {
		st.Blocks, st.Bavail, st.Bsize = 262144, 262144, 4096 // 1 GiB, all free
		st.Files, st.Ffree = files, ffree
		return nil
	}
	_, err := stageBytes(t, in, "web", "1.0.0", art)
	want := "not enough free space on the filesystem of " + in.dataDir + ": 5999 inodes free, unpacking keeps 5000 free (5% of the filesystem's 100000, at most 1048576)"
	if !errors.Is(err, ErrDiskSpace) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v\nwant it to contain %s", err, want)
	}
	stagedNothing(t, in, "1.0.0")
	ffree = 6000
	if _, err := stageBytes(t, in, "web", "1.0.0", art); err != nil {
		t.Fatalf("6,000 inodes free of 100,000: %v", err)
	}
	files, ffree = 0, 0 // btrfs
	if _, err := stageBytes(t, in, "web", "1.0.1", art); err != nil {
		t.Fatalf("a filesystem without an inode count: %v", err)
	}
}
