package gossip

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// syncBuffer collects a node's logs; they are printed if the test fails.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Count(s string) int { return strings.Count(b.String(), s) }

type node struct {
	*Gossip
	logs *syncBuffer
}

func writeKeyFile(t *testing.T) string {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(p, []byte(k+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testConfig is a fast-failure-detection config on 127.0.0.1 with a dynamic port.
func testConfig(name, keyFile string, join ...string) Config {
	role := RoleAgent
	if strings.HasPrefix(name, CoordinatorPrefix) {
		role = RoleCoordinator
	}
	return Config{
		Name:                name,
		Bind:                "127.0.0.1:0",
		Join:                join,
		KeyFile:             keyFile,
		Label:               "fleetwave-test",
		Role:                role,
		ProbeInterval:       200 * time.Millisecond,
		ProbeTimeout:        100 * time.Millisecond,
		GossipInterval:      50 * time.Millisecond,
		PushPullInterval:    2 * time.Second,
		TCPTimeout:          2 * time.Second,
		LeaveTimeout:        time.Second,
		JoinBackoffMin:      50 * time.Millisecond,
		JoinBackoffMax:      400 * time.Millisecond,
		DeadNodeReclaimTime: time.Second,
	}
}

func start(t *testing.T, cfg Config) *node {
	t.Helper()
	logs := &syncBuffer{}
	g, err := Start(cfg, zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger())
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		_ = g.Close()
		if t.Failed() {
			t.Logf("logs of %s:\n%s", cfg.Name, logs.String())
		}
	})
	return &node{Gossip: g, logs: logs}
}

// crash stops memberlist without leaving, as a killed process would.
func (n *node) crash() { n.shutdown(false) }

func wantState(observers []*node, name, state string) func() error {
	return func() error {
		for _, o := range observers {
			if got := o.State(name); got != state {
				return fmt.Errorf("%s sees %s as %q, want %q", o.cfg.Name, name, got, state)
			}
		}
		return nil
	}
}

// history records every state of name that o reports, through Changes.
type history struct {
	mu     sync.Mutex
	states []string
	stop   func()
	done   chan struct{}
}

func record(o *node, name string) *history {
	ch, stop := o.Changes()
	h := &history{stop: stop, done: make(chan struct{}), states: []string{o.State(name)}}
	go func() {
		defer close(h.done)
		for range ch {
			s := o.State(name)
			h.mu.Lock()
			if h.states[len(h.states)-1] != s {
				h.states = append(h.states, s)
			}
			h.mu.Unlock()
		}
	}()
	return h
}

func (h *history) get() []string {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.states)
}

