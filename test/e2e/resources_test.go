package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// resourcesSpec runs the demo app through a shell that first reads 256 MiB
// into its memory when the release has a HOG file.
const resourcesSpec = `name: web
selector: {role: web}
run:
  command: ["/bin/sh", "-c", "if [ -e HOG ]; then x=$(head -c 268435456 /dev/zero | tr '\\0' a); fi; exec ./demoapp --listen 127.0.0.1:${host.label.port}"]
  stop_grace: 5s
resources: {memory_max: 64Mi, cpu_weight: 50, tasks_max: 256}
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
    interval: 200ms
    timeout: 1s
min_healthy_time: 3s
healthy_deadline: 20s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 2
  progress_deadline: 2m
`

// memoryLimit reads the memory limit of the cgroup pid runs in (cgroup v1:
// the memory controller's; v2: the unified one).
func memoryLimit(t *testing.T, pid int) (cgroup, limit string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		file := ""
		switch {
		case strings.Contains(","+parts[1]+",", ",memory,"):
			file = filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes")
		case parts[0] == "0" && parts[1] == "" && strings.HasPrefix(parts[2], "/fleetwave/"):
			file = filepath.Join("/sys/fs/cgroup", parts[2], "memory.max")
		default:
			continue
		}
		l, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		return parts[2], strings.TrimSpace(string(l))
	}
	t.Fatalf("pid %d: no memory cgroup in\n%s", pid, b)
	return "", ""
}

// TestResourceLimitsEndToEnd: with real binaries, a spec's resources
// confine every host's service in its own cgroup (memory.max or
// memory.limit_in_bytes 64Mi), `fleetwave hosts` says which cgroups the
// hosts use, and a release that goes past memory_max is killed at the
// limit on the canary, reverted there, and fails the rollout with a reason
// that says so; no other host runs it.
func TestResourceLimitsEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root: the agents run as this test's user")
	}
	e := newFleetEnv(t, 2)
	hosts := e.cli(0, "hosts").Stdout
	if strings.Contains(hosts, " none ") {
		t.Skipf("the agents cannot use cgroups here:\n%s\n%s", hosts, e.cli(0, "hosts", "-o", "json").Stdout)
	}
	if !strings.Contains(hosts, "CGROUPS") || (!strings.Contains(hosts, " v1 ") && !strings.Contains(hosts, " v2 ")) {
		t.Fatalf("fleetwave hosts does not name the cgroup mode:\n%s", hosts)
	}
	e.apply("web", resourcesSpec)
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("rollout of v1: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	for _, id := range e.fleet.AgentIDs() {
		cg, limit := memoryLimit(t, e.servicePID(id))
		if !strings.HasPrefix(cg, "/fleetwave/web/") || limit != strconv.Itoa(64<<20) {
			t.Errorf("%s: the service runs in %s with memory limit %s, want /fleetwave/web/<instance> and %d", id, cg, limit, 64<<20)
		}
	}

	if code := e.release("web", "v2", map[string]string{"HOG": "1"}); code != 1 {
		t.Fatalf("rollout of the hog v2: watch exit %d, want 1: %v", code, e.rollout("web"))
	}
	r := e.rollout("web")
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(r.GetReason(), "killed at its memory limit") || !strings.Contains(r.GetReason(), canary) {
		t.Fatalf("rollout %v: reason %q, want the canary %s killed at its memory limit", r.GetState(), r.GetReason(), canary)
	}
	if ran := e.everRan("v2"); len(ran) > 1 || (len(ran) == 1 && ran[0] != canary) {
		t.Errorf("v2 ran on %v, want the canary %s at most", ran, canary)
	}
	e.allOn("v1")
}
