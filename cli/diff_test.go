package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

const (
	rProgressing = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	hPending     = v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING
	hUpdating    = v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	hDone        = v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
	hFailed      = v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED
	wPending     = v1.WaveState_WAVE_STATE_PENDING
	wProgressing = v1.WaveState_WAVE_STATE_PROGRESSING
	wBaking      = v1.WaveState_WAVE_STATE_BAKING
	wDone        = v1.WaveState_WAVE_STATE_DONE
	wFailed      = v1.WaveState_WAVE_STATE_FAILED
)

// plan is a rollout of web 1.0 → 1.1 over a canary (h1) and a wave (h2, h3),
// waiting for approval.
func plan() *v1.Rollout {
	return &v1.Rollout{
		Id: "web-7", Service: "web", FromVersion: "1.0", ToVersion: "1.1",
		State:  v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL,
		Policy: &v1.RolloutPolicy{MaxFailures: 0},
		Waves: []*v1.Wave{
			{Index: 0, Canary: true, State: wPending, Hosts: []*v1.HostProgress{{HostId: "h1", State: hPending, Phase: v1.Phase_PHASE_HEALTHY}}},
			{Index: 1, State: wPending, Hosts: []*v1.HostProgress{{HostId: "h2", State: hPending}, {HostId: "h3", State: hPending}}},
		},
	}
}

// step clones r and applies change to the clone.
func step(r *v1.Rollout, change func(r *v1.Rollout)) *v1.Rollout {
	c := proto.Clone(r).(*v1.Rollout)
	change(c)
	return c
}

func TestDiffRolloutScript(t *testing.T) {
	bake := timestamppb.New(time.Date(2024, 5, 1, 12, 0, 3, 0, time.UTC))
	s0 := plan()
	s1 := step(s0, func(r *v1.Rollout) { r.State = rProgressing })
	s2 := step(s1, func(r *v1.Rollout) {
		r.Waves[0].State = wProgressing
		r.Waves[0].Hosts[0].State = hUpdating
		r.Waves[0].Hosts[0].Phase = v1.Phase_PHASE_FETCHING
	})
	s3 := step(s2, func(r *v1.Rollout) { r.Waves[0].Hosts[0].Phase = v1.Phase_PHASE_CHECKING })
	s4 := step(s3, func(r *v1.Rollout) {}) // identical snapshot: nothing to print
	s5 := step(s4, func(r *v1.Rollout) {
		r.Waves[0].State = wBaking
		r.Waves[0].BakeUntil = bake
		r.Waves[0].Hosts[0].State = hDone
		r.Waves[0].Hosts[0].Phase = v1.Phase_PHASE_HEALTHY
	})
	s6 := step(s5, func(r *v1.Rollout) {
		r.Waves[0].State = wDone
		r.Waves[1].State = wProgressing
		for _, h := range r.Waves[1].Hosts {
			h.State = hUpdating
			h.Phase = v1.Phase_PHASE_STARTING
		}
	})
	s7 := step(s6, func(r *v1.Rollout) { r.Waves[1].Hosts[1].Unknown = true })
	s8 := step(s7, func(r *v1.Rollout) {
		r.Waves[1].Hosts[1].Unknown = false
		r.Waves[1].Hosts[0].State = hFailed
		r.Waves[1].Hosts[0].Phase = v1.Phase_PHASE_REVERTED
		r.Waves[1].Hosts[0].Reason = "check http failing for 30s"
		r.Waves[1].Failures = 1
		r.Waves[1].State = wFailed
		r.State = v1.RolloutState_ROLLOUT_STATE_FAILED
		r.Reason = "wave 1 over failure budget"
	})

	script := []struct {
		snap *v1.Rollout
		want []string
	}{
		{s0, []string{
			"rollout web-7 of web: 1.0 → 1.1, 2 waves, 3 hosts",
			"rollout waits for approval: fleetwave rollout approve web",
		}},
		{s1, []string{"rollout approved, progressing"}},
		{s2, []string{
			"wave 0 (canary) started: 1 host: h1",
			"host h1: updating (fetching)",
		}},
		{s3, []string{"host h1: updating (checking)"}},
		{s4, nil},
		{s5, []string{
			"host h1: done (healthy)",
			"wave 0 (canary) baking until 2024-05-01T12:00:03Z: 1/1 hosts done",
		}},
		{s6, []string{
			"wave 0 (canary) done: 1/1 hosts done",
			"wave 1 started: 2 hosts: h2, h3",
			"host h2: updating (starting)",
			"host h3: updating (starting)",
		}},
		{s7, []string{"host h3: updating (starting), unreachable"}},
		{s8, []string{
			"host h2: failed (reverted): check http failing for 30s",
			"host h3: updating (starting), reachable again",
			"wave 1 failed: 1 failure (budget 0)",
			"rollout failed: wave 1 over failure budget",
			"ALERT: hosts that moved go back to 1.0; web is frozen and people are alerted (the spec's webhook, the coordinator's log); after a look: fleetwave service unfreeze web",
		}},
	}
	var prev *v1.Rollout
	for i, st := range script {
		got := DiffRollout(prev, st.snap)
		if strings.Join(got, "\n") != strings.Join(st.want, "\n") {
			t.Errorf("step %d:\ngot:\n%s\nwant:\n%s", i, strings.Join(got, "\n"), strings.Join(st.want, "\n"))
		}
		prev = st.snap
	}
}

