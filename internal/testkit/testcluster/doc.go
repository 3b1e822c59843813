// Package testcluster gives fault tests the pieces of a real deployment they
// need to break on purpose: a multi-member etcd cluster run as separate
// processes (the etcdnode helper binary, etcd's own server code) that can be
// killed, stopped and restarted member by member, and network links an
// agent's traffic can be cut on: a network namespace with a veth pair when
// running as root, or a TCP proxy the test controls otherwise.
//
// It is for tests only. It must not be imported by the coordinator, the agent
// or any command, and it does not import Fleetwave packages; it imports the
// etcd client, never the etcd server (that lives in the helper binary).
package testcluster

import "time"

// Timings used by the helpers. Startup of a 3-member cluster on a 2-core
// machine takes about a second; the limits leave room for a loaded CI box.
const (
	startTimeout = 60 * time.Second
	stopGrace    = 10 * time.Second
	pollEvery    = 25 * time.Millisecond
	quorumProbe  = 2 * time.Second
	// checkTimeout bounds one health probe; a member that is not serving
	// yet holds a call until it ends, so short probes make waits precise.
	checkTimeout = 400 * time.Millisecond
)
