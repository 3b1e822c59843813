// Package sim runs a fleet of simulated agents in one process against a real
// coordinator. Every simulated host has its own gRPC connection and speaks
// the real AgentService.Connect protocol: a Hello with its full status on
// every (re)connect, then one ServiceReport per phase change, echoing the
// assignment's generation. Installs and health checks are simulated with
// configurable delays and failure rates, drawn from a seeded *rand.Rand per
// host, so which install of which host fails is fixed by the seed. Faults
// (a host's stream going down and coming back, a host failing its next
// install) can be injected while the fleet runs. With Config.Fetch an
// install first moves the artifact's bytes through a bandwidth model (per
// host token buckets, the coordinator's NIC, peer upload slots, a byte
// scale; transfer.go), from the sources the coordinator names and from its
// ArtifactService; ArtifactSpread is the same spread as a flow model on
// paper.
//
// It owns the simulated agents and the statistics about them (connections,
// reports, assignment delivery latency). It must not import the coordinator
// or the agent: it sees the coordinator only through the wire protocol, as
// a real agent does.
package sim
