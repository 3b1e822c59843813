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
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
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
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
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
		art := upload(t, ctx, cc, []byte("artifact "+v))
		resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}})
		if err != nil {
			t.Fatal(err)
		}
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
