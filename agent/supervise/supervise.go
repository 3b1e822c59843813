// Package supervise is the agent's built-in process supervisor: it runs one
// service process in its own process group, appends its output to a log
// file (the process writes to the file itself, opened O_APPEND: no pipe
// through the agent), restarts it with exponential backoff when it exits
// unexpectedly, stops it with SIGTERM then SIGKILL to the whole group, and
// records the group id (with the boot id and the leader's start time, so
// pid reuse and reboots are detected, and the release and epoch it runs) in
// a PID file. A new process is held in a /bin/sh gate until its PID file
// names it (and it is in its cgroup): none of the service's code runs
// unrecorded, whenever the agent dies.
//
// A service outlives the agent: Detach ends supervision and leaves the
// process running; a restarted agent finds it by its PID file (FindRunning)
// and supervises it again (Adopt) although it is not its child: exits are
// seen through a pidfd (pidfd_open(2)); Found.Stop stops a found process
// without supervising it (fleetwave-agent stop-services). RotateLog bounds
// the log files.
//
// Where cgroups are usable (Cgroups, OpenCgroups: root, cgroup v1 or v2,
// through containerd/cgroups) every instance also runs in its own cgroup
// below the agent's, with the service's Limits (memory, cpu weight,
// tasks), entered before any of the service's code runs (the gate);
// a stop or a crash ends every process in it, those that left the process
// group too, and removes it; a kill at the memory limit is reported as an
// OOMError; FindRunning finds an adopted process's cgroup again.
//
// It is Linux only (process groups, /proc). It must not import etcd, the
// coordinator or any other agent package; it knows nothing about checks or
// the lifecycle, and of a release only the name it records.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/procenv"

	"github.com/rs/zerolog"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultStopGrace  = 10 * time.Second
	DefaultMinBackoff = 200 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
	// backoffResetAfter is how long a process must have run for the restart
	// backoff to start again from MinBackoff.
	backoffResetAfter = 10 * time.Second
	// exitsBuffer is the capacity of the Exits channel.
	exitsBuffer = 32
)

// Errors returned by Start and Adopt.
var (
	ErrNoCommand      = errors.New("empty command")
	ErrAlreadyStarted = errors.New("supervisor already started")
	ErrStopped        = errors.New("supervisor stopped")
)

// Config says how to run one service process.
type Config struct {
	Service   string        // for logs
	Dir       string        // working directory (the release dir, a real path)
	Command   []string      // already expanded; Command[0] starting with "./" is relative to Dir
	Env       []string      // KEY=VALUE, appended to procenv.Env (PATH, HOME=Dir): nothing of the agent's own
	LogPath   string        // stdout+stderr appended here (file created 0644)
	StopGrace time.Duration // SIGTERM to the process group, SIGKILL after this (default 10s)
	// PIDFile, if set, receives the running process group id with the boot
	// id, the leader's start time, Release and Epoch (temp+rename; see
	// WritePIDRecord); on Stop it is removed if it still names this
	// supervisor's group, on Detach it is kept for the next agent.
	PIDFile string
	// Release and Epoch are recorded in the PID file: what the process
	// runs, so that a restarted agent knows what it adopts.
	Release string
	Epoch   uint64
	// MinBackoff, MaxBackoff bound the restart backoff on crash (defaults
	// 200ms, 10s); it doubles per crash and resets after the process has run
	// 10s.
	MinBackoff, MaxBackoff time.Duration
	// Prepare, if set, is called with every command before it starts (the
	// first start and each restart), after Dir and Env are set: it may
	// change the command (what runs, its environment, ExtraFiles), e.g. to
	// pass listening sockets. It returns started, which is called once the
	// command has started (pid > 0) or failed to (pid 0), or an error, which
	// fails that start. It runs on the supervisor's goroutines.
	Prepare func(cmd *exec.Cmd) (started func(pid int), err error)
	// Credential, if set, runs the process (and every restart) as that
	// user and group (the agent must be root).
	Credential *syscall.Credential
	// Cgroups, if usable, gives every instance of the process its own
	// cgroup below the agent's, with Limits, entered before the process
	// runs any of its own code; a stop, or the exit of the process, ends
	// every process left in it, and it is removed. Unusable or nil: the
	// process group alone, and Limits with MemoryMax or TasksMax set fail
	// every start (ErrCgroupsUnusable); a CPUWeight alone is not applied.
	Cgroups *Cgroups
	Limits  Limits
}

