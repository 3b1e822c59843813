package agent

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// Run runs the agent until ctx ends; then it closes the stream and returns
// nil, leaving every service running: services outlive the agent, and the
// next agent adopts them (recover.go). StopServices stops them. It returns
// an error when it cannot start (bad config, data dir unusable, corrupt
// state), and an *Upgrade when it stopped the same way to hand over to a
// new agent binary (upgrade.go; pass it to Handoff).
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	return run(ctx, cfg, log, defaultOptions())
}

// service is the run loop's record of one service. Only the loop touches it.
type service struct {
	name string
	m    *lifecycle.Machine

	// procs are the supervised processes by epoch: one, or two during a
	// handover (handover.go).
	procs map[uint64]*process
	// found are the processes an earlier agent left running, each until an
	// action adopts it (ActAdopt) or stops it (ActStop with its epoch).
	found []*foundProc
	// socks are the listening sockets the agent holds for the service;
	// notify the notify socket of each process by epoch; saved the snapshot
	// last persisted (the runtime record is saved with it).
	socks  *socketSet
	notify map[uint64]string
	saved  *lifecycle.Snapshot

	checkCancel context.CancelFunc
	fetchCancel context.CancelFunc // cancels the latest fetch or stage (no-op once it ended)

	// ahead is the release staged (or staging) ahead of the host's wave
	// (ahead.go): aheadCancel cancels its staging in flight, aheadSeq
	// numbers the stagings, aheadDone is closed when the latest staging or
	// drop ended (nil: none); the install's fetch waits for it.
	ahead       lifecycle.Ahead
	aheadCancel context.CancelFunc
	aheadSeq    uint64
	aheadDone   chan struct{}
	// handedOff is the staged release the install took over (ahead.go):
	// its staged_sha256 stays in the reports until that install ends.
	handedOff lifecycle.Ahead

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
	// removed names the services whose REMOVED state was persisted, oldest
	// first (remove.go: forgetRemoved); owned by the run loop.
	removed []string
	// logsPruned is when the run loop last looked for logs of services the
	// host no longer runs (logs.go: pruneRemovedLogs).
	logsPruned time.Time
	events     chan any
	stopping   chan struct{} // closed when the loop stops taking events
	wg         sync.WaitGroup
	ctx        context.Context // canceled at shutdown

	metrics *agentMetrics      // Prometheus instruments (metrics.go)
	trusted trustedKeys        // release signing keys by id; nil: releases are not checked (verify.go)
	cgroups *supervise.Cgroups // every service process in its own cgroup, when usable
	floors  *floorStore        // release floors per service (verify.go; made on first use, run loop only)

	peerAddr string       // advertised in the Hello ("" = no peer listener; peer.go)
	dropped  droppedPeers // peers that served bad bytes

	revs *revocations // revocations held and checked (revoke.go); nil with insecure

	up          agentUpgrade // the agent's own upgrade (upgrade.go; run loop only)
	confirmOnce sync.Once    // Config.Confirm is called once
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
		link     string   // ActSwitch: where `current` points afterwards
		linkOK   bool     // link could be read
		proc     *process // started process (ActStart)
		start    bool     // an ActStart's
		stopped  bool     // an ActStop's: a process is gone
		hook     bool     // an ActHook's
		output   string   // ActHook: the end of the hook's output
	}
	// readyEv: the process started with epoch sent READY=1.
	readyEv struct {
		svc   string
		epoch uint64
	}
	// runtimeEv: the service's runtime record changed outside the loop (a
	// restart bound a socket anew): save it.
	runtimeEv struct {
		svc string
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
		agent       *v1.Assignment // the agent binary's (nil: none)
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
	if err := closeToOthers(filepath.Join(dataDir, "logs")); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	// Only the agent's user may reach the services' notify sockets.
	if err := makePrivateDir(filepath.Join(dataDir, "notify")); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	inst, err := install.New(dataDir, install.Limits{MaxArtifactBytes: cfg.MaxArtifactBytes}, log, crashTemps()...)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	store, err := state.Open(filepath.Join(dataDir, "state"))
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	saved, err := store.LoadAllWith()
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
	revs, err := openRevocations(cfg, time.Now(), log)
	if err != nil {
		return err
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &agent{
		revs: revs,
		cfg:  cfg, opts: opts, log: log, inst: inst, store: store,
		rep:        newReporter(opts.maxServices),
		conns:      newConnHolder(),
		rnd:        rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		httpClient: newAnalysisClient(),
		services:   map[string]*service{},
		events:     make(chan any, 64),
		stopping:   make(chan struct{}),
		ctx:        loopCtx,
		trusted:    trusted,
		cgroups:    openCgroups(cfg.CgroupParent, log),
	}
	stopMetrics, err := a.startMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	revs.register(a.metrics.reg)
	peerAddr, servePeer, stopPeer, err := a.startPeer()
	if err != nil {
		return err
	}
	defer stopPeer()
	a.peerAddr = peerAddr
	log.Info().Str("path", dataDir).Int("services", len(saved)).Str("agent_version", cfg.AgentVersion).Msg("agent starting")
	if err := a.startAgent(); err != nil {
		return err
	}
	if ho := a.cfg.HandedOver; ho != nil {
		a.background(func() {
			select {
			case <-ho:
				a.send(handedOverEv{})
			case <-loopCtx.Done():
			}
		})
	}
	a.recover(saved)
	a.background(func() { a.rotateLogs(loopCtx) })
	a.background(func() { a.saveRevocationsLoop(loopCtx) })

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
		if err := servePeer(); err != nil {
			// The agent works without it; its Hello still names the
			// address, where fetchers fail and take their next source.
			log.Error().Err(err).Msg("peer listener not started")
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
	a.flushRevocations() // nothing merges them any more
	a.drain()
	if a.up.stop {
		log.Info().Str("version", a.up.rec.Version).Msg("agent stopped for its upgrade")
		return &Upgrade{Binary: a.up.binary, Record: *a.up.rec}
	}
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
				if d.proc != nil {
					a.detachProcess(d.svc, d.proc)
				}
				a.inst.Discard(d.fetched)
				a.inst.DiscardVerified(d.verified)
			}
		default:
			return
		}
	}
}