func TestThreeNodesJoinLeaveAndRejoin(t *testing.T) {
	key := writeKeyFile(t)
	ca := testConfig("coordinator/c1", key)
	ca.Meta = map[string]string{"grpc": "127.0.0.1:7000"}
	a := start(t, ca)
	b := start(t, testConfig("host-b", key, a.LocalAddr()))
	cc := testConfig("host-c", key, b.LocalAddr())
	cc.Meta = map[string]string{"zone": "z1"}
	c := start(t, cc)
	all := []*node{a, b, c}

	changes, unsubscribe := a.Changes()
	defer unsubscribe()

	for _, n := range all {
		testkit.EventuallyErr(t, 30*time.Second, n.cfg.Name+" alive everywhere", wantState(all, n.cfg.Name, StateAlive))
	}
	for _, o := range all {
		ms := o.Members()
		if len(ms) != 3 {
			t.Fatalf("%s sees %d members, want 3: %+v", o.cfg.Name, len(ms), ms)
		}
		names := []string{ms[0].Name, ms[1].Name, ms[2].Name}
		if !slices.Equal(names, []string{"coordinator/c1", "host-b", "host-c"}) {
			t.Fatalf("%s: members not sorted by name: %v", o.cfg.Name, names)
		}
		for i, want := range []struct {
			addr, role string
			meta       map[string]string
		}{
			{a.LocalAddr(), RoleCoordinator, map[string]string{"grpc": "127.0.0.1:7000"}},
			{b.LocalAddr(), RoleAgent, nil},
			{c.LocalAddr(), RoleAgent, map[string]string{"zone": "z1"}},
		} {
			m := ms[i]
			if m.Addr != want.addr || m.Role != want.role || !equalMeta(m.Meta, want.meta) || m.State != StateAlive || m.Since.IsZero() {
				t.Errorf("%s sees %+v, want addr %s role %s meta %v alive", o.cfg.Name, m, want.addr, want.role, want.meta)
			}
		}
	}
	select {
	case <-changes:
	default:
		t.Fatal("Changes did not fire while members joined")
	}

	// Meta updates propagate.
	if err := c.SetMeta(map[string]string{"zone": "z2"}); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyErr(t, 20*time.Second, "meta update seen", func() error {
		for _, m := range a.Members() {
			if m.Name == "host-c" && m.Meta["zone"] != "z2" {
				return fmt.Errorf("a sees host-c meta %v", m.Meta)
			}
		}
		return nil
	})

	// Graceful leave: others see "left", not "dead".
	hb := record(b, "host-c")
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	testkit.EventuallyErr(t, 20*time.Second, "host-c left", wantState([]*node{a, b}, "host-c", StateLeft))
	if got := hb.get(); slices.Contains(got, StateDead) {
		t.Errorf("b saw host-c as dead during a graceful leave: %v", got)
	}
	if got := c.State("host-c"); got != StateLeft {
		t.Errorf("closed node sees itself as %q, want left", got)
	}

	// Restart with the same name (new port): alive again at its new address.
	c2 := start(t, testConfig("host-c", key, a.LocalAddr()))
	testkit.EventuallyErr(t, 30*time.Second, "restarted host-c alive", wantState([]*node{a, b, c2}, "host-c", StateAlive))
	testkit.EventuallyErr(t, 20*time.Second, "restarted host-c address", func() error {
		for _, m := range b.Members() {
			if m.Name == "host-c" && (m.Addr != c2.LocalAddr() || m.Meta != nil) {
				return fmt.Errorf("b sees host-c at %s meta %v, want %s and no meta", m.Addr, m.Meta, c2.LocalAddr())
			}
		}
		return nil
	})
}

