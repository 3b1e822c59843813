package gossip

import (
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
)

// Member states reported by State and Members.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

// ErrNameConflict is wrapped by Conflict's error: another live node uses
// this node's name at another address.
var ErrNameConflict = errors.New("gossip node name already in use")

// Member is one node as this node sees it.
type Member struct {
	Name  string
	Addr  string // host:port of its gossip endpoint
	Role  string // RoleAgent or RoleCoordinator ("" if its meta was unreadable)
	Meta  map[string]string
	State string    // StateAlive, StateSuspect, StateDead or StateLeft
	Since time.Time // when this node saw it enter State
}

type member struct {
	Member
	leaving      bool      // its last meta said it is leaving
	suspectUntil time.Time // a suspect still suspect then has refuted
}

// Gossip is a running member of the gossip cluster. Its methods are safe for
// concurrent use.
type Gossip struct {
	cfg Config
	log zerolog.Logger
	ml  *memberlist.Memberlist

	metaMu  sync.Mutex
	meta    map[string]string
	metaEnc atomic.Pointer[[]byte] // what NodeMeta returns

	mu        sync.Mutex
	members   map[string]*member
	subs      map[int]chan struct{}
	nextSub   int
	conflict  error
	conflictT time.Time

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Start validates cfg, loads the key, starts memberlist on cfg.Bind and joins
// cfg.Join in the background. Close it when done.
func Start(cfg Config, logger zerolog.Logger) (*Gossip, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("gossip config: %w", err)
	}
	logger = logger.With().Str("component", "gossip").Logger()
	g := &Gossip{
		cfg:     cfg,
		log:     logger,
		members: make(map[string]*member),
		subs:    make(map[int]chan struct{}),
		stop:    make(chan struct{}),
	}
	if err := g.setMetaLocked(cfg.Meta, false); err != nil {
		return nil, fmt.Errorf("gossip config: %w", err)
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	host, port, _ := splitAddr("bind", cfg.Bind, true)
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.Advertise != "" {
		ahost, aport, _ := splitAddr("advertise", cfg.Advertise, false)
		mc.AdvertiseAddr = ahost
		if aport != 0 {
			mc.AdvertisePort = aport
		}
	}
	mc.Label = cfg.Label
	if cfg.Insecure {
		logger.Warn().Msg("gossip is not encrypted (insecure mode): anyone who can reach the port can join and read membership")
	} else {
		key, err := LoadKey(cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		if fi, err := os.Stat(cfg.KeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			logger.Warn().Str("path", cfg.KeyFile).Msgf("gossip key file is readable by others (mode %v)", fi.Mode().Perm())
		}
		mc.SecretKey = key
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.SuspicionMaxTimeoutMult = cfg.SuspicionMaxTimeoutMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = cfg.PushPullInterval
	mc.GossipToTheDeadTime = cfg.PushPullInterval
	mc.TCPTimeout = cfg.TCPTimeout
	mc.DeadNodeReclaimTime = cfg.DeadNodeReclaimTime
	mc.UDPBufferSize = PacketSize
	mc.HandoffQueueDepth = 1024
	d := &delegate{g: g}
	mc.Delegate = d
	mc.Events = d
	mc.Conflict = d
	mc.Ping = d
	mc.LogOutput = nil
	mc.Logger = log.New(&logWriter{log: logger, onSuspect: g.markSuspect}, "", 0)

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Bind, err)
	}
	g.ml = ml
	logger.Info().Str("host", cfg.Name).Str("addr", g.LocalAddr()).Str("label", cfg.Label).
		Msg("gossip started")

	var seeds []string
	for _, s := range cfg.Join {
		if s != g.LocalAddr() && s != cfg.Bind && !slices.Contains(seeds, s) {
			seeds = append(seeds, s)
		}
	}
	g.wg.Add(2)
	go g.joinLoop(seeds)
	go g.tickLoop()
	return g, nil
}

// LocalAddr is the host:port this node advertises.
func (g *Gossip) LocalAddr() string {
	return g.ml.LocalNode().Address()
}

// StateSince returns a member's state and when this node saw it enter that
// state ("" and the zero time if never seen).
func (g *Gossip) StateSince(name string) (string, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m, ok := g.members[name]; ok {
		return m.State, m.Since
	}
	return "", time.Time{}
}

// State returns name's state as this node sees it: StateAlive, StateSuspect,
// StateDead, StateLeft, or "" if never seen (or forgotten).
func (g *Gossip) State(name string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m, ok := g.members[name]; ok {
		return m.State
	}
	return ""
}

// Members returns every known member, this node included, sorted by name.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, m := range g.members {
		c := m.Member
		c.Meta = cloneMeta(m.Meta)
		out = append(out, c)
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Changes returns a channel that receives a value (coalesced: at most one
// pending) whenever any member's state, address or meta changes, and a
// function that unsubscribes and closes the channel.
func (g *Gossip) Changes() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	g.mu.Lock()
	id := g.nextSub
	g.nextSub++
	g.subs[id] = ch
	g.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			g.mu.Lock()
			delete(g.subs, id)
			g.mu.Unlock()
			close(ch)
		})
	}
}

