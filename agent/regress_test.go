package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// stallServer answers GET with headers (and the declared length) and then
// sends nothing until the client goes away or the test ends.
type stallServer struct {
	*httptest.Server
	stalled   chan struct{} // one per request that reached the stall
	cancelled chan struct{} // one per request the client abandoned
}

func newStallServer(t *testing.T, size int) *stallServer {
	t.Helper()
	ss := &stallServer{stalled: make(chan struct{}, 16), cancelled: make(chan struct{}, 16)}
	end := make(chan struct{})
	ss.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		ss.stalled <- struct{}{}
		select {
		case <-r.Context().Done():
			ss.cancelled <- struct{}{}
		case <-end:
		}
	}))
	t.Cleanup(func() { close(end); ss.Close() })
	return ss
}

func recv(t *testing.T, what string, ch <-chan struct{}, d time.Duration) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// A fetch that hangs after the headers must not hold up a newer assignment:
// it is cancelled as soon as the newer one is waiting.
func TestNewerAssignmentSupersedesStalledFetch(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	ss := newStallServer(t, len(art))
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions()) // fetch timeout 30 min, idle 60 s

	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ss.URL+"/v1.tar.gz"))
	recv(t, "the v1 download to stall", ss.stalled, 10*time.Second)
	fc.assign(testAssignment("2.0.0", 2, d, int64(len(art)), ""))
	fc.waitFor(t, "v2 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	recv(t, "the stalled download to be cancelled", ss.cancelled, 10*time.Second)
	fc.mu.Lock()
	for _, r := range fc.reports {
		if r.GetPhase() == v1.Phase_PHASE_FAILED {
			t.Errorf("superseded fetch reported as a failure: %v", r)
		}
	}
	fc.mu.Unlock()
	cancel()
	waitDone(t, done)
}

// A download that stops sending fails after the idle deadline instead of
// waiting for the 30-minute fetch timeout.
func TestFetchIdleDeadline(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	ss := newStallServer(t, len(art))
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	opts := testOptions()
	opts.fetchIdle = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	fc.assign(testAssignment("1.0.0", 1, sha(art), int64(len(art)), ss.URL+"/v1.tar.gz"))
	fc.waitFor(t, "fetch failed on the idle deadline", 15*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 1, v1.Phase_PHASE_FAILED, "") && strings.Contains(r.GetReason(), "no data received for 200ms")
	})
	if n := len(ss.stalled); n != opts.fetchAttempts {
		t.Fatalf("%d attempts, want %d", n, opts.fetchAttempts)
	}
	cancel()
	waitDone(t, done)
}

// newLoopAgent is an agent without its loops: the test is the run loop and
// feeds it the events of its background steps.
func newLoopAgent(t *testing.T) *agent {
	t.Helper()
	dir := t.TempDir()
	inst, err := install.New(dir, install.Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{
		cfg:  Config{HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dir, MaxArtifactBytes: DefaultMaxArtifactBytes},
		opts: testOptions(), log: testLogger(t), inst: inst, store: store,
		rep: newReporter(spec.MaxServicesPerHost), conns: newConnHolder(), rnd: rand.New(rand.NewPCG(1, 2)),
		services: map[string]*service{}, events: make(chan any, 64), stopping: make(chan struct{}), ctx: ctx,
	}
	t.Cleanup(func() {
		close(a.stopping)
		cancel()
		a.wg.Wait()
		for _, s := range a.services {
			for _, p := range s.procs {
				if err := a.stopSupervisor(p.sup, p.grace); err != nil {
					t.Errorf("stop %s: %v", s.name, err)
				}
			}
		}
		stopServices(t, dir)
	})
	return a
}

func (a *agent) nextEvent(t *testing.T) any {
	t.Helper()
	select {
	case ev := <-a.events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event from a background step")
		return nil
	}
}

func tmpEntries(t *testing.T, dataDir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dataDir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// An install abandoned after its artifact was verified (a newer assignment
// was waiting) must delete the verified file from tmp/.
func TestAbandonedVerifiedArtifactIsDeleted(t *testing.T) {
	art := tarGz(t, map[string]string{"run.sh": runScript})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1" {
			http.NotFound(w, r)
			return
		}
		w.Write(art)
	}))
	defer hs.Close()
	a := newLoopAgent(t)
	s := &service{name: testSvc, m: lifecycle.New(testSvc)}
	a.services[testSvc] = s
	now := time.Now()
	a.step(s, lifecycle.Assign(testAssignment("1.0.0", 1, sha(art), int64(len(art)), hs.URL+"/v1"), now))
	a.handle(a.nextEvent(t)) // fetched: verify starts
	verified := a.nextEvent(t).(doneEv)
	if verified.verified == nil {
		t.Fatalf("verify: %v", verified.err)
	}
	if got := tmpEntries(t, a.cfg.DataDir); len(got) != 1 {
		t.Fatalf("tmp holds %v, want the verified artifact", got)
	}
	// v2 arrives while v1 is being verified; v1 is abandoned when verify ends.
	a.step(s, lifecycle.Assign(testAssignment("2.0.0", 2, strings.Repeat("b", 64), 10, hs.URL+"/v2"), now))
	a.handle(verified)
	if k, _ := s.m.InFlight(); k != lifecycle.ActFetch || lifecycle.Version(s.m.Snapshot().Target) != "2.0.0" {
		t.Fatalf("in flight %v, target %v: v1 not abandoned", k, s.m.Snapshot().Target)
	}
	if got := tmpEntries(t, a.cfg.DataDir); len(got) != 0 {
		t.Fatalf("abandoned verified artifact left in tmp/: %v", got)
	}
}

