package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// withStage is a copy of asg that stages rel ahead of its wave.
func withStage(asg *v1.Assignment, version, sha string, size int64) *v1.Assignment {
	asg.Stage = &v1.Release{Service: testSvc, Version: version, Artifact: &v1.Artifact{Sha256: sha, Size: size}}
	return asg
}

// TestStageAhead: a stage is fetched, verified and unpacked without
// switching (the running release, its process and `current` stay) and
// reported as staged_sha256; a stage of another release (a new release
// superseding the rollout) drops the first and stages the second; when the
// wave comes the install uses the staged release and fetches nothing more.
func TestStageAhead(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	art3 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "three": "3"})
	d1, d2, d3 := fc.addArtifact(art1), fc.addArtifact(art2), fc.addArtifact(art3)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	v1asg := func() *v1.Assignment { return testAssignment("1.0.0", 1, d1, int64(len(art1)), "") }
	fc.assign(v1asg())
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	pid := readPID(t, pidFile)
	link := filepath.Join(dataDir, "releases", testSvc, "current")
	current := func() string {
		t.Helper()
		p, err := os.Readlink(link)
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Base(p)
	}
	relDir := func(v string) string { return filepath.Join(dataDir, "releases", testSvc, v) }

	fc.assign(withStage(v1asg(), "2.0.0", d2, int64(len(art2))))
	fc.waitFor(t, "v2 staged", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return r.GetStagedSha256() == d2 && reportIs(r, 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if _, err := os.Stat(filepath.Join(relDir("2.0.0"), "two")); err != nil {
		t.Fatalf("v2 not unpacked: %v", err)
	}
	if c := current(); c != "1.0.0" {
		t.Fatalf("current is %s after staging v2, want 1.0.0", c)
	}
	if p := readPID(t, pidFile); p != pid || !alive(pid) {
		t.Fatalf("the running process changed while staging: pid %d, was %d", p, pid)
	}

	// A new release supersedes the rollout: v3 is staged, v2 dropped.
	fc.assign(withStage(v1asg(), "3.0.0", d3, int64(len(art3))))
	fc.waitFor(t, "v3 staged", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return lastReport(rs, testSvc).GetStagedSha256() == d3
	})
	testkit.Eventually(t, 20*time.Second, "v2's release directory dropped", func() bool {
		_, err := os.Lstat(relDir("2.0.0"))
		return os.IsNotExist(err)
	})
	if c := current(); c != "1.0.0" {
		t.Fatalf("current is %s after staging v3, want 1.0.0", c)
	}

	// The wave comes: v3 installs from what is staged, nothing fetched again.
	fc.assign(testAssignment("3.0.0", 2, d3, int64(len(art3)), ""))
	fc.waitFor(t, "v3 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "3.0.0")
	})
	fc.mu.Lock()
	n3, n2 := fc.downloads[d3], fc.downloads[d2]
	last := lastReport(fc.reports, testSvc)
	fc.mu.Unlock()
	if n3 != 1 || n2 != 1 {
		t.Fatalf("downloads: v3 %d, v2 %d; want 1 each (the install fetched nothing)", n3, n2)
	}
	if last.GetStagedSha256() != "" {
		t.Fatalf("staged_sha256 %q still reported once installed", last.GetStagedSha256())
	}
	cancel()
	waitDone(t, done)
}

// The install of a release whose staging ahead is still in flight waits
// for it and fetches nothing more.
func TestStageAheadInFlight(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	d1, d2 := fc.addArtifact(art1), fc.addArtifact(art2)
	opts := testOptions()
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	opts.aheadHook = func(ctx context.Context, _, v string) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	v1asg := func() *v1.Assignment { return testAssignment("1.0.0", 1, d1, int64(len(art1)), "") }
	fc.assign(v1asg())
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})

	fc.assign(withStage(v1asg(), "2.0.0", d2, int64(len(art2))))
	recv(t, "the staging of v2 to reach its unpacking", started, 20*time.Second)
	fc.assign(testAssignment("2.0.0", 2, d2, int64(len(art2)), ""))
	close(release)
	fc.waitFor(t, "v2 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	fc.mu.Lock()
	n2 := fc.downloads[d2]
	fc.mu.Unlock()
	if n2 != 1 {
		t.Fatalf("v2 downloaded %d times, want 1", n2)
	}
	cancel()
	waitDone(t, done)
}

