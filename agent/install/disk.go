package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// FreeSpaceFactor is how many times the artifact's size a fetch needs free
// on the data dir's filesystem: the download, the unpacked
// release (about as large again for a compressed archive of compressible
// files, often more) and a margin for the services, their logs and the
// agent's state.
const FreeSpaceFactor = 3

// ErrDiskSpace marks a fetch refused for lack of free space (errors.Is).
var ErrDiskSpace = errors.New("not enough free space")

// statfs is syscall.Statfs; tests replace it.
var statfs = syscall.Statfs

// FreeBytes is the space an unprivileged writer may still use on the data
// dir's filesystem.
func (in *Installer) FreeBytes() (uint64, error) {
	free, _, err := in.space()
	return free, err
}

// space is FreeBytes and the filesystem's size.
func (in *Installer) space() (free, size uint64, err error) {
	var st syscall.Statfs_t
	if err := statfs(in.dataDir, &st); err != nil {
		return 0, 0, fmt.Errorf("free space of %s: %w", in.dataDir, err)
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// unpackKeepFree is the free space unpacking keeps on a filesystem of size
// bytes (UnpackKeepFreePercent, at most UnpackKeepFreeMax).
func unpackKeepFree(size uint64) uint64 {
	return min(size/100*UnpackKeepFreePercent, UnpackKeepFreeMax)
}

// ReserveFetchSpace refuses a fetch of want when the data dir's
// filesystem has less than FreeSpaceFactor times its size free, less what
// its partial download (partial.go) holds already (a host whose download
// broke near the limit was refused by its own kept bytes until they were
// pruned), with an error naming the filesystem, what is free and what is
// needed. The margin (the third time the size) is at least what unpacking
// keeps free (the floor below, and what it writes between two looks): a
// small release on a nearly full disk is refused before its download, not
// downloaded and then refused by its unpack. Otherwise FreeSpaceFactor
// times the size, less the partial, is reserved until release is called (when
// its fetch, or its fetch and unpack, ended): a fetch that fits the free
// space only with the others' reservations left out waits for them to end
// (or ctx), instead of all of them passing the same check at once and
// filling the disk (five services at once on a nearly full disk: a
// review).
func (in *Installer) ReserveFetchSpace(ctx context.Context, want Artifact) (release func(), err error) {
	size := max(want.Size, 0)
	kept := min(in.PartialBytes(want.SHA256), size)
	need := uint64(size)*FreeSpaceFactor - uint64(kept)
	for {
		in.spaceMu.Lock()
		free, fsSize, err := in.space()
		// The reservation's margin counts once a fetch; the unpack floor
		// once a filesystem: the others' reservations are left out below.
		floor := unpackKeepFree(fsSize) + unpackCheckEvery
		check := need
		if floor > uint64(size) {
			check += floor - uint64(size)
		}
		if err == nil && free < check {
			downloaded := ""
			if kept > 0 {
				downloaded = fmt.Sprintf(", %s of the download on disk already", bytesText(uint64(kept)))
			}
			if check == need {
				err = fmt.Errorf("%w on the filesystem of %s: %s free, need %s (%d × the artifact's %s: download, unpack and margin%s)",
					ErrDiskSpace, in.dataDir, bytesText(free), bytesText(need), FreeSpaceFactor, bytesText(uint64(size)), downloaded)
			} else {
				err = fmt.Errorf("%w on the filesystem of %s: %s free, need %s (%d × the artifact's %s: download and unpack, and the %s unpacking keeps free: %d%% of the filesystem's %s, at most %s, and the %s it writes between two looks%s)",
					ErrDiskSpace, in.dataDir, bytesText(free), bytesText(check), FreeSpaceFactor-1, bytesText(uint64(size)),
					bytesText(floor), UnpackKeepFreePercent, bytesText(fsSize), bytesText(UnpackKeepFreeMax), bytesText(unpackCheckEvery), downloaded)
			}
		}
		if err != nil {
			in.spaceMu.Unlock()
			return nil, err
		}
		if free-check >= in.reserved {
			in.reserved += need
			in.spaceMu.Unlock()
			return sync.OnceFunc(func() {
				in.spaceMu.Lock()
				in.reserved -= need
				close(in.spaceFreed)
				in.spaceFreed = make(chan struct{})
				in.spaceMu.Unlock()
			}), nil
		}
		freed, others := in.spaceFreed, in.reserved
		in.spaceMu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for free space (need %s, %s free, %s reserved by other fetches): %w",
				bytesText(check), bytesText(free), bytesText(others), context.Cause(ctx))
		}
	}
}

// What unpacking keeps free on the data dir's filesystem. The fetch's
// reservation (FreeSpaceFactor) counts on the unpacked release being about
// the artifact's size, but an archive may expand far more (a 100 MiB
// tar.gz of zeros unpacks to 100 GiB; MaxTotalBytes bounds it at 4 GiB by
// default, more than many hosts have free): a disk filled by an unpack
// takes the host's other services down with it (their logs, databases and
// temp files fail with ENOSPC). So Stage stops unpacking before the free
// space, as unprivileged writers see it (statfs's f_bavail, which leaves
// out what ext4 reserves for root: the other services run as users), goes
// under UnpackKeepFreePercent of the filesystem's size, at most
// UnpackKeepFreeMax: a fraction, as kubelet's eviction threshold
// (nodefs.available < 10%) is, so that the floor scales from a small data
// partition to a large disk, with a cap (1 GiB: room for the other
// services' logs and temp files for a while) so that a large disk's floor
// does not refuse releases with GiBs free. The free space is checked
// before the first file and again every unpackCheckEvery bytes written,
// and what may be written until the next check must fit above the floor.
//
// Inodes the same way (kubelet's nodefs.inodesFree < 5%): an archive of
// many empty files (up to Limits.MaxEntries, 100,000 by default) writes
// no bytes but can use up a small filesystem's inodes, and then no other
// service on it can create a file. The free inodes (statfs's f_ffree) are
// checked before the first entry and again every unpackCheckEveryEntries
// entries made (files, directories, symlinks), and what may be made until
// the next check must fit above UnpackKeepFreePercent of the
// filesystem's inodes, at most UnpackKeepFreeInodesMax. A filesystem that
// reports no inode count (f_files 0: btrfs, some FUSE) has no inode floor.
const (
	UnpackKeepFreePercent   = 5
	UnpackKeepFreeMax       = 1 << 30
	UnpackKeepFreeInodesMax = 1 << 20
	unpackCheckEvery        = 1 << 20
	unpackCheckEveryEntries = 1000
)

