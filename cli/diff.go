package cli

import (
	"fmt"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// DiffRollout returns one human-readable line for each change between two
// consecutive snapshots of a rollout: rollout state changes, waves
// starting, baking, finishing or failing, wave failure counts, and host
// state, phase, reachability or reason changes; the rollout's end (with its
// reason) comes last. With prev nil, or prev a different rollout, it
// describes cur from scratch: a header line, then cur as changes from an
// untouched plan. It is a pure function of its arguments.
func DiffRollout(prev, cur *v1.Rollout) []string {
	if cur == nil {
		return nil
	}
	var out []string
	if prev == nil || prev.GetId() != cur.GetId() {
		hosts := rollout.RolloutHosts(cur)
		kind := "rollout"
		if cur.GetRollback() {
			kind = "rollback"
		}
		switch {
		case cur.GetRemove():
			kind = "removal"
		case rollout.IsConfig(cur):
			kind = "config rollout"
		}
		out = append(out, fmt.Sprintf("%s %s of %s: %s%s, %s, %s",
			kind, cur.GetId(), cur.GetService(), rollout.Describe(cur), changesNote(cur.GetSpecChanges()),
			plural(len(cur.GetWaves()), "wave"), plural(hosts, "host")))
		if n := rollout.InPlaceNote(cur); n != "" {
			out = append(out, n)
		}
		if n := rollout.CompactedNote(cur); n != "" {
			out = append(out, n)
		}
		prev = untouched(cur)
	}

	if prev.GetState() != cur.GetState() && !rollout.Terminal(cur) {
		switch cur.GetState() {
		case v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL:
			out = append(out, fmt.Sprintf("rollout waits for approval: fleetwave rollout approve %s", cur.GetService()))
		case v1.RolloutState_ROLLOUT_STATE_PROGRESSING:
			if prev.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
				out = append(out, "rollout approved, progressing")
			} else {
				out = append(out, "rollout progressing")
			}
		default:
			out = append(out, "rollout "+rolloutState(cur.GetState()))
		}
	}

	if prev.GetPaused() != cur.GetPaused() {
		if cur.GetPaused() {
			out = append(out, "rollout paused: hosts already moving finish, nothing new starts (fleetwave rollout resume "+cur.GetService()+")")
		} else {
			out = append(out, "rollout resumed")
		}
	}

	prevWaves := map[uint32]*v1.Wave{}
	prevHosts := map[string]*v1.HostProgress{}
	for _, w := range prev.GetWaves() {
		prevWaves[w.GetIndex()] = w
		for _, h := range w.GetHosts() {
			prevHosts[h.GetHostId()] = h
		}
	}
	for _, w := range cur.GetWaves() {
		pw := prevWaves[w.GetIndex()]
		if pw == nil {
			pw = &v1.Wave{Index: w.GetIndex(), State: v1.WaveState_WAVE_STATE_PENDING}
		}
		label := waveLabel(w)
		// A wave that starts is told before its hosts move; a wave that
		// bakes, ends or fails is told after the host changes that caused it.
		var before, after []string
		if pw.GetState() != w.GetState() {
			switch w.GetState() {
			case v1.WaveState_WAVE_STATE_PROGRESSING:
				before = append(before, fmt.Sprintf("%s started: %s: %s", label, plural(rollout.WaveHosts(cur, w), "host"), hostList(w)))
			case v1.WaveState_WAVE_STATE_BAKING:
				after = append(after, fmt.Sprintf("%s baking until %s: %s", label, fmtTime(w.GetBakeUntil()), waveDone(cur, w)))
			case v1.WaveState_WAVE_STATE_DONE:
				after = append(after, fmt.Sprintf("%s done: %s", label, waveDone(cur, w)))
			case v1.WaveState_WAVE_STATE_FAILED:
				after = append(after, fmt.Sprintf("%s failed: %s (budget %d)", label, plural(int(w.GetFailures()), "failure"), cur.GetPolicy().GetMaxFailures()))
			default:
				after = append(after, fmt.Sprintf("%s %s", label, waveState(w.GetState())))
			}
		} else if w.GetWaitingApproval() && !pw.GetWaitingApproval() {
			before = append(before, fmt.Sprintf("%s waits for approval: fleetwave rollout approve %s --wave %d", label, cur.GetService(), w.GetIndex()))
		} else if w.GetApproved() && !pw.GetApproved() {
			before = append(before, fmt.Sprintf("%s approved", label))
		} else if pw.GetFailures() != w.GetFailures() {
			after = append(after, fmt.Sprintf("%s: %s (budget %d)", label, plural(int(w.GetFailures()), "failure"), cur.GetPolicy().GetMaxFailures()))
		}
		out = append(out, before...)
		for _, h := range w.GetHosts() {
			ph := prevHosts[h.GetHostId()]
			if ph == nil {
				ph = &v1.HostProgress{HostId: h.GetHostId(), State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING}
			}
			if line, ok := hostChange(ph, h); ok {
				out = append(out, line)
			}
		}
		out = append(out, after...)
	}

	switch {
	case prev.GetState() != cur.GetState() && rollout.Terminal(cur):
		line := "rollout " + rolloutState(cur.GetState())
		if cur.GetReason() != "" {
			line += ": " + cur.GetReason()
		}
		out = append(out, line)
		switch {
		case cur.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED && cur.GetLeft():
			out = append(out, fmt.Sprintf("ALERT: the hosts it reached stay removed, the others the selector left keep %s; %s is frozen; after a look: fleetwave service unfreeze %s (the removal runs again)",
				versionOrNone(cur.GetFromVersion()), cur.GetService(), cur.GetService()))
		case cur.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED && cur.GetLeft():
			out = append(out, fmt.Sprintf("removed from every host the selector left; %s runs on the hosts it selects", cur.GetService()))
		case cur.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED && cur.GetRemove():
			out = append(out, fmt.Sprintf("ALERT: the hosts it reached stay removed, the others keep %s; %s stays being deleted and is frozen; after a look: fleetwave service delete %s",
				versionOrNone(cur.GetFromVersion()), cur.GetService(), cur.GetService()))
		case cur.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED:
			out = append(out, fmt.Sprintf("ALERT: hosts that moved go back to %s; %s is frozen and people are alerted (the spec's webhook, the coordinator's log); after a look: fleetwave service unfreeze %s",
				versionOrNone(cur.GetFromVersion()), cur.GetService(), cur.GetService()))
		case cur.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED && cur.GetRemove():
			out = append(out, fmt.Sprintf("service %s deleted: removed from every host; its history stays (fleetwave rollout history %s)", cur.GetService(), cur.GetService()))
		}
	case prev.GetReason() != cur.GetReason() && cur.GetReason() != "":
		out = append(out, "rollout: "+cur.GetReason())
	}
	return out
}

