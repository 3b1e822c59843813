package lifecycle

import v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"

// Staging ahead of a wave (Assignment.stage, rollout.stage_ahead).
//
// Besides the release it runs, a service's assignment may name a release
// to stage: fetch (from its sources first), verify (size, sha256, and the
// trust checks of an install) and unpack into its release directory,
// without hooks, without touching `current` or the running process. The
// agent holds at most one such release per service (Ahead) and does one
// staging fetch per service at a time. DecideAhead says what to do with it
// when an assignment comes; the install of that release later finds it
// unpacked (install.Staged) and fetches nothing.

// Ahead is the release a service stages or holds staged ahead of its wave
// (zero: none).
type Ahead struct {
	Version string
	SHA256  string
	// Ready: staged (fetched, verified, unpacked); else in flight.
	Ready bool
}

// AheadStep is what DecideAhead asks for, in this order: Handoff or
// Cancel and Drop the held one, then Start.
type AheadStep struct {
	// Handoff: the held release is now the assigned one; the install takes
	// it over (waits for its staging in flight, then finds it staged). The
	// service holds nothing ahead any more; nothing is cancelled or dropped.
	Handoff bool
	// Cancel the staging in flight (not Ready).
	Cancel bool
	// Drop removes the held release's directory (and its kept artifact):
	// no release of the service uses it.
	Drop string
	// Start staging this release (nil: none).
	Start *v1.Release
}

// DecideAhead decides from what the service holds ahead (held), the
// assignment's stage, the version it is assigned to run, and the versions
// its machine uses (current, target, last good: never dropped). A stage of
// the assigned version is nothing to stage: the install does it. The
// assignment's sources are no input: a stage of the same release (version
// and sha256) from other sources (a holder the host stages from flapped,
// rollout.PlanStage) keeps the staging in flight and what it fetched; its
// fetch falls back between the sources it started with, then the
// coordinator or the release's URL.
func DecideAhead(held Ahead, stage *v1.Release, assigned string, inUse []string) AheadStep {
	if stage.GetVersion() == assigned {
		stage = nil
	}
	same := held.Version != "" && stage != nil && held.Version == stage.GetVersion() &&
		held.SHA256 == stage.GetArtifact().GetSha256()
	var st AheadStep
	switch {
	case same:
		return st
	case held.Version == "":
	case held.Version == assigned:
		st.Handoff = true
	default:
		st.Cancel = !held.Ready
		st.Drop = held.Version
		for _, v := range inUse {
			if v == held.Version {
				st.Drop = ""
			}
		}
	}
	st.Start = stage
	return st
}
