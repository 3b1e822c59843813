package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The load of these tests: 4 clients per host, a request every 20 ms each,
// each on a new connection.
const loadClients, loadInterval = 4, 20 * time.Millisecond

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
			var rep *v1.ServiceReport
			for _, s := range h.GetServices() {
				if s.GetService() == "web" {
					rep = s
				}
			}
			if !h.GetConnected() || rep.GetPhase() != v1.Phase_PHASE_HEALTHY || adoptions(e.t, e.fleet.Agents[h.GetId()]) <= before[h.GetId()] {
				bad = append(bad, fmt.Sprintf("%s connected=%v %s", h.GetId(), h.GetConnected(), rep.GetPhase()))
			}
		}
		return len(bad) == 0 && len(hosts) == len(before), strings.Join(bad, "; ")
	})
}
