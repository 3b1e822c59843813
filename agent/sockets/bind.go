package sockets

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Decl is one declared socket, its listen address already expanded:
// "host:port" or "unix:/path" (see spec.ParseListen).
type Decl struct {
	Name   string
	Listen string
}

// Socket is a listening socket the agent holds. Its descriptor is the
// agent's own copy: close-on-exec, so only the processes Prepare sets up
// inherit it. Methods are safe for concurrent use.
type Socket struct {
	Name   string
	Listen string // as declared
	// Network is "tcp" or "unix"; Addr is the bound local address (for
	// "127.0.0.1:0" the port the kernel chose).
	Network, Addr string
	// Inode identifies the socket on this host for as long as it exists
	// (the N of "socket:[N]" in /proc/PID/fd); Recover finds it by it.
	Inode uint64
	// From is the pid Recover copied the socket from, 0 if it was bound by
	// this agent.
	From int

	mu sync.Mutex
	fd int // -1 once closed
}

// Identity is what the agent records about a socket to find it again after
// a restart (Recover). It marshals to JSON.
type Identity struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	Inode  uint64 `json:"inode"`
}

// ErrClosed is returned for a socket the agent has closed.
var ErrClosed = errors.New("socket closed")

// Identity returns what Recover needs to find s again.
func (s *Socket) Identity() Identity {
	return Identity{Name: s.Name, Listen: s.Listen, Inode: s.Inode}
}

// File returns a new *os.File for the socket: a duplicate of the agent's
// descriptor (close-on-exec), which the caller closes when done with it;
// closing it does not close the socket. For os/exec's ExtraFiles use
// Prepare, which does this.
func (s *Socket) File() (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil, fmt.Errorf("socket %s: %w", s.Name, ErrClosed)
	}
	nfd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("socket %s: dup: %w", s.Name, err)
	}
	return os.NewFile(uintptr(nfd), s.Name), nil
}

// Renamed returns the same listening socket under another name: a new
// Socket holding a duplicate of the agent's descriptor, for a release that
// declares the socket (the same address) under a name of its own. Closing
// one does not close the other.
func (s *Socket) Renamed(name string) (*Socket, error) {
	if err := spec.CheckSocketName("name", name); err != nil {
		return nil, fmt.Errorf("socket %s: %w", s.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil, fmt.Errorf("socket %s: %w", s.Name, ErrClosed)
	}
	nfd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("socket %s: dup: %w", s.Name, err)
	}
	return &Socket{Name: name, Listen: s.Listen, Network: s.Network, Addr: s.Addr, Inode: s.Inode, From: s.From, fd: nfd}, nil
}

// Close closes the agent's copy of the socket. The socket itself stays open
// (and keeps its queue) while a process holds it; a Unix socket's path is
// left in place. Closing twice returns nil.
func (s *Socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("close socket %s: %w", s.Name, err)
	}
	return nil
}

