package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// parseEventLines reads `fleetwave -o json events` output: one event with
// its revision a line.
func parseEventLines(t *testing.T, out string) []*v1.WatchEventsResponse {
	t.Helper()
	var evs []*v1.WatchEventsResponse
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		m := &v1.WatchEventsResponse{}
		if err := protojson.Unmarshal([]byte(line), m); err != nil {
			t.Fatalf("event line %q: %v", line, err)
		}
		evs = append(evs, m)
	}
	return evs
}

// A CLI following the event stream (events --follow, as a person runs it)
// outlives coordinator restarts, one graceful in the middle of a rollout
// and one kill -9: it resumes after the last event it printed, says so on
// stderr, and prints every recorded event exactly once, in the order the
// listing has them.
func TestEventsFollowSurvivesCoordinatorRestart(t *testing.T) {
	e := newEnv(t, 2, "web", "2s")
	// The follower writes to files; the test reads them.
	stdout, stderr := filepath.Join(e.dir, "follow.jsonl"), filepath.Join(e.dir, "follow.err")
	outF, err := os.Create(stdout)
	if err != nil {
		t.Fatal(err)
	}
	errF, err := os.Create(stderr)
	if err != nil {
		t.Fatal(err)
	}
	follow := exec.CommandContext(e.ctx, bins.CLI, append(append([]string{"--coordinator", e.fleet.Addr}, e.fleet.CLIFlags()...), "-o", "json", "events", "web", "--follow")...)
	follow.Stdout, follow.Stderr = outF, errF
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- follow.Wait() }()
	t.Cleanup(func() {
		_ = follow.Process.Kill()
		<-exited
		outF.Close()
		errF.Close()
	})
	readFile := func(p string) string {
		b, _ := os.ReadFile(p)
		return string(b)
	}
	followed := func(kind string) func() (bool, string) {
		return func() (bool, string) {
			out := readFile(stdout)
			return strings.Count(out, `"kind":"`+kind+`"`) > 0, fmt.Sprintf("stdout:\n%s\nstderr:\n%s", out, readFile(stderr))
		}
	}
	restarted := func(kill bool) {
		t.Helper()
		if kill {
			e.fleet.Coord.Kill9()
		} else {
			e.fleet.Coord.Stop(30 * time.Second)
		}
		if err := e.fleet.Coord.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := testfleet.WaitServing(e.ctx, e.fleet.Addr, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d", code)
	}
	e.waitFor(30*time.Second, "the follower saw v1's rollout succeed", followed(rollout.EventRolloutSucceeded))

	// A graceful restart in the middle of v2's rollout.
	e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil))
	e.waitFor(60*time.Second, "v2's canary done", func() (bool, string) {
		r := e.rollout("web")
		w := r.GetWaves()[0]
		return r.GetToVersion() == "v2" && (w.GetState() == v1.WaveState_WAVE_STATE_BAKING || w.GetState() == v1.WaveState_WAVE_STATE_DONE), w.GetState().String()
	})
	restarted(false)
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v2 after a restart: exit %d", code)
	}
	// A kill -9, then v3.
	restarted(true)
	// The release is stored at once; its rollout starts when the restarted
	// coordinator leads again.
	e.cli(0, "release", "create", "web", "--version", "v3", "--artifact", e.artifact("v3", nil))
	e.waitFor(120*time.Second, "v3's rollout succeeded", func() (bool, string) {
		r := e.rollout("web")
		return r.GetToVersion() == "v3" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, fmt.Sprintf("%s to %s: %s", r.GetId(), r.GetToVersion(), r.GetState())
	})

	list := parseEventLines(t, e.cli(0, "-o", "json", "events", "web").Stdout)
	if n := countKind(list, rollout.EventRolloutSucceeded); n != 3 {
		t.Fatalf("the listing has %d rollout_succeeded, want 3", n)
	}
	last := list[len(list)-1]
	e.waitFor(60*time.Second, "the follower printed the listing's last event", func() (bool, string) {
		got := parseEventLines(t, readFile(stdout))
		return len(got) > 0 && got[len(got)-1].GetRevision() >= last.GetRevision() && len(got) >= len(list), fmt.Sprintf("%d of %d events; stderr:\n%s", len(got), len(list), readFile(stderr))
	})
	select {
	case err := <-exited:
		exited <- err
		t.Fatalf("the follower ended: %v\nstderr:\n%s", err, readFile(stderr))
	default:
	}
	got := parseEventLines(t, readFile(stdout))
	if len(got) != len(list) {
		t.Errorf("the follower printed %d events, the listing has %d", len(got), len(list))
	}
	for i := range min(len(got), len(list)) {
		if !proto.Equal(got[i], list[i]) {
			t.Fatalf("event %d: followed %v, listed %v", i, got[i], list[i])
		}
	}
	if n := strings.Count(readFile(stderr), "the stream broke"); n < 2 || !strings.Contains(readFile(stderr), "resuming after revision") {
		t.Errorf("the follower said it resumed %d times, want at least 2 (two restarts):\n%s", n, readFile(stderr))
	}
}

func countKind(evs []*v1.WatchEventsResponse, kind string) int {
	n := 0
	for _, e := range evs {
		if e.GetEvent().GetKind() == kind {
			n++
		}
	}
	return n
}
