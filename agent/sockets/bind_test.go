package sockets

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// sockDir is a short temporary directory for Unix sockets (t.TempDir's
// paths can exceed the 107 bytes of a socket address).
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fwsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func bind(t *testing.T, decls ...Decl) []*Socket {
	t.Helper()
	socks, err := Bind(decls)
	if err != nil {
		t.Fatalf("Bind: %v", err)
	}
	t.Cleanup(func() { _ = CloseAll(socks) })
	return socks
}

func fdOf(t *testing.T, s *Socket) int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		t.Fatalf("socket %s is closed", s.Name)
	}
	return s.fd
}

func TestBindAgentCopy(t *testing.T) {
	dir := sockDir(t)
	socks := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"}, Decl{Name: "admin", Listen: "unix:" + filepath.Join(dir, "admin.sock")})
	for _, s := range socks {
		fd := fdOf(t, s)
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("%s: agent copy is not close-on-exec (flags %#x, %v)", s.Name, flags, err)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK != 0 {
			t.Errorf("%s: socket is not in blocking mode (flags %#x, %v)", s.Name, fl, err)
		}
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
			t.Errorf("%s: not listening (%d, %v)", s.Name, v, err)
		}
		if ino, err := inode(fd); err != nil || ino != s.Inode || ino == 0 {
			t.Errorf("%s: inode %d, fstat says %d (%v)", s.Name, s.Inode, ino, err)
		}
		link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if want := "socket:[" + strconv.FormatUint(s.Inode, 10) + "]"; err != nil || link != want {
			t.Errorf("%s: /proc/self/fd link %q (%v), want %q", s.Name, link, err, want)
		}
	}
	http, admin := socks[0], socks[1]
	if v, err := unix.GetsockoptInt(fdOf(t, http), unix.SOL_SOCKET, unix.SO_REUSEADDR); err != nil || v != 1 {
		t.Errorf("SO_REUSEADDR = %d (%v)", v, err)
	}
	if http.Network != "tcp" || !strings.HasPrefix(http.Addr, "127.0.0.1:") || http.Addr == "127.0.0.1:0" {
		t.Errorf("http: network %q addr %q", http.Network, http.Addr)
	}
	if admin.Network != "unix" || admin.Addr != filepath.Join(dir, "admin.sock") {
		t.Errorf("admin: network %q addr %q", admin.Network, admin.Addr)
	}
	if got := http.Identity(); got != (Identity{Name: "http", Listen: "127.0.0.1:0", Inode: http.Inode}) {
		t.Errorf("Identity = %+v", got)
	}
	// The queue is there before any process accepts: a dial succeeds.
	c, err := net.Dial("tcp", http.Addr)
	if err != nil {
		t.Fatalf("dial the bound socket: %v", err)
	}
	_ = c.Close()
	// Close closes the agent's copy only once; the Unix path stays.
	if err := admin.Close(); err != nil {
		t.Fatal(err)
	}
	if err := admin.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := admin.File(); !errors.Is(err, ErrClosed) {
		t.Errorf("File after Close: %v, want ErrClosed", err)
	}
	if _, err := os.Lstat(admin.Addr); err != nil {
		t.Errorf("Close removed the socket path: %v", err)
	}
}

