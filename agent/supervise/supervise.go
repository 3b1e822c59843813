// Package supervise is the agent's built-in process supervisor: it runs one
// service process in its own process group, appends its output to a log
// file, restarts it with exponential backoff when it exits unexpectedly,
// stops it with SIGTERM then SIGKILL to the whole group, and records the
// group id (with the boot id and the leader's start time, so pid reuse and
// reboots are detected) in a PID file so a restarted agent can kill what an
// earlier agent left behind (KillStale).
//
// It is Linux only (process groups, /proc). It must not import etcd, the
// coordinator or any other agent package; it knows nothing about releases,
// checks or the lifecycle.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	// defaultPath is used for the child's PATH when the agent has none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Errors returned by Start.
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
	Env       []string      // KEY=VALUE, appended to a minimal env (PATH, HOME=Dir)
	LogPath   string        // stdout+stderr appended here (file created 0644)
	StopGrace time.Duration // SIGTERM to the process group, SIGKILL after this (default 10s)
	// PIDFile, if set, receives the running process group id with the boot
	// id and the leader's start time (temp+rename; see WritePIDFile); on
	// clean stop it is removed if it still names this supervisor's group.
	PIDFile string
	// MinBackoff, MaxBackoff bound the restart backoff on crash (defaults
	// 200ms, 10s); it doubles per crash and resets after the process has run
	// 10s.
	MinBackoff, MaxBackoff time.Duration
}

// Exit is one exit of the supervised process.
type Exit struct {
	At       time.Time
	Err      error // from cmd.Wait (nil = exit 0), or the error of a failed restart
	Restarts int   // restarts done before this exit
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

	// pidRec is what this supervisor last wrote to PIDFile (zero: nothing).
	// Only spawn writes it (from Start, then only from the run goroutine).
	pidRec PIDRecord

	stopOnce sync.Once
	stopCh   chan struct{} // closed by Stop
	done     chan struct{} // closed when the run loop has ended
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
		cfg:    cfg,
		log:    log.With().Str("service", cfg.Service).Logger(),
		exits:  make(chan Exit, exitsBuffer),
		stopCh: make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// proc is one running instance of the process.
type proc struct {
	cmd     *exec.Cmd
	pgid    int
	started time.Time
	waitCh  chan error // receives cmd.Wait's result once
}

// Start starts the process (own process group, Setpgid) and a goroutine that
// restarts it with backoff whenever it exits, until Stop. Returns an error if
// the first exec fails (e.g. missing binary), in which case nothing keeps
// running.
func (s *Supervisor) Start() error {
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
	logf, err := os.OpenFile(s.cfg.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", s.cfg.Service, err)
	}
	p, err := s.spawn(logf)
	if err != nil {
		_ = logf.Close()
		return err
	}
	s.started = true
	go s.run(p, logf)
	return nil
}

// Exits delivers every unexpected exit (buffered, never blocks the
// supervisor: drops the oldest if full). It is never closed.
func (s *Supervisor) Exits() <-chan Exit { return s.exits }

// Restarts returns how many times the process has been restarted.
func (s *Supervisor) Restarts() int { return int(s.restarts.Load()) }

// Stop sends SIGTERM to the process group, SIGKILL after StopGrace, waits for
// the exit and stops restarts. It is safe to call more than once and
// concurrently; every call waits for the same stop. If ctx ends first Stop
// returns ctx's error while the stop carries on in the background.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
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

// spawn starts one instance and writes the PID file.
func (s *Supervisor) spawn(logf *os.File) (*proc, error) {
	name := s.cfg.Command[0]
	if strings.HasPrefix(name, "./") {
		name = filepath.Join(s.cfg.Dir, name)
	}
	cmd := exec.Command(name, s.cfg.Command[1:]...)
	cmd.Dir = s.cfg.Dir
	cmd.Env = s.env()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: exec %q: %w", s.cfg.Service, s.cfg.Command[0], err)
	}
	p := &proc{cmd: cmd, pgid: cmd.Process.Pid, started: time.Now(), waitCh: make(chan error, 1)}
	if s.cfg.PIDFile != "" {
		// Before Wait can reap the child: its /proc entry (start time) must exist.
		rec, err := WritePIDFile(s.cfg.PIDFile, p.pgid)
		if err != nil {
			// The process runs; a missing PID file only weakens KillStale.
			s.log.Warn().Err(err).Str("path", s.cfg.PIDFile).Msg("write pid file")
		} else {
			s.pidRec = rec
		}
	}
	go func() { p.waitCh <- cmd.Wait() }()
	s.log.Info().Int("pid", p.pgid).Int("restarts", s.Restarts()).Msg("process started")
	return p, nil
}

