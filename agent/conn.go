package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
)

// maxRecvBytes bounds one message from the coordinator.
const maxRecvBytes = 16 << 20

// reporter holds the latest report of every service (for Hello) and which
// ones changed since they were last sent. Reports of one service coalesce:
// the protocol is level-triggered, the latest is what counts.
type reporter struct {
	mu     sync.Mutex
	latest map[string]*v1.ServiceReport
	dirty  map[string]bool
	notify chan struct{}
	// bad is the last peer dropped for bad bytes per service (peer.go),
	// set on every report of the service from then on.
	bad map[string]string
	// metrics is each service's last metric summary (analysis.compare),
	// carried by every report of the service until the next one.
	metrics map[string]*v1.MetricSummary
	// staged is the sha256 of each service's release staged ahead of its
	// wave (ahead.go), carried by every report of the service.
	staged map[string]string
	// stageFailed is the sha256 of each service's stage whose staging
	// failed (ahead.go), carried by every report of the service until a
	// staging starts again.
	stageFailed map[string]string
	// removedSent says a service's REMOVED report went out (in a Hello or
	// a report): it may be forgotten (forget). max is the most services a
	// Hello reports. maxBytes is the most its reports weigh together
	// (maxHelloBytes).
	removedSent map[string]bool
	max         int
	maxBytes    int
}

// maxHelloBytes bounds the reports a Hello carries, encoded: coordinators
// take messages of at most 4 MiB, and a host of many services, each with
// many checks whose details are long (up to 1 KiB each), could otherwise
// make a Hello they refuse at every connection: the host cut off. What is
// left out goes as reports (one message each) after the Hello.
const maxHelloBytes = 3 << 20

// newReporter makes a reporter whose Hello reports at most max services
// (spec.MaxServicesPerHost).
func newReporter(max int) *reporter {
	return &reporter{
		latest:  map[string]*v1.ServiceReport{},
		dirty:   map[string]bool{},
		notify:  make(chan struct{}, 1),
		bad:     map[string]string{},
		metrics: map[string]*v1.MetricSummary{},
		staged:  map[string]string{},

		stageFailed: map[string]string{},
		removedSent: map[string]bool{},
		max:         max,
		maxBytes:    maxHelloBytes,
	}
}

// sent notes that rep goes out.
func (r *reporter) sent(rep *v1.ServiceReport) {
	if rep.GetPhase() == v1.Phase_PHASE_REMOVED {
		r.removedSent[rep.GetService()] = true
	}
}

// put records a report to send.
func (r *reporter) put(rep *v1.ServiceReport) {
	r.mu.Lock()
	if rep.GetPhase() != v1.Phase_PHASE_REMOVED {
		delete(r.removedSent, rep.GetService())
	}
	r.latest[rep.GetService()] = r.stamp(rep)
	r.dirty[rep.GetService()] = true
	r.mu.Unlock()
	r.wake()
}

func (r *reporter) wake() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// stamp returns rep with the service's bad source, last metric summary and
// release staged ahead set (a copy when it changes anything: rep may be the machine's). r.mu is
// held.
func (r *reporter) stamp(rep *v1.ServiceReport) *v1.ServiceReport {
	b := r.bad[rep.GetService()]
	m := r.metrics[rep.GetService()]
	st, sf := r.staged[rep.GetService()], r.stageFailed[rep.GetService()]
	if (b == "" || rep.GetBadSource() == b) && rep.GetMetrics() == m && rep.GetStagedSha256() == st &&
		rep.GetStageFailedSha256() == sf {
		return rep
	}
	c := proto.Clone(rep).(*v1.ServiceReport)
	if b != "" {
		c.BadSource = b
	}
	c.Metrics = m
	c.StagedSha256 = st
	c.StageFailedSha256 = sf
	return c
}

// setBadSource names the last peer of a service dropped for bad bytes in
// its reports, and sends the latest one again with it.
func (r *reporter) setBadSource(service, host string) {
	r.mu.Lock()
	r.bad[service] = host
	if rep := r.latest[service]; rep != nil {
		r.latest[service] = r.stamp(rep)
		r.dirty[service] = true
	}
	r.mu.Unlock()
	r.wake()
}

