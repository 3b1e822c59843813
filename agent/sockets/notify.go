package sockets

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Limits of the notify receiver.
const (
	// MaxNotifyMessage is the largest datagram accepted (systemd's limit
	// too: a pipe buffer); a longer one is dropped whole.
	MaxNotifyMessage = 4096
	// MaxStatus bounds the STATUS text kept from one message.
	MaxStatus = 1024
	// notifyQueue is the capacity of Messages; more are dropped.
	notifyQueue = 16
	// maxPending bounds the messages kept until Watch names the main pid.
	maxPending = 16
	// maxTreeDepth bounds the parent walk of AccessTree.
	maxTreeDepth = 64
	// maxFDsPerMessage is what the control buffer has room for; a sender's
	// file descriptors (FDSTORE=1, BARRIER=1) are closed on receipt.
	maxFDsPerMessage = 16
)

// Access says whose messages a Notify accepts, after systemd's
// NotifyAccess=.
type Access int

const (
	// AccessMain accepts messages from the main process only (the one
	// passed to Watch), as systemd's NotifyAccess=main, the default for
	// Type=notify. A helper such as systemd-notify, a child of the main
	// process, is refused.
	AccessMain Access = iota
	// AccessTree also accepts messages from the main process's
	// descendants, found by walking parent pids in /proc when the message
	// is read: the closest to systemd's NotifyAccess=all without a cgroup
	// per service. A sender that has already exited (and been reaped)
	// cannot be traced and is refused.
	AccessTree
)

// Message is one accepted notification.
type Message struct {
	PID       int    // the sender, from SCM_CREDENTIALS
	Ready     bool   // READY=1
	Stopping  bool   // STOPPING=1
	Reloading bool   // RELOADING=1
	Status    string // STATUS=..., at most MaxStatus bytes
	// MainPID is MAINPID=N (0 if absent or invalid). It is reported, not
	// acted on: the supervisor keeps tracking the process it started.
	MainPID int
}

// NotifyStats counts what a Notify received.
type NotifyStats struct {
	Accepted  uint64 // messages from an allowed sender
	Refused   uint64 // from another process, or without credentials
	Malformed uint64 // too long, NUL bytes, no KEY=VALUE line
	Dropped   uint64 // accepted but Messages was full, or too many before Watch
	// LastRefusedPID is the sender of the last refused message (0: none or
	// no credentials).
	LastRefusedPID int
	// Err is the error that stopped the receiver early (nil while it runs
	// and after Close).
	Err error
}

// Notify is an sd_notify receiver for one service process: a Unix datagram
// socket whose path the process gets as NOTIFY_SOCKET (Prepare sets it).
// Messages sent before Watch names the process are kept (a few) and judged
// then, so a process that is ready at once is not missed.
type Notify struct {
	path   string
	access Access
	conn   *net.UnixConn
	fi     os.FileInfo // of the socket file, to remove only ours
	done   chan struct{}

	ready chan struct{}
	msgs  chan Message

	mu        sync.Mutex
	mainPID   int
	pending   []received
	readyPID  int
	stats     NotifyStats
	closed    bool // Close has begun
	msgsDone  bool // msgs is closed: nothing more is sent on it
	closeErr  error
	closeOnce sync.Once
}

// received is a datagram with its sender, not yet judged.
type received struct {
	pid int // 0: no credentials
	msg Message
}

// NotifyTemp is the name ListenNotify binds a notify socket under in dir
// before renaming it into place; id is 12 random hex digits. With id "*"
// it is a glob of them all: a kill between the bind and the rename leaves
// the socket file (the agent's start-up removes it).
func NotifyTemp(dir, id string) string { return filepath.Join(dir, "."+id+".tmp") }

// ListenNotify creates the notify socket dir/name (mode 0600: only its
// owner, and root, may send) and starts reading it. owner, when set, is
// the user and group the socket is given to (a service's run.user, which
// must reach it; nil: the agent's user). name is one path element; a stale
// file of that name is replaced. The socket is bound under a temporary
// name, restricted and given to its owner, then renamed into place, so it
// is never reachable by anyone else.
func ListenNotify(dir, name string, access Access, owner *syscall.Credential) (*Notify, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("notify socket: invalid name %q", name)
	}
	path := filepath.Join(dir, name)
	if !filepath.IsAbs(path) {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("notify socket %s: %w", path, err)
		}
		path = abs
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := NotifyTemp(filepath.Dir(path), hex.EncodeToString(rnd[:]))
	if len(path) > 107 || len(tmp) > 107 {
		return nil, fmt.Errorf("notify socket %s: path longer than the 107 bytes of a Unix socket address", path)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: tmp, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", path, err)
	}
	fail := func(err error) (*Notify, error) {
		_ = conn.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("notify socket %s: %w", path, err)
	}
	if err := setPassCred(conn); err != nil {
		return fail(err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if owner != nil {
		if err := os.Lchown(tmp, int(owner.Uid), int(owner.Gid)); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	n := &Notify{
		path:   path,
		access: access,
		conn:   conn,
		fi:     fi,
		done:   make(chan struct{}),
		ready:  make(chan struct{}),
		msgs:   make(chan Message, notifyQueue),
	}
	go n.read()
	return n, nil
}

func setPassCred(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_PASSCRED: %w", serr)
	}
	return nil
}

// Path is the socket's path, the value of NOTIFY_SOCKET.
func (n *Notify) Path() string { return n.path }

// Ready is closed when an allowed sender has sent READY=1 (never closed
// otherwise, not even by Close).
func (n *Notify) Ready() <-chan struct{} { return n.ready }

// ReadyPID is the pid that sent the first accepted READY=1 (0 before).
func (n *Notify) ReadyPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.readyPID
}

