package coordinator

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
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

// member is one coordinator of a test cluster.
type member struct {
	name   string
	cc     *grpc.ClientConn
	op     v1.OperatorServiceClient
	cancel context.CancelFunc
	done   chan error
	err    error
	once   sync.Once
}

// stop stops the coordinator (once) and returns how Run ended.
func (m *member) stop() error {
	m.once.Do(func() {
		m.cancel()
		m.err = <-m.done
	})
	return m.err
}

// startMember runs a named coordinator on a shared embedded etcd, with
// mods applied to its config.
func startMember(t testing.TB, name string, emb *store.Embedded, mods ...func(*Config)) *member {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{name: name, cancel: cancel, done: make(chan error, 1)}
	addrc := make(chan string, 1)
	cfg := Config{Insecure: true, Listen: "127.0.0.1:0", Name: name, DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second,
		Ready: func(a string) { addrc <- a }}
	for _, mod := range mods {
		mod(&cfg)
	}
	go func() { m.done <- Run(ctx, cfg, zerolog.Nop()) }()
	t.Cleanup(func() { _ = m.stop() })
	select {
	case addr := <-addrc:
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		m.cc, m.op = cc, v1.NewOperatorServiceClient(cc)
	case err := <-m.done:
		m.once.Do(func() {})
		t.Fatalf("coordinator %s exited: %v", name, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("coordinator %s not serving after 60s", name)
	}
	return m
}

// waitCluster polls cluster status until cond holds.
func waitCluster(t *testing.T, ctx context.Context, op v1.OperatorServiceClient, what string, cond func(*v1.ClusterStatusResponse) bool) *v1.ClusterStatusResponse {
	t.Helper()
	var last *v1.ClusterStatusResponse
	testkit.EventuallyErr(t, time.Minute, what, func() error {
		st, err := op.ClusterStatus(ctx, &v1.ClusterStatusRequest{})
		if err != nil {
			return err
		}
		last = st
		if !cond(st) {
			return fmt.Errorf("last status %v", st)
		}
		return nil
	})
	return last
}

// Two coordinators on one etcd: both register, one leads; the other serves
// every operator call (leader-only ones forwarded, the artifact copied from
// the coordinator it was uploaded to); when the leader stops, the other
// takes over.
func TestTwoCoordinatorsShareEtcd(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a := startMember(t, "a", emb)
	b := startMember(t, "b", emb)
	st := waitCluster(t, ctx, a.op, "two coordinators and a leader", func(s *v1.ClusterStatusResponse) bool {
		return len(s.GetCoordinators()) == 2 && s.GetLeader() != ""
	})
	if len(st.GetEtcdMembers()) != 1 || !st.GetEtcdMembers()[0].GetHealthy() || !st.GetEtcdMembers()[0].GetLeader() {
		t.Errorf("etcd members: %v", st.GetEtcdMembers())
	}
	if st.GetAnsweredBy() != "a" {
		t.Errorf("answered by %q, want a", st.GetAnsweredBy())
	}
	leaders := 0
	for _, c := range st.GetCoordinators() {
		if c.GetAddress() == "" || c.GetStartedAt() == nil {
			t.Errorf("coordinator record incomplete: %v", c)
		}
		if c.GetLeader() {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d coordinators marked leader: %v", leaders, st.GetCoordinators())
	}
	lead, follow := a, b
	if st.GetLeader() == "b" {
		lead, follow = b, a
	}

	// Everything through the follower.
	spec := &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}}
	if _, err := follow.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	data := []byte("artifact uploaded to the follower only")
	art := upload(t, ctx, follow.cc, data)
	cr, err := follow.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if err != nil {
		t.Fatalf("create release through the follower: %v", err)
	}
	if cr.GetRollout().GetToVersion() != "v1" {
		t.Errorf("forwarded create release: rollout %v, note %q", cr.GetRollout(), cr.GetNote())
	}
	// The leader copied the artifact from the follower to check it.
	ds, err := v1.NewArtifactServiceClient(lead.cc).Download(ctx, &v1.DownloadRequest{Sha256: art.GetSha256()})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		m, err := ds.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("download from the leader: %v", err)
		}
		got = append(got, m.GetChunk()...)
	}
	if string(got) != string(data) {
		t.Errorf("leader serves %q, want %q", got, data)
	}
	// A leader-only call answered by the leader's logic, not "not leader".
	_, err = follow.op.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: "web"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no rollout in progress") {
		t.Errorf("pause through the follower: %v", err)
	}
	// A missing artifact asked of either is NotFound (no fetch loop).
	_, err = follow.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v2",
		Artifact: &v1.Artifact{Sha256: strings.Repeat("b", 64), Size: 3}}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("release of an artifact nobody has: %v", err)
	}

	if err := lead.stop(); err != nil {
		t.Errorf("leader stopped with %v", err)
	}
	st = waitCluster(t, ctx, follow.op, "the follower takes over", func(s *v1.ClusterStatusResponse) bool {
		return len(s.GetCoordinators()) == 1 && s.GetLeader() == follow.name
	})
	if !st.GetCoordinators()[0].GetLeader() {
		t.Errorf("survivor not marked leader: %v", st.GetCoordinators())
	}
	if _, err := follow.op.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: "web"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("pause on the new leader: %v", err)
	}
}

