package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// RemoveService removes everything of a service under releases/: the
// `current` link first (durably: a crash leaves no link to a half-removed
// release), then every release (each one's digest marker before its tree,
// as Prune does), then the service's directory. A service with nothing
// installed is no error.
func (in *Installer) RemoveService(service string) error {
	if err := checkNames(service, "x"); err != nil {
		return err
	}
	sdir := in.serviceDir(service)
	err := os.Remove(filepath.Join(sdir, CurrentLink))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("remove %s: the current link: %w", service, err)
	default:
		if err := syncDir(sdir); err != nil {
			return fmt.Errorf("remove %s: %w", service, err)
		}
	}
	if err := in.Prune(service); err != nil {
		return fmt.Errorf("remove %s: %w", service, err)
	}
	if err := os.RemoveAll(sdir); err != nil {
		return fmt.Errorf("remove %s: %w", service, err)
	}
	if err := syncDir(in.releasesDir()); err != nil {
		return err
	}
	return in.PruneArtifacts()
}
