package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// tortureSpec is the demo service with the handover (sockets, ready:
// notify) and every hook, each a little slow so that a kill can land in
// it. FW_ROUND in run.env names the spec: a config-only change changes it.
// The validate hook fails when the release carries VALIDATE_FAIL.
const tortureSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp"]
  env: {FW_ROUND: "%d"}
  sockets: [{name: http, listen: "127.0.0.1:${host.label.port}"}]
  ready: notify
  ready_timeout: 2s
  stop_grace: 5s
hooks:
  after_install: {command: ["/bin/sh", "-c", "echo after_install $FLEETWAVE_VERSION; sleep 0.2; echo after_install done"], timeout: 10s}
  before_start: {command: ["/bin/sh", "-c", "echo before_start $FLEETWAVE_VERSION; sleep 0.1; echo before_start done"], timeout: 10s}
  after_start: {command: ["/bin/sh", "-c", "echo after_start $FLEETWAVE_VERSION; sleep 0.1; echo after_start done"], timeout: 10s}
  validate: {command: ["/bin/sh", "-c", "echo validate $FLEETWAVE_VERSION; sleep 0.1; test ! -e VALIDATE_FAIL"], timeout: 10s}
  before_stop: {command: ["/bin/sh", "-c", "echo before_stop $FLEETWAVE_VERSION; sleep 0.1; echo before_stop done"], timeout: 10s}
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
    interval: 200ms
    timeout: 1s
min_healthy_time: 1s
healthy_deadline: 3s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
  bake: 0s
  progress_deadline: 2m
  stage_ahead: true
