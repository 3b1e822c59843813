package coordinator

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/promcheck"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The leader deletes the records of old releases whose artifacts were
// pruned, on a real etcd (--keep-release-artifacts 1, --rollout-retention
// 24h, the leader's clock moved 30 days on once v1..v5 rolled out one
// after the other): while a coordinator from before release tombstones is
// registered, nothing; then v2's record goes and its tombstone is kept
// (the rollouts to v2 and v3 are deleted by age: nothing names v2), while
// v1 (named by the service's first rollout, kept) and v3 (the from of the
// rollout to v4, kept as the rollback target's) stay, their artifacts
// pruned. release list does not show v2, a rollback to it is refused
// saying it was deleted, and release create of v2 is refused, with another
// artifact (naming both digests) or its own. The metrics count the
// deletion.
func TestOldReleasesDeleted(t *testing.T) {
	emb, cli := embeddedEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The leader's clock: ahead of the wall clock by ahead; read is the
	// wall time of its last reading.
	var ahead, read atomic.Int64
	metrics := make(chan string, 1)
	dir := t.TempDir()
	m := startMember(t, "a", emb, func(c *Config) {
		c.DataDir = dir
		c.artifactPruneEvery = time.Hour // no file deleted under the test (a refused create's)
		c.KeepReleaseArtifacts = 1
		c.ReleaseArtifactMinAge = time.Hour
		c.RolloutRetention = 24 * time.Hour
		c.pruneClock = func() time.Time {
			read.Store(time.Now().UnixNano())
			return time.Now().Add(time.Duration(ahead.Load()))
		}
		c.auditPruneEvery = 20 * time.Millisecond
		c.MetricsListen, c.MetricsReady = "127.0.0.1:0", func(a string) { metrics <- a }
	})
	sp := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}}
	if _, err := m.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
		t.Fatal(err)
	}
	startScripted(t, ctx, m.cc, "h1", map[string]string{})
	waitHosts(t, ctx, m.op, 1)
	arts := map[string]*v1.Artifact{}
	create := func(v string, data []byte) (*v1.CreateReleaseResponse, error) {
		t.Helper()
		art := upload(t, ctx, m.cc, data)
		arts[v] = art
		return m.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}})
	}
	for _, v := range []string{"v1", "v2", "v3", "v4", "v5"} {
		if _, err := create(v, []byte("artifact "+v)); err != nil {
			t.Fatal(err)
		}
		waitRollout(t, ctx, m.op, v+" succeeded", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		})
	}
	record := func(v string) (*v1.Release, bool) {
		t.Helper()
		resp, err := cli.Get(ctx, store.ReleaseKey("web", v))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return nil, false
		}
		rel := &v1.Release{}
		if err := proto.Unmarshal(resp.Kvs[0].Value, rel); err != nil {
			t.Fatal(err)
		}
		return rel, true
	}
	rolloutKept := func(id string) bool {
		t.Helper()
		_, err := m.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web", Id: id})
		if err != nil && status.Code(err) != codes.NotFound {
			t.Fatal(err)
		}
		return err == nil
	}

	// A coordinator from before tombstones is registered: the leader marks
	// artifacts and deletes old rollouts, but no release.
	old, err := proto.Marshal(&v1.CoordinatorInfo{Name: "old", ReadsSplitRollouts: true, ReadsEventBatches: true, ReadsCompactedRollouts: true, PrunesArtifacts: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, store.CoordinatorKey("old"), string(old)); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, ctx, m.op, "the old coordinator registered", func(s *v1.ClusterStatusResponse) bool { return len(s.GetCoordinators()) == 2 })
	ahead.Store(int64(30 * 24 * time.Hour))
	testkit.Eventually(t, 30*time.Second, "v1 and v3 marked pruned, the rollouts to v2 and v3 deleted", func() bool {
		for _, v := range []string{"v1", "v3"} {
			if r, ok := record(v); !ok || r.GetArtifactPrunedAt() == nil {
				return false
			}
		}
		return !rolloutKept("000002") && !rolloutKept("000003")
	})
	// A pruning pass ran after that and ended: a reading 50ms on, then
	// another.
	t0 := time.Now().Add(50 * time.Millisecond).UnixNano()
	var tA int64
	testkit.Eventually(t, 30*time.Second, "the leader's clock read 50ms on", func() bool { tA = read.Load(); return tA >= t0 })
	testkit.Eventually(t, 30*time.Second, "the leader's clock read again", func() bool { return read.Load() > tA })
	if r, ok := record("v2"); !ok {
		t.Fatal("v2 deleted while a coordinator that does not honor tombstones is registered")
	} else if r.GetArtifactPrunedAt() == nil {
		t.Fatal("v2 not marked pruned")
	}
	if _, err := cli.Delete(ctx, store.CoordinatorKey("old")); err != nil {
		t.Fatal(err)
	}

	testkit.Eventually(t, 30*time.Second, "v2's record deleted", func() bool { _, ok := record("v2"); return !ok })
	tomb, err := store.New(cli).GetReleaseTombstone(ctx, "web", "v2")
	if err != nil || tomb.GetSha256() != arts["v2"].GetSha256() || tomb.GetDeletedAt() == nil {
		t.Fatalf("v2's tombstone: %v, %v; want its sha256 %s and when", tomb, err, arts["v2"].GetSha256())
	}
	// Named by a kept rollout: the first (to v1), the rollback target's
	// (v3 to v4).
	if !rolloutKept("000001") || !rolloutKept("000004") {
		t.Fatal("the rollouts to v1 and v4 are gone: the test's premise")
	}
	for _, v := range []string{"v1", "v3"} {
		if r, ok := record(v); !ok || r.GetArtifactPrunedAt() == nil {
			t.Errorf("%s: record kept %v, its artifact pruned %v; want both (a kept rollout names it)", v, ok, r.GetArtifactPrunedAt())
		}
	}
	for _, v := range []string{"v4", "v5"} {
		if r, ok := record(v); !ok || r.GetArtifactPrunedAt() != nil {
			t.Errorf("%s: record kept %v, its artifact pruned at %v", v, ok, r.GetArtifactPrunedAt())
		}
	}
	ls, err := m.op.ListReleases(ctx, &v1.ListReleasesRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, r := range ls.GetReleases() {
		listed = append(listed, r.GetVersion())
	}
	if strings.Join(listed, " ") != "v1 v3 v4 v5" {
		t.Errorf("release list: %v, want v1 v3 v4 v5", listed)
	}

	// The leader counts a deletion after its transaction committed: the
	// scrape waits for it (and nothing else is left to delete: v1 and v3
	// are named by kept rollouts, v4 and v5 not pruned).
	addr := <-metrics
	var body []byte
	deleted := func() string {
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "fleetwave_coordinator_releases_deleted_total{") {
				return l
			}
		}
		return ""
	}
	testkit.EventuallyErr(t, 30*time.Second, "the deletion counted", func() error {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if body, err = io.ReadAll(resp.Body); err != nil {
			return err
		}
		if deleted() == "" {
			return errors.New("no fleetwave_coordinator_releases_deleted_total")
		}
		return nil
	})
	if got, want := deleted(), `fleetwave_coordinator_releases_deleted_total{service="web"} 1`; got != want {
		t.Errorf("metrics: %q, want %q", got, want)
	}
	promcheck.Check(t, body)

	// A rollback to it is refused, saying so.
	_, err = m.op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v2"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "service web release v2 was deleted at ") ||
		!strings.Contains(err.Error(), "to run its artifact (sha256 "+arts["v2"].GetSha256()+") again, create it under a new version") {
		t.Errorf("rollback to the deleted v2: %v", err)
	}
	// Its version with another artifact: refused, naming both digests,
	// before that artifact is looked at (its file's time is not set to
	// now, which would keep it from pruning).
	other := upload(t, ctx, m.cc, []byte("another artifact"))
	past := time.Now().Add(-25 * time.Hour).Truncate(time.Second)
	if err := os.Chtimes(artFile(dir, other.GetSha256()), past, past); err != nil {
		t.Fatal(err)
	}
	_, err = m.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v2", Artifact: other}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "version v2 was deleted at") ||
		!strings.Contains(err.Error(), "artifact sha256 "+tomb.GetSha256()) || !strings.Contains(err.Error(), "this release's is "+other.GetSha256()) {
		t.Errorf("v2 again with another artifact: %v", err)
	}
	if fi, err := os.Stat(artFile(dir, other.GetSha256())); err != nil {
		t.Error(err)
	} else if !fi.ModTime().Equal(past) {
		t.Errorf("the other artifact's file after the refused create: time %s, want it left at %s", fi.ModTime(), past)
	}
	if _, ok := record("v2"); ok {
		t.Fatal("v2 created with another artifact")
	}
	// With its own artifact: refused too (created again, it would be the
	// newest release and roll out at once).
	if _, err := create("v2", []byte("artifact v2")); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "is never created again") {
		t.Fatalf("v2 again with its artifact: %v", err)
	}
	if _, ok := record("v2"); ok {
		t.Fatal("v2 created again")
	}
	if _, err := store.New(cli).GetReleaseTombstone(ctx, "web", "v2"); err != nil {
		t.Errorf("v2's tombstone after the refused creates: %v", err)
	}
}
