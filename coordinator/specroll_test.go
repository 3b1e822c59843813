package coordinator

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
	cc     *grpc.ClientConn
	cancel context.CancelFunc
	mu     sync.Mutex
	stream v1.AgentService_ConnectClient
	runs   string // version ("" after a removal)
	runRev int64  // spec revision
	last   *v1.Assignment
	report *v1.ServiceReport // the last report sent
}

func startSpecAgent(t *testing.T, ctx context.Context, cc *grpc.ClientConn, id string, labels map[string]string) *specAgent {
	t.Helper()
	a := &specAgent{id: id, cc: cc}
	a.connect(t, ctx, labels)
	return a
}

// connect opens a stream (ending the one before) with a hello carrying the
// labels and what the agent last reported, as a restarted agent does, and
// answers every new assignment.
func (a *specAgent) connect(t *testing.T, ctx context.Context, labels map[string]string) {
	t.Helper()
	a.mu.Lock()
	if a.cancel != nil {
		a.cancel()
	}
	sctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	hello := &v1.Hello{HostId: a.id, Labels: labels}
	if a.report != nil {
		hello.Services = []*v1.ServiceReport{a.report}
	}
	a.mu.Unlock()
	s, err := v1.NewAgentServiceClient(a.cc).Connect(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.stream = s
	a.mu.Unlock()
	go func() {
		answered := ""
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			for _, as := range m.GetAssignments() {
				a.mu.Lock()
				a.last = as
				a.mu.Unlock()
				key := fmt.Sprintf("%d/%s/%v/%d", as.GetGeneration(), as.GetRelease().GetVersion(), as.GetRemove(), as.GetSpecRevision())
				if key != answered {
					answered = key
					_ = a.answer(s, as)
				}
			}
		}
	}()
}

func (a *specAgent) answer(s v1.AgentService_ConnectClient, as *v1.Assignment) error {
	a.mu.Lock()
	phase, reason := v1.Phase_PHASE_HEALTHY, ""
	switch {
	case as.GetRemove():
		phase, a.runs, a.runRev = v1.Phase_PHASE_REMOVED, "", 0
	case as.GetSpec().GetRun().GetEnv()["FAIL"] == "1":
		phase, reason = v1.Phase_PHASE_REVERTED, "spec says FAIL=1"
	default:
		a.runs, a.runRev = as.GetRelease().GetVersion(), as.GetSpecRevision()
	}
	r := &v1.ServiceReport{Service: as.GetService(), Generation: as.GetGeneration(), Phase: phase,
		CurrentVersion: a.runs, TargetVersion: as.GetRelease().GetVersion(), Reason: reason}
	a.report = r
	a.mu.Unlock()
	return s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}})
}

// state is what the agent runs and the last assignment's version and spec
// revision.
func (a *specAgent) state() (runs string, runRev int64, last string, lastRev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs, a.runRev, a.last.GetRelease().GetVersion(), a.last.GetSpecRevision()
}

// removed reports whether the agent's last answer was REMOVED.
func (a *specAgent) removed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.report.GetPhase() == v1.Phase_PHASE_REMOVED
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

