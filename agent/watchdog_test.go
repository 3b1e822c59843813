package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fakeSystemd is a notify socket that keeps every message sent to it.
type fakeSystemd struct {
	path string
	msgs chan string
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{path: path, msgs: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 256)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			f.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return f
}

// next is the next message, failing after timeout.
func (f *fakeSystemd) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case m := <-f.msgs:
		return m
	case <-time.After(timeout):
		t.Fatalf("no message from the agent on the notify socket within %s", timeout)
		return ""
	}
}

// TestWatchdogDecides: systemd is told the agent is alive while its run
// loop turns (Alive within stale), not once it stopped (logged once), and
// again while a handover holds or after the loop turns again; a new agent
// of an upgrade says nothing until it is armed (confirmed), not even
// READY=1. Times are inputs: nothing waits.
func TestWatchdogDecides(t *testing.T) {
	var logs strings.Builder
	w := &Watchdog{interval: 4 * time.Second, log: zerolog.New(&logs)}
	w.armed.Store(true)
	const stale = 2 * time.Second
	t0 := time.Unix(1_000_000, 0)
	w.Alive(t0)
	for _, c := range []struct {
		at   time.Duration
		want bool
	}{{time.Second, true}, {stale, true}, {stale + time.Millisecond, false}, {10 * time.Second, false}} {
		if got := w.due(t0.Add(c.at), stale); got != c.want {
			t.Errorf("last turn %s before: due %v, want %v", c.at, got, c.want)
		}
	}
	if n := strings.Count(logs.String(), "has not turned"); n != 1 {
		t.Errorf("the silence logged %d times, want once:\n%s", n, logs.String())
	}
	w.hold.Store(true) // Hold without its Alive: the loop still quiet
	if !w.due(t0.Add(time.Minute), stale) {
		t.Error("a handover holds: not due")
	}
	w.hold.Store(false)
	w.Alive(t0.Add(time.Minute))
	if !w.due(t0.Add(time.Minute+time.Second), stale) {
		t.Error("the loop turns again: not due")
	}
	if w.due(t0.Add(3*time.Minute), stale) {
		t.Error("quiet again: due")
	}
	if n := strings.Count(logs.String(), "has not turned"); n != 2 {
		t.Errorf("a second silence logged %d times in all, want 2", n)
	}

	child := &Watchdog{interval: 4 * time.Second, child: true, log: zerolog.Nop()}
	child.Alive(t0)
	if child.due(t0, stale) {
		t.Error("a new agent not confirmed yet is due")
	}
	child.Ready() // no socket: would fail loudly if it tried to send
	child.Arm()
	if !child.due(time.Now(), stale) {
		t.Error("a confirmed new agent is not due")
	}
}

// TestWatchdogFromEnv: the watchdog comes from WATCHDOG_USEC (and
// WATCHDOG_PID, when set, must be this process), both taken out of the
// environment; without a notify socket there is none.
func TestWatchdogFromEnv(t *testing.T) {
	for _, c := range []struct {
		usec, pid, socket string
		want              time.Duration
		nilW, fails       bool
	}{
		{usec: "30000000", socket: "/run/notify", want: 30 * time.Second},
		{usec: "30000000", pid: "1", socket: "/run/notify", want: 0},
		{usec: "30000000", pid: "self", socket: "/run/notify", want: 30 * time.Second},
		{socket: "/run/notify", want: 0},
		{usec: "30000000", socket: "", nilW: true},
		{usec: "soon", socket: "/run/notify", fails: true},
	} {
		t.Setenv(EnvWatchdogUsec, c.usec)
		pid := c.pid
		if pid == "self" {
			pid = strconv.Itoa(os.Getpid())
		}
		t.Setenv(EnvWatchdogPID, pid)
		w, err := WatchdogFromEnv(c.socket, false, zerolog.Nop())
		switch {
		case c.fails:
			if err == nil || !strings.Contains(err.Error(), "WATCHDOG_USEC") {
				t.Errorf("%+v: %v, want an error naming WATCHDOG_USEC", c, err)
			}
		case err != nil:
			t.Errorf("%+v: %v", c, err)
		case c.nilW != (w == nil):
			t.Errorf("%+v: watchdog %v", c, w)
		case w.Interval() != c.want:
			t.Errorf("%+v: interval %s, want %s", c, w.Interval(), c.want)
		}
		for _, k := range []string{EnvWatchdogUsec, EnvWatchdogPID} {
			if v, ok := os.LookupEnv(k); ok {
				t.Errorf("%+v: %s=%q still in the environment", c, k, v)
			}
		}
	}
}

// TestAgentTellsSystemdItIsAlive: a real agent under a (fake) systemd with
// a watchdog says READY=1 once its run loop runs, then WATCHDOG=1 again
// and again while the loop turns; it stops once the agent stopped.
func TestAgentTellsSystemdItIsAlive(t *testing.T) {
	sd := newFakeSystemd(t)
	fc := newFakeCoordinator(t)
	opts := testOptions()
	w := &Watchdog{socket: sd.path, interval: 400 * time.Millisecond, log: zerolog.Nop()}
	w.armed.Store(true)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: t.TempDir(), AgentVersion: "test",
		NotifySocket: sd.path, Watchdog: w}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wdDone := make(chan struct{})
	go func() { defer close(wdDone); w.Run(ctx, opts.tick) }()
	done := runAgent(t, ctx, cfg, opts)
	fc.waitFor(t, "hello", 30*time.Second, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) > 0 })
	if m := sd.next(t, 30*time.Second); m != "READY=1" {
		t.Fatalf("first message %q, want READY=1", m)
	}
	for i := range 5 {
		if m := sd.next(t, 30*time.Second); m != "WATCHDOG=1" {
			t.Fatalf("message %d: %q, want WATCHDOG=1", i, m)
		}
	}
	if strings.Count(strings.Join(drain(sd.msgs), ","), "READY=1") != 0 {
		t.Error("READY=1 sent again")
	}
	cancel()
	waitDone(t, done)
	<-wdDone
}