// WatchEvents lists what is recorded, then follows new events in order;
// since_revision resumes without repeats; bad requests name the field.
func TestWatchEvents(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	art := upload(t, ctx, cc, []byte("v1"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}
	recv := func(s grpc.ServerStreamingClient[v1.WatchEventsResponse]) []*v1.WatchEventsResponse {
		var out []*v1.WatchEventsResponse
		for {
			m, err := s.Recv()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatalf("recv: %v", err)
			}
			out = append(out, m)
		}
	}
	s, err := op.WatchEvents(ctx, &v1.WatchEventsRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	first := recv(s)
	if len(first) == 0 || first[0].GetEvent().GetKind() != rollout.EventRolloutCreated || first[0].GetRevision() <= 0 {
		t.Fatalf("recorded events: %v", first)
	}
	last := first[len(first)-1].GetRevision()
	for i := 1; i < len(first); i++ {
		if first[i].GetRevision() < first[i-1].GetRevision() {
			t.Errorf("events out of revision order: %v", first)
		}
	}

	// Follow from the last one seen: only new events arrive.
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	fs, err := op.WatchEvents(fctx, &v1.WatchEventsRequest{Follow: true, SinceRevision: last})
	if err != nil {
		t.Fatal(err)
	}
	art2 := upload(t, ctx, cc, []byte("v2"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v2", Artifact: art2}}); err != nil {
		t.Fatal(err)
	}
	m, err := fs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.GetRevision() <= last || m.GetEvent().GetKind() != rollout.EventRolloutCreated || !strings.Contains(m.GetEvent().GetMessage(), "v2") {
		t.Errorf("followed event %v (rev %d), want the v2 rollout_created after %d", m.GetEvent(), m.GetRevision(), last)
	}
	fcancel()

	for _, bad := range []struct {
		req  *v1.WatchEventsRequest
		want string
	}{
		{&v1.WatchEventsRequest{Service: "Bad Name"}, "service"},
		{&v1.WatchEventsRequest{RolloutId: "000001"}, "rollout_id: needs service"},
		{&v1.WatchEventsRequest{Service: "web", RolloutId: "x"}, "rollout_id"},
		{&v1.WatchEventsRequest{SinceRevision: -1}, "since_revision"},
	} {
		s, err := op.WatchEvents(ctx, bad.req)
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: %v, want InvalidArgument naming %s", bad.req, err, bad.want)
		}
	}
}

// The DORA figures come from the history in etcd: rollouts that span
// coordinator restarts count once, and any coordinator, started later,
// gives the same figures.
func TestStatsSurviveCoordinatorRestarts(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a := startMember(t, "a", emb)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Bake: durationpb.New(0), NoCanary: true}}
	if _, err := a.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	startScripted(t, actx, a.cc, "h1", map[string]string{"v2": "hold"})
	now := time.Now()
	release := func(m *member, v string, ago time.Duration) {
		t.Helper()
		art := upload(t, ctx, m.cc, []byte("artifact "+v))
		rel := &v1.Release{Service: "web", Version: v, Artifact: art, Commit: "c-" + v, CommitTime: timestamppb.New(now.Add(-ago))}
		if _, err := m.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: rel}); err != nil {
			t.Fatal(err)
		}
	}
	release(a, "v1", 2*time.Hour)
	waitRollout(t, ctx, a.op, "v1 succeeded", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})
	release(a, "v2", time.Hour)
	waitRollout(t, ctx, a.op, "v2 moving", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	})
	// The coordinator restarts in the middle of the v2 rollout.
	acancel()
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	b := startMember(t, "b", emb)
	startScripted(t, ctx, b.cc, "h1", map[string]string{"v3": "failed"})
	waitRollout(t, ctx, b.op, "v2 succeeded under b", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})
	release(b, "v3", 30*time.Minute)
	waitRollout(t, ctx, b.op, "v3 failed", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v3" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED && r.GetRestoredAt() != nil
	})
	sb, err := b.op.GetStats(ctx, &v1.GetStatsRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	s := sb.GetServices()[0]
	if s.GetRollouts() != 3 || s.GetSucceeded() != 2 || s.GetFailed() != 1 || s.GetLeadTime().GetCount() != 2 || s.GetTimeToRestore().GetCount() != 1 {
		t.Fatalf("stats after a restart mid-rollout: %v", s)
	}
	if lt := s.GetLeadTime().GetP90().AsDuration(); lt < 2*time.Hour || lt > 2*time.Hour+time.Minute {
		t.Errorf("lead time p90 %v, want a little over 2h", lt)
	}
	c := startMember(t, "c", emb)
	if err := b.stop(); err != nil {
		t.Fatal(err)
	}
	sc, err := c.op.GetStats(ctx, &v1.GetStatsRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	sb.From, sb.To, sc.From, sc.To = nil, nil, nil, nil
	// deploys per day depends on now only through the window; same here.
	sb.Services[0].DeploysPerDay, sc.Services[0].DeploysPerDay = 0, 0
	sb.Fleet.DeploysPerDay, sc.Fleet.DeploysPerDay = 0, 0
	if !proto.Equal(sb, sc) {
		t.Errorf("another coordinator computes other figures:\n%v\n%v", sb, sc)
	}
}

// A decommissioned host is forgotten on request, never while connected, and
// later rollouts no longer plan it.
func TestRemoveHost(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Bake: durationpb.New(0), NoCanary: true}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	startScripted(t, actx, cc, "h1", map[string]string{})
	hostState := func() (known, connected bool) {
		h, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range h.GetHosts() {
			if x.GetId() == "h1" {
				return true, x.GetConnected()
			}
		}
		return false, false
	}
	testkit.Eventually(t, time.Minute, "h1 connected", func() bool { k, c := hostState(); return k && c })
	_, err := op.RemoveHost(ctx, &v1.RemoveHostRequest{HostId: "h1"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "connected") {
		t.Errorf("removing a connected host: %v", err)
	}
	acancel()
	testkit.Eventually(t, time.Minute, "h1 disconnected", func() bool { _, c := hostState(); return !c })
	if _, err := op.RemoveHost(ctx, &v1.RemoveHostRequest{HostId: "h1"}); err != nil {
		t.Fatal(err)
	}
	if k, _ := hostState(); k {
		t.Error("h1 still listed after removal")
	}
	if _, err := op.RemoveHost(ctx, &v1.RemoveHostRequest{HostId: "h1"}); status.Code(err) != codes.NotFound {
		t.Errorf("removing it again: %v", err)
	}
	if _, err := op.RemoveHost(ctx, &v1.RemoveHostRequest{HostId: "../x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad host id: %v", err)
	}
	art := upload(t, ctx, cc, []byte("v1"))
	cr, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range cr.GetRollout().GetWaves() {
		if len(w.GetHosts()) != 0 {
			t.Errorf("a rollout after the removal plans %v", w.GetHosts())
		}
	}
}

// Events of old rollouts are pruned (the rollouts themselves stay, for the
// DORA figures).
func TestOldRolloutEventsPruned(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS,
		LeaseTTL: 2 * time.Second, KeepRolloutEvents: 2})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 4; i++ {
		art := upload(t, ctx, cc, []byte(fmt.Sprint("artifact ", i)))
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: fmt.Sprint("v", i), Artifact: art}}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := op.ListEvents(ctx, &v1.ListEventsRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, e := range evs.GetEvents() {
		ids[e.GetRolloutId()] = true
	}
	if len(ids) != 2 || !ids["000003"] || !ids["000004"] {
		t.Errorf("events kept for rollouts %v, want 000003 and 000004", ids)
	}
	st, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: "000001"})
	if err != nil || st.GetRollout().GetToVersion() != "v1" {
		t.Errorf("the oldest rollout record: %v %v", st, err)
	}
}
