package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// stageSpec is p2pSpec with rollout.stage_ahead: the canary goes alone,
// wave 1 waits for approval meanwhile, and its hosts stage the release.
var stageSpec = strings.Replace(p2pSpec, "  progress_deadline: 5m\n", "  progress_deadline: 5m\n  stage_ahead: true\n", 1)

// TestStageAhead: with rollout.stage_ahead, the hosts of wave 1 fetch and
// unpack the release while the canary runs and wave 1 waits for approval:
// all of them report it staged before their wave starts, none switches
// early (each still serves the old version, `current` still points at it),
// the coordinator serves at most 1 + rollout.StageFanout copies (the
// canary's, and its children in the staging tree, which are roots served
// by the coordinator while the canary is still in its wave; the others
// fetch from peers), and when
// the wave comes every host installs what it staged without fetching again.
// A new release while hosts stage supersedes the rollout: the old stage is
// dropped (its release directory removed) and the new one staged.
func TestStageAhead(t *testing.T) {
	const n = 6
	e := newP2PEnv(t, n)
	e.apply("web", stageSpec)
	egress := func() float64 {
		return e.metric(e.fleet.MetricsAddr, "fleetwave_coordinator_artifact_egress_bytes_total")
	}
	agentMetric := func(id, name string) float64 { return e.metric(e.fleet.Agents[id].MetricsAddr, name) }
	current := func(id string) string {
		p, err := os.Readlink(filepath.Join(e.fleet.Agents[id].DataDir, "releases", "web", "current"))
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		return filepath.Base(p)
	}
	releaseDir := func(id, v string) string { return filepath.Join(e.fleet.Agents[id].DataDir, "releases", "web", v) }

	// v1 everywhere (a first release stages nothing: hosts have no
	// release to wait on).
	e.startP2PRelease("v1")
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")

	// v2: wave 1 stages while the canary runs, before approval.
	peerBytes := func() float64 {
		var b float64
		for _, id := range e.fleet.AgentIDs() {
			b += agentMetric(id, `fleetwave_agent_artifact_source_bytes_total{source="peer"}`)
		}
		return b
	}
	before, peersBefore := egress(), peerBytes()
	size, _, canary := e.startP2PRelease("v2")
	wave := e.waveHosts(1)
	e.waitFor(2*time.Minute, "wave 1 staged v2 ahead of its wave", func() (bool, string) {
		var missing []string
		for _, id := range wave {
			if agentMetric(id, "fleetwave_agent_staged_ahead_total") < 1 {
				missing = append(missing, id)
			}
		}
		staged := e.metric(e.fleet.MetricsAddr, `fleetwave_coordinator_staged_hosts{service="web"`)
		return len(missing) == 0 && staged == float64(len(wave)), fmt.Sprintf("not staged: %v; coordinator counts %v staged", missing, staged)
	})
	r := e.rollout("web")
	if !r.GetWaves()[1].GetWaitingApproval() || r.GetWaves()[1].GetState() != v1.WaveState_WAVE_STATE_PENDING {
		t.Fatalf("wave 1 started before the test approved it: %v", r.GetWaves()[1])
	}
	for _, id := range wave {
		if got := e.fleet.Version(e.ctx, id); got != "v1" {
			t.Errorf("%s serves %q while only staging v2, want v1", id, got)
		}
		if c := current(id); c != "v1" {
			t.Errorf("%s: current is %s while only staging v2, want v1", id, c)
		}
		if _, err := os.Stat(releaseDir(id, "v2")); err != nil {
			t.Errorf("%s: v2 not unpacked: %v", id, err)
		}
	}
	staging := egress() - before
	if staging > float64((1+rollout.StageFanout)*size) {
		t.Errorf("coordinator egress for v2's canary and staging: %v bytes, want at most %d copies of %d", staging, 1+rollout.StageFanout, size)
	}
	fromPeers := peerBytes() - peersBefore
	t.Logf("v2 staged on %d hosts (canary %s): coordinator egress %.0f bytes (%.1f copies), %.0f bytes from peers",
		len(wave), canary, staging, staging/float64(size), fromPeers)

	// The wave comes: installs from what is staged, nothing fetched again.
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v2: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	for _, id := range wave {
		if got := agentMetric(id, "fleetwave_agent_installs_prestaged_total"); got < 1 {
			t.Errorf("%s: the install of v2 did not use the staged release (prestaged installs %v)", id, got)
		}
	}
	if got := egress() - before; got != staging {
		t.Errorf("coordinator egress grew by %v bytes during wave 1: its hosts fetched again", got-staging)
	}

	// v3 stages; v4, created meanwhile, supersedes it: v3 is dropped, v4
	// staged.
	e.startP2PRelease("v3")
	wave = e.waveHosts(1)
	e.waitFor(2*time.Minute, "wave 1 staged v3", func() (bool, string) {
		for _, id := range wave {
			if _, err := os.Stat(releaseDir(id, "v3")); err != nil {
				return false, err.Error()
			}
		}
		return true, ""
	})
	e.cli(0, "release", "create", "web", "--version", "v4", "--artifact", e.artifact("v4", nil))
	e.waitFor(2*time.Minute, "v3's stage dropped once v4 supersedes it", func() (bool, string) {
		for _, id := range wave {
			if _, err := os.Stat(releaseDir(id, "v3")); err == nil {
				return false, id + " still has v3"
			}
		}
		return true, ""
	})
	e.cli(0, "rollout", "approve", "web")
	e.waitFor(2*time.Minute, "wave 1 staged v4", func() (bool, string) {
		r := e.rollout("web")
		if r.GetToVersion() != "v4" {
			return false, r.String()
		}
		for _, id := range e.waveHosts(1) {
			if _, err := os.Stat(releaseDir(id, "v4")); err != nil {
				return false, err.Error()
			}
			if c := current(id); c == "v4" {
				return false, fmt.Sprintf("%s: switched to v4 before its wave", id)
			}
		}
		return true, ""
	})
}
