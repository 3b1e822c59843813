package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fake is the state shared by a fake OperatorService and ArtifactService.
type fake struct {
	mu         sync.Mutex
	uploads    [][]byte
	chunkSizes []int
	badDigest  bool // Upload answers a wrong sha256
	releases   []*v1.Release
	applied    []*v1.ServiceSpec
	services   []*v1.Service
	hosts      []*v1.Host
	rollout    *v1.Rollout
	watch      []*v1.Rollout // sent in order by WatchRollout
	watchErr   error         // returned after the snapshots
	watchBlock bool          // after the snapshots, wait for the client to go
	watchReqs  []*v1.WatchRolloutRequest
	cluster    *v1.ClusterStatusResponse
	events     []*v1.WatchEventsResponse // sent by WatchEvents, then it returns
	eventReqs  []*v1.WatchEventsRequest
	listReqs   []*v1.ListEventsRequest
	eventRuns  []eventRun // if set, WatchEvents' nth call plays the nth
	rollbacks  []*v1.RollbackRequest
	upgrades   []*v1.UpgradeAgentsRequest
}

type fakeOperator struct {
	v1.UnimplementedOperatorServiceServer
	f *fake
}

type fakeArtifact struct {
	v1.UnimplementedArtifactServiceServer
	f *fake
}

func (s fakeArtifact) Upload(stream grpc.ClientStreamingServer[v1.UploadRequest, v1.UploadResponse]) error {
	var buf bytes.Buffer
	var sizes []int
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		sizes = append(sizes, len(req.GetChunk()))
		buf.Write(req.GetChunk())
	}
	sum := sha256.Sum256(buf.Bytes())
	digest := hex.EncodeToString(sum[:])
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.uploads = append(s.f.uploads, buf.Bytes())
	s.f.chunkSizes = sizes
	if s.f.badDigest {
		digest = strings.Repeat("0", 64)
	}
	return stream.SendAndClose(&v1.UploadResponse{Sha256: digest, Size: int64(buf.Len())})
}

func (s fakeOperator) ApplyService(_ context.Context, req *v1.ApplyServiceRequest) (*v1.ApplyServiceResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.applied = append(s.f.applied, req.GetSpec())
	return &v1.ApplyServiceResponse{Service: &v1.Service{Spec: req.GetSpec()}, Created: true}, nil
}

func (s fakeOperator) ListServices(context.Context, *v1.ListServicesRequest) (*v1.ListServicesResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return &v1.ListServicesResponse{Services: s.f.services}, nil
}

func (s fakeOperator) GetService(_ context.Context, req *v1.GetServiceRequest) (*v1.GetServiceResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for _, svc := range s.f.services {
		if svc.GetSpec().GetName() == req.GetName() {
			return &v1.GetServiceResponse{Service: svc}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "service %q not found", req.GetName())
}

func (s fakeOperator) CreateRelease(_ context.Context, req *v1.CreateReleaseRequest) (*v1.CreateReleaseResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.releases = append(s.f.releases, req.GetRelease())
	r := proto.Clone(req.GetRelease()).(*v1.Release)
	r.CreatedAt = timestamppb.New(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC))
	return &v1.CreateReleaseResponse{Release: r, Rollout: s.f.rollout}, nil
}

func (s fakeOperator) UpgradeAgents(_ context.Context, req *v1.UpgradeAgentsRequest) (*v1.UpgradeAgentsResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.upgrades = append(s.f.upgrades, req)
	r := proto.Clone(req.GetRelease()).(*v1.Release)
	return &v1.UpgradeAgentsResponse{Release: r, Rollout: s.f.rollout}, nil
}

func (s fakeOperator) ListReleases(_ context.Context, req *v1.ListReleasesRequest) (*v1.ListReleasesResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	var out []*v1.Release
	for _, r := range s.f.releases {
		if r.GetService() == req.GetService() {
			out = append(out, r)
		}
	}
	return &v1.ListReleasesResponse{Releases: out}, nil
}

func (s fakeOperator) Rollback(_ context.Context, req *v1.RollbackRequest) (*v1.RollbackResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.rollbacks = append(s.f.rollbacks, req)
	to := req.GetToVersion()
	if to == "" {
		to = "1.0"
	}
	return &v1.RollbackResponse{Rollout: &v1.Rollout{Id: "000009", Service: req.GetService(), ToVersion: to, Rollback: true,
		State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING}}, nil
}

func (s fakeOperator) GetRollout(_ context.Context, req *v1.GetRolloutRequest) (*v1.GetRolloutResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.rollout == nil || s.f.rollout.GetService() != req.GetService() {
		return nil, status.Errorf(codes.NotFound, "no rollout of %q", req.GetService())
	}
	return &v1.GetRolloutResponse{Rollout: s.f.rollout}, nil
}