// TestStageAheadSourcesChange: an assignment that stages the same release
// (same version and sha256) from other sources, as the coordinator's plan
// gives when a holder the host stages from flaps (rollout.PlanStage: the
// host keeps its admission, its first source changes), leaves the staging
// in flight alone: it is not cancelled, what it fetched is kept, and the
// release is fetched once (its fetch falls back between the sources it
// was given and the coordinator: TestPeerFetchResumesAtOffset,
// TestPeerFetchFallsBackToCoordinator).
func TestStageAheadSourcesChange(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	d1, d2 := fc.addArtifact(art1), fc.addArtifact(art2)
	opts := testOptions()
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	cancelled := make(chan bool, 2)
	opts.aheadHook = func(ctx context.Context, _, v string) {
		started <- struct{}{}
		select {
		case <-release:
			cancelled <- false
		case <-ctx.Done():
			cancelled <- true
		}
	}
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	v1asg := func() *v1.Assignment { return testAssignment("1.0.0", 1, d1, int64(len(art1)), "") }
	fc.assign(v1asg())
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})

	fc.assign(withStage(v1asg(), "2.0.0", d2, int64(len(art2))))
	recv(t, "the staging of v2 to reach its unpacking", started, 20*time.Second)
	// The same stage from other sources (a holder that nothing serves
	// from: the staging in flight must not start over), with an invalid
	// assignment of another service in the same set: its report says the
	// set was handled.
	moved := withStage(v1asg(), "2.0.0", d2, int64(len(art2)))
	moved.Sources = []*v1.ArtifactSource{{HostId: "other-holder", Address: ports.Addr(t)}}
	fc.assign(moved, &v1.Assignment{Service: "marker", Generation: 1})
	fc.waitFor(t, "the set with the new sources handled", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return lastReport(rs, "marker") != nil
	})
	close(release)
	fc.waitFor(t, "v2 staged", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return lastReport(rs, testSvc).GetStagedSha256() == d2
	})
	if <-cancelled {
		t.Fatal("the staging in flight was cancelled when only its sources changed")
	}
	select {
	case <-started:
		t.Fatal("a second staging started when only the sources changed")
	default:
	}
	fc.mu.Lock()
	n2 := fc.downloads[d2]
	fc.mu.Unlock()
	if n2 != 1 {
		t.Fatalf("v2 downloaded %d times, want 1", n2)
	}
	cancel()
	waitDone(t, done)
}

