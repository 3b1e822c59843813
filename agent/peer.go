package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/streamend"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Peer-to-peer artifacts.
//
// With Config.PeerListen set, the agent keeps the verified artifact of each
// staged release (install.KeepArtifacts) and serves it to other agents of
// the fleet: ArtifactService.Download by sha256 with an offset, over mutual
// TLS (both ends present their host certificate, each requires the other's
// to name an agent; the fetcher requires the very host the coordinator
// named). At most PeerMaxUploads downloads are served at once (more are
// refused with ResourceExhausted and the fetcher takes its next source), and
// together they send at most PeerUploadRate bytes per second (a token
// bucket).
//
// The coordinator names a few such agents in an assignment
// (Assignment.sources). The agent tries them in order, resuming at the
// offset it has from the next one when one fails mid-way, then the
// coordinator (releases without a URL; the release's URL otherwise). The
// whole artifact's sha256 and size are checked as for any download; the
// signature was checked on the assignment. When they fail, every peer that
// sent bytes of it is dropped for the agent's life (at most maxDroppedPeers
// remembered), named in the service's report (bad_source) and counted, and
// the fetch starts again from the remaining sources.

// Kinds of artifact source (the metric's source label).
const (
	sourcePeer        = "peer"
	sourceCoordinator = "coordinator"
	sourceURL         = "url"
)

// peerChunk is the size of each chunk a peer sends, and the token bucket's
// burst.
const peerChunk = 64 << 10

// maxDroppedPeers bounds the peers an agent remembers as bad; past it the
// set is emptied and starts again.
const maxDroppedPeers = 1024

// Limits of the peer server on one fetching host, and on a fetcher that
// stops reading.
const (
	// peerUploadsPerHost bounds the downloads one host is served at once
	// (a fetch reads one source at a time; two services' artifacts at
	// once take two): a host cannot take every slot.
	peerUploadsPerHost = 2
	// peerMaxRequestBytes bounds a Download request (a sha256 and an
	// offset: under 100 bytes).
	peerMaxRequestBytes = 1 << 10
	// peerMaxHeaderBytes bounds a call's header list as decoded (HTTP/2's
	// SETTINGS_MAX_HEADER_LIST_SIZE; gRPC's default is 16 MiB): a fetcher
	// sends a few hundred bytes, and HPACK lets a repeated field cost one
	// byte on the wire (a review measured 199 MiB held for 111 KiB sent).
	peerMaxHeaderBytes = 8 << 10
)

// peerServer serves kept artifacts to other agents.
type peerServer struct {
	v1.UnimplementedArtifactServiceServer
	inst    *install.Installer
	lim     peerLimits
	slots   chan struct{}
	limit   *rate.Limiter
	metrics *agentMetrics
	log     zerolog.Logger
	// revoked, if set, refuses a caller whose certificate was revoked
	// since its connection's handshake (checked on every call).
	revoked func(chain []*x509.Certificate) error
	// closeConn, if set, closes the connection a caller came from (by its
	// remote address): a stalled stream's trailers wait behind its
	// unread data, and the connection would stay open for good.
	closeConn func(remote string)

	mu     sync.Mutex
	byHost map[string]int // downloads being served, per fetching host
}

// peerLimits bound what the peer server's downloads take.
type peerLimits struct {
	uploads int   // downloads served at once
	rate    int64 // bytes per second, all downloads together
	// sendTimeout ends a download whose fetcher has not taken a chunk
	// for that long (it stopped reading: the chunk waits on HTTP/2 flow
	// control and would hold its slot for good).
	sendTimeout time.Duration
	// A download whose fetcher, over minRateWindow of waiting for it to
	// take chunks (the time the shared rate makes the server wait is not
	// counted), took less than minRate bytes per second is ended: reading
	// a chunk just before each sendTimeout would hold a slot for days.
	// The fetcher's own minimum from a peer (0: none).
	minRate       int64
	minRateWindow time.Duration
}

func newPeerServer(inst *install.Installer, lim peerLimits, m *agentMetrics, log zerolog.Logger) *peerServer {
	return &peerServer{
		inst:    inst,
		lim:     lim,
		slots:   make(chan struct{}, lim.uploads),
		limit:   rate.NewLimiter(rate.Limit(lim.rate), peerChunk),
		metrics: m,
		log:     log,
		byHost:  map[string]int{},
	}
}

