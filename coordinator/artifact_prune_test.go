package coordinator

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestConfigValidateArtifactPruning(t *testing.T) {
	base := Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d"}
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.KeepReleaseArtifacts = -1 }, "keep-release-artifacts: -1 is negative (0 keeps every artifact)"},
		{func(c *Config) { c.ReleaseArtifactMinAge = -time.Hour }, "release-artifact-min-age: -1h0m0s is negative"},
		{func(c *Config) { c.ArtifactUploadGrace = -time.Hour }, "artifact-upload-grace: -1h0m0s: want at least 1h"},
		{func(c *Config) { c.ArtifactUploadGrace = time.Minute }, "artifact-upload-grace: 1m0s: want at least 1h"},
	} {
		cfg := base
		c.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate: %v, want %q", err, c.want)
		}
	}
	cfg := base
	cfg.defaults()
	if cfg.KeepReleaseArtifacts != 0 || cfg.ReleaseArtifactMinAge != 168*time.Hour || cfg.ArtifactUploadGrace != 24*time.Hour {
		t.Errorf("defaults: keep %d, min age %s, grace %s; want 0 (the flag's default is 10), 168h, 24h", cfg.KeepReleaseArtifacts, cfg.ReleaseArtifactMinAge, cfg.ArtifactUploadGrace)
	}
}

// artFile is where a coordinator with data dir dir keeps an artifact.
func artFile(dir, digest string) string { return filepath.Join(dir, "artifacts", "sha256", digest) }

