package coordinator

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestConfigValidateRetention(t *testing.T) {
	base := Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d"}
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.KeepRolloutHosts = -1 }, "keep-rollout-hosts: -1 is negative"},
		{func(c *Config) { c.RolloutRetention = -time.Hour }, "rollout-retention: -1h0m0s: want at least 24h"},
		{func(c *Config) { c.RolloutRetention = time.Hour }, "rollout-retention: 1h0m0s: want at least 24h"},
	} {
		cfg := base
		c.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate: %v, want %q", err, c.want)
		}
	}
	cfg := base
	cfg.RolloutRetention = 24 * time.Hour
	if err := cfg.Validate(); err != nil {
		t.Errorf("a day's retention refused: %v", err)
	}
	cfg = base
	cfg.defaults()
	if cfg.KeepRolloutHosts != 100 || cfg.RolloutRetention != 400*24*time.Hour {
		t.Errorf("defaults: keep %d hosts' rollouts, retention %s; want 100, 9600h", cfg.KeepRolloutHosts, cfg.RolloutRetention)
	}
}

// restartable runs coordinators one after the other on one etcd.
type restartable struct {
	t   *testing.T
	emb *store.Embedded
}

// start runs a coordinator with mod applied to its config; stop ends it
// and waits for it.
func (r restartable) start(mod func(*Config)) (cc *grpc.ClientConn, stop func()) {
	t := r.t
	t.Helper()
	cfg := Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: r.emb.Endpoints, EtcdTLS: r.emb.ClientTLS, LeaseTTL: 2 * time.Second}
	mod(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg.Ready = func(a string) { addrc <- a }
	go func() { done <- Run(ctx, cfg, zerolog.Nop()) }()
	var once atomic.Bool
	stop = func() {
		if once.Swap(true) {
			return
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("coordinator: %v", err)
		}
	}
	t.Cleanup(stop)
	select {
	case addr := <-addrc:
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc, stop
	case err := <-done:
		done <- err
		t.Fatalf("coordinator exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("coordinator not serving after 60s")
	}
	return nil, nil
}

// The leader compacts a service's ended rollouts beyond the newest
// --keep-rollout-hosts (at the first pass of its term, and when a rollout
// ends) and deletes those older than --rollout-retention, with a real
// etcd and real agents' streams:
//   - the DORA figures are the same after compaction;
//   - a compacted split rollout's parts are gone, its head says how many
//     hosts it had, and a coordinator started afterwards reads it so;
//   - deletion by age (the leader's clock moved 500 days on) keeps the
//     newest rollout, the rollback target and the newest rollout of the
//     release that failed, and rollbacks are decided as before.
func TestLeaderCompactsAndDeletesOldRollouts(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	coords := restartable{t, emb}

	// A history: v1, v2, v3 FAILED, the rollback to v1, v4.
	cc, stop := coords.start(func(*Config) {})
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	agents := func(cc *grpc.ClientConn, op v1.OperatorServiceClient) {
		for i := range 3 {
			startScripted(t, ctx, cc, fmt.Sprintf("h%d", i), map[string]string{"v3": "failed"})
		}
		waitHosts(t, ctx, op, 3)
	}
	agents(cc, op)
	release := func(cc *grpc.ClientConn, op v1.OperatorServiceClient, v string, st v1.RolloutState) {
		t.Helper()
		art := upload(t, ctx, cc, []byte("artifact "+v))
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art, CommitTime: timestamppb.New(time.Now().Add(-time.Hour))}}); err != nil {
			t.Fatal(err)
		}
		waitRollout(t, ctx, op, v+" "+st.String(), func(r *v1.Rollout) bool { return r.GetToVersion() == v && r.GetState() == st })
	}
	ok, failed := v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_FAILED
	release(cc, op, "v1", ok)
	release(cc, op, "v2", ok)
	release(cc, op, "v3", failed)
	if _, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, ctx, op, "the rollback", func(r *v1.Rollout) bool { return r.GetRollback() && r.GetState() == ok })
	if _, err := op.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	release(cc, op, "v4", ok)
	statsReq := &v1.GetStatsRequest{Since: durationpb.New(30 * 24 * time.Hour), Daily: true}
	figures := func(op v1.OperatorServiceClient) *v1.GetStatsResponse {
		t.Helper()
		s, err := op.GetStats(ctx, statsReq)
		if err != nil {
			t.Fatal(err)
		}
		return &v1.GetStatsResponse{Services: s.GetServices(), Fleet: s.GetFleet()} // not the window's ends
	}
	before := figures(op)
	if f := before.GetFleet(); f.GetRollouts() != 4 || f.GetFailed() != 1 || f.GetRolledBack() != 1 || f.GetLeadTime().GetCount() != 3 {
		t.Fatalf("figures of the history: %v", f)
	}
	full := map[string]*v1.Rollout{}
	for i := 1; i <= 5; i++ {
		id := fmt.Sprintf("%06d", i)
		g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
		if err != nil {
			t.Fatal(err)
		}
		full[id] = g.GetRollout()
	}
	parts := func(id string) int64 {
		t.Helper()
		resp, err := cli.Get(ctx, store.RolloutHeadKey("web", id)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if parts("000001") != 1 {
		t.Fatalf("rollout 000001 has %d parts, want 1 (split, 3 hosts)", parts("000001"))
	}
	stop()

	// Keep the hosts of the newest two: the first pass of the new leader
	// compacts 1 to 3; its periodic passes are an hour apart, so 4 is
	// compacted when v5 ends.
	cc, stop = coords.start(func(c *Config) { c.KeepRolloutHosts = 2; c.auditPruneEvery = time.Hour })
	op = v1.NewOperatorServiceClient(cc)
	compacted := func(op v1.OperatorServiceClient, ids ...string) {
		t.Helper()
		for _, id := range ids {
			testkit.EventuallyErr(t, 30*time.Second, "rollout "+id+" compacted", func() error {
				g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
				if err != nil {
					return err
				}
				if r := g.GetRollout(); !r.GetHostsCompacted() {
					return fmt.Errorf("not compacted: %v", r)
				}
				return nil
			})
			g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
			if err != nil {
				t.Fatal(err)
			}
			if want := rollout.Compact(full[id]); !proto.Equal(g.GetRollout(), want) {
				t.Errorf("rollout %s compacted:\n%v\nwant\n%v", id, g.GetRollout(), want)
			}
			if rollout.RolloutHosts(g.GetRollout()) != 3 {
				t.Errorf("rollout %s compacted says %d hosts, want 3", id, rollout.RolloutHosts(g.GetRollout()))
			}
			if n := parts(id); n != 0 {
				t.Errorf("rollout %s compacted: %d parts left", id, n)
			}
		}
	}
	compacted(op, "000001", "000002", "000003")
	if got := figures(op); !proto.Equal(got, before) {
		t.Fatalf("figures after compaction:\n%v\nbefore:\n%v", got, before)
	}
	for _, id := range []string{"000004", "000005"} {
		g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
		if err != nil || g.GetRollout().GetHostsCompacted() || !proto.Equal(g.GetRollout(), full[id]) {
			t.Fatalf("rollout %s, among the newest two, changed (%v)", id, err)
		}
	}
	agents(cc, op)
	release(cc, op, "v5", ok)
	g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: "000004"})
	if err != nil {
		t.Fatal(err)
	}
	full["000004"] = g.GetRollout() // unchanged since, or compacted already
	compacted(op, "000004")
	stop()

	// A coordinator started afterwards reads the compacted records; its
	// leader's clock, moved 500 days on, deletes 2 and the rollback (4),
	// not the first (1: the stats' deploy frequency counts from it), v3's
	// failure (3: a rollback onto v3 is still refused), v4's (5: the
	// rollback target) nor v5's (6: the newest).
	var skew atomic.Int64
	cc, _ = coords.start(func(c *Config) {
		c.KeepRolloutHosts = 2
		c.auditPruneEvery = 100 * time.Millisecond
		c.pruneClock = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	op = v1.NewOperatorServiceClient(cc)
	compacted(op, "000001", "000002", "000003", "000004")
	skew.Store(int64(500 * 24 * time.Hour))
	for _, id := range []string{"000002", "000004"} {
		testkit.EventuallyErr(t, 30*time.Second, "rollout "+id+" deleted", func() error {
			_, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
			if status.Code(err) != codes.NotFound {
				return fmt.Errorf("GetRollout: %v", err)
			}
			return nil
		})
		for _, k := range []string{store.RolloutHeadKey("web", id), store.RolloutKey("web", id)} {
			if resp, err := cli.Get(ctx, k, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
				t.Errorf("rollout %s deleted: %d keys left under %s (%v)", id, resp.Count, k, err)
			}
		}
	}
	for _, id := range []string{"000001", "000003", "000005", "000006"} {
		if _, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id}); err != nil {
			t.Errorf("rollout %s: %v, want it kept", id, err)
		}
	}
	if _, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v3"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("rollback onto the failed v3 after deletion: %v", err)
	}
}

