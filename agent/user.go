package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

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

// reclaimRelease makes sure that an unpacked release of service is not
// run as anyone but the user it was given to. A release the agent unpacked
// is its own until ownRelease gives it to run.user, whose service may then
// change any of it: run as another user, or as root (a spec without
// run.user), it would run what that user wrote. So a release directory
// owned by neither the agent's user nor the one run names is removed, to
// be fetched and unpacked again; when it is current (its process runs
// from it) it cannot be, and the error names spec.run.user and both
// owners.
//
// A release whose give-away (giveRelease) was started and not done (the
// agent killed, or the host losing power, in the middle of the walk) has
// its top directory still the agent's (given last) and any of its files
// the user's: it is removed the same way, whatever its top directory's
// owner, unless it is current and run as the user it was being given to
// (the stage walks it again and completes the give-away).
func (a *agent) reclaimRelease(service, version string, run *v1.RunSpec) error {
	dir := a.inst.ReleaseDir(service, version)
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return nil // not unpacked (Stage replaces anything else)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	gUID, gGID, pending := a.inst.GiveAwayPending(service, version)
	if !pending && (!ok || int(st.Uid) == os.Geteuid()) {
		return nil
	}
	ra, err := lookupRunAs(run)
	if err != nil {
		return err
	}
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if ra != nil {
		uid, gid = ra.uid, ra.gid
	}
	if pending {
		cur, _ := a.inst.Current(service)
		if cur == version && ra != nil && gUID == uid && gGID == gid {
			return nil
		}
		if cur == version {
			return fmt.Errorf("spec.run.user: %q (uid %d gid %d): release %s is current and was being given to uid %d gid %d when the agent stopped, whose processes may have changed it: "+
				"it is not run as another user; ship the change with a new version", run.GetUser(), uid, gid, version, gUID, gGID)
		}
		a.log.Warn().Str("service", service).Str("version", version).Uint32("owner_uid", gUID).Uint32("run_uid", uid).
			Msg("release given away in part (the agent stopped during the give-away): unpacking it again")
		if err := a.inst.DropRelease(service, version); err != nil {
			return fmt.Errorf("release %s given in part to uid %d, run as uid %d: %w", version, gUID, uid, err)
		}
		return nil
	}
	if st.Uid == uid && st.Gid == gid {
		return nil
	}
	if cur, _ := a.inst.Current(service); cur == version {
		return fmt.Errorf("spec.run.user: %q (uid %d gid %d): release %s is current and was given to uid %d gid %d, whose processes may have changed it: "+
			"it is not run as another user; ship the change with a new version", run.GetUser(), uid, gid, version, st.Uid, st.Gid)
	}
	a.log.Warn().Str("service", service).Str("version", version).Uint32("owner_uid", st.Uid).Uint32("run_uid", uid).
		Msg("release given to another user: unpacking it again")
	if err := a.inst.DropRelease(service, version); err != nil {
		return fmt.Errorf("release %s given to uid %d, run as uid %d: %w", version, st.Uid, uid, err)
	}
	return nil
}

// giveRelease gives the staged release service/version to the user its
// run spec names (ownRelease), between a durable note that it started and
// its removal once the whole tree is the user's (install's
// GiveAwayStarted, GiveAwayDone), so that a walk cut short by a crash is
// known to the next agent (reclaimRelease). On an error the note stays:
// the caller drops the release, which removes it.
func (a *agent) giveRelease(ctx context.Context, service, version string, run *v1.RunSpec) error {
	ra, err := lookupRunAs(run)
	if err != nil || ra == nil {
		return err
	}
	if err := a.inst.GiveAwayStarted(service, version, ra.uid, ra.gid); err != nil {
		return err
	}
	if err := ownRelease(ctx, a.inst.ReleaseDir(service, version), run); err != nil {
		return err
	}
	return a.inst.GiveAwayDone(service, version)
}