// spaceGuard stops an unpack of in's before the filesystem of its data
// dir goes under the floor (UnpackKeepFreePercent) of free space or free
// inodes. It counts the bytes written and the entries made through it.
type spaceGuard struct {
	in            *Installer
	written, next int64
	made, nextMk  int
}

// check fails, wrapping ErrDiskSpace, when what is free less what may be
// written before the next check is under the floor, or the free inodes
// less the entries that may be made before it are under theirs.
func (g *spaceGuard) check() error {
	var st syscall.Statfs_t
	if err := statfs(g.in.dataDir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", g.in.dataDir, err)
	}
	free, size := st.Bavail*uint64(st.Bsize), st.Blocks*uint64(st.Bsize)
	keep := unpackKeepFree(size)
	if free < keep+unpackCheckEvery {
		return fmt.Errorf("%w on the filesystem of %s: %s free, unpacking keeps %s free (%d%% of the filesystem's %s, at most %s) beyond the %s it writes between two looks; stopped after %s unpacked",
			ErrDiskSpace, g.in.dataDir, bytesText(free), bytesText(keep), UnpackKeepFreePercent, bytesText(size), bytesText(UnpackKeepFreeMax),
			bytesText(unpackCheckEvery), bytesText(uint64(g.written)))
	}
	if st.Files > 0 {
		keepInodes := min(st.Files/100*UnpackKeepFreePercent, UnpackKeepFreeInodesMax)
		if st.Ffree < keepInodes+unpackCheckEveryEntries {
			return fmt.Errorf("%w on the filesystem of %s: %d inodes free, unpacking keeps %d free (%d%% of the filesystem's %d, at most %d) beyond the %d entries it makes between two looks; stopped after %d entries",
				ErrDiskSpace, g.in.dataDir, st.Ffree, keepInodes, UnpackKeepFreePercent, st.Files, UnpackKeepFreeInodesMax,
				unpackCheckEveryEntries, g.made)
		}
	}
	g.next, g.nextMk = g.written+unpackCheckEvery, g.made+unpackCheckEveryEntries
	return nil
}

// entries counts n entries about to be made, and checks the floors when
// the count reached the next look.
func (g *spaceGuard) entries(n int) error {
	if g.made+n > g.nextMk {
		if err := g.check(); err != nil {
			return err
		}
	}
	g.made += n
	return nil
}

// guardedWriter writes to w while its guard allows.
type guardedWriter struct {
	g *spaceGuard
	w io.Writer
}

func (gw guardedWriter) Write(p []byte) (int, error) {
	var done int
	for len(p) > 0 {
		if gw.g.written >= gw.g.next {
			if err := gw.g.check(); err != nil {
				return done, err
			}
		}
		chunk := p[:min(int64(len(p)), gw.g.next-gw.g.written)]
		n, err := gw.w.Write(chunk)
		done += n
		gw.g.written += int64(n)
		if err != nil {
			return done, err
		}
		p = p[n:]
	}
	return done, nil
}

// bytesText renders a byte count for people (binary units).
func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// PruneKeeping removes the unpacked releases of a service except the
// newest `newest` ones (by when they were staged), those in keep and the
// one `current` points at. newest 0 keeps only those.
func (in *Installer) PruneKeeping(service string, newest int, keep ...string) error {
	sdir := in.serviceDir(service)
	entries, err := os.ReadDir(sdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("prune %s: %w", service, err)
	}
	cur, _ := in.Current(service)
	keepSet := map[string]bool{cur: true, CurrentLink: true}
	for _, k := range keep {
		keepSet[k] = true
	}
	type staged struct {
		version string
		at      time.Time
	}
	var releases []staged
	for _, e := range entries {
		name := e.Name()
		if name == CurrentLink || strings.HasPrefix(name, ".") || spec.CheckVersion("version", name) != nil {
			continue
		}
		releases = append(releases, staged{name, in.stagedAt(service, name)})
	}
	// Newest first; equal times by name, so that the choice is stable.
	slices.SortFunc(releases, func(a, b staged) int {
		if c := b.at.Compare(a.at); c != 0 {
			return c
		}
		return strings.Compare(b.version, a.version)
	})
	for i, r := range releases {
		if i < newest || keepSet[r.version] {
			continue
		}
		in.log.Info().Str("service", service).Str("version", r.version).Msg("pruning old release")
		if err := in.removeRelease(service, r.version); err != nil {
			return fmt.Errorf("prune %s %s: %w", service, r.version, err)
		}
	}
	return in.PruneArtifacts()
}

// stagedAt is when a release was unpacked: its digest marker's time (the
// directory's, for a release without one).
func (in *Installer) stagedAt(service, version string) time.Time {
	for _, p := range []string{in.markerPath(service, version), in.oldMarkerPath(service, version), in.ReleaseDir(service, version)} {
		if fi, err := os.Lstat(p); err == nil {
			return fi.ModTime()
		}
	}
	return time.Time{}
}