// A failed save of the state holds back everything after it (and the
// prune), and is retried on the next tick.
func TestFailedSaveHoldsLaterActions(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	var gets atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Write(art)
	}))
	defer hs.Close()
	var failing atomic.Bool
	var attempts, prunes atomic.Int64
	opts := testOptions()
	opts.saveHook = func(*lifecycle.Snapshot) error {
		attempts.Add(1)
		if failing.Load() {
			return errors.New("disk full (test)")
		}
		return nil
	}
	opts.pruneHook = func(string) { prunes.Add(1) }
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)

	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	testkit.Eventually(t, 10*time.Second, "the prune after v1 became healthy", func() bool { return prunes.Load() == 1 })

	noReportOf := func(gen int64) {
		t.Helper()
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, r := range fc.reports {
			if r.GetGeneration() == gen {
				t.Fatalf("report sent before its state was saved: %v", r)
			}
		}
	}
	// A settled phase whose save fails: no report, no prune until it is saved.
	failing.Store(true)
	base := attempts.Load()
	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""), testAssignment("3.0.0", 2, "not-a-digest", 10, ""))
	testkit.Eventually(t, 10*time.Second, "the save to be retried on ticks", func() bool { return attempts.Load() >= base+3 })
	noReportOf(2)
	if n := prunes.Load(); n != 1 {
		t.Fatalf("pruned %d times, but the FAILED state was never saved", n)
	}
	failing.Store(false)
	fc.waitFor(t, "gen 2 failed once saved", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_FAILED, "1.0.0")
	})
	testkit.Eventually(t, 10*time.Second, "the prune once saved", func() bool { return prunes.Load() == 2 })

	// An install whose FETCHING state cannot be saved does not fetch.
	failing.Store(true)
	base = attempts.Load()
	fc.assign(testAssignment("2.0.0", 3, d, int64(len(art)), hs.URL+"/v2.tar.gz"))
	testkit.Eventually(t, 10*time.Second, "the save to be retried on ticks", func() bool { return attempts.Load() >= base+3 })
	noReportOf(3)
	if n := gets.Load(); n != 0 {
		t.Fatalf("fetched %d times before the state was saved", n)
	}
	failing.Store(false)
	fc.waitFor(t, "v2 healthy once saved", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 3, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	if gets.Load() == 0 {
		t.Fatal("v2 never fetched")
	}
	cancel()
	waitDone(t, done)
}

// Pruning runs in the background (the loop goes on) and never overlaps a
// fetch of the same service.
func TestPruneInBackgroundBeforeNextFetch(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	var mu sync.Mutex
	var order []string
	note := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	got := make(chan struct{}, 8)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		note("fetch")
		got <- struct{}{}
		w.Write(art)
	}))
	defer hs.Close()
	started := make(chan struct{}, 8)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	var first atomic.Bool
	opts := testOptions()
	opts.pruneHook = func(string) {
		started <- struct{}{}
		if first.CompareAndSwap(false, true) {
			<-release
			note("prune done")
		}
	}
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)

	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))
	// The HEALTHY report comes while the prune it triggered is still blocked.
	fc.waitFor(t, "v1 healthy while its prune runs", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	recv(t, "the prune to start", started, 10*time.Second)
	fc.assign(testAssignment("2.0.0", 2, d, int64(len(art)), hs.URL+"/v2.tar.gz"))
	fc.waitFor(t, "v2 fetching", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_FETCHING, "1.0.0")
	})
	select {
	case <-got:
		t.Fatal("fetch started while a prune of the same service ran")
	case <-time.After(300 * time.Millisecond): // bounded wait for something that must not happen
	}
	unblock()
	fc.waitFor(t, "v2 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	mu.Lock()
	if len(order) < 2 || order[0] != "prune done" || order[1] != "fetch" {
		t.Errorf("order %v, want the prune done before the fetch", order)
	}
	mu.Unlock()
	cancel()
	waitDone(t, done)
}
