package sockets

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

func listenNotify(t *testing.T, access Access) *Notify {
	t.Helper()
	n, err := ListenNotify(sockDir(t), "svc.notify", access, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// notifier is a "notify" (or "notify-child") helper: each line written to
// it is sent as a message, and it answers "sent" per message.
type notifier struct {
	p   *proc
	in  io.WriteCloser
	out *bufio.Reader
}

func startNotifier(t *testing.T, mode string, n *Notify, watch bool) *notifier {
	t.Helper()
	cmd := helperCmd(t, mode)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var p *proc
	if watch {
		p = start(t, cmd, nil, n)
	} else {
		// Not the main process: knows the path but is not watched.
		cmd.Env = append(cmd.Env, EnvNotifySocket+"="+n.Path())
		p = startPlain(t, cmd)
	}
	nt := &notifier{p: p, in: in, out: bufio.NewReader(out)}
	if mode == "notify-child" {
		if line := readLine(t, nt.out); line != "starting child" {
			t.Fatalf("helper says %q", line)
		}
	}
	return nt
}

// send makes the helper send msg (\n written as `\n`) and waits until it has.
func (nt *notifier) send(t *testing.T, msg string) {
	t.Helper()
	if _, err := io.WriteString(nt.in, strings.ReplaceAll(msg, "\n", `\n`)+"\n"); err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, nt.out); line != "sent" {
		t.Fatalf("helper says %q", line)
	}
}

func recvMessage(t *testing.T, n *Notify) Message {
	t.Helper()
	deadline := time.NewTimer(failAfter)
	defer deadline.Stop()
	select {
	case m, ok := <-n.Messages():
		if !ok {
			t.Fatal("Messages closed")
		}
		return m
	case <-deadline.C:
		t.Fatalf("no message within %v", failAfter)
		return Message{}
	}
}

func isReady(n *Notify) bool {
	select {
	case <-n.Ready():
		return true
	default:
		return false
	}
}

func TestNotifyReadyFromMainProcess(t *testing.T) {
	n := listenNotify(t, AccessMain)
	fi, err := os.Lstat(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("notify socket mode %v, want a socket with 0600", fi.Mode())
	}
	nt := startNotifier(t, "notify", n, true)
	pid := nt.p.cmd.Process.Pid
	nt.send(t, "STATUS=starting\nMAINPID=7")
	if m := recvMessage(t, n); !reflect.DeepEqual(m, Message{PID: pid, Status: "starting", MainPID: 7}) {
		t.Errorf("first message %+v", m)
	}
	if isReady(n) {
		t.Fatal("ready before READY=1")
	}
	nt.send(t, "READY=1\nSTATUS=serving\n")
	waitReady(t, n, nt.p)
	if got := n.ReadyPID(); got != pid {
		t.Errorf("ReadyPID = %d, want %d", got, pid)
	}
	if m := recvMessage(t, n); !reflect.DeepEqual(m, Message{PID: pid, Ready: true, Status: "serving"}) {
		t.Errorf("second message %+v", m)
	}
	nt.send(t, "STOPPING=1")
	if m := recvMessage(t, n); !m.Stopping {
		t.Errorf("third message %+v", m)
	}
	if st := n.Stats(); st.Accepted != 3 || st.Refused != 0 || st.Malformed != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
	_ = nt.in.Close()
	if err := waitExit(t, nt.p); err != nil {
		t.Error(err)
	}
}

// TestNotifyBeforeWatch: a process can be ready before the agent has its
// pid from Start; the message waits for Watch.
func TestNotifyBeforeWatch(t *testing.T) {
	n := listenNotify(t, AccessMain)
	cmd := helperCmd(t, "notify")
	cmd.Stdin = strings.NewReader("READY=1\n")
	release, err := Prepare(cmd, nil, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	release()
	if err := cmd.Wait(); err != nil { // it has sent READY=1 and exited
		t.Fatal(err)
	}
	testkit.Eventually(t, failAfter, "the message is read", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.pending) == 1
	})
	if isReady(n) {
		t.Fatal("ready before Watch")
	}
	if err := n.Watch(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if !isReady(n) || n.ReadyPID() != cmd.Process.Pid {
		t.Errorf("after Watch: ready %v from %d", isReady(n), n.ReadyPID())
	}
	if err := n.Watch(cmd.Process.Pid); err == nil {
		t.Error("second Watch succeeded")
	}
}

// TestNotifySpoofRefused: READY=1 from any process but the main one (the
// agent itself, an unrelated process with the socket's path, a child of the
// main process under AccessMain) is refused; the main process's is not.
func TestNotifySpoofRefused(t *testing.T) {
	n := listenNotify(t, AccessMain)
	main := startNotifier(t, "notify-child", n, true) // its child does the sending
	other := startNotifier(t, "notify", n, false)

	if err := sdNotify(n.Path(), "READY=1"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, failAfter, "the agent's own READY=1 refused", func() bool {
		st := n.Stats()
		return st.Refused == 1 && st.LastRefusedPID == os.Getpid()
	})
	other.send(t, "READY=1")
	testkit.Eventually(t, failAfter, "an unrelated process's READY=1 refused", func() bool {
		st := n.Stats()
		return st.Refused == 2 && st.LastRefusedPID == other.p.cmd.Process.Pid
	})
	main.send(t, "READY=1") // sent by the main process's child
	testkit.Eventually(t, failAfter, "a child's READY=1 refused", func() bool {
		st := n.Stats()
		return st.Refused == 3 && st.LastRefusedPID != 0 && st.LastRefusedPID != main.p.cmd.Process.Pid
	})
	if isReady(n) || n.Stats().Accepted != 0 {
		t.Fatalf("ready %v, stats %+v", isReady(n), n.Stats())
	}

	// The main process itself.
	n2 := listenNotify(t, AccessMain)
	mainProc := startNotifier(t, "notify", n2, true)
	if err := sdNotify(n2.Path(), "READY=1"); err != nil {
		t.Fatal(err)
	}
	mainProc.send(t, "READY=1")
	waitReady(t, n2, mainProc.p)
	if st := n2.Stats(); n2.ReadyPID() != mainProc.p.cmd.Process.Pid || st.Accepted != 1 {
		t.Errorf("ReadyPID %d, stats %+v", n2.ReadyPID(), st)
	}
}

// TestNotifyAccessTree: with AccessTree a descendant of the main process may
// declare readiness; other processes still may not.
func TestNotifyAccessTree(t *testing.T) {
	n := listenNotify(t, AccessTree)
	main := startNotifier(t, "notify-child", n, true)
	if err := sdNotify(n.Path(), "READY=1"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, failAfter, "the agent's READY=1 refused", func() bool { return n.Stats().Refused == 1 })
	if isReady(n) {
		t.Fatal("ready after a refused message")
	}
	main.send(t, "READY=1")
	waitReady(t, n, main.p)
	if pid := n.ReadyPID(); pid == main.p.cmd.Process.Pid || pid == 0 {
		t.Errorf("ReadyPID %d: want the child of %d", pid, main.p.cmd.Process.Pid)
	}
	if !descends(n.ReadyPID(), main.p.cmd.Process.Pid) {
		t.Errorf("pid %d does not descend from %d", n.ReadyPID(), main.p.cmd.Process.Pid)
	}
}

// TestNotifyBounded: oversized and malformed messages are counted and
// dropped; so are messages beyond what Messages and the pre-Watch queue
// hold, and READY=1 still gets through.
func TestNotifyBounded(t *testing.T) {
	n := listenNotify(t, AccessMain)
	for _, msg := range []string{strings.Repeat("x", MaxNotifyMessage+1), "READY=1\x00", "no assignment", ""} {
		if err := sdNotify(n.Path(), msg); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, failAfter, "malformed messages counted", func() bool { return n.Stats().Malformed == 4 })
	// Before Watch: maxPending kept, the rest dropped; after Watch the
	// agent's own are refused.
	for range maxPending + 5 {
		if err := sdNotify(n.Path(), "STATUS=flood"); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, failAfter, "pre-Watch overflow dropped", func() bool { return n.Stats().Dropped == 5 })
	nt := startNotifier(t, "notify", n, true)
	if st := n.Stats(); st.Refused != maxPending {
		t.Errorf("after Watch: %+v, want %d refused", st, maxPending)
	}
	// More accepted messages than Messages holds, then READY=1.
	for range notifyQueue + 3 {
		nt.send(t, "STATUS="+strings.Repeat("s", MaxStatus+10))
	}
	nt.send(t, "READY=1")
	waitReady(t, n, nt.p)
	if st := n.Stats(); st.Accepted != notifyQueue+4 || st.Dropped != 5+4 {
		t.Errorf("stats %+v, want %d accepted and %d dropped", st, notifyQueue+4, 5+4)
	}
	if m := recvMessage(t, n); len(m.Status) != MaxStatus {
		t.Errorf("status of %d bytes kept", len(m.Status))
	}
}

// TestNotifyClosesPassedFDs: descriptors sent along a message (FDSTORE=1,
// systemd-notify's BARRIER=1) are closed on receipt, so a sender waiting for
// them to close goes on.
func TestNotifyClosesPassedFDs(t *testing.T) {
	n := listenNotify(t, AccessMain)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sfd)
	if err := unix.Sendmsg(sfd, []byte("BARRIER=1"), unix.UnixRights(int(w.Fd())), &unix.SockaddrUnix{Name: n.Path()}, 0); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	eof := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 1))
		eof <- err
	}()
	deadline := time.NewTimer(failAfter)
	defer deadline.Stop()
	select {
	case err := <-eof:
		if err != io.EOF {
			t.Errorf("read: %v, want EOF", err)
		}
	case <-deadline.C:
		t.Fatal("the passed descriptor was not closed")
	}
}

