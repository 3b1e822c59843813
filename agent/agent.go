package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/gossip"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// Run runs the agent until ctx ends; then it closes the stream and returns
// nil, leaving every service running: services outlive the agent, and the
// next agent adopts them (recover.go). StopServices stops them. It returns
// an error only when it cannot start (bad config, data dir unusable,
// corrupt state).
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

	// found is the process an earlier agent left running, until Restore's
	// actions adopt it (ActAdopt) or stop it (ActStop); foundGrace is its
	// stop grace.
	found      *supervise.Found
	foundGrace time.Duration

	checkCancel context.CancelFunc
	fetchCancel context.CancelFunc // cancels the latest fetch or stage (no-op once it ended)

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
	floors  *floorStore   // release floors per service (verify.go; made on first use, run loop only)
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
	a.background(func() { a.rotateLogs(loopCtx) })

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
	// Shutdown: no more events; stop checks; leave the services running;
	// end the stream.
	close(a.stopping)
	a.detachServices()
	cancel()
	a.wg.Wait()
	a.drain()
	log.Info().Msg("agent stopped")
	return nil
}

// drain cleans up after events that were queued but never handled (all
// senders have ended): a process started at the last moment is left
// running, like every other (the next agent adopts it).
func (a *agent) drain() {
	for {
		select {
		case ev := <-a.events:
			if d, ok := ev.(doneEv); ok {
				if d.sup != nil {
					a.detachSupervisor(d.svc, d.sup, d.grace)
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

func (a *agent) pidFile(svc string) string { return filepath.Join(a.cfg.DataDir, "run", svc+".pid") }
func (a *agent) logFile(svc string) string { return filepath.Join(a.cfg.DataDir, "logs", svc+".log") }

func stopGrace(asg *v1.Assignment) time.Duration {
	if d := asg.GetSpec().GetRun().GetStopGrace(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return supervise.DefaultStopGrace
}

// background runs f in a goroutine tracked by the agent.
func (a *agent) background(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

// detachServices stops every check and analysis and leaves every process
// running, with its PID file, for the next agent (the loop has ended).
func (a *agent) detachServices() {
	var wg sync.WaitGroup
	for _, s := range a.services {
		a.stopChecks(s)
		a.stopAnalysis(s)
		if s.found != nil {
			s.found.Release() // neither adopted nor stopped yet: the next agent decides
			s.found = nil
		}
		if s.sup == nil {
			continue
		}
		sup, grace, name := s.sup, s.supGrace, s.name
		a.dropSupervisor(s)
		wg.Go(func() { a.detachSupervisor(name, sup, grace) })
	}
	wg.Wait()
	for _, s := range a.services {
		a.dropArtifacts(s)
	}
}

// detachSupervisor ends a supervisor and leaves its process running.
func (a *agent) detachSupervisor(name string, sup *supervise.Supervisor, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace+5*time.Second)
	defer cancel()
	if err := sup.Detach(ctx); err != nil {
		a.log.Error().Str("service", name).Err(err).Msg("leaving service running")
	}
}
