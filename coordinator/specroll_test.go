package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// specAgent is a fake agent on a real stream that, like the real one,
// treats an assignment of the release it runs with a spec that changes
// what hosts run as a change: it fails (REVERTED to what it ran) when the
// spec's env says FAIL=1, and is healthy otherwise. It keeps what it runs
// and the last assignment it was sent.
type specAgent struct {
	id     string
	stream v1.AgentService_ConnectClient
	mu     sync.Mutex
	runs   string // version
	runRev int64  // spec revision
	last   *v1.Assignment
}

func startSpecAgent(t *testing.T, ctx context.Context, cc *grpc.ClientConn, id string, labels map[string]string) *specAgent {
	t.Helper()
	s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &specAgent{id: id, stream: s}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: id, Labels: labels}}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		var gen int64
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			for _, as := range m.GetAssignments() {
				a.mu.Lock()
				a.last = as
				a.mu.Unlock()
				if as.GetGeneration() > gen {
					gen = as.GetGeneration()
					_ = a.answer(as)
				}
			}
		}
	}()
	return a
}

func (a *specAgent) answer(as *v1.Assignment) error {
	a.mu.Lock()
	phase, reason := v1.Phase_PHASE_HEALTHY, ""
	if as.GetSpec().GetRun().GetEnv()["FAIL"] == "1" {
		phase, reason = v1.Phase_PHASE_REVERTED, "spec says FAIL=1"
	} else {
		a.runs, a.runRev = as.GetRelease().GetVersion(), as.GetSpecRevision()
	}
	r := &v1.ServiceReport{Service: as.GetService(), Generation: as.GetGeneration(), Phase: phase,
		CurrentVersion: a.runs, TargetVersion: as.GetRelease().GetVersion(), Reason: reason}
	a.mu.Unlock()
	return a.stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}})
}

// state is what the agent runs and the last assignment's version and spec
// revision.
func (a *specAgent) state() (runs string, runRev int64, last string, lastRev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs, a.runRev, a.last.GetRelease().GetVersion(), a.last.GetSpecRevision()
}