// newPeerGRPCServer is the peer listener's gRPC server: mutual TLS (tc),
// Download requests of at most peerMaxRequestBytes arriving within
// peerRequestWithin, headers of at most peerMaxHeaderBytes, streams per
// connection bounded, a handshake deadline, and idle connections closed.
func newPeerGRPCServer(tc *tls.Config, p *peerServer, o options) *grpc.Server {
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)), grpc.MaxConcurrentStreams(uint32(cap(p.slots))*2),
		grpc.MaxRecvMsgSize(peerMaxRequestBytes),
		grpc.MaxHeaderListSize(peerMaxHeaderBytes),
		grpc.StreamInterceptor(requestWithin(o.peerRequestWithin)),
		grpc.ConnectionTimeout(o.peerHandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: o.peerConnIdle}))
	v1.RegisterArtifactServiceServer(srv, p)
	return srv
}

// requestWithin ends a stream whose request has not arrived within d
// (DeadlineExceeded): a stream open without one kept its connection from
// ever being idle (MaxConnectionIdle counts connections without streams),
// holding its place in the listener's caps for good, also once its host
// was revoked (checked when the request arrives).
func requestWithin(d time.Duration) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ender := streamend.From(ss.Context())
		late := time.AfterFunc(d, func() {
			if ender != nil {
				_ = ender.WriteStatus(status.Newf(codes.DeadlineExceeded, "no request within %s", d))
			}
		})
		defer late.Stop()
		return handler(srv, &firstRecv{ServerStream: ss, late: late, within: d})
	}
}

// firstRecv stops its stream's requestWithin timer when the first message
// arrives; one that arrives after the timer fired is refused.
type firstRecv struct {
	grpc.ServerStream
	late   *time.Timer
	within time.Duration
	got    bool
}

func (f *firstRecv) RecvMsg(m any) error {
	err := f.ServerStream.RecvMsg(m)
	if !f.got {
		f.got = true
		if !f.late.Stop() {
			return status.Errorf(codes.DeadlineExceeded, "no request within %s", f.within)
		}
	}
	return err
}

// take gives host one of the upload slots, or says why not.
func (p *peerServer) take(host string) (release func(), err error) {
	p.mu.Lock()
	if p.byHost[host] >= peerUploadsPerHost {
		p.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "serving host %s %d peer downloads already (at most %d per host)", host, peerUploadsPerHost, peerUploadsPerHost)
	}
	select {
	case p.slots <- struct{}{}:
	default:
		p.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "serving %d peer downloads already (--peer-max-uploads)", cap(p.slots))
	}
	p.byHost[host]++
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		if p.byHost[host]--; p.byHost[host] == 0 {
			delete(p.byHost, host)
		}
		<-p.slots
		p.mu.Unlock()
	}, nil
}

// peerSlots is how many downloads the peer listener serves at once:
// PeerMaxUploads, fewer when the upload rate shared by that many would give
// each less than a fetcher's minimum rate from a peer (it would leave every
// one of them after its window), but at least one.
func (a *agent) peerSlots() int {
	return int(max(1, min(int64(a.cfg.PeerMaxUploads), a.cfg.PeerUploadRate/max(1, a.opts.peerMinRate))))
}