// CloseAll closes every socket's agent copy and returns the errors joined.
func CloseAll(socks []*Socket) error {
	var errs []error
	for _, s := range socks {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

// FromSpec returns the sockets of run with ${host.*} placeholders expanded,
// checked as spec.Validate checks them (a label value can still make a bad
// address): names, addresses, no port 0, no duplicates, at most
// spec.MaxSockets. Errors name the field ("run.sockets[1].listen: ...").
func FromSpec(run *v1.RunSpec, hostID string, labels map[string]string) ([]Decl, error) {
	socks := run.GetSockets()
	if len(socks) > spec.MaxSockets {
		return nil, fmt.Errorf("run.sockets: %d sockets, more than %d", len(socks), spec.MaxSockets)
	}
	decls := make([]Decl, 0, len(socks))
	for i, s := range socks {
		field := fmt.Sprintf("run.sockets[%d]", i)
		listen, err := spec.Expand(s.GetListen(), hostID, labels)
		if err != nil {
			return nil, fmt.Errorf("%s.listen: %w", field, err)
		}
		d := Decl{Name: s.GetName(), Listen: listen}
		network, addr, err := spec.ParseListen(listen)
		if err != nil {
			return nil, fmt.Errorf("%s.listen: %q: %w", field, listen, err)
		}
		if spec.ListenPort(network, addr) == "0" {
			return nil, fmt.Errorf("%s.listen: %q: port 0 is not a fixed address", field, listen)
		}
		decls = append(decls, d)
	}
	if err := checkDecls(decls); err != nil {
		return nil, err
	}
	return decls, nil
}

// checkDecls checks names, addresses and duplicates; errors name the field.
func checkDecls(decls []Decl) error {
	if len(decls) > spec.MaxSockets {
		return fmt.Errorf("run.sockets: %d sockets, more than %d", len(decls), spec.MaxSockets)
	}
	names := map[string]int{}
	addrs := map[string]int{}
	for i, d := range decls {
		field := fmt.Sprintf("run.sockets[%d]", i)
		if err := spec.CheckSocketName(field+".name", d.Name); err != nil {
			return err
		}
		if prev, dup := names[d.Name]; dup {
			return fmt.Errorf("%s.name: %q is also the name of run.sockets[%d]", field, d.Name, prev)
		}
		names[d.Name] = i
		if _, _, err := spec.ParseListen(d.Listen); err != nil {
			return fmt.Errorf("%s.listen: %q: %w", field, d.Listen, err)
		}
		if prev, dup := addrs[d.Listen]; dup {
			return fmt.Errorf("%s.listen: %q is also the address of run.sockets[%d]", field, d.Listen, prev)
		}
		addrs[d.Listen] = i
	}
	return nil
}

// Bind binds and listens on every declared socket, in order: all or none
// (on an error the sockets already bound are closed). TCP sockets get
// SO_REUSEADDR (a restarted agent binds again despite connections in
// TIME_WAIT) and the backlog of net.core.somaxconn (as net.Listen: the
// kernel's maximum, 4096 by default since Linux 5.4); a host name is
// resolved and the first address bound; an empty host listens on every
// address, IPv4 and IPv6. A Unix socket is bound as systemd binds one
// (listenUnix: its directories made, mode UnixSocketMode); its stale file
// (nothing listening) is replaced, a live one is an error. The sockets are
// left in blocking mode.
func Bind(decls []Decl) ([]*Socket, error) {
	if err := checkDecls(decls); err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	socks := make([]*Socket, 0, len(decls))
	for _, d := range decls {
		s, err := bindOne(d)
		if err != nil {
			_ = CloseAll(socks)
			return nil, err
		}
		socks = append(socks, s)
	}
	return socks, nil
}

func bindOne(d Decl) (*Socket, error) {
	network, addr, err := spec.ParseListen(d.Listen)
	if err != nil {
		return nil, fmt.Errorf("bind socket %s: %q: %w", d.Name, d.Listen, err)
	}
	var fd int
	if network == "unix" {
		fd, err = listenUnix(addr)
	} else {
		fd, err = listen(network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("bind socket %s on %s: %w", d.Name, d.Listen, err)
	}
	s, err := newSocket(fd, d)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("bind socket %s on %s: %w", d.Name, d.Listen, err)
	}
	return s, nil
}

// UnixSocketMode is the mode of a Unix socket's file, as systemd's
// SocketMode= default: anyone may connect, who can reach it is decided by
// the directories above it. UnixDirMode is the mode of the directories made
// for it (systemd's DirectoryMode=).
const (
	UnixSocketMode = 0o666
	UnixDirMode    = 0o755
)

// listenUnix binds and listens on the Unix socket path as systemd binds a
// ListenStream= path: bound by its absolute path (what getsockname, ss and
// sd_is_socket_unix see), missing parent directories made (UnixDirMode),
// the socket file given UnixSocketMode whatever the agent's umask, and a
// stale socket file of that name (nobody listening) replaced.
//
// The socket's directory is opened once (an O_PATH descriptor) and the
// check of a stale file, its removal and the change of the new file's mode
// name the file in that directory, never the path again: a directory on
// the path renamed or replaced by a symlink meanwhile (by a service user who
// can write to a directory above it) cannot make the agent remove or chmod
// a file elsewhere; a bind that such a swap sent elsewhere is found (the
// directory holds no socket of the agent's) and fails, its file removed
// (removeStray).
func listenUnix(path string) (int, error) {
	// Split as the kernel resolves it: no lexical cleaning of "..".
	i := strings.LastIndexByte(path, '/')
	dir, base := path[:i], path[i+1:]
	if dir == "" {
		dir = "/"
	}
	dirfd, err := openSocketDir(dir)
	if err != nil {
		return -1, fmt.Errorf("the socket's directory: %w", err)
	}
	defer unix.Close(dirfd)
	if testHookUnix != nil {
		testHookUnix("bind")
	}
	fd, err := bindUnix(path)
	if errors.Is(err, syscall.EADDRINUSE) {
		if rmErr := removeStaleUnixIn(dirfd, path, base); rmErr != nil {
			return -1, rmErr
		}
		fd, err = bindUnix(path)
	}
	if err != nil {
		return -1, err
	}
	if err := chmodBoundSocket(dirfd, path, base); err != nil {
		removeStray(fd, dir, base)
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// removeStray removes the socket file of fd, bound by a path that a swap
// led to another directory than the one opened: it is wherever dir leads
// now, if it still does, and is removed only if a connection to the file
// there reaches fd (fd is nobody else's yet: made non-blocking to check).
func removeStray(fd int, dir, base string) {
	dirfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dirfd)
	via := inDir(dirfd, base)
	if len(via) > spec.MaxUnixPathLen {
		return
	}
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer unix.Close(c)
	if unix.Connect(c, &unix.SockaddrUnix{Name: via}) != nil || unix.SetNonblock(fd, true) != nil {
		return
	}
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
	if err != nil {
		return // not ours
	}
	_ = unix.Close(nfd)
	_ = unix.Unlinkat(dirfd, base, 0)
}

// openSocketDir opens dir (an O_PATH descriptor), walking it one name at a
// time from the root as the kernel resolves a path (symlinks followed,
// ".." too), and makes each missing directory on the way in the directory
// the walk holds (mkdirat), mode UnixDirMode whatever the umask: one made
// here is opened without following a symlink and changed by its
// descriptor, so a directory swapped for a symlink meanwhile is never
// changed in its place. Existing ones are left as they are.
func openSocketDir(dir string) (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	walked := ""
	for _, name := range strings.Split(dir, "/") {
		if name == "" {
			continue
		}
		walked += "/" + name
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			next, err = makeDirIn(fd, name)
		}
		_ = unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", walked, err)
		}
		fd = next
	}
	return fd, nil
}

// makeDirIn makes name in the directory dirfd refers to (UnixDirMode) and
// returns a descriptor of it; one made meanwhile by someone else is opened
// as it is.
func makeDirIn(dirfd int, name string) (int, error) {
	err := unix.Mkdirat(dirfd, name, UnixDirMode)
	if errors.Is(err, unix.EEXIST) {
		return unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("mkdir: %w", err)
	}
	if testHookUnix != nil {
		testHookUnix("mkdir " + name)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open the directory made: %w", err)
	}
	if err := unix.Fchmod(fd, UnixDirMode); err != nil { // the umask may have narrowed it
		_ = unix.Close(fd)
		return -1, fmt.Errorf("chmod the directory made: %w", err)
	}
	return fd, nil
}

// bindUnix binds a blocking, close-on-exec Unix stream socket to path and
// listens with the kernel's maximum backlog (net.core.somaxconn, as
// package net).
func bindUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("bind: %w", err)
	}
	// The kernel lowers a backlog over net.core.somaxconn to it.
	if err := unix.Listen(fd, math.MaxInt32); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// inDir names the file name in the directory dirfd refers to, for calls