`

func tortureEnvInt(t *testing.T, name string, def int64) int64 {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return v
}

// TestAgentKilledAtRandomConverges: round after round, a new rollout (a good
// release, a release whose health check fails, one whose validate hook
// fails, or a config-only change), the agent SIGKILLed after a random delay
// (landing in fetch, stage, hooks, switch, start, checks, revert or after),
// restarted, and once the rollout ended and the host settled, the host's
// invariants: one process of the service, of the release `current` names,
// the agent reports and the rollout's outcome calls for, with the spec
// expected; no leftovers; the agent's files and goroutines not growing; no
// request of a client loop refused (the service has sockets: README,
// "Services outlive the agent").
//
// FLEETWAVE_TORTURE_SEED (default 1), FLEETWAVE_TORTURE_ROUNDS (default 8),
// FLEETWAVE_TORTURE_MAX_DELAY_MS (default 3000), FLEETWAVE_TORTURE_HOSTS
// (default 1) and FLEETWAVE_TORTURE_KILLS (kills a round, default 1: more
// land in the recovery of the agent killed before) replay or widen the
// hunt. The seed and every kill's moment are logged.
func TestAgentKilledAtRandomConverges(t *testing.T) {
	seed := tortureEnvInt(t, "FLEETWAVE_TORTURE_SEED", 1)
	rounds := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_ROUNDS", 8))
	maxDelay := time.Duration(tortureEnvInt(t, "FLEETWAVE_TORTURE_MAX_DELAY_MS", 3000)) * time.Millisecond
	nHosts := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_HOSTS", 1))
	kills := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_KILLS", 1))
	t.Logf("torture: FLEETWAVE_TORTURE_SEED=%d FLEETWAVE_TORTURE_ROUNDS=%d FLEETWAVE_TORTURE_MAX_DELAY_MS=%d FLEETWAVE_TORTURE_HOSTS=%d FLEETWAVE_TORTURE_KILLS=%d",
		seed, rounds, maxDelay.Milliseconds(), nHosts, kills)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x70727475))

	e := newFleetEnv(t, nHosts)
	specRev := 0
	applySpec := func() {
		specRev++
		e.apply("web", fmt.Sprintf(tortureSpec, specRev))
	}
	applySpec()
	if code := e.release("web", "v0", nil); code != 0 {
		t.Fatalf("v0 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v0")
	stable, stableSpec := "v0", specRev
	load := e.fleet.StartLoad(e.ctx, "round 0", 2, 20*time.Millisecond)
	defer load.Stop()

	type sample struct{ fds, goroutines float64 }
	var first map[string]sample
	start := time.Now()
	seen := map[string]int{} // log path → bytes already looked at
	for round := 1; round <= rounds; round++ {
		roundStart := time.Now()
		kind := []string{"good", "good", "bad-health", "bad-validate", "config"}[rng.IntN(5)]
		delay := time.Duration(rng.Int64N(int64(maxDelay) + 1))
		victim := e.fleet.AgentIDs()[rng.IntN(nHosts)]
		version := fmt.Sprintf("v%d", round)
		load.Step(fmt.Sprintf("round %d: %s, kill %s at %s", round, kind, victim, delay))
		t.Logf("round %d: %s (%s), kill -9 %s after %s", round, kind, version, victim, delay.Round(time.Millisecond))

		wantVersion, wantSpec := version, specRev
		switch kind {
		case "good":
			e.cli(0, "release", "create", "web", "--version", version, "--artifact", e.artifact(version, nil))
		case "bad-health":
			e.cli(0, "release", "create", "web", "--version", version, "--artifact", e.artifact(version, map[string]string{"FAIL_HEALTH": "1"}))
			wantVersion = stable
		case "bad-validate":
			e.cli(0, "release", "create", "web", "--version", version, "--artifact", e.artifact(version, map[string]string{"VALIDATE_FAIL": "1"}))
			wantVersion = stable
		case "config":
			applySpec()
			wantVersion, wantSpec = stable, specRev
		}
		kick := time.Now()
		a := e.fleet.Agents[victim]
		for k := range kills {
			if k > 0 {
				// Again, in the next agent's recovery or what it resumed.
				delay = time.Duration(rng.Int64N(int64(maxDelay) + 1))
			}
			time.Sleep(delay) // the kill's moment, chosen by the seed: not a synchronisation
			a.Kill9()
			t.Logf("round %d: kill %d at %s, the agent's last phase: %s", round, k+1, time.Since(kick).Round(time.Millisecond), lastPhase(a.LogPath))
			if err := a.Restart(); err != nil {
				t.Fatal(err)
			}
		}
		killedAt := time.Since(kick)
		watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
		ro := e.rollout("web")
		t.Logf("round %d: rollout %s %s → %s (spec %d): %s %q, watch exit %d", round,
			ro.GetId(), ro.GetFromVersion(), ro.GetToVersion(), ro.GetSpecRevision(), ro.GetState(), ro.GetReason(), watch.Code)
		switch kind {
		case "good", "config":
			if watch.Code != 0 || ro.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
				t.Errorf("round %d (%s, killed at %s): the rollout did not succeed: %s %q\n%s%s", round, kind, killedAt, ro.GetState(), ro.GetReason(), watch.Stdout, watch.Stderr)
				// Go on from what the fleet settles on.
				wantVersion, wantSpec = stable, stableSpec
			}
		default:
			if watch.Code != 1 || ro.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED {
				t.Errorf("round %d (%s, killed at %s): the rollout did not fail: %s %q\n%s%s", round, kind, killedAt, ro.GetState(), ro.GetReason(), watch.Stdout, watch.Stderr)
			}
		}
		if ro.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED {
			e.cli(0, "service", "unfreeze", "web")
		}
		if kind == "config" && ro.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			wantSpec = stableSpec
		}
		e.waitTortureConverged(round, wantVersion, wantSpec)
		stable, stableSpec = wantVersion, wantSpec

		for _, id := range e.fleet.AgentIDs() {
			e.checkTortureHost(round, id, wantVersion, wantSpec)
		}
		now := map[string]sample{}
		for _, id := range e.fleet.AgentIDs() {
			ma := e.fleet.Agents[id].MetricsAddr
			now[id] = sample{fds: e.metric(ma, "process_open_fds"), goroutines: e.metric(ma, "go_goroutines")}
		}
		if first == nil {
			first = now
		}
		for id, s := range now {
			f := first[id]
			t.Logf("round %d: %s agent fds %.0f (first %.0f), goroutines %.0f (first %.0f)", round, id, s.fds, f.fds, s.goroutines, f.goroutines)
			if s.fds > f.fds+8 || s.goroutines > f.goroutines+15 {
				t.Errorf("round %d: %s agent grows: fds %.0f (first %.0f), goroutines %.0f (first %.0f)", round, id, s.fds, f.fds, s.goroutines, f.goroutines)
			}
		}
		logAgentNews(t, e.fleet, round, seen)
		t.Logf("round %d took %s", round, time.Since(roundStart).Round(time.Millisecond))
		if t.Failed() {
			break
		}
	}
	stopLoad(t, load, "the service has sockets: nothing may be refused across an agent kill -9")
	t.Logf("torture: %d rounds in %s (seed %d)", rounds, time.Since(start).Round(time.Millisecond), seed)
}

// waitTortureConverged waits until every host is connected and reports web
// healthy on version, with no install under way, its service answering
// with version, one process alone, old releases pruned, no stale notify
// socket and no zombie child of the agent.
func (e *env) waitTortureConverged(round int, version string, spec int) {
	e.t.Helper()
	e.waitFor(90*time.Second, fmt.Sprintf("round %d: every host settled on %s with spec %d", round, version, spec), func() (bool, string) {
		hosts, err := e.fleet.Hosts(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, h := range hosts {
			rep := serviceReport(h, "web")
			a := e.fleet.Agents[h.GetId()]
			if !h.GetConnected() || rep.GetPhase() != v1.Phase_PHASE_HEALTHY || rep.GetCurrentVersion() != version ||
				(rep.GetTargetVersion() != "" && rep.GetTargetVersion() != version) {
				bad = append(bad, fmt.Sprintf("%s connected=%v %s current %s target %s last good %s: %s", h.GetId(), h.GetConnected(),
					rep.GetPhase(), rep.GetCurrentVersion(), rep.GetTargetVersion(), rep.GetLastGoodVersion(), rep.GetReason()))
				continue
			}
			if v := e.fleet.Version(e.ctx, h.GetId()); v != version {
				bad = append(bad, fmt.Sprintf("%s serves %q", h.GetId(), v))
				continue
			}
			if _, err := os.Stat(filepath.Join(a.DataDir, "run", "web.next.pid")); err == nil {
				bad = append(bad, h.GetId()+": web.next.pid still there")
				continue
			}
			if ps := serviceProcs(a.DataDir); len(ps) != 1 {
				bad = append(bad, fmt.Sprintf("%s: %d service processes %v", h.GetId(), len(ps), ps))
				continue
			}
			// Pruning (once the deploy settles) and a stopped process's
			// notify socket removal follow the report: wait for them too
			// (checkTortureHost asserts them).
			if rels := releaseDirs(a.DataDir); len(rels) > 4 {
				bad = append(bad, fmt.Sprintf("%s: releases not pruned yet: %v", h.GetId(), rels))
			}
			if names := fileNames(filepath.Join(a.DataDir, "notify")); len(names) > 1 {
				bad = append(bad, fmt.Sprintf("%s: notify sockets %v", h.GetId(), names))
			}
			// Nothing the agent left unreaped (waited for: a child that
			// has just exited is a zombie until the agent reaps it).
			if z := zombies(a.CurrentPID()); len(z) > 0 {
				bad = append(bad, fmt.Sprintf("%s: zombies of the agent: %v", h.GetId(), z))
			}
		}
		return len(bad) == 0 && len(hosts) == len(e.fleet.AgentIDs()), strings.Join(bad, "; ")
	})
}

// checkTortureHost checks a settled host's invariants.
func (e *env) checkTortureHost(round int, id, version string, spec int) {
	e.t.Helper()
	a := e.fleet.Agents[id]
	fail := func(format string, args ...any) {
		e.t.Helper()
		e.t.Errorf("round %d: %s: %s", round, id, fmt.Sprintf(format, args...))
	}
	rec, err := supervise.ReadPIDFile(filepath.Join(a.DataDir, "run", "web.pid"))
	if err != nil {
		fail("%v", err)
		return
	}
	ps := serviceProcs(a.DataDir)
	if len(ps) != 1 || ps[0] != rec.PGID {
		fail("service processes %v, PID file names %d", ps, rec.PGID)
	}
	if rec.Release != version {
		fail("PID file names release %q, want %s", rec.Release, version)
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", rec.PGID))
	if want := filepath.Join(a.DataDir, "releases", "web", version, "demoapp"); exe != want {
		fail("the process runs %s, want %s", exe, want)
	}
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", rec.PGID)); err != nil || !slices.Contains(strings.Split(string(env), "\x00"), fmt.Sprintf("FW_ROUND=%d", spec)) {
		fail("the process does not run spec %d (FW_ROUND): %v", spec, err)
	}
	cur, err := os.Readlink(filepath.Join(a.DataDir, "releases", "web", "current"))
	if err != nil || filepath.Base(cur) != version {
		fail("current -> %q (%v), want %s", cur, err, version)
	}
	// Leftovers of interrupted writes and stagings.
	var left []string
	_ = filepath.Walk(a.DataDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(a.DataDir, p)
		base := filepath.Base(p)
		if strings.HasPrefix(rel, filepath.Join("releases", "web")+"/v") && strings.Count(rel, "/") > 2 {
			return filepath.SkipDir // inside a release: its own files
		}
		if strings.Contains(base, ".tmp") || strings.HasPrefix(base, ".stage-") || strings.HasPrefix(base, ".current-") ||
			(strings.HasPrefix(rel, "tmp/") && !fi.IsDir()) || (strings.HasPrefix(rel, "partial/") && !fi.IsDir()) {
			left = append(left, rel)
		}
		return nil
	})
	if len(left) > 0 {
		fail("leftovers: %v", left)
	}
	versions := releaseDirs(a.DataDir)
	// --keep-releases 3, plus current, last good, the target and a revert's
	// destination, which are among them or the one running: at most 4.
	if len(versions) > 4 {
		fail("%d releases kept: %v", len(versions), versions)
	}
	if names := fileNames(filepath.Join(a.DataDir, "notify")); len(names) > 1 {
		fail("%d notify sockets: %v (the process's epoch %d)", len(names), names, rec.Epoch)
	}
	if n := countFiles(filepath.Join(a.DataDir, "artifacts")); n > 4 {
		fail("%d artifacts kept", n)
	}
}

// serviceReport is host h's report of service (nil: none).
func serviceReport(h *v1.Host, service string) *v1.ServiceReport {
	for _, s := range h.GetServices() {
		if s.GetService() == service {
			return s
		}
	}
	return nil
}

// logAgentNews logs the warnings and errors f's agents logged since seen
// (the test fleet's --insecure warning, at every start, left out).
func logAgentNews(t *testing.T, f *testfleet.Fleet, round int, seen map[string]int) {
	t.Helper()
	for _, id := range f.AgentIDs() {
		for _, l := range newLogLines(f.Agents[id].LogPath, seen, `"level":"error"`, `"level":"warn"`) {
			if !strings.Contains(l, "INSECURE: plain-text") {
				t.Logf("round %d: %s logged: %s", round, id, l)
			}
		}
	}
}

// stopLoad stops load, logs its steps and fails t if a request failed
// (why says why none may).
func stopLoad(t *testing.T, load *testfleet.Load, why string) {
	t.Helper()
	steps := load.Stop()
	for _, s := range steps {
		t.Logf("MEASURE %s", s.String())
	}
	if f := testfleet.Failures(steps); f != "" {
		t.Errorf("requests failed (%s):\n%s", why, f)
	}
}

// newLogLines returns the lines of logPath past what seen records that
// hold any of subs, and records the new end.
func newLogLines(logPath string, seen map[string]int, subs ...string) []string {
	b, _ := os.ReadFile(logPath)
	from := min(seen[logPath], len(b))
	seen[logPath] = len(b)
	var out []string
	for _, l := range strings.Split(string(b[from:]), "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

var phaseLine = regexp.MustCompile(`"phase":"PHASE_(\w+)","version":"([^"]*)"[^\n]*"message":"phase"`)

