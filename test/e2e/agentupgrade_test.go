package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit/testcluster"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestAgentUpgradeInWaves: with the real binaries, three hosts running a
// service with sockets under load are upgraded to a new agent binary (built
// here with another version) in waves, canary first. host-3's new agent
// cannot reach the coordinator (its path refuses new connections while the
// old agent's stream stays up): it does not confirm within the deadline, the
// old agent stops it and runs again by itself, and the rollout fails by the
// budget. The other hosts run the new agent (it is their executable now,
// the old one kept as .previous), `hosts` shows each host's version. After
// an unfreeze a fixed agent reaches every host, the upgraded agents handing
// over in their turn. No service was restarted anywhere, and no request
// failed.
func TestAgentUpgradeInWaves(t *testing.T) {
	const newVersion, deadline = "v0.2.0", "20s"
	ctx := t.Context()
	dir := t.TempDir()
	newBin := buildAgent(t, filepath.Join(dir, "new"), newVersion)
	tgz := agentArtifact(t, newBin, filepath.Join(dir, "fleetwave-agent-"+newVersion+".tar.gz"))
	oldBytes, err := os.ReadFile(bins.Agent)
	if err != nil {
		t.Fatal(err)
	}
	newBytes, err := os.ReadFile(newBin)
	if err != nil {
		t.Fatal(err)
	}

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
	// host-3 reaches the coordinator through a proxy the test can close to
	// new connections.
	proxy := testcluster.NewProxy(t, f.Addr)
	exes := map[string]string{}
	for i, zone := range []string{"a", "b", "a"} {
		id := fmt.Sprintf("host-%d", i+1)
		exes[id] = filepath.Join(dir, "bin-"+id, "fleetwave-agent")
		if err := os.MkdirAll(filepath.Dir(exes[id]), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exes[id], oldBytes, 0o755); err != nil {
			t.Fatal(err)
		}
		o := testfleet.AgentOptions{Binary: exes[id], Args: []string{"--upgrade-deadline", deadline}}
		if id == "host-3" {
			o.Coordinator = proxy.Addr()
		}
		if _, err := f.AddAgentWith(id, zone, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitConnected(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	e.apply("web", handoverSpec)
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	pids, adopted := map[string]int{}, map[string]int{}
	for _, id := range f.AgentIDs() {
		pids[id], adopted[id] = e.servicePID(id), adoptions(t, f.Agents[id])
	}

	load := f.StartLoad(ctx, "agent upgrade dev → "+newVersion+" in waves, host-3's new agent cut off", loadClients, loadInterval)
	defer load.Stop()
	proxy.RefuseNew()
	out := e.cli(0, "agent", "upgrade", "--version", newVersion, "--artifact", tgz,
		"--canary", "1", "--waves", "100", "--max-parallel", "2", "--progress-deadline", "3m")
	if !strings.Contains(out.Stdout, "release fleetwave-agent "+newVersion+" created") {
		t.Fatalf("agent upgrade said:\n%s", out.Stdout)
	}
	// host-3's old agent gives up on its new agent by itself, at the
	// deadline, and runs again.
	var rec lifecycle.AgentUpgrade
	e.waitFor(3*time.Minute, "host-3's agent went back by itself", func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(f.Agents["host-3"].DataDir, "agent", "upgrade.json"))
		if err != nil {
			return false, err.Error()
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			return false, err.Error()
		}
		return rec.State == lifecycle.AgentFailed, string(b)
	})
	if want := "new agent " + newVersion + " did not connect and confirm within " + deadline + ": went back to dev"; rec.Reason != want {
		t.Errorf("host-3's record: %q, want %q", rec.Reason, want)
	}
	proxy.Restore()
	if r := e.fleet.CLI(ctx, "rollout", "watch", spec.AgentService); r.Code != 1 {
		t.Fatalf("rollout watch %s: exit %d, want 1 (failed)\n%s%s", spec.AgentService, r.Code, r.Stdout, r.Stderr)
	}
	steps := load.Stop()

	r := e.rollout(spec.AgentService)
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(r.GetReason(), "host-3: new agent "+newVersion+" did not connect") {
		t.Fatalf("agent rollout: %s: %s", r.GetState(), r.GetReason())
	}
	if len(r.GetWaves()) != 2 || r.GetWaves()[0].GetHosts()[0].GetHostId() != "host-1" ||
		r.GetWaves()[0].GetState() != v1.WaveState_WAVE_STATE_DONE || r.GetWaves()[1].GetState() != v1.WaveState_WAVE_STATE_FAILED {
		t.Fatalf("agent rollout waves: %v", r.GetWaves())
	}
	want := map[string]string{"host-1": newVersion, "host-2": newVersion, "host-3": "dev"}
	e.waitFor(60*time.Second, "every host connected with its agent version", func() (bool, string) {
		hosts, err := f.Hosts(ctx)
		if err != nil {
			return false, err.Error()
		}
		got := map[string]string{}
		ok := len(hosts) == 3
		for _, h := range hosts {
			got[h.GetId()] = fmt.Sprintf("%s connected=%v", h.GetAgentVersion(), h.GetConnected())
			ok = ok && h.GetConnected() && h.GetAgentVersion() == want[h.GetId()]
		}
		return ok, fmt.Sprint(got)
	})
	table := e.cli(0, "hosts").Stdout
	for id, v := range want {
		if !strings.Contains(table, id) || !strings.Contains(lineOf(table, id), " "+v+" ") {
			t.Errorf("hosts: %s's line does not show %s:\n%s", id, v, table)
		}
	}

	// No service was restarted: the same processes, adopted by every agent
	// that ran (the new ones; on host-3 its new agent and the old one again).
	e.allOn("v1")
	for _, id := range f.AgentIDs() {
		if pid := e.servicePID(id); pid != pids[id] {
			t.Errorf("%s: service pid %d after the agent upgrade, was %d", id, pid, pids[id])
		}
		if n := adoptions(t, f.Agents[id]); n <= adopted[id] {
			t.Errorf("%s: the service was not adopted again (%d adoptions, %d before)", id, n, adopted[id])
		}
		if e.ran(id, "web", "v2") {
			t.Errorf("%s ran something else", id)
		}
	}
	if n := adoptions(t, f.Agents["host-3"]); n < adopted["host-3"]+2 {
		t.Errorf("host-3: %d adoptions, want its new agent's and its old agent's again (at least %d)", n, adopted["host-3"]+2)
	}
	// The upgraded hosts' executable is the new agent; the old one is kept.
	for id, exe := range exes {
		if id == "host-3" {
			b, _ := os.ReadFile(exe)
			if _, perr := os.Stat(exe + ".previous"); !bytes.Equal(b, oldBytes) || perr == nil {
				t.Errorf("%s: its executable was replaced (or a .previous kept: %v)", id, perr)
			}
			continue
		}
		e.waitFor(60*time.Second, id+"'s executable is "+newVersion+", the old one kept", func() (bool, string) {
			b, _ := os.ReadFile(exe)
			prev, _ := os.ReadFile(exe + ".previous")
			return bytes.Equal(b, newBytes) && bytes.Equal(prev, oldBytes),
				fmt.Sprintf("executable %v, .previous %v", bytes.Equal(b, newBytes), bytes.Equal(prev, oldBytes))
		})
	}

	// After a look: a fixed agent reaches every host, the upgraded ones
	// upgrading again (the new agent hands over in its turn) and host-3
	// from where it went back.
	const fixed = "v0.3.0"
	fixedBin := buildAgent(t, filepath.Join(dir, "fixed"), fixed)
	fixedBytes, err := os.ReadFile(fixedBin)
	if err != nil {
		t.Fatal(err)
	}
	load = f.StartLoad(ctx, "agent upgrade to "+fixed+" in waves", loadClients, loadInterval)
	defer load.Stop()
	e.cli(0, "service", "unfreeze", spec.AgentService)
	e.cli(0, "agent", "upgrade", "--version", fixed, "--artifact", agentArtifact(t, fixedBin, filepath.Join(dir, "fleetwave-agent-"+fixed+".tar.gz")),
		"--canary", "1", "--waves", "100", "--max-parallel", "2", "--progress-deadline", "3m")
	if r := e.fleet.CLI(ctx, "rollout", "watch", spec.AgentService); r.Code != 0 {
		t.Fatalf("rollout watch %s: exit %d, want 0\n%s%s", spec.AgentService, r.Code, r.Stdout, r.Stderr)
	}
	steps = append(steps, load.Stop()...)
	e.waitFor(60*time.Second, "every host connected on "+fixed, func() (bool, string) {
		hosts, err := f.Hosts(ctx)
		if err != nil {
			return false, err.Error()
		}
		got := map[string]string{}
		ok := len(hosts) == 3
		for _, h := range hosts {
			got[h.GetId()] = fmt.Sprintf("%s connected=%v", h.GetAgentVersion(), h.GetConnected())
			ok = ok && h.GetConnected() && h.GetAgentVersion() == fixed
		}
		return ok, fmt.Sprint(got)
	})
	e.allOn("v1")
	for id, exe := range exes {
		if pid := e.servicePID(id); pid != pids[id] {
			t.Errorf("%s: service pid %d after the second agent upgrade, was %d", id, pid, pids[id])
		}
		prevWant := newBytes
		if id == "host-3" {
			prevWant = oldBytes
		}
		// A host is done when its new agent reports; the old one replaces
		// the executable right after the confirmation.
		e.waitFor(60*time.Second, id+"'s executable is "+fixed+", the one before kept", func() (bool, string) {
			b, _ := os.ReadFile(exe)
			prev, _ := os.ReadFile(exe + ".previous")
			return bytes.Equal(b, fixedBytes) && bytes.Equal(prev, prevWant),
				fmt.Sprintf("executable %v, .previous %v", bytes.Equal(b, fixedBytes), bytes.Equal(prev, prevWant))
		})
	}

	for _, s := range steps {
		t.Logf("MEASURE %s", s.String())
		if s.Requests == 0 {
			t.Errorf("step %q: no request was made", s.Name)
		}
	}
	if fl := testfleet.Failures(steps); fl != "" {
		t.Errorf("requests failed:\n%s", fl)
	}
}

// lineOf is the first line of text that contains s.
func lineOf(text, s string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// buildAgent builds the agent with version into dir.
func buildAgent(t *testing.T, dir, version string) string {
	t.Helper()
	root, err := testfleet.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "fleetwave-agent")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-ldflags", "-X main.version="+version, "-o", out, "./cmd/fleetwave-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the agent %s: %v\n%s", version, err, b)
	}
	return out
}

// agentArtifact writes a .tar.gz with bin as fleetwave-agent at its root.
func agentArtifact(t *testing.T, bin, path string) string {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "fleetwave-agent", Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
