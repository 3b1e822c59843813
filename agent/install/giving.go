package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// givingDirName is the directory, under a service dir, of the notes of
// releases being given away (GiveAwayStarted): releases/<service>/
// .giving/<version>. It is the agent's (the service dir is root's, only
// the release directories are given away), never inside the release
// tree the user could change.
const givingDirName = ".giving"

func (in *Installer) givingDir(service string) string {
	return filepath.Join(in.serviceDir(service), givingDirName)
}

func (in *Installer) givingPath(service, version string) string {
	return filepath.Join(in.givingDir(service), version)
}

// GiveAwayStarted notes, durably, that the agent starts giving the files
// of service/version to uid:gid (run.user). The walk gives the release's
// top directory last, so a walk cut short (the agent killed, the host
// losing power) leaves the top directory the agent's and some files the
// user's, whose processes may change them: the note, until
// GiveAwayDone removes it, says that the release is not the agent's
// alone whatever its top directory's owner (GiveAwayPending).
func (in *Installer) GiveAwayStarted(service, version string, uid, gid uint32) error {
	if err := checkNames(service, version); err != nil {
		return fmt.Errorf("note the give-away: %w", err)
	}
	dir := in.givingDir(service)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("note the give-away of %s %s: %w", service, version, err)
	}
	if err := writeFileSync(in.givingPath(service, version), fmt.Appendf(nil, "%d %d\n", uid, gid)); err != nil {
		return fmt.Errorf("note the give-away of %s %s: %w", service, version, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("note the give-away of %s %s: %w", service, version, err)
	}
	return nil
}

// GiveAwayDone removes the note of GiveAwayStarted, durably: the whole
// release is uid:gid's.
func (in *Installer) GiveAwayDone(service, version string) error {
	if err := checkNames(service, version); err != nil {
		return fmt.Errorf("give-away done: %w", err)
	}
	if err := in.removeGiving(service, version); err != nil {
		return fmt.Errorf("give-away of %s %s done: %w", service, version, err)
	}
	return nil
}

// GiveAwayPending reports whether a give-away of service/version was
// started and not done, and to whom (ok false: none). A note that cannot
// be read counts as a give-away to no one known (uid and gid MaxUint32).
func (in *Installer) GiveAwayPending(service, version string) (uid, gid uint32, ok bool) {
	if checkNames(service, version) != nil {
		return 0, 0, false
	}
	b, err := os.ReadFile(in.givingPath(service, version))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, false
	}
	const unknown = 1<<32 - 1
	f := strings.Fields(string(b))
	if err != nil || len(f) != 2 {
		return unknown, unknown, true
	}
	u, uerr := strconv.ParseUint(f[0], 10, 32)
	g, gerr := strconv.ParseUint(f[1], 10, 32)
	if uerr != nil || gerr != nil {
		return unknown, unknown, true
	}
	return uint32(u), uint32(g), true
}

// removeGiving removes a release's give-away note, durably.
func (in *Installer) removeGiving(service, version string) error {
	err := os.Remove(in.givingPath(service, version))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return syncDir(in.givingDir(service))
}