func TestDiffRolloutFromScratch(t *testing.T) {
	// Joining a rollout that already succeeded shows its state as changes
	// from the untouched plan, and the end last.
	r := step(plan(), func(r *v1.Rollout) {
		r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		for _, w := range r.Waves {
			w.State = wDone
			for _, h := range w.Hosts {
				h.State = hDone
				h.Phase = v1.Phase_PHASE_HEALTHY
			}
		}
	})
	want := []string{
		"rollout web-7 of web: 1.0 → 1.1, 2 waves, 3 hosts",
		"host h1: done (healthy)",
		"wave 0 (canary) done: 1/1 hosts done",
		"host h2: done (healthy)",
		"host h3: done (healthy)",
		"wave 1 done: 2/2 hosts done",
		"rollout succeeded",
	}
	if got := DiffRollout(nil, r); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDiffRolloutEdges(t *testing.T) {
	if got := DiffRollout(plan(), nil); got != nil {
		t.Errorf("DiffRollout(x, nil) = %q", got)
	}
	// A different rollout id starts over with a header.
	other := step(plan(), func(r *v1.Rollout) { r.Id = "web-8"; r.FromVersion = ""; r.Rollback = true })
	got := DiffRollout(plan(), other)
	if len(got) == 0 || got[0] != "rollback web-8 of web: (none) → 1.1, 2 waves, 3 hosts" {
		t.Errorf("new rollout: %q", got)
	}
	// Pending hosts' phase changes (reports about the old release) are quiet;
	// a superseded rollout ends with its reason; a failure count change in a
	// progressing wave is reported.
	a := step(plan(), func(r *v1.Rollout) { r.State = rProgressing; r.Waves[1].State = wProgressing })
	b := step(a, func(r *v1.Rollout) {
		r.Waves[0].Hosts[0].Phase = v1.Phase_PHASE_IDLE
		r.Waves[1].Failures = 1
		r.Policy.MaxFailures = 2
		r.State = v1.RolloutState_ROLLOUT_STATE_SUPERSEDED
		r.Reason = "release 1.2 created"
	})
	want := []string{"wave 1: 1 failure (budget 2)", "rollout superseded: release 1.2 created"}
	if got := DiffRollout(a, b); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got %q, want %q", got, want)
	}
	// A new reason on a running rollout is printed once.
	c := step(a, func(r *v1.Rollout) { r.Reason = "waiting for unknown host h3" })
	if got := DiffRollout(a, c); len(got) != 1 || got[0] != "rollout: waiting for unknown host h3" {
		t.Errorf("reason change: %q", got)
	}
	if got := DiffRollout(c, c); len(got) != 0 {
		t.Errorf("same snapshot: %q", got)
	}
}