// setStaged sets the sha256 of the service's release staged ahead ("":
// none) and sends its latest report again with it.
func (r *reporter) setStaged(service, sha string) {
	r.setAhead(r.staged, service, sha)
}

// setStageFailed sets the sha256 of the service's stage whose staging
// failed ("": none) and sends its latest report again with it.
func (r *reporter) setStageFailed(service, sha string) {
	r.setAhead(r.stageFailed, service, sha)
}

// clearStaged is setStaged(service, "") if sha is still the one reported
// (a later staging may have replaced it).
func (r *reporter) clearStaged(service, sha string) {
	r.mu.Lock()
	cur := r.staged[service]
	r.mu.Unlock()
	if cur == sha {
		r.setStaged(service, "")
	}
}

func (r *reporter) setAhead(m map[string]string, service, sha string) {
	r.mu.Lock()
	if sha == "" {
		delete(m, service)
	} else {
		m[service] = sha
	}
	if rep := r.latest[service]; rep != nil {
		if c := r.stamp(rep); c != rep {
			r.latest[service] = c
			r.dirty[service] = true
		}
	}
	r.mu.Unlock()
	r.wake()
}

// setMetrics makes m the service's metric summary, sent at once with its
// latest report (nil m clears it, and sends nothing).
func (r *reporter) setMetrics(service string, m *v1.MetricSummary) {
	r.mu.Lock()
	if m == nil {
		delete(r.metrics, service)
	} else {
		r.metrics[service] = m
	}
	rep := r.latest[service]
	send := rep != nil && m != nil
	if rep != nil {
		r.latest[service] = r.stamp(rep)
	}
	if send {
		r.dirty[service] = true
	}
	r.mu.Unlock()
	if send {
		r.wake()
	}
}

// setLatest updates the full status without asking for a send.
func (r *reporter) setLatest(rep *v1.ServiceReport) {
	r.mu.Lock()
	r.latest[rep.GetService()] = r.stamp(rep)
	r.mu.Unlock()
}

// hello builds the Hello with the full status and clears what is pending:
// Hello carries it all.
func (r *reporter) hello(cfg Config) *v1.Hello {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := &v1.Hello{HostId: cfg.HostID, Labels: cfg.Labels, AgentVersion: cfg.AgentVersion}
	// Past spec.MaxServicesPerHost services or maxBytes (coordinators
	// refuse a longer Hello) REMOVED reports are left out first, then
	// (with more services than a host takes: states an older agent left;
	// or heavy reports) the last names; what is left out stays to be sent
	// as reports after the Hello.
	names := sortedKeys(r.latest)
	over := len(names) - r.max
	out := map[string]bool{}
	for _, name := range names {
		if len(out) < over && r.latest[name].GetPhase() == v1.Phase_PHASE_REMOVED {
			out[name] = true
		}
	}
	for i := len(names) - 1; i >= 0 && len(out) < over; i-- {
		out[names[i]] = true
	}
	// Within maxBytes too, leaving out in the same order: REMOVED ones,
	// then the last names.
	size := 0
	for _, name := range names {
		if !out[name] {
			size += proto.Size(r.latest[name]) + 8 // with its field's tag and length
		}
	}
	for _, removed := range []bool{true, false} {
		for i := len(names) - 1; i >= 0 && size > r.maxBytes; i-- {
			name := names[i]
			if rep := r.latest[name]; !out[name] && (!removed || rep.GetPhase() == v1.Phase_PHASE_REMOVED) {
				out[name] = true
				size -= proto.Size(rep) + 8
			}
		}
	}
	for _, name := range names {
		if !out[name] {
			h.Services = append(h.Services, r.latest[name])
			r.sent(r.latest[name])
		}
	}
	for name := range r.dirty {
		if !out[name] {
			delete(r.dirty, name)
		}
	}
	for name := range out {
		r.dirty[name] = true
	}
	if len(out) > 0 {
		r.wake()
	}
	return h
}

