package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// Run runs the agent until ctx ends; then it stops the services it runs,
// closes the stream and returns nil. It returns an error only when it cannot
// start (bad config, data dir unusable, corrupt state).
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	return run(ctx, cfg, log, defaultOptions())
}

// service is the run loop's record of one service. Only the loop touches it.
type service struct {
	name string
	m    *lifecycle.Machine

	sup       *supervise.Supervisor // running process, nil if none
	supGrace  time.Duration
	exitsStop chan struct{} // closes the exits forwarder of sup

	checkCancel context.CancelFunc
	fetchCancel context.CancelFunc // cancels the latest fetch (no-op once it ended)

	fetched  *install.Fetched
	verified *install.Verified
	staged   bool // the target was already staged: fetch/verify/stage are no-ops

	// pruneDone is closed when the latest background prune of this service
	// has ended (nil: none started). File steps wait for it.
	pruneDone chan struct{}

	// queue holds actions not carried out yet; blocked says a save of the
	// state (ActPersist at its head) failed: nothing after it runs until a
	// retry on a tick succeeds.
	queue   []lifecycle.Action
	blocked bool

	ana *analyser // nil: the release has no analysis rules
}

// closedCh is a closed channel: "no prune to wait for".
var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// afterPrune returns a channel closed once no prune of the service runs.
func (s *service) afterPrune() <-chan struct{} {
	if s.pruneDone == nil {
		return closedCh
	}
	return s.pruneDone
}

type agent struct {
	cfg   Config
	opts  options
	log   zerolog.Logger
	inst  *install.Installer
	store *state.Store
	rep   *reporter
	conns *connHolder
	rnd   *rand.Rand // owned by the connection loop

	httpClient *http.Client // scrapes and PromQL queries
	anaSeq     uint64       // ids of analysers (run loop)

	services map[string]*service // owned by the run loop
	events   chan any
	stopping chan struct{} // closed when the loop stops taking events
	wg       sync.WaitGroup
	ctx      context.Context // canceled at shutdown

	metrics *agentMetrics // Prometheus instruments (metrics.go)
	trusted trustedKeys   // release signing keys by id; nil: releases are not checked (verify.go)
}

// Events sent to the run loop.
type (
	doneEv struct {
		svc      string
		seq      uint64
		err      error
		fetched  *install.Fetched
		verified *install.Verified
		staged   bool
		link     string                // ActSwitch: where `current` points afterwards
		linkOK   bool                  // link could be read
		sup      *supervise.Supervisor // started process (ActStart)
		grace    time.Duration
		epoch    uint64
	}
	checksEv struct {
		svc     string
		epoch   uint64
		at      time.Time
		results []lifecycle.CheckResult
	}
	exitEv struct {
		svc   string
		epoch uint64
		exit  supervise.Exit
	}
	assignEv struct {
		assignments []*v1.Assignment
	}
)

func run(ctx context.Context, cfg Config, log zerolog.Logger, opts options) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	cfg = cfg.withDefaults()
	trusted, err := loadTrustedKeys(cfg.TrustedKeys)
	if err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir %q: %w", cfg.DataDir, err)
	}
	cfg.DataDir = dataDir
	log = log.With().Str("host", cfg.HostID).Logger()
	for _, d := range []string{dataDir, filepath.Join(dataDir, "logs"), filepath.Join(dataDir, "run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("data_dir: %w", err)
		}
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	inst, err := install.New(dataDir, install.Limits{MaxArtifactBytes: cfg.MaxArtifactBytes}, log)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	store, err := state.Open(filepath.Join(dataDir, "state"))
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	saved, err := store.LoadAll()
	if err != nil {
		return err
	}
	if cfg.Gossip.Enabled() {
		// Liveness hints for the coordinators; nothing here depends on it.
		gc := cfg.Gossip
		gc.Name, gc.Role = cfg.HostID, gossip.RoleAgent
		g, err := gossip.Start(gc, log.With().Str("component", "gossip").Logger())
		if err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
		defer g.Close()
	}
	seed := opts.seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &agent{
		cfg: cfg, opts: opts, log: log, inst: inst, store: store,
		rep:        newReporter(),
		conns:      newConnHolder(),
		rnd:        rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		httpClient: newAnalysisClient(),
		services:   map[string]*service{},
		events:     make(chan any, 64),
		stopping:   make(chan struct{}),
		ctx:        loopCtx,
		trusted:    trusted,
	}
	stopMetrics, err := a.startMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	log.Info().Str("path", dataDir).Int("services", len(saved)).Msg("agent starting")
	a.recover(saved)

	if a.cfg.Insecure {
		log.Warn().Msg("INSECURE: plain-text connection to the coordinators; use --tls-ca with --tls-cert/--tls-key or --join-token-file in production")
	}
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		// Services keep running while the agent joins; nothing new starts
		// without a coordinator anyway.
		if err := a.ensureCert(loopCtx); err != nil {
			return
		}
		a.connLoop(loopCtx)
	}()
	go func() {
		defer a.wg.Done()
		a.renewLoop(loopCtx)
	}()
	a.loop(ctx)
	// Shutdown: no more events; stop checks and services; end the stream.
	close(a.stopping)
	a.shutdownServices()
	cancel()
	a.wg.Wait()
	a.drain()
	log.Info().Msg("agent stopped")
	return nil
}