// TestDeleteServiceAndHostsMoving, against real etcd with agents on real
// streams: a host relabelled out of the selector is told to remove the
// service (and gets it back when relabelled in), with events and an audit
// entry; service delete is refused while a rollout runs, then forced: the
// removal reaches every host, the service is deleted with its history
// kept, releases are refused, and the name is created anew.
func TestDeleteServiceAndHostsMoving(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: 1, Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	web := map[string]string{"role": "web"}
	var agents []*specAgent
	for i := range 3 {
		agents = append(agents, startSpecAgent(t, ctx, cc, fmt.Sprintf("h%d", i), web))
	}
	waitHosts(t, ctx, op, 3)
	release := func(v string) (*v1.CreateReleaseResponse, error) {
		art := upload(t, ctx, cc, []byte("artifact "+v))
		return op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}})
	}
	if _, err := release("v1"); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, ctx, op, "v1 done", func(r *v1.Rollout) bool { return r.GetToVersion() == "v1" && r.GetState() == rOK })
	waitFor := func(what string, cond func() error) {
		t.Helper()
		testkit.EventuallyErr(t, 30*time.Second, what, cond)
	}
	runs := func(a *specAgent, v string) func() error {
		return func() error {
			if got, _, _, _ := a.state(); got != v {
				return fmt.Errorf("%s runs %q", a.id, got)
			}
			return nil
		}
	}
	for _, a := range agents {
		waitFor(a.id+" on v1", runs(a, "v1"))
	}
	events := func() map[string][]*v1.Event {
		t.Helper()
		evs, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]*v1.Event{}
		for _, e := range evs.GetEvents() {
			out[e.GetKind()] = append(out[e.GetKind()], e)
		}
		return out
	}

	// h2's agent restarts with role=db: it leaves the selector.
	h2 := agents[2]
	h2.connect(t, ctx, map[string]string{"role": "db"})
	waitFor("h2 removed the service", func() error {
		if !h2.removed() {
			runs, _, _, _ := h2.state()
			return fmt.Errorf("h2 runs %q", runs)
		}
		return nil
	})
	if evs := events()[rollout.EventHostLeft]; len(evs) != 1 || evs[0].GetHost() != "h2" || !strings.Contains(evs[0].GetMessage(), "no longer matches") {
		t.Errorf("host_left events: %v", evs)
	}
	// The agent's report that it removed the service reaches the host's
	// record after the agent has acted on it: wait for it.
	waitFor("h2 lists no service", func() error {
		hosts, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return err
		}
		for _, h := range hosts.GetHosts() {
			if h.GetId() == "h2" && len(h.GetServices()) != 0 {
				return fmt.Errorf("h2 still lists %v", h.GetServices())
			}
		}
		return nil
	})
	aud, err := op.ListAudit(ctx, &v1.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(aud.GetEntries(), func(e *v1.AuditEntry) bool {
		return e.GetActor() == "agent:h2" && strings.Contains(e.GetMessage(), "left [web]")
	}) {
		t.Errorf("no audit entry for h2 leaving web: %v", aud.GetEntries())
	}
	// Back in the selector: the stable release again.
	h2.connect(t, ctx, web)
	waitFor("h2 back on v1", runs(h2, "v1"))
	if evs := events()[rollout.EventHostJoined]; len(evs) != 1 || evs[0].GetHost() != "h2" {
		t.Errorf("host_joined events: %v", evs)
	}

	// A rollout waits for approval (manual mode): delete is refused, then
	// forced.
	manual := proto.Clone(spec).(*v1.ServiceSpec)
	manual.Rollout.Mode = "manual"
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: manual}); err != nil {
		t.Fatal(err)
	}
	if _, err := release("v2"); err != nil {
		t.Fatal(err)
	}
	waiting := waitRollout(t, ctx, op, "v2 waits", func(r *v1.Rollout) bool { return r.GetToVersion() == "v2" })
	if _, err := op.DeleteService(ctx, &v1.DeleteServiceRequest{Name: "web"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("delete during a rollout: %v", err)
	}
	if _, err := op.DeleteService(ctx, &v1.DeleteServiceRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete of an unknown service: %v", err)
	}
	del, err := op.DeleteService(ctx, &v1.DeleteServiceRequest{Name: "web", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	rm := del.GetRollout()
	if !rm.GetRemove() || rollout.RolloutHosts(rm) != 3 || !del.GetService().GetStatus().GetRemoving() {
		t.Fatalf("delete: %v %v", rm, del.GetService().GetStatus())
	}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("apply while deleting: %v", err)
	}
	waitRollout(t, ctx, op, "removal done", func(r *v1.Rollout) bool { return r.GetId() == rm.GetId() && r.GetState() == rOK })
	for _, a := range agents {
		if !a.removed() {
			t.Errorf("%s did not remove the service", a.id)
		}
	}
	svc, _ := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if st := svc.GetService().GetStatus(); !st.GetRemoved() || st.GetStableVersion() != "" || st.GetRemovedBy() == "" {
		t.Fatalf("after the removal: %v", st)
	}
	old, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: waiting.GetId()})
	if err != nil || old.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_SUPERSEDED {
		t.Fatalf("the superseded rollout after delete: %v %v", old, err)
	}
	evs := events()
	for _, k := range []string{rollout.EventRolloutCreated, rollout.EventRemovalCreated, rollout.EventServiceDeleted, rollout.EventRolloutSuperseded} {
		if len(evs[k]) == 0 {
			t.Errorf("history after delete lacks %s", k)
		}
	}
	if _, err := release("v3"); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("release of a deleted service: %v", err)
	}
	aud, _ = op.ListAudit(ctx, &v1.ListAuditRequest{})
	if !slices.ContainsFunc(aud.GetEntries(), func(e *v1.AuditEntry) bool {
		return strings.HasSuffix(e.GetMethod(), "DeleteService") && e.GetTarget() == "web (force)" && e.GetResult() == "OK"
	}) {
		t.Errorf("no audit entry for the forced delete")
	}

	// Created anew: a new release rolls out; ids and generations go on.
	resp, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec})
	if err != nil || !resp.GetCreated() || resp.GetService().GetStatus().GetRemoved() {
		t.Fatalf("apply after delete: %v %v", resp, err)
	}
	if _, err := release("v3"); err != nil {
		t.Fatal(err)
	}
	r3 := waitRollout(t, ctx, op, "v3 done", func(r *v1.Rollout) bool { return r.GetToVersion() == "v3" && r.GetState() == rOK })
	if r3.GetId() <= rm.GetId() || r3.GetGeneration() <= rm.GetGeneration() || r3.GetFromVersion() != "" {
		t.Errorf("v3 after re-creation: id %s gen %d from %q; the removal was %s gen %d", r3.GetId(), r3.GetGeneration(), r3.GetFromVersion(), rm.GetId(), rm.GetGeneration())
	}
	for _, a := range agents {
		waitFor(a.id+" on v3", runs(a, "v3"))
	}
}