// forget drops what the reporter holds of service (removed, and forgotten
// by the agent) once its REMOVED report went out, and reports whether it
// did.
func (r *reporter) forget(service string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.removedSent[service] || r.latest[service].GetPhase() != v1.Phase_PHASE_REMOVED {
		return false
	}
	delete(r.removedSent, service)
	delete(r.dirty, service)
	delete(r.latest, service)
	delete(r.bad, service)
	delete(r.metrics, service)
	delete(r.staged, service)
	delete(r.stageFailed, service)
	return true
}

// hello is the Hello of a new stream: the reporter's, and what confines
// the host's services.
func (a *agent) hello() *v1.Hello {
	h := a.rep.hello(a.cfg)
	h.Cgroups = a.cgroups.String()
	h.PeerAddress = a.peerAddr
	a.revs.resume() // the previous stream's receiver has ended
	h.RevocationsRevision = a.revs.revision()
	return h
}

// take returns the reports changed since the last send, by service name.
func (r *reporter) take() []*v1.ServiceReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*v1.ServiceReport
	for _, name := range sortedKeys(r.dirty) {
		out = append(out, r.latest[name])
		r.sent(r.latest[name])
	}
	clear(r.dirty)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// connHolder publishes the connection of the current session, for artifact
// downloads.
type connHolder struct {
	mu      sync.Mutex
	cc      *grpc.ClientConn
	changed chan struct{} // closed and replaced on every change
}

func newConnHolder() *connHolder { return &connHolder{changed: make(chan struct{})} }

func (h *connHolder) set(cc *grpc.ClientConn) {
	h.mu.Lock()
	h.cc = cc
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

// clearIf removes cc if it is still the published one.
func (h *connHolder) clearIf(cc *grpc.ClientConn) {
	h.mu.Lock()
	if h.cc == cc {
		h.cc = nil
		close(h.changed)
		h.changed = make(chan struct{})
	}
	h.mu.Unlock()
}

// wait returns the current connection, waiting for one until ctx ends.
func (h *connHolder) wait(ctx context.Context) (*grpc.ClientConn, error) {
	for {
		h.mu.Lock()
		cc, ch := h.cc, h.changed
		h.mu.Unlock()
		if cc != nil {
			return cc, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("no connection to a coordinator: %w", ctx.Err())
		}
	}
}

// backoff is the wait before reconnect attempt n (0-based): exponential
// from backoffBase, capped at backoffMax, with jitter in [d/2, d].
func (a *agent) backoff(attempt int) time.Duration {
	d := a.opts.backoffBase
	for i := 0; i < attempt && d < a.opts.backoffMax; i++ {
		d *= 2
	}
	if d > a.opts.backoffMax {
		d = a.opts.backoffMax
	}
	half := d / 2
	return half + time.Duration(a.rnd.Int64N(int64(half)+1))
}

// connLoop keeps one Connect stream open, cycling through the coordinators
// with jittered exponential backoff, until ctx ends.
func (a *agent) connLoop(ctx context.Context) {
	attempt := 0
	for i := 0; ; i++ {
		addr := a.cfg.Coordinators[i%len(a.cfg.Coordinators)]
		established, err := a.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if established {
			attempt = 0
		}
		d := a.backoff(attempt)
		attempt++
		a.log.Warn().Err(err).Str("coordinator", addr).Dur("retry_in", d).Msg("coordinator stream ended")
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session runs one stream to addr: Hello with the full status first, then
// reports as they change, while assignments flow to the run loop. It says
// whether the coordinator answered at all (to reset the backoff).
func (a *agent) session(ctx context.Context, addr string) (established bool, err error) {
	creds, err := a.transport(addr)
	if err != nil {
		return false, fmt.Errorf("tls: %w", err)
	}
	cc, err := grpc.NewClient(addr, append(grpcwindow.DialOptions(),
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: a.opts.keepalive, Timeout: 5 * time.Second, PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
	)...)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := v1.NewAgentServiceClient(cc).Connect(sctx)
	if err != nil {
		return false, fmt.Errorf("connect %s: %w", addr, err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: a.hello()}}); err != nil {
		return false, fmt.Errorf("hello to %s: %w", addr, err)
	}
	a.conns.set(cc)
	defer a.conns.clearIf(cc)
	a.log.Info().Str("coordinator", addr).Msg("connected")
	coord, _ := peer.FromContext(stream.Context())

	errc := make(chan error, 2)
	var got sync.WaitGroup
	got.Add(2)
	go func() {
		defer got.Done()
		errc <- a.sendReports(sctx, stream)
	}()
	var answered bool
	go func() {
		defer got.Done()
		for {
			resp, err := stream.Recv()
			if err != nil {
				errc <- fmt.Errorf("receive from %s: %w", addr, err)
				return
			}
			answered = true
			if a.takeRevocations(resp.GetRevocations(), time.Now()) {
				if err := a.checkCoordinatorRevoked(addr, coord); err != nil {
					errc <- fmt.Errorf("leaving %s: %w", addr, err)
					return
				}
			}
			if resp.GetRevocationsOnly() {
				continue // no assignment set in it
			}
			if a.cfg.Confirm != nil {
				// Accepted: the new agent of an upgrade says so (once).
				a.confirmOnce.Do(a.cfg.Confirm)
			}
			a.metrics.assignmentsReceived(resp.GetSentAt(), time.Now())
			if !a.send(assignEv{assignments: resp.GetAssignments(), agent: resp.GetAgent()}) {
				errc <- errors.New("agent stopping")
				return
			}
		}
	}()
	err = <-errc
	cancel()
	got.Wait()
	return answered, err
}

func (a *agent) sendReports(ctx context.Context, stream grpc.BidiStreamingClient[v1.ConnectRequest, v1.ConnectResponse]) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.rep.notify:
		}
		for _, r := range a.rep.take() {
			if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
				// Not lost: the next Hello carries the full status.
				return fmt.Errorf("send report: %w", err)
			}
		}
	}
}

