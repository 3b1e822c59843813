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

// gone reports whether the process pid no longer runs (a zombie counts as
// gone).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// removedFrom reports why host id still has the web service ("" when its
// process pid is gone and its releases and PID file are too).
func (e *env) removedFrom(id string, pid int) string {
	dir := e.fleet.Agents[id].DataDir
	switch {
	case !gone(pid):
		return fmt.Sprintf("%s: process %d runs", id, pid)
	case exists(filepath.Join(dir, "releases", "web")):
		return id + ": releases/web is there"
	case exists(filepath.Join(dir, "run", "web.pid")):
		return id + ": run/web.pid is there"
	case exists(filepath.Join(dir, "state", "web.json")):
		return id + ": state/web.json is there"
	}
	return ""
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// A host relabelled out of the selector has the service stopped and
// removed, and gets it back when relabelled in; service delete then
// removes the service from every host in waves (processes gone, files
// gone, logs kept), keeps its history, refuses releases, and the name is
// created anew. Real binaries; relabelling restarts the agent with other
// labels.
func TestServiceDeleteAndHostRelabelled(t *testing.T) {
	e := newEnv(t, 4, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("rollout of v1: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	v1Rollout := e.rollout("web").GetId()

	// host-4 restarts with role=db: it leaves the selector.
	pid := e.servicePID("host-4")
	if err := e.fleet.Relabel("host-4", e.fleet.Labels("host-4", "db")); err != nil {
		t.Fatal(err)
	}
	e.waitFor(60*time.Second, "host-4 removed the service", func() (bool, string) {
		why := e.removedFrom("host-4", pid)
		return why == "", why
	})
	if v := e.fleet.Version(e.ctx, "host-4"); v != "" {
		t.Errorf("host-4 still serves %q", v)
	}
	for _, id := range []string{"host-1", "host-2", "host-3"} {
		if v := e.fleet.Version(e.ctx, id); v != "v1" {
			t.Errorf("%s serves %q after host-4 left", id, v)
		}
	}
	if !exists(filepath.Join(e.fleet.Agents["host-4"].DataDir, "logs", "web.log")) {
		t.Error("host-4's service log is gone")
	}
	if out := e.cli(0, "events", "web").Stdout; !strings.Contains(out, "host_left") || !strings.Contains(out, "host-4") {
		t.Errorf("events lack host-4 leaving:\n%s", out)
	}
	if out := e.cli(0, "audit").Stdout; !strings.Contains(out, "labels changed") {
		t.Errorf("the audit log lacks the relabel:\n%s", out)
	}
	// Back in: the stable release.
	if err := e.fleet.Relabel("host-4", e.fleet.Labels("host-4", "web")); err != nil {
		t.Fatal(err)
	}
	e.allOn("v1")
	if out := e.cli(0, "events", "web").Stdout; !strings.Contains(out, "host_joined") {
		t.Errorf("events lack host-4 joining:\n%s", out)
	}

	// Delete: every host, wave by wave.
	pids := map[string]int{}
	for _, id := range e.fleet.AgentIDs() {
		pids[id] = e.servicePID(id)
	}
	out := e.cli(0, "service", "delete", "web").Stdout
	if !strings.Contains(out, "removal") {
		t.Errorf("service delete says:\n%s", out)
	}
	watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
	if watch.Code != 0 || !strings.Contains(watch.Stdout, "removal") || !strings.Contains(watch.Stdout, "deleted") {
		t.Fatalf("rollout watch of the removal: exit %d\n%s\n%s", watch.Code, watch.Stdout, watch.Stderr)
	}
	r := e.rollout("web")
	if !r.GetRemove() || len(r.GetWaves()) < 2 {
		t.Errorf("removal %s: remove %v, %d waves", r.GetId(), r.GetRemove(), len(r.GetWaves()))
	}
	for _, id := range e.fleet.AgentIDs() {
		if why := e.removedFrom(id, pids[id]); why != "" {
			t.Errorf("after the delete: %s", why)
		}
		if !exists(filepath.Join(e.fleet.Agents[id].DataDir, "logs", "web.log")) {
			t.Errorf("%s: the service log is gone", id)
		}
	}
	// The history stays; the service is deleted; releases are refused.
	if hist := e.cli(0, "rollout", "history", "web", "--id", v1Rollout).Stdout; !strings.Contains(hist, "rollout_succeeded") {
		t.Errorf("v1's history after the delete:\n%s", hist)
	}
	if hist := e.cli(0, "rollout", "history", "web").Stdout; !strings.Contains(hist, "service_deleted") {
		t.Errorf("the removal's history:\n%s", hist)
	}
	if out := e.cli(0, "service", "get", "web").Stdout; !strings.Contains(out, "deleted:") {
		t.Errorf("service get after the delete:\n%s", out)
	}
	if r := e.cli(1, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil)); !strings.Contains(r.Stderr, "deleted") {
		t.Errorf("release create of a deleted service:\n%s", r.Stderr)
	}
	if r := e.cli(1, "service", "delete", "web"); !strings.Contains(r.Stderr, "deleted already") {
		t.Errorf("a second delete:\n%s", r.Stderr)
	}

	// Created anew: the next release reaches every host.
	e.apply("web", fmt.Sprintf(specTmpl, "web", "0s"))
	if code := e.release("web", "v2", nil); code != 0 {
		t.Fatalf("rollout of v2 after re-creation: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
}

// A selector change that leaves out two of three hosts removes the service
// from them in waves (the policy's [50, 100]: one host, then the other),
// as a removal rollout that rollout watch follows and the history keeps,
// with a host_left event each; the host that stays is never restarted.
// Real binaries.
func TestSelectorChangeRemovesInWaves(t *testing.T) {
	e := newEnv(t, 3, "web", "0s") // host-1 and host-3 in zone a, host-2 in zone b
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("rollout of v1: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	pids := map[string]int{}
	for _, id := range e.fleet.AgentIDs() {
		pids[id] = e.servicePID(id)
	}

	narrow := strings.Replace(fmt.Sprintf(specTmpl, "web", "0s"), "selector: {role: web}", "selector: {role: web, zone: b}", 1)
	specPath := filepath.Join(e.dir, "web-zone-b.yaml")
	if err := os.WriteFile(specPath, []byte(narrow), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := e.cli(0, "service", "apply", "-f", specPath).Stdout; !strings.Contains(out, "removal") || !strings.Contains(out, "in waves") {
		t.Errorf("service apply of a narrower selector says:\n%s", out)
	}
	watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
	if watch.Code != 0 || !strings.Contains(watch.Stdout, "remove from the hosts the selector left") || !strings.Contains(watch.Stdout, "2 waves, 2 hosts") {
		t.Fatalf("rollout watch of the removal: exit %d\n%s\n%s", watch.Code, watch.Stdout, watch.Stderr)
	}
	r := e.rollout("web")
	if !r.GetLeft() || r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || len(r.GetWaves()) != 2 {
		t.Fatalf("removal %s: left %v, %v, %d waves", r.GetId(), r.GetLeft(), r.GetState(), len(r.GetWaves()))
	}
	// One host per wave; the second wave started after the first was done.
	w0, w1 := r.GetWaves()[0], r.GetWaves()[1]
	if len(w0.GetHosts()) != 1 || len(w1.GetHosts()) != 1 || w1.GetStartedAt().AsTime().Before(w0.GetDoneAt().AsTime()) {
		t.Errorf("waves: %v then %v", w0, w1)
	}
	for _, id := range []string{"host-1", "host-3"} {
		if why := e.removedFrom(id, pids[id]); why != "" {
			t.Errorf("after the selector change: %s", why)
		}
	}
	if v := e.fleet.Version(e.ctx, "host-2"); v != "v1" {
		t.Errorf("host-2 serves %q", v)
	}
	if pid := e.servicePID("host-2"); pid != pids["host-2"] {
		t.Errorf("host-2's service was restarted: pid %d, was %d", pid, pids["host-2"])
	}
	hist := e.cli(0, "rollout", "history", "web", "--id", r.GetId()).Stdout
	for _, want := range []string{"host_left", "host-1", "host-3", "removal_created", "rollout_succeeded"} {
		if !strings.Contains(hist, want) {
			t.Errorf("the removal's history lacks %s:\n%s", want, hist)
		}
	}
	// The next release reaches the host that stays only.
	if code := e.release("web", "v2", nil); code != 0 {
		t.Fatalf("rollout of v2: watch exit %d: %v", code, e.rollout("web"))
	}
	if v := e.fleet.Version(e.ctx, "host-2"); v != "v2" {
		t.Errorf("host-2 serves %q after v2", v)
	}
	for _, id := range []string{"host-1", "host-3"} {
		if v := e.fleet.Version(e.ctx, id); v != "" {
			t.Errorf("%s serves %q after v2", id, v)
		}
	}
}