// Exit is one exit of the supervised process.
type Exit struct {
	At time.Time
	// Err says how it ended: nil (exit 0), an *ExitError, ErrExitUnknown
	// (an adopted process, not our child), or the error of a failed restart.
	Err      error
	Restarts int // restarts done before this exit
}

// Supervisor runs one process and restarts it until Stop. Its methods are
// safe for concurrent use.
type Supervisor struct {
	cfg Config
	log zerolog.Logger

	exits    chan Exit
	restarts atomic.Int64

	mu      sync.Mutex
	started bool
	stopped bool
	detach  bool // the run loop ends leaving the process running (set before stopCh closes)

	// pidPath is where the PID file is (Config.PIDFile until MovePIDFile)
	// and pidRec what this supervisor last wrote there (zero: nothing).
	// Both are guarded by pidFileMu.
	pidPath string
	pidRec  PIDRecord

	// limMu guards cfg.Limits (SetLimits changes them), cur (the instance
	// that runs now, nil between an exit and the restart) and the limits
	// of cur's cgroup.
	limMu sync.Mutex
	cur   *proc

	stopOnce sync.Once
	stopCh   chan struct{} // closed by Stop and Detach
	done     chan struct{} // closed when the run loop has ended

	// gateOpened, set by tests before Start, runs in spawn right after an
	// instance's gate opened (its code may run from then on).
	gateOpened func(pid int)
}

// New returns a Supervisor for cfg, with defaults applied. Nothing runs until
// Start.
func New(cfg Config, log zerolog.Logger) *Supervisor {
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	cfg.Command = append([]string(nil), cfg.Command...)
	cfg.Env = append([]string(nil), cfg.Env...)
	return &Supervisor{
		cfg:     cfg,
		pidPath: cfg.PIDFile,
		log:     log.With().Str("service", cfg.Service).Logger(),
		exits:   make(chan Exit, exitsBuffer),
		stopCh:  make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Start starts the process (own process group, Setpgid) and a goroutine that
// restarts it with backoff whenever it exits, until Stop or Detach. Returns
// an error if the first exec fails (e.g. missing binary), in which case
// nothing keeps running.
func (s *Supervisor) Start() error {
	return s.begin(nil)
}

// Adopt supervises a process found running (FindRunning), typically left by
// an earlier agent, as if Start had started it: its exits are seen, it is
// restarted with this supervisor's Config, stopped by Stop. The PID file
// stays as it is until a restart rewrites it. f must not be used
// afterwards. If Adopt fails, f is still the caller's.
func (s *Supervisor) Adopt(f *Found) error {
	if f == nil || f.p == nil {
		return fmt.Errorf("adopt %s: nothing found", s.cfg.Service)
	}
	return s.begin(f)
}

func (s *Supervisor) begin(f *Found) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	if s.started {
		return ErrAlreadyStarted
	}
	if len(s.cfg.Command) == 0 || s.cfg.Command[0] == "" {
		return fmt.Errorf("start %s: %w", s.cfg.Service, ErrNoCommand)
	}
	logf, err := os.OpenFile(s.cfg.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640) // no other user reads a service's output
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", s.cfg.Service, err)
	}
	var p *proc
	if f != nil {
		p, f.p = f.p, nil
		pidFileMu.Lock()
		s.pidRec = f.Record
		pidFileMu.Unlock()
		s.log.Info().Int("pid", p.pgid).Str("version", f.Record.Release).Uint64("epoch", f.Record.Epoch).
			Msg("process adopted")
	} else if p, err = s.spawn(logf); err != nil {
		_ = logf.Close()
		return err
	}
	s.started = true
	s.setCurrent(p)
	go s.run(p, logf)
	return nil
}