// lastPhase is the last phase an agent's log names, with its version.
func lastPhase(logPath string) string {
	b, _ := os.ReadFile(logPath)
	m := phaseLine.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return "none"
	}
	return string(m[len(m)-1][1]) + " " + string(m[len(m)-1][2])
}

// releaseDirs lists the unpacked releases of web in dataDir.
func releaseDirs(dataDir string) []string {
	rels, _ := os.ReadDir(filepath.Join(dataDir, "releases", "web"))
	var versions []string
	for _, r := range rels {
		if r.IsDir() && strings.HasPrefix(r.Name(), "v") {
			versions = append(versions, r.Name())
		}
	}
	return versions
}

func countFiles(dir string) int {
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if !e.IsDir() {
			n++
		}
	}
	return n
}

func fileNames(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

var procStat = regexp.MustCompile(`^\d+ \((.*)\) (\S) (\d+)`)

// serviceProcs lists the live processes running a release's demoapp of
// dataDir (any release, also a pruned one), sorted.
func serviceProcs(dataDir string) []int {
	ents, _ := os.ReadDir("/proc")
	prefix := filepath.Join(dataDir, "releases", "web") + "/"
	var out []int
	for _, en := range ents {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", en.Name(), "exe"))
		if err != nil || !strings.HasPrefix(exe, prefix) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat")); err == nil {
			if m := procStat.FindStringSubmatch(string(st)); m != nil && m[2] == "Z" {
				continue
			}
		}
		out = append(out, pid)
	}
	slices.Sort(out)
	return out
}

// zombies lists the zombie children of pid.
func zombies(pid int) []string {
	if pid <= 0 {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, en := range ents {
		if _, err := strconv.Atoi(en.Name()); err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", en.Name(), "stat"))
		if err != nil {
			continue
		}
		m := procStat.FindStringSubmatch(string(st))
		if m != nil && m[2] == "Z" && m[3] == strconv.Itoa(pid) {
			out = append(out, en.Name()+" "+m[1])
		}
	}
	return out
}