func hasFile(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Two coordinators on a real etcd prune the artifacts of a service's old
// releases (--keep-release-artifacts 2, a minimum age of 30m, the
// leader's clock an hour ahead until the restore): while a coordinator
// from before prune marks is registered, nothing; then the leader
// marks v1 and v3 once v5 runs (v2 stays: a host reports running it; v4 is
// the rollback target and among the newest two with v5); both
// coordinators delete their files, neither fetches them again, a
// download of one says it was pruned, a rollback to v1 is refused saying
// how to restore it; release create of v1 with the same artifact restores
// it (its signature kept and verifying), the other coordinator copies it
// again, and the rollback to it then works.
func TestReleaseArtifactsPruned(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dirA, dirB := t.TempDir(), t.TempDir()
	// The leader's clock: ahead of the wall clock by ahead; calls counts
	// its readings once it is not, read the wall time of the last reading
	// (the loop reads it once a turn).
	var ahead, calls, read atomic.Int64
	ahead.Store(int64(time.Hour))
	pruning := func(dir string) func(*Config) {
		return func(c *Config) {
			c.DataDir = dir
			c.KeepReleaseArtifacts = 2
			c.ReleaseArtifactMinAge = 30 * time.Minute
			c.pruneClock = func() time.Time {
				read.Store(time.Now().UnixNano())
				d := ahead.Load()
				if d == 0 {
					calls.Add(1)
				}
				return time.Now().Add(time.Duration(d))
			}
			c.auditPruneEvery = 20 * time.Millisecond
			c.artifactPruneEvery = 20 * time.Millisecond
		}
	}
	a := startMember(t, "a", emb, pruning(dirA))
	b := startMember(t, "b", emb, pruning(dirB))
	waitCluster(t, ctx, a.op, "two coordinators and a leader", func(s *v1.ClusterStatusResponse) bool {
		return len(s.GetCoordinators()) == 2 && s.GetLeader() != ""
	})
	sp := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}}
	if _, err := a.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
		t.Fatal(err)
	}
	// A host that reports running v2 (outside any rollout's plan: no host
	// record).
	if err := store.New(cli).PutReport(ctx, "old", &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v2"}); err != nil {
		t.Fatal(err)
	}
	startScripted(t, ctx, a.cc, "h1", map[string]string{"v6": "hold"})
	waitHosts(t, ctx, a.op, 1)

	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	arts := map[string]*v1.Artifact{}
	var signed *v1.SignedManifest
	release := func(v string) {
		t.Helper()
		art := upload(t, ctx, a.cc, []byte("artifact "+v))
		arts[v] = art
		rel := &v1.Release{Service: "web", Version: v, Artifact: art}
		if v == "v1" {
			now := time.Now()
			sm, err := signing.Sign(signing.Manifest(rel, sp, 1, now, now.Add(time.Hour)), priv)
			if err != nil {
				t.Fatal(err)
			}
			rel.Signed, signed = sm, sm
		}
		if _, err := a.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: rel}); err != nil {
			t.Fatal(err)
		}
		waitRollout(t, ctx, a.op, v+" succeeded", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		})
	}
	release("v1")
	release("v2")
	// b holds copies of both before anything is pruned.
	testkit.Eventually(t, 30*time.Second, "b copied v1 and v2", func() bool {
		return hasFile(artFile(dirB, arts["v1"].GetSha256())) && hasFile(artFile(dirB, arts["v2"].GetSha256()))
	})
	// A coordinator from before prune marks is registered: the leader
	// marks nothing.
	old, err := proto.Marshal(&v1.CoordinatorInfo{Name: "old", ReadsSplitRollouts: true, ReadsEventBatches: true, ReadsCompactedRollouts: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, store.CoordinatorKey("old"), string(old)); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, ctx, a.op, "the old coordinator registered", func(s *v1.ClusterStatusResponse) bool { return len(s.GetCoordinators()) == 3 })
	release("v3")
	release("v4")
	release("v5")
	// A pruning pass (every 20ms of the leader's clock) ran over v5 and
	// ended: a reading 50ms after now, then another.
	t0 := time.Now().Add(50 * time.Millisecond).UnixNano()
	var tA int64
	testkit.Eventually(t, 30*time.Second, "the leader's clock read 50ms on", func() bool { tA = read.Load(); return tA >= t0 })
	testkit.Eventually(t, 30*time.Second, "the leader's clock read again", func() bool { return read.Load() > tA })
	resp, err := cli.Get(ctx, store.ReleaseKey("web", "v1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("release v1: %v", err)
	}
	if rel := (&v1.Release{}); proto.Unmarshal(resp.Kvs[0].Value, rel) != nil || rel.GetArtifactPrunedAt() != nil {
		t.Fatalf("v1 marked while a coordinator that does not honor marks is registered: %v", rel)
	}
	if _, err := cli.Delete(ctx, store.CoordinatorKey("old")); err != nil {
		t.Fatal(err)
	}

	marked := func(v string) *v1.Release {
		t.Helper()
		resp, err := cli.Get(ctx, store.ReleaseKey("web", v))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("release %s in etcd: %v, %d keys", v, err, len(resp.Kvs))
		}
		rel := &v1.Release{}
		if err := proto.Unmarshal(resp.Kvs[0].Value, rel); err != nil {
			t.Fatal(err)
		}
		return rel
	}
	gone := func(v string) bool {
		return !hasFile(artFile(dirA, arts[v].GetSha256())) && !hasFile(artFile(dirB, arts[v].GetSha256()))
	}
	testkit.Eventually(t, 30*time.Second, "v1 and v3 marked", func() bool {
		return marked("v1").GetArtifactPrunedAt() != nil && marked("v3").GetArtifactPrunedAt() != nil
	})
	// A file goes once its coordinator wrote it --artifact-upload-grace
	// (24h) ago (TestPrunedArtifactFileKeptWhileYoung): these are made
	// that old.
	past := time.Now().Add(-25 * time.Hour)
	for _, v := range []string{"v1", "v3"} {
		for _, dir := range []string{dirA, dirB} {
			if err := os.Chtimes(artFile(dir, arts[v].GetSha256()), past, past); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
	}
	testkit.Eventually(t, 30*time.Second, "the files of v1 and v3 gone on both coordinators", func() bool { return gone("v1") && gone("v3") })
	for _, v := range []string{"v2", "v4", "v5"} {
		if rel := marked(v); rel.GetArtifactPrunedAt() != nil {
			t.Errorf("%s marked pruned at %s", v, rel.GetArtifactPrunedAt().AsTime())
		}
		for _, dir := range []string{dirA, dirB} {
			if !hasFile(artFile(dir, arts[v].GetSha256())) {
				t.Errorf("%s: the file of %s is gone", dir, v)
			}
		}
	}
	if rel := marked("v1"); !proto.Equal(rel.GetSigned(), signed) {
		t.Error("the mark changed v1's signature")
	}

	// Listed as pruned.
	ls, err := b.op.ListReleases(ctx, &v1.ListReleasesRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ls.GetReleases() {
		if want := r.GetVersion() == "v1" || r.GetVersion() == "v3"; (r.GetArtifactPrunedAt() != nil) != want {
			t.Errorf("release list: %s pruned at %v", r.GetVersion(), r.GetArtifactPrunedAt())
		}
	}
	// A download of v1's artifact from either says it was pruned (b does
	// not fetch it from a).
	for _, m := range []*member{a, b} {
		st, err := v1.NewArtifactServiceClient(m.cc).Download(ctx, &v1.DownloadRequest{Sha256: arts["v1"].GetSha256()})
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "web v1 (pruned at") || !strings.Contains(err.Error(), "release create web --version v1") {
			t.Errorf("download of v1's artifact from %s: %v", m.name, err)
		}
	}
	// A rollback to it is refused, through either coordinator.
	for _, m := range []*member{a, b} {
		_, err := m.op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v1"})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "service web release v1: its artifact was pruned at ") ||
			!strings.Contains(err.Error(), "fleetwave release create web --version v1 --artifact FILE") {
			t.Errorf("rollback to v1 through %s: %v", m.name, err)
		}
	}
	// With a rollout in flight (h1 holds v6), a rollback to v1 is refused
	// before it supersedes the rollout.
	v6 := upload(t, ctx, a.cc, []byte("artifact v6"))
	if _, err := a.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v6", Artifact: v6}}); err != nil {
		t.Fatal(err)
	}
	inFlight := waitRollout(t, ctx, a.op, "v6 in flight", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v6" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	})
	if _, err := a.op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v1"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "its artifact was pruned") {
		t.Errorf("rollback to v1 with a rollout in flight: %v", err)
	}
	if g, err := a.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"}); err != nil || g.GetRollout().GetId() != inFlight.GetId() || g.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Errorf("after the refused rollback: %v, %v; want rollout %s in flight", g.GetRollout(), err, inFlight.GetId())
	}
	// Another release of an existing version stays refused.
	other := upload(t, ctx, a.cc, []byte("another artifact"))
	if _, err := a.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: other}}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("v1 again with another artifact: %v, want AlreadyExists", err)
	}

	// Restore: the same artifact again, the release created again as it
	// was (its signature not sent again: the stored one is kept). The
	// leader's clock back to now: the restored v1 is not pruned again
	// before --release-artifact-min-age from its restore. Two readings:
	// the pass that read the clock ahead has ended.
	ahead.Store(0)
	testkit.Eventually(t, 30*time.Second, "the leader's clock read twice", func() bool { return calls.Load() >= 2 })
	if got := upload(t, ctx, a.cc, []byte("artifact v1")); !proto.Equal(got, arts["v1"]) {
		t.Fatalf("uploaded again: %v, want %v", got, arts["v1"])
	}
	cr, err := a.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: arts["v1"]}})
	if err != nil {
		t.Fatalf("restore v1: %v", err)
	}
	if !strings.Contains(cr.GetNote(), "restored") {
		t.Errorf("restore note %q", cr.GetNote())
	}
	rel := marked("v1")
	if rel.GetArtifactPrunedAt() != nil || !proto.Equal(rel.GetSigned(), signed) {
		t.Fatalf("restored v1: pruned at %v, signature kept %v", rel.GetArtifactPrunedAt(), proto.Equal(rel.GetSigned(), signed))
	}
	if _, err := signing.Verify(rel, map[string]ed25519.PublicKey{signing.KeyID(pub): pub}, time.Now()); err != nil {
		t.Errorf("restored v1's signature: %v", err)
	}
	// b copies it again; v3 (still pruned) it does not fetch, though the
	// same scans looked at it.
	testkit.Eventually(t, 30*time.Second, "b copied the restored v1", func() bool {
		return hasFile(artFile(dirB, arts["v1"].GetSha256()))
	})
	if !gone("v3") {
		t.Error("v3's artifact is back")
	}
	if _, err := b.op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v1"}); err != nil {
		t.Fatalf("rollback to the restored v1: %v", err)
	}
	waitRollout(t, ctx, a.op, "the rollback to v1", func(r *v1.Rollout) bool {
		return r.GetRollback() && r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})
}