// Conflict returns an error wrapping ErrNameConflict while another live node
// uses this node's name at another address (seen within the last two
// push/pull intervals), else nil.
func (g *Gossip) Conflict() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conflict != nil && time.Since(g.conflictT) < 2*g.cfg.PushPullInterval+g.cfg.TCPTimeout {
		return g.conflict
	}
	return nil
}

// SetMeta replaces this node's extra meta and gossips it.
func (g *Gossip) SetMeta(meta map[string]string) error {
	g.metaMu.Lock()
	err := g.setMetaLocked(meta, false)
	g.metaMu.Unlock()
	if err != nil {
		return err
	}
	if err := g.ml.UpdateNode(g.cfg.LeaveTimeout); err != nil {
		return fmt.Errorf("gossip meta update: %w", err)
	}
	return nil
}

// setMetaLocked validates and installs the meta NodeMeta returns.
func (g *Gossip) setMetaLocked(meta map[string]string, leaving bool) error {
	if _, err := encodeMeta(g.cfg.Role, meta, true); err != nil { // worst case fits
		return err
	}
	b, err := encodeMeta(g.cfg.Role, meta, leaving)
	if err != nil {
		return err
	}
	g.meta = cloneMeta(meta)
	g.metaEnc.Store(&b)
	return nil
}

// Close leaves the cluster gracefully (others see StateLeft): it gossips a
// meta update saying so, then memberlist's Leave, each bounded by
// LeaveTimeout, then shuts memberlist down. Safe to call more than once.
func (g *Gossip) Close() error {
	g.shutdown(true)
	return g.closeErr
}

func (g *Gossip) shutdown(graceful bool) {
	g.closeOnce.Do(func() {
		close(g.stop)
		if graceful {
			g.metaMu.Lock()
			_ = g.setMetaLocked(g.meta, true) // validated at Start/SetMeta
			g.metaMu.Unlock()
			if err := g.ml.UpdateNode(g.cfg.LeaveTimeout); err != nil {
				g.log.Warn().Err(err).Msg("gossip: announce leave")
			}
			if err := g.ml.Leave(g.cfg.LeaveTimeout); err != nil {
				g.log.Warn().Err(err).Msg("gossip: leave")
			}
		}
		if err := g.ml.Shutdown(); err != nil {
			g.closeErr = fmt.Errorf("gossip shutdown: %w", err)
		}
		g.wg.Wait()
		if graceful {
			g.mu.Lock()
			if m, ok := g.members[g.cfg.Name]; ok {
				g.setStateLocked(m, StateLeft, time.Now())
			}
			g.mu.Unlock()
		}
		g.log.Info().Bool("graceful", graceful).Msg("gossip stopped")
	})
}

// joinLoop joins the seeds, with backoff, whenever this node sees no other
// live member: at start, and after everyone else died or left.
func (g *Gossip) joinLoop(seeds []string) {
	defer g.wg.Done()
	if len(seeds) == 0 {
		return
	}
	backoff := g.cfg.JoinBackoffMin
	attempt := 0
	for {
		if g.ml.NumMembers() > 1 {
			backoff, attempt = g.cfg.JoinBackoffMin, 0
			if !g.wait(g.cfg.PushPullInterval) {
				return
			}
			continue
		}
		attempt++
		n, err := g.ml.Join(seeds)
		if g.ml.NumMembers() > 1 {
			g.log.Info().Int("contacted", n).Int("attempt", attempt).Msg("gossip joined cluster")
			continue
		}
		ev := g.log.Warn()
		if attempt > 3 && attempt%10 != 0 {
			ev = g.log.Debug()
		}
		if err == nil {
			err = errors.New("no other member seen")
		}
		ev.Err(err).Int("attempt", attempt).Strs("seeds", seeds).Dur("retry_in", backoff).Msg("gossip join failed")
		// Full jitter in [backoff/2, backoff].
		if !g.wait(backoff/2 + rand.N(backoff/2+1)) {
			return
		}
		backoff = min(2*backoff, g.cfg.JoinBackoffMax)
	}
}

// tickLoop ends suspicions memberlist must have resolved and forgets old
// dead and left members.
func (g *Gossip) tickLoop() {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case now := <-t.C:
			g.tick(now)
		}
	}
}

