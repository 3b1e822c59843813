// Package install owns the agent's on-disk releases: it fetches an artifact
// with a size cap and a running sha256 into a temp file, verifies it, unpacks
// a verified .tar.gz into releases/<service>/<version>/ through os.Root, and
// switches the releases/<service>/current symlink atomically.
//
// Layout under the data dir:
//
//	tmp/                          downloads in progress (emptied on start)
//	partial/<sha256>              downloads to resume (partial.go)
//	releases/<service>/<version>/ unpacked releases
//	releases/<service>/.sha256/<version>   digest the release was unpacked from
//	releases/<service>/.giving/<version>   a give-away to run.user not done (giving.go)
//	releases/<service>/current -> <version>
//
// Agents before this layout kept the digest in releases/<service>/
// .<version>.sha256; it is still read when the new marker is missing (and
// removed with the release), so an upgraded agent can restage the release
// it runs.
//
// A release directory counts as staged only while its digest marker exists:
// Stage writes the marker before renaming the complete tree into place, and
// removing a release (Prune, or Stage replacing it) removes the marker
// durably first, so a crash can leave a partial tree only without a marker,
// which the next Stage of that version replaces. Temp names under
// releases/<service>/ and its .sha256/ start with "." (versions never do),
// so the start-up cleanup of ".stage-*", ".current-*" and ".sha256/.*.tmp"
// cannot match a release or marker.
//
// It must not import the coordinator or etcd, nor decide anything about the
// lifecycle: it only does the file work it is asked to do.
package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/rs/zerolog"
)

// Sentinel errors, wrapped with context.
var (
	// ErrDigestMismatch: the artifact's sha256 or size is not the one assigned.
	ErrDigestMismatch = errors.New("artifact digest mismatch")
	// ErrTooLarge: the artifact is over its declared size or the cap.
	ErrTooLarge = errors.New("artifact too large")
	// ErrReserved: the version would collide with the `current` link.
	ErrReserved = errors.New("reserved version name")
)

// CurrentLink is the name of the symlink to the running release.
const CurrentLink = "current"

// Limits bound what an artifact and its archive may hold.
type Limits struct {
	MaxArtifactBytes int64 // compressed artifact (default 1 GiB)
	MaxFileBytes     int64 // one unpacked file (default 1 GiB)
	MaxTotalBytes    int64 // all unpacked files (default 4 GiB)
	MaxEntries       int   // archive entries (default 100000)
}