// Files no release names are deleted once --artifact-upload-grace old;
// fresh ones, uploads in progress (tmp/) and files a release names stay;
// the metrics count the files held, their bytes and those deleted.
func TestOrphanArtifactsDeleted(t *testing.T) {
	emb, _ := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	metrics := make(chan string, 1)
	m := startMember(t, "a", emb, func(c *Config) {
		c.DataDir = dir
		c.KeepReleaseArtifacts = 10 // 0 deletes nothing (TestPrunedArtifactFileKeptWhileYoung)
		c.artifactPruneEvery = 20 * time.Millisecond
		c.MetricsListen, c.MetricsReady = "127.0.0.1:0", func(a string) { metrics <- a }
	})
	if _, err := m.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}}}); err != nil {
		t.Fatal(err)
	}
	named := upload(t, ctx, m.cc, []byte("named by a release"))
	if _, err := m.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: named}}); err != nil {
		t.Fatal(err)
	}
	old := upload(t, ctx, m.cc, []byte("an old upload"))
	fresh := upload(t, ctx, m.cc, []byte("a fresh upload"))
	partial := filepath.Join(dir, "artifacts", "tmp", "upload-partial")
	if err := os.WriteFile(partial, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-25 * time.Hour)
	for _, p := range []string{artFile(dir, old.GetSha256()), artFile(dir, named.GetSha256()), partial} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 30*time.Second, "the old upload deleted", func() bool { return !hasFile(artFile(dir, old.GetSha256())) })
	// The pass that deleted it looked at the others.
	for what, p := range map[string]string{"fresh upload": artFile(dir, fresh.GetSha256()), "named": artFile(dir, named.GetSha256()), "partial upload": partial} {
		if !hasFile(p) {
			t.Errorf("the %s was deleted", what)
		}
	}
	resp, err := http.Get("http://" + <-metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	size := named.GetSize() + fresh.GetSize()
	for _, want := range []string{"fleetwave_coordinator_artifact_files 2\n", fmt.Sprintf("fleetwave_coordinator_artifact_bytes %d\n", size), "fleetwave_coordinator_artifact_files_deleted_total 1\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics: no %q", want)
		}
	}
}