// While a coordinator that does not read compacted rollouts is registered
// (a rolling upgrade), the leader deletes old rollouts but compacts none;
// once it is gone, it compacts. The history is written straight to etcd:
// four ended rollouts, the first two years old (the first is kept: the
// stats' deploy frequency counts from it).
func TestCompactionWaitsForEveryCoordinator(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st := store.New(cli)
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutCoordinator(ctx, &v1.CoordinatorInfo{Name: "old", Address: "127.0.0.1:1", Version: "before-compaction", ReadsSplitRollouts: true, ReadsEventBatches: true}, lease.ID); err != nil {
		t.Fatal(err)
	}
	ap, err := st.ApplySpec(ctx, &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}}}, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, svcRev := ap.Service, ap.Rev
	ended := time.Now().Add(-2 * 365 * 24 * time.Hour)
	for i := 1; i <= 4; i++ {
		id, v := fmt.Sprintf("%06d", i), fmt.Sprintf("v%d", i)
		if i > 2 {
			ended = time.Now().Add(-time.Hour)
		}
		r := &v1.Rollout{Id: id, Service: "web", ToVersion: v, State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, CreatedAt: timestamppb.New(ended.Add(-time.Minute)),
			FinishedAt: timestamppb.New(ended), Waves: []*v1.Wave{{State: v1.WaveState_WAVE_STATE_DONE, Hosts: []*v1.HostProgress{
				{HostId: "h1", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, DoneAt: timestamppb.New(ended)}}}}}
		svc = proto.Clone(svc).(*v1.Service)
		svc.Status = &v1.ServiceStatus{StableVersion: v, RolloutSeq: int64(i), LastRolloutId: id}
		if svcRev, _, err = st.WriteRollout(ctx, nil, r, store.RolloutBase{Layout: store.Split}, svc, svcRev); err != nil {
			t.Fatal(err)
		}
	}
	cc := startCoordinatorOn(t, emb, func(c *Config) { c.KeepRolloutHosts = 1; c.auditPruneEvery = 100 * time.Millisecond })
	op := v1.NewOperatorServiceClient(cc)
	testkit.EventuallyErr(t, 30*time.Second, "rollout 000002 deleted", func() error {
		if _, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: "000002"}); status.Code(err) != codes.NotFound {
			return fmt.Errorf("GetRollout: %v", err)
		}
		return nil
	})
	// The pass that deleted it would have compacted 000001 and 000003 too.
	for _, id := range []string{"000001", "000003"} {
		g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
		if err != nil || g.GetRollout().GetHostsCompacted() || len(g.GetRollout().GetWaves()[0].GetHosts()) != 1 {
			t.Fatalf("rollout %s compacted while a coordinator that does not read it is registered: %v (%v)", id, g.GetRollout(), err)
		}
	}
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "rollout 000003 compacted once the old coordinator left", func() error {
		g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: "000003"})
		if err != nil {
			return err
		}
		if !g.GetRollout().GetHostsCompacted() {
			return fmt.Errorf("not compacted: %v", g.GetRollout())
		}
		return nil
	})
	if g, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: "000004"}); err != nil || g.GetRollout().GetHostsCompacted() {
		t.Fatalf("the newest rollout: %v (%v)", g.GetRollout(), err)
	}
}

