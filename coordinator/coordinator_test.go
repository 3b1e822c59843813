package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// runTestCoordinator runs a coordinator in-process until the test ends and
// returns its gRPC address once it serves.
func runTestCoordinator(t testing.TB, cfg Config) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg.Ready = func(a string) { addrc <- a }
	go func() { done <- Run(ctx, cfg, zerolog.Nop()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("coordinator: %v", err)
		}
	})
	select {
	case addr := <-addrc:
		return addr
	case err := <-done:
		done <- err // for the clean-up
		t.Fatalf("coordinator exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("coordinator not serving after 60s")
	}
	return ""
}

// startCoordinator runs a coordinator in-process against a separately
// started etcd (the --etcd-endpoints path) and returns a client connection.
func startCoordinator(t testing.TB) *grpc.ClientConn {
	t.Helper()
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	return startCoordinatorOn(t, emb, nil)
}

// startCoordinatorOn starts a coordinator on emb, its config changed by
// mod (nil: none), and dials it.
func startCoordinatorOn(t testing.TB, emb *store.Embedded, mod func(*Config)) *grpc.ClientConn {
	t.Helper()
	cfg := Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	addr := runTestCoordinator(t, cfg)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// createRelease uploads an artifact for version and creates the release
// of service.
func createRelease(t testing.TB, ctx context.Context, cc *grpc.ClientConn, service, version string) *v1.CreateReleaseResponse {
	t.Helper()
	art := upload(t, ctx, cc, []byte("artifact "+version))
	resp, err := v1.NewOperatorServiceClient(cc).CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: service, Version: version, Artifact: art}})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestConfigValidateNamesFields(t *testing.T) {
	err := (&Config{Listen: "nope", LeaseTTL: time.Millisecond, EtcdEndpoints: []string{"unix://x"}}).Validate()
	for _, want := range []string{"listen:", `"nope"`, "data-dir:", "lease-ttl:", "etcd-endpoints:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v does not name %s", err, want)
		}
	}
	if err := (&Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d"}).Validate(); err != nil {
		t.Errorf("valid config rejected: %v", err)
	}
	err = (&Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d", Limits: Limits{MaxConnections: 10, MaxConnectionsWithoutCert: 11,
		MaxStreamsPerCaller: -1, StreamSendTimeout: -time.Second}, AuditMaxEntries: 5, AuditFailureInterval: time.Millisecond, EtcdQuotaBytes: -1,
		ArtifactSources: 17, ArtifactMinFreeBytes: -1}).Validate()
	for _, want := range []string{"artifact-sources: 17 is over 16", "artifact-min-free-bytes: -1 is negative", "audit-max-entries: 5: want at least 100", "audit-failure-interval: 1ms: want at least 100ms", "etcd-quota-bytes: -1 is negative",
		"max-connections-without-cert: 11 is over max-connections 10", "max-streams-per-caller: -1 is negative", "stream-send-timeout: -1s is negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v does not say %s", err, want)
		}
	}
}

func TestHealthAndReflection(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hr, err)
	}
	rs, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	sort.Strings(names)
	got := strings.Join(names, " ")
	for _, want := range []string{"fleetwave.v1.AgentService", "fleetwave.v1.ArtifactService", "fleetwave.v1.OperatorService", "grpc.health.v1.Health"} {
		if !strings.Contains(got, want) {
			t.Errorf("reflection lists %q, missing %s", got, want)
		}
	}
}

func upload(t testing.TB, ctx context.Context, cc *grpc.ClientConn, data []byte) *v1.Artifact {
	t.Helper()
	us, err := v1.NewArtifactServiceClient(cc).Upload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := us.Send(&v1.UploadRequest{Chunk: data}); err != nil {
		t.Fatal(err)
	}
	ur, err := us.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if ur.GetSha256() != hex.EncodeToString(sum[:]) || ur.GetSize() != int64(len(data)) {
		t.Fatalf("upload returned %v", ur)
	}
	return &v1.Artifact{Sha256: ur.GetSha256(), Size: ur.GetSize()}
}