func TestDiffRolloutPauseResume(t *testing.T) {
	a := &v1.Rollout{Id: "000002", Service: "web", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING}
	b := proto.Clone(a).(*v1.Rollout)
	b.Paused = true
	if got := DiffRollout(a, b); len(got) != 1 || !strings.HasPrefix(got[0], "rollout paused") || !strings.Contains(got[0], "rollout resume web") {
		t.Errorf("pause: %q", got)
	}
	if got := DiffRollout(b, a); len(got) != 1 || got[0] != "rollout resumed" {
		t.Errorf("resume: %q", got)
	}
}

func TestDiffRolloutWaveApproval(t *testing.T) {
	a := &v1.Rollout{Id: "000002", Service: "web", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Waves: []*v1.Wave{{Index: 0, State: v1.WaveState_WAVE_STATE_DONE}, {Index: 1, State: v1.WaveState_WAVE_STATE_PENDING}}}
	b := proto.Clone(a).(*v1.Rollout)
	b.Waves[1].WaitingApproval = true
	if got := DiffRollout(a, b); len(got) != 1 || got[0] != "wave 1 waits for approval: fleetwave rollout approve web --wave 1" {
		t.Errorf("waiting: %q", got)
	}
	c := proto.Clone(b).(*v1.Rollout)
	c.Waves[1].WaitingApproval, c.Waves[1].Approved = false, true
	if got := DiffRollout(b, c); len(got) != 1 || got[0] != "wave 1 approved" {
		t.Errorf("approved: %q", got)
	}
}

// TestDiffRolloutInPlace: a judging-only config rollout says hosts apply it
// in place, and each host that did says so, in watch's lines and in
// status's host table; a host that restarted does not.
func TestDiffRolloutInPlace(t *testing.T) {
	r := step(plan(), func(r *v1.Rollout) {
		r.ToVersion, r.FromSpecRevision, r.SpecRevision = "1.0", 1, 2
		r.SpecChanges, r.InPlace = []string{"checks"}, true
		r.State = rProgressing
		r.Waves[0].State = wDone
		r.Waves[0].Hosts[0].State, r.Waves[0].Hosts[0].InPlace = hDone, true
		r.Waves[1].State = wProgressing
		r.Waves[1].Hosts[0].State, r.Waves[1].Hosts[0].Phase = hDone, v1.Phase_PHASE_HEALTHY
		r.Waves[1].Hosts[1].State, r.Waves[1].Hosts[1].Phase = hUpdating, v1.Phase_PHASE_CHECKING
	})
	want := []string{
		"config rollout web-7 of web: 1.0 with spec 1 → spec 2 (changes checks), 2 waves, 3 hosts",
		"judging only: hosts healthy on 1.0 apply it in place, no restart",
		"rollout progressing",
		"host h1: done (healthy, in place)",
		"wave 0 (canary) done: 1/1 hosts done",
		"wave 1 started: 2 hosts: h2, h3",
		"host h2: done (healthy)",
		"host h3: updating (checking)",
	}
	if got := DiffRollout(nil, r); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// h3 reports CHECKING in place: a change of its line.
	next := step(r, func(r *v1.Rollout) { r.Waves[1].Hosts[1].InPlace = true })
	if got := DiffRollout(r, next); strings.Join(got, "\n") != "host h3: updating (checking, in place)" {
		t.Errorf("h3 in place: got %q", got)
	}
	var b strings.Builder
	if err := printRollout(&b, next); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"spec: spec 2 (changes checks)\njudging only: hosts healthy on 1.0 apply it in place, no restart\n",
		"healthy, in place", "checking, in place"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("rollout status lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Count(b.String(), "in place") != 3 {
		t.Errorf("rollout status: want the rollout's note and two hosts in place (not h2):\n%s", b.String())
	}
}