// Download implements ArtifactService.Download for other agents.
func (p *peerServer) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	ctx := stream.Context()
	id, ok := tlsutil.PeerIdentity(ctx)
	if !ok || id.Kind != tlsutil.KindAgent {
		return status.Error(codes.PermissionDenied, "peer artifacts are served to agents of this fleet only")
	}
	if p.revoked != nil {
		chain, _ := tlsutil.PeerChain(ctx)
		if err := p.revoked(chain); err != nil {
			// Revoked since its handshake: its connection goes too, a
			// moment after the refusal is sent (its next one is refused
			// in the handshake), so that its calls cannot go on being
			// refused one by one.
			if pr, ok := peer.FromContext(ctx); ok && p.closeConn != nil {
				remote := pr.Addr.String()
				time.AfterFunc(time.Second, func() { p.closeConn(remote) })
			}
			return status.Error(codes.PermissionDenied, err.Error())
		}
	}
	if err := spec.CheckSHA256("sha256", req.GetSha256()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetOffset() < 0 {
		return status.Errorf(codes.InvalidArgument, "offset: %d is negative", req.GetOffset())
	}
	release, err := p.take(id.Name)
	if err != nil {
		if p.metrics != nil {
			p.metrics.peerRefused.Inc()
		}
		return err
	}
	defer release()
	f, size, err := p.inst.OpenArtifact(req.GetSha256())
	if errors.Is(err, fs.ErrNotExist) {
		return status.Errorf(codes.NotFound, "artifact %s not held here", req.GetSha256())
	}
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	defer f.Close()
	if req.GetOffset() > size {
		return status.Errorf(codes.OutOfRange, "offset: %d is past the artifact's %d bytes", req.GetOffset(), size)
	}
	if _, err := f.Seek(req.GetOffset(), io.SeekStart); err != nil {
		return status.Errorf(codes.Internal, "offset %d: %v", req.GetOffset(), err)
	}
	remote := ""
	if pr, ok := peer.FromContext(ctx); ok {
		remote = pr.Addr.String()
	}
	// A chunk the fetcher does not take within sendTimeout ends the
	// stream and closes its connection (the time the shared rate makes
	// it wait is not counted).
	ender := streamend.From(ctx)
	stalled := time.AfterFunc(time.Hour, func() {
		if ender != nil {
			_ = ender.WriteStatus(status.Newf(codes.DeadlineExceeded, "the fetcher took no chunk of %s for %s", req.GetSha256(), p.lim.sendTimeout))
		}
		if p.closeConn != nil {
			p.closeConn(remote)
		}
	})
	stalled.Stop()
	defer stalled.Stop()
	var waited time.Duration // waiting for the fetcher to take chunks, this window
	var taken int64          // bytes it took meanwhile
	buf := make([]byte, peerChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if werr := p.limit.WaitN(ctx, n); werr != nil {
				return status.FromContextError(werr).Err()
			}
			stalled.Reset(p.lim.sendTimeout)
			start := time.Now()
			serr := stream.Send(&v1.DownloadResponse{Chunk: buf[:n]})
			waited += time.Since(start)
			stalled.Stop()
			if serr != nil {
				return serr
			}
			if p.metrics != nil {
				p.metrics.peerUploaded.Add(float64(n))
			}
			if taken += int64(n); p.lim.minRate > 0 && waited >= p.lim.minRateWindow {
				if r := float64(taken) / waited.Seconds(); r < float64(p.lim.minRate) {
					return status.Errorf(codes.ResourceExhausted, "the fetcher took %d bytes of %s in %s (%.0f bytes/s), under %d bytes/s", taken, req.GetSha256(), waited.Round(time.Millisecond), r, p.lim.minRate)
				}
				waited, taken = 0, 0
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return status.Errorf(codes.Internal, "read artifact %s: %v", req.GetSha256(), err)
		}
	}
}