// crashTemps are the globs of the temp files the agent's own writers leave
// in dataDir when killed in the middle of a write, each from its writer's
// pattern. install.New removes them with its own leftovers (tmp/,
// .stage-*, .current-*, digest marker temps; state.Open removes state/'s),
// which run calls once it holds the data dir (agent.lock) and before
// anything of its own writes. No other process writes these files then:
// an agent that handed over to this one (README, "Upgrading the agent") has
// stopped, released the lock and saved its state, and writes nothing here
// but agent/upgrade.json, after this agent confirmed (or has exited).
// The globs are relative to the data dir, so that its own path is never
// read as a pattern (a data dir named /x/agent[1] would match /x/agent1's
// files: a review).
func crashTemps() []string {
	return []string{
		supervise.PIDFileTemp(filepath.Join("run", "*.pid")),
		supervise.RotateTemp(filepath.Join("logs", "*.log")),
		sockets.NotifyTemp("notify", "*"),
		sockets.NotifyTemp("notify-users", "*"),
		tlsutil.AtomicTemp(revocationsFile),
		tlsutil.AtomicTemp(filepath.Join("tls", "*")),
		atomicTemp(upgradeRecordPath(".")),
		floorTemp(filepath.Join(floorsDir("."), "*.json")),
	}
}

// closeToOthers takes the permissions of others off directory dir (the
// services' logs: their output is no other user's to read, as journald's
// is not), keeping its owner's and group's: a group given to the log
// readers (chgrp, setgid) stays theirs. One an older agent made 0755 is
// changed.
func closeToOthers(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o007 == 0 {
		return nil
	}
	if err := os.Chmod(dir, fi.Mode()&(fs.ModePerm|fs.ModeSetgid|fs.ModeSticky)&^0o007); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	return nil
}

// lockDataDir takes an exclusive lock so two agents never share a data dir.
// The file is 0600 (one an older agent made 0644 is changed): flock(2)
// needs no write access, so a file others may open is a lock any local
// user can hold, keeping the agent from starting.
func lockDataDir(dir string) (func(), error) {
	path := filepath.Join(dir, "agent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data_dir: lock %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
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

// nextPIDFile records a process started beside the one that serves (a
// handover) until it takes over (then its record moves to pidFile).
func (a *agent) nextPIDFile(svc string) string {
	return filepath.Join(a.cfg.DataDir, "run", svc+nextPIDSuffix)
}

// nextPIDSuffix ends the name of a handover's PID file (service names have
// no dots).
const nextPIDSuffix = ".next.pid"

func (a *agent) logFile(svc string) string { return serviceLogPath(a.cfg.DataDir, svc) }

// serviceLogPath is the log of service svc in the data dir dataDir.
func serviceLogPath(dataDir, svc string) string { return filepath.Join(dataDir, "logs", svc+".log") }

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
// running, with its PID file, for the next agent (the loop has ended). The
// agent's copies of the sockets are closed: the processes hold theirs, and
// the next agent recovers them from those.
func (a *agent) detachServices() {
	var wg sync.WaitGroup
	for _, s := range a.services {
		a.stopChecks(s)
		a.stopAnalysis(s)
		for _, f := range s.found {
			f.f.Release() // neither adopted nor stopped yet: the next agent decides
		}
		s.found = nil
		for epoch := range s.procs {
			p := s.takeProcess(epoch)
			wg.Go(func() { a.detachProcess(s.name, p) })
		}
	}
	wg.Wait()
	for _, s := range a.services {
		a.dropArtifacts(s)
		s.sockSet().closeAll()
	}
}

// detachProcess ends a process's supervisor and leaves the process running.
func (a *agent) detachProcess(name string, p *process) {
	ctx, cancel := context.WithTimeout(context.Background(), p.grace+5*time.Second)
	defer cancel()
	if err := p.sup.Detach(ctx); err != nil {
		a.log.Error().Str("service", name).Err(err).Msg("leaving service running")
	}
	if p.notify != nil {
		_ = p.notify.Close()
	}
}