func equalMeta(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestCrashIsSuspectThenDeadThenRejoins(t *testing.T) {
	key := writeKeyFile(t)
	a := start(t, testConfig("host-a", key))
	b := start(t, testConfig("host-b", key, a.LocalAddr()))
	c := start(t, testConfig("host-c", key, a.LocalAddr()))
	all := []*node{a, b, c}
	for _, n := range all {
		testkit.EventuallyErr(t, 30*time.Second, n.cfg.Name+" alive", wantState(all, n.cfg.Name, StateAlive))
	}
	typical, worst := a.cfg.DeadAfter(3)
	t.Logf("documented time to dead for 3 nodes: typical %s, bound %s", typical, worst)

	ha, hb := record(a, "host-c"), record(b, "host-c")
	addr := c.LocalAddr()
	crashed := time.Now()
	c.crash()
	// A failure deadline far beyond the bound: a loaded machine runs
	// memberlist's timers late. How long it took is logged, not asserted.
	testkit.EventuallyErr(t, worst+time.Minute, "host-c dead", wantState([]*node{a, b}, "host-c", StateDead))
	t.Logf("declared dead after %s (documented bound %s)", time.Since(crashed).Round(time.Millisecond), worst)

	sawSuspect := false
	for i, h := range []*history{ha, hb} {
		got := h.get()
		if got[0] != StateAlive || got[len(got)-1] != StateDead {
			t.Errorf("observer %d: history %v, want alive ... dead", i, got)
		}
		if slices.Contains(got, StateLeft) {
			t.Errorf("observer %d: crash reported as left: %v", i, got)
		}
		// The prober whose own probe failed reports suspect before dead.
		if i := slices.Index(got, StateSuspect); i >= 0 && slices.Index(got, StateDead) > i {
			sawSuspect = true
		}
	}
	if !sawSuspect {
		t.Error("no observer reported host-c suspect before dead")
	}

	// Restart on the same address: memberlist refutes the old incarnation.
	rc := testConfig("host-c", key, b.LocalAddr())
	rc.Bind = addr
	c2 := start(t, rc)
	testkit.EventuallyErr(t, 30*time.Second, "host-c alive again", wantState([]*node{a, b, c2}, "host-c", StateAlive))
}

func TestWrongKeyOrPlaintextDoesNotJoin(t *testing.T) {
	key := writeKeyFile(t)
	a := start(t, testConfig("host-a", key))
	b := start(t, testConfig("host-b", key, a.LocalAddr()))
	x := start(t, testConfig("host-x", writeKeyFile(t), a.LocalAddr(), b.LocalAddr()))
	pc := testConfig("host-p", "", a.LocalAddr())
	pc.Insecure = true
	p := start(t, pc)

	testkit.EventuallyErr(t, 30*time.Second, "a and b joined", wantState([]*node{a, b}, "host-b", StateAlive))
	// Wait until both intruders have tried (and failed) several times.
	for _, n := range []*node{x, p} {
		testkit.EventuallyErr(t, 30*time.Second, n.cfg.Name+" join attempts", func() error {
			if c := n.logs.Count("gossip join failed"); c < 3 {
				return fmt.Errorf("%d failed attempts", c)
			}
			return nil
		})
	}
	if !strings.Contains(p.logs.String(), "not encrypted") {
		t.Error("insecure mode did not log a warning")
	}
	for _, o := range []*node{a, b} {
		for _, intruder := range []string{"host-x", "host-p"} {
			if s := o.State(intruder); s != "" {
				t.Errorf("%s sees %s as %q", o.cfg.Name, intruder, s)
			}
		}
		if n := len(o.Members()); n != 2 {
			t.Errorf("%s sees %d members, want 2", o.cfg.Name, n)
		}
	}
	for _, n := range []*node{x, p} {
		if ms := n.Members(); len(ms) != 1 || ms[0].Name != n.cfg.Name {
			t.Errorf("%s sees %+v, want only itself", n.cfg.Name, ms)
		}
	}
}

func TestOtherLabelDoesNotJoin(t *testing.T) {
	key := writeKeyFile(t)
	a := start(t, testConfig("host-a", key))
	oc := testConfig("host-o", key, a.LocalAddr())
	oc.Label = "another-cluster"
	o := start(t, oc)
	testkit.EventuallyErr(t, 30*time.Second, "join attempts", func() error {
		if c := o.logs.Count("gossip join failed"); c < 3 {
			return fmt.Errorf("%d failed attempts", c)
		}
		return nil
	})
	if s := a.State("host-o"); s != "" {
		t.Errorf("a sees host-o as %q", s)
	}
	if s := o.State("host-a"); s != "" {
		t.Errorf("host-o sees a as %q", s)
	}
	if !strings.Contains(a.logs.String(), "unacceptable label") {
		t.Error("a did not log the foreign label")
	}
}

func TestSeedStartingLaterIsJoined(t *testing.T) {
	key := writeKeyFile(t)
	seedAddr := ports.Addr(t)
	b := start(t, testConfig("host-b", key, seedAddr))
	testkit.EventuallyErr(t, 20*time.Second, "first failed join", func() error {
		if b.logs.Count("gossip join failed") == 0 {
			return errors.New("no failed attempt yet")
		}
		return nil
	})
	sc := testConfig("host-seed", key)
	sc.Bind = seedAddr
	seed := start(t, sc)
	both := []*node{b, seed}
	testkit.EventuallyErr(t, 30*time.Second, "b joined the late seed", wantState(both, "host-seed", StateAlive))
	testkit.EventuallyErr(t, 30*time.Second, "seed sees b", wantState(both, "host-b", StateAlive))
}

func TestNameConflict(t *testing.T) {
	key := writeKeyFile(t)
	a := start(t, testConfig("host-a", key))
	b := start(t, testConfig("host-b", key, a.LocalAddr()))
	testkit.EventuallyErr(t, 30*time.Second, "b alive", wantState([]*node{a, b}, "host-b", StateAlive))

	dup := start(t, testConfig("host-b", key, a.LocalAddr()))
	testkit.EventuallyErr(t, 30*time.Second, "conflict reported", func() error {
		if err := dup.Conflict(); !errors.Is(err, ErrNameConflict) {
			return fmt.Errorf("Conflict() = %v", err)
		}
		return nil
	})
	if err := dup.Conflict(); !strings.Contains(err.Error(), b.LocalAddr()) {
		t.Errorf("conflict error %q does not name the other address %s", err, b.LocalAddr())
	}
	if b.Conflict() != nil || a.Conflict() != nil {
		t.Errorf("conflict reported by the original nodes: %v, %v", a.Conflict(), b.Conflict())
	}
	testkit.EventuallyErr(t, 20*time.Second, "a logs the conflict", func() error {
		if a.logs.Count("name conflict") == 0 {
			return errors.New("not logged")
		}
		return nil
	})
	for _, m := range a.Members() {
		if m.Name == "host-b" && (m.Addr != b.LocalAddr() || m.State != StateAlive) {
			t.Errorf("a sees host-b at %s (%s), want the original at %s", m.Addr, m.State, b.LocalAddr())
		}
	}
}

func TestConfigErrors(t *testing.T) {
	key := writeKeyFile(t)
	good := testConfig("host-a", key)
	cases := map[string]struct {
		mod  func(*Config)
		want string
	}{
		"no name":          {func(c *Config) { c.Name = "" }, "name"},
		"bad agent name":   {func(c *Config) { c.Name = "coordinator/x" }, "agent node name"},
		"bad coord name":   {func(c *Config) { c.Role = RoleCoordinator }, "coordinator node name"},
		"bad role":         {func(c *Config) { c.Role = "db" }, "role"},
		"bind no port":     {func(c *Config) { c.Bind = "127.0.0.1" }, "bind"},
		"bind hostname":    {func(c *Config) { c.Bind = "localhost:0" }, "IP address"},
		"advertise port":   {func(c *Config) { c.Advertise = "10.0.0.1:7946" }, "advertise"},
		"bad join":         {func(c *Config) { c.Join = []string{"nohostport"} }, "join[0]"},
		"no key":           {func(c *Config) { c.KeyFile = "" }, "key file"},
		"missing key":      {func(c *Config) { c.KeyFile = filepath.Join(t.TempDir(), "nope") }, "nope"},
		"long label":       {func(c *Config) { c.Label = strings.Repeat("l", 256) }, "label"},
		"meta too large":   {func(c *Config) { c.Meta = map[string]string{"k": strings.Repeat("v", 500)} }, "at most 512"},
		"empty meta key":   {func(c *Config) { c.Meta = map[string]string{"": "v"} }, "non-empty"},
		"negative timeout": {func(c *Config) { c.LeaveTimeout = -time.Second }, "leave timeout"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			g, err := Start(cfg, zerolog.Nop())
			if err == nil {
				g.Close()
				t.Fatalf("Start succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}

	// SetMeta refuses meta that would not fit and keeps the old one.
	a := start(t, good)
	if err := a.SetMeta(map[string]string{"k": strings.Repeat("v", 600)}); err == nil {
		t.Fatal("SetMeta accepted oversized meta")
	}
	if got := a.Members()[0].Meta; got != nil {
		t.Errorf("meta after refused SetMeta: %v", got)
	}
}