// SetLimits changes the service's limits without a restart (a resize in
// place): they are written at once to the cgroup of the instance that
// runs, and every later instance (a restart) is created with them. An
// unset limit is written as none (cpu weight: the default, 100). Without
// usable cgroups, a memory or tasks limit is refused (ErrCgroupsUnusable,
// as at a start) and a cpu weight alone is not applied; an instance that
// runs outside a cgroup (adopted from an agent that had none) cannot take
// a memory or tasks limit (an error) and is left unweighted. Between an
// exit and the restart, only the restart gets them. If the write fails,
// later instances still get l (the caller decides what runs: a revert
// writes the previous limits back).
func (s *Supervisor) SetLimits(l Limits) error {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	s.cfg.Limits = l
	if !s.cfg.Cgroups.Usable() {
		if l.MemoryMax > 0 || l.TasksMax > 0 {
			return fmt.Errorf("set limits of %s: memory or tasks limit: %w: %s", s.cfg.Service, ErrCgroupsUnusable, s.cfg.Cgroups.Reason())
		}
		return nil
	}
	switch {
	case s.cur == nil:
		return nil
	case s.cur.cg == nil && (l.MemoryMax > 0 || l.TasksMax > 0):
		return fmt.Errorf("set limits of %s: pid %d runs outside a cgroup of the agent's", s.cfg.Service, s.cur.pgid)
	case s.cur.cg == nil:
		return nil // no bound to enforce; a cpu weight alone is not applied
	}
	if err := s.cur.cg.update(l); err != nil {
		return fmt.Errorf("set limits of %s: %w", s.cfg.Service, err)
	}
	s.log.Info().Int("pid", s.cur.pgid).Str("cgroup", s.cur.cg.path).Uint64("memory_max", l.MemoryMax).
		Uint32("cpu_weight", l.CPUWeight).Uint32("tasks_max", l.TasksMax).Msg("limits changed in place")
	return nil
}

// limits are the limits a new instance gets now.
func (s *Supervisor) limits() Limits {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	return s.cfg.Limits
}

// setCurrent records p (nil: none) as the instance that runs. When
// SetLimits changed the limits after p's cgroup was created with others
// (spawned: an adopted one's are not known, written only when asked),
// p's cgroup takes the new ones now.
func (s *Supervisor) setCurrent(p *proc) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	s.cur = p
	if p == nil || !p.spawned || p.cg == nil || p.cg.limits == s.cfg.Limits {
		return
	}
	if err := p.cg.update(s.cfg.Limits); err != nil {
		s.log.Error().Err(err).Int("pid", p.pgid).Msg("limits changed while the process started: not written")
	}
}

// memoryMax is the memory limit of p's cgroup (0: none).
func (s *Supervisor) memoryMax(p *proc) uint64 {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	if p.cg == nil {
		return 0
	}
	return p.cg.limits.MemoryMax
}

// Exits delivers every unexpected exit (buffered, never blocks the
// supervisor: drops the oldest if full). It is never closed.
func (s *Supervisor) Exits() <-chan Exit { return s.exits }

// Restarts returns how many times the process has been restarted.
func (s *Supervisor) Restarts() int { return int(s.restarts.Load()) }

// Stop sends SIGTERM to the process group, SIGKILL after StopGrace, waits for
// the exit and stops restarts. It is safe to call more than once and
// concurrently; every call waits for the same stop (or detach, whichever
// came first). If ctx ends first Stop returns ctx's error while the stop
// carries on in the background.
func (s *Supervisor) Stop(ctx context.Context) error {
	return s.end(ctx, false)
}

// Detach ends supervision and leaves the process running, with its PID
// file, for the next agent to adopt (FindRunning, Adopt). A process
// waiting to be restarted stays stopped (its PID file is removed). It waits
// like Stop.
func (s *Supervisor) Detach(ctx context.Context) error {
	return s.end(ctx, true)
}

func (s *Supervisor) end(ctx context.Context, detach bool) error {
	s.mu.Lock()
	first := !s.stopped
	s.stopped = true
	if first {
		s.detach = detach
	}
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	s.stopOnce.Do(func() { close(s.stopCh) })
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", s.cfg.Service, ctx.Err())
	}
}