// DefaultLimits are the limits used for zero fields.
func DefaultLimits() Limits {
	return Limits{
		MaxArtifactBytes: 1 << 30,
		MaxFileBytes:     1 << 30,
		MaxTotalBytes:    4 << 30,
		MaxEntries:       100000,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxArtifactBytes <= 0 {
		l.MaxArtifactBytes = d.MaxArtifactBytes
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = d.MaxFileBytes
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = d.MaxTotalBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	return l
}

// Artifact is what an assignment says the bytes are.
type Artifact struct {
	SHA256 string
	Size   int64
}

// Installer does the file work under one data dir. Its methods are safe for
// concurrent use on different services.
type Installer struct {
	dataDir string
	lim     Limits
	log     zerolog.Logger
	// keep: Stage keeps verified artifacts (keep.go).
	keep atomic.Bool
	// Partial downloads (partial.go): the sha256s a fetch holds.
	partialMu sync.Mutex
	busy      map[string]bool
	// Free space reserved by fetches under way (disk.go: ReserveFetchSpace);
	// spaceFreed is closed and replaced when a reservation ends.
	spaceMu    sync.Mutex
	reserved   uint64
	spaceFreed chan struct{}
}

// New prepares the data dir (tmp/ and releases/), removes leftovers of an
// earlier run (temp downloads, stale partial downloads, half-unpacked
// releases, temp links and temp digest markers) and returns an Installer.
//
// leftovers are globs, relative to dataDir, of the temp files the caller's
// own writers leave when killed in the middle of a write (each writer's
// pattern, with "*" for its names): New removes them with its own, in the one start-up
// cleanup. Call it only while holding the data dir (the agent's lock),
// before anything of this run writes: no other process may be writing a
// file these globs match then.
func New(dataDir string, lim Limits, log zerolog.Logger, leftovers ...string) (*Installer, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir %q: %w", dataDir, err)
	}
	in := &Installer{dataDir: abs, lim: lim.withDefaults(), log: log, spaceFreed: make(chan struct{})}
	if err := os.RemoveAll(in.tmpDir()); err != nil {
		return nil, fmt.Errorf("clean %s: %w", in.tmpDir(), err)
	}
	for _, d := range []string{in.tmpDir(), in.releasesDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := in.cleanPartials(time.Now()); err != nil {
		return nil, err
	}
	// Globs relative to the data dir (its own path is never a pattern).
	marker, err := filepath.Rel(in.dataDir, markerTemp(in.markerPath("*", "*")))
	if err != nil {
		return nil, fmt.Errorf("digest marker temps under %s: %w", in.dataDir, err)
	}
	giving, err := filepath.Rel(in.dataDir, markerTemp(in.givingPath("*", "*")))
	if err != nil {
		return nil, fmt.Errorf("give-away note temps under %s: %w", in.dataDir, err)
	}
	globs := append([]string{
		filepath.Join("releases", "*", ".stage-*"),
		filepath.Join("releases", "*", ".current-*"),
		marker,
		giving,
	}, leftovers...)
	root := os.DirFS(in.dataDir)
	for _, g := range globs {
		found, err := fs.Glob(root, g)
		if err != nil {
			return nil, fmt.Errorf("leftovers %s under %s: %w", g, in.dataDir, err)
		}
		for _, rel := range found {
			p := filepath.Join(in.dataDir, rel)
			if isOldMarker(p) {
				continue // the digest marker of a version named stage-* or current-*
			}
			log.Info().Str("path", p).Msg("removing leftover of an interrupted write")
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("remove leftover %s: %w", p, err)
			}
		}
	}
	return in, nil
}

// Limits are the limits in force.
func (in *Installer) Limits() Limits { return in.lim }

func (in *Installer) tmpDir() string      { return filepath.Join(in.dataDir, "tmp") }
func (in *Installer) releasesDir() string { return filepath.Join(in.dataDir, "releases") }

func (in *Installer) serviceDir(service string) string {
	return filepath.Join(in.releasesDir(), service)
}

// ReleaseDir is where a release is (or would be) unpacked.
func (in *Installer) ReleaseDir(service, version string) string {
	return ReleaseDirIn(in.dataDir, service, version)
}

// ReleaseDirIn is where a release is (or would be) unpacked in the data dir
// dataDir (absolute), for who reads it without an Installer
// (fleetwave-agent stop-services runs a release's before_stop there).
func ReleaseDirIn(dataDir, service, version string) string {
	return filepath.Join(dataDir, "releases", service, version)
}

// markerDirName is the directory of digest markers under a service dir.
const markerDirName = ".sha256"

func (in *Installer) markerDir(service string) string {
	return filepath.Join(in.serviceDir(service), markerDirName)
}

func (in *Installer) markerPath(service, version string) string {
	return filepath.Join(in.markerDir(service), version)
}

// oldMarkerPath is where agents before the .sha256/ directory kept a
// release's digest.
func (in *Installer) oldMarkerPath(service, version string) string {
	return filepath.Join(in.serviceDir(service), "."+version+oldMarkerSuffix)
}

const oldMarkerSuffix = ".sha256"

// isOldMarker reports whether p is a regular file named like an old marker
// (temp dirs and links never end in the suffix: their names end in digits).
func isOldMarker(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, oldMarkerSuffix)
}