// startPeer binds the peer listener (Config.PeerListen) and returns the
// address to advertise; serve starts serving once the host certificate
// exists (after a join), and stop ends it. Off: "" and no-ops.
func (a *agent) startPeer() (advertise string, serve func() error, stop func(), err error) {
	nop := func() error { return nil }
	if a.cfg.PeerListen == "" {
		return "", nop, func() {}, nil
	}
	tcp, err := net.Listen("tcp", a.cfg.PeerListen)
	if err != nil {
		return "", nil, nil, fmt.Errorf("peer_listen %s: %w", a.cfg.PeerListen, err)
	}
	lis := &capListener{Listener: tcp, open: make(chan struct{}, a.opts.peerMaxConns), maxPerIP: a.opts.peerMaxConnsPerIP,
		perIP: map[netip.Addr]int{}, conns: map[string]*capConn{}}
	advertise = a.cfg.PeerAdvertise
	if advertise == "" {
		host, _, _ := net.SplitHostPort(a.cfg.PeerListen)
		_, port, _ := net.SplitHostPort(lis.Addr().String())
		advertise = net.JoinHostPort(host, port)
	}
	a.inst.KeepArtifacts()
	var (
		mu  sync.Mutex
		srv *grpc.Server
	)
	serve = func() error {
		cert, key := a.certPaths()
		tc, err := tlsutil.PeerServerConfig(cert, key, a.cfg.TLSCA)
		if err != nil {
			return fmt.Errorf("peer listener: %w", err)
		}
		a.refuseRevoked(tc, sidePeer)
		ps := newPeerServer(a.inst, peerLimits{uploads: a.peerSlots(), rate: a.cfg.PeerUploadRate, sendTimeout: a.opts.peerSendTimeout,
			minRate: a.opts.peerMinRate, minRateWindow: a.opts.peerMinRateWindow}, a.metrics, a.log)
		if a.revs != nil {
			ps.revoked = func(chain []*x509.Certificate) error { return a.checkRevoked(sidePeer, "", chain) }
		}
		ps.closeConn = lis.closeFrom
		mu.Lock()
		srv = newPeerGRPCServer(tc, ps, a.opts)
		s := srv
		mu.Unlock()
		if n := cap(ps.slots); n < a.cfg.PeerMaxUploads {
			a.log.Warn().Int("max_uploads", a.cfg.PeerMaxUploads).Int64("upload_rate", a.cfg.PeerUploadRate).Int64("fetcher_min_rate", a.opts.peerMinRate).Int("serving", n).
				Msg("peer uploads at once lowered: the upload rate shared by max_uploads would give each less than fetchers take from a peer")
		}
		a.log.Info().Str("addr", lis.Addr().String()).Str("advertise", advertise).Int("max_uploads", cap(ps.slots)).
			Int64("upload_rate", a.cfg.PeerUploadRate).Msg("serving artifacts to peers")
		go func() {
			if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				a.log.Error().Err(err).Msg("peer listener failed")
			}
		}()
		return nil
	}
	stop = func() {
		mu.Lock()
		defer mu.Unlock()
		if srv != nil {
			srv.Stop()
			return
		}
		lis.Close()
	}
	return advertise, serve, stop, nil
}

// capListener closes the connections it accepts while cap(open) are open
// already, or maxPerIP from the same address (an IPv6 address's /64):
// anyone can connect before the TLS handshake says who they are, each
// connection holds a file and a goroutine, and one address must not take
// every place.
type capListener struct {
	net.Listener
	open     chan struct{}
	maxPerIP int
	mu       sync.Mutex
	perIP    map[netip.Addr]int
	conns    map[string]*capConn // by remote address
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, remote := sourceOf(c), c.RemoteAddr().String()
		l.mu.Lock()
		if l.perIP[ip] >= l.maxPerIP {
			l.mu.Unlock()
			c.Close()
			continue
		}
		select {
		case l.open <- struct{}{}:
		default:
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.perIP[ip]++
		cc := &capConn{Conn: c}
		cc.release = sync.OnceFunc(func() {
			l.mu.Lock()
			if l.perIP[ip]--; l.perIP[ip] <= 0 {
				delete(l.perIP, ip)
			}
			if l.conns[remote] == cc {
				delete(l.conns, remote)
			}
			l.mu.Unlock()
			<-l.open
		})
		l.conns[remote] = cc
		l.mu.Unlock()
		return cc, nil
	}
}

