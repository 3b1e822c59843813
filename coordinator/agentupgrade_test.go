package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fakeAgentStream is one agent stream whose hello reports version and,
// when rep is set, its agent upgrade.
type fakeAgentStream struct {
	stream v1.AgentService_ConnectClient
	cancel context.CancelFunc
}

func connectFakeAgent(t *testing.T, ctx context.Context, cc interface {
	v1.AgentServiceClient
}, host, version string, rep *v1.ServiceReport) *fakeAgentStream {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	stream, err := cc.Connect(sctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &v1.Hello{HostId: host, AgentVersion: version, Labels: map[string]string{"zone": "a"}}
	if rep != nil {
		hello.Services = []*v1.ServiceReport{rep}
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	return &fakeAgentStream{stream: stream, cancel: cancel}
}

// agentAssignment waits for a set with an agent assignment of version.
func (f *fakeAgentStream) agentAssignment(t *testing.T, version string) *v1.ConnectResponse {
	t.Helper()
	for {
		m, err := f.stream.Recv()
		if err != nil {
			t.Fatalf("waiting for the agent assignment %s: %v", version, err)
		}
		if m.GetAgent().GetRelease().GetVersion() == version {
			return m
		}
	}
}

// An agent rollout is a rollout of the reserved service fleetwave-agent:
// its assignment reaches hosts apart from their services', a host is done
// when it comes back reporting the new version, and one failing host fails
// it by the budget; one agent rollout runs at a time, and the reserved name
// cannot be applied, released, or deleted as a service.
func TestUpgradeAgentsRollout(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	ag := v1.NewAgentServiceClient(cc)
	art := upload(t, ctx, cc, []byte("agent binary v0.2.0"))

	// Refusals name the field and the value, and change nothing.
	bad := []struct {
		name string
		call func() error
		want string
	}{
		{"apply the reserved name", func() error {
			_, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: spec.AgentService, Run: &v1.RunSpec{Command: []string{"x"}}}})
			return err
		}, `name: "fleetwave-agent" is reserved`},
		{"release the reserved name", func() error {
			_, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: spec.AgentService, Version: "v0.2.0", Artifact: art}})
			return err
		}, "use fleetwave agent upgrade"},
		{"delete the agent", func() error {
			_, err := op.DeleteService(ctx, &v1.DeleteServiceRequest{Name: spec.AgentService})
			return err
		}, "cannot be deleted"},
		{"version below the minimum", func() error {
			_, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{Release: &v1.Release{Version: "v0.0.1", Artifact: art}})
			return err
		}, `release.version: "v0.0.1" is older than ` + MinAgentVersion},
		{"bad waves", func() error {
			_, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{Release: &v1.Release{Version: "v0.2.0", Artifact: art}, Policy: &v1.RolloutPolicy{Waves: []uint32{50}}})
			return err
		}, "rollout.waves: the last wave is 50"},
		{"manual", func() error {
			_, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{Release: &v1.Release{Version: "v0.2.0", Artifact: art}, Policy: &v1.RolloutPolicy{Mode: "manual"}})
			return err
		}, `policy.mode: "manual"`},
		{"another service", func() error {
			_, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{Release: &v1.Release{Service: "web", Version: "v0.2.0", Artifact: art}})
			return err
		}, `release.service: "web"`},
		{"no release", func() error {
			_, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{})
			return err
		}, "release: missing"},
	}
	for _, b := range bad {
		if err := b.call(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: %v, want InvalidArgument with %q", b.name, err, b.want)
		}
	}
	if _, err := op.GetService(ctx, &v1.GetServiceRequest{Name: spec.AgentService}); status.Code(err) != codes.NotFound {
		t.Fatalf("after refusals: %v, want the reserved service not created", err)
	}

	// Three hosts on v0.1.0; canary 1, then everything, one failure too many.
	hosts := []string{"h1", "h2", "h3"}
	streams := map[string]*fakeAgentStream{}
	for _, h := range hosts {
		streams[h] = connectFakeAgent(t, ctx, ag, h, "v0.1.0", nil)
	}
	testkit.EventuallyErr(t, 30*time.Second, "three hosts connected", func() error {
		resp, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return err
		}
		n := 0
		for _, h := range resp.GetHosts() {
			if h.GetConnected() {
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("%d connected", n)
		}
		return nil
	})
	up, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{Release: &v1.Release{Version: "v0.2.0", Artifact: art},
		Policy: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}})
	if err != nil {
		t.Fatal(err)
	}
	r := up.GetRollout()
	if r.GetService() != spec.AgentService || r.GetToVersion() != "v0.2.0" || len(r.GetWaves()) != 2 || !r.GetWaves()[0].GetCanary() {
		t.Fatalf("agent rollout: %v (note %q)", r, up.GetNote())
	}
	// Audited with the caller and what it upgrades to.
	testkit.EventuallyErr(t, 30*time.Second, "the upgrade in the audit log", func() error {
		al, err := op.ListAudit(ctx, &v1.ListAuditRequest{})
		if err != nil {
			return err
		}
		for _, e := range al.GetEntries() {
			if strings.HasSuffix(e.GetMethod(), "/UpgradeAgents") && e.GetTarget() == spec.AgentService+"@v0.2.0" && e.GetResult() == "OK" && e.GetActor() != "" {
				return nil
			}
		}
		return fmt.Errorf("no OK UpgradeAgents entry for %s@v0.2.0 in %d entries", spec.AgentService, len(al.GetEntries()))
	})
	if _, err := op.UpgradeAgents(ctx, &v1.UpgradeAgentsRequest{Release: &v1.Release{Version: "v0.3.0", Artifact: art}}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "one agent rollout at a time") {
		t.Fatalf("second agent rollout: %v", err)
	}
	gen := r.GetGeneration()
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	m := streams[canary].agentAssignment(t, "v0.2.0")
	if len(m.GetAssignments()) != 0 || m.GetAgent().GetGeneration() != gen || m.GetAgent().GetService() != spec.AgentService {
		t.Fatalf("canary's set: %v", m)
	}
	// The canary's new agent comes back on v0.2.0 and says so.
	streams[canary].cancel()
	ok := &v1.ServiceReport{Service: spec.AgentService, Generation: gen, Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v0.2.0", TargetVersion: "v0.2.0", LastGoodVersion: "v0.2.0"}
	streams[canary] = connectFakeAgent(t, ctx, ag, canary, "v0.2.0", ok)
	// The next wave: one host succeeds, the other's new agent never came
	// back and the old one reports the failure.
	var rest []string
	for _, h := range hosts {
		if h != canary {
			rest = append(rest, h)
		}
	}
	for _, h := range rest {
		streams[h].agentAssignment(t, "v0.2.0")
	}
	streams[rest[0]].cancel()
	streams[rest[0]] = connectFakeAgent(t, ctx, ag, rest[0], "v0.2.0", ok)
	failed := &v1.ServiceReport{Service: spec.AgentService, Generation: gen, Phase: v1.Phase_PHASE_FAILED, CurrentVersion: "v0.1.0", TargetVersion: "v0.2.0",
		LastGoodVersion: "v0.1.0", Reason: "agent v0.2.0 did not confirm within 1m0s: went back to v0.1.0"}
	if err := streams[rest[1]].stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: failed}}); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "the agent rollout failed by the budget", func() error {
		g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: spec.AgentService})
		if err != nil {
			return err
		}
		if g.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED {
			return fmt.Errorf("rollout %v", g.GetRollout().GetState())
		}
		if !strings.Contains(g.GetRollout().GetReason(), "did not confirm") {
			t.Fatalf("reason %q", g.GetRollout().GetReason())
		}
		return nil
	})
	resp, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, h := range resp.GetHosts() {
		got[h.GetId()] = h.GetAgentVersion()
	}
	if got[canary] != "v0.2.0" || got[rest[0]] != "v0.2.0" || got[rest[1]] != "v0.1.0" {
		t.Fatalf("agent versions %v", got)
	}
}
