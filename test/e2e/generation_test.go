package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Hosts that hold generations of a service the leader's records do not
// know take its next release. One holds 2^63-1: what a compromised
// coordinator's assignment of the running release leaves in the agent's
// state (the generation is not signed), which made the host refuse every
// later assignment as a replay, for good, even after that coordinator's
// revocation. The leader's assignments to it now name that generation as
// the one they replace. Another holds one a little above the service's
// counter (an etcd restored from a backup): the rollout is planned above
// it. The agents are stopped, their state written, and started again: real
// processes and files.
func TestHostsAheadOfTheLeadersGenerationsTakeTheNextRelease(t *testing.T) {
	e := newEnv(t, 3, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	stable := e.rollout("web").GetGeneration()
	ahead := map[string]int64{"host-1": math.MaxInt64, "host-2": stable + 1000}
	for id, gen := range ahead {
		a := e.fleet.Agents[id]
		a.Stop(30 * time.Second)
		path := filepath.Join(a.DataDir, "state", "web.json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var st map[string]json.RawMessage
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		st["generation"] = json.RawMessage(strconv.FormatInt(gen, 10))
		if b, err = json.Marshal(st); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := a.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	// host-1 takes the stable release's assignment back at once (it runs
	// it: no restart); host-2 refuses it as a replay and keeps running v1.
	replaced := fmt.Sprintf(`"replaced_generation":%d`, int64(math.MaxInt64))
	e.waitFor(60*time.Second, "host-1 back at the stable generation, host-2 refusing it", func() (bool, string) {
		hosts, err := e.fleet.Hosts(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, h := range hosts {
			for _, s := range h.GetServices() {
				want, ok := ahead[h.GetId()]
				if h.GetId() == "host-1" {
					want = stable
				}
				if ok && s.GetService() == "web" && (s.GetGeneration() != want || !h.GetConnected() || s.GetPhase() != v1.Phase_PHASE_HEALTHY) {
					bad = append(bad, fmt.Sprintf("%s: %v at generation %d", h.GetId(), s.GetPhase(), s.GetGeneration()))
				}
				if h.GetId() == "host-2" && s.GetService() == "web" && !strings.Contains(s.GetReason(), "refused assignment") {
					bad = append(bad, fmt.Sprintf("host-2 does not say it refused the stable assignment: %q", s.GetReason()))
				}
			}
		}
		if !strings.Contains(e.fleet.Agents["host-1"].Tail(1<<20), replaced) {
			bad = append(bad, "host-1's log does not say it replaced its generation")
		}
		return len(bad) == 0, strings.Join(bad, "; ")
	})

	if code := e.release("web", "v2", nil); code != 0 {
		t.Fatalf("v2 rollout: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	r := e.rollout("web")
	if r.GetGeneration() != ahead["host-2"]+1 {
		t.Errorf("v2 rolled out at generation %d, want one above host-2's %d", r.GetGeneration(), ahead["host-2"])
	}
	res := e.cli(0, "events", "web")
	if !strings.Contains(res.Stdout, fmt.Sprintf("above host host-2's reported %d", ahead["host-2"])) {
		t.Errorf("the rollout's creation does not say why its generation is %d:\n%s", r.GetGeneration(), res.Stdout)
	}
	hosts, err := e.fleet.Hosts(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		for _, s := range h.GetServices() {
			if s.GetService() == "web" && (s.GetGeneration() != r.GetGeneration() || s.GetPhase() != v1.Phase_PHASE_HEALTHY) {
				t.Errorf("%s: %v at generation %d, want HEALTHY at the rollout's %d", h.GetId(), s.GetPhase(), s.GetGeneration(), r.GetGeneration())
			}
		}
	}
}