// that take a path only (connect, chmod of an O_PATH descriptor): the
// descriptor's /proc link, resolved by the kernel to that directory
// whatever happens to the path meanwhile.
func inDir(dirfd int, name string) string { return procFD(dirfd) + "/" + name }

// procFD is the /proc link of the agent's descriptor fd.
func procFD(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// removeStaleUnixIn removes name, in the directory dirfd refers to, if it
// is a Unix socket nobody listens on; path is for messages.
func removeStaleUnixIn(dirfd int, path, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	via := inDir(dirfd, name)
	if len(via) > spec.MaxUnixPathLen {
		return fmt.Errorf("%s exists; its name is too long to check through /proc (%d bytes, over %d): remove it if it is stale", path, len(via), spec.MaxUnixPathLen)
	}
	// Non-blocking: a connect to a live socket whose queue is full fails
	// with EAGAIN instead of waiting.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: via})
	_ = unix.Close(fd)
	switch {
	case err == nil, errors.Is(err, syscall.EAGAIN): // EAGAIN: its queue is full
		return fmt.Errorf("%s: %w (another process listens on it)", path, syscall.EADDRINUSE)
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%s exists and cannot be checked: %w", path, err)
	}
	if testHookUnix != nil {
		testHookUnix("remove")
	}
	if err := unix.Unlinkat(dirfd, name, 0); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// chmodBoundSocket gives the socket file just bound, name in the directory
// dirfd refers to, UnixSocketMode. It must be a socket of the agent's user
// with one link (the one just made): anything else there means the path
// led elsewhere when it was bound, or the file was replaced since.
func chmodBoundSocket(dirfd int, path, name string) error {
	f, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: the socket just bound is not in its directory: %w", path, err)
	}
	defer unix.Close(f)
	var st unix.Stat_t
	if err := unix.Fstat(f, &st); err != nil {
		return fmt.Errorf("fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || int(st.Uid) != os.Geteuid() || st.Nlink != 1 {
		return fmt.Errorf("%s: the file there is not the socket just bound (mode %#o, uid %d, %d links)", path, st.Mode, st.Uid, st.Nlink)
	}
	if testHookUnix != nil {
		testHookUnix("chmod")
	}
	// fchmodat2 (Linux 6.6) changes an O_PATH descriptor's file; before
	// it, its /proc link does.
	err = unix.Fchmodat(f, "", UnixSocketMode, unix.AT_EMPTY_PATH)
	// EPERM: a seccomp filter that does not know fchmodat2 (older runc,
	// libseccomp's default errno) refuses it as it refuses what it denies.
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM) {
		err = chmodProc(f, UnixSocketMode)
	}
	if err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

// chmodProc changes the mode of the file an O_PATH descriptor holds
// through its /proc link (what glibc's fchmodat does without fchmodat2).
func chmodProc(fd int, mode uint32) error {
	return unix.Chmod(procFD(fd), mode)
}

// testHookUnix, when set, runs in listenUnix after a directory is made
// ("mkdir NAME"), before the bind ("bind"),
// between the check that a file is a stale socket and its removal
// ("remove"), and between the check of the file just bound and the change
// of its mode ("chmod").
var testHookUnix func(stage string)

// listen binds a TCP address with package net (address resolution, dual
// stack, the somaxconn backlog, SO_REUSEADDR set explicitly here too) and
// returns a blocking close-on-exec duplicate of the listener's descriptor;
// the net listener itself is closed.
func listen(network, addr string) (int, error) {
	lc := net.ListenConfig{
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("SO_REUSEADDR: %w", serr)
			}
			return nil
		},
	}
	l, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return -1, err
	}
	defer l.Close()
	rc, err := l.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(lfd uintptr) {
		fd, derr = unix.FcntlInt(lfd, unix.F_DUPFD_CLOEXEC, 3)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	// Nobody else holds the socket yet: the mode can still be chosen.
	if err := unix.SetNonblock(fd, false); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("set blocking: %w", err)
	}
	return fd, nil
}

// newSocket takes ownership of fd (on success) and fills in the identity.
func newSocket(fd int, d Decl) (*Socket, error) {
	network, _, err := spec.ParseListen(d.Listen)
	if err != nil {
		return nil, err
	}
	ino, err := inode(fd)
	if err != nil {
		return nil, err
	}
	addr, err := localAddr(fd)
	if err != nil {
		return nil, err
	}
	return &Socket{Name: d.Name, Listen: d.Listen, Network: network, Addr: addr, Inode: ino, fd: fd}, nil
}

// inode returns the inode of the socket fd refers to (an error if it is not
// a socket).
func inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, fmt.Errorf("fd %d is not a socket (mode %#o)", fd, st.Mode)
	}
	return st.Ino, nil
}

// localAddr returns the socket's bound address as a string.
func localAddr(fd int) (string, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", fmt.Errorf("getsockname: %w", err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	case *unix.SockaddrInet6:
		host := net.IP(a.Addr[:]).String()
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				host += "%" + ifi.Name
			}
		}
		return net.JoinHostPort(host, strconv.Itoa(a.Port)), nil
	case *unix.SockaddrUnix:
		return a.Name, nil
	default:
		return "", fmt.Errorf("unexpected socket address %T", sa)
	}
}
