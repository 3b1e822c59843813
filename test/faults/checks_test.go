package faults

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// verifyEnd waits for rollout id to succeed and checks what every scenario
// must leave behind:
//   - the rollout record: every wave and host done, waves in order;
//   - every host reports (hosts -o json) and serves the target, healthy,
//     with the target as last good, over a live stream;
//   - no host ever ran a release outside the rollout, and none was updated
//     twice: each service started exactly once per release, v1 then v2
//     (the demo app logs its version when it starts listening, and the
//     supervisor appends to a log nothing truncates), and nothing else was
//     ever unpacked;
//   - the rollout's recorded history (rollout history -o json) is complete
//     and has each decision exactly once.
func (h *harness) verifyEnd(id string, timeout time.Duration) *v1.Rollout {
	h.t.Helper()
	r := h.waitSucceeded(id, timeout)
	h.logf("rollout %s succeeded: %s", id, summary(r))
	from, to := r.GetFromVersion(), r.GetToVersion()

	h.checkRecord(r)
	h.checkReports(r)
	h.waitVersions(to, 20*time.Second)
	for _, x := range h.hosts {
		starts := h.starts(x)
		if want := []string{from, to}; !slices.Equal(starts, want) {
			h.t.Errorf("%s: service starts %v, want exactly %v (a release outside the rollout, a second update or a restart)", x.id, starts, want)
		}
		ents, err := os.ReadDir(filepath.Join(x.dataDir, "releases", service))
		if err != nil {
			h.t.Errorf("%s: %v", x.id, err)
		}
		for _, e := range ents {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && !slices.Contains(h.released, e.Name()) {
				h.t.Errorf("%s: unpacked release %q that was never released", x.id, e.Name())
			}
		}
	}
	h.checkHistory(r)
	return r
}

// checkRecord checks the stored rollout: every wave done in order, every
// host done once inside its wave's time.
func (h *harness) checkRecord(r *v1.Rollout) {
	h.t.Helper()
	seen := map[string]bool{}
	for i, w := range r.GetWaves() {
		if w.GetState() != v1.WaveState_WAVE_STATE_DONE {
			h.t.Errorf("wave %d: state %s, want done", i, w.GetState())
		}
		if i > 0 {
			prev := r.GetWaves()[i-1]
			if w.GetStartedAt().AsTime().Before(prev.GetDoneAt().AsTime()) {
				h.t.Errorf("wave %d started at %s, before wave %d was done at %s", i, w.GetStartedAt().AsTime(), i-1, prev.GetDoneAt().AsTime())
			}
		}
		for _, x := range w.GetHosts() {
			if seen[x.GetHostId()] {
				h.t.Errorf("host %s is planned twice", x.GetHostId())
			}
			seen[x.GetHostId()] = true
			if x.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE || (x.GetUnknown() && !h.unknownOK[x.GetHostId()]) {
				h.t.Errorf("wave %d host %s: %s unknown=%v, want done", i, x.GetHostId(), x.GetState(), x.GetUnknown())
			}
			if i > 0 && x.GetStartedAt().AsTime().Before(w.GetStartedAt().AsTime()) {
				h.t.Errorf("host %s started at %s, before its wave %d at %s", x.GetHostId(), x.GetStartedAt().AsTime(), i, w.GetStartedAt().AsTime())
			}
			if x.GetDoneAt().AsTime().After(w.GetDoneAt().AsTime()) {
				h.t.Errorf("host %s done at %s, after its wave %d at %s", x.GetHostId(), x.GetDoneAt().AsTime(), i, w.GetDoneAt().AsTime())
			}
		}
	}
	for _, x := range h.hosts {
		if !seen[x.id] {
			h.t.Errorf("host %s is not in the plan", x.id)
		}
	}
}

// checkReports waits until `fleetwave hosts -o json` shows every host
// connected, healthy on the target, with the target as last good, at the
// rollout's generation.
func (h *harness) checkReports(r *v1.Rollout) {
	h.t.Helper()
	to := r.GetToVersion()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var resp v1.ListHostsResponse
		h.cliJSON(h.opCoord(), &resp, "hosts")
		var bad []string
		byID := map[string]*v1.Host{}
		for _, x := range resp.GetHosts() {
			byID[x.GetId()] = x
		}
		for _, x := range h.hosts {
			hr := byID[x.id]
			if hr == nil {
				bad = append(bad, x.id+": not listed")
				continue
			}
			var rep *v1.ServiceReport
			for _, s := range hr.GetServices() {
				if s.GetService() == service {
					rep = s
				}
			}
			switch {
			case !hr.GetConnected():
				bad = append(bad, x.id+": not connected")
			case rep == nil:
				bad = append(bad, x.id+": no report")
			case rep.GetPhase() != v1.Phase_PHASE_HEALTHY || rep.GetCurrentVersion() != to || rep.GetLastGoodVersion() != to || rep.GetGeneration() != r.GetGeneration():
				bad = append(bad, fmt.Sprintf("%s: %s current %s last good %s generation %d (want healthy %s/%s generation %d)",
					x.id, rep.GetPhase(), rep.GetCurrentVersion(), rep.GetLastGoodVersion(), rep.GetGeneration(), to, to, r.GetGeneration()))
			}
		}
		if len(bad) == 0 {
			return
		}
		last = strings.Join(bad, "; ")
		if time.Now().After(deadline) {
			h.t.Errorf("hosts -o json after rollout %s: %s", r.GetId(), last)
			return
		}
		h.pause(200 * time.Millisecond) // poll interval
	}
}