// drain cleans up after events that were queued but never handled (all
// senders have ended): a process started at the last moment is stopped.
func (a *agent) drain() {
	for {
		select {
		case ev := <-a.events:
			if d, ok := ev.(doneEv); ok {
				if d.sup != nil {
					if err := a.stopSupervisor(d.sup, d.grace); err != nil {
						a.log.Error().Str("service", d.svc).Err(err).Msg("stopping service")
					}
				}
				a.inst.Discard(d.fetched)
				a.inst.DiscardVerified(d.verified)
			}
		default:
			return
		}
	}
}

// lockDataDir takes an exclusive lock so two agents never share a data dir.
func lockDataDir(dir string) (func(), error) {
	path := filepath.Join(dir, "agent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data_dir: lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data_dir: %s is in use by another agent: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// recover rebuilds every persisted service after a restart: it kills what an
// earlier agent left running and lets lifecycle.Restore put the last
// verified release back and re-check it.
func (a *agent) recover(saved []*state.Service) {
	a.killStale(saved)
	now := time.Now()
	for _, st := range saved {
		log := a.log.With().Str("service", st.Service).Logger()
		snap := lifecycle.Snapshot{
			Service:    st.Service,
			Phase:      st.Phase,
			Generation: st.Generation,
			Reason:     st.Reason,
			Current:    st.Assignment(st.Current),
			LastGood:   st.Assignment(st.LastGood),
			Target:     st.Assignment(st.Target),
			WatchUntil: st.WatchUntil,
			Previous:   st.Assignment(st.Previous),
		}
		m, acts := lifecycle.Restore(snap, now)
		s := &service{name: st.Service, m: m}
		a.services[st.Service] = s
		log.Info().Str("phase", st.Phase.String()).Str("version", st.LastGood).Int64("generation", st.Generation).
			Msg("recovering service")
		a.syncAnalysis(s)
		a.exec(s, acts)
	}
}

// killStale kills what an earlier agent left running, for all services at
// once (each may wait out its stop grace).
func (a *agent) killStale(saved []*state.Service) {
	var wg sync.WaitGroup
	for _, st := range saved {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := a.log.With().Str("service", st.Service).Logger()
			grace := stopGrace(st.Assignment(st.Current))
			if err := a.opts.killStale(a.pidFile(st.Service), grace, log); err != nil {
				log.Error().Err(err).Str("path", a.pidFile(st.Service)).Msg("killing leftover process")
			}
		}()
	}
	wg.Wait()
}

func (a *agent) pidFile(svc string) string { return filepath.Join(a.cfg.DataDir, "run", svc+".pid") }
func (a *agent) logFile(svc string) string { return filepath.Join(a.cfg.DataDir, "logs", svc+".log") }

func stopGrace(asg *v1.Assignment) time.Duration {
	if d := asg.GetSpec().GetRun().GetStopGrace(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return supervise.DefaultStopGrace
}

// loop is the one goroutine that owns the machines.
func (a *agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.opts.tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for _, name := range a.names() {
				s := a.services[name]
				if s.blocked {
					a.runQueue(s) // retry the failed save
				}
				a.step(s, lifecycle.Tick(now))
			}
		case ev := <-a.events:
			a.handle(ev)
		}
	}
}