// errFetchIdle: a download received nothing for a while.
var errFetchIdle = errors.New("no data received")

// idleReader resets timer to d whenever a Read returns data.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.timer.Reset(ir.d)
	}
	return n, err
}

// idleWatch returns a context that is cancelled (cause errFetchIdle) once
// nothing has been read through wrap's readers for d, and stop, which must
// be called when done.
func idleWatch(ctx context.Context, d time.Duration) (ictx context.Context, wrap func(io.Reader) io.Reader, stop func()) {
	ictx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(d, func() { cancel(fmt.Errorf("%w for %s", errFetchIdle, d)) })
	wrap = func(r io.Reader) io.Reader { return &idleReader{r: r, timer: timer, d: d} }
	stop = func() {
		timer.Stop()
		cancel(nil)
	}
	return ictx, wrap, stop
}

// errTooSlow: a download received less than its minimum rate.
var errTooSlow = errors.New("below the minimum rate")

// rateReader adds what it reads to n (rateWatch).
type rateReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c rateReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// rateWatch returns a context that is cancelled (cause errTooSlow) at the
// end of the first window of d in which less than minRate bytes per second
// were read through wrap's readers (a sender that trickles a byte now and
// then never trips the idle watch), and stop, which must be called when
// done.
func rateWatch(ctx context.Context, d time.Duration, minRate int64) (rctx context.Context, wrap func(io.Reader) io.Reader, stop func()) {
	rctx, cancel := context.WithCancelCause(ctx)
	var got atomic.Int64
	min := int64(float64(minRate) * d.Seconds())
	var (
		mu      sync.Mutex
		timer   *time.Timer
		stopped bool
	)
	var check func()
	check = func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if n := got.Swap(0); n < min {
			cancel(fmt.Errorf("%w: %d bytes in %s, under %d bytes/s", errTooSlow, n, d, minRate))
			return
		}
		timer = time.AfterFunc(d, check)
	}
	mu.Lock()
	timer = time.AfterFunc(d, check)
	mu.Unlock()
	wrap = func(r io.Reader) io.Reader { return rateReader{r: r, n: &got} }
	stop = func() {
		mu.Lock()
		stopped = true
		timer.Stop()
		mu.Unlock()
		cancel(nil)
	}
	return rctx, wrap, stop
}