// ownRelease gives the files of a staged release to the user its run spec
// names (when the agent runs as root and the spec names one), so that the
// service and its hooks can read and write them.
//
// The agent is root and the tree may be that user's already (a kept
// release staged again; a release the service, running as the user,
// writes into): whatever is in it must not make the agent change the
// owner of anything outside it. So the walk holds each directory open and
// works from those handles, never from a path: a directory is entered
// only if the name is one now (O_NOFOLLOW: a link swapped in for it is
// changed itself, never followed), each entry is changed through a handle
// of its own inode (O_PATH: what the name meant when opened, whatever is
// renamed meanwhile), a file with more than one link is left alone (a hard
// link may be a file outside the release: the unpacker makes none), and a
// directory is given away after what is in it, the release last, so the
// user cannot rename anything in a directory the walk is still in.
//
// It stops when ctx ends (checked at every directory: a release of
// millions of entries would otherwise hold up the agent's shutdown or its
// upgrade's handover); the release is then left partly given away, and
// the stage fails.
func ownRelease(ctx context.Context, dir string, run *v1.RunSpec) error {
	ra, err := lookupRunAs(run)
	if err != nil || ra == nil {
		return err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	o := owner{ctx: ctx, uid: int(ra.uid), gid: int(ra.gid)}
	if err := o.tree(fd, dir, 0); err != nil {
		return err
	}
	return o.own(fd, dir)
}

// maxOwnDepth bounds the directories ownRelease holds open at once (one
// per level; the unpacker makes at most 64: maxPathDepth in
// agent/install).
const maxOwnDepth = 256

// ownHook, when set (tests), runs after ownRelease listed a directory and
// before it changes anything in it.
var ownHook func(dir string)

// dupCloexec duplicates fd close-on-exec: a process the agent starts
// meanwhile (another service, its hook or exec check, as another user)
// must not inherit it (with dup(2)'s descriptor it could list a 0700
// directory of another service's release: a review).
func dupCloexec(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// owner changes what it is handed to uid:gid, until ctx ends.
type owner struct {
	ctx      context.Context
	uid, gid int
}

// tree changes everything in the directory open as fd (path: for errors),
// depth levels below the release.
func (o owner) tree(fd int, path string, depth int) error {
	if depth >= maxOwnDepth {
		return fmt.Errorf("%s: more than %d directory levels", path, maxOwnDepth)
	}
	if err := o.ctx.Err(); err != nil {
		return fmt.Errorf("give %s away: %w", path, context.Cause(o.ctx))
	}
	dup, err := dupCloexec(fd)
	if err != nil {
		return fmt.Errorf("list %s: %w", path, err)
	}
	d := os.NewFile(uintptr(dup), path)
	names, err := d.Readdirnames(-1)
	d.Close()
	if errors.Is(err, unix.ENOENT) {
		return nil // removed since it was opened (the service's own)
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", path, err)
	}
	if ownHook != nil {
		ownHook(path)
	}
	for _, name := range names {
		p := path + "/" + name
		sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			err = o.tree(sub, p, depth+1)
			if err == nil {
				err = o.own(sub, p)
			}
			unix.Close(sub)
			if err != nil {
				return err
			}
			continue
		}
		switch {
		case errors.Is(err, unix.ENOENT):
			continue // gone meanwhile
		case !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.ELOOP):
			return fmt.Errorf("open %s: %w", p, err)
		}
		// Not a directory (a link to one included): the entry itself.
		h, err := unix.Openat(fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", p, err)
		}
		err = o.own(h, p)
		unix.Close(h)
		if err != nil {
			return err
		}
	}
	return nil
}

// own changes the owner of the inode open as fd, unless it is a file with
// other links or already the owner's.
func (o owner) own(fd int, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		return nil
	}
	if int(st.Uid) == o.uid && int(st.Gid) == o.gid {
		return nil
	}
	if err := unix.Fchownat(fd, "", o.uid, o.gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}
