package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// arrivalConn is a host's TCP connection to the coordinator, read with the
// kernel's receive timestamps (SO_TIMESTAMPNS): it keeps when the newest
// bytes a read returned reached the socket. An assignment set's delivery
// to the host is then measured twice: to this process's goroutine
// (Stats.Latency: after the simulator's scheduler, which runs 10,000
// hosts on the cores the coordinator uses too) and to the host's socket
// (Stats.SocketLatency: what a real host, idle while it waits, would see
// plus its own few microseconds). For TCP the kernel reports the receive
// time of the last segment a read consumed, so the socket figure of a
// message is never earlier than its arrival (a later read before the
// message is decoded can only make it later; a read without a time makes
// it unknown, and the set is not counted).
type arrivalConn struct {
	net.Conn // not *net.TCPConn: its ReadFrom/WriteTo would bypass Read
	raw      syscall.RawConn
	oob      []byte       // reads on a connection are sequential (gRPC's reader)
	last     atomic.Int64 // unix nanoseconds; 0 until a read had a timestamp
}

func newArrivalConn(c *net.TCPConn) (*arrivalConn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("receive timestamps: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return nil, fmt.Errorf("receive timestamps: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("receive timestamps: setsockopt SO_TIMESTAMPNS: %w", serr)
	}
	return &arrivalConn{Conn: c, raw: raw, oob: make([]byte, unix.CmsgSpace(16))}, nil
}

func (c *arrivalConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n, oobn int
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		for {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), b, c.oob, 0)
			if !errors.Is(rerr, unix.EINTR) {
				break
			}
		}
		return !errors.Is(rerr, unix.EAGAIN) // not ready: wait on the poller
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	c.note(c.oob[:oobn])
	return n, nil
}

// note keeps the receive time in a read's control messages. A read
// without one (the kernel stamps packets only once timestamping is on
// system-wide, which it turns on shortly after the first socket asks)
// makes the arrival unknown rather than leaving an older read's time,
// which would make a later message look delivered sooner than it was.
func (c *arrivalConn) note(oob []byte) {
	if ts, ok := receiveTime(oob); ok {
		c.last.Store(ts.UnixNano())
	} else {
		c.last.Store(0)
	}
}

// arrived is when the newest bytes read reached the socket (zero if
// unknown: no read yet, or the newest had no timestamp).
func (c *arrivalConn) arrived() time.Time {
	if n := c.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// receiveTime is the SCM_TIMESTAMPNS of a read's control messages.
func receiveTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}