// spawn starts one instance, writes the PID file and watches the process.
func (s *Supervisor) spawn(logf *os.File) (*proc, error) {
	env := procenv.Env(s.cfg.Dir, s.cfg.Env)
	name, err := procenv.Program(s.cfg.Command[0], s.cfg.Dir, env)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", s.cfg.Service, err)
	}
	cmd := exec.Command(name, s.cfg.Command[1:]...)
	cmd.Dir = s.cfg.Dir
	cmd.Env = env
	// The file itself, not a pipe: the process writes its log without the
	// agent, and keeps writing when the agent is gone.
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cfg.Credential}
	var cg *cgroup
	limits := s.limits()
	if s.cfg.Cgroups.Usable() {
		var err error
		if cg, err = s.cfg.Cgroups.create(s.cfg.Service, limits); err != nil {
			return nil, fmt.Errorf("start %s: %w", s.cfg.Service, err)
		}
	} else if limits.MemoryMax > 0 || limits.TasksMax > 0 {
		return nil, fmt.Errorf("start %s: memory or tasks limit: %w: %s", s.cfg.Service, ErrCgroupsUnusable, s.cfg.Cgroups.Reason())
	}
	started := func(int) {}
	if s.cfg.Prepare != nil {
		f, err := s.cfg.Prepare(cmd)
		if err != nil {
			s.removeCgroup(cg)
			return nil, fmt.Errorf("start %s: %w", s.cfg.Service, err)
		}
		if f != nil {
			started = f
		}
	}
	// Every instance is gated, with cgroups or without: none of the
	// service's code runs before it is in its cgroup and its PID file
	// names it, so an agent that dies at any moment of a start leaves
	// either no service process (the gate's pipe closes: it exits 125) or
	// one the next agent finds.
	g, err := gate(cmd, name) // name: the service's program, also under a Prepare's wrapper
	if err != nil {
		started(0)
		s.removeCgroup(cg)
		return nil, fmt.Errorf("start %s: exec %q: %w", s.cfg.Service, s.cfg.Command[0], err)
	}
	if err := cmd.Start(); err != nil {
		started(0)
		_ = g.open(false)
		s.removeCgroup(cg)
		return nil, fmt.Errorf("start %s: exec %q (through %s, in %s): %w", s.cfg.Service, s.cfg.Command[0], gateShell, s.cfg.Dir, err)
	}
	pid := cmd.Process.Pid
	fail := func(err error, pidFile bool) (*proc, error) {
		started(0)
		_ = g.open(false)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if pidFile {
			s.removePIDFile()
		}
		s.removeCgroup(cg)
		return nil, fmt.Errorf("start %s: %w", s.cfg.Service, err)
	}
	if err := g.ready(context.Background()); err != nil {
		return fail(fmt.Errorf("exec %q: %w", s.cfg.Command[0], err), false)
	}
	if cg != nil {
		if err := cg.add(pid); err != nil {
			return fail(err, false)
		}
	}
	// While the process is held in the gate it cannot be reaped: its /proc
	// entry (start time) exists, and it is still /bin/sh's, which exec
	// keeps. A start that cannot be recorded does not run: the next agent
	// would not find it, and would start the service a second time.
	if err := s.writePIDFile(pid); err != nil {
		return fail(err, false)
	}
	if err := g.open(true); err != nil {
		return fail(err, true)
	}
	if s.gateOpened != nil {
		s.gateOpened(pid)
	}
	started(pid)
	startedAt := time.Now()
	// The child is reaped through the pidfd (or wait4 without pidfds), not
	// through cmd.Wait, so that a detached process leaves nothing waiting.
	pidfd, err := openPidfd(pid)
	if err != nil {
		s.log.Warn().Err(err).Int("pid", pid).Msg("no pidfd: watching /proc")
	}
	_ = cmd.Process.Release()
	p := watch(pid, pidfd, startedAt, true)
	p.cg = cg
	ev := s.log.Info().Int("pid", pid).Int("restarts", s.Restarts())
	if cg != nil {
		ev = ev.Str("cgroup", cg.path)
	}
	ev.Msg("process started")
	return p, nil
}