func (a *agent) names() []string {
	names := make([]string, 0, len(a.services))
	for n := range a.services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// send delivers an event to the loop unless it is shutting down.
func (a *agent) send(ev any) bool {
	select {
	case <-a.stopping:
		return false
	default:
	}
	select {
	case a.events <- ev:
		return true
	case <-a.stopping:
		return false
	}
}

func (a *agent) handle(ev any) {
	switch ev := ev.(type) {
	case doneEv:
		s := a.services[ev.svc]
		if s == nil {
			a.inst.Discard(ev.fetched)
			a.inst.DiscardVerified(ev.verified)
			return
		}
		if _, seq := s.m.InFlight(); seq != ev.seq {
			// Not the step in flight: the machine ignores it, nobody wants its files.
			a.inst.Discard(ev.fetched)
			a.inst.DiscardVerified(ev.verified)
			ev.fetched, ev.verified, ev.staged = nil, nil, false
		}
		if ev.fetched != nil {
			a.inst.Discard(s.fetched)
			s.fetched = ev.fetched
		}
		if ev.verified != nil {
			// The verified file is the fetched one, renamed in name only.
			a.inst.DiscardVerified(s.verified)
			s.verified = ev.verified
			s.fetched = nil
		}
		if ev.staged {
			s.staged = true
		}
		if ev.sup != nil {
			a.adoptSupervisor(s, ev.sup, ev.grace, ev.epoch)
		}
		in := lifecycle.Done(ev.seq, ev.err, time.Now())
		if ev.linkOK {
			in = lifecycle.SwitchDone(ev.seq, ev.err, ev.link, in.At)
		}
		a.step(s, in)
	case checksEv:
		if s := a.services[ev.svc]; s != nil {
			a.step(s, lifecycle.Checks(ev.epoch, ev.at, ev.results...))
		}
	case exitEv:
		if s := a.services[ev.svc]; s != nil {
			a.log.Warn().Str("service", s.name).Err(ev.exit.Err).Int("restarts", ev.exit.Restarts).Msg("service exited")
			a.analysisExit(s, ev.epoch, ev.exit.At)
			a.step(s, lifecycle.Exited(ev.epoch, ev.exit.At))
		}
	case sampleEv:
		a.onSample(ev)
	case assignEv:
		a.assign(ev.assignments)
	}
}

// assign feeds the full set of assignments from the coordinator.
func (a *agent) assign(list []*v1.Assignment) {
	now := time.Now()
	newest := map[string]*v1.Assignment{}
	for _, asg := range list {
		name := asg.GetService()
		if err := spec.CheckName("service", name); err != nil {
			a.log.Warn().Err(err).Int64("generation", asg.GetGeneration()).Msg("ignoring assignment with an invalid service name")
			continue
		}
		if cur, ok := newest[name]; !ok || asg.GetGeneration() > cur.GetGeneration() {
			newest[name] = asg
		}
	}
	names := make([]string, 0, len(newest))
	for n := range newest {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		asg := newest[name]
		s := a.services[name]
		if s == nil {
			s = &service{name: name, m: lifecycle.New(name)}
			a.services[name] = s
		}
		dir := a.inst.ReleaseDir(name, asg.GetRelease().GetVersion())
		if err := validateAssignment(asg, a.cfg.HostID, a.cfg.Labels, a.cfg.MaxArtifactBytes, dir); err != nil {
			a.log.Warn().Str("service", name).Int64("generation", asg.GetGeneration()).Err(err).Msg("invalid assignment")
			a.step(s, lifecycle.Invalid(asg.GetGeneration(), err.Error(), now))
			continue
		}
		if a.refuse(s, asg, now) {
			continue // replayed, or its release does not verify (verify.go)
		}
		a.step(s, lifecycle.Assign(asg, now))
	}
}

// step feeds one input to a service's machine and carries out its actions.
func (a *agent) step(s *service, in lifecycle.Input) {
	before := s.m.Phase()
	acts := s.m.Step(in)
	a.syncAnalysis(s) // before the actions: a start or stop must find the right analyser
	if p := s.m.Phase(); p != before {
		a.log.Info().Str("service", s.name).Str("phase", p.String()).
			Str("version", lifecycle.Version(s.m.Current())).Int64("generation", s.m.Generation()).
			Str("reason", s.m.Report().GetReason()).Msg("phase")
		a.metrics.transition(s.name, before, p, in.Kind, s.m.Report().GetReason())
	}
	a.exec(s, acts)
	a.updateJudging(s)
	if s.fetchCancel != nil && s.m.FetchSuperseded() {
		a.log.Info().Str("service", s.name).Int64("generation", s.m.Generation()).
			Str("reason", "superseded").Msg("cancelling the fetch of a release no longer wanted")
		s.fetchCancel()
		s.fetchCancel = nil
	}
	if !s.m.Busy() {
		a.dropArtifacts(s) // settled: no install needs them
	}
}

// exec queues actions and carries them out in order (see runQueue).
func (a *agent) exec(s *service, acts []lifecycle.Action) {
	for _, act := range acts {
		if s.blocked && act.Kind == lifecycle.ActReport && len(s.queue) > 0 &&
			s.queue[len(s.queue)-1].Kind == lifecycle.ActReport {
			// Reports are level-triggered: while blocked only the latest counts.
			s.queue[len(s.queue)-1] = act
			continue
		}
		s.queue = append(s.queue, act)
	}
	if !s.blocked {
		a.runQueue(s)
	}
}

// runQueue carries out the queued actions in order. Long steps run in
// goroutines that report back with a doneEv. An ActPersist must be durable
// before anything after it runs (lifecycle/doc.go): if the save fails, the
// queue stops there and the save is retried on the next tick.
func (a *agent) runQueue(s *service) {
	for len(s.queue) > 0 {
		act := s.queue[0]
		if act.Kind == lifecycle.ActPersist {
			if err := a.persist(s, act.Snapshot); err != nil {
				if !s.blocked {
					a.log.Error().Str("service", s.name).Err(err).Str("path", a.store.Path(s.name)).
						Int("queued", len(s.queue)).Msg("persisting state failed: holding later actions, retrying every tick")
				} else {
					a.log.Debug().Str("service", s.name).Err(err).Msg("persisting state failed again")
				}
				s.blocked = true
				return
			}
			if s.blocked {
				a.log.Info().Str("service", s.name).Int("queued", len(s.queue)-1).Msg("state saved after earlier failures: carrying on")
				s.blocked = false
			}
		}
		s.queue[0] = lifecycle.Action{}
		s.queue = s.queue[1:]
		a.do(s, act)
	}
	s.queue = nil
	a.rep.setLatest(s.m.Report())
}

// do carries out one action (ActPersist is done by runQueue).
func (a *agent) do(s *service, act lifecycle.Action) {
	switch act.Kind {
	case lifecycle.ActReport:
		a.rep.put(act.Report)
	case lifecycle.ActFetch:
		a.startFetch(s, act)
	case lifecycle.ActVerify:
		a.startVerify(s, act)
	case lifecycle.ActStage:
		a.startStage(s, act)
	case lifecycle.ActSwitch:
		a.startSwitch(s, act)
	case lifecycle.ActStart:
		a.analysisStart(s, act)
		a.startProcess(s, act)
	case lifecycle.ActStop:
		if s.m.Phase() == v1.Phase_PHASE_STARTING {
			// The old release stops for an install: this is the switch.
			a.freezeBaseline(s)
		}
		a.stopProcess(s, act)
	case lifecycle.ActBeginChecks:
		a.beginChecks(s, act)
	case lifecycle.ActStopChecks:
		a.stopChecks(s)
	}
}

// persist saves a snapshot durably; once a settled phase is saved, it
// prunes releases nobody needs any more, in the background.
func (a *agent) persist(s *service, snap *lifecycle.Snapshot) error {
	st := &state.Service{
		Service:    snap.Service,
		Phase:      snap.Phase,
		Generation: snap.Generation,
		Reason:     snap.Reason,
		Current:    lifecycle.Version(snap.Current),
		LastGood:   lifecycle.Version(snap.LastGood),
		Target:     lifecycle.Version(snap.Target),
		WatchUntil: snap.WatchUntil,
		Previous:   lifecycle.Version(snap.Previous),
		Releases:   map[string]*v1.Assignment{},
	}
	for _, asg := range []*v1.Assignment{snap.Current, snap.LastGood, snap.Target, snap.Previous} {
		if asg != nil {
			st.Releases[lifecycle.Version(asg)] = asg
		}
	}
	if a.opts.saveHook != nil {
		if err := a.opts.saveHook(st); err != nil {
			return fmt.Errorf("save state of %s: %w", s.name, err)
		}
	}
	if err := a.store.Save(st); err != nil {
		return err
	}
	switch snap.Phase {
	case v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_FAILED:
		// A watched release's predecessor stays: a revert may need it.
		a.startPrune(s, st.Current, st.LastGood, st.Target, st.Previous)
	}
	return nil
}

// startPrune removes the service's releases except keep (and the one
// `current` points at) in the background. Prunes of one service run one
// after another, and its fetch, verify, stage and switch steps wait for the
// latest one, so a prune never overlaps them.
func (a *agent) startPrune(s *service, keep ...string) {
	prev := s.afterPrune()
	done := make(chan struct{})
	s.pruneDone = done
	name := s.name
	a.background(func() {
		defer close(done)
		<-prev
		if a.opts.pruneHook != nil {
			a.opts.pruneHook(name)
		}
		if err := a.inst.Prune(name, keep...); err != nil {
			a.log.Warn().Str("service", name).Err(err).Msg("pruning old releases")
		}
	})
}

// dropArtifacts removes the service's fetched or verified file, if any.
func (a *agent) dropArtifacts(s *service) {
	a.inst.Discard(s.fetched)
	a.inst.DiscardVerified(s.verified)
	s.fetched, s.verified = nil, nil
}

// background runs f in a goroutine tracked by the agent.
func (a *agent) background(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

func artifactOf(asg *v1.Assignment) install.Artifact {
	art := asg.GetRelease().GetArtifact()
	return install.Artifact{SHA256: art.GetSha256(), Size: art.GetSize()}
}

func (a *agent) startFetch(s *service, act lifecycle.Action) {
	a.dropArtifacts(s)
	s.staged = false
	if s.fetchCancel != nil {
		s.fetchCancel()
	}
	ctx, cancel := context.WithCancel(a.ctx)
	s.fetchCancel = cancel
	name, asg, wait := s.name, act.Assignment, s.afterPrune()
	a.background(func() {
		defer cancel()
		<-wait
		ev := doneEv{svc: name, seq: act.Seq}
		if a.inst.Staged(name, act.Version, artifactOf(asg).SHA256) {
			ev.staged = true // unpacked earlier from the same digest
		} else {
			ev.fetched, ev.err = a.fetch(ctx, asg)
		}
		if !a.send(ev) {
			a.inst.Discard(ev.fetched)
		}
	})
}

func (a *agent) startVerify(s *service, act lifecycle.Action) {
	name, f, staged, wait := s.name, s.fetched, s.staged, s.afterPrune()
	a.background(func() {
		<-wait
		ev := doneEv{svc: name, seq: act.Seq}
		if !staged {
			ev.verified, ev.err = a.inst.Verify(f, artifactOf(act.Assignment))
		}
		a.send(ev)
	})
}

func (a *agent) startStage(s *service, act lifecycle.Action) {
	name, v, staged, wait := s.name, s.verified, s.staged, s.afterPrune()
	s.verified = nil
	a.background(func() {
		<-wait
		ev := doneEv{svc: name, seq: act.Seq}
		if !staged {
			_, ev.err = a.inst.Stage(name, act.Version, v)
		}
		a.send(ev)
	})
}

func (a *agent) startSwitch(s *service, act lifecycle.Action) {
	name, wait := s.name, s.afterPrune()
	a.background(func() {
		<-wait
		ev := doneEv{svc: name, seq: act.Seq, err: a.inst.Switch(name, act.Version)}
		// Say where the link points now: a failed switch must not be
		// mistaken for one that happened (or the other way round).
		if cur, err := a.inst.Current(name); err == nil {
			ev.link, ev.linkOK = cur, true
		} else {
			a.log.Warn().Str("service", name).Err(err).Msg("reading the current link after a switch")
		}
		a.send(ev)
	})
}

func (a *agent) startProcess(s *service, act lifecycle.Action) {
	name := s.name
	old, oldGrace := s.sup, s.supGrace
	a.dropSupervisor(s)
	cfg, err := a.supervisorConfig(name, act.Assignment)
	a.background(func() {
		if old != nil {
			a.stopSupervisor(old, oldGrace)
		}
		ev := doneEv{svc: name, seq: act.Seq, err: err, epoch: act.Epoch}
		if err == nil {
			sup := supervise.New(cfg, a.log)
			if ev.err = sup.Start(); ev.err == nil {
				ev.sup, ev.grace = sup, cfg.StopGrace
			}
		}
		if !a.send(ev) && ev.sup != nil {
			a.stopSupervisor(ev.sup, ev.grace) // shutting down: do not leave it running
		}
	})
}

func (a *agent) supervisorConfig(name string, asg *v1.Assignment) (supervise.Config, error) {
	cmd, env, err := expandRun(asg.GetSpec().GetRun(), a.cfg.HostID, a.cfg.Labels)
	if err != nil {
		return supervise.Config{}, err
	}
	return supervise.Config{
		Service:    name,
		Dir:        a.inst.ReleaseDir(name, lifecycle.Version(asg)),
		Command:    cmd,
		Env:        env,
		LogPath:    a.logFile(name),
		StopGrace:  stopGrace(asg),
		PIDFile:    a.pidFile(name),
		MinBackoff: a.opts.supMinBackoff,
		MaxBackoff: a.opts.supMaxBackoff,
	}, nil
}

// adoptSupervisor records a started process and forwards its exits.
func (a *agent) adoptSupervisor(s *service, sup *supervise.Supervisor, grace time.Duration, epoch uint64) {
	a.dropSupervisor(s)
	s.sup, s.supGrace = sup, grace
	stop := make(chan struct{})
	s.exitsStop = stop
	name := s.name
	a.background(func() {
		for {
			select {
			case e := <-sup.Exits():
				if !a.send(exitEv{svc: name, epoch: epoch, exit: e}) {
					return
				}
			case <-stop:
				return
			case <-a.stopping:
				return
			}
		}
	})
}

// dropSupervisor forgets the service's supervisor (the caller stops it).
func (a *agent) dropSupervisor(s *service) {
	if s.exitsStop != nil {
		close(s.exitsStop)
		s.exitsStop = nil
	}
	s.sup = nil
}

func (a *agent) stopSupervisor(sup *supervise.Supervisor, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace+5*time.Second)
	defer cancel()
	return sup.Stop(ctx)
}

func (a *agent) stopProcess(s *service, act lifecycle.Action) {
	name, sup, grace := s.name, s.sup, s.supGrace
	a.dropSupervisor(s)
	a.background(func() {
		var err error
		if sup != nil {
			err = a.stopSupervisor(sup, grace)
		}
		a.send(doneEv{svc: name, seq: act.Seq, err: err})
	})
}

// shutdownServices stops every check and process (the loop has ended).
func (a *agent) shutdownServices() {
	var wg sync.WaitGroup
	for _, s := range a.services {
		a.stopChecks(s)
		a.stopAnalysis(s)
		if s.sup == nil {
			continue
		}
		sup, grace, name := s.sup, s.supGrace, s.name
		a.dropSupervisor(s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.stopSupervisor(sup, grace); err != nil {
				a.log.Error().Str("service", name).Err(err).Msg("stopping service")
			}
		}()
	}
	wg.Wait()
	for _, s := range a.services {
		a.dropArtifacts(s)
	}
}
