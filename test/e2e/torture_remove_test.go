package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/supervise"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestAgentKilledInRemovalConverges: round after round the service leaves
// the host (README, "Removing a service, hosts moving") one of three ways:
// `service delete`, a selector change that leaves the host out, or the
// host's agent restarted with labels the selector does not select; the
// agent is SIGKILLed after a random delay (landing in the drain, the stop,
// the removal of the files, the report) and restarted. Once the removal
// ended, nothing of the service is left on the host: no process, no PID
// file, no release directory, no state, no notify socket, no artifact, no
// temp file; its log is kept and ends with the removal's line. Then the
// service comes back (created anew, the selector widened, the host
// relabelled in), the agent killed at a random moment of that too (one
// round in two), and the host must run it cleanly: checkTortureHost's
// invariants.
//
// FLEETWAVE_TORTURE_SEED (default 1), FLEETWAVE_TORTURE_ROUNDS (default
// 3), FLEETWAVE_TORTURE_MAX_DELAY_MS (default 1000: a removal takes a few hundred ms after the call) and
// FLEETWAVE_TORTURE_HOSTS (default 1) replay or widen the hunt. The seed and
// every kill's moment are logged.
func TestAgentKilledInRemovalConverges(t *testing.T) {
	seed := tortureEnvInt(t, "FLEETWAVE_TORTURE_SEED", 1)
	rounds := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_ROUNDS", 3))
	maxDelay := time.Duration(tortureEnvInt(t, "FLEETWAVE_TORTURE_MAX_DELAY_MS", 1000)) * time.Millisecond
	nHosts := int(tortureEnvInt(t, "FLEETWAVE_TORTURE_HOSTS", 1))
	t.Logf("torture removal: FLEETWAVE_TORTURE_SEED=%d FLEETWAVE_TORTURE_ROUNDS=%d FLEETWAVE_TORTURE_MAX_DELAY_MS=%d FLEETWAVE_TORTURE_HOSTS=%d",
		seed, rounds, maxDelay.Milliseconds(), nHosts)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x72656d76))

	e := newFleetEnv(t, nHosts)
	specRev := 0
	applySpec := func(selector string) {
		specRev++
		s := fmt.Sprintf(tortureSpec, specRev)
		if selector != "" {
			s = strings.Replace(s, "selector: {role: web}", "selector: "+selector, 1)
		}
		e.apply("web", s)
	}
	applySpec("")
	if code := e.release("web", "v0", nil); code != 0 {
		t.Fatalf("v0 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v0")
	stable, stableSpec := "v0", specRev
	start := time.Now()
	seen := map[string]int{}
	kill := func(round int, what, victim string, delay time.Duration, kick time.Time) {
		a := e.fleet.Agents[victim]
		time.Sleep(delay) // the kill's moment, chosen by the seed: not a synchronisation
		a.Kill9()
		t.Logf("round %d: %s: kill -9 %s at %s, the agent's last phase: %s", round, what, victim, time.Since(kick).Round(time.Millisecond), lastPhase(a.LogPath))
		if err := a.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	for round := 1; round <= rounds; round++ {
		roundStart := time.Now()
		kind := []string{"delete", "selector", "relabel"}[rng.IntN(3)]
		delay := time.Duration(rng.Int64N(int64(maxDelay) + 1))
		victim := e.fleet.AgentIDs()[rng.IntN(nHosts)]
		t.Logf("round %d: %s, kill -9 %s after %s", round, kind, victim, delay.Round(time.Millisecond))
		pids := map[string]int{}
		for _, id := range e.fleet.AgentIDs() {
			pids[id] = e.servicePID(id)
		}
		logSize := map[string]int64{}
		for _, id := range e.fleet.AgentIDs() {
			fi, err := os.Stat(filepath.Join(e.fleet.Agents[id].DataDir, "logs", "web.log"))
			if err != nil {
				t.Fatal(err)
			}
			logSize[id] = fi.Size()
		}
		// The hosts the removal takes the service off.
		leaving := e.fleet.AgentIDs()
		kick := time.Now()
		switch kind {
		case "delete":
			e.cli(0, "service", "delete", "web")
		case "selector":
			applySpec("{role: web, zone: nowhere}")
		case "relabel":
			leaving = []string{victim}
			if err := e.fleet.Relabel(victim, e.fleet.Labels(victim, "db")); err != nil {
				t.Fatal(err)
			}
		}
		kill(round, "removal", victim, delay, kick)
		if kind != "relabel" {
			watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
			ro := e.rollout("web")
			t.Logf("round %d: removal %s: %s %q, watch exit %d", round, ro.GetId(), ro.GetState(), ro.GetReason(), watch.Code)
			if watch.Code != 0 || ro.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
				t.Fatalf("round %d (%s): the removal did not succeed: %s %q\n%s%s", round, kind, ro.GetState(), ro.GetReason(), watch.Stdout, watch.Stderr)
			}
		}
		e.waitTortureRemoved(round, leaving, pids)
		for _, id := range leaving {
			e.checkTortureRemoved(round, id, logSize[id])
		}
		if t.Failed() {
			break
		}

		// Back: a new release (a deleted service's versions stay taken)
		// or the stable one.
		kick = time.Now()
		version := stable
		switch kind {
		case "delete":
			applySpec("")
			version = fmt.Sprintf("v%d", round)
			e.cli(0, "release", "create", "web", "--version", version, "--artifact", e.artifact(version, nil))
		case "selector":
			applySpec("")
		case "relabel":
			if err := e.fleet.Relabel(victim, e.fleet.Labels(victim, "web")); err != nil {
				t.Fatal(err)
			}
		}
		wantSpec := specRev
		if kind == "relabel" {
			wantSpec = stableSpec
		}
		if rng.IntN(2) == 0 {
			kill(round, "re-adding", victim, time.Duration(rng.Int64N(int64(maxDelay)+1)), kick)
		}
		if kind != "relabel" {
			// Re-created: its first release's rollout; the selector
			// widened: the rest of the spec (run.env) rolls out in waves
			// to the hosts that came back (seed 4, 2 hosts: checked
			// before the second wave).
			watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
			ro := e.rollout("web")
			t.Logf("round %d: re-adding %s → %s: %s %q, watch exit %d", round, ro.GetId(), ro.GetToVersion(), ro.GetState(), ro.GetReason(), watch.Code)
			if watch.Code != 0 || ro.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
				t.Fatalf("round %d: the re-added service's rollout did not succeed: %s %q\n%s%s", round, ro.GetState(), ro.GetReason(), watch.Stdout, watch.Stderr)
			}
		}
		e.waitTortureConverged(round, version, wantSpec)
		e.waitFor(30*time.Second, fmt.Sprintf("round %d: every host runs spec %d", round, wantSpec), func() (bool, string) {
			for _, id := range e.fleet.AgentIDs() {
				rec, err := supervise.ReadPIDFile(filepath.Join(e.fleet.Agents[id].DataDir, "run", "web.pid"))
				if err != nil {
					return false, err.Error()
				}
				env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", rec.PGID))
				if !slices.Contains(strings.Split(string(env), "\x00"), fmt.Sprintf("FW_ROUND=%d", wantSpec)) {
					return false, id + " runs another spec"
				}
			}
			return true, ""
		})
		for _, id := range e.fleet.AgentIDs() {
			e.checkTortureHost(round, id, version, wantSpec)
		}
		stable, stableSpec = version, wantSpec
		logAgentNews(t, e.fleet, round, seen)
		t.Logf("round %d took %s", round, time.Since(roundStart).Round(time.Millisecond))
		if t.Failed() {
			break
		}
	}
	t.Logf("torture removal: %d rounds in %s (seed %d)", rounds, time.Since(start).Round(time.Millisecond), seed)
}