// A removal of hosts a selector left out, in flight (paused) after an
// ended one: the rollout Decide is given once it ends is the one before
// both (rollout.Deciding, walked back by id), however old, and no pass
// deletes it meanwhile (before: the leader deleted 000002 while 000004
// ran, and once 000004 ended its reconcile failed for good on the missing
// rollout). The first rollout is kept anyway (the stats count from it):
// the one before the removals is the second. Another service's old
// rollout, pruned after web's in the same pass, says a pass went by. The
// history is written straight to etcd.
func TestPruneKeepsWhatALeftRemovalInFlightNeeds(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st := store.New(cli)
	old, recent := time.Now().Add(-2*365*24*time.Hour), time.Now().Add(-time.Hour)
	history := func(name string, ros ...*v1.Rollout) {
		t.Helper()
		ap, err := st.ApplySpec(ctx, &v1.ServiceSpec{Name: name, Selector: map[string]string{"role": name}, Run: &v1.RunSpec{Command: []string{"./app"}}}, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		svc, svcRev := ap.Service, ap.Rev
		for i, r := range ros {
			r.Id, r.Service = fmt.Sprintf("%06d", i+1), name
			r.CreatedAt = timestamppb.New(r.GetFinishedAt().AsTime().Add(-time.Minute))
			if r.FinishedAt == nil {
				r.CreatedAt = timestamppb.New(recent)
			}
			r.Waves = []*v1.Wave{{State: v1.WaveState_WAVE_STATE_DONE, Hosts: []*v1.HostProgress{
				{HostId: "h1", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, DoneAt: r.GetFinishedAt()}}}}
			svc = proto.Clone(svc).(*v1.Service)
			svc.Status = &v1.ServiceStatus{StableVersion: "v1", RolloutSeq: int64(i + 1), LastRolloutId: r.GetId()}
			if svcRev, _, err = st.WriteRollout(ctx, nil, r, store.RolloutBase{Layout: store.OneKey}, svc, svcRev); err != nil {
				t.Fatal(err)
			}
		}
	}
	ok := v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	history("web",
		&v1.Rollout{ToVersion: "v1", State: ok, FinishedAt: timestamppb.New(old.Add(-time.Hour))},
		&v1.Rollout{FromVersion: "v1", ToVersion: "v1", State: ok, FinishedAt: timestamppb.New(old)},
		&v1.Rollout{FromVersion: "v1", Remove: true, Left: true, State: ok, FinishedAt: timestamppb.New(old.Add(time.Hour))},
		&v1.Rollout{FromVersion: "v1", Remove: true, Left: true, State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING, Paused: true})
	history("zzz",
		&v1.Rollout{ToVersion: "v1", State: ok, FinishedAt: timestamppb.New(old.Add(-time.Hour))},
		&v1.Rollout{ToVersion: "v1", State: ok, FinishedAt: timestamppb.New(old)},
		&v1.Rollout{ToVersion: "v1", State: ok, FinishedAt: timestamppb.New(recent)})
	cc := startCoordinatorOn(t, emb, func(c *Config) { c.auditPruneEvery = 100 * time.Millisecond })
	op := v1.NewOperatorServiceClient(cc)
	testkit.EventuallyErr(t, 30*time.Second, "zzz's old rollout deleted", func() error {
		if _, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "zzz", Id: "000002"}); status.Code(err) != codes.NotFound {
			return fmt.Errorf("GetRollout: %v", err)
		}
		return nil
	})
	for _, id := range []string{"000002", "000003", "000004"} {
		if _, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id}); err != nil {
			t.Errorf("web's rollout %s: %v, want it kept (the removal 000004 in flight walks back to 000002 once it ends)", id, err)
		}
	}
}
