package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestRemoveStopsTheServiceAndRemovesItsFiles: a removal stops the
// process and removes the service's releases, `current`, PID file and
// state; the log stays. A release assigned afterwards, at a lower
// generation, installs. Real processes.
func TestRemoveStopsTheServiceAndRemovesItsFiles(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	fc.assign(testAssignment("1.0.0", 1, digest, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	pid := readPID(t, pidFile)
	stateFile := filepath.Join(dataDir, "state", testSvc+".json")
	if _, err := os.Stat(stateFile); err != nil {
		t.Fatalf("state before the removal: %v", err)
	}

	fc.assign(&v1.Assignment{Service: testSvc, Generation: 5, Remove: true})
	fc.waitFor(t, "removed", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 5, v1.Phase_PHASE_REMOVED, "")
	})
	if alive(pid) {
		t.Errorf("the service (pid %d) still runs", pid)
	}
	for _, p := range []string{filepath.Join(dataDir, "releases", testSvc), pidFile, stateFile} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after the removal (%v)", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, "logs", testSvc+".log")); err != nil {
		t.Errorf("the service log is gone: %v", err)
	}

	// Removed: a release assigned later installs, whatever its generation.
	fc.assign(testAssignment("1.0.0", 2, digest, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy again", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if p := readPID(t, pidFile); !alive(p) || p == pid {
		t.Errorf("after the new install: pid %d (removed one %d)", p, pid)
	}
	cancel()
	waitDone(t, done)
}

// reconnect stops fc (its streams end) and serves a new fake coordinator at
// its address, which the agent reconnects to; it returns the new one.
func reconnect(t *testing.T, fc *fakeCoordinator) *fakeCoordinator {
	t.Helper()
	fc.srv.Stop()
	return newFakeCoordinatorAt(t, fc.addr)
}

// TestRemovedServicesForgotten: a host that runs short-lived services (one
// per branch, say) removes them one after another; the agent keeps
// tracking only the newest maxRemovedKept removed ones, so its memory and
// its Hello do not grow with every name it ever ran (before, every removed
// name stayed in each Hello until a restart, and past
// spec.MaxServicesPerHost coordinators refused the Hello: a review).
func TestRemovedServicesForgotten(t *testing.T) {
	fc := newFakeCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: t.TempDir(), AgentVersion: "test"}
	done := runAgent(t, ctx, cfg, testOptions())

	const n = maxRemovedKept + 20
	var removals []*v1.Assignment
	for i := range n {
		removals = append(removals, &v1.Assignment{Service: fmt.Sprintf("branch-%03d", i), Generation: 1, Remove: true})
	}
	removedAll := func(names ...string) func([]*v1.Hello, []*v1.ServiceReport) bool {
		return func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			for _, name := range names {
				if lastReport(rs, name).GetPhase() != v1.Phase_PHASE_REMOVED {
					return false
				}
			}
			return true
		}
	}
	var names []string
	for _, r := range removals {
		names = append(names, r.GetService())
	}
	// In two sets, the oldest ones first: removals run side by side, so
	// within one set they end (and are persisted, which orders them) in
	// any order.
	old := n - maxRemovedKept
	fc.assign(slices.Clone(removals[:old])...)
	fc.waitFor(t, "the oldest branches removed", time.Minute, removedAll(names[:old]...))
	fc.assign(slices.Clone(removals[old:])...)
	fc.waitFor(t, "every branch removed", time.Minute, removedAll(names...))
	// The next set (one more removal) finds n removed services, all
	// reported: the oldest ones are forgotten.
	fc.assign(&v1.Assignment{Service: "marker", Generation: 1, Remove: true})
	fc.waitFor(t, "marker removed", time.Minute, removedAll("marker"))

	fc2 := reconnect(t, fc)
	fc2.waitFor(t, "a new hello", time.Minute, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) > 0 })
	fc2.mu.Lock()
	hello := fc2.hellos[0]
	fc2.mu.Unlock()
	got := map[string]bool{}
	for _, r := range hello.GetServices() {
		got[r.GetService()] = true
	}
	if len(got) != maxRemovedKept+1 || !got["marker"] {
		t.Fatalf("the hello after %d removals reports %d services (marker: %v), want the newest %d removals and the marker", n+1, len(got), got["marker"], maxRemovedKept)
	}
	for _, name := range names[:n-maxRemovedKept] {
		if got[name] {
			t.Errorf("%s (among the oldest removals) still in the hello", name)
		}
	}
	cancel()
	waitDone(t, done)
}

