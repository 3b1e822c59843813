package faults

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// killAt is where scenario 6 kills each host's agent: one phase of the
// install of the good release v2 per host, in the order the rollout
// reaches them (host-1 is the canary, host-2 and host-3 wave 1, host-4 and
// host-5 wave 2).
var killAt = []struct {
	host  string
	phase string // the agent's "phase" log line to kill at
}{
	{"host-1", "PHASE_FETCHING"},
	{"host-2", "PHASE_STAGING"},
	{"host-3", "PHASE_STARTING"}, // switched; the old release being stopped, the new one started
	{"host-4", "PHASE_CHECKING"},
	{"host-5", "PHASE_HEALTHY"}, // in its watch
}

// Scenario 6: kill -9 each host's agent at a different phase of a good
// release's install (fetching, staging, starting right after the switch,
// checking, healthy in its watch) and start it again. The restarted agent
// resumes where it was and adopts the running service: the rollout
// succeeds, nothing is reverted, the service is not frozen, and every
// service started exactly once per release (verifyEnd), so no kill cost a
// restart.
func TestAgentKilledAtEachPhase(t *testing.T) {
	// Checks take min_healthy_time 3s, so CHECKING lasts; the artifact
	// carries 8 MiB of incompressible padding, so fetching and staging take
	// a moment too.
	h := newHarness(t, options{bake: "1s", minHealthy: "3s"})
	offsets := map[string]int64{}
	for _, k := range killAt {
		offsets[k.host] = h.host(k.host).proc.LogSize()
	}
	pad := make([]byte, 8<<20)
	if _, err := rand.Read(pad); err != nil {
		t.Fatal(err)
	}
	id := h.releaseWith("v2", map[string]string{"padding": string(pad)})

	type killed struct {
		host, want, got string
		after           time.Duration
		err             error
	}
	results := make(chan killed, len(killAt))
	var wg sync.WaitGroup
	for _, k := range killAt {
		x := h.host(k.host)
		wg.Go(func() {
			r := killed{host: k.host, want: k.phase}
			r.got, r.after, r.err = h.killAtPhase(x, offsets[k.host], k.phase)
			results <- r
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Fatalf("%s: %v", r.host, r.err)
		}
		h.logf("MEASURE scenario 6: %s's agent killed -9 at %s (its last phase logged: %s), started again; adopted and resumed %s later",
			r.host, r.want, r.got, r.after.Round(time.Millisecond))
		if r.got != r.want {
			// The kill lands a moment after the phase is logged; a short
			// phase may be over by then. The scenario still holds, it only
			// tested the next phase.
			h.logf("note: %s was already past %s when killed", r.host, r.want)
		}
	}

	final := h.verifyEnd(id, 2*time.Minute)
	for _, w := range final.GetWaves() {
		for _, x := range w.GetHosts() {
			if x.GetPhase() == v1.Phase_PHASE_REVERTED || x.GetPhase() == v1.Phase_PHASE_FAILED {
				t.Errorf("%s ended %s", x.GetHostId(), x.GetPhase())
			}
		}
	}
	svc, err := call(h, h.opCoord(), func(ctx context.Context, op v1.OperatorServiceClient) (*v1.GetServiceResponse, error) {
		return op.GetService(ctx, &v1.GetServiceRequest{Name: service})
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := svc.GetService().GetStatus(); st.GetFrozen() || st.GetStableVersion() != "v2" {
		t.Errorf("service status after the rollout: frozen=%v (%s), stable %q; want not frozen, stable v2",
			st.GetFrozen(), st.GetFrozenReason(), st.GetStableVersion())
	}
	for _, x := range h.hosts {
		log := x.proc.LogSince(offsets[x.id], 4<<20)
		for _, bad := range []string{"PHASE_REVERTING", "PHASE_REVERTED", "PHASE_FAILED"} {
			if strings.Contains(log, bad) {
				t.Errorf("%s's agent logged %s during the rollout of a good release", x.id, bad)
			}
		}
	}
	h.logf("MEASURE scenario 6: total %s", time.Since(h.began).Round(time.Millisecond))
}

// killAtPhase waits until the agent of x logs phase (after offset), kills
// it with SIGKILL at once, starts it again and waits until it has adopted
// the running service or resumed without one. It returns the last phase
// the killed agent had logged and how long the new agent took.
func (h *harness) killAtPhase(x *host, offset int64, phase string) (last string, took time.Duration, err error) {
	want := `"phase":"` + phase + `"`
	deadline := time.Now().Add(3 * time.Minute) // failure deadline
	pos, seen := offset, ""
	for {
		// Only what was logged since the last look (and the line it cut).
		chunk := x.proc.LogSince(pos, 1<<20)
		pos += int64(len(chunk))
		seen = seen[max(0, strings.LastIndexByte(seen, '\n')+1):] + chunk
		if strings.Contains(seen, want) {
			break
		}
		if time.Now().After(deadline) {
			return "", 0, fmt.Errorf("agent never logged %s", phase)
		}
		select {
		case <-h.ctx.Done():
			return "", 0, h.ctx.Err()
		case <-time.After(2 * time.Millisecond): // poll the log closely: some phases are short
		}
	}
	x.proc.Kill9()
	for _, line := range strings.Split(x.proc.LogSince(offset, 8<<20), "\n") {
		if strings.Contains(line, `"message":"phase"`) {
			last = phaseOf(line)
		}
	}
	restartOff := x.proc.LogSize()
	restarted := time.Now()
	if err := x.proc.Restart(); err != nil {
		return last, 0, err
	}
	err = testfleet.WaitFor(h.ctx, 2*time.Minute, x.id+"'s new agent recovers its service", func() (bool, string) {
		log := x.proc.LogSince(restartOff, 1<<20)
		return strings.Contains(log, `"message":"recovering service"`), "not yet"
	})
	return last, time.Since(restarted), err
}

// releaseWith is release with extra files in the artifact.
func (h *harness) releaseWith(version string, extra map[string]string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, "artifacts", version+".tar.gz")
	if err := testfleet.Artifact(p, bins.DemoApp, version, extra); err != nil {
		h.t.Fatal(err)
	}
	if fi, err := os.Stat(p); err == nil {
		h.logf("artifact %s: %d bytes", version, fi.Size())
	}
	h.cli("release", "create", service, "--version", version, "--artifact", p)
	h.released = append(h.released, version)
	r := h.waitRollout("", 30*time.Second, "rollout to "+version+" created", func(r *v1.Rollout) bool {
		return r.GetToVersion() == version
	})
	h.logf("release %s created: rollout %s, plan %s", version, r.GetId(), summary(r))
	return r.GetId()
}
