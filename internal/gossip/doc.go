// Package gossip owns Fleetwave's membership layer: a thin wrapper around
// hashicorp/memberlist that agents and coordinators both join (encrypted with
// a shared key, isolated by a cluster label, with bounded message and meta
// sizes) and that answers one question: is node X alive, suspect, dead or
// gone (left)?
//
// Gossip is a liveness hint only. Nothing in this package starts a deploy, a
// revert or a rollback; callers combine it with their own signals (the agent
// stream) to mark a host unknown quickly.
//
// It must not import etcd, grpc, or any coordinator/ or agent/ package: the
// agent binary links it and stays lean. memberlist and zerolog are its only
// non-standard dependencies.
//
// # Node names
//
// An agent's node name is its host id (see [ValidateName]); a coordinator's
// is "coordinator/<id>" (see [CoordinatorName]). Host ids cannot contain '/',
// so the two never collide. Names must be unique in the cluster: a second
// live node with the same name at another address is refused by everybody,
// logged as an error on both sides, and reported by [Gossip.Conflict] on the
// newcomer. A node that restarts with the same name rejoins: at the same
// address at once (memberlist refutes its old incarnation), at another
// address once the old one has left, or has been dead for
// Config.DeadNodeReclaimTime.
//
// # States
//
// memberlist v0.7.0 exposes only joins and "leaves" (dead or left, not told
// apart) through its EventDelegate, and the State field of the nodes it hands
// out is never updated. This package derives the four states it reports:
//
//   - alive: NotifyJoin / NotifyUpdate.
//   - suspect: this node's own probe of X failed (memberlist's log line
//     "Suspect X has failed, no acks received", which is parsed as the log is
//     routed into zerolog). Nodes that learn of the suspicion only through
//     gossip go straight from alive to dead. Suspect ends with dead, with a
//     direct ack from X (PingDelegate), with any join/update event, or after
//     the longest suspicion memberlist could keep (X refuted it).
//   - left: NotifyLeave for a node whose last meta carried the "leaving" flag;
//     [Gossip.Close] sets that flag (UpdateNode) before memberlist's Leave.
//   - dead: NotifyLeave for any other node (a crash, a partition).
//
// Dead and left entries are forgotten after Config.ForgetAfter; State then
// returns "" again.
//
// # Timing
//
// See [Config.DeadAfter]. With the defaults (probe every 500 ms with a 250 ms
// timeout, suspicion multiplier 4, max suspicion multiplier 4), a crashed
// node is declared dead after about 3.4 s in a cluster of up to 10 nodes
// (strict bound 4.4 s for 3 nodes, 17.4 s for 10) and about 5.4 s at 100
// nodes. The strict bound assumes a single prober and no confirmations; with
// many members someone probes the node within a few probe intervals.
package gossip
