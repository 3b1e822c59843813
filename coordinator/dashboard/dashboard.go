// Package dashboard is the coordinator's web dashboard: pages rendered on
// the server with html/template and a rollout page kept live with
// server-sent events. It is a client of the coordinator's own gRPC API:
// every read and every action is a gRPC call made with the logged-in
// operator's token, so the API's authorisation, forwarding to the leader
// and audit log apply unchanged (one source of truth for roles). Its assets
// are embedded; pages make no request to any other origin.
package dashboard

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	stdlog "log"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetwave/fleetwave/internal/failgate"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

//go:embed assets
var assetsFS embed.FS

// Limits bound what browsers can hold on the dashboard. Zero fields take
// DefaultLimits.
type Limits struct {
	// MaxSessions is how many logins live at once; a login past it is
	// refused (expired sessions are dropped first).
	MaxSessions int
	// SessionTTL is a session's lifetime from login.
	SessionTTL time.Duration
	// MaxStreamsPerIdentity is how many live pages (server-sent event
	// streams) one identity holds open at once, over all its sessions.
	// Each holds two gRPC streams and makes one read at a time on its
	// session's connection (CallsPerLivePage).
	MaxStreamsPerIdentity int
	// MaxBodyBytes bounds a POST's body.
	MaxBodyBytes int64
	// MaxConnections is how many connections the dashboard's listener
	// holds at once; a new one past it is closed at once.
	MaxConnections int
}

// DefaultLimits are the dashboard's limits unless configured.
var DefaultLimits = Limits{MaxSessions: 256, SessionTTL: 12 * time.Hour, MaxStreamsPerIdentity: 4, MaxBodyBytes: 16 << 10, MaxConnections: 1024}

// CallsPerLivePage is how many gRPC calls a live page has in flight at
// most on its session's connection: the rollout and event watches and one
// read. CallsPerPage is what a page load or an action adds.
const CallsPerLivePage, CallsPerPage = 3, 2

func (l *Limits) defaults() {
	d := DefaultLimits
	if l.MaxSessions == 0 {
		l.MaxSessions = d.MaxSessions
	}
	if l.SessionTTL == 0 {
		l.SessionTTL = d.SessionTTL
	}
	if l.MaxStreamsPerIdentity == 0 {
		l.MaxStreamsPerIdentity = d.MaxStreamsPerIdentity
	}
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = d.MaxBodyBytes
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = d.MaxConnections
	}
}

// Validate checks the limits; errors name the flag and value.
func (l Limits) Validate() error {
	var errs []error
	if l.MaxSessions < 0 {
		errs = append(errs, fmt.Errorf("http-max-sessions: %d is negative", l.MaxSessions))
	}
	if l.SessionTTL < 0 || (l.SessionTTL > 0 && l.SessionTTL < time.Minute) {
		errs = append(errs, fmt.Errorf("http-session-ttl: %s: want at least 1m", l.SessionTTL))
	}
	if l.MaxStreamsPerIdentity < 0 {
		errs = append(errs, fmt.Errorf("http-max-streams-per-identity: %d is negative", l.MaxStreamsPerIdentity))
	}
	if l.MaxBodyBytes < 0 || (l.MaxBodyBytes > 0 && l.MaxBodyBytes < 1024) {
		errs = append(errs, fmt.Errorf("http-max-body-bytes: %d: want at least 1024", l.MaxBodyBytes))
	}
	if l.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("http-max-connections: %d is negative", l.MaxConnections))
	}
	return errors.Join(errs...)
}

// Config is what the dashboard needs from the coordinator.
type Config struct {
	// GRPCTarget is the coordinator's own gRPC address; GRPCCreds reach it
	// without a client certificate (the operator's token authenticates).
	GRPCTarget string
	GRPCCreds  credentials.TransportCredentials
	// TLS serves HTTPS (the coordinator's certificate); nil serves plain
	// HTTP, only with an insecure coordinator.
	TLS *tls.Config
	// Insecure: the gRPC API trusts every caller as admin; the login takes
	// no token.
	Insecure bool
	Limits   Limits
	// Name is the coordinator's name, shown in the page header.
	Name string
	// ErrorLog receives the HTTP server's own errors (TLS handshakes that
	// failed, bad requests); nil logs them to the logger, every one.
	ErrorLog *stdlog.Logger
	// Receivers are more POST endpoints served on the dashboard's
	// listener, by path, outside its login: each authenticates its callers
	// itself (the coordinator's Alertmanager receiver).
	Receivers map[string]http.Handler
}

// Server serves the dashboard.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	sessions *sessions
	failures *failgate.Gate // failed logins per address
	pages    map[string]*template.Template
	fragment *template.Template
	static   http.Handler
	// now is the clock (tests replace it).
	now func() time.Time
}

