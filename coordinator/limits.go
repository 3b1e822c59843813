package coordinator

// Limits on what callers can hold open on the coordinator's gRPC listener
// (issue 13: one client without a certificate held 50,000 Health/Watch
// streams on one connection; a viewer held 5,000 WatchEvents streams it
// never read). Each is a Config field and a flag, sized for a fleet of
// 1000 hosts (one stream each) with several operators and their watchers:
//
//   - connections: at most MaxConnections in all, of which at most
//     MaxConnectionsWithoutCert present no client certificate (joining
//     agents, health checks, token users, and anybody at all). A
//     connection over either is closed right after the TLS handshake.
//     A connection without a stream for MaxConnectionIdle is closed
//     (GOAWAY; clients reconnect when they need to).
//   - streams: at most MaxStreamsPerConn at once on one connection
//     (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: gRPC clients wait, raw
//     clients are refused); on a connection without a client certificate
//     at most MaxCallsPerConnWithoutCert calls in flight, refused before a
//     goroutine is spent on them (the tap); at most MaxStreamsPerCaller
//     streaming calls per authenticated caller (the stream interceptor).
//     Refusals are ResourceExhausted and name the limit and its flag.
//   - slow readers: a message that waits longer than StreamSendTimeout to be
//     sent, or an event stream whose reader is StreamSendBuffer events
//     behind when a new revision comes (a revision's events are queued
//     whole), ends the caller's connection (the only way to free a stream
//     whose reader does not take what was sent) instead of buffering more.
//   - the TLS handshake must finish within HandshakeTimeout, and request
//     headers are at most maxHeaderBytes.
//
// Every refusal is counted in fleetwave_coordinator_limit_refusals_total
// by limit and logged (at most a few lines a second per limit).

import (
	"context"
	"fmt"
	"net"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// Limits are the caps on connections and streams; zero fields take the
// defaults (DefaultLimits).
type Limits struct {
	MaxConnections             int
	MaxConnectionsWithoutCert  int
	MaxConnectionIdle          time.Duration
	MaxStreamsPerConn          int
	MaxCallsPerConnWithoutCert int
	MaxStreamsPerCaller        int
	StreamSendTimeout          time.Duration
	StreamSendBuffer           int
	HandshakeTimeout           time.Duration
}

// DefaultLimits are the limits a zero Config.Limits field takes. 1000
// agents take 1000 connections and 1000 streams; the rest is room for
// reconnect overlap, coordinators, operators, CI and watchers (memory:
// about 100 KB per idle TLS connection).
var DefaultLimits = Limits{
	MaxConnections:             4096,
	MaxConnectionsWithoutCert:  256,
	MaxConnectionIdle:          10 * time.Minute,
	MaxStreamsPerConn:          128,
	MaxCallsPerConnWithoutCert: 16,
	MaxStreamsPerCaller:        64,
	StreamSendTimeout:          30 * time.Second,
	StreamSendBuffer:           1024,
	HandshakeTimeout:           10 * time.Second,
}

// maxHeaderBytes bounds a call's request headers (gRPC's default is 16 MiB):
// ours carry a token and a few short values.
const maxHeaderBytes = 64 << 10

func (l *Limits) defaults() {
	d := DefaultLimits
	for _, f := range []struct {
		v   *int
		def int
	}{{&l.MaxConnections, d.MaxConnections}, {&l.MaxConnectionsWithoutCert, d.MaxConnectionsWithoutCert},
		{&l.MaxStreamsPerConn, d.MaxStreamsPerConn}, {&l.MaxCallsPerConnWithoutCert, d.MaxCallsPerConnWithoutCert},
		{&l.MaxStreamsPerCaller, d.MaxStreamsPerCaller}, {&l.StreamSendBuffer, d.StreamSendBuffer}} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&l.MaxConnectionIdle, d.MaxConnectionIdle}, {&l.StreamSendTimeout, d.StreamSendTimeout}, {&l.HandshakeTimeout, d.HandshakeTimeout}} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
}

func (l *Limits) validate() []error {
	var errs []error
	for _, f := range []struct {
		flag string
		v    int
	}{{"max-connections", l.MaxConnections}, {"max-connections-without-cert", l.MaxConnectionsWithoutCert},
		{"max-streams-per-conn", l.MaxStreamsPerConn}, {"max-calls-per-conn-without-cert", l.MaxCallsPerConnWithoutCert},
		{"max-streams-per-caller", l.MaxStreamsPerCaller}, {"stream-send-buffer", l.StreamSendBuffer}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative", f.flag, f.v))
		}
	}
	if l.MaxStreamsPerConn > 1<<20 {
		errs = append(errs, fmt.Errorf("max-streams-per-conn: %d is over %d", l.MaxStreamsPerConn, 1<<20))
	}
	if l.MaxConnectionsWithoutCert > 0 && l.MaxConnections > 0 && l.MaxConnectionsWithoutCert > l.MaxConnections {
		errs = append(errs, fmt.Errorf("max-connections-without-cert: %d is over max-connections %d", l.MaxConnectionsWithoutCert, l.MaxConnections))
	}
	for _, f := range []struct {
		flag string
		v    time.Duration
	}{{"max-connection-idle", l.MaxConnectionIdle}, {"stream-send-timeout", l.StreamSendTimeout}, {"handshake-timeout", l.HandshakeTimeout}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %s is negative", f.flag, f.v))
		}
	}
	return errs
}

