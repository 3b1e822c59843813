package sim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// maxRecvBytes bounds one message from the coordinator (as the agent).
const maxRecvBytes = 16 << 20

// connectTimeout bounds opening a stream.
const connectTimeout = 15 * time.Second

// keepaliveTimeout is how long a host waits for its keepalive ping's
// answer (with Config.Keepalive), and its connection's TCP_USER_TIMEOUT,
// as gRPC sets it from the same.
const keepaliveTimeout = 10 * time.Second

type hostCmd int

const (
	cmdDisconnect hostCmd = iota + 1
	cmdReconnect
	cmdFailNext
)

type stepKind int

const (
	stepNone    stepKind = iota
	stepFetch            // moving the artifact's bytes (Config.Fetch); ends in stepInstall or FAILED
	stepInstall          // fetch..switch; ends FAILED or in CHECKING
	stepCheck            // checks; ends HEALTHY or REVERTED
)

// svcState is one service on one host. Only the host's loop touches it.
type svcState struct {
	name     string
	gen      int64
	phase    v1.Phase
	current  string
	target   string
	lastGood string
	reason   string

	step     stepKind
	due      time.Time
	fail     bool          // the install in progress fails
	revert   bool          // the checks in progress fail
	checkFor time.Duration // the checks' duration
	pending  *v1.Assignment

	// With Config.Fetch: the artifact being fetched for the install
	// (stepFetch) and the install's duration once it is here; the
	// artifact of Assignment.stage and whether it is held (staged).
	fetchSHA   string
	installFor time.Duration
	stageSHA   string
	staged     string

	sentHealthy string // version of the last HEALTHY report sent ("" = other)
}

func (s *svcState) report(now time.Time) *v1.ServiceReport {
	return &v1.ServiceReport{
		Service: s.name, Generation: s.gen, Phase: s.phase,
		CurrentVersion: s.current, TargetVersion: s.target, LastGoodVersion: s.lastGood,
		Reason: s.reason, At: timestamppb.New(now), StagedSha256: s.staged,
	}
}

// session is one Connect stream.
type session struct {
	id       uint64
	cc       *grpc.ClientConn
	stream   grpc.BidiStreamingClient[v1.ConnectRequest, v1.ConnectResponse]
	cancel   context.CancelFunc
	done     chan struct{} // closed when the loop drops the session
	answered bool          // the coordinator's first response arrived
	semHeld  bool
	arrival  *atomic.Pointer[arrivalConn]
}

type dialResult struct {
	id     uint64
	cc     *grpc.ClientConn
	stream grpc.BidiStreamingClient[v1.ConnectRequest, v1.ConnectResponse]
	cancel context.CancelFunc
	err    error
	// arrival is the connection the stream is on (set by the dialer).
	arrival *atomic.Pointer[arrivalConn]
}

type recvResult struct {
	id   uint64
	resp *v1.ConnectResponse
	at   time.Time
	// arrived is when its last bytes reached the socket (arrivalConn;
	// zero if unknown).
	arrived time.Time
	err     error
}

// host is one simulated agent. Its loop goroutine owns everything but mu's
// fields, cmds and the channels.
type host struct {
	f      *Fleet
	idx    int
	id     string
	labels map[string]string
	rnd    *rand.Rand // installs and checks
	nrnd   *rand.Rand // reconnect jitter
	cmds   chan hostCmd
	dialc  chan dialResult
	recvc  chan recvResult

	svcs     map[string]*svcState
	unsent   map[string]bool // services emitted since the last flush
	good     map[string]bool // releases that ran healthy here
	failNext bool
	offline  bool
	sess     *session
	dialing  bool
	nextID   uint64
	attempt  int
	retryAt  time.Time // zero: no reconnect scheduled

	mu     sync.Mutex
	status map[string]*v1.ServiceReport // latest status per service, for Report
	held   map[string]bool              // artifacts (sha256) held, verified

	// The bandwidth model (transfer.go), with Config.Fetch.
	inflight  map[string]bool // artifacts being fetched (loop only)
	fetchc    chan fetchResult
	slots     chan struct{} // peer uploads being served
	up, down  *bucket
	fromCoord atomic.Int64 // modeled bytes fetched from the coordinator
	fromPeers atomic.Int64 // ... from other hosts
	served    atomic.Int64 // ... sent to other hosts
	uploads   atomic.Int64 // peer downloads served
}

