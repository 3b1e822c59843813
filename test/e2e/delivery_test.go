package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

const manualSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 500ms
healthy_deadline: 20s
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 1
  mode: manual
  approve_each_wave: true
`

// Continuous delivery through the CLI: the rollout waits for approve, then
// before each wave; pause holds an approved wave; resume lets it go.
func TestManualApprovalAndPauseThroughCLI(t *testing.T) {
	e := newFleetEnv(t, 4)
	e.apply("web", manualSpec)
	e.cli(0, "release", "create", "web", "--version", "v1", "--artifact", e.artifact("v1", nil))
	out := e.cli(0, "rollout", "status", "web").Stdout
	if !strings.Contains(out, "waiting") {
		t.Fatalf("manual rollout does not wait:\n%s", out)
	}
	for _, id := range e.fleet.AgentIDs() {
		if v := e.fleet.Version(e.ctx, id); v != "" {
			t.Fatalf("host %s runs %s before approval", id, v)
		}
	}
	e.cli(0, "rollout", "approve", "web")
	waitWave := func(i int) {
		t.Helper()
		e.waitFor(60*time.Second, fmt.Sprintf("wave %d waits for approval", i), func() (bool, string) {
			r := e.rollout("web")
			return r.GetWaves()[i].GetWaitingApproval(), r.String()
		})
	}
	waitWave(1)
	// Approving a wave that does not wait names the one that does.
	if r := e.cli(1, "rollout", "approve", "web", "--wave", "2"); !strings.Contains(r.Stderr, "wave 1 does") {
		t.Errorf("approve of the wrong wave:\n%s", r.Stderr)
	}
	// Pause, then approve wave 1: approved but paused, nothing moves (the
	// engine steps on every report and tick; none of them may move it).
	e.cli(0, "rollout", "pause", "web")
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	r := e.rollout("web")
	if !r.GetPaused() || !r.GetWaves()[1].GetApproved() {
		t.Fatalf("after pause and approve: %v", r)
	}
	for _, h := range r.GetWaves()[1].GetHosts() {
		if h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING {
			t.Fatalf("host %s of wave 1 moved while paused", h.GetHostId())
		}
	}
	e.cli(0, "rollout", "resume", "web")
	waitWave(2)
	e.cli(0, "rollout", "approve", "web", "--wave", "2")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("watch: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	hist := e.cli(0, "rollout", "history", "web").Stdout
	for _, want := range []string{rollout.EventRolloutApproved, rollout.EventWaveWaitingApproval, rollout.EventRolloutPaused, rollout.EventRolloutResumed, "wave 1 approved"} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
}
