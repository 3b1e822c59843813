package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/alertfmt"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// scriptedAgent is a fake agent on a real stream whose answer to an
// assignment depends on the version: "failed", "hold" (no answer until
// released), or healthy.
type scriptedAgent struct {
	id     string
	stream v1.AgentService_ConnectClient
	mu     sync.Mutex
	plan   map[string]string
	held   []*v1.Assignment
	runs   string
}

func (a *scriptedAgent) answer(as *v1.Assignment) error {
	v := as.GetRelease().GetVersion()
	a.mu.Lock()
	how := a.plan[v]
	if how == "hold" {
		a.held = append(a.held, as)
		a.mu.Unlock()
		return nil
	}
	phase, cur := v1.Phase_PHASE_HEALTHY, v
	if how == "failed" {
		phase, cur = v1.Phase_PHASE_REVERTED, a.runs
	} else {
		a.runs = v
	}
	a.mu.Unlock()
	r := &v1.ServiceReport{Service: as.GetService(), Generation: as.GetGeneration(), Phase: phase, CurrentVersion: cur, TargetVersion: v, Reason: "scripted " + how}
	return a.stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}})
}

// release makes held versions healthy and answers what was held.
func (a *scriptedAgent) release(v string) {
	a.mu.Lock()
	a.plan[v] = ""
	held := a.held
	a.held = nil
	a.mu.Unlock()
	for _, as := range held {
		_ = a.answer(as)
	}
}

func startScripted(t *testing.T, ctx context.Context, cc *grpc.ClientConn, id string, plan map[string]string) *scriptedAgent {
	t.Helper()
	s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &scriptedAgent{id: id, stream: s, plan: plan}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: id, Labels: map[string]string{"role": "web"}}}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		gens := map[int64]bool{}
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			for _, as := range m.GetAssignments() {
				if !gens[as.GetGeneration()] {
					gens[as.GetGeneration()] = true
					_ = a.answer(as)
				}
			}
		}
	}()
	return a
}

func waitRollout(t *testing.T, ctx context.Context, op v1.OperatorServiceClient, what string, cond func(*v1.Rollout) bool) *v1.Rollout {
	t.Helper()
	var last *v1.Rollout
	testkit.EventuallyErr(t, 30*time.Second, what, func() error {
		resp, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"})
		if err != nil {
			return err
		}
		last = resp.GetRollout()
		if !cond(last) {
			return fmt.Errorf("last rollout %v", last)
		}
		return nil
	})
	return last
}

func countUpdating(r *v1.Rollout) (updating, done int) {
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			switch h.GetState() {
			case v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING:
				updating++
			case v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE:
				done++
			}
		}
	}
	return
}

