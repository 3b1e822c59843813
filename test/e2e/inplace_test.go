package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// judgingSpec is specTmpl (the demo app binds its own port: a restart
// drops requests) with other checks and durations: a spec that changes
// only how the release is judged.
func judgingSpec(url string) string {
	s := fmt.Sprintf(specTmpl, "web", "0s")
	s = strings.Replace(s, "min_healthy_time: 1s\nhealthy_deadline: 6s\n", "min_healthy_time: 2s\nhealthy_deadline: 5s\n", 1)
	return strings.Replace(s, "    timeout: 1s\n", "    timeout: 1s\n  - name: strict\n    http: {url: \"http://127.0.0.1:${host.label.port}"+url+"\"}\n    interval: 300ms\n", 1)
}

// TestJudgingOnlyConfigRolloutInPlace: with the real binaries, a spec that
// changes only checks and durations rolls out as a config rollout (canary,
// waves) that every host applies in place: no request of a load on every
// host fails and no process is restarted (same pids), although the
// service binds its own port (any restart would drop requests). A spec
// whose new check fails fails on the canary, which reverts in place: still
// no restart, no failed request, and every host back on the last good spec.
func TestJudgingOnlyConfigRolloutInPlace(t *testing.T) {
	e := newEnv(t, 3, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	pids := map[string]int{}
	for _, id := range e.fleet.AgentIDs() {
		pids[id] = e.servicePID(id)
	}
	samePIDs := func(when string) {
		t.Helper()
		for _, id := range e.fleet.AgentIDs() {
			if got := e.servicePID(id); got != pids[id] {
				t.Errorf("%s: host %s restarted its service: pid %d -> %d", when, id, pids[id], got)
			}
		}
	}
	load := e.fleet.StartLoad(e.ctx, "judging-only config rollout", loadClients, loadInterval)
	defer load.Stop()

	e.apply("web", judgingSpec("/healthz"))
	watch := e.fleet.CLI(e.ctx, "rollout", "watch", "web")
	if watch.Code != 0 {
		t.Fatalf("rollout watch of spec 2: exit %d\n%s\n%s", watch.Code, watch.Stdout, watch.Stderr)
	}
	if !strings.Contains(watch.Stdout, "v1 with spec 1 → spec 2 (changes checks, min_healthy_time, healthy_deadline)") {
		t.Errorf("rollout watch does not name the config rollout:\n%s", watch.Stdout)
	}
	if r := e.rollout("web"); r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || !rollout.IsConfig(r) || r.GetSpecRevision() != 2 || !r.GetInPlace() {
		t.Fatalf("spec 2 rollout: %v (config %v, spec %d, in place %v): %s", r.GetState(), rollout.IsConfig(r), r.GetSpecRevision(), r.GetInPlace(), r.GetReason())
	}
	e.allOn("v1")
	samePIDs("after the judging-only config rollout")
	// Operators see it: the rollout says it is applied in place, and each
	// host that it did (the agents' reports: ServiceReport.in_place).
	if !strings.Contains(watch.Stdout, "judging only: hosts healthy on v1 apply it in place, no restart") {
		t.Errorf("rollout watch does not say the change is applied in place:\n%s", watch.Stdout)
	}
	status := e.fleet.CLI(e.ctx, "rollout", "status", "web")
	for _, id := range e.fleet.AgentIDs() {
		if line := "host " + id + ": done (healthy, in place)"; !strings.Contains(watch.Stdout, line) {
			t.Errorf("rollout watch lacks %q:\n%s", line, watch.Stdout)
		}
	}
	if n := strings.Count(status.Stdout, "healthy, in place"); status.Code != 0 || n != len(e.fleet.AgentIDs()) ||
		!strings.Contains(status.Stdout, "judging only: hosts healthy on v1 apply it in place, no restart") {
		t.Errorf("rollout status: exit %d, %d hosts in place, want %d and the rollout's note:\n%s\n%s", status.Code, n, len(e.fleet.AgentIDs()), status.Stdout, status.Stderr)
	}
	t.Logf("rollout status of the judging-only config rollout:\n%s", status.Stdout)

	load.Step("judging-only config rollout whose new check fails")
	e.apply("web", judgingSpec("/no-such-path"))
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 1 {
		t.Fatalf("rollout watch of spec 3: exit %d, want 1: %v", code, e.rollout("web"))
	}
	r := e.rollout("web")
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !rollout.IsConfig(r) || r.GetSpecRevision() != 3 || !strings.Contains(r.GetReason(), "canary") {
		t.Fatalf("spec 3 rollout: %v (spec %d): %s", r.GetState(), r.GetSpecRevision(), r.GetReason())
	}
	e.allOn("v1")
	samePIDs("after the canary reverted in place")
	if status := e.fleet.CLI(e.ctx, "rollout", "status", "web"); !strings.Contains(status.Stdout, "reverted, in place") {
		t.Errorf("rollout status of spec 3 does not show the canary reverted in place:\n%s\n%s", status.Stdout, status.Stderr)
	}

	steps := load.Stop()
	for _, s := range steps {
		t.Logf("MEASURE %s", s.String())
		if s.Requests == 0 {
			t.Errorf("step %q: no request was made", s.Name)
		}
	}
	if f := testfleet.Failures(steps); f != "" {
		t.Errorf("requests failed:\n%s", f)
	}
}
