package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// Kept artifacts (peer-to-peer).
//
// With KeepArtifacts on, Stage keeps the verified artifact a release was
// unpacked from, as artifacts/<sha256> (a hard link of the verified file,
// so no copy), for the agent to serve to other agents. An artifact is kept
// while some staged release of any service was unpacked from it: every
// Prune and RemoveService removes the others (PruneArtifacts). A kept
// artifact costs its size on disk for as long as its release is kept
// (Config.KeepReleases).
//
// A prune of one service racing with a Stage of another may remove the
// artifact that Stage just kept (its marker was not written yet): the agent
// then serves that artifact to nobody (peers answer NotFound and fetchers
// take the next source), which is never wrong.

// artifactsDirName is the directory of kept artifacts under the data dir.
const artifactsDirName = "artifacts"

func (in *Installer) artifactsDir() string { return filepath.Join(in.dataDir, artifactsDirName) }

// KeepArtifacts makes Stage keep verified artifacts from now on. Call it
// before any Stage.
func (in *Installer) KeepArtifacts() { in.keep.Store(true) }

// keepArtifact links a verified file to artifacts/<sha256> (nothing when
// it is there already).
func (in *Installer) keepArtifact(v *Verified) error {
	if !in.keep.Load() {
		return nil
	}
	if err := os.MkdirAll(in.artifactsDir(), 0o755); err != nil {
		return fmt.Errorf("keep artifact %s: %w", v.sha256, err)
	}
	err := os.Link(v.path, filepath.Join(in.artifactsDir(), v.sha256))
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("keep artifact %s: %w", v.sha256, err)
	}
	return nil
}

// OpenArtifact opens a kept artifact by its sha256 and returns its size.
// fs.ErrNotExist (wrapped) when it is not kept.
func (in *Installer) OpenArtifact(sha string) (*os.File, int64, error) {
	if err := spec.CheckSHA256("sha256", sha); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(filepath.Join(in.artifactsDir(), sha))
	if err != nil {
		return nil, 0, fmt.Errorf("artifact %s: %w", sha, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("artifact %s: %w", sha, err)
	}
	return f, fi.Size(), nil
}

// PruneArtifacts removes the kept artifacts no staged release was unpacked
// from.
func (in *Installer) PruneArtifacts() error {
	kept, err := os.ReadDir(in.artifactsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("prune artifacts: %w", err)
	}
	if len(kept) == 0 {
		return nil
	}
	used := map[string]bool{}
	services, err := os.ReadDir(in.releasesDir())
	if err != nil {
		return fmt.Errorf("prune artifacts: %w", err)
	}
	for _, s := range services {
		if !s.IsDir() {
			continue
		}
		releases, err := os.ReadDir(in.serviceDir(s.Name()))
		if err != nil {
			continue
		}
		for _, r := range releases {
			if r.IsDir() && !strings.HasPrefix(r.Name(), ".") {
				if m := in.marker(s.Name(), r.Name()); m != "" {
					used[m] = true
				}
			}
		}
	}
	for _, e := range kept {
		if used[e.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(in.artifactsDir(), e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("prune artifact %s: %w", e.Name(), err)
		}
	}
	return nil
}

// DropRelease removes an unpacked release of a service that nothing uses
// (a release staged ahead of its wave that is no longer wanted) and the
// kept artifacts no release uses any more. The release `current` points at
// is never removed: that is an error.
func (in *Installer) DropRelease(service, version string) error {
	if err := checkNames(service, version); err != nil {
		return fmt.Errorf("drop release: %w", err)
	}
	if cur, _ := in.Current(service); cur == version {
		return fmt.Errorf("drop release %s %s: it is current", service, version)
	}
	if err := in.removeRelease(service, version); err != nil {
		return fmt.Errorf("drop release %s %s: %w", service, version, err)
	}
	return in.PruneArtifacts()
}
