package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// stageSpec is p2pSpec with rollout.stage_ahead: the canary goes alone,
// wave 1 waits for approval meanwhile, and its hosts stage the release
// once the canary is done. min_healthy_time 3 s holds the canary in its
// wave long enough to see that nothing stages meanwhile (a staging of the
// demo artifact on loopback takes a fraction of that).
var stageSpec = strings.Replace(strings.Replace(p2pSpec, "  progress_deadline: 5m\n", "  progress_deadline: 5m\n  stage_ahead: true\n", 1),
	"min_healthy_time: 500ms\n", "min_healthy_time: 3s\n", 1)

// TestStageAhead: with rollout.stage_ahead, nothing stages while the
// canary is in its wave (no host staged or admitted, per the coordinator's
// gauges and every agent's staged counter, observed until the canary is
// done); then the hosts of wave 1 fetch and unpack the release while wave
// 1 waits for approval: all of them report it staged before their wave
// starts, none switches early (each still serves the old version,
// `current` still points at it), the coordinator serves about one copy
// (the canary's: the canary, done, is the staging tree's first holder and
// the others fetch from peers; before staging waited for the canary, its
// StageFanout children were roots served by the coordinator, 5 copies),
// and when the wave comes every host installs what it staged without
// fetching again.
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
	stagedAnywhere := func() float64 {
		var n float64
		for _, id := range e.fleet.AgentIDs() {
			n += agentMetric(id, "fleetwave_agent_staged_ahead_total")
		}
		return n
	}
	before, peersBefore := egress(), peerBytes()
	path := e.artifact("v2", nil)
	art, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(art))
	e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", path)
	e.cli(0, "rollout", "approve", "web")
	inWave := 0 // looks taken while the canary was in its wave
	e.waitFor(2*time.Minute, "the canary done, nothing staged while it was in its wave", func() (bool, string) {
		// The staging state first, then the rollout: if the canary is
		// still in its wave when read after, it was when they were read.
		staged := e.metric(e.fleet.MetricsAddr, `fleetwave_coordinator_staged_hosts{service="web"`)
		staging := e.metric(e.fleet.MetricsAddr, `fleetwave_coordinator_staging_hosts{service="web"`)
		agents := stagedAnywhere()
		r := e.rollout("web")
		if r.GetToVersion() != "v2" || len(r.GetWaves()) != 2 {
			return false, r.String()
		}
		if c := r.GetWaves()[0].GetHosts()[0]; c.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
			if c.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
				inWave++
			}
			if staged+staging+agents > 0 {
				t.Fatalf("while the canary is in its wave (%v): coordinator counts %v staged and %v staging, agents staged %v times; want nothing",
					c.GetState(), staged, staging, agents)
			}
			return false, "the canary in its wave"
		}
		return r.GetWaves()[0].GetState() == v1.WaveState_WAVE_STATE_DONE && r.GetWaves()[1].GetWaitingApproval(), r.String()
	})
	if inWave == 0 {
		t.Fatal("never saw the canary's wave running: nothing checked while it ran")
	}
	canary := e.rollout("web").GetWaves()[0].GetHosts()[0].GetHostId()
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
	// One copy, the canary's: every staging host's first source is a
	// holder above it. The slack, under 2 copies, is for a staging fetch
	// from a peer that fails midway and resumes from the coordinator at
	// its offset (the install's path): part of a copy, never a whole one.
	// Before staging waited for the canary: 5.0 copies.
	staging := egress() - before
	if staging >= float64(2*size) {
		t.Errorf("coordinator egress for v2's canary and staging: %v bytes (%.1f copies of %d), want under 2 copies (the canary's, and part of one)",
			staging, staging/float64(size), size)
	}
	fromPeers := peerBytes() - peersBefore
	t.Logf("v2 staged on %d hosts (canary %s, %d looks while it was in its wave): coordinator egress %.0f bytes (%.1f copies), %.0f bytes from peers",
		len(wave), canary, inWave, staging, staging/float64(size), fromPeers)

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