// run owns the process: it is the only goroutine that starts, signals or
// reaps it, so Stop, Detach, crashes and restarts never race.
func (s *Supervisor) run(p *proc, logf *os.File) {
	defer close(s.done)
	defer func() {
		if err := logf.Close(); err != nil {
			s.log.Warn().Err(err).Str("path", s.cfg.LogPath).Msg("close log")
		}
	}()
	backoff := s.cfg.MinBackoff
	for {
		if p != nil {
			select {
			case <-s.stopCh:
				s.setCurrent(nil)
				if s.detaching() && !p.exited() {
					p.stopWatching()
					if !p.exited() { // else it exited meanwhile: stopped like any
						s.log.Info().Int("pid", p.pgid).Msg("process left running (detached)")
						return
					}
				}
				s.terminate(p)
				s.removePIDFile()
				s.log.Info().Msg("process stopped")
				return
			case <-p.done:
				ran := time.Since(p.started)
				// Orphans of a crashed leader would hold ports and files.
				if err := p.signalGroup(syscall.SIGKILL); err != nil {
					s.log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGKILL orphans of the exited process")
				}
				s.setCurrent(nil)
				exitErr, reason := p.err, "exited"
				if p.cg != nil {
					// At its own limit only: without memory_max a kill is
					// the host's OOM killer's, not the release's bound.
					if mm := s.memoryMax(p); mm > 0 && p.cg.oomKills() > 0 {
						exitErr, reason = &OOMError{MemoryMax: mm, Err: p.err}, "memory limit"
					}
					s.removeCgroup(p.cg) // and every orphan in it
				}
				p.reap() // nothing more is sent to its group
				if ran >= backoffResetAfter {
					backoff = s.cfg.MinBackoff
				}
				s.emit(Exit{At: time.Now(), Err: exitErr, Restarts: s.Restarts()})
				s.log.Warn().Err(exitErr).Int("pid", p.pgid).Dur("ran", ran).Dur("backoff", backoff).
					Str("reason", reason).Msg("process exited, restarting")
				p = nil
			}
		}
		timer := time.NewTimer(backoff)
		select {
		case <-s.stopCh:
			timer.Stop()
			s.removePIDFile()
			s.log.Info().Msg("supervisor stopped while waiting to restart")
			return
		case <-timer.C:
		}
		backoff = min(backoff*2, s.cfg.MaxBackoff)
		s.restarts.Add(1)
		np, err := s.spawn(logf)
		if err != nil {
			s.emit(Exit{At: time.Now(), Err: err, Restarts: s.Restarts()})
			s.log.Error().Err(err).Str("reason", "restart failed").Msg("restart process")
			continue
		}
		s.setCurrent(np)
		p = np
	}
}

func (s *Supervisor) detaching() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detach
}

// terminate stops p's process group: SIGTERM, then SIGKILL once StopGrace
// has passed and the leader or any other member of the group is still
// alive. It returns after the leader has exited (and was reaped, if it is
// a child of this agent).
func (s *Supervisor) terminate(p *proc) {
	terminate(p, s.cfg.StopGrace, s.log)
}

func terminate(p *proc, grace time.Duration, log zerolog.Logger) {
	deadline := time.Now().Add(grace)
	defer p.reap() // once nothing more is sent to its group
	if err := p.signalGroup(syscall.SIGTERM); err != nil {
		log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGTERM process group")
	}
	if p.cg != nil {
		// Those that left the process group (daemons) are told too, once:
		// a second SIGTERM means "now" to some programs.
		p.cg.signalOutside(p.pgid, syscall.SIGTERM)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		// The leader is gone; give the rest of the group (and of the
		// cgroup) the remaining grace.
		waitGone(p.alive, deadline)
		if p.alive() {
			log.Warn().Int("pid", p.pgid).Str("reason", "grace expired").Msg("SIGKILL process group")
			if err := p.signalGroup(syscall.SIGKILL); err != nil {
				log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGKILL process group")
			}
		}
	case <-timer.C:
		log.Warn().Int("pid", p.pgid).Str("reason", "grace expired").Msg("SIGKILL process group")
		if err := p.signalGroup(syscall.SIGKILL); err != nil {
			log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGKILL process group")
		}
		if p.cg != nil {
			if err := p.cg.killAll(); err != nil {
				log.Warn().Err(err).Str("cgroup", p.cg.path).Msg("SIGKILL cgroup")
			}
		}
		<-p.done
	}
	if p.cg != nil {
		// Every process left in the cgroup is killed, then it is removed.
		if err := p.cg.remove(); err != nil {
			log.Warn().Err(err).Str("cgroup", p.cg.path).Msg("remove cgroup")
		}
	}
	log.Debug().AnErr("wait", p.err).Int("pid", p.pgid).Msg("process exited on stop")
}