// TestServicesPerHostBounded: a coordinator (misconfigured, or compromised)
// assigning more services than spec.MaxServicesPerHost makes the agent
// track and persist that many at most: the names past it get no machine and
// no state file, and the agent's Hello stays one coordinators accept (before,
// one set of 1,001 assignments left 1,001 state files, and every Hello
// after, at every restart, was refused: the host was cut off for good: a
// review).
func TestServicesPerHostBounded(t *testing.T) {
	fc := newFakeCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: dataDir, AgentVersion: "test"}
	done := runAgent(t, ctx, cfg, testOptions())

	const extra = 5
	var set []*v1.Assignment
	for i := range spec.MaxServicesPerHost + extra {
		// No release: each one is invalid, FAILED and persisted.
		set = append(set, &v1.Assignment{Service: fmt.Sprintf("svc-%04d", i), Generation: 1})
	}
	fc.assign(set...)
	fc.waitFor(t, "the services the host takes failed", 2*time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		for _, a := range set[:spec.MaxServicesPerHost] {
			if lastReport(rs, a.GetService()).GetPhase() != v1.Phase_PHASE_FAILED {
				return false
			}
		}
		return true
	})
	fc2 := reconnect(t, fc)
	fc2.waitFor(t, "a new hello", time.Minute, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) > 0 })
	fc2.mu.Lock()
	hello := fc2.hellos[0]
	fc2.mu.Unlock()
	if n := len(hello.GetServices()); n != spec.MaxServicesPerHost {
		t.Fatalf("the hello reports %d services, want %d", n, spec.MaxServicesPerHost)
	}
	for _, a := range set[spec.MaxServicesPerHost:] {
		for _, r := range hello.GetServices() {
			if r.GetService() == a.GetService() {
				t.Errorf("%s (past the bound) reported", a.GetService())
			}
		}
		if _, err := os.Stat(filepath.Join(dataDir, "state", a.GetService()+".json")); !os.IsNotExist(err) {
			t.Errorf("%s (past the bound) has a state file (%v)", a.GetService(), err)
		}
	}
	cancel()
	waitDone(t, done)
}

// TestHelloLeavesOutRemovedPastTheBound: a Hello never reports more than
// spec.MaxServicesPerHost services: REMOVED reports go first (a removal a
// coordinator did not see is assigned again, and done at once).
func TestHelloLeavesOutRemovedPastTheBound(t *testing.T) {
	r := newReporter(spec.MaxServicesPerHost)
	for i := range spec.MaxServicesPerHost - 2 {
		r.put(&v1.ServiceReport{Service: fmt.Sprintf("svc-%04d", i), Phase: v1.Phase_PHASE_HEALTHY})
	}
	for i := range 5 {
		r.put(&v1.ServiceReport{Service: fmt.Sprintf("gone-%d", i), Phase: v1.Phase_PHASE_REMOVED})
	}
	h := r.hello(Config{HostID: testHostID})
	removed := 0
	for _, s := range h.GetServices() {
		if s.GetPhase() == v1.Phase_PHASE_REMOVED {
			removed++
		}
	}
	if len(h.GetServices()) != spec.MaxServicesPerHost || removed != 2 {
		t.Fatalf("hello of %d services (%d removed), want %d with 2 removed", len(h.GetServices()), removed, spec.MaxServicesPerHost)
	}
	// The three left out go as reports after the hello.
	if rest := r.take(); len(rest) != 3 || rest[0].GetPhase() != v1.Phase_PHASE_REMOVED {
		t.Fatalf("after the hello %d reports to send (%v), want the 3 removed ones left out", len(rest), rest)
	}
	// More services than a host takes (states an older agent left): the
	// last names are left out too, and sent after.
	r = newReporter(3)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		r.put(&v1.ServiceReport{Service: n, Phase: v1.Phase_PHASE_HEALTHY})
	}
	h = r.hello(Config{HostID: testHostID})
	if len(h.GetServices()) != 3 || h.GetServices()[2].GetService() != "c" {
		t.Fatalf("hello %v, want a, b and c", h.GetServices())
	}
	if rest := r.take(); len(rest) != 2 || rest[0].GetService() != "d" {
		t.Fatalf("after the hello %v, want d and e to send", rest)
	}
}

