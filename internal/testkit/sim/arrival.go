package sim

import (
	"net"
	"sync/atomic"
	"syscall"
	"time"
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
// it unknown, and the set is not counted). Linux only (arrival_linux.go);
// elsewhere the connection reads as it is and every arrival is unknown.
type arrivalConn struct {
	net.Conn // not *net.TCPConn: its ReadFrom/WriteTo would bypass Read
	raw      syscall.RawConn
	oob      []byte       // reads on a connection are sequential (gRPC's reader)
	last     atomic.Int64 // unix nanoseconds; 0 until a read had a timestamp
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