// closeFrom closes the connection from remote, if one is open.
func (l *capListener) closeFrom(remote string) {
	l.mu.Lock()
	c := l.conns[remote]
	l.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// sourceOf is what a connection's address counts against: its IPv4
// address, or its IPv6 address's /64 (one host's usual allocation: a
// host may use any address of it); the zero address when it has none.
func sourceOf(c net.Conn) netip.Addr {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap().WithZone("")
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return ip
}

// capConn gives its place back when closed.
type capConn struct {
	net.Conn
	release func()
}

func (c *capConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// droppedPeers are the peers this agent no longer fetches from.
type droppedPeers struct {
	mu  sync.Mutex
	set map[string]bool
}

func (d *droppedPeers) add(host string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.set == nil || len(d.set) >= maxDroppedPeers {
		d.set = map[string]bool{}
	}
	d.set[host] = true
}

func (d *droppedPeers) has(host string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.set[host]
}

// byteSource is one place an artifact can be read from, at an offset.
type byteSource struct {
	kind string // sourcePeer or sourceCoordinator
	host string // the peer's host id
	open func(ctx context.Context, off int64) (io.Reader, error)
}

func (s byteSource) String() string {
	if s.kind == sourcePeer {
		return "peer " + s.host
	}
	return s.kind
}

// resumingReader reads an artifact of size bytes from its sources in turn:
// when one fails or ends early, the next one is opened at the offset
// reached. It records the peers that sent bytes.
type resumingReader struct {
	ctx     context.Context
	size    int64
	srcs    []byteSource
	i       int
	off     int64
	cur     io.Reader
	cancel  context.CancelFunc
	sent    []string  // peers that sent bytes, in order
	segs    []segment // what each peer sent, in order
	errs    []error
	metrics *agentMetrics
	log     zerolog.Logger
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		if r.cur == nil {
			if r.off >= r.size {
				return 0, io.EOF // every byte is there (resumed): no source to ask
			}
			if r.i >= len(r.srcs) {
				return 0, fmt.Errorf("no source left at byte %d of %d: %w", r.off, r.size, errors.Join(r.errs...))
			}
			src := r.srcs[r.i]
			sctx, cancel := context.WithCancel(r.ctx)
			rd, err := src.open(sctx, r.off)
			if err != nil {
				cancel()
				r.fail(src, err)
				continue
			}
			r.cur, r.cancel = r.metrics.countSource(src.kind, rd), cancel
		}
		src := r.srcs[r.i]
		n, err := r.cur.Read(p)
		if n > 0 {
			if src.kind == sourcePeer {
				if len(r.sent) == 0 || r.sent[len(r.sent)-1] != src.host {
					r.sent = append(r.sent, src.host)
				}
				if k := len(r.segs); k == 0 || r.segs[k-1].host != src.host || r.segs[k-1].off+r.segs[k-1].n != r.off {
					r.segs = append(r.segs, segment{host: src.host, off: r.off, h: sha256.New()})
				}
				sg := &r.segs[len(r.segs)-1]
				sg.h.Write(p[:n])
				sg.n += int64(n)
			}
			r.off += int64(n)
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && r.off >= r.size:
			return n, io.EOF
		case err == io.EOF:
			err = fmt.Errorf("ended at byte %d of %d", r.off, r.size)
		}
		if cerr := r.ctx.Err(); cerr != nil {
			return n, cerr
		}
		r.cancel()
		r.cur = nil
		r.fail(src, err)
		if n > 0 {
			return n, nil
		}
	}
}

// segment is a run of bytes one peer sent, at an offset, and their sha256.
type segment struct {
	host string
	off  int64
	n    int64
	h    hash.Hash
}

// suspects are the bytes of fetches that mixed peers and failed
// verification: one of those peers (or more) lied, but the whole digest
// does not say which. Once a good copy is fetched, each segment is compared
// with the same bytes of it (blameSuspects): only the peers whose bytes
// differ are blamed.
type suspects struct {
	segs  []segment
	hosts map[string]bool // not asked again during this fetch
	// kept: what peers sent of the partial download a failed
	// fetchFromPeers left on disk; suspects when the source that continues
	// it (URL, coordinator) ends with a whole that fails (resume.go).
	kept []segment
}

func (s *suspects) add(segs []segment) {
	if s.hosts == nil {
		s.hosts = map[string]bool{}
	}
	s.segs = append(s.segs, segs...)
	for _, sg := range segs {
		s.hosts[sg.host] = true
	}
}

// liars returns the suspects whose bytes differ from the verified file at
// path (bytes past its end differ), each once, in order.
func (s *suspects) liars(path string) ([]string, error) {
	if len(s.segs) == 0 {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("compare suspect bytes: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("compare suspect bytes: %w", err)
	}
	var out []string
	seen := map[string]bool{}
	for _, sg := range s.segs {
		if seen[sg.host] {
			continue
		}
		bad := sg.off+sg.n > fi.Size()
		if !bad {
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(f, sg.off, sg.n)); err != nil {
				return nil, fmt.Errorf("compare suspect bytes: %w", err)
			}
			bad = !bytes.Equal(h.Sum(nil), sg.h.Sum(nil))
		}
		if bad {
			seen[sg.host] = true
			out = append(out, sg.host)
		}
	}
	return out, nil
}

// fail records a source's failure and moves to the next one.
func (r *resumingReader) fail(src byteSource, err error) {
	r.errs = append(r.errs, fmt.Errorf("%s: %w", src, err))
	r.log.Info().Str("source", src.String()).Int64("offset", r.off).Err(err).Msg("artifact source failed, trying the next")
	r.i++
}

func (r *resumingReader) close() {
	if r.cancel != nil {
		r.cancel()
	}
}

// peerSources are the assignment's sources this agent may still use.
func (a *agent) peerSources(asg *v1.Assignment, sus *suspects) []byteSource {
	if a.cfg.Insecure {
		return nil // peers are reached over mutual TLS only
	}
	var out []byteSource
	for _, s := range asg.GetSources() {
		if s.GetHostId() == a.cfg.HostID || s.GetAddress() == "" || a.dropped.has(s.GetHostId()) || sus.hosts[s.GetHostId()] {
			continue
		}
		if err := spec.CheckHostPort("sources.address", s.GetAddress()); err != nil {
			a.log.Warn().Str("peer", s.GetHostId()).Err(err).Msg("artifact source skipped")
			continue
		}
		out = append(out, byteSource{kind: sourcePeer, host: s.GetHostId(), open: a.openPeer(s.GetHostId(), s.GetAddress(), asg)})
	}
	return out
}

// openPeer opens a Download from the agent of host at addr.
func (a *agent) openPeer(host, addr string, asg *v1.Assignment) func(ctx context.Context, off int64) (io.Reader, error) {
	return func(ctx context.Context, off int64) (io.Reader, error) {
		cert, key := a.certPaths()
		tc, err := tlsutil.PeerClientConfig(cert, key, a.cfg.TLSCA, host)
		if err != nil {
			return nil, err
		}
		a.refuseRevoked(tc, sidePeer)
		// TCP only: passthrough keeps gRPC's resolvers from reading a
		// scheme in the address ("unix-abstract:7071"), and a dialer of
		// our own keeps its transport from dialing "unix:..." as a unix
		// socket.
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)))
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		context.AfterFunc(ctx, func() { cc.Close() })
		// A peer is left once it sends less than the minimum rate over a
		// window: a trickle never trips the idle watch.
		rctx, wrap, stop := rateWatch(ctx, a.opts.peerMinRateWindow, a.opts.peerMinRate)
		context.AfterFunc(ctx, stop)
		rd, err := a.openDownload(rctx, cc, asg, off)
		if err != nil {
			stop()
			return nil, err
		}
		return wrap(rd), nil
	}
}