// idleErr replaces err by the idle timeout (or the minimum rate) when that
// is what ended ictx.
func idleErr(ictx context.Context, err error) error {
	if cause := context.Cause(ictx); err != nil && (errors.Is(cause, errFetchIdle) || errors.Is(cause, errTooSlow)) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	return err
}

// fetch downloads an assignment's artifact into a temp file, from its
// peers, its URL or the coordinator, retrying a few times; each attempt
// continues from the bytes an earlier one kept (resume.go). Cancelling ctx
// (the assignment was superseded, or the agent stops) ends it at once, its
// bytes kept.
func (a *agent) fetch(ctx context.Context, asg *v1.Assignment) (*install.Fetched, error) {
	ctx, cancel := context.WithTimeout(ctx, a.opts.fetchTimeout)
	defer cancel()
	want := artifactOf(asg)
	var err error
	for i := 0; i < a.opts.fetchAttempts; i++ {
		if i > 0 {
			t := time.NewTimer(time.Duration(i) * time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%w (after: %v)", ctx.Err(), err)
			case <-t.C:
			}
		}
		var f *install.Fetched
		if f, err = a.fetchTimed(ctx, asg, want); err == nil {
			return f, nil
		}
		if errors.Is(err, install.ErrTooLarge) || errors.Is(err, errRedirectRefused) || ctx.Err() != nil {
			break // no point trying again
		}
		a.log.Warn().Str("service", asg.GetService()).Str("version", lifecycle.Version(asg)).Err(err).Msg("fetch failed, retrying")
	}
	return nil, err
}

func (a *agent) fetchOnce(ctx context.Context, asg *v1.Assignment, want install.Artifact) (*install.Fetched, error) {
	u := asg.GetRelease().GetArtifact().GetUrl()
	// Peers first (peer.go), then the coordinator (resuming) or the URL.
	var sus suspects
	f, err := a.fetchFromPeers(ctx, asg, want, u == "", &sus)
	switch {
	case err == nil:
		return f, nil
	case errors.Is(err, errNoPeerSource):
	case u == "" || ctx.Err() != nil:
		return nil, err
	default:
		a.log.Warn().Str("service", asg.GetService()).Err(err).Msg("no peer could serve the artifact; fetching from its URL")
	}
	for again := false; ; again = true {
		var resumed int64
		if u != "" {
			f, resumed, err = a.fetchURL(ctx, asg, want, u)
		} else {
			f, resumed, err = a.fetchCoordinator(ctx, asg, want)
		}
		if resumed > 0 && !again && ctx.Err() == nil && (errors.Is(err, install.ErrTooLarge) ||
			(err == nil && (f.SHA256 != want.SHA256 || f.Size != want.Size))) {
			// The bytes kept from an earlier attempt may be the bad ones
			// (resume.go): they are gone; once more from byte 0. The
			// peers that sent them are suspects (blameSuspects).
			a.inst.Discard(f)
			sus.add(sus.kept)
			sus.kept = nil
			a.log.Warn().Str("service", asg.GetService()).Str("sha256", want.SHA256).Int64("resumed", resumed).
				Msg("a resumed download failed verification: fetching it again from byte 0")
			continue
		}
		if err != nil {
			return nil, err
		}
		a.blameSuspects(asg, want, f, &sus)
		return f, nil
	}
}

