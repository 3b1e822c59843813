package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// closedWindow is a rollout.windows entry that is closed now and stays so
// for the test: one hour on the weekday three days from now (UTC).
func closedWindow() string {
	day := strings.ToLower(time.Now().UTC().AddDate(0, 0, 3).Weekday().String()[:3])
	return fmt.Sprintf("  windows:\n    - {days: %s, start: \"00:00\", end: \"01:00\", time_zone: UTC}\n", day)
}

func waveHosts(r *v1.Rollout) [][]string {
	var out [][]string
	for _, w := range r.GetWaves() {
		var ids []string
		for _, h := range w.GetHosts() {
			ids = append(ids, h.GetHostId())
		}
		out = append(out, ids)
	}
	return out
}

// Plan preview, deploy windows, the admin override and blackouts with real
// binaries: `rollout plan` previews a release held by a closed window
// (JSON for CI) and changes nothing; the release waits, visible in
// `rollout status`; an admin's override (its reason in the audit log)
// starts it, with the waves the preview showed. A blackout holds a new
// release and, for a rollout in flight, the next wave at the boundary;
// `freeze delete` lets both go on.
func TestPolicyPlanWindowsOverrideBlackout(t *testing.T) {
	e := newFleetEnv(t, 3)
	e.apply("web", fmt.Sprintf(specTmpl, "web", "0s")+closedWindow())

	// The preview of a release that waits: nothing is started.
	e.cli(0, "release", "create", "web", "--version", "v1", "--artifact", e.artifact("v1", nil))
	plan := &v1.PlanRolloutResponse{}
	out := e.cli(0, "rollout", "plan", "web", "--version", "v1", "-o", "json").Stdout
	if err := protojson.Unmarshal([]byte(out), plan); err != nil {
		t.Fatalf("rollout plan -o json: %v\n%s", err, out)
	}
	if !strings.Contains(plan.GetHeld(), "outside the deploy windows") || len(plan.GetRollout().GetWaves()) != 3 || len(plan.GetUnknownHosts()) != 0 {
		t.Fatalf("plan: held %q, waves %v, unknown %v", plan.GetHeld(), waveHosts(plan.GetRollout()), plan.GetUnknownHosts())
	}
	text := e.cli(0, "rollout", "plan", "web").Stdout
	if !strings.Contains(text, "plan for web: (none) → v1") || !strings.Contains(text, "held: outside the deploy windows") {
		t.Errorf("rollout plan:\n%s", text)
	}
	status := e.cli(0, "rollout", "status", "web").Stdout
	if !strings.Contains(status, "waiting: v1 waits: outside the deploy windows") {
		t.Fatalf("rollout status does not say v1 waits for the window:\n%s", status)
	}

	// The override: refused without a reason, then audited with it.
	e.cli(1, "rollout", "override", "web")
	e.cli(0, "rollout", "override", "web", "--reason", "hotfix INC-42")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("rollout of v1 after the override: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	if got := waveHosts(e.rollout("web")); fmt.Sprint(got) != fmt.Sprint(waveHosts(plan.GetRollout())) {
		t.Errorf("the rollout's waves %v differ from the preview's %v", got, waveHosts(plan.GetRollout()))
	}
	if audit := e.cli(0, "audit").Stdout; !strings.Contains(audit, "OverrideHold") || !strings.Contains(audit, "hotfix INC-42") {
		t.Errorf("the audit log does not record the override with its reason:\n%s", audit)
	}

	// A blackout: v2 waits, named in the release's note and the status.
	e.apply("web", fmt.Sprintf(specTmpl, "web", "0s")+"  mode: manual\n")
	var b v1.Blackout
	out = e.cli(0, "freeze", "create", "--from", "now", "--to", "+1h", "--reason", "game day", "-o", "json").Stdout
	if err := protojson.Unmarshal([]byte(out), &b); err != nil || b.GetId() == "" {
		t.Fatalf("freeze create -o json: %v\n%s", err, out)
	}
	var list map[string]any
	if err := json.Unmarshal([]byte(e.cli(0, "freeze", "list", "-o", "json").Stdout), &list); err != nil || !strings.Contains(fmt.Sprint(list), b.GetId()) {
		t.Fatalf("freeze list -o json: %v: %v", err, list)
	}
	e.cli(1, "freeze", "create", "--from", "now", "--to", "yesterday", "--reason", "x")
	bad := e.fleet.CLI(e.ctx, "freeze", "create", "--from", "+2h", "--to", "+1h", "--reason", "x")
	if bad.Code == 0 || !strings.Contains(bad.Stderr, "to: ") {
		t.Errorf("a blackout ending before it starts: exit %d\n%s", bad.Code, bad.Stderr)
	}
	rel := e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil))
	if !strings.Contains(rel.Stdout+rel.Stderr, "game day") {
		t.Errorf("release create does not say the blackout holds v2:\n%s\n%s", rel.Stdout, rel.Stderr)
	}
	if s := e.cli(0, "rollout", "status", "web").Stdout; !strings.Contains(s, "waiting: v2 waits: blackout "+b.GetId()) {
		t.Fatalf("rollout status during the blackout:\n%s", s)
	}
	e.cli(0, "freeze", "delete", b.GetId())
	e.waitFor(30*time.Second, "v2's rollout waits for approval", func() (bool, string) {
		r := e.rollout("web")
		return r.GetToVersion() == "v2" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL, r.GetState().String()
	})

	// A blackout starting in flight: the canary finishes, the next wave
	// waits at the boundary until the blackout is deleted.
	out = e.cli(0, "freeze", "create", "--from", "now", "--to", "+1h", "--reason", "quarter close", "-o", "json").Stdout
	if err := protojson.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	e.cli(0, "rollout", "approve", "web")
	e.waitFor(60*time.Second, "the canary done and wave 1 held", func() (bool, string) {
		r := e.rollout("web")
		ws := r.GetWaves()
		return r.GetHeld() != "" && ws[0].GetState() == v1.WaveState_WAVE_STATE_DONE && ws[1].GetState() == v1.WaveState_WAVE_STATE_PENDING,
			fmt.Sprintf("held %q, waves %v %v", r.GetHeld(), ws[0].GetState(), ws[1].GetState())
	})
	if s := e.cli(0, "rollout", "status", "web").Stdout; !strings.Contains(s, "held at the next wave: blackout "+b.GetId()+" until") || !strings.Contains(s, "quarter close") {
		t.Errorf("rollout status of the held rollout:\n%s", s)
	}
	e.cli(0, "freeze", "delete", b.GetId())
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("rollout of v2 after the blackout: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	if evs := e.cli(0, "events", "web").Stdout; !strings.Contains(evs, "wave_held") || !strings.Contains(evs, "wave_released") {
		t.Errorf("events do not record the hold and its end:\n%s", evs)
	}
}