// TestConfigRollout: against real etcd, a spec that changes what hosts run
// rolls the stable release out again through canary and waves; its canary
// fails, the rollout fails, the service freezes and every host is assigned
// the stable release with the last good spec. A failed spec is not retried
// after an unfreeze; a spec that changes only the alerts is recorded
// without a rollout; a good spec rolls out everywhere. Rollouts, events,
// service and stats name the spec revisions.
func TestConfigRollout(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := func(env map[string]string, webhook string) *v1.ServiceSpec {
		s := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"},
			Run:     &v1.RunSpec{Command: []string{"./app"}, Env: env},
			Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: 2, Bake: durationpb.New(0)}}
		if webhook != "" {
			s.Alerts = &v1.Alerts{WebhookUrl: webhook}
		}
		return s
	}
	apply := func(s *v1.ServiceSpec) *v1.ApplyServiceResponse {
		t.Helper()
		resp, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: s})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := apply(spec(map[string]string{"MODE": "a"}, "")); !resp.GetCreated() || resp.GetService().GetSpecRevision() != 1 {
		t.Fatalf("create: %v", resp)
	}
	var agents []*specAgent
	for i := range 4 {
		agents = append(agents, startSpecAgent(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{"role": "web"}))
	}
	waitHosts(t, ctx, op, 4)
	art := upload(t, ctx, cc, []byte("artifact v1"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, ctx, op, "v1 done", func(r *v1.Rollout) bool { return r.GetToVersion() == "v1" && r.GetState() == rOK })
	fleetRuns := func(what string, version string, rev int64) {
		t.Helper()
		testkit.EventuallyErr(t, 30*time.Second, what, func() error {
			for _, a := range agents {
				if runs, runRev, last, lastRev := a.state(); runs != version || runRev != rev || last != version || lastRev != rev {
					return fmt.Errorf("%s runs %s with spec %d, assigned %s with spec %d", a.id, runs, runRev, last, lastRev)
				}
			}
			return nil
		})
	}
	fleetRuns("every host on v1 with spec 1", "v1", 1)

	// The same spec again changes nothing.
	if resp := apply(spec(map[string]string{"MODE": "a"}, "")); !resp.GetUnchanged() || resp.GetService().GetSpecRevision() != 1 || resp.GetRollout() != nil {
		t.Fatalf("same spec: %v", resp)
	}

	// Spec 2 changes the env and fails on the canary.
	resp := apply(spec(map[string]string{"MODE": "b", "FAIL": "1"}, ""))
	r := resp.GetRollout()
	if !rollout.IsConfig(r) || r.GetToVersion() != "v1" || r.GetSpecRevision() != 2 || r.GetFromSpecRevision() != 1 ||
		!slices.Equal(r.GetSpecChanges(), []string{"run.env"}) || rollout.Describe(r) != "v1 with spec 1 → spec 2" {
		t.Fatalf("apply of spec 2: rollout %v, note %q", r, resp.GetNote())
	}
	failed := waitRollout(t, ctx, op, "config rollout failed", func(x *v1.Rollout) bool { return x.GetId() == r.GetId() && x.GetState() == rFailed })
	if moved := failed.GetWaves()[0].GetHosts(); len(moved) != 1 || !strings.Contains(moved[0].GetReason(), "FAIL=1") {
		t.Fatalf("canary: %v", moved)
	}
	for i, w := range failed.GetWaves()[1:] {
		for _, h := range w.GetHosts() {
			if h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING {
				t.Errorf("wave %d host %s moved after the canary failed: %v", i+1, h.GetHostId(), h.GetState())
			}
		}
	}
	svc, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if st := svc.GetService().GetStatus(); !st.GetFrozen() || st.GetStableVersion() != "v1" || st.GetStableSpecRevision() != 1 ||
		st.GetStableSpec().GetRun().GetEnv()["MODE"] != "a" || svc.GetService().GetSpecRevision() != 2 {
		t.Fatalf("after the failed config rollout: spec %d, status %v", svc.GetService().GetSpecRevision(), st)
	}
	// Every host, the canary included, is told v1 with spec 1 again.
	fleetRuns("every host assigned v1 with spec 1 after the failure", "v1", 1)
	testkit.EventuallyErr(t, 30*time.Second, "fleet restored recorded", func() error {
		got, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: r.GetId()})
		if err != nil {
			return err
		}
		if got.GetRollout().GetRestoredAt() == nil {
			return fmt.Errorf("restored_at unset")
		}
		return nil
	})
	evs, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", RolloutId: r.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs.GetEvents() {
		kinds = append(kinds, e.GetKind())
		if e.GetKind() == rollout.EventRolloutCreated && !strings.Contains(e.GetMessage(), "v1 with spec 1 → spec 2 (changes run.env)") {
			t.Errorf("created event: %q", e.GetMessage())
		}
	}
	for _, k := range []string{rollout.EventRolloutCreated, rollout.EventHostFailed, rollout.EventRolloutFailed, rollout.EventFleetRestored} {
		if !slices.Contains(kinds, k) {
			t.Errorf("history of %s lacks %s: %v", r.GetId(), k, kinds)
		}
	}

	// Unfrozen, the failed spec is not retried.
	if _, err := op.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if cur, _ := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"}); cur.GetRollout().GetId() != r.GetId() {
		t.Fatalf("after unfreeze a rollout started: %v", cur.GetRollout())
	}

	// Spec 3: back to MODE=a with an alert webhook: nothing hosts run
	// changes; recorded without a rollout.
	resp = apply(spec(map[string]string{"MODE": "a"}, "http://127.0.0.1:1/hook"))
	if resp.GetRollout() != nil || !strings.Contains(resp.GetNote(), "recorded without a rollout") ||
		resp.GetService().GetStatus().GetStableSpecRevision() != 3 {
		t.Fatalf("apply of spec 3: rollout %v, note %q, status %v", resp.GetRollout(), resp.GetNote(), resp.GetService().GetStatus())
	}
	if cur, _ := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"}); cur.GetRollout().GetId() != r.GetId() {
		t.Fatalf("a coordinator-only spec started a rollout: %v", cur.GetRollout())
	}

	// Spec 4 is good: it rolls out through every wave.
	resp = apply(spec(map[string]string{"MODE": "c"}, "http://127.0.0.1:1/hook"))
	r4 := resp.GetRollout()
	if !rollout.IsConfig(r4) || r4.GetSpecRevision() != 4 || r4.GetFromSpecRevision() != 3 {
		t.Fatalf("apply of spec 4: %v %q", r4, resp.GetNote())
	}
	waitRollout(t, ctx, op, "spec 4 rolled out", func(x *v1.Rollout) bool { return x.GetId() == r4.GetId() && x.GetState() == rOK })
	fleetRuns("every host on v1 with spec 4", "v1", 4)
	svc, _ = op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if st := svc.GetService().GetStatus(); st.GetStableSpecRevision() != 4 || st.GetStableVersion() != "v1" {
		t.Fatalf("after spec 4: %v", st)
	}
	stats, err := op.GetStats(ctx, &v1.GetStatsRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if s := stats.GetServices()[0]; s.GetConfigRollouts() != 2 || s.GetFailed() != 1 || s.GetSucceeded() != 2 {
		t.Errorf("stats: %d config rollouts, %d failed, %d succeeded; want 2, 1, 2", s.GetConfigRollouts(), s.GetFailed(), s.GetSucceeded())
	}
}

const (
	rOK     = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	rFailed = v1.RolloutState_ROLLOUT_STATE_FAILED
)