// Limit names, as in the refusals metric and the flags.
const (
	limitConns         = "max-connections"
	limitConnsNoCert   = "max-connections-without-cert"
	limitCallsNoCert   = "max-calls-per-conn-without-cert"
	limitStreamsCaller = "max-streams-per-caller"
	limitSendTimeout   = "stream-send-timeout"
	limitSendBuffer    = "stream-send-buffer"
	// limitJoinFailures is no flag: Joins with unknown tokens from one
	// address (tokens.go, joinFailureBurst).
	limitJoinFailures   = "join-unknown-tokens"
	limitRefusalsHelp   = "Calls, streams and connections refused or ended by a limit (the limit's flag name)."
	connectionsGaugeHlp = "Connections open on the gRPC listener, by whether the peer presented a client certificate (cert: yes, no)."
)

// limiter enforces Limits: it counts connections (through the transport
// credentials' handshake), calls on connections without a certificate (the
// tap, before gRPC starts a goroutine for the call) and streams per caller
// (the stream interceptor), and ends slow readers.
type limiter struct {
	lim Limits
	log zerolog.Logger

	mu      sync.Mutex
	conns   map[string]*limitedConn // by remote address
	noCert  int
	streams map[string]int // open streaming calls by caller ident

	refusals *prometheus.CounterVec
	logLimit sync.Map // limit name → *bucket
}

func newLimiter(lim Limits, log zerolog.Logger) *limiter {
	return &limiter{lim: lim, log: log, conns: map[string]*limitedConn{}, streams: map[string]int{},
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetwave_coordinator_limit_refusals_total", Help: limitRefusalsHelp}, []string{"limit"})}
}

// collectors are the limiter's metrics.
func (l *limiter) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.refusals, &connCollector{l: l, desc: prometheus.NewDesc("fleetwave_coordinator_connections", connectionsGaugeHlp, []string{"cert"}, nil)}}
}

type connCollector struct {
	l    *limiter
	desc *prometheus.Desc
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	c.l.mu.Lock()
	all, noCert := len(c.l.conns), c.l.noCert
	c.l.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(all-noCert), "yes")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(noCert), "no")
}

// refused counts a refusal and logs it, at most 5 lines a second per limit
// (bursts of 20): an attack must not fill the disk with log lines either.
func (l *limiter) refused(limit string, ev func(*zerolog.Event) *zerolog.Event, msg string) {
	l.refusals.WithLabelValues(limit).Inc()
	b, _ := l.logLimit.LoadOrStore(limit, &bucket{rate: 5, burst: 20})
	if b.(*bucket).allow(time.Now()) {
		ev(l.log.Warn().Str("limit", limit)).Msg(msg)
	}
}

// serverOptions are the gRPC server options that carry the limits.
func (l *limiter) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(uint32(l.lim.MaxStreamsPerConn)),
		grpc.ConnectionTimeout(l.lim.HandshakeTimeout),
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.InTapHandle(l.tap),
	}
}

// limitedCreds counts connections as their handshake completes and refuses
// those over a limit.
type limitedCreds struct {
	credentials.TransportCredentials
	l *limiter
	// refused, if set, is told of every failed handshake.
	refused func(from string, err error)
}

func (c limitedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		if c.refused != nil {
			c.refused(raw.RemoteAddr().String(), err)
		}
		return nil, nil, err
	}
	noCert := false
	if ti, ok := ai.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) == 0 {
		noCert = true
	}
	lc, err := c.l.admit(conn, noCert)
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return lc, ai, nil
}

func (c limitedCreds) Clone() credentials.TransportCredentials {
	return limitedCreds{TransportCredentials: c.TransportCredentials.Clone(), l: c.l, refused: c.refused}
}