// apiSpec runs the demo app on a port of its own choosing, so that it can
// share hosts with web; check adds a check.
func apiSpec(check string) string {
	return `name: api
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:0"]
  stop_grace: 5s
` + check + `min_healthy_time: 1s
healthy_deadline: 4s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
  progress_deadline: 2m
`
}

// Service order with real binaries: web comes after api. A cycle is
// refused at apply, naming it; web's release waits while api has no
// rollout, starts by itself when api's succeeds, and a failed api rollout
// holds web's next release, with the reason in the note and the status.
func TestPolicyServiceOrder(t *testing.T) {
	e := newFleetEnv(t, 2)
	e.apply("api", apiSpec(""))
	e.apply("web", fmt.Sprintf(specTmpl, "web", "0s")+"  after: [api]\n")

	cyc := e.fleet.CLI(e.ctx, "service", "apply", "-f", writeSpec(t, e, "api-cycle", apiSpec("")+"  after: [web]\n"))
	if cyc.Code == 0 || !strings.Contains(cyc.Stderr, "api → web → api") {
		t.Fatalf("a cycle of after: exit %d\n%s", cyc.Code, cyc.Stderr)
	}

	rel := e.cli(0, "release", "create", "web", "--version", "v1", "--artifact", e.artifact("v1", nil))
	if !strings.Contains(rel.Stdout+rel.Stderr, "waits for service api (after): it has no rollout yet") {
		t.Errorf("release create of web before api:\n%s\n%s", rel.Stdout, rel.Stderr)
	}
	var st v1.GetRolloutResponse
	if err := protojson.Unmarshal([]byte(e.cli(0, "rollout", "status", "web", "-o", "json").Stdout), &st); err != nil || !strings.Contains(st.GetWaiting(), "waits for service api") {
		t.Fatalf("rollout status -o json of web: %v: %v", err, &st)
	}

	if code := e.release("api", "v1", nil); code != 0 {
		t.Fatalf("rollout of api v1: watch exit %d: %v", code, e.rollout("api"))
	}
	e.waitFor(60*time.Second, "web v1's rollout succeeded after api's", func() (bool, string) {
		r := e.rollout("web")
		return r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, r.GetState().String()
	})
	e.allOn("v1")

	// api's next spec fails its canary (nothing listens on port 1).
	e.apply("api", apiSpec("checks:\n  - name: tcp\n    tcp: {address: \"127.0.0.1:1\"}\n    interval: 200ms\n"))
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "api").Code; code != 1 {
		t.Fatalf("api's failing config rollout: watch exit %d, want 1: %v", code, e.rollout("api"))
	}
	rel = e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil))
	if !strings.Contains(rel.Stdout+rel.Stderr, "held by service api (after)") {
		t.Errorf("release create of web after api failed:\n%s\n%s", rel.Stdout, rel.Stderr)
	}
	if s := e.cli(0, "rollout", "status", "web").Stdout; !strings.Contains(s, "waiting: v2 waits: held by service api (after): its rollout") {
		t.Errorf("rollout status of web held by api:\n%s", s)
	}
	plan := &v1.PlanRolloutResponse{}
	if err := protojson.Unmarshal([]byte(e.cli(0, "rollout", "plan", "web", "-o", "json").Stdout), plan); err != nil || plan.GetRollout().GetToVersion() != "v2" || !strings.Contains(plan.GetHeld(), "held by service api") {
		t.Errorf("rollout plan of web held by api: %v: %v", err, plan)
	}
	if r := e.rollout("web"); r.GetToVersion() != "v1" || slices.Contains([]string{"v2"}, e.fleet.Version(e.ctx, e.fleet.AgentIDs()[0])) {
		t.Errorf("web moved although api failed: rollout to %s", r.GetToVersion())
	}
}

func writeSpec(t *testing.T, e *env, name, spec string) string {
	t.Helper()
	p := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
