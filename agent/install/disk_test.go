package install

import (
	"context"
	"errors"
	"fmt"
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
	if _, err := in.ReserveFetchSpace(ended, art); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "wait for free space") {
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