// marker returns the digest a release was unpacked from ("" if unknown),
// from the old location when the new one has none.
func (in *Installer) marker(service, version string) string {
	b, err := os.ReadFile(in.markerPath(service, version))
	if errors.Is(err, fs.ErrNotExist) {
		b, err = os.ReadFile(in.oldMarkerPath(service, version))
	}
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// removeMarker removes a release's markers (new and old location) and makes
// that durable, so the release no longer counts as staged before any of its
// files go.
func (in *Installer) removeMarker(service, version string) error {
	for _, m := range []struct{ path, dir string }{
		{in.markerPath(service, version), in.markerDir(service)},
		{in.oldMarkerPath(service, version), in.serviceDir(service)},
	} {
		err := os.Remove(m.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := syncDir(m.dir); err != nil {
			return err
		}
	}
	return nil
}

// removeRelease removes an unpacked release: marker first (durably), then
// the tree.
func (in *Installer) removeRelease(service, version string) error {
	if err := in.removeMarker(service, version); err != nil {
		return fmt.Errorf("remove marker: %w", err)
	}
	if err := os.RemoveAll(in.ReleaseDir(service, version)); err != nil {
		return err
	}
	// The tree is gone: a note that it was being given away is moot.
	if err := in.removeGiving(service, version); err != nil {
		return fmt.Errorf("remove give-away note: %w", err)
	}
	return nil
}

func checkNames(service, version string) error {
	if err := spec.CheckName("service", service); err != nil {
		return err
	}
	if err := spec.CheckVersion("version", version); err != nil {
		return err
	}
	if version == CurrentLink {
		return fmt.Errorf("version %q: %w", version, ErrReserved)
	}
	return nil
}

func (in *Installer) checkArtifact(want Artifact) error {
	if err := spec.CheckSHA256("sha256", want.SHA256); err != nil {
		return err
	}
	if want.Size <= 0 {
		return fmt.Errorf("artifact size %d: must be > 0", want.Size)
	}
	if want.Size > in.lim.MaxArtifactBytes {
		return fmt.Errorf("artifact size %d over the cap %d: %w", want.Size, in.lim.MaxArtifactBytes, ErrTooLarge)
	}
	return nil
}

// Fetched is an artifact downloaded to a temp file, not yet verified. Its
// digest and size are of unverified bytes (whatever answered): they are
// compared, never reported.
type Fetched struct {
	Path   string
	Size   int64
	SHA256 string // actual digest of the bytes
}

// Fetch copies at most want.Size+1 bytes of r into a temp file under the
// data dir, hashing as it writes. More bytes than declared or fewer is an
// error; the temp file is removed on any error. Nothing is kept to resume
// (OpenPartial does).
func (in *Installer) Fetch(ctx context.Context, r io.Reader, want Artifact) (*Fetched, error) {
	if err := in.checkArtifact(want); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	p, err := in.tempPartial(want)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Fetch(ctx, r)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Verified is an artifact whose digest and size matched; only Verify makes one.
type Verified struct {
	path   string
	sha256 string
	size   int64
}

// Path is the verified file.
func (v *Verified) Path() string { return v.path }

// Verify compares a fetched artifact with what was assigned. On mismatch the
// file is deleted and the error names the expected digest and size only:
// the digest and size of what came are those of unverified bytes, which may
// be anything the URL answered (an internal page, say), and errors end up
// in reports that operators and viewers read.
func (in *Installer) Verify(f *Fetched, want Artifact) (*Verified, error) {
	if f == nil {
		return nil, errors.New("verify: nothing fetched")
	}
	if f.SHA256 != want.SHA256 || f.Size != want.Size {
		os.Remove(f.Path)
		return nil, fmt.Errorf("verify: the bytes fetched are not the assigned sha256 %s (%d bytes): %w",
			want.SHA256, want.Size, ErrDigestMismatch)
	}
	return &Verified{path: f.Path, sha256: f.SHA256, size: f.Size}, nil
}

// Discard removes a fetched file (nil is fine).
func (in *Installer) Discard(f *Fetched) {
	if f != nil {
		os.Remove(f.Path)
	}
}

// DiscardVerified removes a verified file that will not be staged (nil is
// fine).
func (in *Installer) DiscardVerified(v *Verified) {
	if v != nil {
		os.Remove(v.path)
	}
}

// Staged reports whether service/version is already unpacked from the
// artifact with this digest.
func (in *Installer) Staged(service, version, sha string) bool {
	if checkNames(service, version) != nil {
		return false
	}
	if sha == "" || in.marker(service, version) != sha {
		return false
	}
	fi, err := os.Lstat(in.ReleaseDir(service, version))
	return err == nil && fi.IsDir()
}

// Stage unpacks a verified artifact into releases/<service>/<version>/. It
// unpacks into a temp dir beside it and renames that into place, so a
// half-unpacked release never exists under its real name. The verified file
// is removed afterwards. A release already unpacked from the same digest is
// kept as is. A directory of that version without a marker of this digest
// (another digest, or left half-removed by a crash) is removed and unpacked
// again, unless `current` points at it, which is an error. Cancelling ctx
// (a newer assignment, or the agent stopping) ends the unpacking at once
// with ctx's error and leaves nothing behind but the verified file's
// removal.
func (in *Installer) Stage(ctx context.Context, service, version string, v *Verified) (string, error) {
	if v == nil {
		return "", fmt.Errorf("stage %s %s: nothing verified", service, version)
	}
	defer os.Remove(v.path)
	if err := checkNames(service, version); err != nil {
		return "", fmt.Errorf("stage: %w", err)
	}
	final := in.ReleaseDir(service, version)
	if _, err := os.Lstat(final); err == nil {
		got := in.marker(service, version)
		if got == v.sha256 {
			in.keepOrLog(service, version, v)
			return final, nil
		}
		if cur, _ := in.Current(service); cur == version {
			return "", fmt.Errorf("stage %s %s: %s is current, unpacked from sha256 %q, not %s",
				service, version, final, got, v.sha256)
		}
		in.log.Warn().Str("service", service).Str("version", version).Str("path", final).
			Str("reason", fmt.Sprintf("unpacked from sha256 %q, not %s", got, v.sha256)).
			Msg("replacing a release directory that is not staged from this artifact")
		if err := in.removeRelease(service, version); err != nil {
			return "", fmt.Errorf("stage %s %s: replace %s: %w", service, version, final, err)
		}
	}
	sdir := in.serviceDir(service)
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	tmp, err := os.MkdirTemp(sdir, ".stage-"+version+"-")
	if err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	f, err := os.Open(v.path)
	if err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	err = unpackGzip(ctx, f, tmp, in.lim, &spaceGuard{in: in})
	f.Close()
	if err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	if err := os.MkdirAll(in.markerDir(service), 0o755); err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	if err := writeFileSync(in.markerPath(service, version), []byte(v.sha256+"\n")); err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	done = true
	if err := syncDir(sdir); err != nil {
		return "", fmt.Errorf("stage %s %s: %w", service, version, err)
	}
	in.keepOrLog(service, version, v)
	return final, nil
}

// keepOrLog keeps v's artifact (KeepArtifacts); failing to is logged, not
// an error of the stage: the agent then only serves it to nobody.
func (in *Installer) keepOrLog(service, version string, v *Verified) {
	if err := in.keepArtifact(v); err != nil {
		in.log.Warn().Str("service", service).Str("version", version).Err(err).Msg("artifact not kept for peers")
	}
}

// Switch atomically points releases/<service>/current at version: it makes
// a temp symlink and rename(2)s it over `current`, then fsyncs the
// directory. An empty version removes `current`. The release must be staged.
func (in *Installer) Switch(service, version string) error {
	if err := spec.CheckName("service", service); err != nil {
		return fmt.Errorf("switch: %w", err)
	}
	sdir := in.serviceDir(service)
	link := filepath.Join(sdir, CurrentLink)
	if version == "" {
		if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("switch %s: remove %s: %w", service, link, err)
		}
		if err := syncDir(sdir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("switch %s: %w", service, err)
		}
		return nil
	}
	if err := checkNames(service, version); err != nil {
		return fmt.Errorf("switch: %w", err)
	}
	if fi, err := os.Lstat(in.ReleaseDir(service, version)); err != nil || !fi.IsDir() {
		return fmt.Errorf("switch %s to %s: release is not staged", service, version)
	}
	tmp := filepath.Join(sdir, fmt.Sprintf(".current-%d", os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return fmt.Errorf("switch %s to %s: %w", service, version, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("switch %s to %s: %w", service, version, err)
	}
	// The switch has happened; a failed fsync only means a crash could undo
	// it, which recovery handles (it always switches back to the last good
	// release). Reporting it as a failed switch would be a lie.
	if err := syncDirFn(sdir); err != nil {
		in.log.Warn().Str("service", service).Str("version", version).Str("path", sdir).Err(err).
			Msg("switched, but fsync of the directory failed")
	}
	return nil
}

// Current is the version `current` points at ("" if there is no link).
func (in *Installer) Current(service string) (string, error) {
	t, err := os.Readlink(filepath.Join(in.serviceDir(service), CurrentLink))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("current %s: %w", service, err)
	}
	return t, nil
}

// Prune removes the unpacked releases of a service except those in keep and
// the one `current` points at (PruneKeeping keeps the newest ones too).
func (in *Installer) Prune(service string, keep ...string) error {
	return in.PruneKeeping(service, 0, keep...)
}

// markerTemp is the temp file writeFileSync writes path through: beside
// it, its name starting with "." (so it can never be the name of a
// version's marker). path may be a glob: New removes what a crash left.
func markerTemp(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
}

// writeFileSync writes path through markerTemp(path).
func writeFileSync(path string, b []byte) error {
	tmp := markerTemp(path)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// syncDirFn is syncDir; tests replace it to make the fsync after a switch
// fail.
var syncDirFn = syncDir

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
