package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
)

// The process side of an agent upgrade (the tableflip pattern: the old
// process starts the new one, which takes over only once it is known to
// work). Run returned an *Upgrade: the old agent stopped as on SIGTERM, its
// services running. Handoff then:
//
//   - starts the new binary with the agent's own arguments and, in
//     EnvConfirmFD, the number of an inherited pipe's write end; the new
//     agent adopts the services, connects, and once a coordinator answered
//     its hello writes one line to the pipe (ConfirmFromEnv);
//   - on that line makes the new binary the agent's installed executable
//     (Config.Executable, else the running one; the old one kept as
//     <exe>.previous, the new one renamed over <exe>, so the next start, by
//     systemd or anyone, runs it; the new agent, which runs from its
//     release directory, is told the path in EnvExecutable for its own
//     upgrades), tells systemd the new
//     main pid when it runs under systemd (MAINPID=), records the upgrade
//     done, and returns true: the old process exits and the new agent runs
//     on;
//   - when the new agent exits first, does not confirm within
//     Config.UpgradeDeadline, or the old agent is told to stop meanwhile
//     (ctx), it stops the new agent (SIGTERM, which leaves the services
//     running; SIGKILL after HandoffStopGrace), records the upgrade failed
//     with the reason and returns false: Run again resumes the old agent
//     (adopting the services once more), which reports the failure.

// EnvConfirmFD names the environment variable that tells a new agent the
// descriptor to confirm on.
const EnvConfirmFD = "FLEETWAVE_AGENT_CONFIRM_FD"

// HandoffStopGrace is how long a new agent that is sent away has to exit
// after SIGTERM before SIGKILL.
const HandoffStopGrace = 10 * time.Second

// confirmLine is what a new agent writes to confirm; watchdogLine follows
// it from agents that keep systemd's watchdog (watchdog.go). An old agent
// that handed over reads the first line alone; one with a watchdog refuses
// a new agent without the second (an older agent, rolled back to: made the
// unit's main process, it would never ping and be killed, then started
// again from the executable it replaced and never say READY=1).
const (
	confirmLine  = "accepted\n"
	watchdogLine = "watchdog\n"
)

// parentCheckInterval is how often a new agent that has not confirmed
// looks whether the old agent is still there (WatchParent).
const parentCheckInterval = time.Second

// WatchParent is for a new agent that has not confirmed yet (Config.Confirm
// set): it returns a Config.Confirm that confirms only while the old agent
// (parent ppid) is still there, and a context that ends, with a log line,
// when the old agent is gone before the confirmation. A new agent without
// its old agent stops: the old agent died in the handover (kill -9, a
// crash), its supervisor (systemd) starts the old binary again, which must
// get the data dir, and reports the upgrade failed (lifecycle.AgentStart).
//
// After the confirmation it watches on until the old agent is gone: the old
// agent makes the new binary the installed one and records the upgrade
// done only after it read the line. An old agent that dies in between
// (kill -9 in its commit) leaves the record TRYING (and perhaps the old
// binary installed) while this agent runs on, outside what its supervisor
// knows: the next start of the installed executable finds the data dir
// taken, and the record says the handover never ended. So a new agent whose
// old agent is gone while dataDir's record still says TRYING stops too: the
// installed executable, started again, decides by the record
// (lifecycle.AgentStart: the new binary records it done, the old one
// failed).
//
// The channel it returns is closed once the old agent is gone after the
// confirmation with the upgrade recorded done (Config.HandedOver).
func WatchParent(ctx context.Context, confirm func(), dataDir string, log zerolog.Logger) (context.Context, func(), <-chan struct{}) {
	return watchParent(ctx, confirm, os.Getppid(), os.Getppid, parentCheckInterval, func() bool {
		rec, err := loadUpgradeRecord(dataDir)
		return err != nil || rec == nil || rec.State == lifecycle.AgentTrying
	}, log)
}

// watchParent is WatchParent with its clock, parent and record: handing
// says whether the old agent has not ended the handover yet (its record
// still TRYING).
func watchParent(ctx context.Context, confirm func(), ppid int, getppid func() int, every time.Duration, handing func() bool, log zerolog.Logger) (context.Context, func(), <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	handedOver := make(chan struct{})
	confirmed := make(chan struct{})
	var once sync.Once
	wrapped := func() {
		once.Do(func() {
			if getppid() != ppid {
				return // the watch below stops the agent
			}
			// The watch knows first: once the old agent has the line it
			// exits, which is no reason to stop once the upgrade is
			// recorded done.
			close(confirmed)
			confirm()
		})
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		waiting := confirmed // nil once confirmed: watched on until the old agent is gone
		for {
			select {
			case <-ctx.Done():
				return
			case <-waiting:
				waiting = nil
				continue
			case <-t.C:
			}
			if getppid() == ppid {
				continue
			}
			select {
			case <-confirmed:
				waiting = nil
			default:
			}
			if waiting != nil {
				log.Warn().Int("ppid", ppid).Msg("agent upgrade: the old agent is gone before this new agent confirmed: stopping (the old agent, started again, reports the upgrade failed)")
				cancel()
			} else if handing() {
				log.Warn().Int("ppid", ppid).Msg("agent upgrade: the old agent is gone after this new agent confirmed but before it recorded the upgrade done: stopping (the installed agent, started again, settles the upgrade by its record)")
				cancel()
			} else {
				close(handedOver)
			}
			return
		}
	}()
	return ctx, wrapped, handedOver
}