// TestServicesPerHostCountsWhatASetLeaves: the bound counts the services a
// set leaves running. A removed service assigned again counts as one
// brought in (with the host full, a new name in the same set is refused);
// a set that removes one service makes room for a new one at once, while
// the removal still runs. (Before, a removed service assigned again was
// not counted, so a host could take 1,001 and be cut off, and a set
// swapping one service for another at the bound refused the new one for
// good, the coordinator sending that set once: a review.)
func TestServicesPerHostCountsWhatASetLeaves(t *testing.T) {
	fc := newFakeCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: t.TempDir(), AgentVersion: "test"}
	opts := testOptions()
	const bound = 20 // spec.MaxServicesPerHost: TestServicesPerHostBounded
	opts.maxServices = bound
	done := runAgent(t, ctx, cfg, opts)
	name := func(i int) string { return fmt.Sprintf("svc-%04d", i) }
	// marker sorts after every service: its report says the set was taken
	// (names are taken in order).
	marker := func(gen int64) *v1.Assignment {
		return &v1.Assignment{Service: "zz-marker", Generation: gen, Remove: true}
	}
	markerDone := func(gen int64) func([]*v1.Hello, []*v1.ServiceReport) bool {
		return func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			r := lastReport(rs, "zz-marker")
			return r.GetPhase() == v1.Phase_PHASE_REMOVED && r.GetGeneration() == gen
		}
	}
	reported := func(svc string) *v1.ServiceReport {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return lastReport(fc.reports, svc)
	}

	// svc-0000 removed, 999 others (invalid: FAILED, persisted).
	set := []*v1.Assignment{{Service: name(0), Generation: 1, Remove: true}}
	for i := 1; i < bound; i++ {
		set = append(set, &v1.Assignment{Service: name(i), Generation: 1})
	}
	// Each set a fresh slice: the fake coordinator compares it with the
	// last one it sent.
	with := func(extra ...*v1.Assignment) []*v1.Assignment { return append(slices.Clone(set), extra...) }
	fc.assign(with(marker(1))...)
	fc.waitFor(t, "the first set taken", 2*time.Minute, markerDone(1))

	// svc-0000 assigned again and a new svc-1000: room for one, the first.
	set[0] = &v1.Assignment{Service: name(0), Generation: 2}
	fc.assign(with(&v1.Assignment{Service: name(bound), Generation: 1}, marker(2))...)
	fc.waitFor(t, "the second set taken", 2*time.Minute, markerDone(2))
	if r := reported(name(0)); r.GetGeneration() != 2 {
		t.Fatalf("%s assigned again: last report %v, want it taken (generation 2)", name(0), r)
	}
	if r := reported(name(bound)); r != nil {
		t.Fatalf("%s past the bound taken: %v", name(bound), r)
	}

	// svc-0001 removed and svc-1000 brought in by one set: taken at once.
	set[1] = &v1.Assignment{Service: name(1), Generation: 2, Remove: true}
	fc.assign(with(&v1.Assignment{Service: name(bound), Generation: 1}, marker(3))...)
	fc.waitFor(t, "the swap taken", 2*time.Minute, func(hs []*v1.Hello, rs []*v1.ServiceReport) bool {
		return markerDone(3)(hs, rs) && lastReport(rs, name(bound)) != nil &&
			lastReport(rs, name(1)).GetPhase() == v1.Phase_PHASE_REMOVED
	})

	fc2 := reconnect(t, fc)
	fc2.waitFor(t, "a new hello", time.Minute, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) > 0 })
	fc2.mu.Lock()
	hello := fc2.hellos[0]
	fc2.mu.Unlock()
	running := 0
	for _, r := range hello.GetServices() {
		if r.GetPhase() != v1.Phase_PHASE_REMOVED {
			running++
		}
	}
	if len(hello.GetServices()) > bound || running != bound {
		t.Fatalf("the hello reports %d services, %d not removed; want at most %d, %d not removed", len(hello.GetServices()), running, bound, bound)
	}
	cancel()
	waitDone(t, done)
}