// A stage is checked as an install's release is (validateRelease, and with
// trusted keys its signature and the floor, which it does not raise); the
// error names the field and the value.
func TestCheckStage(t *testing.T) {
	k := newTestKey(t)
	sha := strings.Repeat("a", 64)
	base := func() *v1.Assignment { return withStage(testAssignment("1.0.0", 1, sha, 10, ""), "2.0.0", sha, 10) }
	a := &agent{cfg: Config{MaxArtifactBytes: 100, DataDir: t.TempDir()}}
	s := &service{name: testSvc}
	now := time.Now()
	for _, c := range []struct {
		name string
		rel  func(*v1.Release)
		want string
	}{
		{"good", func(*v1.Release) {}, ""},
		{"bad version", func(r *v1.Release) { r.Version = "../x" }, "stage.version"},
		{"reserved version", func(r *v1.Release) { r.Version = "current" }, `stage.version: "current" is reserved`},
		{"bad sha256", func(r *v1.Release) { r.Artifact.Sha256 = "zz" }, "stage.artifact.sha256"},
		{"no artifact", func(r *v1.Release) { r.Artifact = nil }, "stage.artifact: missing"},
		{"too large", func(r *v1.Release) { r.Artifact.Size = 101 }, "stage.artifact.size: 101 is over the cap of 100 bytes"},
		{"other service", func(r *v1.Release) { r.Service = "api" }, `stage.service: "api" is not the assigned service`},
		{"bad url", func(r *v1.Release) { r.Artifact.Url = "file:///etc/passwd" }, "stage.artifact.url"},
	} {
		asg := base()
		c.rel(asg.Stage)
		err := a.checkStage(s, asg.GetStage(), now)
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}

	keys, err := loadTrustedKeys([]string{k.pubFile})
	if err != nil {
		t.Fatal(err)
	}
	a.trusted = keys
	if err := a.checkStage(s, base().GetStage(), now); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("unsigned stage with trusted keys: err %v, want refused", err)
	}
	// Signed (as the release of an assignment of it), above the floor: ok,
	// and the floor does not move.
	signed := k.signSeq(t, testAssignment("2.0.0", 2, sha, 10, ""), 5, now.Add(-time.Minute), now.Add(time.Hour))
	if err := a.checkStage(s, signed.GetRelease(), now); err != nil {
		t.Fatalf("signed stage: %v", err)
	}
	if fl, _ := a.floors.get(testSvc); fl.Sequence != 0 {
		t.Fatalf("staging raised the floor to %d", fl.Sequence)
	}
	if err := a.floors.raise(testSvc, floor{Sequence: 7, Version: "3.0.0", ArtifactSHA256: sha}); err != nil {
		t.Fatal(err)
	}
	if err := a.checkStage(s, signed.GetRelease(), now); err == nil || !strings.Contains(err.Error(), "floor") {
		t.Fatalf("stage below the floor: err %v, want a floor error", err)
	}
}

// A staging that fails is reported (stage_failed_sha256) so that the
// coordinator gives its admission slot to another waiting host; the report
// carries it until a staging starts again, and a staging that then works
// clears it.
func TestStageAheadFailureReported(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	d1, d2 := fc.addArtifact(art1), fc.addArtifact(art2)
	missing := strings.Repeat("ab", 32) // the coordinator does not have it
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	v1asg := func() *v1.Assignment { return testAssignment("1.0.0", 1, d1, int64(len(art1)), "") }
	fc.assign(v1asg())
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	fc.assign(withStage(v1asg(), "2.0.0", missing, 100))
	fc.waitFor(t, "the failed staging reported", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return r.GetStageFailedSha256() == missing && r.GetStagedSha256() == "" && reportIs(r, 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	fc.assign(withStage(v1asg(), "2.1.0", d2, int64(len(art2))))
	fc.waitFor(t, "v2.1 staged, the failure cleared", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return r.GetStagedSha256() == d2 && r.GetStageFailedSha256() == ""
	})
	cancel()
	waitDone(t, done)
}

// A removal of the service while a staging ahead is in flight waits for
// the staging to end: before, RemoveService ran beside it and the staging,
// cancelled but already past its fetch, recreated the service's releases
// directory after the removal (left behind by a removed service).
func TestStageAheadThenRemove(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	d1, d2 := fc.addArtifact(art1), fc.addArtifact(art2)
	dataDir := t.TempDir()
	sdir := filepath.Join(dataDir, "releases", testSvc)
	opts := testOptions()
	started := make(chan struct{}, 1)
	hookDone := make(chan struct{})
	opts.aheadHook = func(ctx context.Context, _, v string) {
		defer close(hookDone)
		started <- struct{}{}
		<-ctx.Done() // the removal cancels the staging
		// A slow unpack: the staging goes on a little after its cancel.
		// Fixed, the removal waits for it and this wait runs out; before,
		// the removal ran meanwhile.
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Lstat(sdir); os.IsNotExist(err) {
				return
			}
		}
	}
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	v1asg := func() *v1.Assignment { return testAssignment("1.0.0", 1, d1, int64(len(art1)), "") }
	fc.assign(v1asg())
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	fc.assign(withStage(v1asg(), "2.0.0", d2, int64(len(art2))))
	recv(t, "the staging of v2 to reach its unpacking", started, 20*time.Second)
	fc.assign(&v1.Assignment{Service: testSvc, Generation: 5, Remove: true})
	fc.waitFor(t, "removed", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 5, v1.Phase_PHASE_REMOVED, "")
	})
	<-hookDone
	cancel()
	waitDone(t, done) // every background job ended
	if _, err := os.Lstat(sdir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after the removal (%v)", sdir, err)
	}
}

