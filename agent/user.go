package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// runAs is who a service's processes and hooks run as (run.user,
// run.group), resolved on this host.
type runAs struct {
	uid, gid uint32
	groups   []uint32 // the user's supplementary groups
}

// lookupRunAs resolves run.user and run.group on this host (nil: run as
// the agent). A user or group that does not exist is an error naming the
// field and the value. An agent that is not root can run a service only as
// itself: any other user is an error saying so.
func lookupRunAs(run *v1.RunSpec) (*runAs, error) {
	name := run.GetUser()
	if name == "" {
		return nil, nil
	}
	u, err := lookupUser(name)
	if err != nil {
		return nil, fmt.Errorf("spec.run.user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("spec.run.user: %q has uid %q, not a number", name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("spec.run.user: %q has gid %q, not a number", name, u.Gid)
	}
	if g := run.GetGroup(); g != "" {
		grp, err := lookupGroup(g)
		if err != nil {
			return nil, fmt.Errorf("spec.run.group: %w", err)
		}
		if gid, err = strconv.ParseUint(grp.Gid, 10, 32); err != nil {
			return nil, fmt.Errorf("spec.run.group: %q has gid %q, not a number", g, grp.Gid)
		}
	}
	ra := &runAs{uid: uint32(uid), gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if n, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(n) != ra.gid {
				ra.groups = append(ra.groups, uint32(n))
			}
		}
	}
	if os.Geteuid() != 0 {
		if int(ra.uid) == os.Geteuid() && (run.GetGroup() == "" || int(ra.gid) == os.Getegid()) {
			return nil, nil // itself: nothing to switch
		}
		return nil, fmt.Errorf("spec.run.user: %q (uid %d): the agent runs as uid %d, not root, and cannot run a service as another user",
			name, ra.uid, os.Geteuid())
	}
	return ra, nil
}

// lookupUser finds a user by name or, for a number, by uid.
func lookupUser(name string) (*user.User, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		u, err := user.LookupId(name)
		if err != nil {
			var unknown user.UnknownUserIdError
			if errors.As(err, &unknown) {
				return nil, fmt.Errorf("no user with uid %s on this host", name)
			}
			return nil, fmt.Errorf("looking up uid %s: %v", name, err)
		}
		return u, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("no user %q on this host", name)
		}
		return nil, fmt.Errorf("looking up user %q: %v", name, err)
	}
	return u, nil
}

// lookupGroup finds a group by name or, for a number, by gid.
func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		g, err := user.LookupGroupId(name)
		if err != nil {
			var unknown user.UnknownGroupIdError
			if errors.As(err, &unknown) {
				return nil, fmt.Errorf("no group with gid %s on this host", name)
			}
			return nil, fmt.Errorf("looking up gid %s: %v", name, err)
		}
		return g, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("no group %q on this host", name)
		}
		return nil, fmt.Errorf("looking up group %q: %v", name, err)
	}
	return g, nil
}

// credential is what a process of the run spec runs as (nil: as the agent).
func credential(run *v1.RunSpec) (*syscall.Credential, error) {
	ra, err := lookupRunAs(run)
	if err != nil || ra == nil {
		return nil, err
	}
	return &syscall.Credential{Uid: ra.uid, Gid: ra.gid, Groups: ra.groups}, nil
}

// ownRelease gives the files of a staged release to the user its run spec
// names (when the agent runs as root and the spec names one), so that the
// service and its hooks can read and write them. Links are changed
// themselves, never what they point at.
func ownRelease(dir string, run *v1.RunSpec) error {
	ra, err := lookupRunAs(run)
	if err != nil || ra == nil {
		return err
	}
	return filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(ra.uid), int(ra.gid))
	})
}