func TestFailureAlertRollbackPauseResumeAbortHistory(t *testing.T) {
	// A webhook that fails twice before it accepts: the alert is retried.
	var hookMu sync.Mutex
	var hookCalls int
	var alert alertfmt.Alert
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hookMu.Lock()
		defer hookMu.Unlock()
		hookCalls++
		if hookCalls <= 2 {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &alert)
	}))
	defer hook.Close()

	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 1, Bake: durationpb.New(0)},
		Alerts:  &v1.Alerts{WebhookUrl: hook.URL}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	var agents []*scriptedAgent
	for i := range 4 {
		agents = append(agents, startScripted(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{"v3": "failed", "v4": "hold", "v5": "hold"}))
	}
	waitHosts(t, ctx, op, 4)
	release := func(v string) {
		t.Helper()
		art := upload(t, ctx, cc, []byte("artifact "+v))
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}}); err != nil {
			t.Fatal(err)
		}
	}
	ended := func(v string, st v1.RolloutState) *v1.Rollout {
		t.Helper()
		return waitRollout(t, ctx, op, v+" "+st.String(), func(r *v1.Rollout) bool { return r.GetToVersion() == v && r.GetState() == st })
	}
	release("v1")
	ended("v1", v1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	release("v2")
	ended("v2", v1.RolloutState_ROLLOUT_STATE_SUCCEEDED)

	// v3 fails on the canary: the rollout fails, the alert is delivered
	// after two refusals, and the history records it.
	release("v3")
	failed := ended("v3", v1.RolloutState_ROLLOUT_STATE_FAILED)
	testkit.Eventually(t, 30*time.Second, "the alert delivered", func() bool {
		hookMu.Lock()
		defer hookMu.Unlock()
		return alert.RolloutID != ""
	})
	hookMu.Lock()
	if hookCalls != 3 || alert.Kind != rollout.EventRolloutFailed || alert.RolloutID != failed.GetId() || alert.ToVersion != "v3" ||
		len(alert.Hosts) != 1 || !strings.Contains(alert.Hosts[0].Reason, "scripted failed") || !alert.Frozen {
		t.Errorf("alert after %d calls: %+v", hookCalls, alert)
	}
	hookMu.Unlock()

	// Rollback while frozen, without a target: back to v1 (the release
	// before the stable v2), fast, and the service stays frozen.
	rb, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if !rb.GetRollout().GetRollback() || rb.GetRollout().GetToVersion() != "v1" || len(rb.GetRollout().GetWaves()) != 1 {
		t.Fatalf("rollback: %v", rb.GetRollout())
	}
	ended("v1", v1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	svc, _ := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if st := svc.GetService().GetStatus(); st.GetStableVersion() != "v1" || !st.GetFrozen() {
		t.Fatalf("after rollback: %v", st)
	}
	for _, a := range agents {
		a.mu.Lock()
		runs := a.runs
		a.mu.Unlock()
		if runs != "v1" {
			t.Errorf("%s runs %s after the rollback", a.id, runs)
		}
	}
	// Never onto the release that failed; never onto what already runs.
	if _, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v3"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("rollback onto the failed v3: %v", err)
	}
	if _, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v1"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("rollback onto the running v1: %v", err)
	}
	if _, err := op.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: "web"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("pause with no rollout in progress: %v", err)
	}

	// Pause: the canary finishes but the next wave does not start; resume.
	if _, err := op.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	release("v4")
	waitRollout(t, ctx, op, "v4 canary updating", func(r *v1.Rollout) bool { u, _ := countUpdating(r); return r.GetToVersion() == "v4" && u == 1 })
	if _, err := op.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		a.release("v4")
	}
	waitRollout(t, ctx, op, "v4 canary done", func(r *v1.Rollout) bool { _, d := countUpdating(r); return d == 1 })
	// The Step that saw the canary done is the one that would have started
	// the next wave: paused, it did not.
	r := waitRollout(t, ctx, op, "v4 paused", func(r *v1.Rollout) bool { return r.GetPaused() })
	if u, d := countUpdating(r); u != 0 || d != 1 {
		t.Fatalf("paused rollout moved hosts: updating %d done %d", u, d)
	}
	if _, err := op.ResumeRollout(ctx, &v1.ResumeRolloutRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	ended("v4", v1.RolloutState_ROLLOUT_STATE_SUCCEEDED)

	// Abort: the rollout fails, moved hosts go back, the service freezes.
	release("v5")
	waitRollout(t, ctx, op, "v5 canary updating", func(r *v1.Rollout) bool { u, _ := countUpdating(r); return r.GetToVersion() == "v5" && u == 1 })
	ab, err := op.AbortRollout(ctx, &v1.AbortRolloutRequest{Service: "web", Reason: "dashboards look wrong"})
	if err != nil {
		t.Fatal(err)
	}
	if ab.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(ab.GetRollout().GetReason(), "dashboards look wrong") {
		t.Fatalf("abort: %v", ab.GetRollout())
	}
	svc, _ = op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if st := svc.GetService().GetStatus(); st.GetStableVersion() != "v4" || !st.GetFrozen() {
		t.Fatalf("after abort: %v", st)
	}

	// The history has every decision, with who made it.
	evs, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]*v1.Event{}
	for _, e := range evs.GetEvents() {
		kinds[e.GetKind()] = e
	}
	for _, k := range []string{rollout.EventRolloutCreated, rollout.EventWaveStarted, rollout.EventHostFailed, rollout.EventRolloutFailed, rollout.EventAlertSent, rollout.EventRollbackCreated,
		rollout.EventServiceUnfrozen, rollout.EventRolloutPaused, rollout.EventRolloutResumed, rollout.EventRolloutAborted, rollout.EventRolloutSucceeded} {
		if kinds[k] == nil {
			t.Errorf("history has no %s event", k)
		}
	}
	for _, k := range []string{rollout.EventRolloutPaused, rollout.EventRolloutAborted, rollout.EventServiceUnfrozen, rollout.EventRollbackCreated} {
		if e := kinds[k]; e != nil && !strings.HasPrefix(e.GetActor(), "peer:") {
			t.Errorf("%s event does not say who: %v", k, e)
		}
	}
	if _, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", RolloutId: "../x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad rollout id: %v", err)
	}
	// A limit: the newest events, the rest left out and said so; above
	// the most, refused naming the field.
	if evs.GetTruncated() || len(evs.GetEvents()) < 3 {
		t.Fatalf("history: %d events, truncated %v: want all of them", len(evs.GetEvents()), evs.GetTruncated())
	}
	// Events still come (an alert delivered, the fleet restored, after
	// the ends above): compared with the whole history read just before
	// and after, unchanged in between.
	testkit.EventuallyErr(t, 30*time.Second, "the last two events with a limit of 2", func() error {
		before, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web"})
		if err != nil {
			return err
		}
		last2, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", Limit: 2})
		if err != nil {
			return err
		}
		after, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web"})
		if err != nil {
			return err
		}
		all := after.GetEvents()
		if len(before.GetEvents()) != len(all) {
			return fmt.Errorf("the history grew from %d to %d events meanwhile", len(before.GetEvents()), len(all))
		}
		if n := len(all); !last2.GetTruncated() || len(last2.GetEvents()) != 2 || !proto.Equal(last2.GetEvents()[0], all[n-2]) || !proto.Equal(last2.GetEvents()[1], all[n-1]) {
			t.Fatalf("limit 2: %v (truncated %v), want the last two of the history", last2.GetEvents(), last2.GetTruncated())
		}
		return nil
	})
	if _, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", Limit: store.MaxListEvents + 1}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "limit: 10001") {
		t.Errorf("limit over the most: %v, want InvalidArgument naming it", err)
	}
}

