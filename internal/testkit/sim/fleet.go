package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// ErrNoHost is returned for a host index outside the fleet.
var ErrNoHost = errors.New("no such simulated host")

// ErrClosed is returned by calls on a closed fleet.
var ErrClosed = errors.New("simulated fleet closed")

// Fleet is a running simulated fleet. Its methods are safe for concurrent
// use.
type Fleet struct {
	cfg   Config
	log   zerolog.Logger
	hosts []*host

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{} // connection attempts in flight

	failRate atomic.Uint64 // math.Float64bits

	mu      sync.Mutex
	healthy map[svcVersion]int // hosts whose last sent report is HEALTHY on version
	changed chan struct{}      // closed and replaced when healthy or connected change

	connected   atomic.Int64
	hellos      atomic.Uint64
	reports     atomic.Uint64
	responses   atomic.Uint64
	assignments atomic.Uint64
	installs    atomic.Uint64
	failures    atomic.Uint64
	reverts     atomic.Uint64
	disconnects atomic.Uint64
	lastFailure atomic.Int64 // unix nanos of the newest FAILED/REVERTED report sent

	latMu      sync.Mutex
	lat        []time.Duration
	latSock    []time.Duration // to the socket (arrivalConn), bounded as lat
	latDropped uint64
	// When sets were received and HEALTHY reports sent (Marks), bounded
	// as lat is.
	recvAt, healthyAt []time.Time

	// The bandwidth model (transfer.go), with Config.Fetch.
	coord      *bucket          // the coordinator's NIC
	byPeerAddr map[string]*host // peer address -> host, with Config.P2P
	dl         []*grpc.ClientConn
	blobs      map[string][]byte // sha256 -> the artifact's bytes, first verified copy (under mu)
	holders    map[string]int    // sha256 -> hosts holding it (under mu)

	stages               atomic.Uint64
	staged               atomic.Uint64
	fetches              atomic.Uint64
	coordBytes           atomic.Int64
	peerBytes            atomic.Int64
	peerRefused          atomic.Uint64
	maxUploads           atomic.Int64
	maxConcurrentUploads atomic.Int64
	fetchMu              sync.Mutex
	fetchTimes           []time.Duration // fetches that succeeded, start to verified
}

type svcVersion struct{ service, version string }

// Start starts the fleet: every host connects to the coordinator (at most
// ConnectConcurrency at a time) and keeps reconnecting until Close or until
// ctx ends. It returns once every host runs; use WaitConnected to wait for
// the connections.
func Start(ctx context.Context, cfg Config, log zerolog.Logger) (*Fleet, error) {
	f, err := newFleet(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	for _, h := range f.hosts {
		f.wg.Go(h.run)
	}
	log.Info().Int("hosts", f.cfg.Hosts).Str("coordinator", f.cfg.Coordinator).Int64("seed", f.cfg.Seed).Msg("simulated fleet started")
	return f, nil
}

// newFleet builds the fleet without running its hosts.
func newFleet(ctx context.Context, cfg Config, log zerolog.Logger) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	ctx, cancel := context.WithCancel(ctx)
	f := &Fleet{
		cfg:     cfg,
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
		sem:     make(chan struct{}, cfg.ConnectConcurrency),
		healthy: map[svcVersion]int{},
		changed: make(chan struct{}),
	}
	f.failRate.Store(math.Float64bits(cfg.FailRate))
	f.hosts = make([]*host, cfg.Hosts)
	for i := range f.hosts {
		f.hosts[i] = newHost(f, i)
	}
	if cfg.Fetch {
		if err := f.startTransfers(); err != nil {
			cancel()
			return nil, err
		}
	}
	return f, nil
}

// Close stops every host (closing its connection) and waits for them.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
	for _, cc := range f.dl {
		_ = cc.Close()
	}
}

// streamsPerDownloadConn is how many hosts share one connection for
// artifact downloads from the coordinator: under its streams per caller
// (--max-streams-per-caller 64; an insecure caller is its connection) and
// per connection (128). A real agent downloads on its own connection.
const streamsPerDownloadConn = 50

