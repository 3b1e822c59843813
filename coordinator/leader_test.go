package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// A leader-only call on a coordinator that does not lead fails fast with the
// one ErrNotLeader, which callers see as Unavailable.
func TestCallWhenNotLeading(t *testing.T) {
	l := newLeader(&Coordinator{cfg: Config{Name: "c2"}})
	_, _, err := l.call(context.Background(), leaderReq{service: "web", op: opApprove})
	if !errors.Is(err, store.ErrNotLeader) || !strings.Contains(err.Error(), "c2") {
		t.Fatalf("call on a follower: %v, want store.ErrNotLeader naming c2", err)
	}
	if got := status.Code(grpcErr(err)); got != codes.Unavailable {
		t.Errorf("grpcErr gives %v, want Unavailable", got)
	}
}

// A new rollout (and a rollback) costs one fenced write: the rollout as
// first stored already has its canary assigned, and the service status
// naming it and its events are in the same revision.
func TestNewRolloutIsOneWrite(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	cc := startCoordinatorOn(t, emb, nil)
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	svcSpec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: svcSpec}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		startScripted(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{})
	}
	waitHosts(t, ctx, op, 3)

	// firstWrite checks the rollout's first stored value and what else that
	// transaction wrote.
	firstWrite := func(id string, wantUpdating int, wantKind string) {
		t.Helper()
		st := store.New(cli)
		_, created, err := st.GetRolloutAt(ctx, "web", id, 0)
		if err != nil {
			t.Fatal(err)
		}
		r, _, err := st.GetRolloutAt(ctx, "web", id, created)
		if err != nil {
			t.Fatal(err)
		}
		if u, _ := countUpdating(r); u != wantUpdating || r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
			t.Errorf("rollout %s as first written: %s with %d host(s) updating, want PROGRESSING with %d (plan and first step in one write)", id, r.GetState(), u, wantUpdating)
		}
		svc, err := cli.Get(ctx, store.ServiceKey("web"), clientv3.WithRev(created))
		if err != nil || len(svc.Kvs) != 1 || svc.Kvs[0].ModRevision != created {
			t.Fatalf("service not written with rollout %s at %d: %v %v", id, created, svc, err)
		}
		evs, err := cli.Get(ctx, store.EventsPrefixFor("web", id), clientv3.WithPrefix(), clientv3.WithRev(created))
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, kv := range evs.Kvs {
			es, err := store.DecodeEvents(kv.Value)
			if err != nil || kv.ModRevision != created {
				t.Errorf("event %s at revision %d, want %d (%v)", kv.Key, kv.ModRevision, created, err)
			}
			for _, e := range es {
				kinds[e.GetKind()]++
			}
		}
		if kinds[wantKind] != 1 || kinds[rollout.EventHostAssigned] != wantUpdating {
			t.Errorf("events written with rollout %s: %v, want one %s and %d %s", id, kinds, wantKind, wantUpdating, rollout.EventHostAssigned)
		}
	}

	release := func(v string) {
		t.Helper()
		resp := createRelease(t, ctx, cc, "web", v)
		firstWrite(resp.GetRollout().GetId(), 1, rollout.EventRolloutCreated)
		waitRollout(t, ctx, op, v+" done", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		})
	}
	release("v1")
	release("v2")
	rb, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if rb.GetRollout().GetToVersion() != "v1" {
		t.Fatalf("rollback to %s, want v1", rb.GetRollout().GetToVersion())
	}
	// One wave of 3, max(max_parallel 2, a quarter of 3) at once.
	firstWrite(rb.GetRollout().GetId(), 2, rollout.EventRollbackCreated)
}

// A host done while its wave goes on is written with the leader's next
// decision (progressWriteEvery, here an hour); a rollout aborted before
// then records it DONE, with its host_done event, not UPDATING.
func TestAbortKeepsDeferredProgress(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	cc := startCoordinatorOn(t, emb, func(c *Config) { c.progressWriteEvery = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	sp := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 10, Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
		t.Fatal(err)
	}
	startScripted(t, ctx, cc, "h0", nil)
	startScripted(t, ctx, cc, "h1", nil)
	startScripted(t, ctx, cc, "h2", map[string]string{"v2": "hold"})
	waitHosts(t, ctx, op, 3)
	state := func(r *v1.Rollout, host string) v1.HostRolloutState {
		for _, w := range r.GetWaves() {
			for _, h := range w.GetHosts() {
				if h.GetHostId() == host {
					return h.GetState()
				}
			}
		}
		return v1.HostRolloutState_HOST_ROLLOUT_STATE_UNSPECIFIED
	}
	createRelease(t, ctx, cc, "web", "v1")
	waitRollout(t, ctx, op, "v1 succeeded", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})
	createRelease(t, ctx, cc, "web", "v2")
	// The canary (h0) is done and the wave of h1 and h2 started: h1
	// reports healthy on v2, h2 holds.
	testkit.EventuallyErr(t, 30*time.Second, "h1 reports v2 healthy", func() error {
		hs, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return err
		}
		for _, h := range hs.GetHosts() {
			for _, s := range h.GetServices() {
				if h.GetId() == "h1" && s.GetCurrentVersion() == "v2" && s.GetPhase() == v1.Phase_PHASE_HEALTHY {
					return nil
				}
			}
		}
		return fmt.Errorf("hosts %v", hs.GetHosts())
	})
	r := waitRollout(t, ctx, op, "v2's second wave", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && len(r.GetWaves()) == 2 && r.GetWaves()[1].GetState() == v1.WaveState_WAVE_STATE_PROGRESSING
	})
	if st := state(r, "h1"); st != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
		t.Fatalf("h1 %v before the abort: the leader wrote its progress at once (want it deferred)", st)
	}
	if _, err := op.AbortRollout(ctx, &v1.AbortRolloutRequest{Service: "web", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	r = waitRollout(t, ctx, op, "v2 failed", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED
	})
	if st1, st2 := state(r, "h1"), state(r, "h2"); st1 != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE || st2 != v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
		t.Fatalf("aborted: h1 %v (want DONE: its report said so), h2 %v (want UPDATING)", st1, st2)
	}
	evs, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", RolloutId: r.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	done := 0
	for _, ev := range evs.GetEvents() {
		if ev.GetKind() == rollout.EventHostDone && ev.GetHost() == "h1" {
			done++
		}
	}
	if done != 1 {
		t.Errorf("%d host_done events of h1 in rollout %s, want 1", done, r.GetId())
	}
}