func drain(c chan string) []string {
	var out []string
	for {
		select {
		case m := <-c:
			out = append(out, m)
		default:
			return out
		}
	}
}

// TestWatchdogQuietBeforeTheLoopRuns: before the run loop first runs (the
// agent recovering its services, before READY=1, when systemd's watchdog
// does not run yet and TimeoutStartSec holds) nothing is sent and nothing
// is logged: a start slower than a quarter of the interval logged that the
// loop had stopped and systemd would restart the agent.
func TestWatchdogQuietBeforeTheLoopRuns(t *testing.T) {
	var logs strings.Builder
	w := &Watchdog{interval: 4 * time.Second, log: zerolog.New(&logs)}
	w.armed.Store(true)
	if w.due(time.Now(), 2*time.Second) {
		t.Error("due before the loop ran")
	}
	if logs.Len() > 0 {
		t.Errorf("logged before the loop ran:\n%s", logs.String())
	}
}

// TestWatchdogFedWhileTheLoopProgresses: one event can take the run loop
// long, each of its steps short: a set of assignments for many services
// saves each one's state (two fsyncs) in turn, on a slow disk for longer
// than the watchdog's interval. The loop makes progress all along and is
// not stuck: systemd is told so, by every step. Before, only the loop's
// tick fed the watchdog, and an agent taking a fresh host's services on a
// slow disk was killed in the middle (then again after its restart). Each
// save notes the watchdog's last sign of life: between the saves of two
// services it must have moved (the step that saved the first fed it),
// whatever the saves cost. A save that hangs still stops the pings
// (TestWatchdogSilentWhileASaveHangs).
func TestWatchdogFedWhileTheLoopProgresses(t *testing.T) {
	fc := newFakeCoordinator(t)
	w := &Watchdog{interval: 4 * time.Second, log: zerolog.Nop()}
	w.armed.Store(true)
	type save struct {
		service string
		alive   int64
	}
	var mu sync.Mutex
	var saves []save
	opts := testOptions()
	opts.saveHook = func(snap *lifecycle.Snapshot) error {
		mu.Lock()
		saves = append(saves, save{snap.Service, w.alive.Load()})
		mu.Unlock()
		return nil
	}
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: t.TempDir(), AgentVersion: "test", Watchdog: w}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	fc.waitFor(t, "hello", 30*time.Second, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) > 0 })
	// 40 services, a save or more each, in one set: one event.
	var removals []*v1.Assignment
	var names []string
	for i := range 40 {
		name := fmt.Sprintf("branch-%03d", i)
		names = append(names, name)
		removals = append(removals, &v1.Assignment{Service: name, Generation: 1, Remove: true})
	}
	fc.assign(removals...)
	fc.waitFor(t, "every service removed", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		for _, name := range names {
			if lastReport(rs, name).GetPhase() != v1.Phase_PHASE_REMOVED {
				return false
			}
		}
		return true
	})
	cancel()
	waitDone(t, done)
	mu.Lock()
	defer mu.Unlock()
	pairs := 0
	for i := 1; i < len(saves); i++ {
		if saves[i].service == saves[i-1].service {
			continue
		}
		pairs++
		if saves[i].alive <= saves[i-1].alive {
			t.Fatalf("save %d (%s) saw the watchdog's last sign of life where save %d (%s) did: no step fed it in between",
				i, saves[i].service, i-1, saves[i-1].service)
		}
	}
	if pairs < len(names)-1 {
		t.Fatalf("%d saves of one service after another's, want at least %d", pairs, len(names)-1)
	}
}

// TestWatchdogSilentWhileASaveHangs: a save that never returns (a write
// stuck on a dead disk) holds the run loop: no step ends, the watchdog
// goes silent and says so, and systemd would kill the agent.
func TestWatchdogSilentWhileASaveHangs(t *testing.T) {
	sd := newFakeSystemd(t)
	fc := newFakeCoordinator(t)
	var logs logLines
	w := &Watchdog{socket: sd.path, interval: 400 * time.Millisecond, log: zerolog.New(&logs)}
	w.armed.Store(true)
	var hang atomic.Bool
	release := make(chan struct{})
	opts := testOptions()
	opts.saveHook = func(*lifecycle.Snapshot) error {
		if hang.Load() {
			<-release // the dead disk
		}
		return nil
	}
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: t.TempDir(), AgentVersion: "test",
		NotifySocket: sd.path, Watchdog: w}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wdDone := make(chan struct{})
	go func() { defer close(wdDone); w.Run(ctx, opts.tick) }()
	done := runAgent(t, ctx, cfg, opts)
	if m := sd.next(t, 30*time.Second); m != "READY=1" {
		t.Fatalf("first message %q, want READY=1", m)
	}
	fc.waitFor(t, "hello", 30*time.Second, func(hs []*v1.Hello, _ []*v1.ServiceReport) bool { return len(hs) > 0 })
	hang.Store(true)
	fc.assign(&v1.Assignment{Service: "branch-000", Generation: 1, Remove: true})
	testkit.Eventually(t, 30*time.Second, "the watchdog silent", func() bool { return len(logs.with("has not turned")) > 0 })
	drain(sd.msgs)
	if w.due(time.Now(), max(w.interval/2, 3*opts.tick)) {
		t.Error("due while the save hangs")
	}
	close(release)
	cancel()
	waitDone(t, done)
	<-wdDone
}