// startTransfers sets up the bandwidth model: the coordinator's bucket,
// the peer addresses and the download connections.
func (f *Fleet) startTransfers() error {
	cfg := f.cfg
	f.coord = newBucket(cfg.CoordinatorRate, cfg.ByteScale)
	f.blobs, f.holders = map[string][]byte{}, map[string]int{}
	if cfg.P2P {
		f.byPeerAddr = make(map[string]*host, len(f.hosts))
		for _, h := range f.hosts {
			f.byPeerAddr[peerAddress(h.id)] = h
		}
	}
	for range (len(f.hosts) + streamsPerDownloadConn - 1) / streamsPerDownloadConn {
		cc, err := grpc.NewClient("passthrough:///"+cfg.Coordinator,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)))
		if err != nil {
			for _, c := range f.dl {
				_ = c.Close()
			}
			return fmt.Errorf("dial %s for downloads: %w", cfg.Coordinator, err)
		}
		f.dl = append(f.dl, cc)
	}
	return nil
}

// downloadConn is host i's connection for downloads from the coordinator.
func (f *Fleet) downloadConn(i int) *grpc.ClientConn { return f.dl[i%len(f.dl)] }

// storeMax raises m to v if v is larger.
func (f *Fleet) storeMax(m *atomic.Int64, v int64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}

// keepBlob keeps the first verified copy of an artifact, for peers to
// serve from (one copy per artifact for the whole fleet, not per host).
func (f *Fleet) keepBlob(sha string, b []byte) {
	f.mu.Lock()
	if f.blobs[sha] == nil {
		f.blobs[sha] = b
	}
	f.mu.Unlock()
}

func (f *Fleet) blob(sha string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blobs[sha]
}

func (f *Fleet) addHolder(sha string) {
	f.mu.Lock()
	f.holders[sha]++
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// Holding is the number of hosts that hold the artifact sha (fetched and
// verified; with Config.Fetch).
func (f *Fleet) Holding(sha string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holders[sha]
}

// WaitHolding waits until every host holds the artifact sha.
func (f *Fleet) WaitHolding(ctx context.Context, sha string) error {
	if err := f.wait(ctx, func() bool { return f.holders[sha] >= len(f.hosts) }); err != nil {
		return fmt.Errorf("wait for %d hosts holding artifact %s (%d now): %w", len(f.hosts), sha, f.Holding(sha), err)
	}
	return nil
}

// HostTransfer is what one host moved, in modeled bytes.
type HostTransfer struct {
	FromCoordinator int64
	FromPeers       int64
	Served          int64 // to other hosts
	Uploads         int64 // peer downloads it served
}

// Transfer is what host i moved.
func (f *Fleet) Transfer(i int) (HostTransfer, error) {
	h, err := f.host(i)
	if err != nil {
		return HostTransfer{}, err
	}
	return HostTransfer{FromCoordinator: h.fromCoord.Load(), FromPeers: h.fromPeers.Load(), Served: h.served.Load(), Uploads: h.uploads.Load()}, nil
}

// Len is the number of hosts.
func (f *Fleet) Len() int { return len(f.hosts) }

// HostID is the id of host i.
func (f *Fleet) HostID(i int) string { return HostID(f.cfg.HostPrefix, i) }

// notify wakes every waiter.
func (f *Fleet) notify() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// wait waits until cond (called with f.mu held) holds or ctx ends.
func (f *Fleet) wait(ctx context.Context, cond func() bool) error {
	for {
		f.mu.Lock()
		ok, ch := cond(), f.changed
		f.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-f.ctx.Done():
			return ErrClosed
		}
	}
}

// WaitConnected waits until at least n hosts are connected (the
// coordinator answered their Hello and the stream is up).
func (f *Fleet) WaitConnected(ctx context.Context, n int) error {
	if err := f.wait(ctx, func() bool { return int(f.connected.Load()) >= n }); err != nil {
		return fmt.Errorf("wait for %d connected hosts (%d now): %w", n, f.connected.Load(), err)
	}
	return nil
}

// WaitAll waits until every host's last report sent for service is HEALTHY
// with current_version = version.
func (f *Fleet) WaitAll(ctx context.Context, service, version string) error {
	k := svcVersion{service, version}
	if err := f.wait(ctx, func() bool { return f.healthy[k] >= len(f.hosts) }); err != nil {
		return fmt.Errorf("wait for %d hosts healthy on %s %s (%d now): %w", len(f.hosts), service, version, f.Healthy(service, version), err)
	}
	return nil
}

// Healthy is the number of hosts whose last report sent for service is
// HEALTHY on version.
func (f *Fleet) Healthy(service, version string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.healthy[svcVersion{service, version}]
}