func TestOperatorRejectsBadInput(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	_, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "Bad Name"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "name") {
		t.Errorf("bad spec: %v", err)
	}
	// A check every 1ns would have every agent fork an exec check in a loop.
	_, err = op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}},
		Checks: []*v1.Check{{Kind: &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"./check"}}}, Interval: durationpb.New(time.Nanosecond)}}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "checks[0].interval: 1ns is less than 100ms") {
		t.Errorf("check interval of 1ns: %v", err)
	}
	list, err := op.ListServices(ctx, &v1.ListServicesRequest{})
	if err != nil || len(list.GetServices()) != 0 {
		t.Errorf("a rejected spec was stored: %v %v", list, err)
	}
	art := &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 10}
	_, err = op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("release of an unknown service: %v", err)
	}
	spec := &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	_, err = op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "release.artifact.sha256") {
		t.Errorf("release of an artifact not uploaded: %v", err)
	}
	real := upload(t, ctx, cc, []byte("0123456789"))
	real.Size = 11
	_, err = op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: real}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "release.artifact.size") {
		t.Errorf("release with a wrong size: %v", err)
	}
	rels, err := op.ListReleases(ctx, &v1.ListReleasesRequest{Service: "web"})
	if err != nil || len(rels.GetReleases()) != 0 {
		t.Errorf("a rejected release was stored: %v %v", rels, err)
	}
}

// A fake agent on a real stream: it gets the stable release on connect, the
// new release when the rollout reaches it, and its report ends the rollout.
func TestAgentStreamDrivesRollout(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	art := upload(t, ctx, cc, []byte("release one"))
	// No host yet: the rollout of v1 succeeds at once and v1 becomes stable.
	cr, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if err != nil {
		t.Fatal(err)
	}
	if cr.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout over no hosts: %v", cr.GetRollout())
	}

	// An invalid hello is refused and names the field.
	bad, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = bad.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "../etc"}}})
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "hello.host_id") {
		t.Errorf("bad hello: %v", err)
	}

	stream, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1", Labels: map[string]string{"role": "web"},
		Cgroups: "v1 /fleetwave"}}}); err != nil {
		t.Fatal(err)
	}
	expect := func(version string, gen int64) {
		t.Helper()
		for {
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("waiting for %s: %v", version, err)
			}
			if len(m.GetAssignments()) == 1 && m.GetAssignments()[0].GetRelease().GetVersion() == version {
				if g := m.GetAssignments()[0].GetGeneration(); g != gen {
					t.Fatalf("%s assigned with generation %d, want %d", version, g, gen)
				}
				return
			}
		}
	}
	expect("v1", 1)
	if hs, err := op.ListHosts(ctx, &v1.ListHostsRequest{}); err != nil || len(hs.GetHosts()) != 1 || hs.GetHosts()[0].GetCgroups() != "v1 /fleetwave" {
		t.Fatalf("hosts %v, %v; want h1 with its hello's cgroups", hs, err)
	}
	report := func(phase v1.Phase, cur string, gen int64) {
		t.Helper()
		r := &v1.ServiceReport{Service: "web", Generation: gen, Phase: phase, CurrentVersion: cur, TargetVersion: cur, LastGoodVersion: "v1"}
		if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
			t.Fatal(err)
		}
	}
	report(v1.Phase_PHASE_HEALTHY, "v1", 1)

	art2 := upload(t, ctx, cc, []byte("release two"))
	cr, err = op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v2", Artifact: art2}})
	if err != nil {
		t.Fatal(err)
	}
	if cr.GetRollout().GetToVersion() != "v2" || len(cr.GetRollout().GetWaves()) != 1 {
		t.Fatalf("rollout of v2: %v", cr.GetRollout())
	}
	expect("v2", 2)
	report(v1.Phase_PHASE_HEALTHY, "v2", 2)
	w, err := op.WatchRollout(ctx, &v1.WatchRolloutRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	var last *v1.Rollout
	for {
		m, err := w.Recv()
		if err != nil {
			break
		}
		last = m.GetRollout()
	}
	if last.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %v: %s", last.GetState(), last.GetReason())
	}
	hosts, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil || len(hosts.GetHosts()) != 1 || !hosts.GetHosts()[0].GetConnected() {
		t.Fatalf("hosts: %v %v", hosts, err)
	}
	svc, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if err != nil || svc.GetService().GetStatus().GetStableVersion() != "v2" {
		t.Fatalf("stable after rollout: %v %v", svc, err)
	}
}