// Every rollout of a release begins in leader.start, which refuses one
// whose artifact was pruned: here the newest release, marked in etcd
// directly (the leader never marks the newest), is not rolled out when
// the leader reconciles, and the reconcile says why.
func TestNoRolloutOfPrunedRelease(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	started := make(chan *Coordinator, 1)
	m := startMember(t, "a", emb, func(c *Config) { c.started = func(c *Coordinator) { started <- c } })
	c := <-started
	sp := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}}
	if _, err := m.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
		t.Fatal(err)
	}
	startScripted(t, ctx, m.cc, "h1", map[string]string{})
	waitHosts(t, ctx, m.op, 1)
	art := upload(t, ctx, m.cc, []byte("artifact v1"))
	if _, err := m.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, ctx, m.op, "v1 succeeded", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})
	rel := &v1.Release{Service: "web", Version: "v2", Artifact: art, CreatedAt: timestamppb.Now(), ArtifactPrunedAt: timestamppb.Now()}
	val, err := proto.Marshal(rel)
	if err != nil {
		t.Fatal(err)
	}
	put, err := cli.Put(ctx, store.ReleaseKey("web", "v2"), string(val))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.mirror.WaitRev(ctx, put.Header.Revision); err != nil {
		t.Fatal(err)
	}
	r, _, err := c.leader.call(ctx, leaderReq{service: "web", op: opReconcile})
	if !errors.Is(err, ErrArtifactPruned) || !strings.Contains(err.Error(), "service web release v2: its artifact was pruned at") {
		t.Errorf("reconcile with the newest release pruned: %v, %v", r, err)
	}
	g, err := m.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"})
	if err != nil || g.GetRollout().GetToVersion() != "v1" {
		t.Errorf("newest rollout %v, %v; want the one to v1", g.GetRollout(), err)
	}
}

