package coordinator

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The event batches' gate: while a coordinator that does not read event
// batches is registered (one from before them, in a rolling upgrade) every
// event is written under its own key; once it left, a write's events go in
// batches. The operator API lists and streams both rollouts' events as
// stored, each with the revision of its key.
func TestEventBatchesWaitForEveryCoordinator(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st := store.New(cli)
	// An old coordinator's registration: it reads split rollouts, not
	// event batches.
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutCoordinator(ctx, &v1.CoordinatorInfo{Name: "old", Address: "127.0.0.1:1", Version: "before-batches", ReadsSplitRollouts: true}, lease.ID); err != nil {
		t.Fatal(err)
	}

	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
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

	deploy := func(v string) string {
		t.Helper()
		art := upload(t, ctx, cc, []byte("artifact "+v))
		resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}})
		if err != nil {
			t.Fatal(err)
		}
		waitRollout(t, ctx, op, v+" done", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		})
		return resp.GetRollout().GetId()
	}
	// stored returns a rollout's events as stored (keys in order, each
	// expanded) with their keys' revisions, and how many keys hold them.
	stored := func(id string) ([]*v1.Event, []int64, int) {
		t.Helper()
		resp, err := cli.Get(ctx, store.EventsPrefixFor("web", id), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var evs []*v1.Event
		var revs []int64
		for _, kv := range resp.Kvs {
			es, err := store.DecodeEvents(kv.Value)
			if err != nil {
				t.Fatalf("%s: %v", kv.Key, err)
			}
			for _, e := range es {
				evs, revs = append(evs, e), append(revs, kv.ModRevision)
			}
		}
		return evs, revs, len(resp.Kvs)
	}

	id1 := deploy("v1")
	if evs, _, keys := stored(id1); keys != len(evs) || keys < 4 {
		t.Fatalf("rollout %s, written while an old coordinator is registered: %d events under %d keys, want one key each", id1, len(evs), keys)
	}
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "the old coordinator gone", func() error {
		cs, err := op.ClusterStatus(ctx, &v1.ClusterStatusRequest{})
		if err != nil {
			return err
		}
		if n := len(cs.GetCoordinators()); n != 1 {
			return fmt.Errorf("%d coordinators", n)
		}
		return nil
	})
	id2 := deploy("v2")
	if evs, _, keys := stored(id2); keys >= len(evs) {
		t.Fatalf("rollout %s, written with every coordinator reading batches: %d events under %d keys, want fewer keys", id2, len(evs), keys)
	}

	for _, id := range []string{id1, id2} {
		evs, revs, _ := stored(id)
		list, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web", RolloutId: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetEvents()) != len(evs) {
			t.Fatalf("rollout %s: ListEvents gave %d events, %d stored", id, len(list.GetEvents()), len(evs))
		}
		for i, e := range list.GetEvents() {
			if !proto.Equal(e, evs[i]) {
				t.Fatalf("rollout %s ListEvents %d: %v, stored %v", id, i, e, evs[i])
			}
		}
		stream, err := op.WatchEvents(ctx, &v1.WatchEventsRequest{Service: "web", RolloutId: id})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			// Stored order is key order; the stream's is revision then key.
			found := false
			for i, e := range evs {
				if proto.Equal(e, resp.GetEvent()) {
					found = true
					if revs[i] != resp.GetRevision() {
						t.Errorf("rollout %s WatchEvents: %s %s at revision %d, stored at %d", id, e.GetKind(), e.GetHost(), resp.GetRevision(), revs[i])
					}
				}
			}
			if !found {
				t.Errorf("rollout %s WatchEvents: %v not stored", id, resp.GetEvent())
			}
			n++
		}
		if n != len(evs) {
			t.Errorf("rollout %s: WatchEvents gave %d events, %d stored", id, n, len(evs))
		}
	}
}