// fetchURL fetches want from the release's URL u into its partial
// download (resume.go), from the bytes kept with a range request; resumed
// is the offset the server continued from (0 when it answered from byte
// 0).
func (a *agent) fetchURL(ctx context.Context, asg *v1.Assignment, want install.Artifact, u string) (f *install.Fetched, resumed int64, err error) {
	p, err := a.inst.OpenPartial(want)
	if err != nil {
		return nil, 0, fmt.Errorf("GET %s: %w", u, err)
	}
	defer p.Close()
	off := p.Offset()
	if off == want.Size {
		f, err := p.Fetch(ctx, eofReader{})
		return f, off, err
	}
	// The transport bounds the wait for headers; nothing bounds a body
	// that stops arriving but the idle watch.
	ictx, wrap, stop := idleWatch(ctx, a.opts.fetchIdle)
	defer stop()
	req, err := http.NewRequestWithContext(ictx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("GET %s: %w", u, err)
	}
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	resp, err := artifactClient(a.cfg.ArtifactRedirectHosts).Do(req)
	if errors.Is(err, errRedirectRefused) {
		// Not the url.Error: it quotes the whole URL redirected to.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, 0, fmt.Errorf("GET %s: %w", u, err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("GET %s: %w", u, idleErr(ictx, err))
	}
	defer resp.Body.Close()
	switch {
	case off > 0 && resp.StatusCode == http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		if start, ok := contentRangeStart(cr); !ok || start != off {
			if err := p.Restart(); err != nil {
				return nil, 0, err
			}
			return nil, 0, fmt.Errorf("GET %s: status %s with Content-Range %q, not from byte %d: the next attempt starts at byte 0", u, resp.Status, cr, off)
		}
		a.metrics.resumedFrom(off)
		resumed = off
	case resp.StatusCode == http.StatusOK:
		if off > 0 {
			// The server ignored the range: its body starts at byte 0.
			a.log.Info().Str("service", asg.GetService()).Str("sha256", want.SHA256).Int64("offset", off).
				Msg("the artifact URL ignored the range request: fetching from byte 0")
			if err := p.Restart(); err != nil {
				return nil, 0, err
			}
		}
	case off > 0 && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		if err := p.Restart(); err != nil {
			return nil, 0, err
		}
		return nil, 0, fmt.Errorf("GET %s: status %s for bytes %d on: the next attempt starts at byte 0", u, resp.Status, off)
	default:
		return nil, 0, fmt.Errorf("GET %s: status %s", u, resp.Status)
	}
	f, err = p.Fetch(ictx, a.metrics.countFetch(asg.GetService(), a.metrics.countSource(sourceURL, wrap(resp.Body))))
	if err != nil {
		return nil, resumed, fmt.Errorf("GET %s: %w", u, idleErr(ictx, err))
	}
	return f, resumed, nil
}

// fetchCoordinator fetches want from the coordinator into its partial
// download (resume.go), from the bytes kept; resumed is the offset it
// continued from.
func (a *agent) fetchCoordinator(ctx context.Context, asg *v1.Assignment, want install.Artifact) (f *install.Fetched, resumed int64, err error) {
	p, err := a.inst.OpenPartial(want)
	if err != nil {
		return nil, 0, fmt.Errorf("download %s: %w", want.SHA256, err)
	}
	defer p.Close()
	off := p.Offset()
	if off == want.Size {
		// Every byte is there: no coordinator is needed.
		f, err := p.Fetch(ctx, eofReader{})
		return f, off, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	cc, err := a.conns.wait(wctx)
	cancel()
	if err != nil {
		return nil, 0, fmt.Errorf("download %s: %w", want.SHA256, err)
	}
	dctx, wrap, stop := idleWatch(ctx, a.opts.fetchIdle)
	defer stop()
	stream, err := v1.NewArtifactServiceClient(cc).Download(dctx, &v1.DownloadRequest{Sha256: want.SHA256, Offset: off})
	if err != nil {
		return nil, 0, fmt.Errorf("download %s: %w", want.SHA256, idleErr(dctx, err))
	}
	a.metrics.resumedFrom(off)
	f, err = p.Fetch(dctx, a.metrics.countFetch(asg.GetService(), a.metrics.countSource(sourceCoordinator, wrap(&chunkReader{stream: stream}))))
	if err != nil {
		return nil, off, fmt.Errorf("download: %w", idleErr(dctx, err))
	}
	return f, off, nil
}

// chunkReader reads a Download stream as bytes.
type chunkReader struct {
	stream grpc.ServerStreamingClient[v1.DownloadResponse]
	buf    []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		resp, err := r.stream.Recv()
		if err == io.EOF {
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		r.buf = resp.GetChunk()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