func (g *Gossip) tick(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, m := range g.members {
		switch m.State {
		case StateSuspect:
			if now.After(m.suspectUntil) {
				g.setStateLocked(m, StateAlive, now)
			}
		case StateDead, StateLeft:
			if now.Sub(m.Since) > g.cfg.ForgetAfter && name != g.cfg.Name {
				delete(g.members, name)
				g.notifyLocked()
			}
		}
	}
}

func (g *Gossip) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-g.stop:
		return false
	case <-t.C:
		return true
	}
}

// setStateLocked moves m to state (if not already there) and notifies.
func (g *Gossip) setStateLocked(m *member, state string, now time.Time) {
	if m.State == state {
		return
	}
	g.log.Debug().Str("host", m.Name).Str("from", m.State).Str("to", state).Msg("gossip member state")
	m.State = state
	m.Since = now
	g.notifyLocked()
}

func (g *Gossip) notifyLocked() {
	for _, ch := range g.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// markSuspect records that this node's own probe of name failed.
func (g *Gossip) markSuspect(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[name]
	if !ok || m.State != StateAlive {
		return
	}
	now := time.Now()
	m.suspectUntil = now.Add(g.cfg.maxSuspicion(len(g.members)))
	g.setStateLocked(m, StateSuspect, now)
}

// observe records an alive node's address and meta (join or update).
func (g *Gossip) observe(n *memberlist.Node) {
	w, ok := decodeMeta(n.Meta)
	if !ok {
		g.log.Debug().Str("host", n.Name).Int("bytes", len(n.Meta)).Msg("gossip: unreadable node meta")
	}
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	m, found := g.members[n.Name]
	if !found {
		m = &member{Member: Member{Name: n.Name}}
		g.members[n.Name] = m
	}
	addr := n.Address()
	changed := !found || m.Addr != addr || m.Role != w.Role || m.leaving != w.Leaving || !maps.Equal(m.Meta, w.Meta)
	m.Addr, m.Role, m.Meta, m.leaving = addr, w.Role, cloneMeta(w.Meta), w.Leaving
	if m.State != StateAlive {
		g.setStateLocked(m, StateAlive, now)
	} else if changed {
		g.notifyLocked()
	}
}

// delegate implements memberlist's Delegate, EventDelegate, ConflictDelegate
// and PingDelegate. memberlist calls some of these with its node lock held:
// none of them calls back into memberlist.
type delegate struct{ g *Gossip }

// NodeMeta returns this node's encoded meta (validated to fit MetaMaxSize).
func (d *delegate) NodeMeta(limit int) []byte {
	b := *d.g.metaEnc.Load()
	if len(b) > limit { // cannot happen (validated); never let memberlist panic
		return nil
	}
	return b
}

// NotifyMsg drops user messages: this package sends none.
func (d *delegate) NotifyMsg([]byte) {}

// GetBroadcasts has no user broadcasts.
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }

// LocalState adds nothing to push/pull syncs.
func (d *delegate) LocalState(bool) []byte { return nil }

// MergeRemoteState ignores remote user state.
func (d *delegate) MergeRemoteState([]byte, bool) {}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.g.observe(n) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.g.observe(n) }

func (d *delegate) NotifyLeave(n *memberlist.Node) {
	g := d.g
	w, _ := decodeMeta(n.Meta)
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[n.Name]
	if !ok {
		m = &member{Member: Member{Name: n.Name, Addr: n.Address(), Role: w.Role, Meta: cloneMeta(w.Meta)}}
		g.members[n.Name] = m
	}
	state := StateDead
	if m.leaving || w.Leaving {
		state = StateLeft
	}
	g.setStateLocked(m, state, time.Now())
}

func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	g := d.g
	g.log.Error().Str("host", existing.Name).Str("addr", existing.Address()).Str("other_addr", other.Address()).
		Msg("gossip node name conflict: two nodes use this name; the one at other_addr is refused until the first is gone (give every node a unique name)")
	if existing.Name != g.cfg.Name {
		return
	}
	g.mu.Lock()
	g.conflict = fmt.Errorf("node %q at %s: also used by %s: %w", existing.Name, existing.Address(), other.Address(), ErrNameConflict)
	g.conflictT = time.Now()
	g.mu.Unlock()
}

// AckPayload adds nothing to acks.
func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete: a direct ack proves the node reachable, ending a
// suspicion this node raised.
func (d *delegate) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	g := d.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if m, ok := g.members[n.Name]; ok && m.State == StateSuspect {
		g.setStateLocked(m, StateAlive, time.Now())
	}
}

// cloneMeta copies m; empty gives nil.
func cloneMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

var (
	_ memberlist.Delegate         = (*delegate)(nil)
	_ memberlist.EventDelegate    = (*delegate)(nil)
	_ memberlist.ConflictDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate     = (*delegate)(nil)
	_ io.Writer                   = (*logWriter)(nil)
)
