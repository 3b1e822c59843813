package testcluster

import "syscall"

// childAttr puts a child in its own process group and has the kernel kill it
// when the test process dies, so a crashed or timed-out test leaves no etcd
// member behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
