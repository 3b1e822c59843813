// Package install owns the agent's on-disk releases: it fetches an artifact
// with a size cap and a running sha256 into a temp file, verifies it, unpacks
// a verified .tar.gz into releases/<service>/<version>/ through os.Root, and
// switches the releases/<service>/current symlink atomically.
//
// Layout under the data dir:
//
//	tmp/                          downloads in progress (emptied on start)
//	releases/<service>/<version>/ unpacked releases (only ever complete)
//	releases/<service>/.<version>.sha256   digest the release was unpacked from
//	releases/<service>/current -> <version>
//
// It must not import the coordinator or etcd, nor decide anything about the
// lifecycle: it only does the file work it is asked to do.
package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

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
}

// New prepares the data dir (tmp/ and releases/), removes leftovers of an
// earlier run (downloads and half-unpacked releases) and returns an Installer.
func New(dataDir string, lim Limits, log zerolog.Logger) (*Installer, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir %q: %w", dataDir, err)
	}
	in := &Installer{dataDir: abs, lim: lim.withDefaults(), log: log}
	if err := os.RemoveAll(in.tmpDir()); err != nil {
		return nil, fmt.Errorf("clean %s: %w", in.tmpDir(), err)
	}
	for _, d := range []string{in.tmpDir(), in.releasesDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	stale, _ := filepath.Glob(filepath.Join(in.releasesDir(), "*", ".stage-*"))
	links, _ := filepath.Glob(filepath.Join(in.releasesDir(), "*", ".current-*"))
	for _, p := range append(stale, links...) {
		log.Info().Str("path", p).Msg("removing leftover of an interrupted install")
		if err := os.RemoveAll(p); err != nil {
			return nil, fmt.Errorf("remove leftover %s: %w", p, err)
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
	return filepath.Join(in.serviceDir(service), version)
}

func (in *Installer) markerPath(service, version string) string {
	return filepath.Join(in.serviceDir(service), "."+version+".sha256")
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

// Fetched is an artifact downloaded to a temp file, not yet verified.
type Fetched struct {
	Path   string
	Size   int64
	SHA256 string // actual digest of the bytes
}

// Fetch copies at most want.Size+1 bytes of r into a temp file under the
// data dir, hashing as it writes. More bytes than declared or fewer is an
// error; the temp file is removed on any error.
func (in *Installer) Fetch(ctx context.Context, r io.Reader, want Artifact) (*Fetched, error) {
	if err := in.checkArtifact(want); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	f, err := os.CreateTemp(in.tmpDir(), "fetch-*")
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxReader{ctx, r}, want.Size+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	if n > want.Size {
		return nil, fmt.Errorf("fetch %s: more than the declared %d bytes: %w", want.SHA256, want.Size, ErrTooLarge)
	}
	if n < want.Size {
		return nil, fmt.Errorf("fetch %s: truncated: got %d of %d bytes", want.SHA256, n, want.Size)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	ok = true
	return &Fetched{Path: f.Name(), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
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
// file is deleted and the error names the expected and actual digests.
func (in *Installer) Verify(f *Fetched, want Artifact) (*Verified, error) {
	if f == nil {
		return nil, errors.New("verify: nothing fetched")
	}
	if f.SHA256 != want.SHA256 || f.Size != want.Size {
		os.Remove(f.Path)
		return nil, fmt.Errorf("verify: expected sha256 %s (%d bytes), got sha256 %s (%d bytes): %w",
			want.SHA256, want.Size, f.SHA256, f.Size, ErrDigestMismatch)
	}
	return &Verified{path: f.Path, sha256: f.SHA256, size: f.Size}, nil
}

// Discard removes a fetched file (nil is fine).
func (in *Installer) Discard(f *Fetched) {
	if f != nil {
		os.Remove(f.Path)
	}
}

// Staged reports whether service/version is already unpacked from the
// artifact with this digest.
func (in *Installer) Staged(service, version, sha string) bool {
	if checkNames(service, version) != nil {
		return false
	}
	b, err := os.ReadFile(in.markerPath(service, version))
	if err != nil || strings.TrimSpace(string(b)) != sha {
		return false
	}
	fi, err := os.Lstat(in.ReleaseDir(service, version))
	return err == nil && fi.IsDir()
}

// Stage unpacks a verified artifact into releases/<service>/<version>/. It
// unpacks into a temp dir beside it and renames that into place, so a
// half-unpacked release never exists under its real name. The verified file
// is removed afterwards. A release already unpacked from the same digest is
// kept as is; one unpacked from another digest is an error.
func (in *Installer) Stage(service, version string, v *Verified) (string, error) {
	if v == nil {
		return "", fmt.Errorf("stage %s %s: nothing verified", service, version)
	}
	defer os.Remove(v.path)
	if err := checkNames(service, version); err != nil {
		return "", fmt.Errorf("stage: %w", err)
	}
	final := in.ReleaseDir(service, version)
	if _, err := os.Lstat(final); err == nil {
		b, _ := os.ReadFile(in.markerPath(service, version))
		if got := strings.TrimSpace(string(b)); got != v.sha256 {
			return "", fmt.Errorf("stage %s %s: %s already exists, unpacked from sha256 %q, not %s",
				service, version, final, got, v.sha256)
		}
		return final, nil
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
	err = UnpackGzip(f, tmp, in.lim)
	f.Close()
	if err != nil {
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
	return final, nil
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
	if err := syncDir(sdir); err != nil {
		return fmt.Errorf("switch %s to %s: %w", service, version, err)
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
// the one `current` points at.
func (in *Installer) Prune(service string, keep ...string) error {
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
	for _, e := range entries {
		name := e.Name()
		if keepSet[name] || strings.HasPrefix(name, ".") || spec.CheckVersion("version", name) != nil {
			continue
		}
		in.log.Info().Str("service", service).Str("version", name).Msg("pruning old release")
		os.Remove(in.markerPath(service, name))
		if err := os.RemoveAll(filepath.Join(sdir, name)); err != nil {
			return fmt.Errorf("prune %s %s: %w", service, name, err)
		}
	}
	return nil
}

func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
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
