package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Peer-to-peer artifacts with real agents: a TLS fleet whose agents serve
// the artifacts they hold (--peer-listen). The policy lets the canary go
// alone, then waits for approval before the rest, so the test can act
// between the canary and the wave that fetches from it.
const p2pSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 500ms
healthy_deadline: 30s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 4
  mode: manual
  approve_each_wave: true
  progress_deadline: 5m
`

// newP2PEnv starts a TLS coordinator and n agents (zones a, b) with peer
// listeners; peerArgs are more agent flags.
func newP2PEnv(t *testing.T, n int, peerArgs ...string) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	f, err := testfleet.NewFleetWith(ctx, bins, dir, testfleet.Options{TLS: true})
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
	for i := range n {
		args := append([]string{"--peer-listen", ports.Addr(t)}, peerArgs...)
		if _, err := f.AddAgentWith(fmt.Sprintf("host-%d", i+1), []string{"a", "b"}[i%2], testfleet.AgentOptions{Args: args}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitConnected(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	e.apply("web", p2pSpec)
	return e
}

// metric reads the sum of a metric's series whose line starts with prefix
// (name and, optionally, the start of its labels) from addr's /metrics.
func (e *env) metric(addr, prefix string) float64 {
	e.t.Helper()
	body, code, err := testfleet.HTTPGet(e.ctx, "http://"+addr+"/metrics")
	if err != nil || code != 200 {
		e.t.Fatalf("scrape %s: %d %v", addr, code, err)
	}
	var total float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		rest := strings.TrimPrefix(line, prefix)
		if rest == "" || (rest[0] != ' ' && rest[0] != '{' && rest[0] != ',' && rest[0] != '"') {
			continue // another metric whose name starts the same
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			e.t.Fatalf("%s: %q: %v", addr, line, err)
		}
		total += v
	}
	return total
}

// startP2PRelease creates a release and approves it; once the canary is
// done and the next wave waits, it returns the artifact's size and sha256
// and the canary.
func (e *env) startP2PRelease(version string) (size int64, digest, canary string) {
	e.t.Helper()
	path := e.artifact(version, nil)
	b, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	e.cli(0, "release", "create", "web", "--version", version, "--artifact", path)
	e.cli(0, "rollout", "approve", "web")
	e.waitFor(2*time.Minute, "the canary done, wave 1 waiting for approval", func() (bool, string) {
		r := e.rollout("web")
		return r.GetToVersion() == version && len(r.GetWaves()) == 2 && r.GetWaves()[1].GetWaitingApproval() &&
			r.GetWaves()[0].GetState() == v1.WaveState_WAVE_STATE_DONE, r.String()
	})
	return int64(len(b)), hex.EncodeToString(sum[:]), e.rollout("web").GetWaves()[0].GetHosts()[0].GetHostId()
}

// waveHosts are the hosts of wave i of the newest rollout.
func (e *env) waveHosts(i int) []string {
	var out []string
	for _, h := range e.rollout("web").GetWaves()[i].GetHosts() {
		out = append(out, h.GetHostId())
	}
	return out
}

// TestPeerToPeerBadPeerRejected: the canary's kept artifact is corrupted on
// disk after it was verified; the next wave, told to fetch from it, rejects
// its bytes, fetches from the coordinator instead, and names the canary as
// a bad source (hosts list, metrics). On a good release the same wave
// fetches from the canary alone: the coordinator serves one copy for the
// whole fleet.
func TestPeerToPeerBadPeerRejected(t *testing.T) {
	const n = 4
	e := newP2PEnv(t, n)
	coordEgress := func() float64 {
		return e.metric(e.fleet.MetricsAddr, "fleetwave_coordinator_artifact_egress_bytes_total")
	}

	// A good release: one copy from the coordinator (the canary's).
	size, _, canary := e.startP2PRelease("v1")
	if got := coordEgress(); got != float64(size) {
		t.Fatalf("coordinator egress after the canary: %v bytes, want one copy (%d)", got, size)
	}
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	if got := coordEgress(); got != float64(size) {
		t.Fatalf("coordinator egress after %d hosts: %v bytes, want one copy (%d): the others fetch from peers", n, got, size)
	}
	var fromPeers float64
	for _, id := range e.fleet.AgentIDs() {
		fromPeers += e.metric(e.fleet.Agents[id].MetricsAddr, `fleetwave_agent_artifact_source_bytes_total{source="peer"}`)
	}
	if fromPeers != float64((n-1)*size) {
		t.Fatalf("%v bytes came from peers, want %d copies of %d", fromPeers, n-1, size)
	}
	t.Logf("v1 over %d hosts: coordinator egress %.0f bytes (1 copy), %.0f bytes between peers", n, coordEgress(), fromPeers)

	// A release whose canary then holds corrupted bytes.
	size2, digest2, canary2 := e.startP2PRelease("v2")
	kept := filepath.Join(e.fleet.Agents[canary2].DataDir, "artifacts", digest2)
	b, err := os.ReadFile(kept)
	if err != nil {
		t.Fatalf("the canary %s (v1's: %s) does not keep v2's artifact: %v", canary2, canary, err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(kept, b, 0o644); err != nil {
		t.Fatal(err)
	}
	egressBefore := coordEgress()
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v2: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	wave := e.waveHosts(1)
	if got := coordEgress() - egressBefore; got != float64(len(wave))*float64(size2) {
		t.Errorf("coordinator egress for wave 1: %v bytes, want one copy per host (%d × %d): the bad peer was its only source", got, len(wave), size2)
	}
	hosts := e.cli(0, "hosts").Stdout
	for _, id := range wave {
		if got := e.metric(e.fleet.Agents[id].MetricsAddr, "fleetwave_agent_peer_sources_rejected_total"); got != 1 {
			t.Errorf("%s rejected %v peers, want 1", id, got)
		}
		line := lineOf(hosts, id+" ")
		if !strings.Contains(line, "(bad peer "+canary2+")") {
			t.Errorf("hosts does not name %s as %s's bad peer: %q", canary2, id, line)
		}
	}
}

// TestPeerToPeerCoordinatorDownMidWave: the wave's hosts are fetching from
// the canary (its uploads slowed by --peer-upload-rate) when the
// coordinator is killed; they finish the fetch from the peer and run the
// release without it. Restarted, the coordinator sees the rollout through
// having served one copy.
func TestPeerToPeerCoordinatorDownMidWave(t *testing.T) {
	const n = 4
	// About 3 s per copy of the demo artifact (a few MB) from the canary.
	e := newP2PEnv(t, n, "--peer-upload-rate", strconv.Itoa(2<<20))
	size, _, canary := e.startP2PRelease("v1")
	wave := e.waveHosts(1)
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	// Every host of the wave fetches from the canary.
	e.waitFor(time.Minute, "wave 1 fetching from the canary", func() (bool, string) {
		var got []string
		for _, id := range wave {
			b := e.metric(e.fleet.Agents[id].MetricsAddr, `fleetwave_agent_artifact_source_bytes_total{source="peer"}`)
			if b == 0 {
				return false, fmt.Sprintf("%s has no peer bytes yet", id)
			}
			got = append(got, fmt.Sprintf("%s=%.0f", id, b))
		}
		return true, strings.Join(got, " ")
	})
	e.fleet.Coord.Kill9()
	// With the coordinator down, every host of the wave completes its
	// fetch from the peer and serves v1.
	e.waitFor(2*time.Minute, "wave 1 serving v1 without a coordinator", func() (bool, string) {
		vs := map[string]string{}
		for _, id := range wave {
			vs[id] = e.fleet.Version(e.ctx, id)
			if vs[id] != "v1" {
				return false, fmt.Sprint(vs)
			}
		}
		return true, ""
	})
	for _, id := range wave {
		if got := e.metric(e.fleet.Agents[id].MetricsAddr, `fleetwave_agent_artifact_source_bytes_total{source="peer"}`); got != float64(size) {
			t.Errorf("%s: %v bytes from peers, want the whole artifact (%d)", id, got, size)
		}
		if got := e.metric(e.fleet.Agents[id].MetricsAddr, `fleetwave_agent_artifact_source_bytes_total{source="coordinator"}`); got != 0 {
			t.Errorf("%s: %v bytes from the coordinator, want none", id, got)
		}
	}
	if got := e.metric(e.fleet.Agents[canary].MetricsAddr, "fleetwave_agent_peer_upload_bytes_total"); got != float64(len(wave))*float64(size) {
		t.Errorf("the canary %s uploaded %v bytes, want %d copies of %d", canary, got, len(wave), size)
	}
	if err := e.fleet.Coord.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := e.fleet.WaitConnected(e.ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v1 after the coordinator's restart: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
}
