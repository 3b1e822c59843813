package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

// Staging ahead of the wave (Assignment.stage; lifecycle.DecideAhead).
//
// An assignment's stage names the rollout's target release while the host
// waits for its wave. The run loop checks it like an install's release
// (validateRelease; with trusted keys its signed manifest and the service's
// floor, which staging never raises) and stages it in the background: the
// free-space check, the fetch path of installs (its sources, which then
// name holders of that artifact, in order; resume; the coordinator or its
// URL last), size and sha256, then unpacked into its release directory
// (install.Stage; its artifact kept for peers when the peer listener is
// on). No hook runs, `current` and the running process are not touched.
// Once staged, the service's reports carry staged_sha256 and the host
// serves the artifact to other agents. When the host's wave comes, the
// install finds the release unpacked from the same digest and fetches
// nothing (it waits for a staging of that release still in flight). A
// stage of another release, or none, cancels a staging in flight and drops
// a staged release no release of the service uses (install.DropRelease).
// One staging (or drop) per service runs at a time, and the install's fetch
// waits for the latest one to end.

// aheadEv: a staging ahead (seq) ended.
type aheadEv struct {
	svc     string
	seq     uint64
	err     error
	fetched bool // bytes were fetched (else it was staged already)
	took    time.Duration
}

// afterAhead returns a channel closed once no staging ahead or drop of the
// service runs.
func (s *service) afterAhead() <-chan struct{} {
	if s.aheadDone == nil {
		return closedCh
	}
	return s.aheadDone
}

// aheadAssigned applies an assignment's stage (before the machine sees the
// assignment, so that an install of another release never waits for a
// staging it makes useless).
func (a *agent) aheadAssigned(s *service, asg *v1.Assignment, now time.Time) {
	stage := asg.GetStage()
	if stage != nil {
		if err := a.checkStage(s, stage, now); err != nil {
			a.log.Warn().Str("service", s.name).Str("version", stage.GetVersion()).Err(err).Msg("not staging ahead: the stage does not verify")
			stage = nil
		}
	}
	var inUse []string
	for _, x := range []*v1.Assignment{s.m.Current(), s.m.Target(), s.m.LastGood()} {
		if v := lifecycle.Version(x); v != "" {
			inUse = append(inUse, v)
		}
	}
	st := lifecycle.DecideAhead(s.ahead, stage, lifecycle.Version(asg), inUse)
	held := s.ahead
	switch {
	case st.Handoff:
		a.log.Info().Str("service", s.name).Str("version", held.Version).Bool("staged", held.Ready).
			Msg("the wave came: the install takes over the release staged ahead")
		s.ahead, s.aheadCancel = lifecycle.Ahead{}, nil
		if held.Ready {
			// Still reported staged until its install ends
			// (handedOffEnded): the host holds the artifact all along,
			// and a coordinator that saw it UPDATING and not staged took
			// the admission of the hosts staging from it away until it
			// was DONE (rollout.PlanStage: a future holder), so their
			// agents dropped what they had fetched.
			s.handedOff = held
		} else {
			a.rep.setStaged(s.name, "")
		}
	case st.Cancel || st.Drop != "":
		if st.Cancel && s.aheadCancel != nil {
			s.aheadCancel()
		}
		a.log.Info().Str("service", s.name).Str("version", held.Version).Bool("staged", held.Ready).
			Str("reason", "no longer the stage").Msg("dropping the release staged ahead")
		s.ahead, s.aheadCancel = lifecycle.Ahead{}, nil
		a.rep.setStaged(s.name, "")
	}
	if st.Drop != "" {
		name, v := s.name, st.Drop
		a.aheadBackground(s, func(context.Context) {
			if err := a.inst.DropRelease(name, v); err != nil {
				a.log.Warn().Str("service", name).Str("version", v).Err(err).Msg("dropping a release staged ahead")
			}
		})
	}
	if st.Start != nil {
		a.startAhead(s, asg, st.Start)
	}
}

// handedOffEnded stops reporting the staged release the install took
// over (aheadAssigned) once a report of the service (rep, about to be
// put) is not one of that install in progress: it ended (healthy, failed,
// reverted) or another began.
func (a *agent) handedOffEnded(s *service, rep *v1.ServiceReport) {
	h := s.handedOff
	if h.Version == "" {
		return
	}
	switch rep.GetPhase() {
	case v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING, v1.Phase_PHASE_SWITCHING,
		v1.Phase_PHASE_STARTING, v1.Phase_PHASE_CHECKING:
		if rep.GetTargetVersion() == h.Version {
			return
		}
	}
	s.handedOff = lifecycle.Ahead{}
	a.rep.clearStaged(s.name, h.SHA256)
}

