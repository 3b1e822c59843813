package sockets

import (
	"bufio"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"golang.org/x/sys/unix"
)

// accept accepts one connection on s (through a File) and returns it.
func acceptOne(t *testing.T, s *Socket) net.Conn {
	t.Helper()
	f, err := s.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRecoverFromRunningProcess: the agent binds, starts a process with the
// sockets, records their identities and "restarts" (closes its copies);
// Recover copies the very same sockets out of the process, which connects
// clients queued all along to the recovered socket.
func TestRecoverFromRunningProcess(t *testing.T) {
	dir := sockDir(t)
	decls := []Decl{{Name: "http", Listen: ports.Addr(t)}, {Name: "admin", Listen: "unix:" + filepath.Join(dir, "admin.sock")}}
	socks := bind(t, decls...)
	cmd := helperCmd(t, "hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, cmd, socks, nil)
	if line := readLine(t, bufio.NewReader(out)); line != "holding" {
		t.Fatalf("child says %q", line)
	}
	var ids []Identity
	for _, s := range socks {
		ids = append(ids, s.Identity())
	}
	if err := CloseAll(socks); err != nil {
		t.Fatal(err)
	}

	// A client connects while the agent holds nothing; the queue is the
	// child's.
	client, err := net.Dial("tcp", decls[0].Listen)
	if err != nil {
		t.Fatalf("dial while only the child holds the socket: %v", err)
	}
	defer client.Close()

	pid := p.cmd.Process.Pid
	gone := exitedPID(t)
	got, err := Recover(ids, []int{gone, os.Getpid(), pid})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	t.Cleanup(func() { _ = CloseAll(got) })
	for i, s := range got {
		if s.Name != ids[i].Name || s.Inode != ids[i].Inode || s.From != pid {
			t.Errorf("recovered %s inode %d from %d, want %s inode %d from %d", s.Name, s.Inode, s.From, ids[i].Name, ids[i].Inode, pid)
		}
		if flags, err := unix.FcntlInt(uintptr(fdOf(t, s)), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("%s: recovered copy not close-on-exec (%#x, %v)", s.Name, flags, err)
		}
	}
	if got[0].Network != "tcp" || got[0].Addr != decls[0].Listen || got[1].Network != "unix" || got[1].Addr != filepath.Join(dir, "admin.sock") {
		t.Errorf("recovered addresses %s %s, %s %s", got[0].Network, got[0].Addr, got[1].Network, got[1].Addr)
	}
	// The queued connection comes out of the recovered socket.
	srv := acceptOne(t, got[0])
	defer srv.Close()
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := srv.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read through the recovered socket: %q %v", b, err)
	}

	// The recovered sockets go to the next process as the bound ones did.
	cmd2 := helperCmd(t, "hold")
	out2, err := cmd2.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start(t, cmd2, got, nil)
	if line := readLine(t, bufio.NewReader(out2)); line != "holding" {
		t.Fatalf("second child says %q", line)
	}
}

// TestRecoverBindsAnewWhenNoProcessHolds: with the service's process gone
// the sockets are gone too, and Recover binds them again (replacing the
// Unix socket's stale file).
func TestRecoverBindsAnewWhenNoProcessHolds(t *testing.T) {
	dir := sockDir(t)
	decls := []Decl{{Name: "http", Listen: ports.Addr(t)}, {Name: "admin", Listen: "unix:" + filepath.Join(dir, "admin.sock")}}
	socks := bind(t, decls...)
	cmd := helperCmd(t, "hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, cmd, socks, nil)
	if line := readLine(t, bufio.NewReader(out)); line != "holding" {
		t.Fatalf("child says %q", line)
	}
	var ids []Identity
	for _, s := range socks {
		ids = append(ids, s.Identity())
	}
	_ = CloseAll(socks)
	_ = p.cmd.Process.Kill()
	_ = waitExit(t, p)

	got, err := Recover(ids, []int{p.cmd.Process.Pid})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	t.Cleanup(func() { _ = CloseAll(got) })
	for i, s := range got {
		if s.From != 0 || s.Inode == ids[i].Inode || s.Name != decls[i].Name || s.Listen != decls[i].Listen {
			t.Errorf("socket %d: %+v, want %s bound anew on %s", i, s.Identity(), decls[i].Name, decls[i].Listen)
		}
	}
	c, err := net.Dial("tcp", decls[0].Listen)
	if err != nil {
		t.Fatalf("dial the socket bound anew: %v", err)
	}
	_ = c.Close()
}

// TestRecoverPartly: one socket is found in the process, the other (added to
// the spec since, say) is bound anew.
func TestRecoverPartly(t *testing.T) {
	socks := bind(t, Decl{Name: "http", Listen: ports.Addr(t)})
	cmd := helperCmd(t, "hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, cmd, socks, nil)
	if line := readLine(t, bufio.NewReader(out)); line != "holding" {
		t.Fatalf("child says %q", line)
	}
	ids := []Identity{socks[0].Identity(), {Name: "grpc", Listen: ports.Addr(t), Inode: 1}}
	_ = CloseAll(socks)
	got, err := Recover(ids, []int{p.cmd.Process.Pid})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = CloseAll(got) })
	if got[0].From != p.cmd.Process.Pid || got[0].Inode != ids[0].Inode || got[1].From != 0 || got[1].Name != "grpc" {
		t.Errorf("recovered %+v from %d, %+v from %d", got[0].Identity(), got[0].From, got[1].Identity(), got[1].From)
	}
}

func TestRecoverErrors(t *testing.T) {
	if _, err := Recover([]Identity{{Name: "a", Listen: "127.0.0.1:1"}}, nil); err == nil || !strings.Contains(err.Error(), "no inode recorded") {
		t.Errorf("no inode: %v", err)
	}
	if _, err := Recover([]Identity{{Name: "a", Listen: "127.0.0.1:1", Inode: 7}, {Name: "b", Listen: "127.0.0.1:2", Inode: 7}}, nil); err == nil || !strings.Contains(err.Error(), "inode 7 is also that of a") {
		t.Errorf("same inode: %v", err)
	}
	if _, err := Recover([]Identity{{Name: "a:b", Listen: "127.0.0.1:1", Inode: 7}}, nil); err == nil || !strings.Contains(err.Error(), "invalid socket name") {
		t.Errorf("bad name: %v", err)
	}
	// Nobody holds it and binding anew fails: the error says both.
	taken := bind(t, Decl{Name: "taken", Listen: "127.0.0.1:0"})[0]
	_, err := Recover([]Identity{{Name: "web", Listen: taken.Addr, Inode: 1}}, []int{os.Getpid()})
	if err == nil || !strings.Contains(err.Error(), "holds socket web (inode 1); binding anew: bind socket web on "+taken.Addr) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("bind anew fails: %v", err)
	}
}

func TestErrnoHint(t *testing.T) {
	for err, want := range map[error]string{
		syscall.ENOSYS: "Linux 5.6",
		syscall.EPERM:  "ptrace permission",
		syscall.EACCES: "root or as the service's user",
		syscall.EBADF:  "",
	} {
		if got := errnoHint(err); (want == "" && got != "") || !strings.Contains(got, want) {
			t.Errorf("errnoHint(%v) = %q, want it to contain %q", err, got, want)
		}
	}
}

// exitedPID returns the pid of a process that has exited and been reaped.
func exitedPID(t *testing.T) int {
	t.Helper()
	p := start(t, helperCmd(t, "env"), nil, nil)
	_ = waitExit(t, p)
	return p.cmd.Process.Pid
}
