// Package faults holds Fleetwave's fault-scenario end-to-end tests (issue 4):
// a 3-member etcd cluster run as separate processes, three coordinators
// sharing it, five agents and their services, all real binaries, with faults
// injected on purpose mid-rollout: kill -9 of the leader, SIGSTOP of the
// leader past its lease, loss of etcd quorum, an agent cut off from every
// coordinator during its install (a network namespace when root, a TCP proxy
// otherwise), the death of the coordinator holding agents' streams, and
// agents killed with -9 at each phase of a good release's install (their
// services outlive them and are adopted: the rollout still succeeds).
//
// Each scenario ends by checking that every host runs the rollout's target,
// that no host ever ran a release outside the rollout or was updated twice,
// and that the rollout's recorded history is complete.
//
// The package has no code outside its tests. It uses internal/testkit/testcluster
// and internal/testkit/testfleet and must not be imported by anything.
package faults