func newHost(f *Fleet, i int) *host {
	labels := map[string]string{"zone": []string{"a", "b", "c"}[i%3]}
	maps.Copy(labels, f.cfg.Labels)
	return &host{
		f: f, idx: i, id: HostID(f.cfg.HostPrefix, i), labels: labels,
		rnd: f.newRand(i, 0), nrnd: f.newRand(i, 1),
		cmds:   make(chan hostCmd, 4),
		dialc:  make(chan dialResult, 1),
		recvc:  make(chan recvResult, 1),
		svcs:   map[string]*svcState{},
		unsent: map[string]bool{},
		good:   map[string]bool{},
		status: map[string]*v1.ServiceReport{},
		held:   map[string]bool{},

		inflight: map[string]bool{},
		fetchc:   make(chan fetchResult),
		slots:    make(chan struct{}, f.cfg.PeerMaxUploads),
		up:       newBucket(f.cfg.UploadRate, f.cfg.ByteScale),
		down:     newBucket(f.cfg.DownloadRate, f.cfg.ByteScale),
	}
}

func (h *host) run() {
	ctx := h.f.ctx
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	defer h.dropSession(errors.New("fleet closing"))
	h.startDial(ctx)
	for {
		now := time.Now()
		h.advance(now)
		h.flush()
		if !h.offline && h.sess == nil && !h.dialing && !h.retryAt.IsZero() && !now.Before(h.retryAt) {
			h.retryAt = time.Time{}
			h.startDial(ctx)
		}
		if next := h.nextWake(); !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			h.drainDial()
			return
		case c := <-h.cmds:
			h.onCmd(ctx, c)
		case d := <-h.dialc:
			h.onDial(d)
		case r := <-h.recvc:
			h.onRecv(r)
		case r := <-h.fetchc:
			h.onFetch(r)
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// nextWake is the earliest step end or reconnect time (zero if none).
func (h *host) nextWake() time.Time {
	var next time.Time
	for _, s := range h.svcs {
		if s.step != stepNone && s.step != stepFetch && (next.IsZero() || s.due.Before(next)) {
			next = s.due
		}
	}
	if !h.retryAt.IsZero() && !h.offline && (next.IsZero() || h.retryAt.Before(next)) {
		next = h.retryAt
	}
	return next
}

func (h *host) onCmd(ctx context.Context, c hostCmd) {
	switch c {
	case cmdDisconnect:
		h.offline = true
		h.retryAt = time.Time{}
		h.dropSession(errors.New("disconnected by fault injection"))
	case cmdReconnect:
		if h.offline {
			h.offline = false
			h.attempt = 0
			if h.sess == nil && !h.dialing {
				h.startDial(ctx)
			}
		}
	case cmdFailNext:
		h.failNext = true
	}
}

// startDial opens a connection and a stream in the background; the result
// arrives on dialc.
func (h *host) startDial(ctx context.Context) {
	h.dialing = true
	h.nextID++
	id := h.nextID
	go func() {
		res := h.dial(ctx, id)
		h.dialc <- res // capacity 1, one dial at a time: never blocks
	}()
}

func (h *host) dial(ctx context.Context, id uint64) dialResult {
	select {
	case h.f.sem <- struct{}{}:
	case <-ctx.Done():
		return dialResult{id: id, err: ctx.Err()}
	}
	release := func() { <-h.f.sem }
	cfg := h.f.cfg
	opts := append(grpcwindow.DialOptions(), // as agents dial
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
		// Small buffers: thousands of connections share this process.
		grpc.WithReadBufferSize(8<<10),
		grpc.WithWriteBufferSize(8<<10),
	)
	if cfg.Keepalive > 0 {
		opts = append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: cfg.Keepalive, Timeout: keepaliveTimeout, PermitWithoutStream: true,
		}))
	}
	// Every connection keeps its reads' receive times (arrivalConn).
	arrival := &atomic.Pointer[arrivalConn]{}
	opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		ac, err := h.dialTCP(ctx, addr)
		if err != nil {
			return nil, err
		}
		arrival.Store(ac)
		return ac, nil
	}))
	cc, err := grpc.NewClient("passthrough:///"+cfg.Coordinator, opts...)
	if err != nil {
		release()
		return dialResult{id: id, err: fmt.Errorf("dial %s: %w", cfg.Coordinator, err)}
	}
	sctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(connectTimeout, cancel)
	stream, err := v1.NewAgentServiceClient(cc).Connect(sctx)
	if !t.Stop() && err == nil {
		err = fmt.Errorf("no stream after %s", connectTimeout)
	}
	if err != nil {
		cancel()
		_ = cc.Close()
		release()
		return dialResult{id: id, err: fmt.Errorf("connect %s: %w", cfg.Coordinator, err)}
	}
	return dialResult{id: id, cc: cc, stream: stream, cancel: cancel, arrival: arrival}
}