// limitedConn is an admitted connection; closing it frees its place.
type limitedConn struct {
	net.Conn
	l      *limiter
	key    string
	noCert bool
	calls  atomic.Int64 // calls in flight (counted for noCert only)
	once   sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.conns[c.key] == c {
			delete(c.l.conns, c.key)
		}
		if c.noCert {
			c.l.noCert--
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func (l *limiter) admit(conn net.Conn, noCert bool) (*limitedConn, error) {
	from := conn.RemoteAddr().String()
	l.mu.Lock()
	switch {
	case len(l.conns) >= l.lim.MaxConnections:
		n := len(l.conns)
		l.mu.Unlock()
		l.refused(limitConns, func(e *zerolog.Event) *zerolog.Event { return e.Str("from", from).Int("open", n) },
			"connection refused: too many connections")
		return nil, fmt.Errorf("%d connections open, the limit (--%s %d)", n, limitConns, l.lim.MaxConnections)
	case noCert && l.noCert >= l.lim.MaxConnectionsWithoutCert:
		n := l.noCert
		l.mu.Unlock()
		l.refused(limitConnsNoCert, func(e *zerolog.Event) *zerolog.Event { return e.Str("from", from).Int("open", n) },
			"connection without a client certificate refused: too many")
		return nil, fmt.Errorf("%d connections without a client certificate open, the limit (--%s %d)", n, limitConnsNoCert, l.lim.MaxConnectionsWithoutCert)
	}
	lc := &limitedConn{Conn: conn, l: l, key: from, noCert: noCert}
	l.conns[from] = lc
	if noCert {
		l.noCert++
	}
	l.mu.Unlock()
	return lc, nil
}

// connOf finds the admitted connection a call came on.
func (l *limiter) connOf(ctx context.Context) *limitedConn {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[p.Addr.String()]
}

// tap runs as a call's headers arrive, before gRPC spends a goroutine on
// it: a connection without a client certificate gets a few calls in
// flight, whatever they are (a unary call whose body never comes holds its
// goroutine as long as the connection lives).
func (l *limiter) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	lc := l.connOf(ctx)
	if lc == nil || !lc.noCert {
		return ctx, nil
	}
	if n := lc.calls.Add(1); n > int64(l.lim.MaxCallsPerConnWithoutCert) {
		lc.calls.Add(-1)
		l.refused(limitCallsNoCert, func(e *zerolog.Event) *zerolog.Event {
			return e.Str("from", lc.key).Str("method", clip(info.FullMethodName, 128))
		}, "call refused: too many calls in flight on a connection without a client certificate")
		return nil, status.Errorf(codes.ResourceExhausted, "%s: %d calls in flight on this connection without a client certificate, the limit (--%s %d)",
			path.Base(info.FullMethodName), n-1, limitCallsNoCert, l.lim.MaxCallsPerConnWithoutCert)
	}
	slot := &callSlot{lc: lc}
	// The call's context ends when the call does, however it ends (after
	// its status is on its way); the interceptors free the place earlier,
	// before the status is sent, so a client that saw its call end can
	// count on its place.
	context.AfterFunc(ctx, slot.release)
	return context.WithValue(ctx, callSlotKey{}, slot), nil
}

// callSlot is a call's place among its connection's calls in flight.
type callSlot struct {
	lc   *limitedConn
	once sync.Once
}

type callSlotKey struct{}

func (s *callSlot) release() { s.once.Do(func() { s.lc.calls.Add(-1) }) }

// releaseCallSlot frees the place of the call of ctx, if it holds one.
func releaseCallSlot(ctx context.Context) {
	if s, ok := ctx.Value(callSlotKey{}).(*callSlot); ok {
		s.release()
	}
}

// openStream counts a streaming call of the caller p; release undoes it.
func (l *limiter) openStream(p principal, method string) (release func(), err error) {
	l.mu.Lock()
	n := l.streams[p.ident]
	if n >= l.lim.MaxStreamsPerCaller {
		l.mu.Unlock()
		l.refused(limitStreamsCaller, func(e *zerolog.Event) *zerolog.Event { return e.Str("actor", p.ident).Str("method", method) },
			"stream refused: too many streams for one caller")
		return nil, status.Errorf(codes.ResourceExhausted, "%s: %s already has %d streams open, the limit (--%s %d)",
			path.Base(method), p.ident, n, limitStreamsCaller, l.lim.MaxStreamsPerCaller)
	}
	l.streams[p.ident] = n + 1
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			if l.streams[p.ident]--; l.streams[p.ident] <= 0 {
				delete(l.streams, p.ident)
			}
			l.mu.Unlock()
		})
	}, nil
}

// dropSlowReader ends the connection a stream came on: a stream whose
// reader does not take what was sent cannot be freed any other way (its
// unsent data and final status wait behind HTTP/2 flow control).
func (l *limiter) dropSlowReader(ctx context.Context, limit, method string, p principal, why string) {
	l.refused(limit, func(e *zerolog.Event) *zerolog.Event {
		return e.Str("actor", p.ident).Str("method", method).Str("why", why)
	}, "slow reader: connection closed")
	if lc := l.connOf(ctx); lc != nil {
		_ = lc.Close()
	}
}

// limitedStream bounds how long one message may wait to be sent.
type limitedStream struct {
	grpc.ServerStream
	l      *limiter
	method string
	p      principal
}

func (s *limitedStream) SendMsg(m any) error {
	var late atomic.Bool
	t := time.AfterFunc(s.l.lim.StreamSendTimeout, func() {
		late.Store(true)
		s.l.dropSlowReader(s.ServerStream.Context(), limitSendTimeout, s.method, s.p,
			fmt.Sprintf("a message waited over %s to be sent", s.l.lim.StreamSendTimeout))
	})
	err := s.ServerStream.SendMsg(m)
	t.Stop()
	if late.Load() {
		return status.Errorf(codes.ResourceExhausted, "%s: the reader took no message for %s, the limit (--%s %s); connection closed",
			path.Base(s.method), s.l.lim.StreamSendTimeout, limitSendTimeout, s.l.lim.StreamSendTimeout)
	}
	return err
}
