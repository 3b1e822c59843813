package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The split layout's gate: while a coordinator that does not read split
// rollouts is registered (one from before them, in a rolling upgrade) the
// leader creates rollouts in one key; the rollout keeps that layout to its
// end even after the old coordinator left; the next rollout is split. Both
// read the same through the operator API.
func TestSplitLayoutWaitsForEveryCoordinator(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st := store.New(cli)
	// An old coordinator's registration: no reads_split_rollouts.
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutCoordinator(ctx, &v1.CoordinatorInfo{Name: "old", Address: "127.0.0.1:1", Version: "before-split"}, lease.ID); err != nil {
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
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0), ApproveEachWave: true}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: svcSpec}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		startScripted(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{})
	}
	waitHosts(t, ctx, op, 3)

	// layout reports which keys hold rollout id.
	layout := func(id string) string {
		t.Helper()
		one, err := cli.Get(ctx, store.RolloutKey("web", id), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		head, err := cli.Get(ctx, store.RolloutHeadKey("web", id), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("one key %d, split %d", one.Count, head.Count)
	}
	release := func(v string) string {
		t.Helper()
		art := upload(t, ctx, cc, []byte("artifact "+v))
		resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetRollout().GetId()
	}
	approveAndFinish := func(v string) {
		t.Helper()
		waitRollout(t, ctx, op, v+" waits for approval", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && len(r.GetWaves()) == 2 && r.GetWaves()[1].GetWaitingApproval()
		})
		if _, err := op.ApproveRollout(ctx, &v1.ApproveRolloutRequest{Service: "web"}); err != nil {
			t.Fatal(err)
		}
		r := waitRollout(t, ctx, op, v+" done", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		})
		if _, done := countUpdating(r); done != 3 {
			t.Fatalf("%s ended with %d hosts done, want 3: %v", v, done, r)
		}
	}

	id1 := release("v1")
	if got := layout(id1); got != "one key 1, split 0" {
		t.Fatalf("rollout created while an old coordinator is registered: %s, want one key", got)
	}
	// The old coordinator leaves mid-rollout: the rollout in flight stays
	// in one key to its end.
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
	approveAndFinish("v1")
	if got := layout(id1); got != "one key 1, split 0" {
		t.Fatalf("rollout %s after the old coordinator left: %s, want one key", id1, got)
	}

	id2 := release("v2")
	approveAndFinish("v2")
	// A head and one part (3 hosts).
	if got := layout(id2); got != "one key 0, split 2" {
		t.Fatalf("rollout created with every coordinator reading split rollouts: %s, want split", got)
	}
	// Both read through the API as the whole rollout.
	for _, id := range []string{id1, id2} {
		g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
		if err != nil {
			t.Fatal(err)
		}
		if _, done := countUpdating(g.GetRollout()); done != 3 {
			t.Errorf("rollout %s through the API: %d hosts done, want 3", id, done)
		}
	}
}

// A coordinator that does not read split rollouts registers while a split
// rollout is in flight (it registered late: restarted or cut off when the
// rollout was created, or a downgrade): the leader rewrites the rollout in
// one key (which that coordinator reads), and the rollout goes on to its
// end in one key. Before, it stayed split and that coordinator saw no
// rollout: it would assign the hosts it serves the stable release.
func TestSplitRolloutUnsplitWhenOldCoordinatorRegisters(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st := store.New(cli)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 10 * time.Second})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	op := v1.NewOperatorServiceClient(cc)
	svcSpec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0), ApproveEachWave: true}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: svcSpec}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		startScripted(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{})
	}
	waitHosts(t, ctx, op, 3)
	layout := func(id string) string {
		t.Helper()
		one, err := cli.Get(ctx, store.RolloutKey("web", id), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		head, err := cli.Get(ctx, store.RolloutHeadKey("web", id), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("one key %d, split %d", one.Count, head.Count)
	}
	art := upload(t, ctx, cc, []byte("artifact v1"))
	resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetRollout().GetId()
	waitRollout(t, ctx, op, "v1 waits for approval", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v1" && len(r.GetWaves()) == 2 && r.GetWaves()[1].GetWaitingApproval()
	})
	if got := layout(id); got != "one key 0, split 2" {
		t.Fatalf("rollout created with every coordinator reading split rollouts: %s, want split", got)
	}
	// The old coordinator registers mid-rollout.
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutCoordinator(ctx, &v1.CoordinatorInfo{Name: "old", Address: "127.0.0.1:1", Version: "before-split"}, lease.ID); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "the rollout rewritten in one key", func() error {
		if got := layout(id); got != "one key 1, split 0" {
			return fmt.Errorf("%s", got)
		}
		return nil
	})
	if _, err := op.ApproveRollout(ctx, &v1.ApproveRolloutRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	r := waitRollout(t, ctx, op, "v1 done", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})
	if _, done := countUpdating(r); done != 3 {
		t.Fatalf("v1 ended with %d hosts done, want 3: %v", done, r)
	}
	if got := layout(id); got != "one key 1, split 0" {
		t.Fatalf("rollout %s at its end: %s, want one key", id, got)
	}
}