// untouched is cur's plan before anything happened: the same waves and
// hosts, every one pending.
func untouched(cur *v1.Rollout) *v1.Rollout {
	r := &v1.Rollout{Id: cur.GetId(), Service: cur.GetService()}
	for _, w := range cur.GetWaves() {
		pw := &v1.Wave{Index: w.GetIndex(), Canary: w.GetCanary(), State: v1.WaveState_WAVE_STATE_PENDING}
		for _, h := range w.GetHosts() {
			pw.Hosts = append(pw.Hosts, &v1.HostProgress{HostId: h.GetHostId(), State: v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING})
		}
		r.Waves = append(r.Waves, pw)
	}
	return r
}

// hostChange describes h if it differs from ph in a way worth a line: its
// state, reachability or reason, or its phase once it was told to move.
func hostChange(ph, h *v1.HostProgress) (string, bool) {
	changed := ph.GetState() != h.GetState() || ph.GetUnknown() != h.GetUnknown() || ph.GetReason() != h.GetReason() ||
		((ph.GetPhase() != h.GetPhase() || ph.GetInPlace() != h.GetInPlace()) && h.GetState() != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING)
	if !changed {
		return "", false
	}
	line := fmt.Sprintf("host %s: %s", h.GetHostId(), hostState(h.GetState()))
	if h.GetPhase() != v1.Phase_PHASE_UNSPECIFIED {
		line += " (" + hostPhase(h) + ")"
	}
	switch {
	case h.GetUnknown():
		line += ", unreachable"
	case ph.GetUnknown():
		line += ", reachable again"
	}
	if h.GetReason() != "" {
		line += ": " + h.GetReason()
	}
	return line, true
}

// hostPhase is a host's reported phase, ", in place" when its report said
// the change was applied in place (HostProgress.in_place: no restart).
func hostPhase(h *v1.HostProgress) string {
	if h.GetInPlace() {
		return phaseName(h.GetPhase()) + ", in place"
	}
	return phaseName(h.GetPhase())
}
