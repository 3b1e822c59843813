// Package sockets holds a service's listening sockets for the zero-downtime
// handover: the agent binds each declared socket once (Bind) and passes the
// same sockets to every process of the service with systemd's
// socket-activation convention (Prepare), so a new release's process accepts
// from the same queue while the old one still serves, and no connection is
// refused in between: the queue lives as long as any process (or the agent)
// holds the socket.
//
// The convention, as sd_listen_fds(3) reads it: the sockets are fds 3, 4,
// ... in declared order, LISTEN_FDS is their number, LISTEN_FDNAMES their
// names joined with ':', and LISTEN_PID the pid of the process they are
// meant for (a library ignores the variables when LISTEN_PID is not its own
// pid, so that they do not leak to its children).
//
// After an agent restart, Recover copies the sockets back out of a running
// process of the service (pidfd_getfd), identified by the inodes recorded
// in Identity, and binds anew only what no process holds.
//
// Readiness: Notify is a per-process sd_notify receiver (NOTIFY_SOCKET),
// which tells when a process sends READY=1 and checks with SCM_CREDENTIALS
// that the sender is that process.
//
// The package is Linux only (pidfd, /proc, SCM_CREDENTIALS). It knows
// nothing of releases, supervisors or the lifecycle; those wire it in.
//
// # Blocking mode
//
// A socket's O_NONBLOCK flag belongs to the socket (the open file
// description), shared by every process holding it, not to a process's fd.
// Bind leaves the sockets in blocking mode, as systemd does by default; Go's
// net.FileListener makes them non-blocking, for every holder. Nothing here
// changes the mode of a socket a service may be using: the agent keeps its
// copies as plain descriptors, never as *os.File values of package net (whose
// Fd method would switch the socket to blocking under a running Go service)
// nor as *os.File values made from a non-blocking descriptor (which the Go
// runtime would register with its poller, waking the agent on every
// connection). Socket.File makes a short-lived *os.File when one is needed.
package sockets