// starts lists the versions a host's service started with, in order.
func (h *harness) starts(x *host) []string {
	f, err := os.Open(filepath.Join(x.dataDir, "logs", service+".log"))
	if err != nil {
		h.t.Errorf("%s: service log: %v", x.id, err)
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), `"listening"`) {
			continue
		}
		var m struct {
			Message string `json:"message"`
			Version string `json:"version"`
		}
		if json.Unmarshal(line, &m) == nil && m.Message == "listening" {
			out = append(out, m.Version)
		}
	}
	return out
}

// events reads a rollout's history through the CLI.
func (h *harness) events(id string) []*v1.Event {
	h.t.Helper()
	var resp v1.ListEventsResponse
	h.cliJSON(h.opCoord(), &resp, "rollout", "history", service, "--id", id, "--limit", "10000")
	if resp.GetTruncated() {
		h.t.Fatalf("history of %s: over 10000 events, older ones left out", id)
	}
	return resp.GetEvents()
}

// checkHistory checks the rollout's events: created once, every wave
// started (after the previous one was done), baked and done once, every
// host assigned and done exactly once inside its wave, succeeded once and
// last, and nothing failed.
func (h *harness) checkHistory(r *v1.Rollout) {
	h.t.Helper()
	evs := h.events(r.GetId())
	pos := map[string][]int{} // kind/wave/host -> positions
	key := func(kind string, wave int, host string) string { return fmt.Sprintf("%s/%d/%s", kind, wave, host) }
	var lines []string
	for i, e := range evs {
		if e.GetRolloutId() != r.GetId() {
			h.t.Errorf("history of %s has an event of rollout %s: %v", r.GetId(), e.GetRolloutId(), e)
			continue
		}
		k := key(e.GetKind(), int(e.GetWave()), e.GetHost())
		pos[k] = append(pos[k], i)
		lines = append(lines, fmt.Sprintf("%s w%d %s %s", e.GetKind(), e.GetWave(), e.GetHost(), e.GetMessage()))
		switch e.GetKind() {
		case rollout.EventRolloutCreated, rollout.EventWaveStarted, rollout.EventHostAssigned, rollout.EventHostDone,
			rollout.EventWaveBaking, rollout.EventWaveDone, rollout.EventRolloutSucceeded,
			rollout.EventHostUnknown, rollout.EventHostBack:
		default:
			h.t.Errorf("unexpected event in a rollout that succeeded: %s w%d %s: %s", e.GetKind(), e.GetWave(), e.GetHost(), e.GetMessage())
		}
	}
	dump := strings.Join(lines, "\n")
	once := func(kind string, wave int, host string) int {
		h.t.Helper()
		p := pos[key(kind, wave, host)]
		if len(p) != 1 {
			h.t.Errorf("history has %d × %s (wave %d, host %q), want exactly 1\n%s", len(p), kind, wave, host, dump)
			return -1
		}
		return p[0]
	}
	created := once(rollout.EventRolloutCreated, rollout.NoWave, "")
	if created != 0 {
		h.t.Errorf("rollout_created is event %d, want the first\n%s", created, dump)
	}
	if p := once(rollout.EventRolloutSucceeded, rollout.NoWave, ""); p != len(evs)-1 {
		h.t.Errorf("rollout_succeeded is event %d of %d, want the last\n%s", p, len(evs), dump)
	}
	baking := r.GetPolicy().GetBake().AsDuration() > 0
	prevDone := created
	for i, w := range r.GetWaves() {
		started := prevDone
		if i > 0 {
			started = once(rollout.EventWaveStarted, i, "")
			if started >= 0 && prevDone >= 0 && started < prevDone {
				h.t.Errorf("wave %d started (event %d) before wave %d was done (event %d)\n%s", i, started, i-1, prevDone, dump)
			}
		}
		done := once(rollout.EventWaveDone, i, "")
		if baking {
			if b := once(rollout.EventWaveBaking, i, ""); b > done {
				h.t.Errorf("wave %d: baking (event %d) after done (event %d)", i, b, done)
			}
		}
		for _, x := range w.GetHosts() {
			a := once(rollout.EventHostAssigned, i, x.GetHostId())
			d := once(rollout.EventHostDone, i, x.GetHostId())
			if a >= 0 && d >= 0 && (a < started || d < a || d > done) {
				h.t.Errorf("host %s: assigned at event %d, done at %d, wave %d started at %d and done at %d: out of order\n%s",
					x.GetHostId(), a, d, i, started, done, dump)
			}
		}
		prevDone = done
	}
	h.logf("history of %s: %d events, complete", r.GetId(), len(evs))
}

// eventCount counts a rollout's events of kind about host ("" = any).
func eventCount(evs []*v1.Event, kind, host string) int {
	n := 0
	for _, e := range evs {
		if e.GetKind() == kind && (host == "" || e.GetHost() == host) {
			n++
		}
	}
	return n
}