// dialTCP opens the host's connection to the coordinator at addr, from
// its source address (Config.SourceAddrs), with the TCP_USER_TIMEOUT
// gRPC's own dialer sets when keepalive is on (and skips on a wrapped
// connection), read with receive timestamps.
func (h *host) dialTCP(ctx context.Context, addr string) (*arrivalConn, error) {
	cfg := h.f.cfg
	var d net.Dialer
	if cfg.SourceAddrs > 0 {
		d.LocalAddr = &net.TCPAddr{IP: sourceIP(h.idx, cfg.SourceAddrs)}
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if cfg.Keepalive > 0 {
		if err := setUserTimeout(tc, keepaliveTimeout); err != nil {
			_ = c.Close()
			return nil, err
		}
	}
	ac, err := newArrivalConn(tc)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return ac, nil
}

// drainDial closes a connection whose dial was in flight at shutdown.
func (h *host) drainDial() {
	if !h.dialing {
		return
	}
	d := <-h.dialc
	h.dialing = false
	if d.err == nil {
		d.cancel()
		_ = d.cc.Close()
		<-h.f.sem
	}
}

func (h *host) onDial(d dialResult) {
	h.dialing = false
	if d.err != nil {
		h.scheduleRetry(d.err)
		return
	}
	s := &session{id: d.id, cc: d.cc, stream: d.stream, cancel: d.cancel, done: make(chan struct{}), semHeld: true, arrival: d.arrival}
	if h.offline {
		h.sess = s
		h.dropSession(errors.New("disconnected while dialing"))
		return
	}
	h.sess = s
	hello := &v1.Hello{HostId: h.id, Labels: h.labels, AgentVersion: h.f.cfg.AgentVersion}
	if h.f.cfg.P2P {
		hello.PeerAddress = peerAddress(h.id)
	}
	now := time.Now()
	for _, name := range slices.Sorted(maps.Keys(h.svcs)) {
		hello.Services = append(hello.Services, h.svcs[name].report(now))
	}
	if err := s.stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		h.dropSession(fmt.Errorf("hello: %w", err))
		h.scheduleRetry(err)
		return
	}
	h.f.hellos.Add(1)
	clear(h.unsent) // the hello carried them
	for _, st := range h.svcs {
		h.sent(st, false)
	}
	go h.recvLoop(s)
}

func (h *host) recvLoop(s *session) {
	for {
		resp, err := s.stream.Recv()
		// The socket's time first: a read after it can only be later
		// than this set's bytes and the goroutine's receipt.
		var arrived time.Time
		if c := s.arrival.Load(); c != nil {
			arrived = c.arrived()
		}
		r := recvResult{id: s.id, resp: resp, at: time.Now(), arrived: arrived, err: err}
		select {
		case h.recvc <- r:
		case <-s.done:
			return
		}
		if err != nil {
			return
		}
	}
}

func (h *host) onRecv(r recvResult) {
	s := h.sess
	if s == nil || s.id != r.id {
		return // from a dropped session
	}
	if r.err != nil {
		h.dropSession(r.err)
		h.scheduleRetry(r.err)
		return
	}
	if !s.answered {
		s.answered = true
		h.attempt = 0
		if s.semHeld {
			s.semHeld = false
			<-h.f.sem
		}
		h.f.connected.Add(1)
		h.f.notify()
	}
	h.f.responses.Add(1)
	if ts := r.resp.GetSentAt(); ts != nil {
		h.f.recordLatency(r.at, r.at.Sub(ts.AsTime()), r.arrived.Sub(ts.AsTime()), !r.arrived.IsZero())
	}
	now := time.Now()
	for _, a := range r.resp.GetAssignments() {
		h.f.assignments.Add(1)
		h.assign(a, now)
	}
}

// dropSession ends the current stream, if any.
func (h *host) dropSession(why error) {
	s := h.sess
	if s == nil {
		return
	}
	h.sess = nil
	close(s.done)
	s.cancel()
	_ = s.cc.Close()
	if s.semHeld {
		<-h.f.sem
	}
	if s.answered {
		h.f.connected.Add(-1)
		h.f.disconnects.Add(1)
		h.f.notify()
	}
	h.f.log.Debug().Str("host", h.id).Err(why).Msg("stream down")
}