// ConfirmFromEnv returns the Config.Confirm of a new agent started by
// Handoff (nil when the agent was not: EnvConfirmFD unset). It removes the
// variable from the environment and keeps the descriptor from the agent's
// children (its services and hooks).
func ConfirmFromEnv() (func(), error) {
	v, ok := os.LookupEnv(EnvConfirmFD)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(EnvConfirmFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s: %q is not an inherited descriptor number", EnvConfirmFD, v)
	}
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "agent-upgrade-confirm")
	if f == nil {
		return nil, fmt.Errorf("%s: descriptor %d is not open", EnvConfirmFD, fd)
	}
	return func() {
		_, _ = io.WriteString(f, confirmLine+watchdogLine)
		_ = f.Close()
	}, nil
}

// Handoff hands over to the new agent of up (see above) and reports whether
// it took over. args are the agent's own arguments (os.Args[1:]). Its
// errors are in the record and the log: a false return means "run again".
func Handoff(ctx context.Context, cfg Config, up *Upgrade, args []string, log zerolog.Logger) bool {
	cfg = cfg.withDefaults()
	log = log.With().Str("host", cfg.HostID).Str("version", up.Record.Version).Logger()
	// The run loop has stopped: systemd's watchdog is told the agent is
	// alive while it waits for the new one (until this agent exits, or
	// runs its loop again).
	cfg.Watchdog.Hold(true)
	defer cfg.Watchdog.Hold(false)
	end, detail := handoff(ctx, cfg, up, args, log)
	rec, commit := lifecycle.AgentHandoff(up.Record, end, detail, cfg.UpgradeDeadline)
	if err := saveUpgradeRecord(cfg.DataDir, &rec); err != nil {
		log.Error().Err(err).Msg("saving the agent upgrade record")
	}
	if commit {
		log.Info().Msg("agent upgrade: the new agent took over; this one exits")
	} else {
		log.Warn().Str("reason", rec.Reason).Msg("agent upgrade failed: this agent runs again")
	}
	return commit
}

func handoff(ctx context.Context, cfg Config, up *Upgrade, args []string, log zerolog.Logger) (lifecycle.HandoffEnd, string) {
	exe, err := installedExecutable(cfg)
	if err != nil {
		return lifecycle.HandoffCommitFailed, err.Error()
	}
	r, w, err := os.Pipe()
	if err != nil {
		return lifecycle.HandoffExited, "pipe: " + err.Error()
	}
	defer r.Close()
	cmd := exec.Command(up.Binary, args...)
	cmd.Env = withoutEnv(os.Environ(), EnvConfirmFD, EnvNotifySocket, EnvExecutable, EnvWatchdogUsec, EnvWatchdogPID)
	cmd.Env = append(cmd.Env, EnvConfirmFD+"=3", EnvExecutable+"="+exe)
	if cfg.NotifySocket != "" {
		cmd.Env = append(cmd.Env, EnvNotifySocket+"="+cfg.NotifySocket) // for its own upgrades
		cmd.Env = append(cmd.Env, cfg.Watchdog.env()...)                // to keep the unit's watchdog once it took over
	}
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		w.Close()
		return lifecycle.HandoffExited, "start: " + err.Error()
	}
	w.Close()
	log.Info().Int("pid", cmd.Process.Pid).Dur("deadline", cfg.UpgradeDeadline).Msg("agent upgrade: new agent started; waiting for it to connect")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// confirmed: the first line came (or not: false); keeps: the second,
	// read only after it (an older agent may keep the pipe open).
	confirmed, keeps := make(chan bool, 1), make(chan bool, 1)
	go func() {
		b := make([]byte, len(confirmLine))
		n, _ := io.ReadFull(r, b)
		ok := n == len(b) && string(b) == confirmLine
		confirmed <- ok
		if ok {
			b = make([]byte, len(watchdogLine))
			n, _ = io.ReadFull(r, b) // an older agent closes after confirmLine
			keeps <- n == len(b) && string(b) == watchdogLine
		}
	}()
	deadline := time.NewTimer(cfg.UpgradeDeadline)
	defer deadline.Stop()
	var end lifecycle.HandoffEnd
	var detail string
	// commit makes the new agent the one that runs (false: it could not).
	commit := func() bool {
		if err := commitBinary(exe, up.Binary); err != nil {
			end, detail = lifecycle.HandoffCommitFailed, err.Error()
			return false
		}
		notifyMainPID(cfg.NotifySocket, cmd.Process.Pid, log)
		return true
	}
