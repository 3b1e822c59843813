package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestAgentKilledInUpgradeConverges: round after round an agent upgrade
// (README, "Upgrading the agent") to a newly built agent version, and one
// of the agent processes running on the host's data dir at a random moment
// (the old agent, or the new one it started: both are alive during the
// handover) SIGKILLed. A supervisor does what systemd's Restart=always does
// for the unit: when no agent runs on the data dir for a second, it starts
// the installed executable again. Once the rollout ended and the host
// settled: exactly one agent runs on the data dir and holds agent.lock; it
// is the upgrade's version if the rollout succeeded, else the one before
// (the installed executable too); the service was never restarted (same
// pid since the test began) and no request of a client loop failed; no
// upgrade record is left "trying", no temp file anywhere; and the service's
// own invariants (checkTortureHost) hold.
//
// FLEETWAVE_TORTURE_SEED (default 1), FLEETWAVE_TORTURE_ROUNDS (default 2),
// FLEETWAVE_TORTURE_MAX_DELAY_MS (default 4000), FLEETWAVE_TORTURE_HOSTS
// (default 1) and FLEETWAVE_TORTURE_KILLS (kills a round, default 1)
// replay or widen the hunt. The seed and every kill's moment are logged.
func TestAgentKilledInUpgradeConverges(t *testing.T) {
	seed := tortureEnvInt(t, "FLEETWAVE_TORTURE_SEED", 1)
	rounds := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_ROUNDS", 2))
	maxDelay := time.Duration(tortureEnvInt(t, "FLEETWAVE_TORTURE_MAX_DELAY_MS", 4000)) * time.Millisecond
	nHosts := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_HOSTS", 1))
	kills := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_KILLS", 1))
	t.Logf("torture upgrade: FLEETWAVE_TORTURE_SEED=%d FLEETWAVE_TORTURE_ROUNDS=%d FLEETWAVE_TORTURE_MAX_DELAY_MS=%d FLEETWAVE_TORTURE_HOSTS=%d FLEETWAVE_TORTURE_KILLS=%d",
		seed, rounds, maxDelay.Milliseconds(), nHosts, kills)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x75706772))

	ctx := t.Context()
	dir := t.TempDir()
	oldBytes, err := os.ReadFile(bins.Agent)
	if err != nil {
		t.Fatal(err)
	}
	binaries := map[string][]byte{"dev": oldBytes} // version → agent binary
	f, err := testfleet.NewFleet(ctx, bins, dir)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, fleet: f, dir: dir}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			e.dumpLogs()
		}
	})
	exes := map[string]string{}
	for i := range nHosts {
		id := fmt.Sprintf("host-%d", i+1)
		exes[id] = filepath.Join(dir, "bin-"+id, "fleetwave-agent")
		if err := os.MkdirAll(filepath.Dir(exes[id]), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exes[id], oldBytes, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := f.AddAgentWith(id, []string{"a", "b"}[i%2], testfleet.AgentOptions{Binary: exes[id], Args: []string{"--upgrade-deadline", "10s"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitConnected(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	sup := superviseAgents(t, f)
	t.Cleanup(sup.stop) // before f.Close (cleanups run last first)

	e.apply("web", fmt.Sprintf(tortureSpec, 1))
	if code := e.release("web", "v0", nil); code != 0 {
		t.Fatalf("v0 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v0")
	pids := map[string]int{}
	for _, id := range f.AgentIDs() {
		pids[id] = e.servicePID(id)
	}
	load := f.StartLoad(ctx, "round 0", 2, 20*time.Millisecond)
	defer load.Stop()

	stable, released := "dev", false // the agent version the hosts run; whether it is a release
	start := time.Now()
	seen := map[string]int{}
	for round := 1; round <= rounds; round++ {
		version := fmt.Sprintf("v0.%d.0", round+1)
		bin := buildAgent(t, filepath.Join(dir, version), version)
		if binaries[version], err = os.ReadFile(bin); err != nil {
			t.Fatal(err)
		}
		tgz := agentArtifact(t, bin, filepath.Join(dir, "fleetwave-agent-"+version+".tar.gz"))
		roundStart := time.Now()
		delay := time.Duration(rng.Int64N(int64(maxDelay) + 1))
		victim := f.AgentIDs()[rng.IntN(nHosts)]
		load.Step(fmt.Sprintf("round %d: agent %s → %s, kill in %s at %s", round, stable, version, victim, delay))
		t.Logf("round %d: agent %s → %s, kill -9 in %s after %s", round, stable, version, victim, delay.Round(time.Millisecond))

		handovers := map[string]int{}
		for _, id := range f.AgentIDs() {
			handovers[id] = strings.Count(readString(f.Agents[id].LogPath), "agent upgrade: new agent started")
		}
		e.cli(0, "agent", "upgrade", "--version", version, "--artifact", tgz, "--no-canary", "--waves", "100",
			"--max-parallel", "2", "--progress-deadline", "2m")
		kick := time.Now()
		a := f.Agents[victim]
		// One round in two the first kill's moment counts from the new
		// agent's start (the handover, both agents alive, lasts a few
		// hundred milliseconds: up to 400 ms after it), not from the
		// release's creation; the start is waited for in the log.
		if rng.IntN(2) == 0 {
			delay = time.Duration(rng.Int64N(int64(400*time.Millisecond) + 1))
			e.waitFor(60*time.Second, fmt.Sprintf("round %d: %s's new agent started", round, victim), func() (bool, string) {
				return strings.Count(readString(a.LogPath), "agent upgrade: new agent started") > handovers[victim], "not yet"
			})
			t.Logf("round %d: the new agent started at %s: the kill %s later", round, time.Since(kick).Round(time.Millisecond), delay.Round(time.Millisecond))
		}
		for k := range kills {
			if k > 0 {
				delay = time.Duration(rng.Int64N(int64(maxDelay) + 1))
			}
			pick := rng.IntN(2)
			time.Sleep(delay) // the kill's moment, chosen by the seed: not a synchronisation
			procs := agentProcs(a.DataDir)
			if len(procs) == 0 {
				t.Logf("round %d: kill %d at %s: no agent runs (the supervisor starts one)", round, k+1, time.Since(kick).Round(time.Millisecond))
				continue
			}
			pid := procs[pick%len(procs)]
			which := "the only agent"
			if len(procs) > 1 {
				which = fmt.Sprintf("one of %d agents", len(procs))
			}
			ver := versionOf(pid, binaries)
			sup.kill(a, pid)
			t.Logf("round %d: kill %d at %s: pid %d (%s, %s), the agent log's last lines:\n%s", round, k+1, time.Since(kick).Round(time.Millisecond),
				pid, which, ver, lastLines(a.LogPath, 3))
		}
		watch := f.CLI(ctx, "rollout", "watch", spec.AgentService)
		ro := e.rollout(spec.AgentService)
		t.Logf("round %d: agent rollout %s %s → %s: %s %q, watch exit %d", round, ro.GetId(), ro.GetFromVersion(), ro.GetToVersion(),
			ro.GetState(), ro.GetReason(), watch.Code)
		want := stable
		switch ro.GetState() {
		case v1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
			want, released = version, true
			if watch.Code != 0 {
				t.Errorf("round %d: rollout watch exit %d of a rollout that succeeded", round, watch.Code)
			}
		case v1.RolloutState_ROLLOUT_STATE_FAILED:
			if !released {
				// The first agent rollout has no release to go back
				// to: its hosts keep the agent they run (README).
				want = ""
			}
			e.cli(0, "service", "unfreeze", spec.AgentService)
		default:
			t.Fatalf("round %d: the agent rollout ended %s (watch exit %d)\n%s%s", round, ro.GetState(), watch.Code, watch.Stdout, watch.Stderr)
		}
		runs := e.waitUpgradeSettled(round, want, exes, binaries)
		if want == "" {
			for _, v := range runs {
				want = v // one host: what it runs
			}
		}
		for _, id := range f.AgentIDs() {
			e.checkUpgradedHost(round, id, runs[id], exes[id], binaries, pids[id])
			e.checkTortureHost(round, id, "v0", 1)
		}
		if want != "" {
			stable = want
		}
		logAgentNews(t, f, round, seen)
		t.Logf("round %d took %s (the build before it not counted)", round, time.Since(roundStart).Round(time.Millisecond))
		if t.Failed() {
			break
		}
	}
	stopLoad(t, load, "an agent upgrade restarts no service")
	t.Logf("torture upgrade: %d rounds in %s (seed %d)", rounds, time.Since(start).Round(time.Millisecond), seed)
}

// supervisor restarts an agent the way systemd's Restart=always with
// RestartSec=1 does for the unit: when no agent process has run on its
// data dir for a second, the installed executable is started again.
type supervisor struct {
	mu   sync.Mutex // held while killing: no restart meanwhile
	done chan struct{}
	wg   sync.WaitGroup
}

func superviseAgents(t *testing.T, f *testfleet.Fleet) *supervisor {
	s := &supervisor{done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		absent := map[string]time.Time{}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			s.mu.Lock()
			for _, id := range f.AgentIDs() {
				a := f.Agents[id]
				if len(agentProcs(a.DataDir)) > 0 || a.Running() {
					delete(absent, id)
					continue
				}
				if absent[id].IsZero() {
					absent[id] = time.Now()
					continue
				}
				if time.Since(absent[id]) >= time.Second {
					delete(absent, id)
					t.Logf("supervisor: no agent runs on %s's data dir: starting it again", id)
					if err := a.Restart(); err != nil {
						t.Errorf("supervisor: %s: %v", id, err)
					}
				}
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *supervisor) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
}

// kill SIGKILLs pid, a's own process or another agent on its data dir, and
// waits until it is gone.
func (s *supervisor) kill(a *testfleet.Agent, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.Running() && a.Pid() == pid {
		a.Kill9()
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); !gone(pid) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // not our child: polled
	}
}

// agentProcs lists the live agent processes running on dataDir (not a
// stop-services), sorted by pid.
func agentProcs(dataDir string) []int {
	ents, _ := os.ReadDir("/proc")
	want := "\x00--data-dir\x00" + dataDir + "\x00"
	var out []int
	for _, en := range ents {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), want) || strings.Contains(string(b), "\x00stop-services\x00") || gone(pid) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// versionOf names the agent version whose binary pid runs ("?" if none).
func versionOf(pid int, binaries map[string][]byte) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "? (" + err.Error() + ")"
	}
	return versionOfBytes(b, binaries)
}

func versionOfBytes(b []byte, binaries map[string][]byte) string {
	for v, bb := range binaries {
		if bytes.Equal(b, bb) {
			return v
		}
	}
	return "?"
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func lastLines(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitUpgradeSettled waits until every host runs one agent, of version
// want ("" = either: the first agent rollout failed), the one its installed
// executable is, connected and reporting it, with web healthy on v0 and no
// upgrade record left trying. It returns each host's agent version.
func (e *env) waitUpgradeSettled(round int, want string, exes map[string]string, binaries map[string][]byte) map[string]string {
	e.t.Helper()
	runs := map[string]string{}
	e.waitFor(90*time.Second, fmt.Sprintf("round %d: every host settled on agent %q", round, want), func() (bool, string) {
		hosts, err := e.fleet.Hosts(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, h := range hosts {
			id := h.GetId()
			a := e.fleet.Agents[id]
			procs := agentProcs(a.DataDir)
			if len(procs) != 1 {
				bad = append(bad, fmt.Sprintf("%s: %d agents run %v", id, len(procs), procs))
				continue
			}
			v := versionOf(procs[0], binaries)
			installed, _ := os.ReadFile(exes[id])
			iv := versionOfBytes(installed, binaries)
			runs[id] = v
			if !h.GetConnected() || h.GetAgentVersion() != v || (want != "" && v != want) || iv != v {
				bad = append(bad, fmt.Sprintf("%s connected=%v reports agent %s, runs %s, installed %s", id, h.GetConnected(), h.GetAgentVersion(), v, iv))
				continue
			}
			var web, agent *v1.ServiceReport
			for _, s := range h.GetServices() {
				switch s.GetService() {
				case "web":
					web = s
				case spec.AgentService:
					agent = s
				}
			}
			if web.GetPhase() != v1.Phase_PHASE_HEALTHY || web.GetCurrentVersion() != "v0" {
				bad = append(bad, fmt.Sprintf("%s: web %s %s: %s", id, web.GetPhase(), web.GetCurrentVersion(), web.GetReason()))
			}
			if agent != nil && agent.GetPhase() != v1.Phase_PHASE_HEALTHY && agent.GetPhase() != v1.Phase_PHASE_FAILED {
				bad = append(bad, fmt.Sprintf("%s: %s %s: %s", id, spec.AgentService, agent.GetPhase(), agent.GetReason()))
			}
			if rec := upgradeRecord(a.DataDir); rec != nil && rec.State == lifecycle.AgentTrying {
				bad = append(bad, fmt.Sprintf("%s: upgrade record %+v", id, *rec))
			}
			if z := zombies(procs[0]); len(z) > 0 {
				bad = append(bad, fmt.Sprintf("%s: zombies of the agent: %v", id, z))
			}
		}
		return len(bad) == 0 && len(hosts) == len(e.fleet.AgentIDs()), strings.Join(bad, "; ")
	})
	return runs
}

func upgradeRecord(dataDir string) *lifecycle.AgentUpgrade {
	b, err := os.ReadFile(filepath.Join(dataDir, "agent", "upgrade.json"))
	if err != nil {
		return nil
	}
	var rec lifecycle.AgentUpgrade
	if json.Unmarshal(b, &rec) != nil {
		return &lifecycle.AgentUpgrade{State: "unreadable: " + lifecycle.AgentUpgradeState(b)}
	}
	return &rec
}

// checkUpgradedHost checks a settled host after an agent upgrade: the one
// agent holds agent.lock and runs version from a file still there, its
// service was not restarted, no temp file beside the executable.
func (e *env) checkUpgradedHost(round int, id, version, exe string, binaries map[string][]byte, servicePID int) {
	e.t.Helper()
	a := e.fleet.Agents[id]
	fail := func(format string, args ...any) {
		e.t.Helper()
		e.t.Errorf("round %d: %s: %s", round, id, fmt.Sprintf(format, args...))
	}
	procs := agentProcs(a.DataDir)
	if len(procs) != 1 {
		fail("%d agents run: %v", len(procs), procs)
	}
	if lf, err := os.OpenFile(filepath.Join(a.DataDir, "agent.lock"), os.O_RDWR, 0); err != nil {
		fail("agent.lock: %v", err)
	} else {
		if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			fail("no agent holds agent.lock")
			_ = syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
		}
		lf.Close()
	}
	for _, pid := range procs {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasSuffix(l, " (deleted)") {
			fail("the agent %d runs a deleted file: %s", pid, l)
		}
		if v := versionOf(pid, binaries); v != version {
			fail("the agent %d runs %s, want %s", pid, v, version)
		}
	}
	if pid := e.servicePID(id); pid != servicePID {
		fail("the service was restarted: pid %d, was %d", pid, servicePID)
	}
	if names := fileNames(filepath.Dir(exe)); len(names) > 2 {
		fail("beside the executable: %v", names)
	}
	if rec := upgradeRecord(a.DataDir); rec != nil && rec.State != lifecycle.AgentDone && rec.State != lifecycle.AgentFailed {
		fail("upgrade record %+v", *rec)
	}
	rels, _ := os.ReadDir(filepath.Join(a.DataDir, "releases", spec.AgentService))
	if len(rels) > 5 {
		fail("%d agent releases kept", len(rels))
	}
}