// waitTortureRemoved waits until every host of ids reports web REMOVED (or
// no longer reports it), is connected, its process pids[id] is gone and no
// process of the service runs.
func (e *env) waitTortureRemoved(round int, ids []string, pids map[string]int) {
	e.t.Helper()
	e.waitFor(90*time.Second, fmt.Sprintf("round %d: the service removed from %v", round, ids), func() (bool, string) {
		hosts, err := e.fleet.Hosts(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, h := range hosts {
			if !strings.Contains(" "+strings.Join(ids, " ")+" ", " "+h.GetId()+" ") {
				continue
			}
			rep := serviceReport(h, "web")
			a := e.fleet.Agents[h.GetId()]
			if !h.GetConnected() || (rep != nil && rep.GetPhase() != v1.Phase_PHASE_REMOVED) {
				bad = append(bad, fmt.Sprintf("%s connected=%v %s: %s", h.GetId(), h.GetConnected(), rep.GetPhase(), rep.GetReason()))
				continue
			}
			if why := e.removedFrom(h.GetId(), pids[h.GetId()]); why != "" {
				bad = append(bad, why)
			}
			if ps := serviceProcs(a.DataDir); len(ps) > 0 {
				bad = append(bad, fmt.Sprintf("%s: service processes %v", h.GetId(), ps))
			}
			// A stopped process's notify socket is removed after the
			// report: waited for (checkTortureRemoved asserts it).
			if names := fileNames(filepath.Join(a.DataDir, "notify")); len(names) > 0 {
				bad = append(bad, fmt.Sprintf("%s: notify sockets %v", h.GetId(), names))
			}
			if z := zombies(a.CurrentPID()); len(z) > 0 {
				bad = append(bad, fmt.Sprintf("%s: zombies of the agent: %v", h.GetId(), z))
			}
		}
		return len(bad) == 0, strings.Join(bad, "; ")
	})
}

// checkTortureRemoved checks that nothing of web is left on host id but its
// log, which is longer than logSize (before the removal) and ends with the
// removal's line.
func (e *env) checkTortureRemoved(round int, id string, logSize int64) {
	e.t.Helper()
	a := e.fleet.Agents[id]
	fail := func(format string, args ...any) {
		e.t.Helper()
		e.t.Errorf("round %d: %s: after the removal: %s", round, id, fmt.Sprintf(format, args...))
	}
	for _, p := range []string{"releases/web", "run/web.pid", "run/web.next.pid", "state/web.json"} {
		if exists(filepath.Join(a.DataDir, p)) {
			fail("%s is there", p)
		}
	}
	if ps := serviceProcs(a.DataDir); len(ps) > 0 {
		fail("service processes %v", ps)
	}
	if names := fileNames(filepath.Join(a.DataDir, "notify")); len(names) > 0 {
		fail("notify sockets %v", names)
	}
	var left []string
	_ = filepath.Walk(a.DataDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(a.DataDir, p)
		base := filepath.Base(p)
		if strings.Contains(base, ".tmp") || strings.HasPrefix(base, ".stage-") || strings.HasPrefix(base, ".current-") ||
			(strings.HasPrefix(rel, "tmp/") && !fi.IsDir()) || (strings.HasPrefix(rel, "partial/") && !fi.IsDir()) ||
			(strings.HasPrefix(rel, "artifacts/") && !fi.IsDir()) || strings.Contains(rel, "web") && !strings.HasPrefix(rel, "logs/") {
			left = append(left, rel)
		}
		return nil
	})
	if len(left) > 0 {
		fail("leftovers: %v", left)
	}
	b, err := os.ReadFile(filepath.Join(a.DataDir, "logs", "web.log"))
	if err != nil {
		fail("the log is gone: %v", err)
		return
	}
	if int64(len(b)) < logSize {
		fail("the log shrank: %d bytes, %d before", len(b), logSize)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "service removed from this host") {
		fail("the log's last line is %q, not the removal's", last)
	}
}