// New makes a dashboard server.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	cfg.Limits.defaults()
	if cfg.ErrorLog == nil {
		cfg.ErrorLog = stdlog.New(log.With().Str("component", "dashboard").Logger(), "", 0)
	}
	if cfg.GRPCTarget == "" || cfg.GRPCCreds == nil {
		return nil, errors.New("dashboard: the gRPC target and its credentials are required")
	}
	pages, fragment, err := parseTemplates()
	if err != nil {
		return nil, fmt.Errorf("dashboard templates: %w", err)
	}
	static, err := staticHandler()
	if err != nil {
		return nil, fmt.Errorf("dashboard assets: %w", err)
	}
	return &Server{cfg: cfg, log: log, sessions: newSessions(cfg.Limits), failures: failgate.New(loginFailureBurst, loginFailureEvery, maxLoginAddresses), pages: pages, fragment: fragment,
		static: static, now: time.Now}, nil
}

// Handler is the dashboard's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", s.withSession(s.logout))
	mux.HandleFunc("GET /{$}", s.withSession(s.servicesPage))
	mux.HandleFunc("GET /services/{service}", s.withSession(s.rolloutPage))
	mux.HandleFunc("GET /services/{service}/live", s.withSession(s.live))
	mux.HandleFunc("GET /services/{service}/history", s.withSession(s.historyPage))
	mux.HandleFunc("GET /hosts", s.withSession(s.hostsPage))
	mux.HandleFunc("GET /audit", s.withSession(s.auditPage))
	mux.HandleFunc("POST /services/{service}/{action}", s.withSession(s.action))
	mux.Handle("GET /static/", s.static)
	for path, h := range s.cfg.Receivers {
		mux.Handle("POST "+path, h)
	}
	if s.cfg.Insecure {
		return securityHeaders(addressOnly(mux))
	}
	return securityHeaders(mux)
}

// addressOnly answers only requests for an IP address or localhost: an
// insecure dashboard (plain HTTP, no token) is otherwise open to DNS
// rebinding, a page of another name that resolves to the dashboard's
// address being same-origin with it. (With TLS the browser refuses the
// certificate for another name.)
func addressOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if net.ParseIP(host) == nil && !strings.EqualFold(host, "localhost") {
			http.Error(w, "insecure dashboard: reach it by IP address or localhost, not by the name "+strconv.Quote(host), http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Serve serves the dashboard on lis until ctx ends.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         s.cfg.TLS,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          s.cfg.ErrorLog,
	}
	lis = &cappedListener{Listener: lis, max: s.cfg.Limits.MaxConnections, log: s.cfg.ErrorLog}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLS != nil {
			errc <- srv.ServeTLS(lis, "", "")
		} else {
			errc <- srv.Serve(lis)
		}
	}()
	select {
	case err := <-errc:
		s.sessions.closeAll()
		return fmt.Errorf("dashboard on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// Live pages end with ctx (BaseContext); Shutdown waits for them.
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	s.sessions.closeAll()
	return nil
}

// staticHandler serves the embedded script and stylesheet by name, whole:
// not http.FileServer, whose Range parsing (GO-2026-6609, fixed in
// go1.26.9) this does not need.
func staticHandler() (http.Handler, error) {
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	files := map[string][]byte{}
	err := fs.WalkDir(assetsFS, "assets/static", func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := assetsFS.ReadFile(p)
		if err != nil {
			return err
		}
		files["/static/"+strings.TrimPrefix(p, "assets/static/")] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := files[r.URL.Path]
		typ := types[path.Ext(r.URL.Path)]
		if !ok || typ == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", typ)
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(b)
	}), nil
}

// maxRecvMsgSize bounds an answer of the gRPC API to the dashboard, as
// the CLI's: the history page's 1,000 events of up to ~4.5 KB each (a
// failed host's reason) are over gRPC's default 4 MiB.
const maxRecvMsgSize = 64 << 20

// dial opens a session's connection to the gRPC API.
func (s *Server) dial() (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient(s.cfg.GRPCTarget, grpc.WithTransportCredentials(s.cfg.GRPCCreds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("dashboard: connect to %s: %w", s.cfg.GRPCTarget, err)
	}
	return cc, nil
}

// contentSecurityPolicy allows the page's own scripts, styles and
// event stream only: nothing inline, nothing from another origin.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: with no-referrer a browser sends
		// "Origin: null" on form posts, and the origin check refuses them.
		// same-origin, not no-referrer: with no-referrer a browser sends
		// "Origin: null" on form posts, which the origin check refuses.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// cappedListener holds at most max connections: one past it is closed as
// soon as it is accepted (and logged through the rate-limited error log).
type cappedListener struct {
	net.Listener
	max  int
	log  *stdlog.Logger
	open atomic.Int64
}

func (l *cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.open.Add(1); n > int64(l.max) {
			l.open.Add(-1)
			_ = c.Close()
			l.log.Printf("dashboard: connection from %s refused: %d open (http-max-connections %d)", c.RemoteAddr(), n-1, l.max)
			continue
		}
		return &cappedConn{Conn: c, l: l}, nil
	}
}

// cappedConn gives its place back when closed (once).
type cappedConn struct {
	net.Conn
	l    *cappedListener
	once sync.Once
}

func (c *cappedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