func TestBindErrors(t *testing.T) {
	dir := sockDir(t)
	taken := bind(t, Decl{Name: "taken", Listen: "127.0.0.1:0"})[0]
	live := bind(t, Decl{Name: "live", Listen: "unix:" + filepath.Join(dir, "live.sock")})[0]
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		decls []Decl
		want  string
	}{
		{"duplicate name", []Decl{{"a", "127.0.0.1:0"}, {"a", "127.0.0.2:0"}}, `run.sockets[1].name: "a" is also the name of run.sockets[0]`},
		{"bad name", []Decl{{"a:b", "127.0.0.1:0"}}, `run.sockets[0].name: invalid socket name "a:b"`},
		{"bad address", []Decl{{"a", "127.0.0.1"}}, `run.sockets[0].listen: "127.0.0.1": want host:port`},
		{"duplicate address", []Decl{{"a", "127.0.0.1:0"}, {"b", "127.0.0.1:0"}}, `run.sockets[1].listen: "127.0.0.1:0" is also the address of run.sockets[0]`},
		{"port in use", []Decl{{"web", taken.Addr}}, "bind socket web on " + taken.Addr + ": "},
		{"unix in use", []Decl{{"web", "unix:" + live.Addr}}, "another process listens on it"},
		{"not a socket", []Decl{{"web", "unix:" + regular}}, regular + " exists and is not a socket"},
		{"directory under a file", []Decl{{"web", "unix:" + filepath.Join(regular, "x.sock")}}, "the socket's directory: " + regular + ": not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			socks, err := Bind(tt.decls)
			if err == nil {
				_ = CloseAll(socks)
				t.Fatal("Bind succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Bind: %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
	// All or none: the first socket, bound, is closed again when the second
	// fails, so its address is free.
	free := bind(t, Decl{Name: "probe", Listen: "127.0.0.1:0"})[0]
	addr := free.Addr
	_ = free.Close()
	if _, err := Bind([]Decl{{"first", addr}, {"second", taken.Addr}}); err == nil {
		t.Fatal("Bind succeeded")
	}
	bind(t, Decl{Name: "again", Listen: addr})
}

func TestBindReplacesStaleUnixSocket(t *testing.T) {
	path := filepath.Join(sockDir(t), "stale.sock")
	old := bind(t, Decl{Name: "old", Listen: "unix:" + path})[0]
	_ = old.Close() // nobody listens any more; the file stays
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	s := bind(t, Decl{Name: "new", Listen: "unix:" + path})[0]
	if s.Inode == old.Inode {
		t.Error("same socket")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	_ = c.Close()
}

// A Unix socket is bound as systemd binds a ListenStream= path: its missing
// directories are made 0755, its file is 0666 (SocketMode='s default)
// whatever the agent's umask, and the agent's own umask and working
// directory are left as they were.
func TestBindUnixLikeSystemd(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "a", "b", "app.sock")
	old := unix.Umask(0o077) // an agent started with a strict umask
	defer unix.Umask(old)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	s := bind(t, Decl{Name: "app", Listen: "unix:" + path})[0]
	if s.Addr != path {
		t.Errorf("Addr = %q, want %q", s.Addr, path)
	}
	for p, want := range map[string]os.FileMode{
		filepath.Join(dir, "a"):      os.ModeDir | 0o755,
		filepath.Join(dir, "a", "b"): os.ModeDir | 0o755,
		path:                         os.ModeSocket | 0o666,
	} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	if got := unix.Umask(0o077); got != 0o077 {
		t.Errorf("the agent's umask is %#o after Bind, want 0077", got)
	}
	if got, _ := os.Getwd(); got != wd {
		t.Errorf("the agent's working directory is %q after Bind, want %q", got, wd)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	_ = c.Close()
}

// A service user who can write to a directory on a socket's path cannot
// make the agent remove a file elsewhere: the directory replaced by a
// symlink between the check that the socket file is stale and its removal
// changes nothing (the agent removes the file in the directory it opened).
// With the path resolved again for the removal, the other directory's file
// of that name was removed.
func TestBindStaleRemovalStaysInItsDirectory(t *testing.T) {
	dir := sockDir(t)
	userDir := filepath.Join(dir, "svc") // writable by the service's user
	path := filepath.Join(userDir, "app.sock")
	old := bind(t, Decl{Name: "old", Listen: "unix:" + path})[0]
	_ = old.Close() // stale: nothing listens
	elsewhere := filepath.Join(dir, "etc")
	if err := os.Mkdir(elsewhere, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(elsewhere, "app.sock")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(dir, "svc.moved")
	swapAt(t, "remove", userDir, moved, elsewhere)
	if socks, err := Bind([]Decl{{"new", "unix:" + path}}); err == nil {
		_ = CloseAll(socks)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
		t.Fatalf("the file of that name elsewhere: %q, %v; want it untouched", b, err)
	}
	if _, err := os.Lstat(filepath.Join(moved, "app.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale socket in the directory opened: %v, want it removed", err)
	}
}

// swapAt makes testHookUnix, at stage, rename dir to moved and put a symlink
// to target in its place (what a user who can write to dir's parent can
// do at any moment).
func swapAt(t *testing.T, stage, dir, moved, target string) {
	t.Helper()
	testHookUnix = func(s string) {
		if s != stage {
			return
		}
		if err := os.Rename(dir, moved); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(target, dir); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { testHookUnix = nil })
}

// A bind that a swapped directory sent elsewhere is found and fails: the
// directory the agent opened holds no socket of its.
func TestBindRedirectedFails(t *testing.T) {
	dir := sockDir(t)
	userDir := filepath.Join(dir, "svc")
	if err := os.Mkdir(userDir, 0o755); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(dir, "etc")
	if err := os.Mkdir(elsewhere, 0o755); err != nil {
		t.Fatal(err)
	}
	swapAt(t, "bind", userDir, filepath.Join(dir, "svc.moved"), elsewhere)
	socks, err := Bind([]Decl{{"app", "unix:" + filepath.Join(userDir, "app.sock")}})
	if err == nil {
		_ = CloseAll(socks)
		t.Fatal("Bind succeeded")
	}
	if !strings.Contains(err.Error(), "the socket just bound is not in its directory") {
		t.Errorf("Bind: %v", err)
	}
	// The socket bind made where the swap led is removed (it is the
	// agent's: a connection to it reached the agent's socket).
	if _, err := os.Lstat(filepath.Join(elsewhere, "app.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket made where the swap led: %v, want it removed", err)
	}
}

// A directory the agent just made swapped for a symlink before it opened
// it: the bind fails (the directory made is opened without following a
// symlink, from its parent's descriptor), and nothing is made, changed or
// left in the symlink's target. Made by path (os.MkdirAll, then the
// socket's directory opened by path), the socket was bound in the target.
func TestBindMkdirSwapLeavesNothingElsewhere(t *testing.T) {
	dir := sockDir(t)
	victim := filepath.Join(dir, "victim")
	if err := os.MkdirAll(filepath.Join(victim, "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	swapAt(t, "mkdir a", filepath.Join(dir, "a"), filepath.Join(dir, "a.moved"), victim)
	path := filepath.Join(dir, "a", "b", "app.sock")
	socks, err := Bind([]Decl{{"app", "unix:" + path}})
	if err == nil {
		_ = CloseAll(socks)
		t.Fatal("Bind succeeded")
	}
	if !strings.Contains(err.Error(), "open the directory made: not a directory") { // O_NOFOLLOW|O_DIRECTORY on a symlink
		t.Errorf("Bind: %v, want the symlink refused", err)
	}
	if fi, err := os.Stat(filepath.Join(victim, "b")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the target's b: %v, %v; want it 0700, untouched", fi.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join(victim, "b", "app.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a socket left in the target: %v", err)
	}
}

// The socket file replaced by a symlink to another file between its check
// and the change of its mode: the agent changes the socket it bound (held
// by its descriptor), never the symlink's target. With a chmod by path,
// the target (a root's 0600 file) was made 0666.
func TestBindChmodStaysOnItsSocket(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "app.sock")
	victim := filepath.Join(dir, "secret")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	testHookUnix = func(stage string) {
		if stage != "chmod" {
			return
		}
		if err := os.Rename(path, path+".moved"); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(victim, path); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { testHookUnix = nil })
	bind(t, Decl{Name: "app", Listen: "unix:" + path})
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the symlink's target: %v, %v; want it 0600", fi.Mode(), err)
	}
	if fi, err := os.Lstat(path + ".moved"); err != nil || fi.Mode() != os.ModeSocket|UnixSocketMode {
		t.Fatalf("the socket bound: %v, %v; want %v", fi.Mode(), err, os.ModeSocket|UnixSocketMode)
	}
}

// Without fchmodat2 (Linux before 6.6) the mode is changed through the
// O_PATH descriptor's /proc link: the file it holds, also when its name now
// is a symlink to another file.
func TestChmodProc(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	victim := filepath.Join(dir, "secret")
	if err := os.WriteFile(victim, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if err := chmodProc(fd, 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path + ".moved"); err != nil || fi.Mode() != os.ModeSocket|0o640 {
		t.Errorf("the socket: %v, %v; want mode 0640", fi.Mode(), err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the symlink's target: %v, %v; want it 0600", fi.Mode(), err)
	}
}

// The socket is bound by its absolute path, as systemd binds one: what the
// process sees (getsockname, sd_is_socket_unix) is the declared path. A
// name starting with '@' is a file like any other (not Linux's abstract
// namespace), and ".." is resolved by the kernel, as a client dialling the
// declared path resolves it.
func TestBindUnixAddressAsDeclared(t *testing.T) {
	dir := sockDir(t)
	other := filepath.Join(dir, "other")
	if err := os.MkdirAll(filepath.Join(other, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(other, "sub"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		filepath.Join(dir, "@app.sock"),
		dir + "/link/../dots.sock", // other/dots.sock, as the kernel resolves it
	} {
		s := bind(t, Decl{Name: "app", Listen: "unix:" + path})[0]
		f, err := s.File()
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.FileListener(f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Addr().String(); got != path {
			t.Errorf("the process sees its socket as %q, want %q", got, path)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Errorf("dial %s: %v", path, err)
		} else {
			_ = c.Close()
		}
		_ = l.Close()
	}
	if _, err := os.Lstat(filepath.Join(other, "dots.sock")); err != nil {
		t.Errorf("the socket of the path with '..': %v", err)
	}
}

// A live socket whose queue is full is still live: the check does not
// wait for room in its queue (a blocking connect would, for as long as its
// process does not accept).
func TestBindUnixLiveWithFullQueue(t *testing.T) {
	path := filepath.Join(sockDir(t), "busy.sock")
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	// Fill the queue: connect without accepting until one is refused.
	for i := 0; ; i++ {
		cfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(cfd)
		err = unix.Connect(cfd, &unix.SockaddrUnix{Name: path})
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil || i > 100 {
			t.Fatalf("connect %d: %v", i, err)
		}
	}
	_, err = Bind([]Decl{{"web", "unix:" + path}})
	if err == nil || !strings.Contains(err.Error(), "another process listens on it") {
		t.Fatalf("Bind: %v, want another process listens on it", err)
	}
}

func TestFromSpec(t *testing.T) {
	run := &v1.RunSpec{Sockets: []*v1.Socket{
		{Name: "http", Listen: "127.0.0.1:${host.label.port}"},
		{Name: "admin", Listen: "unix:/run/${host.id}.sock"},
	}}
	got, err := FromSpec(run, "h1", map[string]string{"port": "8080"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Decl{{"http", "127.0.0.1:8080"}, {"admin", "unix:/run/h1.sock"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("FromSpec = %v, want %v", got, want)
	}
	for labels, msg := range map[string]string{
		"":       `run.sockets[0].listen: placeholder ${host.label.port}: host has no label "port"`,
		"0":      `run.sockets[0].listen: "127.0.0.1:0": port 0 is not a fixed address`,
		"http":   `run.sockets[0].listen: "127.0.0.1:http": invalid port "http"`,
		"1/../2": `run.sockets[0].listen: "127.0.0.1:1/../2": invalid port`,
	} {
		l := map[string]string{}
		if labels != "" {
			l["port"] = labels
		}
		if _, err := FromSpec(run, "h1", l); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("FromSpec(port=%q) = %v, want %q", labels, err, msg)
		}
	}
	run.Sockets[1].Name = "http"
	if _, err := FromSpec(run, "h1", map[string]string{"port": "1"}); err == nil || !strings.Contains(err.Error(), `run.sockets[1].name: "http" is also the name`) {
		t.Errorf("duplicate name: %v", err)
	}
}

// TestPrepareChildSees starts a real process through Prepare and checks
// what it sees: its sockets at fds 3 and 4 (the same sockets, no longer
// close-on-exec, nothing else inherited), LISTEN_PID its own pid,
// LISTEN_FDS, LISTEN_FDNAMES, its arguments unchanged, and stale LISTEN_*
// and NOTIFY_SOCKET values gone.
func TestPrepareChildSees(t *testing.T) {
	dir := sockDir(t)
	socks := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"}, Decl{Name: "admin", Listen: "unix:" + filepath.Join(dir, "a.sock")})
	// An unrelated socket of the agent's, which must not leak.
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	args := []string{"a b", "$HOME", `'q"`, "-x", ""}
	cmd := helperCmd(t, "env", args...)
	cmd.Env = append(cmd.Env, "LISTEN_PID=1", "LISTEN_FDS=9", "LISTEN_FDNAMES=x", "NOTIFY_SOCKET=/nonexistent", "KEEP=1")
	// Its output is collected by exec and complete once Wait returns (a
	// StdoutPipe read alongside the Wait of startPlain may find the pipe
	// closed by Wait first).
	var out bytes.Buffer
	cmd.Stdout = &out
	p := start(t, cmd, socks, nil)
	if err := waitExit(t, p); err != nil {
		t.Fatalf("child: %v", err)
	}
	var r report
	if err := json.NewDecoder(&out).Decode(&r); err != nil {
		t.Fatalf("decode the child's report: %v", err)
	}
	exe, _ := os.Executable()
	if r.PID != p.cmd.Process.Pid {
		t.Errorf("child pid %d, Process.Pid %d", r.PID, p.cmd.Process.Pid)
	}
	wantEnv := map[string]string{
		EnvListenPID:     strconv.Itoa(r.PID),
		EnvListenFDs:     "2",
		EnvListenFDNames: "http:admin",
		"KEEP":           "1",
	}
	if !reflect.DeepEqual(r.Env, wantEnv) {
		t.Errorf("child env %v, want %v", r.Env, wantEnv)
	}
	if want := append([]string{exe}, args...); !reflect.DeepEqual(r.Args, want) {
		t.Errorf("child args %q, want %q", r.Args, want)
	}
	if !reflect.DeepEqual(r.SocketFDs, []int{3, 4}) {
		t.Errorf("child's socket fds %v, want [3 4]", r.SocketFDs)
	}
	for i, s := range socks {
		fd := 3 + i
		if r.Inodes[fd] != s.Inode || r.CloseOnExc[fd] || !r.Listening[fd] {
			t.Errorf("fd %d: inode %d (want %d), cloexec %v, listening %v", fd, r.Inodes[fd], s.Inode, r.CloseOnExc[fd], r.Listening[fd])
		}
	}
}

func TestPrepareNoSockets(t *testing.T) {
	cmd := exec.Command("/bin/true")
	cmd.Env = []string{"A=1", "LISTEN_FDS=2", "NOTIFY_SOCKET=/x"}
	release, err := Prepare(cmd, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if cmd.Path != "/bin/true" || len(cmd.ExtraFiles) != 0 || !reflect.DeepEqual(cmd.Env, []string{"A=1"}) {
		t.Errorf("Prepare without sockets: path %q, %d extra files, env %v", cmd.Path, len(cmd.ExtraFiles), cmd.Env)
	}
}

func TestPrepareErrors(t *testing.T) {
	socks := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"})
	dir := t.TempDir()
	notExec := filepath.Join(dir, "script")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		cmd  func() *exec.Cmd
		want string
	}{
		"missing program":    {func() *exec.Cmd { return &exec.Cmd{Path: filepath.Join(dir, "nope"), Args: []string{"nope"}} }, "no such file or directory"},
		"relative to dir":    {func() *exec.Cmd { return &exec.Cmd{Path: "./nope", Dir: dir, Args: []string{"nope"}} }, filepath.Join(dir, "nope")},
		"not executable":     {func() *exec.Cmd { return &exec.Cmd{Path: notExec, Args: []string{"script"}} }, notExec + ": not an executable file"},
		"directory":          {func() *exec.Cmd { return &exec.Cmd{Path: dir, Args: []string{"d"}} }, dir + ": not an executable file"},
		"extra files in use": {func() *exec.Cmd { c := exec.Command("/bin/true"); c.ExtraFiles = []*os.File{os.Stdin}; return c }, "already has 1 extra files"},
		"lookup failed":      {func() *exec.Cmd { return exec.Command("fleetwave-no-such-program") }, "executable file not found"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Prepare(tt.cmd(), socks, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Prepare: %v, want it to contain %q", err, tt.want)
			}
		})
	}
	_ = socks[0].Close()
	if _, err := Prepare(exec.Command("/bin/true"), socks, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Prepare with a closed socket: %v", err)
	}
}

// TestPrepareRelativeProgram runs a program given relative to cmd.Dir, as
// os/exec would, through the shell.
func TestPrepareRelativeProgram(t *testing.T) {
	socks := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"})
	dir := t.TempDir()
	prog := filepath.Join(dir, "-prog") // a name the shell's exec must not take for an option
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho \"$LISTEN_PID $$ $LISTEN_FDNAMES $0 $1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := &exec.Cmd{Path: "-prog", Args: []string{"-prog", "arg"}, Dir: dir, Env: []string{}}
	var out bytes.Buffer // complete once Wait returns
	cmd.Stdout = &out
	p := start(t, cmd, socks, nil)
	if err := waitExit(t, p); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out.String())
	pid := strconv.Itoa(p.cmd.Process.Pid)
	if len(f) != 5 || f[0] != pid || f[1] != pid || f[2] != "http" || f[3] != "./-prog" || f[4] != "arg" {
		t.Errorf("script printed %q, want %q", out.String(), pid+" "+pid+" http ./-prog arg")
	}
}

func TestFileIsADuplicate(t *testing.T) {
	s := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"})[0]
	f, err := s.File()
	if err != nil {
		t.Fatal(err)
	}
	if int(f.Fd()) == fdOf(t, s) {
		t.Error("File returned the agent's own descriptor")
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Ino != s.Inode {
		t.Errorf("File's inode %d (%v), want %d", st.Ino, err, s.Inode)
	}
	_ = f.Close()
	if _, err := inode(fdOf(t, s)); err != nil {
		t.Errorf("closing the File closed the socket: %v", err)
	}
}

func TestRenamed(t *testing.T) {
	s := bind(t, Decl{Name: "http", Listen: "127.0.0.1:0"})[0]
	r, err := s.Renamed("web")
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "web" || r.Listen != s.Listen || r.Addr != s.Addr || r.Inode != s.Inode || fdOf(t, r) == fdOf(t, s) {
		t.Fatalf("renamed %+v from %+v", r, s)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := inode(fdOf(t, s)); err != nil {
		t.Errorf("closing the renamed copy closed the socket: %v", err)
	}
	if _, err := s.Renamed("a:b"); err == nil {
		t.Error("renamed to an invalid name")
	}
}