// After an agent restart, a stage it had staged before is found on disk
// (same digest) and reported again without fetching anything.
func TestStageAheadAfterRestart(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	d1, d2 := fc.addArtifact(art1), fc.addArtifact(art2)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	staged := func() *v1.Assignment {
		return withStage(testAssignment("1.0.0", 1, d1, int64(len(art1)), ""), "2.0.0", d2, int64(len(art2)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	fc.assign(staged())
	fc.waitFor(t, "v2 staged", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return r.GetStagedSha256() == d2 && reportIs(r, 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	cancel()
	waitDone(t, done)

	fc.mu.Lock()
	fc.reports = nil
	fc.mu.Unlock()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	done = runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "v2 reported staged again", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return lastReport(rs, testSvc).GetStagedSha256() == d2
	})
	fc.mu.Lock()
	n2 := fc.downloads[d2]
	fc.mu.Unlock()
	if n2 != 1 {
		t.Fatalf("v2 downloaded %d times, want 1 (found staged after the restart)", n2)
	}
	cancel()
	waitDone(t, done)
}

// TestStagedReportedThroughInstall: when the wave comes for a release the
// host holds staged, its reports keep staged_sha256 until the install of
// that release ends (healthy here), then drop it. The host holds the
// artifact all along; a report without it while the host is UPDATING made
// the coordinator's plan (rollout.PlanStage: an UPDATING host that is not
// staged is a future holder) take the admission of the hosts staging from
// it away until it was DONE: their agents cancelled their stagings and
// dropped what they had fetched (scenario flap.txt). Before, the handoff
// cleared it at once.
func TestStagedReportedThroughInstall(t *testing.T) {
	fc := newFakeCoordinator(t)
	art1 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	art2 := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "two": "2"})
	d1, d2 := fc.addArtifact(art1), fc.addArtifact(art2)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	v1asg := func() *v1.Assignment { return testAssignment("1.0.0", 1, d1, int64(len(art1)), "") }
	fc.assign(v1asg())
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	fc.assign(withStage(v1asg(), "2.0.0", d2, int64(len(art2))))
	fc.waitFor(t, "v2 staged", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return lastReport(rs, testSvc).GetStagedSha256() == d2
	})

	// The wave comes; its checks hold the install in CHECKING long enough
	// for that report to be sent on its own.
	v2 := testAssignment("2.0.0", 2, d2, int64(len(art2)), "")
	v2.Spec.MinHealthyTime = durationpb.New(3 * time.Second)
	fc.assign(v2)
	var checking *v1.ServiceReport
	fc.waitFor(t, "v2 checking", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		for _, r := range rs {
			if r.GetService() == testSvc && r.GetGeneration() == 2 && r.GetPhase() == v1.Phase_PHASE_CHECKING {
				checking = r
				return true
			}
		}
		return false
	})
	if checking.GetStagedSha256() != d2 {
		t.Errorf("installing the staged v2 (%s): staged_sha256 %q, want %q (the host holds it)", checking.GetPhase(), checking.GetStagedSha256(), d2)
	}
	fc.waitFor(t, "v2 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	fc.mu.Lock()
	last := lastReport(fc.reports, testSvc)
	fc.mu.Unlock()
	if last.GetStagedSha256() != "" {
		t.Fatalf("staged_sha256 %q still reported once installed", last.GetStagedSha256())
	}
	cancel()
	waitDone(t, done)
}