func TestNotifyClose(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "n")
	if err := os.WriteFile(path, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := ListenNotify(dir, "n", AccessMain, nil)
	if err != nil {
		t.Fatalf("ListenNotify over a stale file: %v", err)
	}
	if n.Path() != path {
		t.Errorf("Path %q, want %q", n.Path(), path)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-n.Messages(); ok {
		t.Error("Messages not closed")
	}
	if isReady(n) {
		t.Error("Close made it ready")
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if n.Stats().Err != nil {
		t.Errorf("Err after Close: %v", n.Stats().Err)
	}
	// A later receiver on the same path is not removed by an earlier Close.
	a, err := ListenNotify(dir, "m", AccessMain, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ListenNotify(dir, "m", AccessMain, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_ = a.Close()
	if _, err := os.Lstat(b.Path()); err != nil {
		t.Errorf("Close of the replaced receiver removed the new one: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want 1 (no temporary names left)", len(entries))
	}
	for _, name := range []string{"", ".", "..", "a/b", "x\x00"} {
		if _, err := ListenNotify(dir, name, AccessMain, nil); err == nil {
			t.Errorf("ListenNotify(%q) succeeded", name)
		}
	}
	if _, err := ListenNotify(dir, strings.Repeat("n", 110), AccessMain, nil); err == nil || !strings.Contains(err.Error(), "107 bytes") {
		t.Errorf("long path: %v", err)
	}
	if err := n.Watch(0); err == nil {
		t.Error("Watch(0) succeeded")
	}
}

func TestParseNotify(t *testing.T) {
	tests := []struct {
		in   string
		want Message
		ok   bool
	}{
		{"READY=1", Message{Ready: true}, true},
		{"READY=0", Message{}, true},
		{"READY=1\nSTATUS=a=b\nMAINPID=12\nRELOADING=1\nSTOPPING=1\nX=y", Message{Ready: true, Status: "a=b", MainPID: 12, Reloading: true, Stopping: true}, true},
		{"MAINPID=-3\nMAINPID=x", Message{}, true},
		{"\n\nWATCHDOG=1\n", Message{}, true},
		{"READY", Message{}, false},
		{"=1", Message{}, false},
		{"", Message{}, false},
		{"READY=1\x00", Message{}, false},
	}
	for _, tt := range tests {
		got, ok := parseNotify([]byte(tt.in))
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseNotify(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestNotifyWatchAfterClose: messages kept for Watch are judged even when
// the receiver has stopped meanwhile (no send on the closed channel).
func TestNotifyWatchAfterClose(t *testing.T) {
	n := listenNotify(t, AccessMain)
	if err := sdNotify(n.Path(), "READY=1"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, failAfter, "the message is read", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.pending) == 1
	})
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Watch(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if !isReady(n) || n.ReadyPID() != os.Getpid() || n.Stats().Accepted != 1 {
		t.Errorf("ready %v from %d, stats %+v", isReady(n), n.ReadyPID(), n.Stats())
	}
}
