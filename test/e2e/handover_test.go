package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// handoverSpec is the demo service with the handover: the agent binds the
// service's port and passes it (socket activation), and waits for READY=1.
const handoverSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp"]
  sockets: [{name: http, listen: "127.0.0.1:${host.label.port}"}]
  ready: notify
  ready_timeout: 5s
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
    interval: 200ms
    timeout: 1s
min_healthy_time: 1s
healthy_deadline: 8s
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: 0s
  progress_deadline: 2m
`

// The load of these tests: 4 clients per host, a request every 20 ms each,
// each on a new connection.
const loadClients, loadInterval = 4, 20 * time.Millisecond

// TestHandoverUnderLoad: with the real binaries, a service that takes its
// socket from the agent and says when it is ready loses no request during
// rollouts, during an agent SIGTERM and start, during an agent kill -9 and
// start, and during a rollout right after an agent restart; its process
// (pid) survives the agent restarts.
func TestHandoverUnderLoad(t *testing.T) {
	e := newFleetEnv(t, 3)
	e.apply("web", handoverSpec)
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	load := e.fleet.StartLoad(e.ctx, "rollout v1 → v2", loadClients, loadInterval)
	defer load.Stop()
	if code := e.release("web", "v2", nil); code != 0 {
		t.Fatalf("v2 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")

	restart := func(how string, end func(*testfleet.Agent)) {
		t.Helper()
		pids := map[string]int{}
		for _, id := range e.fleet.AgentIDs() {
			pids[id] = e.servicePID(id)
		}
		load.Step("agent " + how + " and start")
		e.restartAgents(end)
		for _, id := range e.fleet.AgentIDs() {
			if pid := e.servicePID(id); pid != pids[id] {
				t.Errorf("%s: service pid %d after the agent's %s, was %d", id, pid, how, pids[id])
			}
		}
	}
	restart("SIGTERM", func(a *testfleet.Agent) { a.Stop(10 * time.Second) })
	load.Step("rollout v2 → v3 right after an agent restart")
	if code := e.release("web", "v3", nil); code != 0 {
		t.Fatalf("v3 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v3")
	restart("kill -9", func(a *testfleet.Agent) { a.Kill9() })
	load.Step("rollout v3 → v4 after a kill -9")
	if code := e.release("web", "v4", nil); code != 0 {
		t.Fatalf("v4 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v4")

	// A broken v5 (its health check fails) is reverted on the canary, the
	// old release started on the socket before v5 stops.
	load.Step("rollout of a broken v5, reverted")
	if code := e.release("web", "v5", map[string]string{"FAIL_HEALTH": "1"}); code != 1 {
		t.Fatalf("broken v5: watch exit %d, want 1: %v", code, e.rollout("web"))
	}
	e.allOn("v4")
	steps := load.Stop()
	total := 0
	for _, s := range steps {
		t.Logf("MEASURE %s", s.String())
		total += s.Requests
		if s.Requests == 0 {
			t.Errorf("step %q: no request was made", s.Name)
		}
	}
	if f := testfleet.Failures(steps); f != "" {
		t.Errorf("requests failed:\n%s", f)
	}
	t.Logf("%d requests in %d steps", total, len(steps))
}

// TestLoadWithoutSockets measures what a service that binds its own port
// loses: nothing across agent restarts (the process outlives the agent),
// and the gap between the old process's exit and the new one's bind during
// a rollout. The numbers are logged (MEASURE) and documented in the README;
// the test asserts what must hold, not how long anything takes.
func TestLoadWithoutSockets(t *testing.T) {
	e := newEnv(t, 3, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	load := e.fleet.StartLoad(e.ctx, "agent SIGTERM and start", loadClients, loadInterval)
	defer load.Stop()
	e.restartAgents(func(a *testfleet.Agent) { a.Stop(10 * time.Second) })
	load.Step("rollout v1 → v2 without sockets")
	if code := e.release("web", "v2", nil); code != 0 {
		t.Fatalf("v2 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	steps := load.Stop()
	for _, s := range steps {
		t.Logf("MEASURE %s", s.String())
	}
	if steps[0].Failed != 0 {
		t.Errorf("requests failed across agent restarts: %s: %s", steps[0].String(), strings.Join(steps[0].FirstFailures, "; "))
	}
	if steps[1].Requests == 0 {
		t.Error("no request during the rollout")
	}
}

// restartAgents ends every agent with end, starts it again, and waits until
// each has adopted its service again (one more "service adopted" line in
// its log), is connected, and reports web healthy.
func (e *env) restartAgents(end func(*testfleet.Agent)) {
	e.t.Helper()
	before := map[string]int{}
	for _, id := range e.fleet.AgentIDs() {
		a := e.fleet.Agents[id]
		before[id] = adoptions(e.t, a)
		end(a)
		if err := a.Restart(); err != nil {
			e.t.Fatal(err)
		}
	}
	e.waitFor(60*time.Second, "every agent back, its service adopted and healthy", func() (bool, string) {
		hosts, err := e.fleet.Hosts(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, h := range hosts {
			rep := serviceReport(h, "web")
			if !h.GetConnected() || rep.GetPhase() != v1.Phase_PHASE_HEALTHY || adoptions(e.t, e.fleet.Agents[h.GetId()]) <= before[h.GetId()] {
				bad = append(bad, fmt.Sprintf("%s connected=%v %s", h.GetId(), h.GetConnected(), rep.GetPhase()))
			}
		}
		return len(bad) == 0 && len(hosts) == len(before), strings.Join(bad, "; ")
	})
}