// TestRemovedServiceLogsDeleted: the logs of a service the host no longer
// runs (removed here, or left by a service removed before a restart) are
// deleted once last written more than Config.RemovedLogRetention ago
// (the default, 7 days: files are aged with Chtimes); a running service's
// log, a log whose PID file exists, a recent one and files not named as
// service logs are kept. Before, every removed service's logs stayed for
// ever. Real processes.
func TestRemovedServiceLogsDeleted(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	digest := fc.addArtifact(art)
	crashArt := tarGz(t, map[string]string{"run.sh": "#!/bin/sh\necho dying\nexit 1\n", "check.sh": goodCheck})
	crashDigest := fc.addArtifact(crashArt)
	dataDir := t.TempDir()
	logs := filepath.Join(dataDir, "logs")
	old := time.Now().Add(-DefaultRemovedLogRetention - 24*time.Hour)
	write := func(name string, mtime time.Time) {
		t.Helper()
		p := filepath.Join(logs, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("a line\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(logs, name))
		return err == nil
	}
	gone := []string{"gone.log", "gone.log.1", "gone.log.12", "gone.log.1.tmp"}
	kept := []string{"fresh.log", "notes.txt", "Gone.log", "gone.log.01", "gone.log.tmp", "gone.logs", "held.log"}
	for _, n := range gone {
		write(n, old)
	}
	for _, n := range kept {
		write(n, old)
	}
	write("fresh.log", time.Now().Add(-24*time.Hour)) // within the retention
	if err := os.MkdirAll(filepath.Join(dataDir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "run", "held.pid"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	opts := testOptions()
	opts.logRotate = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	waitGone := func(what string, names ...string) {
		t.Helper()
		testkit.EventuallyErr(t, 30*time.Second, what, func() error {
			for _, n := range names {
				if exists(n) {
					return fmt.Errorf("%s still there", n)
				}
			}
			return nil
		})
	}
	waitGone("the old logs of a service unknown to the agent deleted", gone...)

	// "crash" fails its first install (its process exits at once): it
	// runs no process, and its log holds what an operator needs.
	crash := testAssignment("1.0.0", 1, crashDigest, int64(len(crashArt)), "")
	crash.Service, crash.Release.Service, crash.Spec.Name = "crash", "crash", "crash"
	crash.Spec.HealthyDeadline = durationpb.New(time.Second)
	fc.assign(testAssignment("1.0.0", 1, digest, int64(len(art)), ""), crash)
	fc.waitFor(t, "web healthy, crash failed", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0") &&
			reportIs(lastReport(rs, "crash"), 1, v1.Phase_PHASE_FAILED, "")
	})
	// The running service's log and the failed one's aged past the
	// retention: kept. A pass after the aging (it deletes a file written
	// after it) proves it.
	write(testSvc+".log", old)
	write("crash.log", old)
	write("later.log", old)
	waitGone("a pass after the tracked services' logs aged", "later.log")
	for _, n := range append(kept, testSvc+".log", "crash.log") {
		if !exists(n) {
			t.Errorf("%s deleted", n)
		}
	}

	fc.assign(&v1.Assignment{Service: testSvc, Generation: 5, Remove: true})
	fc.waitFor(t, "removed", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 5, v1.Phase_PHASE_REMOVED, "")
	})
	// Its log says it was removed, and its retention counts from then:
	// kept, though the service wrote nothing since it was aged above.
	b, err := os.ReadFile(filepath.Join(logs, testSvc+".log"))
	if err != nil || !strings.Contains(string(b), "service removed from this host") {
		t.Fatalf("the removed service's log: %q, %v; want its last line to say it was removed", b, err)
	}
	write("later2.log", old)
	waitGone("a pass after the removal", "later2.log")
	if !exists(testSvc + ".log") {
		t.Fatalf("the removed service's log deleted at its removal")
	}
	write(testSvc+".log.1", old)
	if err := os.Chtimes(filepath.Join(logs, testSvc+".log"), old, old); err != nil {
		t.Fatal(err)
	}
	waitGone("the removed service's logs deleted once aged", testSvc+".log", testSvc+".log.1")
	for _, n := range kept {
		if !exists(n) {
			t.Errorf("%s deleted", n)
		}
	}
	cancel()
	waitDone(t, done)
}

// TestLogOf: the names the log pruning takes for a service's logs, and the
// ones it leaves alone.
func TestLogOf(t *testing.T) {
	for name, want := range map[string]string{
		"web.log": "web", "web.log.1": "web", "web.log.10": "web", "web.log.1.tmp": "web", "a-b9.log.3": "a-b9",
		"web.log.0": "", "web.log.01": "", "web.log.tmp": "", "web.log.2.tmp": "", "web.logs": "", "web.log.": "",
		"Web.log": "", "-web.log": "", ".log": "", "web": "", "web.txt": "", "a.b.log": "", "web.log.1x": "",
	} {
		got, ok := logOf(name)
		if got != want || ok != (want != "") {
			t.Errorf("logOf(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

// TestHelloWithinCoordinatorsMessageLimit: 100 services, each failing 64
// checks with details of 1 KiB (what a report may carry), weigh 6.5 MiB:
// the Hello carries what fits in maxHelloBytes (REMOVED reports left out
// first) and the rest go as reports after it, each well under the
// coordinators' 4 MiB. Before, the Hello was refused at every connection
// and the host cut off (an attack review).
func TestHelloWithinCoordinatorsMessageLimit(t *testing.T) {
	r := newReporter(spec.MaxServicesPerHost)
	detail := strings.Repeat("d", 1024)
	for i := range 100 {
		rep := &v1.ServiceReport{Service: fmt.Sprintf("svc-%03d", i), Phase: v1.Phase_PHASE_FAILED}
		if i%10 == 0 {
			rep.Phase = v1.Phase_PHASE_REMOVED
		}
		for c := range 64 {
			rep.Checks = append(rep.Checks, &v1.CheckResult{Name: fmt.Sprintf("check-%d", c), Detail: detail})
		}
		r.put(rep)
	}
	h := r.hello(Config{HostID: testHostID})
	if n := proto.Size(h); n > maxHelloBytes || n < maxHelloBytes/2 {
		t.Fatalf("hello of %d bytes, want at most %d (and not much less)", n, maxHelloBytes)
	}
	in := map[string]bool{}
	for _, s := range h.GetServices() {
		in[s.GetService()] = true
		if s.GetPhase() == v1.Phase_PHASE_REMOVED {
			t.Errorf("%s (removed) in the hello while others were left out", s.GetService())
		}
	}
	rest := r.take()
	for _, s := range rest {
		if in[s.GetService()] {
			t.Errorf("%s both in the hello and after it", s.GetService())
		}
		if n := proto.Size(s); n > 1<<20 {
			t.Errorf("report of %s: %d bytes", s.GetService(), n)
		}
	}
	if len(in)+len(rest) != 100 {
		t.Fatalf("%d in the hello and %d after it, want all 100", len(in), len(rest))
	}
}