// A file is deleted by its age on this coordinator's clock, never by a
// comparison with a prune mark's time (the leader's clock): with the
// leader's clock ten minutes ahead, a release's file written just now (an
// upload again to restore it) was deleted at once although the mark was
// older than the write (a review's finding: the restore's only copy
// gone). Nothing is deleted with --keep-release-artifacts 0, and no upload
// that no release names while the mirror names no release at all (etcd
// restored from an old backup: the files are the only copies).
func TestPrunedArtifactFileKeptWhileYoung(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	coords := map[string]chan *Coordinator{"a": make(chan *Coordinator, 1), "b": make(chan *Coordinator, 1)}
	dirs := map[string]string{"a": t.TempDir(), "b": t.TempDir()}
	start := func(name string, keep int) (*member, *Coordinator) {
		m := startMember(t, name, emb, func(c *Config) {
			c.DataDir = dirs[name]
			c.KeepReleaseArtifacts = keep
			c.artifactPruneEvery = time.Hour // passes run by the test only
			c.started = func(co *Coordinator) { coords[name] <- co }
		})
		return m, <-coords[name]
	}
	a, ca := start("a", 1)
	b, cb := start("b", 0)
	now := time.Now()
	later := now.Add(48 * time.Hour) // past the default grace (24h)

	orphanA, orphanB := upload(t, ctx, a.cc, []byte("orphan a")), upload(t, ctx, b.cc, []byte("orphan b"))
	ca.pruneArtifactFiles(later)
	if !hasFile(artFile(dirs["a"], orphanA.GetSha256())) {
		t.Fatal("an upload no release names deleted while the mirror names no release at all")
	}

	if _, err := a.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}}}); err != nil {
		t.Fatal(err)
	}
	art := upload(t, ctx, a.cc, []byte("artifact v1"))
	if _, err := a.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}
	// The leader, its clock ten minutes ahead, marks v1.
	resp, err := cli.Get(ctx, store.ReleaseKey("web", "v1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read v1: %v", err)
	}
	rel := &v1.Release{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, rel); err != nil {
		t.Fatal(err)
	}
	rel.ArtifactPrunedAt = timestamppb.New(now.Add(10 * time.Minute))
	val, err := proto.Marshal(rel)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, store.ReleaseKey("web", "v1"), string(val)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "a's mirror has the mark", func() bool {
		r, ok := ca.mirror.Release("web", "v1")
		return ok && r.GetArtifactPrunedAt() != nil
	})
	ca.pruneArtifactFiles(time.Now())
	if !hasFile(artFile(dirs["a"], art.GetSha256())) {
		t.Fatal("a file written just now deleted on a mark whose time (the leader's clock) is later")
	}
	ca.pruneArtifactFiles(later)
	if hasFile(artFile(dirs["a"], art.GetSha256())) {
		t.Error("a marked release's file not deleted once older than the grace")
	}
	if hasFile(artFile(dirs["a"], orphanA.GetSha256())) {
		t.Error("an upload no release names not deleted past the grace")
	}
	testkit.Eventually(t, 30*time.Second, "b's mirror has the mark", func() bool {
		r, ok := cb.mirror.Release("web", "v1")
		return ok && r.GetArtifactPrunedAt() != nil
	})
	cb.pruneArtifactFiles(later)
	if !hasFile(artFile(dirs["b"], orphanB.GetSha256())) {
		t.Error("--keep-release-artifacts 0 deleted an upload")
	}
	// A release create of an existing version with another artifact is
	// refused before that artifact is looked at: its file's time is not
	// set to now (which kept any upload from pruning for as long as a
	// deployer repeated it).
	stale := upload(t, ctx, a.cc, []byte("an upload to keep alive"))
	past := time.Now().Add(-25 * time.Hour).Truncate(time.Second)
	if err := os.Chtimes(artFile(dirs["a"], stale.GetSha256()), past, past); err != nil {
		t.Fatal(err)
	}
	_, err = a.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: stale}})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("v1 again with another artifact: %v, want AlreadyExists", err)
	}
	if fi, err := os.Stat(artFile(dirs["a"], stale.GetSha256())); err != nil {
		t.Error(err)
	} else if !fi.ModTime().Equal(past) {
		t.Errorf("the other artifact's file after the refused create: time %s, want it left at %s", fi.ModTime(), past)
	}
}