// Manual mode: a rollout waits for approve; a newer release replaces a
// waiting one, so approve ships the newest; unfreeze lets the next release
// roll out after a failure, and the failed release is not retried.
func TestManualApproveSupersedeAndUnfreeze(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "api", Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Mode: spec.ModeManual, NoCanary: true}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	stream, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the empty initial set
		t.Fatal(err)
	}
	release := func(v string) *v1.CreateReleaseResponse {
		t.Helper()
		art := upload(t, ctx, cc, []byte("artifact "+v))
		resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "api", Version: v, Artifact: art}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	r1 := release("v1").GetRollout()
	if r1.GetState() != v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		t.Fatalf("manual rollout of v1: %v", r1.GetState())
	}
	r2 := release("v2").GetRollout()
	if r2.GetToVersion() != "v2" || r2.GetState() != v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		t.Fatalf("v2 did not replace the waiting v1 rollout: %v", r2)
	}
	old, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "api", Id: r1.GetId()})
	if err != nil || old.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_SUPERSEDED {
		t.Fatalf("v1 rollout after v2: %v %v", old, err)
	}
	ap, err := op.ApproveRollout(ctx, &v1.ApproveRolloutRequest{Service: "api"})
	if err != nil || ap.GetRollout().GetToVersion() != "v2" || ap.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Fatalf("approve: %v %v", ap, err)
	}
	if _, err := op.ApproveRollout(ctx, &v1.ApproveRolloutRequest{Service: "api"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second approve: %v", err)
	}
	recvVersion := func() (string, int64) {
		t.Helper()
		for {
			m, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if len(m.GetAssignments()) == 1 {
				a := m.GetAssignments()[0]
				return a.GetRelease().GetVersion(), a.GetGeneration()
			}
		}
	}
	v, gen := recvVersion()
	if v != "v2" {
		t.Fatalf("assigned %s after approve, want v2", v)
	}
	// The host fails v2 (first release: nothing to revert to): the rollout
	// fails and the service freezes.
	rep := &v1.ServiceReport{Service: "api", Generation: gen, Phase: v1.Phase_PHASE_FAILED, TargetVersion: "v2", Reason: "boom"}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: rep}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the service frozen after the failure", func() bool {
		s, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "api"})
		if err != nil {
			t.Fatal(err)
		}
		return s.GetService().GetStatus().GetFrozen()
	})
	frozen := release("v3")
	if frozen.GetRollout() != nil || !strings.Contains(frozen.GetNote(), "frozen") || !strings.Contains(frozen.GetNote(), "unfreeze") {
		t.Fatalf("release while frozen: rollout %v, note %q", frozen.GetRollout(), frozen.GetNote())
	}
	un, err := op.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: "api"})
	if err != nil || un.GetService().GetStatus().GetFrozen() {
		t.Fatalf("unfreeze: %v %v", un, err)
	}
	// v3 (created while frozen) is the newest and not the failed one: it
	// waits for approval now.
	r, err := op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "api"})
	if err != nil || r.GetRollout().GetToVersion() != "v3" || r.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		t.Fatalf("after unfreeze: %v %v", r, err)
	}
	if _, err := op.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unfreeze of an unknown service: %v", err)
	}
}

// embeddedEtcd starts the coordinator's embedded etcd for a test and a
// client of it; both end with the test.
func embeddedEtcd(t *testing.T) (*store.Embedded, *clientv3.Client) {
	t.Helper()
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return emb, cli
}