// checkStage checks a stage as an install's release is checked, without
// raising the service's floor (a staged release is not accepted yet).
func (a *agent) checkStage(s *service, rel *v1.Release, now time.Time) error {
	if err := validateRelease("stage", rel, s.name, a.cfg.MaxArtifactBytes); err != nil {
		return err
	}
	if len(a.trusted) == 0 {
		return nil
	}
	if a.floors == nil {
		a.floors = newFloorStore(a.cfg.DataDir)
	}
	fl, err := a.floors.get(s.name)
	if err != nil {
		return err
	}
	if rel.GetService() == "" {
		rel = proto.Clone(rel).(*v1.Release)
		rel.Service = s.name
	}
	m, err := signing.Verify(rel, a.trusted, now)
	if err != nil {
		return fmt.Errorf("stage: %w: refused", err)
	}
	this := floor{Sequence: m.GetSequence(), Version: rel.GetVersion(), ArtifactSHA256: rel.GetArtifact().GetSha256()}
	if this.Sequence <= fl.Sequence && this != fl {
		return fmt.Errorf("stage: %w: refused", signing.FloorError(rel, this.Sequence, fl.Sequence, fl.Version))
	}
	return nil
}

// aheadBackground runs f after the service's latest staging ahead or drop
// and any prune in flight; the install's fetch waits for it.
func (a *agent) aheadBackground(s *service, f func(ctx context.Context)) {
	prev, prune := s.afterAhead(), s.afterPrune()
	done := make(chan struct{})
	s.aheadDone = done
	ctx := a.ctx
	a.background(func() {
		defer close(done)
		<-prev
		<-prune
		f(ctx)
	})
}

// startAhead stages rel in the background, from asg's sources first.
func (a *agent) startAhead(s *service, asg *v1.Assignment, rel *v1.Release) {
	s.aheadSeq++
	seq, name := s.aheadSeq, s.name
	want := install.Artifact{SHA256: rel.GetArtifact().GetSha256(), Size: rel.GetArtifact().GetSize()}
	s.ahead = lifecycle.Ahead{Version: rel.GetVersion(), SHA256: want.SHA256}
	ctx, cancel := context.WithCancel(a.ctx)
	s.aheadCancel = cancel
	fetchAsg := &v1.Assignment{Service: name, Generation: asg.GetGeneration(), Release: rel, Sources: asg.GetSources()}
	a.log.Info().Str("service", name).Str("version", rel.GetVersion()).Int("sources", len(asg.GetSources())).Msg("staging ahead of the wave")
	a.rep.setStageFailed(name, "")
	a.aheadBackground(s, func(context.Context) {
		defer cancel()
		start := time.Now()
		ev := aheadEv{svc: name, seq: seq}
		if !a.inst.Staged(name, rel.GetVersion(), want.SHA256) {
			ev.fetched = true
			ev.err = a.stageAhead(ctx, fetchAsg, want)
		}
		ev.took = time.Since(start)
		a.send(ev)
	})
}

// stageAhead fetches, verifies and unpacks the release of asg.
func (a *agent) stageAhead(ctx context.Context, asg *v1.Assignment, want install.Artifact) error {
	release, err := a.inst.ReserveFetchSpace(ctx, want) // until it is unpacked
	if err != nil {
		return err
	}
	defer release()
	f, err := a.fetch(ctx, asg)
	if err != nil {
		return err
	}
	v, err := a.inst.Verify(f, want)
	if err != nil {
		return err
	}
	if a.opts.aheadHook != nil {
		a.opts.aheadHook(ctx, asg.GetService(), lifecycle.Version(asg))
	}
	_, err = a.inst.Stage(ctx, asg.GetService(), lifecycle.Version(asg), v)
	return err
}

// aheadEnded handles the end of a staging ahead: staged, it is reported;
// failed, it is reported (stage_failed_sha256, until a staging starts
// again: the coordinator admits another host in its place) and forgotten
// (the install fetches the release when the wave comes).
func (a *agent) aheadEnded(ev aheadEv) {
	s := a.services[ev.svc]
	if s == nil || ev.seq != s.aheadSeq || s.ahead.Version == "" {
		return // dropped, replaced or taken over meanwhile
	}
	log := a.log.With().Str("service", s.name).Str("version", s.ahead.Version).Dur("took", ev.took).Logger()
	if ev.err != nil {
		if !errors.Is(ev.err, context.Canceled) {
			// Reported (stage_failed_sha256): the coordinator gives the
			// admission slot to another waiting host.
			log.Warn().Err(ev.err).Msg("staging ahead failed: the install fetches it when the wave comes")
			a.rep.setStageFailed(s.name, s.ahead.SHA256)
		}
		s.ahead, s.aheadCancel = lifecycle.Ahead{}, nil
		return
	}
	s.ahead.Ready = true
	s.aheadCancel = nil
	log.Info().Bool("fetched", ev.fetched).Str("sha256", s.ahead.SHA256).Msg("staged ahead of the wave")
	if a.metrics != nil {
		a.metrics.stagedAhead.Inc()
	}
	a.rep.setStaged(s.name, s.ahead.SHA256)
}
