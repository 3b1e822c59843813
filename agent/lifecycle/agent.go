package lifecycle

import (
	"fmt"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The agent's own upgrade (`fleetwave agent upgrade`): the decisions, pure.
// The agent (agent/upgrade.go) persists the record, fetches and checks the
// binary, and hands over to it; cmd/fleetwave-agent starts the new agent,
// waits for its confirmation and goes back. Every report here is of the
// reserved service the agent names (spec.AgentService); the caller sets
// its Service.
//
//   - An assignment of the version the agent runs is reported HEALTHY (the
//     new agent, back and accepted, says so; so does any agent already on
//     it). During a handover the old agent alone writes the record.
//   - An assignment of another version is an upgrade, unless the record says
//     it failed at that generation or a later one (never retried: the same
//     generation is the same assignment) or the assignment is older than
//     the record (a replay: ignored, the record reported).
//   - Preparing it (fetch, verify, unpack, `version` check) may fail: the
//     record and the report say FAILED with the reason, nothing changed.
//   - Prepared, the record says TRYING and the agent hands over. The
//     handover ends one way (AgentHandoff): the new agent confirmed (DONE:
//     it runs from now on), or it exited, missed its deadline, or the old
//     agent was stopped meanwhile (FAILED: the old agent runs again and
//     reports the reason).
//   - An agent starting with a TRYING record (AgentStart): the new agent
//     itself while it has not confirmed (child), nothing to decide (it
//     reports the upgrade in progress until the old agent recorded it
//     done and exited: then AgentStart again, the record DONE); the
//     new version after the old one committed and died before saving DONE:
//     DONE; the old version: the handover never ended (the old agent died
//     in it), FAILED.

// AgentUpgradeState is where the agent's upgrade to Version stands.
type AgentUpgradeState string

// The states of an agent upgrade record.
const (
	AgentTrying AgentUpgradeState = "trying"
	AgentDone   AgentUpgradeState = "done"
	AgentFailed AgentUpgradeState = "failed"
)

// AgentUpgrade is the agent's record of its newest upgrade (persisted by
// the agent in DATA_DIR/agent/upgrade.json).
type AgentUpgrade struct {
	Version    string            `json:"version"`
	Generation int64             `json:"generation"`
	From       string            `json:"from"`
	State      AgentUpgradeState `json:"state"`
	Reason     string            `json:"reason,omitempty"`
}

// AgentDecision is what to do about the agent's own version.
type AgentDecision struct {
	// Upgrade: fetch, verify and check the assigned binary, then hand over
	// to it (AgentPrepared with the outcome).
	Upgrade bool
	// Record to persist (nil: unchanged), before the report is sent.
	Record *AgentUpgrade
	// Report of the upgrade to send (nil: none); Service is the caller's.
	Report *v1.ServiceReport
}

// AgentAssign decides about an agent assignment asg (nil: none) for an
// agent running version own whose record is rec (nil: never upgraded).
func AgentAssign(rec *AgentUpgrade, own string, asg *v1.Assignment) AgentDecision {
	if asg == nil || asg.GetRelease() == nil {
		return AgentDecision{}
	}
	v, gen := asg.GetRelease().GetVersion(), asg.GetGeneration()
	switch {
	case rec != nil && older(gen, asg.GetReplacesGeneration(), rec.Generation):
		// A replay; unless it replaces the recorded generation, one no
		// coordinator of the fleet issued (pendingAssign.older).
		return AgentDecision{Report: agentReport(rec, own)}
	case v == own && rec != nil && rec.State == AgentTrying && rec.Version == v && rec.Generation == gen:
		// The new agent during its handover: the old agent owns the record
		// until the handover ends, and the upgrade is not done until it
		// recorded it so (AgentHandedOver): the old agent may die before,
		// and the agent that runs then is the installed one, perhaps still
		// the old binary, which reports the upgrade failed. A HEALTHY report
		// now would count the host done in a rollout whose host goes back.
		return AgentDecision{Report: agentReport(rec, own)}
	case v == own:
		done := &AgentUpgrade{Version: v, Generation: gen, From: own, State: AgentDone}
		if rec != nil && rec.Version == v && rec.Generation == gen {
			done.From = rec.From
		}
		d := AgentDecision{Report: agentReport(done, own)}
		if rec == nil || *rec != *done {
			d.Record = done
		}
		return d
	case rec != nil && rec.State == AgentFailed && rec.Version == v && rec.Generation == gen:
		return AgentDecision{Report: agentReport(rec, own)} // failed: not retried
	}
	return AgentDecision{Upgrade: true}
}

// AgentPrepared decides after the assigned binary was prepared: err nil
// hands over (record TRYING, no report: the new agent reports); else FAILED
// with err's text, nothing changed.
func AgentPrepared(own string, asg *v1.Assignment, err error) AgentDecision {
	v, gen := asg.GetRelease().GetVersion(), asg.GetGeneration()
	if err == nil {
		return AgentDecision{Record: &AgentUpgrade{Version: v, Generation: gen, From: own, State: AgentTrying}}
	}
	rec := &AgentUpgrade{Version: v, Generation: gen, From: own, State: AgentFailed,
		Reason: fmt.Sprintf("agent %s: %v: %s keeps running", v, err, own)}
	return AgentDecision{Record: rec, Report: agentReport(rec, own)}
}

// HandoffEnd is how a handover to the new agent ended.
type HandoffEnd int

// How a handover ends.
const (
	// HandoffConfirmed: the new agent connected, was accepted, and said so.
	HandoffConfirmed HandoffEnd = iota + 1
	// HandoffExited: the new agent exited before it confirmed.
	HandoffExited
	// HandoffDeadline: it did not confirm within the deadline.
	HandoffDeadline
	// HandoffStopped: the old agent was told to stop meanwhile.
	HandoffStopped
	// HandoffCommitFailed: it confirmed, but its binary could not be made
	// the one that starts next.
	HandoffCommitFailed
	// HandoffNoWatchdog: it confirmed without saying it keeps systemd's
	// watchdog, which the unit has (an agent older than the watchdog):
	// made the unit's main process it would be killed at WatchdogSec.
	HandoffNoWatchdog
)

// AgentHandoff decides the end of the handover of trying (a TRYING
// record): the record to persist and whether the new agent stays (commit).
// detail says what happened (an exit status, an error); deadline is the
// handover's deadline.
func AgentHandoff(trying AgentUpgrade, end HandoffEnd, detail string, deadline time.Duration) (rec AgentUpgrade, commit bool) {
	rec = trying
	var why string
	switch end {
	case HandoffConfirmed:
		rec.State, rec.Reason = AgentDone, ""
		return rec, true
	case HandoffExited:
		why = "exited before it connected (" + detail + ")"
	case HandoffDeadline:
		why = fmt.Sprintf("did not connect and confirm within %s", deadline)
	case HandoffStopped:
		why = "was stopped: the old agent was told to stop during the upgrade"
	case HandoffCommitFailed:
		why = "connected, but could not be installed as the agent's executable (" + detail + ")"
	case HandoffNoWatchdog:
		why = "connected, but does not keep systemd's watchdog (an agent older than the unit's WatchdogSec=: systemd would kill it)"
	default:
		why = fmt.Sprintf("ended its handover in an unknown way (%d)", end)
	}
	rec.State = AgentFailed
	rec.Reason = fmt.Sprintf("new agent %s %s: went back to %s", trying.Version, why, trying.From)
	return rec, false
}

// AgentStart decides at an agent's start from its record: child says it is
// the new agent of a handover in progress (it has not confirmed yet).
func AgentStart(rec *AgentUpgrade, own string, child bool) AgentDecision {
	if rec == nil {
		return AgentDecision{}
	}
	if rec.State != AgentTrying {
		return AgentDecision{Report: agentReport(rec, own)}
	}
	switch {
	case own == rec.Version && child:
		return AgentDecision{Report: agentReport(rec, own)} // not done until the old agent recorded it (AgentAssign)
	case own == rec.Version:
		done := *rec
		done.State = AgentDone
		return AgentDecision{Record: &done, Report: agentReport(&done, own)}
	}
	failed := *rec
	failed.State = AgentFailed
	failed.Reason = fmt.Sprintf("new agent %s did not take over: the agent (%s) started again before the handover ended: went back to %s", rec.Version, own, own)
	return AgentDecision{Record: &failed, Report: agentReport(&failed, own)}
}

// agentReport is the report of rec by an agent running own.
func agentReport(rec *AgentUpgrade, own string) *v1.ServiceReport {
	r := &v1.ServiceReport{Generation: rec.Generation, CurrentVersion: own, TargetVersion: rec.Version, LastGoodVersion: own}
	switch rec.State {
	case AgentDone:
		r.Phase = v1.Phase_PHASE_HEALTHY
	case AgentFailed:
		r.Phase, r.Reason = v1.Phase_PHASE_FAILED, rec.Reason
	default:
		r.Phase = v1.Phase_PHASE_CHECKING // trying: not reported by the old agent
	}
	return r
}