func (s *Supervisor) env() []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env := []string{"PATH=" + path, "HOME=" + s.cfg.Dir}
	return append(env, s.cfg.Env...)
}

// run owns the process: it is the only goroutine that starts, signals or
// reaps it, so Stop, crashes and restarts never race.
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
				s.terminate(p)
				s.removePIDFile()
				s.log.Info().Msg("process stopped")
				return
			case err := <-p.waitCh:
				ran := time.Since(p.started)
				// Orphans of a crashed leader would hold ports and files.
				killGroup(p.pgid, syscall.SIGKILL)
				if ran >= backoffResetAfter {
					backoff = s.cfg.MinBackoff
				}
				s.emit(Exit{At: time.Now(), Err: err, Restarts: s.Restarts()})
				s.log.Warn().Err(err).Int("pid", p.pgid).Dur("ran", ran).Dur("backoff", backoff).
					Str("reason", "exited").Msg("process exited, restarting")
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
		p = np
	}
}

// terminate stops p's process group: SIGTERM, then SIGKILL once StopGrace
// has passed and the leader or any other member of the group is still
// alive. It returns after the leader has been reaped.
func (s *Supervisor) terminate(p *proc) {
	deadline := time.Now().Add(s.cfg.StopGrace)
	if err := killGroup(p.pgid, syscall.SIGTERM); err != nil {
		s.log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGTERM process group")
	}
	timer := time.NewTimer(s.cfg.StopGrace)
	defer timer.Stop()
	var waitErr error
	select {
	case waitErr = <-p.waitCh:
		// The leader is gone; give the rest of the group the remaining grace.
		waitGroupGone(p.pgid, deadline)
		if groupAlive(p.pgid) {
			s.log.Warn().Int("pid", p.pgid).Str("reason", "grace expired").Msg("SIGKILL process group")
			if err := killGroup(p.pgid, syscall.SIGKILL); err != nil {
				s.log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGKILL process group")
			}
		}
	case <-timer.C:
		s.log.Warn().Int("pid", p.pgid).Str("reason", "grace expired").Msg("SIGKILL process group")
		if err := killGroup(p.pgid, syscall.SIGKILL); err != nil {
			s.log.Warn().Err(err).Int("pid", p.pgid).Msg("SIGKILL process group")
		}
		waitErr = <-p.waitCh
	}
	s.log.Debug().AnErr("wait", waitErr).Int("pid", p.pgid).Msg("process exited on stop")
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

// removePIDFile removes the PID file if it still names the group this
// supervisor wrote last: a supervisor that finishes stopping late must not
// remove the file of a newer one.
func (s *Supervisor) removePIDFile() {
	if s.cfg.PIDFile == "" || s.pidRec.PGID == 0 {
		return
	}
	removed, err := removePIDFileIf(s.cfg.PIDFile, s.pidRec)
	if err != nil {
		s.log.Warn().Err(err).Str("path", s.cfg.PIDFile).Msg("remove pid file")
	} else if !removed {
		s.log.Debug().Str("path", s.cfg.PIDFile).Msg("pid file now names another process group: kept")
	}
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
