//go:build linux

package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func newArrivalConn(c *net.TCPConn) (*arrivalConn, error) {
	raw, err := setsockopt(c, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	if err != nil {
		return nil, fmt.Errorf("receive timestamps: %w", err)
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

// receiveTime is the SCM_TIMESTAMPNS of a read's control messages.
func receiveTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_TIMESTAMPNS {
			continue
		}
		switch len(m.Data) { // a struct timespec of the platform's longs
		case 16:
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec), true
		case 8:
			sec := int32(binary.NativeEndian.Uint32(m.Data[0:4]))
			nsec := int32(binary.NativeEndian.Uint32(m.Data[4:8]))
			return time.Unix(int64(sec), int64(nsec)), true
		}
	}
	return time.Time{}, false
}

// setUserTimeout sets c's TCP_USER_TIMEOUT, as gRPC does on a plain
// *net.TCPConn when keepalive is on (its dialer skips any other net.Conn,
// such as an arrivalConn).
func setUserTimeout(c *net.TCPConn, d time.Duration) error {
	if _, err := setsockopt(c, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond)); err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", err)
	}
	return nil
}

// setsockopt sets an integer option of c's socket and returns its raw
// connection.
func setsockopt(c *net.TCPConn, level, opt, value int) (syscall.RawConn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, value) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("setsockopt: %w", serr)
	}
	return raw, nil
}