// Messages delivers accepted messages (buffered; when it is full further
// messages are dropped and counted, Ready still works). It is closed when
// the receiver stops (Close, or an error: see Stats().Err).
func (n *Notify) Messages() <-chan Message { return n.msgs }

// Stats returns the counters so far.
func (n *Notify) Stats() NotifyStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

// Watch names the main process (its pid once started) and judges the
// messages received before. It may be called once, with pid > 0.
func (n *Notify) Watch(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("notify %s: watch: invalid pid %d", n.path, pid)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mainPID != 0 {
		return fmt.Errorf("notify %s: already watching pid %d", n.path, n.mainPID)
	}
	n.mainPID = pid
	for _, r := range n.pending {
		n.judgeLocked(r)
	}
	n.pending = nil
	return nil
}

// Close stops the receiver, waits for it, and removes the socket file (if
// it is still this socket's). Closing twice returns the first result.
func (n *Notify) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		n.mu.Unlock()
		err := n.conn.Close()
		<-n.done
		if fi, serr := os.Lstat(n.path); serr == nil && os.SameFile(fi, n.fi) {
			if rerr := os.Remove(n.path); rerr != nil && err == nil {
				err = rerr
			}
		}
		if err != nil {
			n.closeErr = fmt.Errorf("close notify socket %s: %w", n.path, err)
		}
	})
	return n.closeErr
}

// read is the receiver loop: one datagram at a time, to the end.
func (n *Notify) read() {
	defer close(n.done)
	defer func() {
		n.mu.Lock()
		n.msgsDone = true
		close(n.msgs)
		n.mu.Unlock()
	}()
	buf := make([]byte, MaxNotifyMessage)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*maxFDsPerMessage))
	for {
		nb, noob, flags, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				n.mu.Lock()
				if !n.closed {
					n.stats.Err = fmt.Errorf("notify socket %s: read: %w", n.path, err)
				}
				n.mu.Unlock()
			}
			return
		}
		pid := senderPID(oob[:noob])
		msg, ok := parseNotify(buf[:nb])
		n.mu.Lock()
		switch {
		case flags&unix.MSG_TRUNC != 0 || !ok:
			n.stats.Malformed++
		case n.mainPID == 0:
			if len(n.pending) < maxPending {
				n.pending = append(n.pending, received{pid: pid, msg: msg})
			} else {
				n.stats.Dropped++
			}
		default:
			n.judgeLocked(received{pid: pid, msg: msg})
		}
		n.mu.Unlock()
	}
}

// judgeLocked accepts or refuses r; n.mu is held and mainPID is set.
func (n *Notify) judgeLocked(r received) {
	if !n.allowed(r.pid) {
		n.stats.Refused++
		n.stats.LastRefusedPID = r.pid
		return
	}
	n.stats.Accepted++
	r.msg.PID = r.pid
	if r.msg.Ready && n.readyPID == 0 {
		n.readyPID = r.pid
		close(n.ready)
	}
	if n.msgsDone {
		return // Watch after the receiver stopped
	}
	select {
	case n.msgs <- r.msg:
	default:
		n.stats.Dropped++
	}
}

func (n *Notify) allowed(pid int) bool {
	switch {
	case pid <= 0:
		return false
	case pid == n.mainPID:
		return true
	case n.access == AccessTree:
		return descends(pid, n.mainPID)
	default:
		return false
	}
}

// descends reports whether pid is a descendant of ancestor, by parent pids
// in /proc (false when a process on the way cannot be read).
func descends(pid, ancestor int) bool {
	for range maxTreeDepth {
		ppid, err := parentPID(pid)
		if err != nil || ppid <= 1 {
			return false
		}
		if ppid == ancestor {
			return true
		}
		pid = ppid
	}
	return false
}

// parentPID reads the ppid field of /proc/PID/stat (the fields after the
// command, which is in parentheses and may contain anything).
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	return strconv.Atoi(f[1])
}

// senderPID returns the pid in the SCM_CREDENTIALS of a control message (0
// if there is none) and closes any file descriptors the sender passed.
func senderPID(oob []byte) int {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	pid := 0
	for i := range cmsgs {
		m := &cmsgs[i]
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_CREDENTIALS:
			if cred, err := unix.ParseUnixCredentials(m); err == nil {
				pid = int(cred.Pid)
			}
		case unix.SCM_RIGHTS:
			if fds, err := unix.ParseUnixRights(m); err == nil {
				for _, fd := range fds {
					_ = unix.Close(fd)
				}
			}
		}
	}
	return pid
}

// parseNotify parses the newline-separated KEY=VALUE assignments of an
// sd_notify message. ok is false for a message with a NUL byte or without
// any assignment; unknown keys are ignored.
func parseNotify(b []byte) (Message, bool) {
	var m Message
	if bytes.IndexByte(b, 0) >= 0 {
		return m, false
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			continue
		}
		found = true
		switch k {
		case "READY":
			m.Ready = v == "1"
		case "STOPPING":
			m.Stopping = v == "1"
		case "RELOADING":
			m.Reloading = v == "1"
		case "STATUS":
			if len(v) > MaxStatus {
				v = v[:MaxStatus]
			}
			m.Status = v
		case "MAINPID":
			if p, err := strconv.Atoi(v); err == nil && p > 0 {
				m.MainPID = p
			}
		}
	}
	return m, found
}
