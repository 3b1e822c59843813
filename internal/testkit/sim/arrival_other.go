//go:build !linux

package sim

import (
	"net"
	"time"
)

// newArrivalConn is c as it is: receive timestamps are read on Linux only
// (arrival_linux.go), so every arrival is unknown.
func newArrivalConn(c *net.TCPConn) (*arrivalConn, error) {
	return &arrivalConn{Conn: c}, nil
}

func receiveTime([]byte) (time.Time, bool) { return time.Time{}, false }

func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