wait:
	select {
	case ok := <-confirmed:
		if ok && cfg.Watchdog.Interval() > 0 {
			goto wait // the unit has a watchdog: the new agent must keep it
		}
		if ok {
			if commit() {
				return lifecycle.HandoffConfirmed, ""
			}
			break
		}
		// The pipe closed without the line: the new agent is exiting, or
		// runs on without confirming; the deadline still holds.
		confirmed = nil
		goto wait
	case ok := <-keeps:
		if !ok {
			end = lifecycle.HandoffNoWatchdog
			break
		}
		if commit() {
			return lifecycle.HandoffConfirmed, ""
		}
	case err := <-exited:
		return lifecycle.HandoffExited, exitText(err)
	case <-deadline.C:
		end = lifecycle.HandoffDeadline
	case <-ctx.Done():
		end = lifecycle.HandoffStopped
	}
	stopNewAgent(cmd, exited, log)
	return end, detail
}

// stopNewAgent ends a new agent that did not take over: SIGTERM (it leaves
// the services running), SIGKILL after HandoffStopGrace.
func stopNewAgent(cmd *exec.Cmd, exited <-chan error, log zerolog.Logger) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(HandoffStopGrace)
	defer t.Stop()
	select {
	case <-exited:
		return
	case <-t.C:
	}
	log.Warn().Int("pid", cmd.Process.Pid).Dur("grace", HandoffStopGrace).Msg("agent upgrade: the new agent ignored SIGTERM; killing it")
	_ = cmd.Process.Kill()
	<-exited
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// withoutEnv is env without the variables named keys.
func withoutEnv(env []string, keys ...string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); !slices.Contains(keys, k) {
			out = append(out, kv)
		}
	}
	return out
}

// executable is the running agent's executable (os.Executable; tests
// point it at a file of their own).
var executable = os.Executable

// EnvExecutable names the environment variable that tells a new agent the
// installed executable (Config.Executable): it runs from its release
// directory, but its own upgrade replaces the installed one.
const EnvExecutable = "FLEETWAVE_AGENT_EXECUTABLE"

// ExecutableFromEnv takes EnvExecutable out of the environment and returns
// it for Config.Executable ("" when unset: the running executable).
func ExecutableFromEnv() string {
	v := os.Getenv(EnvExecutable)
	os.Unsetenv(EnvExecutable)
	return v
}

// installedExecutable is the executable an upgrade replaces: configured,
// else the running one, links resolved.
func installedExecutable(cfg Config) (string, error) {
	exe := cfg.Executable
	if exe == "" {
		var err error
		if exe, err = executable(); err != nil {
			return "", fmt.Errorf("find the agent's executable: %w", err)
		}
	}
	exe, err := filepath.EvalSymlinks(exe)
	if err != nil {
		return "", fmt.Errorf("find the agent's executable: %w", err)
	}
	return exe, nil
}

// commitBinary makes bin the agent's executable exe: a copy beside it
// renamed over it (atomic), the old one kept as <exe>.previous (a hard
// link, else a copy).
func commitBinary(exe, bin string) error {
	b, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("read the new agent: %w", err)
	}
	prev := exe + ".previous"
	if err := os.Remove(prev); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("keep the previous agent: %w", err)
	}
	if err := os.Link(exe, prev); err != nil {
		old, rerr := os.ReadFile(exe)
		if rerr != nil {
			return fmt.Errorf("keep the previous agent: %w", rerr)
		}
		if err := writeFileAtomic(prev, old, 0o755); err != nil {
			return fmt.Errorf("keep the previous agent: %w", err)
		}
	}
	if err := writeFileAtomic(exe, b, 0o755); err != nil {
		return fmt.Errorf("install the new agent as %s: %w", exe, err)
	}
	return nil
}

// EnvNotifySocket is systemd's notify socket variable (sd_notify(3)).
const EnvNotifySocket = "NOTIFY_SOCKET"

// NotifySocketFromEnv takes systemd's notify socket out of the environment
// (so the services and hooks the agent starts do not inherit it) and
// returns it for Config.NotifySocket ("" when unset).
func NotifySocketFromEnv() string {
	v := os.Getenv(EnvNotifySocket)
	os.Unsetenv(EnvNotifySocket)
	return v
}

// notifyMainPID tells systemd (when the agent runs under it with a notify
// socket, Config.NotifySocket) that the new agent is the unit's main
// process from now on (MAINPID=, accepted from the main process with
// NotifyAccess=main).
func notifyMainPID(socket string, pid int, log zerolog.Logger) {
	if socket == "" {
		return
	}
	if err := sdNotify(socket, "MAINPID="+strconv.Itoa(pid)); err != nil {
		log.Warn().Err(err).Int("pid", pid).Str("socket", socket).Msg("agent upgrade: telling systemd the new main pid")
	}
}
