package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// configSpec is specTmpl's service run with --dir DIR: the demo app reads
// its VERSION and behaviour files from there, so a spec change alone (the
// command) changes what the hosts serve.
func configSpec(dir string) string {
	return strings.Replace(fmt.Sprintf(specTmpl, "web", "0s"),
		`command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]`,
		`command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}", "--dir", "`+dir+`"]`, 1)
}

// A config-only rollout with real binaries: a spec that changes the
// command rolls release v1 out again, canary first; its canary fails its
// health check and reverts to v1 with spec 1 by itself, the rollout fails,
// no other host ever runs spec 2 (nor restarts), and the service freezes.
// The failed spec is not retried; after an unfreeze a good spec rolls out
// to every host. The CLI names the spec revisions throughout.
func TestConfigRolloutCanaryFailsAndIsReverted(t *testing.T) {
	e := newFleetEnv(t, 4)
	e.apply("web", configSpec("."))
	// One artifact carries three configurations: the release's own (.), a
	// broken one (cfg-b: unhealthy) and a good one (cfg-c).
	extra := map[string]string{"cfg-b/VERSION": "v1-b", "cfg-b/FAIL_HEALTH": "1", "cfg-c/VERSION": "v1-c"}
	if code := e.release("web", "v1", extra); code != 0 {
		t.Fatalf("rollout of v1: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	pids := map[string]int{}
	for _, id := range e.fleet.AgentIDs() {
		pids[id] = e.servicePID(id)
	}

	// Spec 2 runs the broken configuration: a config rollout of v1.
	e.apply("web", configSpec("./cfg-b"))
	out := e.cli(0, "service", "get", "web").Stdout
	if !strings.Contains(out, "spec 2") {
		t.Errorf("service get does not name spec 2:\n%s", out)
	}
	watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
	if watch.Code != 1 {
		t.Fatalf("rollout watch of the broken spec: exit %d, want 1\n%s\n%s", watch.Code, watch.Stdout, watch.Stderr)
	}
	if !strings.Contains(watch.Stdout, "config rollout") || !strings.Contains(watch.Stdout, "v1 with spec 1 → spec 2 (changes run.command)") {
		t.Errorf("rollout watch does not name the config rollout:\n%s", watch.Stdout)
	}
	r := e.rollout("web")
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !rollout.IsConfig(r) || r.GetSpecRevision() != 2 || r.GetFromSpecRevision() != 1 {
		t.Fatalf("config rollout: %v (spec %d from %d): %s", r.GetState(), r.GetSpecRevision(), r.GetFromSpecRevision(), r.GetReason())
	}
	if !strings.Contains(r.GetReason(), "canary") {
		t.Errorf("failure reason does not name the canary: %q", r.GetReason())
	}
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	// Every host serves v1 with spec 1 again; the canary ran spec 2 (and
	// was restarted twice), no other host ran it or restarted.
	e.allOn("v1")
	if !e.ran(canary, "web", "v1-b") {
		t.Errorf("canary %s never ran spec 2: the failure was not its health check", canary)
	}
	for _, id := range e.fleet.AgentIDs() {
		if id == canary {
			if e.servicePID(id) == pids[id] {
				t.Errorf("canary %s was not restarted with spec 2", id)
			}
			continue
		}
		if e.ran(id, "web", "v1-b") {
			t.Errorf("host %s outside the canary ran spec 2", id)
		}
		if got := e.servicePID(id); got != pids[id] {
			t.Errorf("host %s outside the canary was restarted: pid %d -> %d", id, pids[id], got)
		}
	}
	out = e.cli(0, "service", "get", "web").Stdout
	for _, want := range []string{"v1 with spec 1", "spec 2 (hosts run spec 1; it changes run.command)", "yes:"} {
		if !strings.Contains(out, want) {
			t.Errorf("service get after the failure lacks %q:\n%s", want, out)
		}
	}
	hist := e.cli(0, "rollout", "history", "web").Stdout
	for _, want := range []string{"v1 with spec 1 → spec 2", rollout.EventHostFailed, rollout.EventRolloutFailed} {
		if !strings.Contains(hist, want) {
			t.Errorf("rollout history lacks %q:\n%s", want, hist)
		}
	}

	// Unfrozen, the failed spec is not retried; spec 3 (good) rolls out to
	// every host.
	e.cli(0, "service", "unfreeze", "web")
	if again := e.rollout("web"); again.GetId() != r.GetId() {
		t.Fatalf("a rollout started after the unfreeze: %v", again)
	}
	e.apply("web", configSpec("./cfg-c"))
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("rollout of spec 3: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1-c")
	if r3 := e.rollout("web"); !rollout.IsConfig(r3) || r3.GetSpecRevision() != 3 || r3.GetFromSpecRevision() != 1 {
		t.Fatalf("spec 3 rollout: %v", r3)
	}
	if out := e.cli(0, "stats", "web").Stdout; !strings.Contains(out, "2 config rollouts") {
		t.Errorf("stats do not count the config rollouts:\n%s", out)
	}
}