// scheduleRetry plans the next connection attempt: jittered exponential
// backoff, as the agent.
func (h *host) scheduleRetry(why error) {
	if h.offline || h.f.ctx.Err() != nil {
		return
	}
	cfg := h.f.cfg
	d := cfg.ReconnectBase
	for i := 0; i < h.attempt && d < cfg.ReconnectMax; i++ {
		d *= 2
	}
	d = min(d, cfg.ReconnectMax)
	half := d / 2
	d = half + time.Duration(h.nrnd.Int64N(int64(half)+1))
	h.attempt++
	h.retryAt = time.Now().Add(d)
	h.f.log.Debug().Str("host", h.id).Err(why).Dur("retry_in", d).Msg("reconnect scheduled")
}

// assign takes an assignment from the coordinator.
func (h *host) assign(a *v1.Assignment, now time.Time) {
	name, v := a.GetService(), a.GetRelease().GetVersion()
	if name == "" || v == "" {
		h.f.log.Debug().Str("host", h.id).Str("service", name).Msg("assignment without service or release ignored")
		return
	}
	st := h.svcs[name]
	if st == nil {
		st = &svcState{name: name, phase: v1.Phase_PHASE_IDLE}
		h.svcs[name] = st
	}
	staged := st.staged
	if a.GetStage() != nil {
		h.f.stages.Add(1)
	}
	if h.f.cfg.Fetch && a.GetGeneration() >= st.gen {
		h.stage(st, a)
	}
	switch {
	case a.GetGeneration() <= st.gen: // stale or a repeat
	case st.pending != nil && a.GetGeneration() <= st.pending.GetGeneration():
	case st.step == stepCheck:
		st.pending = a // taken up when the checks end
	default:
		if st.staged != staged && st.staged != "" {
			h.f.staged.Add(1)
		}
		h.apply(st, a, now)
		return
	}
	if st.staged != staged {
		if st.staged != "" {
			h.f.staged.Add(1)
		}
		h.emit(st, now)
	}
}

// stage takes an assignment's stage: fetch its artifact in the background
// (the assignment's sources first) and report it staged once held; no
// stage drops what was staged (the bytes stay held).
func (h *host) stage(st *svcState, a *v1.Assignment) {
	art := a.GetStage().GetArtifact()
	sha := art.GetSha256()
	st.stageSHA, st.staged = sha, ""
	switch {
	case sha == "":
	case h.holds(sha):
		st.staged = sha
	default:
		h.startFetch(art, a.GetSources())
	}
}

// onFetch takes the end of a fetch: the installs waiting for it go on (or
// fail), a stage waiting for it is reported.
func (h *host) onFetch(r fetchResult) {
	delete(h.inflight, r.sha)
	now := time.Now()
	if r.err != nil {
		h.f.log.Debug().Str("host", h.id).Str("sha256", r.sha).Err(r.err).Msg("fetch failed")
	}
	for _, st := range h.svcs {
		staged := st.stageSHA == r.sha && r.err == nil && st.staged != r.sha
		if staged {
			st.staged = r.sha
			h.f.staged.Add(1)
		}
		switch {
		case st.step == stepFetch && st.fetchSHA == r.sha && r.err != nil:
			st.step = stepNone
			st.phase = v1.Phase_PHASE_FAILED
			st.reason = "fetch: " + r.err.Error()
			h.f.failures.Add(1)
			h.emit(st, now)
		case st.step == stepFetch && st.fetchSHA == r.sha:
			st.step, st.due = stepInstall, now.Add(st.installFor)
			if staged {
				h.emit(st, now)
			}
		case staged:
			h.emit(st, now)
		}
	}
}

