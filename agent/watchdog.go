package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
)

// Systemd's watchdog of the agent's own unit (sd_watchdog_enabled(3),
// WatchdogSec= in deployments/systemd/fleetwave-agent.service). An agent
// whose run loop stops turning (a deadlock, a write stuck on a dead disk)
// deploys nothing, reverts nothing and reports nothing, and nothing else
// would notice; told WATCHDOG=1 only while its run loop turns, systemd
// kills it after WatchdogSec (SIGABRT: Go prints every goroutine's stack to
// the journal first) and starts it again (Restart=always). Its services
// keep running (KillMode=process) and the new agent adopts them.

// LoopTick is how often the run loop turns when nothing happens (its
// machines' periodic tick), the pace Watchdog.Run expects of Alive.
const LoopTick = time.Second

// EnvWatchdogUsec and EnvWatchdogPID are systemd's watchdog variables
// (sd_watchdog_enabled(3)): its interval, and the process it watches.
const (
	EnvWatchdogUsec = "WATCHDOG_USEC"
	EnvWatchdogPID  = "WATCHDOG_PID"
)

// Watchdog tells systemd the agent is alive: READY=1 once its run loop
// runs (Type=notify), and WATCHDOG=1 every quarter of the interval while
// the run loop turns (Alive, from its tick) or an upgrade's handover waits
// for the new agent (Hold). It lives across Run's returns (an upgrade that
// did not take over runs Run again). A nil *Watchdog does nothing.
type Watchdog struct {
	socket   string
	interval time.Duration
	// child: a new agent of an upgrade, which speaks for the unit only
	// once it confirmed (Arm) and the old one made it the main process;
	// systemd refuses other processes' messages (NotifyAccess=main).
	child bool
	log   zerolog.Logger

	alive   atomic.Int64 // unix nanoseconds of the run loop's last turn
	hold    atomic.Bool
	armed   atomic.Bool
	ready   sync.Once
	stalled atomic.Bool // the silence was logged
}

// WatchdogFromEnv takes systemd's watchdog out of the environment (the
// services and hooks the agent starts must not inherit it) and returns it
// for Config.Watchdog: nil when the unit has no watchdog (or it is another
// process's: WATCHDOG_PID) and when socket (Config.NotifySocket) is empty.
// child is set for the new agent of an upgrade (ConfirmFromEnv).
func WatchdogFromEnv(socket string, child bool, log zerolog.Logger) (*Watchdog, error) {
	interval, err := daemon.SdWatchdogEnabled(true)
	if err != nil {
		return nil, fmt.Errorf("systemd watchdog: %w", err)
	}
	if socket == "" {
		return nil, nil
	}
	w := &Watchdog{socket: socket, interval: interval, child: child, log: log}
	w.armed.Store(!child)
	return w, nil
}

// Interval is the watchdog's interval (0: systemd has none; READY=1 only).
func (w *Watchdog) Interval() time.Duration {
	if w == nil {
		return 0
	}
	return w.interval
}

// Run pings systemd until ctx ends, every quarter of the interval, when
// the run loop turned within the last half of it (at least three of its
// ticks: tick) or a handover holds; it logs once when it goes silent.
func (w *Watchdog) Run(ctx context.Context, tick time.Duration) {
	if w == nil || w.interval <= 0 {
		return
	}
	stale := max(w.interval/2, 3*tick)
	t := time.NewTicker(w.interval / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if w.due(now, stale) {
				w.notify("WATCHDOG=1")
			}
		}
	}
}

// due decides at now whether systemd is told the agent is alive
// (lifecycle.WatchdogDue). Going silent is logged once (until it pings
// again), not before the run loop first ran.
func (w *Watchdog) due(now time.Time, stale time.Duration) bool {
	turned := w.alive.Load()
	last, armed := time.Unix(0, turned), w.armed.Load()
	if lifecycle.WatchdogDue(armed, w.hold.Load(), last, now, stale) {
		w.stalled.Store(false)
		return true
	}
	// Before the loop first ran (the agent recovering its services, before
	// READY=1: systemd's watchdog does not run yet) nothing has stopped.
	if armed && turned != 0 && !w.stalled.Swap(true) {
		w.log.Error().Dur("quiet", now.Sub(last)).Dur("watchdog", w.interval).
			Msg("the agent's run loop has not turned: systemd's watchdog is no longer told the agent is alive and restarts it (its services keep running)")
	}
	return false
}

// Alive records a turn of the run loop at now, or its progress (a
// machine's step, loop.go).
func (w *Watchdog) Alive(now time.Time) {
	if w != nil {
		w.alive.Store(now.UnixNano())
	}
}

// Ready tells systemd the agent started (READY=1, once), from its run
// loop's start: its services are recovered and it runs, with or without
// a coordinator. A new agent of an upgrade does not: the unit is started
// already, and it is not the unit's main process yet.
func (w *Watchdog) Ready() {
	if w == nil || w.child {
		return
	}
	w.Alive(time.Now())
	w.ready.Do(func() { w.notify("READY=1") })
}

// Arm lets a new agent of an upgrade ping, from its confirmation on (its
// first ping a quarter interval later, by when the old agent has made it
// the main process).
func (w *Watchdog) Arm() {
	if w != nil {
		w.Alive(time.Now())
		w.armed.Store(true)
	}
}

// Hold keeps pinging while on is set, whatever the run loop does: an
// upgrade's handover stops the run loop and waits up to UpgradeDeadline
// for the new agent.
func (w *Watchdog) Hold(on bool) {
	if w != nil {
		w.Alive(time.Now())
		w.hold.Store(on)
	}
}

// env is what a new agent of an upgrade needs to keep the watchdog:
// the interval, without WATCHDOG_PID (its pid is not the unit's yet).
func (w *Watchdog) env() []string {
	if w == nil || w.interval <= 0 {
		return nil
	}
	return []string{EnvWatchdogUsec + "=" + strconv.FormatInt(w.interval.Microseconds(), 10)}
}

func (w *Watchdog) notify(state string) {
	if err := sdNotify(w.socket, state); err != nil {
		w.log.Warn().Err(err).Str("socket", w.socket).Str("state", state).Msg("telling systemd")
	}
}

// sdNotify sends one sd_notify(3) message to systemd's notify socket
// (an abstract one when it starts with "@").
func sdNotify(socket, state string) error {
	name := socket
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:] // abstract namespace
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	return nil
}