func waitHosts(t *testing.T, ctx context.Context, op v1.OperatorServiceClient, n int) {
	t.Helper()
	testkit.EventuallyErr(t, 30*time.Second, fmt.Sprintf("%d hosts connected", n), func() error {
		hs, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return err
		}
		up := 0
		for _, h := range hs.GetHosts() {
			if h.GetConnected() {
				up++
			}
		}
		if up != n {
			return fmt.Errorf("%d of %d hosts connected", up, n)
		}
		return nil
	})
}

// A release created during a running rollout supersedes it by default (the
// newest starts from the canary); with on_new_release: queue it waits.
func TestNewReleaseSupersedesOrQueues(t *testing.T) {
	queue := spec.OnNewReleaseQueue
	for _, policy := range []string{"", queue} {
		t.Run("policy="+policy, func(t *testing.T) {
			cc := startCoordinator(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			op := v1.NewOperatorServiceClient(cc)
			spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
				Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 1, Bake: durationpb.New(0), OnNewRelease: policy}}
			if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				startScripted(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{"v2": "hold"})
			}
			waitHosts(t, ctx, op, 3)
			release := func(v string) *v1.CreateReleaseResponse {
				t.Helper()
				art := upload(t, ctx, cc, []byte("artifact "+v))
				resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}})
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			release("v1")
			waitRollout(t, ctx, op, "v1 done", func(r *v1.Rollout) bool {
				return r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
			})
			release("v2")
			r2 := waitRollout(t, ctx, op, "v2 canary moving", func(r *v1.Rollout) bool { u, _ := countUpdating(r); return r.GetToVersion() == "v2" && u == 1 })
			resp := release("v3")
			if policy == queue {
				if resp.GetRollout() != nil || !strings.Contains(resp.GetNote(), "queued") {
					t.Fatalf("queue policy: rollout %v, note %q", resp.GetRollout(), resp.GetNote())
				}
				old, _ := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: r2.GetId()})
				if old.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
					t.Fatalf("queued release touched the running rollout: %v", old.GetRollout().GetState())
				}
				return
			}
			if resp.GetRollout().GetToVersion() != "v3" || resp.GetRollout().GetFromVersion() != "v1" {
				t.Fatalf("supersede: new rollout %v", resp.GetRollout())
			}
			old, _ := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: r2.GetId()})
			if old.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_SUPERSEDED || !strings.Contains(old.GetRollout().GetReason(), "v3") {
				t.Fatalf("v2 rollout after v3: %v %q", old.GetRollout().GetState(), old.GetRollout().GetReason())
			}
			waitRollout(t, ctx, op, "v3 done", func(r *v1.Rollout) bool {
				return r.GetToVersion() == "v3" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
			})
		})
	}
}