// moveHealthy moves one host's count from one (service, version) to another
// ("" version = not healthy).
func (f *Fleet) moveHealthy(service, from, to string) {
	if from == to {
		return
	}
	f.mu.Lock()
	if from != "" {
		f.healthy[svcVersion{service, from}]--
	}
	if to != "" {
		f.healthy[svcVersion{service, to}]++
	}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// SetFailRate changes the install failure rate of every host from now on.
func (f *Fleet) SetFailRate(rate float64) error {
	if !(rate >= 0 && rate <= 1) {
		return fmt.Errorf("fail rate: %v, want 0..1", rate)
	}
	f.failRate.Store(math.Float64bits(rate))
	return nil
}

func (f *Fleet) host(i int) (*host, error) {
	if i < 0 || i >= len(f.hosts) {
		return nil, fmt.Errorf("host %d of %d: %w", i, len(f.hosts), ErrNoHost)
	}
	return f.hosts[i], nil
}

func (f *Fleet) command(i int, c hostCmd) error {
	h, err := f.host(i)
	if err != nil {
		return err
	}
	select {
	case h.cmds <- c:
		return nil
	case <-f.ctx.Done():
		return ErrClosed
	}
}

// Disconnect takes host i's stream down (closing its connection) and keeps
// it down until Reconnect. What the host is doing goes on: an install in
// progress finishes, and the host reports its state when it reconnects.
func (f *Fleet) Disconnect(i int) error { return f.command(i, cmdDisconnect) }

// Reconnect lets host i connect again after Disconnect.
func (f *Fleet) Reconnect(i int) error { return f.command(i, cmdReconnect) }

// FailNext makes host i's next install fail (whatever the release).
func (f *Fleet) FailNext(i int) error { return f.command(i, cmdFailNext) }

// Report is host i's current status for service (nil if it has none). It
// is what the host reports now, whether or not it could send it yet.
func (f *Fleet) Report(i int, service string) (*v1.ServiceReport, error) {
	h, err := f.host(i)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.status[service]
	if r == nil {
		return nil, nil
	}
	return proto.Clone(r).(*v1.ServiceReport), nil
}

// recordLatency records a set received at at, d after its sent_at, and
// (if sockKnown) its bytes sock after it at the host's socket. Both may
// be negative when sent_at comes from another machine's clock.
func (f *Fleet) recordLatency(at time.Time, d, sock time.Duration, sockKnown bool) {
	f.latMu.Lock()
	if len(f.lat) < f.cfg.MaxLatencySamples {
		f.lat = append(f.lat, d)
		if sockKnown {
			f.latSock = append(f.latSock, sock)
		}
		f.recvAt = append(f.recvAt, at)
	} else {
		f.latDropped++
	}
	f.latMu.Unlock()
}

// markHealthy records a HEALTHY report sent at at.
func (f *Fleet) markHealthy(at time.Time) {
	f.latMu.Lock()
	if len(f.healthyAt) < f.cfg.MaxLatencySamples {
		f.healthyAt = append(f.healthyAt, at)
	}
	f.latMu.Unlock()
}

// Marks are when the sets whose latency is recorded were received and
// when HEALTHY reports were sent, since the last ResetLatency, in the
// order they happened per host (not sorted).
func (f *Fleet) Marks() (received, healthy []time.Time) {
	f.latMu.Lock()
	defer f.latMu.Unlock()
	return slices.Clone(f.recvAt), slices.Clone(f.healthyAt)
}

// ResetLatency forgets the delivery latencies and marks recorded so far.
func (f *Fleet) ResetLatency() {
	f.latMu.Lock()
	f.lat, f.latSock, f.latDropped, f.recvAt, f.healthyAt = nil, nil, 0, nil, nil
	f.latMu.Unlock()
}

// Latency summarises assignment delivery latencies: the time from the
// coordinator's sent_at to the host receiving the message (same clock on
// one machine). Messages without sent_at are not counted.
type Latency struct {
	Count   int
	Dropped uint64 // over MaxLatencySamples: counted, not kept
	P50     time.Duration
	P90     time.Duration
	P99     time.Duration
	Max     time.Duration
}

// Stats is a snapshot of the fleet's counters.
type Stats struct {
	Hosts     int
	Connected int
	// Totals since Start.
	Hellos      uint64
	Reports     uint64 // ServiceReports sent after the Hello
	Responses   uint64 // ConnectResponses received
	Assignments uint64 // assignments in them
	Installs    uint64
	Failures    uint64 // installs reported FAILED
	Reverts     uint64 // installs reported REVERTED
	Disconnects uint64 // streams that ended after the coordinator answered
	// LastFailure is when the newest FAILED or REVERTED report was sent
	// (zero if none).
	LastFailure time.Time
	Latency     Latency
	// SocketLatency is the same sets' time from sent_at to their bytes
	// at the host's socket (arrivalConn): Latency without this process's
	// scheduling. Sets whose arrival is unknown are not in it (Dropped
	// unused).
	SocketLatency Latency

	// The bandwidth model (Config.Fetch), bytes modeled (real times
	// ByteScale).
	Stages           uint64 // assignments received with a stage
	Staged           uint64 // stages fetched and reported (staged_sha256)
	Fetches          uint64 // artifact fetches started (installs and stages)
	CoordinatorBytes int64  // artifact bytes from the coordinator
	PeerBytes        int64  // artifact bytes between hosts
	PeerRefused      uint64 // peer downloads refused (all upload slots taken)
	// MaxUploads is the most peer downloads one host served;
	// MaxConcurrentUploads the most it served at once.
	MaxUploads, MaxConcurrentUploads int64
	// FetchTime summarises the fetches that succeeded, from start to
	// verified (Dropped unused: every one is kept, one per host and
	// artifact).
	FetchTime Latency
}

// Stats returns the counters and the latency percentiles.
func (f *Fleet) Stats() Stats {
	s := Stats{
		Hosts:       len(f.hosts),
		Connected:   int(f.connected.Load()),
		Hellos:      f.hellos.Load(),
		Reports:     f.reports.Load(),
		Responses:   f.responses.Load(),
		Assignments: f.assignments.Load(),
		Installs:    f.installs.Load(),
		Failures:    f.failures.Load(),
		Reverts:     f.reverts.Load(),
		Disconnects: f.disconnects.Load(),

		Stages:               f.stages.Load(),
		Staged:               f.staged.Load(),
		Fetches:              f.fetches.Load(),
		CoordinatorBytes:     f.coordBytes.Load(),
		PeerBytes:            f.peerBytes.Load(),
		PeerRefused:          f.peerRefused.Load(),
		MaxUploads:           f.maxUploads.Load(),
		MaxConcurrentUploads: f.maxConcurrentUploads.Load(),
	}
	if n := f.lastFailure.Load(); n != 0 {
		s.LastFailure = time.Unix(0, n)
	}
	f.latMu.Lock()
	lat, sock := slices.Clone(f.lat), slices.Clone(f.latSock)
	s.Latency.Dropped = f.latDropped
	f.latMu.Unlock()
	s.Latency = summarise(lat, s.Latency.Dropped)
	s.SocketLatency = summarise(sock, 0)
	f.fetchMu.Lock()
	ft := slices.Clone(f.fetchTimes)
	f.fetchMu.Unlock()
	s.FetchTime = summarise(ft, 0)
	return s
}

// summarise sorts ds and returns its percentiles.
func summarise(ds []time.Duration, dropped uint64) Latency {
	l := Latency{Count: len(ds), Dropped: dropped}
	if len(ds) > 0 {
		slices.Sort(ds)
		l.P50 = quantile(ds, 0.50)
		l.P90 = quantile(ds, 0.90)
		l.P99 = quantile(ds, 0.99)
		l.Max = ds[len(ds)-1]
	}
	return l
}

// ResetTransfers zeroes the bandwidth model's counters (Stats' Stages to
// FetchTime, and each host's Transfer), for a measurement that starts
// after an earlier rollout. Call it with no fetch in flight (after the
// earlier rollout is SUCCEEDED and every host holds its artifact); what
// hosts hold stays.
func (f *Fleet) ResetTransfers() {
	for _, c := range []*atomic.Uint64{&f.stages, &f.staged, &f.fetches, &f.peerRefused} {
		c.Store(0)
	}
	for _, c := range []*atomic.Int64{&f.coordBytes, &f.peerBytes, &f.maxUploads, &f.maxConcurrentUploads} {
		c.Store(0)
	}
	for _, h := range f.hosts {
		for _, c := range []*atomic.Int64{&h.fromCoord, &h.fromPeers, &h.served, &h.uploads} {
			c.Store(0)
		}
	}
	f.fetchMu.Lock()
	f.fetchTimes = nil
	f.fetchMu.Unlock()
}

func (f *Fleet) recordFetch(d time.Duration) {
	f.fetchMu.Lock()
	f.fetchTimes = append(f.fetchTimes, d)
	f.fetchMu.Unlock()
}

// quantile is the nearest-rank q-quantile of sorted (non-empty).
func quantile(sorted []time.Duration, q float64) time.Duration {
	k := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}

// newRand returns host i's generator for stream s (0: installs and checks,
// 1: reconnect jitter), fixed by the fleet's seed.
func (f *Fleet) newRand(i int, s uint64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(f.cfg.Seed), uint64(i)<<1|s))
}