// TestSelectorChangeRemovesInWaves, against real etcd with agents on real
// streams: a spec whose selector leaves out two of three hosts that run the
// service begins a removal of exactly those two, through the policy's
// waves (one host each) with a host_left event each; the first is removed
// before the second is told to; the host that stays keeps its assignment;
// then the selector is the one hosts are placed by, and a release rolls
// out to the host that stays only.
func TestSelectorChangeRemovesInWaves(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: 1, Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	var agents []*specAgent
	for i, zone := range []string{"a", "b", "b"} {
		agents = append(agents, startSpecAgent(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{"role": "web", "zone": zone}))
	}
	waitHosts(t, ctx, op, 3)
	release := func(v string) {
		art := upload(t, ctx, cc, []byte("artifact "+v))
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}}); err != nil {
			t.Fatal(err)
		}
	}
	release("v1")
	waitRollout(t, ctx, op, "v1 done", func(r *v1.Rollout) bool { return r.GetToVersion() == "v1" && r.GetState() == rOK })

	narrow := proto.Clone(spec).(*v1.ServiceSpec)
	narrow.Selector = map[string]string{"role": "web", "zone": "a"}
	resp, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: narrow})
	if err != nil {
		t.Fatal(err)
	}
	rm := resp.GetRollout()
	if !rm.GetLeft() || !rm.GetRemove() || rollout.RolloutHosts(rm) != 2 || len(rm.GetWaves()) != 2 || !strings.Contains(resp.GetNote(), "in waves") {
		t.Fatalf("apply of a narrower selector: rollout %v, note %q", rm, resp.GetNote())
	}
	done := waitRollout(t, ctx, op, "removal done", func(r *v1.Rollout) bool { return r.GetId() == rm.GetId() && r.GetState() == rOK })
	var order []string
	for _, w := range done.GetWaves() {
		for _, h := range w.GetHosts() {
			order = append(order, h.GetHostId())
		}
	}
	if !slices.Equal(order, []string{"h1", "h2"}) && !slices.Equal(order, []string{"h2", "h1"}) {
		t.Fatalf("removal plan %v", order)
	}
	for _, a := range agents[1:] {
		if !a.removed() {
			t.Errorf("%s did not remove the service", a.id)
		}
	}
	if runs, _, last, _ := agents[0].state(); runs != "v1" || last != "v1" {
		t.Errorf("h0, still selected, runs %q, told %q", runs, last)
	}
	evs, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", RolloutId: rm.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	var left, seq []string
	for _, e := range evs.GetEvents() {
		switch e.GetKind() {
		case rollout.EventHostLeft:
			left = append(left, e.GetHost())
		case rollout.EventHostAssigned, rollout.EventHostDone:
			seq = append(seq, e.GetKind()+" "+e.GetHost())
		}
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"h1", "h2"}) {
		t.Errorf("host_left events of the removal: %v", left)
	}
	// Waves of one host: the first is done before the second is assigned.
	want := []string{"host_assigned " + order[0], "host_done " + order[0], "host_assigned " + order[1], "host_done " + order[1]}
	if !slices.Equal(seq, want) {
		t.Errorf("removal events %v, want %v", seq, want)
	}
	svc, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if st := svc.GetService().GetStatus(); st.GetRemoving() || st.GetRemoved() || st.GetStableVersion() != "v1" || !maps.Equal(st.GetStableSpec().GetSelector(), narrow.GetSelector()) {
		t.Fatalf("after the removal: %v", st)
	}

	// A release now rolls out to the host that stays only.
	release("v2")
	r2 := waitRollout(t, ctx, op, "v2 done", func(r *v1.Rollout) bool { return r.GetToVersion() == "v2" && r.GetState() == rOK })
	if rollout.RolloutHosts(r2) != 1 {
		t.Errorf("v2 rolled out to %d host(s)", rollout.RolloutHosts(r2))
	}
	testkit.EventuallyErr(t, 30*time.Second, "h0 on v2", func() error {
		if runs, _, _, _ := agents[0].state(); runs != "v2" {
			return fmt.Errorf("h0 runs %q", runs)
		}
		return nil
	})
	for _, a := range agents[1:] {
		if !a.removed() {
			t.Errorf("%s has the service again", a.id)
		}
	}
}