// removeCgroup ends whatever is left in cg (nil: nothing) and removes it.
func (s *Supervisor) removeCgroup(cg *cgroup) {
	if cg == nil {
		return
	}
	if err := cg.remove(); err != nil {
		s.log.Warn().Err(err).Str("cgroup", cg.path).Msg("remove cgroup")
	}
}

// emit sends e without ever blocking: when the buffer is full the oldest
// exit is dropped.
func (s *Supervisor) emit(e Exit) {
	for {
		select {
		case s.exits <- e:
			return
		default:
		}
		select {
		case <-s.exits:
		default:
		}
	}
}

// writePIDFile records the group led by pid in the PID file, if there is
// one.
func (s *Supervisor) writePIDFile(pid int) error {
	pidFileMu.Lock()
	defer pidFileMu.Unlock()
	if s.pidPath == "" {
		return nil
	}
	rec, err := writePIDRecordLocked(s.pidPath, pid, s.cfg.Release, s.cfg.Epoch)
	if err != nil {
		return err
	}
	s.pidRec = rec
	return nil
}

// removePIDFile removes the PID file if it still names the group this
// supervisor wrote last: a supervisor that finishes stopping late must not
// remove the file of a newer one.
func (s *Supervisor) removePIDFile() {
	pidFileMu.Lock()
	defer pidFileMu.Unlock()
	if s.pidPath == "" || s.pidRec.PGID == 0 {
		return
	}
	removed, err := removePIDFileIfLocked(s.pidPath, s.pidRec)
	if err != nil {
		s.log.Warn().Err(err).Str("path", s.pidPath).Msg("remove pid file")
	} else if !removed {
		s.log.Debug().Str("path", s.pidPath).Msg("pid file now names another process group: kept")
	}
}

// MovePIDFile moves the supervisor's PID file to path and keeps it there
// from now on (restarts write it there; Stop removes it there). The record
// is renamed, so at any moment it is in exactly one of the two files. A
// file that no longer names this supervisor's group is left where it is.
// It is used when a process takes over a service from another one (a
// handover): the survivor's record moves to the service's main PID file.
func (s *Supervisor) MovePIDFile(path string) error {
	pidFileMu.Lock()
	defer pidFileMu.Unlock()
	old := s.pidPath
	if old == path {
		return nil
	}
	s.pidPath = path
	if old == "" || path == "" || s.pidRec.PGID == 0 {
		return nil
	}
	b, err := readLimited(old)
	if errors.Is(err, os.ErrNotExist) {
		return nil // not written (a restart failed), or removed
	}
	if err != nil {
		return fmt.Errorf("move pid file %s: %w", old, err)
	}
	if got, err := parsePIDFile(b); err != nil || got != s.pidRec {
		return nil // another group's: not ours to move
	}
	if err := os.Rename(old, path); err != nil {
		return fmt.Errorf("move pid file %s to %s: %w", old, path, err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// PIDFile is where the supervisor records its process (see MovePIDFile).
func (s *Supervisor) PIDFile() string {
	pidFileMu.Lock()
	defer pidFileMu.Unlock()
	return s.pidPath
}

// killGroup sends sig to process group pgid; a group that no longer exists
// is not an error. It refuses pgid <= 1 and the caller's own group.
func killGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 || pgid == syscall.Getpgrp() {
		return fmt.Errorf("refusing to signal process group %d", pgid)
	}
	err := syscall.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal %v to process group %d: %w", sig, pgid, err)
	}
	return nil
}