// apply acts on an assignment; the service is settled or installing (an
// install before the switch is abandoned).
func (h *host) apply(st *svcState, a *v1.Assignment, now time.Time) {
	st.pending = nil
	st.step = stepNone
	st.gen = a.GetGeneration()
	v := a.GetRelease().GetVersion()
	st.target = v
	st.reason = ""
	if st.current == v {
		// Already running it (the previous release never stopped, or a
		// revert put it back): take the new generation, no restart.
		st.phase = v1.Phase_PHASE_HEALTHY
		h.emit(st, now)
		return
	}
	cfg := h.f.cfg
	// Draw everything for this install up front, in a fixed order, so the
	// outcome of a host's k-th install depends only on the seed.
	install := cfg.InstallDelay + h.jitter(cfg.InstallJitter)
	failDraw := h.rnd.Float64()
	st.checkFor = cfg.CheckDelay + h.jitter(cfg.CheckJitter)
	revertDraw := h.rnd.Float64()
	known := h.good[v]
	st.fail = !known && failDraw < math.Float64frombits(h.f.failRate.Load())
	st.revert = !known && revertDraw < cfg.RevertRate
	if h.failNext {
		h.failNext, st.fail = false, true
	}
	st.step, st.due = stepInstall, now.Add(install)
	st.fetchSHA = ""
	if art := a.GetRelease().GetArtifact(); cfg.Fetch && art.GetSha256() != "" && !h.holds(art.GetSha256()) {
		st.step, st.due = stepFetch, time.Time{}
		st.fetchSHA, st.installFor = art.GetSha256(), install
		h.startFetch(art, a.GetSources())
	}
	st.phase = v1.Phase_PHASE_FETCHING
	h.f.installs.Add(1)
	if !cfg.QuietPhases {
		h.emit(st, now)
	} else {
		h.setStatus(st, now)
	}
}

func (h *host) jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(h.rnd.Int64N(int64(max) + 1))
}

// advance finishes every step that is due.
func (h *host) advance(now time.Time) {
	for _, st := range h.svcs {
		for st.step != stepNone && st.step != stepFetch && !now.Before(st.due) {
			h.finishStep(st, now)
		}
	}
}

func (h *host) finishStep(st *svcState, now time.Time) {
	switch st.step {
	case stepInstall:
		if st.fail {
			st.step = stepNone
			st.phase = v1.Phase_PHASE_FAILED
			st.reason = "simulated install failure"
			h.f.failures.Add(1)
			h.emit(st, now)
			break
		}
		st.current = st.target
		st.step, st.due = stepCheck, st.due.Add(st.checkFor)
		st.phase = v1.Phase_PHASE_CHECKING
		if !h.f.cfg.QuietPhases {
			h.emit(st, now)
		} else {
			h.setStatus(st, now)
		}
		return
	case stepCheck:
		st.step = stepNone
		if st.revert {
			st.current = st.lastGood
			st.phase = v1.Phase_PHASE_REVERTED
			st.reason = "simulated health check failure"
			h.f.reverts.Add(1)
		} else {
			st.lastGood = st.current
			h.good[st.current] = true
			st.phase = v1.Phase_PHASE_HEALTHY
		}
		h.emit(st, now)
	}
	if st.pending != nil {
		h.apply(st, st.pending, now)
	}
}

func (h *host) setStatus(st *svcState, now time.Time) *v1.ServiceReport {
	r := st.report(now)
	h.mu.Lock()
	h.status[st.name] = r
	h.mu.Unlock()
	return r
}

// emit records the service's status, to be sent at the end of the loop's
// turn when the stream is up (else the next Hello carries it): reports of
// one service coalesce, the latest is sent, as the agent's reporter does
// (agent/conn.go). Phases that follow each other within one turn (an
// install and checks of no duration) are one report.
func (h *host) emit(st *svcState, now time.Time) {
	h.setStatus(st, now)
	if h.sess == nil {
		return
	}
	h.unsent[st.name] = true
}

// flush sends the latest status of every service emitted since the last
// flush.
func (h *host) flush() {
	s := h.sess
	if s == nil || len(h.unsent) == 0 {
		clear(h.unsent)
		return
	}
	for _, name := range slices.Sorted(maps.Keys(h.unsent)) {
		st := h.svcs[name]
		h.mu.Lock()
		r := h.status[name]
		h.mu.Unlock()
		if err := s.stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
			// Not lost: the next Hello carries the full status.
			clear(h.unsent)
			h.dropSession(fmt.Errorf("send report: %w", err))
			h.scheduleRetry(err)
			return
		}
		h.f.reports.Add(1)
		h.sent(st, true)
	}
	clear(h.unsent)
}

// sent accounts for the service's status having been sent; fresh says it
// was sent as a report of a fresh outcome (not repeated in a Hello).
func (h *host) sent(st *svcState, fresh bool) {
	v := ""
	if st.phase == v1.Phase_PHASE_HEALTHY {
		v = st.current
	}
	if fresh && (st.phase == v1.Phase_PHASE_FAILED || st.phase == v1.Phase_PHASE_REVERTED) {
		h.f.lastFailure.Store(time.Now().UnixNano())
	}
	if fresh && st.phase == v1.Phase_PHASE_HEALTHY {
		h.f.markHealthy(time.Now())
	}
	h.f.moveHealthy(st.name, st.sentHealthy, v)
	st.sentHealthy = v
}
