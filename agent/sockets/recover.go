package sockets

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Recover gets a restarted agent its sockets back, in the order of ids:
// each socket is copied out of the first process in pids that holds it
// (found by its inode among /proc/PID/fd's "socket:[N]" links, copied with
// pidfd_open and pidfd_getfd: Linux 5.6 or later, and ptrace permission
// over the process, which root and the process's own user have), and bound
// anew from its Listen address only when none of them holds it (e.g. the
// service was not running). pids are the service's running processes, as
// the caller recorded them; a pid that is gone is skipped, and since the
// copy is checked against the inode, a reused pid cannot yield a wrong
// socket.
//
// A socket that a process holds but that cannot be copied is an error,
// naming the pid and the likely cause: binding anew would fail or, for a
// Unix socket, take the path away from the running service. So is a pid
// whose descriptors cannot be listed, unless every socket was found
// elsewhere. On an error the sockets already recovered are closed.
func Recover(ids []Identity, pids []int) ([]*Socket, error) {
	decls := make([]Decl, len(ids))
	want := make(map[uint64]int, len(ids))
	for i, id := range ids {
		decls[i] = Decl{Name: id.Name, Listen: id.Listen}
		if id.Inode == 0 {
			return nil, fmt.Errorf("recover socket %s: no inode recorded", id.Name)
		}
		if prev, dup := want[id.Inode]; dup {
			return nil, fmt.Errorf("recover socket %s: inode %d is also that of %s", id.Name, id.Inode, ids[prev].Name)
		}
		want[id.Inode] = i
	}
	if err := checkDecls(decls); err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	socks := make([]*Socket, len(ids))
	fail := func(err error) ([]*Socket, error) {
		_ = CloseAll(socks)
		return nil, err
	}
	var scanErrs []error
	for _, pid := range pids {
		if len(want) == 0 {
			break
		}
		held, err := socketFDs(pid, want)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				scanErrs = append(scanErrs, err)
			}
			continue
		}
		if len(held) == 0 {
			continue
		}
		got, err := copyFDs(pid, held)
		if err != nil {
			return fail(err)
		}
		for ino, fd := range got {
			delete(got, ino)
			i := want[ino]
			s, err := recovered(fd, decls[i], pid)
			if err != nil {
				_ = unix.Close(fd)
				closeFDs(got)
				return fail(fmt.Errorf("recover socket %s from pid %d: %w", decls[i].Name, pid, err))
			}
			socks[i] = s
			delete(want, ino)
		}
	}
	if len(want) > 0 && len(scanErrs) > 0 {
		return fail(fmt.Errorf("recover sockets: cannot tell whether a process holds %s: %w", missing(ids, want), errors.Join(scanErrs...)))
	}
	for i := range ids {
		if socks[i] != nil {
			continue
		}
		s, err := bindOne(decls[i])
		if err != nil {
			return fail(fmt.Errorf("recover: no process in %v holds socket %s (inode %d); binding anew: %w", pids, ids[i].Name, ids[i].Inode, err))
		}
		socks[i] = s
	}
	return socks, nil
}

func missing(ids []Identity, want map[uint64]int) string {
	var names []string
	for _, id := range ids {
		if _, ok := want[id.Inode]; ok {
			names = append(names, id.Name)
		}
	}
	return strings.Join(names, ", ")
}

// socketFDs lists pid's descriptors that are sockets with an inode in want:
// inode -> fd number in pid. An error wrapping os.ErrNotExist means pid is
// gone.
func socketFDs(pid int, want map[uint64]int) (map[uint64]int, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list descriptors of pid %d: %w%s", pid, err, errnoHint(err))
	}
	held := map[uint64]int{}
	for _, e := range entries {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		rest, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
		if err != nil {
			continue
		}
		if _, ok := want[ino]; !ok {
			continue
		}
		if _, seen := held[ino]; seen {
			continue // the first descriptor will do
		}
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			held[ino] = fd
		}
	}
	return held, nil
}

// copyFDs copies pid's descriptors held (inode -> fd number) into the agent
// with pidfd_getfd (the copies are close-on-exec) and returns those whose
// inode still matches. A descriptor closed or reused meanwhile is skipped;
// the process having exited yields nothing. Other failures are errors.
func copyFDs(pid int, held map[uint64]int) (map[uint64]int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("recover sockets: pidfd_open(%d): %w%s", pid, err, errnoHint(err))
	}
	defer unix.Close(pidfd)
	got := map[uint64]int{}
	for ino, target := range held {
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		switch {
		case errors.Is(err, syscall.EBADF), errors.Is(err, syscall.ESRCH):
			continue
		case err != nil:
			closeFDs(got)
			return nil, fmt.Errorf("recover sockets: pidfd_getfd(pid %d, fd %d): %w%s", pid, target, err, errnoHint(err))
		}
		if cur, err := inode(fd); err != nil || cur != ino {
			_ = unix.Close(fd)
			continue
		}
		got[ino] = fd
	}
	return got, nil
}

func closeFDs(fds map[uint64]int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// recovered checks that fd is a listening socket of d's kind and makes it a
// Socket (owning fd on success).
func recovered(fd int, d Decl, pid int) (*Socket, error) {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil {
		return nil, fmt.Errorf("SO_ACCEPTCONN: %w", err)
	} else if v == 0 {
		return nil, errors.New("the socket is not listening")
	}
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return nil, fmt.Errorf("SO_DOMAIN: %w", err)
	}
	s, err := newSocket(fd, d)
	if err != nil {
		return nil, err
	}
	if isUnix := dom == unix.AF_UNIX; isUnix != (s.Network == "unix") {
		return nil, fmt.Errorf("the socket's family (%d) does not match %q", dom, d.Listen)
	}
	s.From = pid
	return s, nil
}

// errnoHint adds what a syscall error most likely means here.
func errnoHint(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSYS):
		return " (pidfd_open and pidfd_getfd need Linux 5.6 or later)"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return " (copying another process's descriptors needs ptrace permission over it: run the agent as root or as the service's user, and check kernel.yama.ptrace_scope)"
	default:
		return ""
	}
}