func (s fakeOperator) WatchRollout(req *v1.WatchRolloutRequest, stream grpc.ServerStreamingServer[v1.WatchRolloutResponse]) error {
	s.f.mu.Lock()
	s.f.watchReqs = append(s.f.watchReqs, req)
	snaps, werr, block := s.f.watch, s.f.watchErr, s.f.watchBlock
	s.f.mu.Unlock()
	for _, r := range snaps {
		if err := stream.Send(&v1.WatchRolloutResponse{Rollout: r}); err != nil {
			return err
		}
	}
	if block {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	return werr
}

func (s fakeOperator) ApproveRollout(_ context.Context, req *v1.ApproveRolloutRequest) (*v1.ApproveRolloutResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	r := proto.Clone(s.f.rollout).(*v1.Rollout)
	r.State = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	return &v1.ApproveRolloutResponse{Rollout: r}, nil
}

// eventRun is what one WatchEvents call does: accept the stream (send
// the header, as the coordinator does) or not, send events, then end with
// err.
type eventRun struct {
	accept bool
	events []*v1.WatchEventsResponse
	err    error
}

func (s fakeOperator) WatchEvents(req *v1.WatchEventsRequest, stream v1.OperatorService_WatchEventsServer) error {
	s.f.mu.Lock()
	s.f.eventReqs = append(s.f.eventReqs, req)
	evs := s.f.events
	if runs := s.f.eventRuns; runs != nil {
		n := len(s.f.eventReqs) - 1
		s.f.mu.Unlock()
		if n >= len(runs) {
			return status.Error(codes.FailedPrecondition, "no more runs")
		}
		if runs[n].accept {
			if err := stream.SendHeader(metadata.MD{}); err != nil {
				return err
			}
		}
		for _, e := range runs[n].events {
			if err := stream.Send(e); err != nil {
				return err
			}
		}
		return runs[n].err
	}
	s.f.mu.Unlock()
	for _, e := range evs {
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	return nil
}

// ListEvents gives the newest limit of the events WatchEvents would send.
func (s fakeOperator) ListEvents(_ context.Context, req *v1.ListEventsRequest) (*v1.ListEventsResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.listReqs = append(s.f.listReqs, req)
	var evs []*v1.Event
	for _, e := range s.f.events {
		evs = append(evs, e.GetEvent())
	}
	n := min(len(evs), int(req.GetLimit()))
	return &v1.ListEventsResponse{Events: evs[len(evs)-n:], Truncated: n < len(evs)}, nil
}

func (s fakeOperator) RemoveHost(_ context.Context, req *v1.RemoveHostRequest) (*v1.RemoveHostResponse, error) {
	if req.GetHostId() == "h1" {
		return nil, status.Error(codes.FailedPrecondition, "remove host h1: host is connected (stop its agent first)")
	}
	return &v1.RemoveHostResponse{}, nil
}

func (s fakeOperator) ClusterStatus(context.Context, *v1.ClusterStatusRequest) (*v1.ClusterStatusResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return s.f.cluster, nil
}

func (s fakeOperator) ListHosts(context.Context, *v1.ListHostsRequest) (*v1.ListHostsResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return &v1.ListHostsResponse{Hosts: s.f.hosts}, nil
}

// serve starts a real gRPC server on 127.0.0.1:0 backed by f.
func serve(t *testing.T, f *fake) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	v1.RegisterOperatorServiceServer(srv, fakeOperator{f: f})
	v1.RegisterArtifactServiceServer(srv, fakeArtifact{f: f})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// runCLI runs Main and returns its exit code, stdout and stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	// The fake coordinators here serve plain text.
	if os.Getenv("FLEETWAVE_INSECURE") == "" && os.Getenv("FLEETWAVE_TLS_CA") == "" {
		t.Setenv("FLEETWAVE_INSECURE", "1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Main(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func wantContains(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

func TestFlagValidation(t *testing.T) {
	// Nothing listens here; every case fails before dialling.
	const nowhere = "127.0.0.1:1"
	artifact := filepath.Join(t.TempDir(), "app.tar.gz")
	if err := os.WriteFile(artifact, []byte("bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	sha := strings.Repeat("a", 64)
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"release without version", []string{"release", "create", "web", "--artifact", artifact}, 1, []string{`required flag(s) "version" not set`, "fleetwave release create --help"}},
		{"release without artifact or url", []string{"release", "create", "web", "--version", "1"}, 1, []string{"artifact", "url"}},
		{"artifact and url", []string{"release", "create", "web", "--version", "1", "--artifact", artifact, "--url", "http://x/a", "--sha256", sha, "--size", "3"}, 1, []string{"artifact", "url"}},
		{"url without sha256", []string{"release", "create", "web", "--version", "1", "--url", "http://x/a", "--size", "3"}, 1, []string{"sha256"}},
		{"bad commit time", []string{"release", "create", "web", "--version", "1", "--artifact", artifact, "--commit-time", "yesterday"}, 1, []string{`invalid --commit-time "yesterday"`}},
		{"bad url", []string{"release", "create", "web", "--version", "1", "--url", "ftp://x/a", "--sha256", sha, "--size", "3"}, 1, []string{`--url: "ftp://x/a" is not an http:// or https:// URL`}},
		{"bad sha", []string{"release", "create", "web", "--version", "1", "--url", "http://x/a", "--sha256", "ABC", "--size", "3"}, 1, []string{`--sha256: invalid sha256 "ABC"`}},
		{"bad size", []string{"release", "create", "web", "--version", "1", "--url", "http://x/a", "--sha256", sha, "--size", "-1"}, 1, []string{`--size: -1 is not greater than 0`}},
		{"bad version", []string{"release", "create", "web", "--version", "1/2", "--artifact", artifact}, 1, []string{`--version: invalid version "1/2"`}},
		{"bad service", []string{"release", "create", "Web!", "--version", "1", "--artifact", artifact}, 1, []string{`SERVICE: invalid name "Web!"`}},
		{"missing artifact file", []string{"release", "create", "web", "--version", "1", "--artifact", artifact + ".nope"}, 1, []string{"app.tar.gz.nope"}},
		{"size not a number", []string{"release", "create", "web", "--version", "1", "--url", "http://x/a", "--sha256", sha, "--size", "big"}, 1, []string{`"big"`, "--size"}},
		{"bad output", []string{"-o", "yaml", "hosts"}, 1, []string{`invalid --output "yaml": want table or json`}},
		{"apply without file", []string{"service", "apply"}, 1, []string{`required flag(s) "file" not set`}},
		{"get without name", []string{"service", "get"}, 1, []string{"accepts 1 arg(s), received 0"}},
		{"unknown command", []string{"deploy"}, 1, []string{`unknown command "deploy"`}},
		{"watch without service", []string{"rollout", "watch"}, 2, []string{"accepts 1 arg(s)"}},
		{"watch bad flag", []string{"rollout", "watch", "web", "--since", "1h"}, 2, []string{"unknown flag: --since"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"--coordinator", nowhere}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if !strings.HasPrefix(stderr, "fleetwave: ") {
				t.Errorf("stderr does not start with \"fleetwave: \": %q", stderr)
			}
			wantContains(t, "stderr", stderr, tt.want...)
		})
	}
}

func TestHelp(t *testing.T) {
	code, stdout, _ := runCLI(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	wantContains(t, "help", stdout, "service", "release", "rollout", "hosts", "--coordinator", "--output", "--timeout")
}

const webSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
checks:
  - http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
rollout: {canary: 1, waves: [50, 100], mode: auto}
`

func TestServiceApply(t *testing.T) {
	f := &fake{}
	addr := serve(t, f)
	dir := t.TempDir()

	good := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(good, []byte(webSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "service", "apply", "-f", good)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantContains(t, "stdout", stdout, "service web created")
	want, err := spec.Parse([]byte(webSpec))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	if len(f.applied) != 1 || !proto.Equal(f.applied[0], want) {
		t.Errorf("applied %v, want %v", f.applied, want)
	}
	f.services = []*v1.Service{{Spec: want}}
	f.mu.Unlock()

	// The spec `service get` prints can be applied again.
	code, stdout, stderr = runCLI(t, "--coordinator", addr, "service", "get", "web")
	if code != 0 {
		t.Fatalf("get: exit %d: %s", code, stderr)
	}
	_, printed, ok := strings.Cut(stdout, "\nspec:\n")
	if !ok {
		t.Fatalf("no spec in:\n%s", stdout)
	}
	printed = strings.ReplaceAll("\n"+printed, "\n  ", "\n")
	if again, err := spec.Parse([]byte(printed)); err != nil || !proto.Equal(again, want) {
		t.Errorf("printed spec parses to %v, %v; want %v\n%s", again, err, want, printed)
	}

	bad := filepath.Join(dir, "bad.yaml")
	badSpec := strings.NewReplacer("waves: [50, 100]", "waves: [50, 40, 100]", "mode: auto", "mode: fast").Replace(webSpec)
	if err := os.WriteFile(bad, []byte(badSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "--coordinator", addr, "service", "apply", "-f", bad)
	if code != 1 {
		t.Errorf("invalid spec: exit %d, want 1", code)
	}
	wantContains(t, "stderr", stderr,
		"fleetwave: invalid spec "+bad+":",
		bad+": rollout.waves[1]: 40 is not greater than the previous wave 50",
		bad+`: rollout.mode: "fast" is not auto or manual`)

	unknown := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknown, []byte(webSpec+"replicas: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "--coordinator", addr, "service", "apply", "-f", unknown)
	if code != 1 {
		t.Errorf("unknown field: exit %d, want 1", code)
	}
	wantContains(t, "stderr", stderr, "cannot parse spec "+unknown, unknown+": replicas: unknown field")

	code, _, stderr = runCLI(t, "--coordinator", addr, "service", "apply", "-f", filepath.Join(dir, "missing.yaml"))
	if code != 1 {
		t.Errorf("missing file: exit %d, want 1", code)
	}
	wantContains(t, "stderr", stderr, "missing.yaml")

	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) != 1 {
		t.Errorf("invalid specs reached the coordinator: %d applies", len(f.applied))
	}
}

func testRollout() *v1.Rollout {
	return &v1.Rollout{
		Id: "web-2", Service: "web", FromVersion: "1.0", ToVersion: "1.1", Generation: 4,
		State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Waves: []*v1.Wave{
			{Index: 0, Canary: true, State: v1.WaveState_WAVE_STATE_PROGRESSING, Hosts: []*v1.HostProgress{
				{HostId: "h1", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING, Phase: v1.Phase_PHASE_FETCHING}}},
			{Index: 1, State: v1.WaveState_WAVE_STATE_PENDING, Hosts: []*v1.HostProgress{
				{HostId: "h2", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING, Unknown: true, Reason: "stream down"},
				{HostId: "h3", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING}}},
		},
	}
}

func TestReleaseCreateUploadsArtifact(t *testing.T) {
	f := &fake{rollout: testRollout()}
	addr := serve(t, f)
	t.Setenv("USER", "alice")
	data := make([]byte, 2*UploadChunkSize+12345)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	artifact := filepath.Join(t.TempDir(), "web-1.1.tar.gz")
	if err := os.WriteFile(artifact, data, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.1",
		"--artifact", artifact, "--commit", "abc123", "--commit-time", "2024-05-01T10:00:00+02:00")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])

	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.uploads) != 1 || !bytes.Equal(f.uploads[0], data) {
		t.Fatalf("uploaded %d files, first differs from the artifact", len(f.uploads))
	}
	if want := []int{UploadChunkSize, UploadChunkSize, 12345}; len(f.chunkSizes) != 3 || f.chunkSizes[0] != want[0] || f.chunkSizes[1] != want[1] || f.chunkSizes[2] != want[2] {
		t.Errorf("chunk sizes %v, want %v", f.chunkSizes, want)
	}
	if len(f.releases) != 1 {
		t.Fatalf("%d releases created", len(f.releases))
	}
	r := f.releases[0]
	if r.GetService() != "web" || r.GetVersion() != "1.1" || r.GetCommit() != "abc123" {
		t.Errorf("release %v", r)
	}
	if r.GetArtifact().GetSha256() != digest || r.GetArtifact().GetSize() != int64(len(data)) || r.GetArtifact().GetUrl() != "" {
		t.Errorf("artifact %v, want sha256 %s size %d", r.GetArtifact(), digest, len(data))
	}
	if got, want := r.GetCommitTime().AsTime(), time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("commit time %v, want %v", got, want)
	}
	if !strings.HasPrefix(r.GetCreatedBy(), "alice@") || len(r.GetCreatedBy()) == len("alice@") {
		t.Errorf("created_by %q, want alice@<hostname>", r.GetCreatedBy())
	}
	wantContains(t, "stdout", stdout,
		"release web 1.1 created: sha256 "+digest,
		"rollout web-2 started: 1.0 → 1.1 (progressing)",
		"wave 0 (canary): 1 host: h1",
		"wave 1: 2 hosts: h2, h3")
}

func TestReleaseCreateDigestMismatch(t *testing.T) {
	f := &fake{badDigest: true}
	addr := serve(t, f)
	artifact := filepath.Join(t.TempDir(), "a.bin")
	if err := os.WriteFile(artifact, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1", "--artifact", artifact)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	sum := sha256.Sum256([]byte("hello"))
	wantContains(t, "stderr", stderr, "upload "+artifact, "sent sha256 "+hex.EncodeToString(sum[:]))
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.releases) != 0 {
		t.Errorf("release created despite the digest mismatch: %v", f.releases)
	}
}

func TestReleaseCreateURLAndList(t *testing.T) {
	f := &fake{}
	addr := serve(t, f)
	sha := strings.Repeat("ab", 32)
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "2.0",
		"--url", "https://example.com/web-2.0.tgz", "--sha256", sha, "--size", "42")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantContains(t, "stdout", stdout, "release web 2.0 created", "no rollout started")
	f.mu.Lock()
	if len(f.uploads) != 0 || len(f.releases) != 1 || f.releases[0].GetArtifact().GetUrl() != "https://example.com/web-2.0.tgz" ||
		f.releases[0].GetArtifact().GetSha256() != sha || f.releases[0].GetArtifact().GetSize() != 42 {
		t.Errorf("uploads %d, releases %v", len(f.uploads), f.releases)
	}
	f.mu.Unlock()

	code, stdout, _ = runCLI(t, "--coordinator", addr, "release", "list", "web")
	if code != 0 {
		t.Fatalf("list: exit %d", code)
	}
	wantContains(t, "release list", stdout, "VERSION", "2.0", sha[:12], "42")

	code, stdout, _ = runCLI(t, "--coordinator", addr, "-o", "json", "release", "list", "web")
	if code != 0 {
		t.Fatalf("list json: exit %d", code)
	}
	var got v1.ListReleasesResponse
	if err := protojson.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("release list -o json: %v\n%s", err, stdout)
	}
	if len(got.GetReleases()) != 1 || got.GetReleases()[0].GetArtifact().GetSha256() != sha {
		t.Errorf("release list -o json = %v", &got)
	}
}

// release list shows when a release's artifact was pruned, and "-" for
// one that keeps it.
func TestReleaseListPruned(t *testing.T) {
	f := &fake{releases: []*v1.Release{
		{Service: "web", Version: "1.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("ab", 32), Size: 1},
			ArtifactPrunedAt: timestamppb.New(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))},
		{Service: "web", Version: "2.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("cd", 32), Size: 1}},
	}}
	addr := serve(t, f)
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "release", "list", "web")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantContains(t, "release list", stdout, "ARTIFACT PRUNED")
	for _, l := range strings.Split(stdout, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && f[0] == "1.0" && f[len(f)-1] != "2026-03-04T05:06:07Z":
			t.Errorf("1.0 (pruned): %q", l)
		case len(f) > 0 && f[0] == "2.0" && f[len(f)-1] != "-":
			t.Errorf("2.0 (kept): %q", l)
		}
	}
}

func TestRolloutWatch(t *testing.T) {
	start := testRollout()
	end := func(state v1.RolloutState, reason string) *v1.Rollout {
		r := proto.Clone(start).(*v1.Rollout)
		r.State = state
		r.Reason = reason
		return r
	}
	tests := []struct {
		name    string
		f       *fake
		args    []string
		code    int
		stdout  []string
		stderr  []string
		wantErr bool
	}{
		{"succeeded", &fake{watch: []*v1.Rollout{start, end(v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, "")}}, nil, 0,
			[]string{"rollout web-2 of web: 1.0 → 1.1", "host h1: updating (fetching)", "rollout succeeded"}, nil, false},
		{"failed", &fake{watch: []*v1.Rollout{start, end(v1.RolloutState_ROLLOUT_STATE_FAILED, "canary reverted")}}, nil, 1,
			[]string{"rollout failed: canary reverted"}, nil, false},
		{"superseded", &fake{watch: []*v1.Rollout{end(v1.RolloutState_ROLLOUT_STATE_SUPERSEDED, "release 1.2 created")}}, nil, 1,
			[]string{"rollout superseded: release 1.2 created"}, nil, false},
		{"stream ends early", &fake{watch: []*v1.Rollout{start}}, nil, 2,
			[]string{"host h1: updating (fetching)"}, []string{"fleetwave: watch rollout of web: the coordinator ended the stream before the rollout ended"}, true},
		{"rpc error", &fake{watchErr: status.Error(codes.NotFound, `no rollout of "web"`)}, nil, 2,
			nil, []string{`fleetwave: watch rollout of web: no rollout of "web"` + "\n"}, true},
		{"timeout", &fake{watch: []*v1.Rollout{start}, watchBlock: true}, []string{"--timeout", "200ms"}, 2,
			nil, []string{"fleetwave: watch rollout of web: context deadline exceeded"}, true},
		{"json lines", &fake{watch: []*v1.Rollout{start, end(v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, "")}}, []string{"-o", "json", "--id", "web-2"}, 0,
			[]string{`"state":"ROLLOUT_STATE_PROGRESSING"`, `"state":"ROLLOUT_STATE_SUCCEEDED"`}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, tt.f)
			args := append([]string{"--coordinator", addr, "rollout", "watch", "web"}, tt.args...)
			code, stdout, stderr := runCLI(t, args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tt.code, stderr)
			}
			wantContains(t, "stdout", stdout, tt.stdout...)
			wantContains(t, "stderr", stderr, tt.stderr...)
			if !tt.wantErr && stderr != "" {
				t.Errorf("unexpected stderr: %s", stderr)
			}
			tt.f.mu.Lock()
			defer tt.f.mu.Unlock()
			if len(tt.f.watchReqs) != 1 || tt.f.watchReqs[0].GetService() != "web" {
				t.Errorf("watch requests %v", tt.f.watchReqs)
			}
		})
	}
	// -o json prints one JSON document per line, and --id is sent.
	f := &fake{watch: []*v1.Rollout{start, end(v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, "")}}
	addr := serve(t, f)
	code, stdout, _ := runCLI(t, "--coordinator", addr, "-o", "json", "rollout", "watch", "web", "--id", "web-2")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("exit %d, %d lines:\n%s", code, len(lines), stdout)
	}
	for _, l := range lines {
		var r v1.Rollout
		if err := protojson.Unmarshal([]byte(l), &r); err != nil || r.GetId() != "web-2" {
			t.Errorf("line %q: %v", l, err)
		}
	}
	if f.watchReqs[0].GetId() != "web-2" {
		t.Errorf("watch id %q, want web-2", f.watchReqs[0].GetId())
	}
}

func TestListingsAndErrors(t *testing.T) {
	f := &fake{
		rollout: testRollout(),
		services: []*v1.Service{{
			Spec:   &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Rollout: &v1.RolloutPolicy{Mode: spec.ModeManual}},
			Status: &v1.ServiceStatus{StableVersion: "1.0", StableGeneration: 3, Frozen: true, FrozenReason: "rollout web-1 failed", LastRolloutId: "web-2"},
		}},
		cluster: &v1.ClusterStatusResponse{Leader: "c1", AnsweredBy: "c2",
			Coordinators: []*v1.CoordinatorInfo{{Name: "c1", Address: "10.0.0.1:7070", Leader: true, Agents: 3}, {Name: "c2", Address: "10.0.0.2:7070", Agents: 2}},
			EtcdMembers: []*v1.EtcdMember{{Name: "e1", ClientUrls: []string{"http://10.0.0.1:2379"}, Healthy: true, Leader: true, DbSizeBytes: 3 << 20, RaftTerm: 4, RaftIndex: 99},
				{Name: "e2", Error: "context deadline exceeded"}, {Name: "e3", Error: "connection refused"}}},
		hosts: []*v1.Host{{
			Id: "h1", Labels: map[string]string{"role": "web", "zone": "a"}, Connected: true, Coordinator: "c1", Gossip: "alive", AgentVersion: "v0.2.0", Cgroups: "v1 /fleetwave",
			Services: []*v1.ServiceReport{{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "1.1", LastGoodVersion: "1.0"}},
		}, {Id: "h2", Cgroups: "none: the agent does not run as root"}},
	}
	addr := serve(t, f)
	t.Setenv(EnvCoordinator, addr) // no --coordinator from here on

	tables := []struct {
		args []string
		want []string
	}{
		{[]string{"service", "list"}, []string{"NAME", "web", "manual", "1.0", "yes", "web-2", "role=web"}},
		{[]string{"service", "get", "web"}, []string{"stable version:", "1.0 (generation 3)", "spec:", "  name: web", "    mode: manual"}},
		{[]string{"hosts"}, []string{"HOST", "STREAM", "GOSSIP", "AGENT", "CGROUPS", "h1    yes        c1      alive   v0.2.0  v1       role=web,zone=a", "web=healthy 1.1/1.0", "h2    no         -       -       -       none"}},
		{[]string{"cluster", "status"}, []string{"rollout leader: c1 (answered by c2)",
			"c1           10.0.0.1:7070  leader    3", "c2           10.0.0.2:7070  follower  2",
			"e1           http://10.0.0.1:2379  healthy", "leader  3.0 MiB  4          99",
			"unhealthy: context deadline exceeded", "etcd has no quorum: 1 of 3 members healthy"}},
		{[]string{"rollout", "status", "web"}, []string{
			"rollout web-2 of web: 1.0 → 1.1, progressing (generation 4)",
			"WAVE", "DONE/TOTAL", "BAKE UNTIL", "0     yes     progressing  0/1", "1     no      pending      0/2",
			"h1    0     updating  fetching", "h2    1     pending   -         yes      stream down"}},
		{[]string{"rollout", "approve", "web"}, []string{"rollout web-2 approved: 1.0 → 1.1 (progressing)"}},
		{[]string{"hosts", "remove", "h2"}, []string{"host h2 removed; new rollouts no longer plan it"}},
	}
	for _, tt := range tables {
		code, stdout, stderr := runCLI(t, tt.args...)
		if code != 0 {
			t.Errorf("%v: exit %d: %s", tt.args, code, stderr)
		}
		wantContains(t, strings.Join(tt.args, " "), stdout, tt.want...)
	}

	jsons := []struct {
		args []string
		msg  proto.Message
		want proto.Message
	}{
		{[]string{"service", "list"}, &v1.ListServicesResponse{}, &v1.ListServicesResponse{Services: f.services}},
		{[]string{"service", "get", "web"}, &v1.Service{}, f.services[0]},
		{[]string{"hosts"}, &v1.ListHostsResponse{}, &v1.ListHostsResponse{Hosts: f.hosts}},
		{[]string{"cluster", "status"}, &v1.ClusterStatusResponse{}, f.cluster},
		{[]string{"rollout", "status", "web"}, &v1.Rollout{}, f.rollout},
	}
	for _, tt := range jsons {
		code, stdout, stderr := runCLI(t, append([]string{"-o", "json"}, tt.args...)...)
		if code != 0 {
			t.Errorf("%v: exit %d: %s", tt.args, code, stderr)
			continue
		}
		if err := protojson.Unmarshal([]byte(stdout), tt.msg); err != nil {
			t.Errorf("%v -o json: %v\n%s", tt.args, err, stdout)
			continue
		}
		if !proto.Equal(tt.msg, tt.want) {
			t.Errorf("%v -o json = %v, want %v", tt.args, tt.msg, tt.want)
		}
	}

	if code, _, stderr := runCLI(t, "hosts", "remove", "h1"); code != 1 || !strings.Contains(stderr, "host is connected") {
		t.Errorf("remove a connected host: exit %d, %q", code, stderr)
	}
	code, stdout, stderr := runCLI(t, "service", "get", "nope")
	if code != 1 || stdout != "" || stderr != "fleetwave: get service nope: service \"nope\" not found\n" {
		t.Errorf("get unknown service: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, "release", "list", "web", "--coordinator", "127.0.0.1:1", "--timeout", "5s")
	if code != 1 || !strings.HasPrefix(stderr, "fleetwave: list releases of web: ") || !strings.Contains(stderr, "is the coordinator at 127.0.0.1:1 running?") {
		t.Errorf("unreachable coordinator: exit %d, stderr %q", code, stderr)
	}
}

func TestEventsAndWatchByEvents(t *testing.T) {
	ev := func(rev int64, kind string, wave int32, host, msg string) *v1.WatchEventsResponse {
		return &v1.WatchEventsResponse{Revision: rev, Event: &v1.Event{Service: "web", RolloutId: "000002", Kind: kind, Wave: wave, Host: host, Message: msg,
			At: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}}
	}
	f := &fake{rollout: testRollout(), events: []*v1.WatchEventsResponse{
		ev(10, rollout.EventRolloutCreated, -1, "", "1.0 → 1.1"),
		ev(11, rollout.EventHostDone, 0, "h1", "healthy on 1.1"),
		ev(12, rollout.EventRolloutFailed, -1, "", "canary reverted"),
		ev(13, rollout.EventAlertSent, -1, "", "webhook answered 200"),
	}}
	addr := serve(t, f)
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "events", "web", "--rollout", "000002", "--since-revision", "9")
	if code != 0 {
		t.Fatalf("events: exit %d: %s", code, stderr)
	}
	wantContains(t, "events", stdout, "10 ", "web/000002 rollout_created: 1.0 → 1.1", "11 ", "host_done wave=0 host=h1: healthy on 1.1", "13 ")
	f.mu.Lock()
	req := f.eventReqs[0]
	f.mu.Unlock()
	if req.GetService() != "web" || req.GetRolloutId() != "000002" || req.GetFollow() || req.GetSinceRevision() != 9 {
		t.Errorf("request %v", req)
	}
	// -o json: one line per event, with its revision.
	code, stdout, _ = runCLI(t, "--coordinator", addr, "-o", "json", "events")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 4 {
		t.Fatalf("json: exit %d, %d lines: %s", code, len(lines), stdout)
	}
	var m v1.WatchEventsResponse
	if err := protojson.Unmarshal([]byte(lines[1]), &m); err != nil || m.GetRevision() != 11 || m.GetEvent().GetHost() != "h1" {
		t.Errorf("line %q: %v", lines[1], err)
	}
	// --follow: a stream the coordinator ends is an error.
	code, _, stderr = runCLI(t, "--coordinator", addr, "events", "--follow")
	if code != 1 || !strings.Contains(stderr, "the coordinator ended the stream") {
		t.Errorf("follow ended: exit %d, stderr %q", code, stderr)
	}
	// Bad flags.
	code, _, stderr = runCLI(t, "--coordinator", addr, "events", "--rollout", "000002")
	if code != 1 || !strings.Contains(stderr, "--rollout needs a SERVICE") {
		t.Errorf("rollout without service: exit %d, stderr %q", code, stderr)
	}
	// rollout watch --events follows until the failure event: exit 1,
	// and the event after it is not printed.
	code, stdout, _ = runCLI(t, "--coordinator", addr, "rollout", "watch", "web", "--events")
	if code != 1 || !strings.Contains(stdout, "rollout_failed: canary reverted") || strings.Contains(stdout, "alert_sent") {
		t.Errorf("watch --events: exit %d, stdout %s", code, stdout)
	}
	f.mu.Lock()
	req = f.eventReqs[len(f.eventReqs)-1]
	f.mu.Unlock()
	if !req.GetFollow() || req.GetRolloutId() != "web-2" {
		t.Errorf("watch --events request %v", req)
	}
}

func TestGossipKeygen(t *testing.T) {
	code, stdout, stderr := runCLI(t, "gossip", "keygen")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := gossip.ParseKey("stdout", strings.TrimSpace(stdout)); err != nil {
		t.Errorf("printed key does not load: %v", err)
	}
	path := filepath.Join(t.TempDir(), "gossip.key")
	if code, _, stderr := runCLI(t, "gossip", "keygen", "--out", path); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v", fi, err)
	}
	if _, err := gossip.LoadKey(path); err != nil {
		t.Errorf("written key does not load: %v", err)
	}
	// Never overwrites.
	if code, _, stderr := runCLI(t, "gossip", "keygen", "--out", path); code == 0 || !strings.Contains(stderr, "exists") {
		t.Errorf("overwrite: exit %d, stderr %q", code, stderr)
	}
}

// --git takes the commit and its time from HEAD of the repository in the
// current directory.
func TestReleaseCreateGit(t *testing.T) {
	f := &fake{rollout: testRollout()}
	addr := serve(t, f)
	repo := t.TempDir()
	gitEnv := append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t",
		"GIT_COMMITTER_EMAIL=t@example.com", "GIT_COMMITTER_DATE=2024-05-01T10:00:00+02:00", "GIT_AUTHOR_DATE=2024-05-01T10:00:00+02:00")
	for _, args := range [][]string{{"init", "-q"}, {"commit", "-q", "--allow-empty", "-m", "x"}} {
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		cmd.Env = gitEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("git unusable here: %v %s", err, out)
		}
	}
	head, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	artifact := filepath.Join(t.TempDir(), "a.tar.gz")
	if err := os.WriteFile(artifact, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(repo)
	code, _, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.2", "--artifact", artifact, "--git")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	r := f.releases[len(f.releases)-1]
	f.mu.Unlock()
	if r.GetCommit() != strings.TrimSpace(string(head)) || !r.GetCommitTime().AsTime().Equal(time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)) {
		t.Errorf("release commit %q at %v, want %s at 2024-05-01T08:00Z", r.GetCommit(), r.GetCommitTime().AsTime(), head)
	}
	code, _, stderr = runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.3", "--artifact", artifact, "--git", "--commit", "x")
	if code == 0 || !strings.Contains(stderr, "--git reads the commit") {
		t.Errorf("--git with --commit: exit %d, %q", code, stderr)
	}
	t.Chdir(t.TempDir())
	code, _, stderr = runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.4", "--artifact", artifact, "--git")
	if code == 0 || !strings.Contains(stderr, "--git: git log") {
		t.Errorf("--git outside a repository: exit %d, %q", code, stderr)
	}
}

// A followed stream that breaks (the coordinator restarted: Unavailable)
// is opened again after the last event printed, even one that broke
// inside a revision (a write's events share it): every event is printed
// once, in order, and each resume says so on stderr. A stream that never
// opened, or a refusal, ends the command without resuming.
func TestEventsFollowResumes(t *testing.T) {
	ev := func(rev int64, msg string) *v1.WatchEventsResponse {
		return &v1.WatchEventsResponse{Revision: rev, Event: &v1.Event{Service: "web", RolloutId: "000002", Kind: rollout.EventHostDone, Wave: -1, Message: msg,
			At: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}}
	}
	broke := status.Error(codes.Unavailable, "connection reset")
	f := &fake{rollout: testRollout(), eventRuns: []eventRun{
		// Breaks after two of revision 11's three events.
		{accept: true, events: []*v1.WatchEventsResponse{ev(10, "a"), ev(11, "b"), ev(11, "c")}, err: broke},
		// The coordinator is not back yet.
		{err: status.Error(codes.Unavailable, "connection refused")},
		// From revision 10: 11's again, then a new one; breaks at a
		// revision's end.
		{accept: true, events: []*v1.WatchEventsResponse{ev(11, "b"), ev(11, "c"), ev(11, "d"), ev(12, "e")}, err: broke},
		// Accepted, nothing new, breaks (a quiet restart).
		{accept: true, err: status.Error(codes.Internal, "etcdserver: leader changed")},
		{accept: true, events: []*v1.WatchEventsResponse{ev(12, "e"), ev(13, "f")}, err: status.Error(codes.PermissionDenied, "token revoked")},
	}}
	addr := serve(t, f)
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "events", "web", "--follow", "--since-revision", "9")
	if code != 1 || !strings.Contains(stderr, "token revoked") {
		t.Fatalf("follow: exit %d, stderr %s", code, stderr)
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		msgs = append(msgs, line[:strings.Index(line, " ")]+line[strings.LastIndex(line, ":")+1:])
	}
	if got, want := strings.Join(msgs, ","), "10 a,11 b,11 c,11 d,12 e,13 f"; got != want {
		t.Errorf("printed %s, want %s\n%s", got, want, stdout)
	}
	f.mu.Lock()
	var since []int64
	for _, r := range f.eventReqs {
		since = append(since, r.GetSinceRevision())
		if !r.GetFollow() || r.GetService() != "web" {
			t.Errorf("request %v", r)
		}
	}
	f.mu.Unlock()
	if got, want := fmt.Sprint(since), "[9 10 10 11 11]"; got != want {
		t.Errorf("since_revision of each attempt %s, want %s", got, want)
	}
	if n := strings.Count(stderr, "the stream broke"); n != 4 || !strings.Contains(stderr, "resuming after revision 11 in 250ms") ||
		!strings.Contains(stderr, "resuming after revision 11 in 500ms") || !strings.Contains(stderr, "resuming after revision 12 in 250ms") {
		t.Errorf("stderr: %d resumes, want 4 with their revisions and pauses:\n%s", n, stderr)
	}

	// A stream the coordinator never accepted is not resumed: the
	// command fails as before.
	f = &fake{eventRuns: []eventRun{{err: status.Error(codes.Unavailable, "connection refused")}, {accept: true}}}
	addr = serve(t, f)
	code, _, stderr = runCLI(t, "--coordinator", addr, "events", "--follow")
	f.mu.Lock()
	n := len(f.eventReqs)
	f.mu.Unlock()
	if code != 1 || n != 1 || !strings.Contains(stderr, "connection refused") {
		t.Errorf("never opened: exit %d after %d requests, stderr %s", code, n, stderr)
	}
	// Without --follow a broken stream is not resumed either.
	f = &fake{eventRuns: []eventRun{{accept: true, events: []*v1.WatchEventsResponse{ev(10, "a")}, err: broke}, {accept: true}}}
	addr = serve(t, f)
	code, stdout, _ = runCLI(t, "--coordinator", addr, "events")
	f.mu.Lock()
	n = len(f.eventReqs)
	f.mu.Unlock()
	if code != 1 || n != 1 || !strings.Contains(stdout, "10 ") {
		t.Errorf("no follow: exit %d after %d requests, stdout %s", code, n, stdout)
	}
}

// The pause before a followed stream is opened again doubles from
// followBackoffFirst to followBackoffMax and stays there.
func TestFollowBackoffBounded(t *testing.T) {
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i, w := range want {
		if got := followBackoff(i + 1); got != w {
			t.Errorf("attempt %d: %s, want %s", i+1, got, w)
		}
	}
	if got := followBackoff(1 << 20); got != followBackoffMax {
		t.Errorf("attempt 2^20: %s, want %s", got, followBackoffMax)
	}
}

// rollout history asks for the newest --limit events (1000 unless told),
// and says on stderr when older ones were left out and how to see them;
// a --limit out of range is refused before any call.
func TestHistoryLimit(t *testing.T) {
	ev := func(kind, msg string) *v1.WatchEventsResponse {
		return &v1.WatchEventsResponse{Event: &v1.Event{Service: "web", RolloutId: "000002", Kind: kind, Wave: -1, Message: msg,
			At: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}}
	}
	f := &fake{events: []*v1.WatchEventsResponse{ev(rollout.EventRolloutCreated, "first"), ev(rollout.EventRolloutSucceeded, "second"), ev(rollout.EventRolloutCreated, "third")}}
	addr := serve(t, f)
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "rollout", "history", "web")
	if code != 0 || stderr != "" {
		t.Fatalf("history: exit %d, stderr %q", code, stderr)
	}
	wantContains(t, "history", stdout, "first", "second", "third")
	code, stdout, stderr = runCLI(t, "--coordinator", addr, "rollout", "history", "web", "--id", "000002", "--limit", "2")
	if code != 0 || strings.Contains(stdout, "first") || !strings.Contains(stdout, "third") {
		t.Fatalf("history --limit 2: exit %d:\n%s", code, stdout)
	}
	wantContains(t, "stderr", stderr, "the newest 2 events; older ones left out", "fleetwave events web --rollout 000002")
	f.mu.Lock()
	limits := []uint32{f.listReqs[0].GetLimit(), f.listReqs[1].GetLimit()}
	f.mu.Unlock()
	if limits[0] != 1000 || limits[1] != 2 {
		t.Errorf("limits asked: %v, want [1000 2]", limits)
	}
	code, stdout, _ = runCLI(t, "--coordinator", addr, "-o", "json", "rollout", "history", "web", "--limit", "1")
	var resp v1.ListEventsResponse
	if err := protojson.Unmarshal([]byte(stdout), &resp); code != 0 || err != nil || !resp.GetTruncated() || len(resp.GetEvents()) != 1 {
		t.Errorf("json: exit %d (%v): %s", code, err, stdout)
	}
	for _, bad := range []string{"0", "10001"} {
		code, _, stderr = runCLI(t, "--coordinator", addr, "rollout", "history", "web", "--limit", bad)
		if code == 0 || !strings.Contains(stderr, "invalid --limit "+bad) {
			t.Errorf("--limit %s: exit %d, stderr %q, want refused naming it", bad, code, stderr)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.listReqs) != 3 {
		t.Errorf("%d calls, want 3: a refused --limit calls nothing", len(f.listReqs))
	}
}