// openDownload starts a Download of asg's artifact at off on cc; the
// reader fails once nothing arrives for the idle timeout.
func (a *agent) openDownload(ctx context.Context, cc *grpc.ClientConn, asg *v1.Assignment, off int64) (io.Reader, error) {
	ictx, wrap, stop := idleWatch(ctx, a.opts.fetchIdle)
	context.AfterFunc(ctx, stop)
	stream, err := v1.NewArtifactServiceClient(cc).Download(ictx, &v1.DownloadRequest{Sha256: artifactOf(asg).SHA256, Offset: off})
	if err != nil {
		stop()
		return nil, idleErr(ictx, err)
	}
	return &idleErrReader{r: wrap(&chunkReader{stream: stream}), ctx: ictx}, nil
}

// idleErrReader names the idle timeout in a read error it caused.
type idleErrReader struct {
	r   io.Reader
	ctx context.Context
}

func (r *idleErrReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = idleErr(r.ctx, err)
	}
	return n, err
}

// coordinatorSource is the coordinator's ArtifactService, at an offset.
func (a *agent) coordinatorSource(asg *v1.Assignment) byteSource {
	return byteSource{kind: sourceCoordinator, open: func(ctx context.Context, off int64) (io.Reader, error) {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cc, err := a.conns.wait(wctx)
		cancel()
		if err != nil {
			return nil, err
		}
		return a.openDownload(ctx, cc, asg, off)
	}}
}

// errNoPeerSource: the assignment names no peer this agent may use.
var errNoPeerSource = errors.New("no peer source")

