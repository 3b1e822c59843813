package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestServicesOutliveAgentRestarts: with the real binaries, every host's
// service keeps its process (the same pid) across a SIGTERM and start of
// its agent and across a kill -9 and start, and answers all along; the
// restarted agents adopt the services and report them healthy.
func TestServicesOutliveAgentRestarts(t *testing.T) {
	e := newEnv(t, 2, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	ids := e.fleet.AgentIDs()
	pids := map[string]int{}
	for _, id := range ids {
		pids[id] = e.servicePID(id)
	}

	// Ask every service for its version, all the time, until the end.
	var (
		asked, failed atomic.Int64
		answered      = map[string]*atomic.Int64{}
		mu            sync.Mutex
		failures      []string
		stop          = make(chan struct{})
		wg            sync.WaitGroup
	)
	for _, id := range ids {
		answered[id] = new(atomic.Int64)
	}
	for _, id := range ids {
		wg.Go(func() {
			url := fmt.Sprintf("http://127.0.0.1:%d/version", e.fleet.Agents[id].Port)
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond): // request pacing
				}
				body, code, err := testfleet.HTTPGet(e.ctx, url)
				asked.Add(1)
				if err != nil || code != 200 || strings.TrimSpace(body) != "v1" {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s at %s: %d %q %v", id, time.Now().Format("15:04:05.000"), code, body, err))
					mu.Unlock()
				} else {
					answered[id].Add(1)
				}
			}
		})
	}

	restart := func(how string, end func(*testfleet.Agent)) {
		t.Helper()
		before := map[string]int{}
		for _, id := range ids {
			a := e.fleet.Agents[id]
			before[id] = adoptions(t, a)
			end(a)
		}
		// No agent runs: every service answers all the same.
		down := map[string]int64{}
		for _, id := range ids {
			down[id] = answered[id].Load()
		}
		e.waitFor(60*time.Second, "every service answers while no agent runs", func() (bool, string) {
			var why []string
			for _, id := range ids {
				if n := answered[id].Load() - down[id]; n < 10 {
					why = append(why, fmt.Sprintf("%s answered %d", id, n))
				}
			}
			return len(why) == 0, strings.Join(why, "; ")
		})
		for _, id := range ids {
			a := e.fleet.Agents[id]
			if err := a.Restart(); err != nil {
				t.Fatal(err)
			}
			e.waitFor(60*time.Second, id+"'s new agent adopts its service after "+how, func() (bool, string) {
				n := adoptions(t, a)
				return n > before[id], fmt.Sprintf("%d adoptions logged", n)
			})
		}
		e.waitFor(60*time.Second, "every host reports web healthy on v1 again after "+how, func() (bool, string) {
			hosts, err := e.fleet.Hosts(e.ctx)
			if err != nil {
				return false, err.Error()
			}
			var bad []string
			for _, h := range hosts {
				rep := serviceReport(h, "web")
				if !h.GetConnected() || rep.GetPhase() != v1.Phase_PHASE_HEALTHY || rep.GetCurrentVersion() != "v1" {
					bad = append(bad, fmt.Sprintf("%s connected=%v %s %s", h.GetId(), h.GetConnected(), rep.GetPhase(), rep.GetCurrentVersion()))
				}
			}
			return len(bad) == 0 && len(hosts) == len(ids), strings.Join(bad, "; ")
		})
		for _, id := range ids {
			if got := e.servicePID(id); got != pids[id] {
				t.Fatalf("%s: the service's pid changed across the agent's %s: %d -> %d", id, how, pids[id], got)
			}
		}
	}
	restart("SIGTERM", func(a *testfleet.Agent) {
		a.Stop(30 * time.Second)
		if a.Running() {
			t.Fatalf("%s: agent still running after SIGTERM", a.ID)
		}
	})
	restart("kill -9", func(a *testfleet.Agent) { a.Kill9() })

	close(stop)
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d of %d requests failed across the agent restarts:\n%s", failed.Load(), asked.Load(), strings.Join(failures, "\n"))
	}
	if asked.Load() == 0 {
		t.Fatal("no request was made")
	}
	t.Logf("%d requests across two restarts of %d agents, all answered", asked.Load(), len(ids))
}

// servicePID is the pid of a host's service, from its agent's PID file;
// the process must be alive.
func (e *env) servicePID(id string) int {
	e.t.Helper()
	rec, err := supervise.ReadPIDFile(filepath.Join(e.fleet.Agents[id].DataDir, "run", "web.pid"))
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", rec.PGID)); err != nil {
		e.t.Fatalf("%s: service pid %d: %v", id, rec.PGID, err)
	}
	return rec.PGID
}

// adoptions counts the "service adopted" lines in an agent's log.
func adoptions(t *testing.T, a *testfleet.Agent) int {
	t.Helper()
	b, err := os.ReadFile(a.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), `"message":"service adopted: left running by an earlier agent"`)
}
