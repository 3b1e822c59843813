package testkit_test

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

const (
	etcd = "go.etcd.io"
	grpc = "google.golang.org/grpc"
)

// never are the packages no product code imports: test infrastructure, the
// suites and the demo.
var never = []string{"./internal/testkit", "./test", "./demo"}

// TestLayout holds the code to the "must not import" column of
// docs/ARCHITECTURE.md's package table and to the package docs that make
// such claims. A row changed there changes here.
func TestLayout(t *testing.T) {
	rules := []testkit.DepRule{
		{Pkg: "cmd/fleetwave-agent", Why: "the agent binary is lean: no etcd, no coordinator or CLI code",
			Forbid:  append([]string{etcd, "./coordinator", "./cli"}, never...),
			Include: []string{"./agent", "./agent/analysis", "./agent/analysis/fetch", "./agent/install", "./agent/lifecycle", "./agent/probe", "./agent/sockets", "./agent/state", "./agent/supervise"}},
		{Pkg: "agent/...", Why: "the agent knows nothing of etcd, the coordinator or the CLI",
			Forbid: append([]string{etcd, "./coordinator", "./cli"}, never...)},
		{Pkg: "cmd/fleetwave", Why: "the CLI is a plain gRPC client: of the coordinator only the pure engine's vocabulary",
			Forbid: append([]string{etcd, "./agent", "./coordinator"}, never...), Allow: []string{"./coordinator/rollout"},
			Include: []string{"./cli"}},
		{Pkg: "cmd/fleetwave-coordinator", Why: "the coordinator runs no agent or CLI code",
			Forbid: append([]string{"./agent", "./cli"}, never...), Include: []string{"./coordinator", "./coordinator/store", "./coordinator/rollout"}},
		{Pkg: "coordinator/...", Why: "the coordinator runs no agent or CLI code",
			Forbid: append([]string{"./agent", "./cli"}, never...)},
		{Pkg: "coordinator/store", Why: "the keyspace knows neither the engine nor the coordinator's services",
			Forbid: []string{"./coordinator"}, Allow: []string{"./coordinator/store"}},
		{Pkg: "coordinator/artifacts", Why: "artifact files need no etcd", Forbid: []string{etcd}},
		{Pkg: "coordinator/dashboard", Why: "the dashboard reaches the coordinator through its gRPC API only: one set of roles, one audit log (it may use the pure engine's names for rollouts)",
			Forbid: []string{etcd, "./coordinator"}, Allow: []string{"./coordinator/dashboard", "./coordinator/rollout"}},
		{Pkg: "internal/gossip", Why: "gossip is linked into the agent", Forbid: []string{etcd, grpc, "./coordinator", "./agent"}},
		// spec and signing use the generated types, which bring gRPC's
		// generated service code along; they make no calls of their own.
		{Pkg: "internal/spec", Why: "specs are linked into the agent and the CLI", Forbid: []string{etcd, "./coordinator", "./agent"}},
		{Pkg: "internal/specdiff", Why: "the host-affecting rule is linked into the agent's pure lifecycle and the pure engine",
			Forbid: []string{etcd, "./coordinator", "./agent", "./internal/spec"}},
		{Pkg: "internal/hookspec", Why: "the hook lookup is linked into the agent's pure lifecycle and the spec validation",
			Forbid: []string{etcd, "./coordinator", "./agent", "./internal/spec"}},
		{Pkg: "internal/signing", Why: "signing is linked into the agent and the CLI", Forbid: []string{etcd, "./coordinator", "./agent"}},
		{Pkg: "internal/tlsutil", Why: "TLS helpers are linked into every binary", Forbid: []string{etcd, "./coordinator", "./agent"}},
		{Pkg: "internal/grpcwindow", Why: "the flow-control windows are linked into the agent and the coordinator",
			Forbid: []string{etcd, "./coordinator", "./agent"}},
		{Pkg: "internal/procenv", Why: "the environment of a service's processes is linked into the agent's supervisor and probes",
			Forbid: []string{etcd, grpc, "./coordinator", "./agent"}},
		{Pkg: "internal/revocation", Why: "the revocation rule and the agents' set are linked into the agent and the coordinator",
			Forbid: []string{etcd, "./coordinator", "./agent"}},
		{Pkg: "internal/testkit/sim", Why: "the simulator is a client of the coordinator, as agents are (its tests pass the engine's staging constants to the flow model)",
			Forbid: []string{"./coordinator", "./agent"}},
	}
	for _, r := range rules {
		t.Run(r.Pkg, func(t *testing.T) { testkit.CheckDeps(t, r) })
	}
}

// TestCheckDepsFails shows the check can fail: a rule that the module
// breaks, one whose Include is missing and one that matches nothing.
func TestCheckDepsFails(t *testing.T) {
	for _, r := range []testkit.DepRule{
		{Pkg: "cmd/fleetwave-coordinator", Forbid: []string{etcd}},
		{Pkg: "cmd/fleetwave", Include: []string{"./agent"}},
		{Pkg: "no/such/pkg/...", Forbid: []string{etcd}},
	} {
		ft := &failT{TB: t}
		testkit.CheckDeps(ft, r)
		if !ft.failed {
			t.Errorf("rule %+v passed", r)
		}
	}
}

type failT struct {
	testing.TB
	failed bool
}

func (f *failT) Errorf(string, ...any) { f.failed = true }
func (f *failT) Helper()               {}