// fetchFromPeers fetches asg's artifact from its peer sources, and then
// the coordinator when the release has no URL (withCoordinator). A result
// whose digest or size is wrong drops the peer that sent bytes of it when
// it was one peer (the rest came from the coordinator); when several
// peers sent parts, their bytes become suspects (sus) and they are not
// asked again during this fetch. The fetch then starts again from the
// sources left; the caller blames the suspects against the good copy it
// gets at last (blameSuspects).
func (a *agent) fetchFromPeers(ctx context.Context, asg *v1.Assignment, want install.Artifact, withCoordinator bool, sus *suspects) (*install.Fetched, error) {
	for {
		srcs := a.peerSources(asg, sus)
		if len(srcs) == 0 {
			return nil, errNoPeerSource
		}
		if withCoordinator {
			srcs = append(srcs, a.coordinatorSource(asg))
		}
		p, err := a.inst.OpenPartial(want)
		if err != nil {
			return nil, fmt.Errorf("download %s: %w", want.SHA256, err)
		}
		resumed := p.Offset() // resume.go
		a.metrics.resumedFrom(resumed)
		rr := &resumingReader{ctx: ctx, size: want.Size, off: resumed, srcs: srcs, metrics: a.metrics,
			log: a.log.With().Str("service", asg.GetService()).Str("sha256", want.SHA256).Logger()}
		f, err := p.Fetch(ctx, a.metrics.countFetch(asg.GetService(), rr))
		rr.close()
		p.Close()
		if err == nil && f.SHA256 == want.SHA256 && f.Size == want.Size {
			a.blameSuspects(asg, want, f, sus)
			return f, nil
		}
		a.inst.Discard(f)
		switch {
		case ctx.Err() != nil || (err != nil && !errors.Is(err, install.ErrTooLarge)):
			sus.kept = rr.segs // their bytes stay in the partial download
			return nil, fmt.Errorf("download %s: %w", want.SHA256, err)
		case resumed > 0:
			// The bytes kept from an earlier attempt may be the bad ones
			// (their file is gone): once more from byte 0, without the
			// peers that sent bytes this time, as when several did.
			sus.add(rr.segs)
			a.log.Warn().Str("service", asg.GetService()).Strs("peers", rr.sent).Str("sha256", want.SHA256).Int64("resumed", resumed).
				Msg("a resumed download failed verification: fetching it again from byte 0")
		case len(rr.sent) == 0:
			if err == nil {
				err = fmt.Errorf("the bytes fetched are not the assigned sha256 %s (%d bytes): %w", want.SHA256, want.Size, install.ErrDigestMismatch)
			}
			return nil, fmt.Errorf("download %s: %w", want.SHA256, err)
		case len(rr.sent) == 1:
			// Bad bytes (or too many) came from one peer: drop it, say so,
			// and try again without it.
			a.blame(asg, want, rr.sent)
		default:
			// Several peers sent parts: which one lied is known once a good
			// copy is there. Until then none of them is asked again.
			sus.add(rr.segs)
			a.log.Warn().Str("service", asg.GetService()).Strs("peers", rr.sent).Str("sha256", want.SHA256).
				Msg("bytes from several peers failed verification: fetching without them to find which")
		}
	}
}

// blame drops the peers named (not asked again by this agent), counts and
// logs them, and names the last in the service's report.
func (a *agent) blame(asg *v1.Assignment, want install.Artifact, hosts []string) {
	for _, host := range hosts {
		a.dropped.add(host)
		if a.metrics != nil {
			a.metrics.peersRejected.Inc()
		}
		a.log.Warn().Str("service", asg.GetService()).Str("peer", host).Str("sha256", want.SHA256).
			Msg("peer served bytes that failed verification: dropped")
	}
	if len(hosts) > 0 {
		a.rep.setBadSource(asg.GetService(), hosts[len(hosts)-1])
	}
}

// blameSuspects blames the suspect peers whose bytes differ from the
// copy f, when f is the assigned artifact (nothing otherwise).
func (a *agent) blameSuspects(asg *v1.Assignment, want install.Artifact, f *install.Fetched, sus *suspects) {
	if len(sus.segs) == 0 || f.SHA256 != want.SHA256 || f.Size != want.Size {
		return
	}
	liars, err := sus.liars(f.Path)
	if err != nil {
		a.log.Warn().Str("service", asg.GetService()).Err(err).Msg("could not tell which peer sent bad bytes")
		return
	}
	a.blame(asg, want, liars)
}
