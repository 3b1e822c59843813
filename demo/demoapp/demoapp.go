// Package demoapp is the small HTTP service Fleetwave deploys in its demo
// and end-to-end tests. Its behaviour comes from files in its directory, so
// a release artifact can be made healthy, unhealthy, crashing, erroring or
// slow just by what it contains:
//
//	VERSION      the version it reports (required, trimmed)
//	FAIL_HEALTH  if present, /healthz answers 500 "unhealthy" (checked on
//	             every request, so it can be toggled on a running instance)
//	CRASH        if present, exit 1 right after start (a crash loop)
//	ERROR_RATE   a number 0..1: that fraction of requests to / answer 500,
//	             deterministically (every 1/rate-th request), not randomly
//	LATENCY      a Go duration added to every request to /
//	DEGRADE_AFTER a Go duration: ERROR_RATE and LATENCY apply only once the
//	             app has run this long (a release that degrades after it
//	             reported healthy)
//	LOAD_FACTOR  "N F": while at least N requests to / are in flight (this
//	             one included), LATENCY is multiplied by F (a number >= 0):
//	             a service that slows down under load (N >= 1, at most 1000)
//	FINE_BUCKETS if present, http_request_duration_seconds has buckets 1.25x
//	             apart from 1 ms to 7.5 s instead of the client's default
//
// VERSION, CRASH, ERROR_RATE, LATENCY, DEGRADE_AFTER, LOAD_FACTOR and
// FINE_BUCKETS are read once at start; a bad value is a start error naming
// the file.
//
// Endpoints: / ("hello from VERSION"), /healthz ("ok"), /version (the
// version, no newline), /metrics (Prometheus text format from its own
// registry: http_requests_total{code,path}, http_request_duration_seconds
// {path}, demoapp_build_info{version}).
//
// For the zero-downtime handover it follows systemd's conventions: given a
// listening socket by socket activation (LISTEN_PID is its pid, LISTEN_FDS
// at least 1) it serves on fd 3 instead of binding --listen; with
// NOTIFY_SOCKET set it sends READY=1 once it serves and STOPPING=1 when it
// stops. On shutdown it stops accepting, lets every accepted connection
// finish its request, then exits (see Serve).
//
// It imports nothing of Fleetwave: it stands for any user's service.
package demoapp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Names of the behaviour files in the app's directory.
const (
	FileVersion    = "VERSION"
	FileFailHealth = "FAIL_HEALTH"
	FileCrash      = "CRASH"
	FileErrorRate  = "ERROR_RATE"
	FileLatency    = "LATENCY"
	FileDegrade    = "DEGRADE_AFTER"
	FileLoadFactor = "LOAD_FACTOR"
	FileFineBucket = "FINE_BUCKETS"
)

// maxLoadThreshold bounds LOAD_FACTOR's N.
const maxLoadThreshold = 1000

const (
	// maxFileSize bounds what is read from a behaviour file.
	maxFileSize = 1024
	// maxVersionLen bounds the reported version.
	maxVersionLen = 128
)

// shutdownTimeout bounds graceful shutdown; open requests are then cut. A
// variable for tests.
var shutdownTimeout = 10 * time.Second

// ErrCrash is returned by Serve and Run when the CRASH file is present.
var ErrCrash = errors.New("CRASH file present: crashing on purpose")

// Run parses flags (--listen ADDR; --dir DIR, default "."), listens and
// serves until ctx is cancelled, then shuts down gracefully. Logs go to
// stdout as JSON lines. --listen 127.0.0.1:0 picks a free port; the
// "listening" log line carries the real address in "addr". When a socket
// is passed by socket activation (LISTEN_PID is this process, LISTEN_FDS at
// least 1) Run serves on the first one, fd 3, and --listen is not needed
// (and ignored if given); the LISTEN_* variables are then removed from the
// environment.
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fleetwave-demoapp", flag.ContinueOnError)
	fs.SetOutput(stdout)
	listen := fs.String("listen", "", "address to listen on, e.g. 127.0.0.1:8080 (required unless a socket is passed with LISTEN_FDS)")
	dir := fs.String("dir", ".", "directory holding VERSION and the behaviour files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := zerolog.New(stdout).With().Timestamp().Str("service", "demoapp").Logger()
	ln, err := listener(*listen, log)
	if err != nil {
		return err
	}
	return Serve(ctx, ln, *dir, log)
}

// listener returns the socket passed by socket activation (the first; any
// others are closed) or, without one, a new listener on addr.
func listener(addr string, log zerolog.Logger) (net.Listener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		if addr == "" {
			return nil, errors.New("--listen: required (unless a socket is passed with LISTEN_FDS)")
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", addr, err)
		}
		return ln, nil
	}
	for _, f := range files[1:] {
		log.Info().Str("socket", f.Name()).Msg("ignoring a passed socket: serving the first only")
		_ = f.Close()
	}
	f := files[0]
	defer f.Close() // FileListener made its own descriptor
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("socket activation: fd 3 (%s): %w", f.Name(), err)
	}
	if addr != "" {
		log.Info().Str("listen", addr).Str("socket", f.Name()).Msg("--listen ignored: serving the socket passed by socket activation")
	}
	return ln, nil
}

// Serve serves on ln until ctx is cancelled, then shuts down gracefully and
// returns nil. It closes ln. With a CRASH file it returns ErrCrash at once.
// With NOTIFY_SOCKET set it sends READY=1 once it serves and STOPPING=1
// when it begins to stop.
//
// Graceful shutdown, so that a handover on a shared socket loses nothing:
// ln is closed first (the socket's queue is left to whoever else holds it),
// keep-alive ends, and every connection already accepted gets its request
// answered; shutdownTimeout bounds it all, after which the remaining
// connections are cut and Serve returns an error. (http.Server.Shutdown
// alone would close, unanswered, a connection accepted just before it whose
// request it reads after it began.)
func Serve(ctx context.Context, ln net.Listener, dir string, log zerolog.Logger) error {
	return serve(ctx, ln, dir, log, nil)
}

// serve is Serve with a hook called when a request to / starts (tests).
func serve(ctx context.Context, ln net.Listener, dir string, log zerolog.Logger, onRoot func()) error {
	cfg, err := load(dir)
	if err != nil {
		_ = ln.Close()
		return err
	}
	log = log.With().Str("version", cfg.version).Logger()
	if cfg.crash {
		_ = ln.Close()
		log.Error().Str("reason", "crash file").Str("path", filepath.Join(dir, FileCrash)).Msg("crashing on purpose")
		return ErrCrash
	}
	a := newApp(dir, cfg, onRoot)
	// conns counts accepted connections not yet closed. Only Serve's
	// goroutine adds (StateNew), so once Serve has returned nothing races
	// the Wait in shutdown.
	var conns sync.WaitGroup
	srv := &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          stdlog.New(log.With().Str("level", "warn").Logger(), "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				conns.Done()
			}
		},
	}
	log.Info().Str("addr", ln.Addr().String()).Float64("error_rate", cfg.errorRate).
		Dur("latency", cfg.latency).Msg("listening")

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	sdNotify(log, "READY=1\nSTATUS=serving "+cfg.version)
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	log.Info().Str("reason", "shutdown requested").Msg("shutting down")
	sdNotify(log, "STOPPING=1")
	if err := shutdown(srv, ln, errc, &conns, shutdownTimeout); err != nil {
		return err
	}
	log.Info().Msg("stopped")
	return nil
}

// shutdown stops srv, which serves ln (errc receives what Serve returns),
// gracefully within timeout; see Serve.
func shutdown(srv *http.Server, ln net.Listener, errc <-chan error, conns *sync.WaitGroup, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	_ = ln.Close()
	<-errc // Serve has returned: no connection is added from here on
	srv.SetKeepAlivesEnabled(false)
	drained := make(chan struct{})
	go func() {
		conns.Wait()
		close(drained)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		_ = srv.Close() // the connections close, so the goroutine above ends
		return fmt.Errorf("shutdown: connections still open after %v; closed them", timeout)
	}
	// Nothing is left; Shutdown just marks the server closed.
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// sdNotify sends state to NOTIFY_SOCKET if it is set (sd_notify(3)); a
// failure is logged: the service manager will notice the missing READY=1.
func sdNotify(log zerolog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn().Err(err).Str("state", state).Msg("sd_notify failed")
	}
}

// config is what the behaviour files say, read at start.
type config struct {
	version   string
	crash     bool
	errorRate float64
	latency   time.Duration
	// degradeAfter delays errorRate and latency (0: from the start).
	degradeAfter time.Duration
	// loadThreshold and loadFactor: from loadThreshold requests in flight
	// (0: never), latency is multiplied by loadFactor.
	loadThreshold int64
	loadFactor    float64
	fineBuckets   bool
}

func load(dir string) (config, error) {
	var c config
	v, ok, err := readSmall(dir, FileVersion)
	if err != nil {
		return c, err
	}
	if !ok {
		return c, fmt.Errorf("%s: missing in %s", FileVersion, dir)
	}
	if v == "" || len(v) > maxVersionLen || strings.ContainsFunc(v, isSpaceOrControl) {
		return c, fmt.Errorf("%s: invalid version %q", FileVersion, truncate(v, 64))
	}
	c.version = v

	if _, ok, err = readSmall(dir, FileCrash); err != nil {
		return c, err
	}
	c.crash = ok

	if _, ok, err = readSmall(dir, FileFineBucket); err != nil {
		return c, err
	}
	c.fineBuckets = ok

	if s, ok, err := readSmall(dir, FileErrorRate); err != nil {
		return c, err
	} else if ok {
		r, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(r) || r < 0 || r > 1 {
			return c, fmt.Errorf("%s: invalid rate %q (want a number 0..1)", FileErrorRate, truncate(s, 64))
		}
		c.errorRate = r
	}

	if s, ok, err := readSmall(dir, FileLatency); err != nil {
		return c, err
	} else if ok {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return c, fmt.Errorf("%s: invalid duration %q (want e.g. 250ms)", FileLatency, truncate(s, 64))
		}
		c.latency = d
	}

	if s, ok, err := readSmall(dir, FileDegrade); err != nil {
		return c, err
	} else if ok {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return c, fmt.Errorf("%s: invalid duration %q (want e.g. 20s)", FileDegrade, truncate(s, 64))
		}
		c.degradeAfter = d
	}

	if s, ok, err := readSmall(dir, FileLoadFactor); err != nil {
		return c, err
	} else if ok {
		var n int64
		var f float64
		if _, err := fmt.Sscanf(s, "%d %g", &n, &f); err != nil || n < 1 || n > maxLoadThreshold || !(f >= 0) || math.IsInf(f, 0) {
			return c, fmt.Errorf("%s: invalid %q (want \"N F\": N requests in flight, 1..%d, and a factor >= 0)", FileLoadFactor, truncate(s, 64), maxLoadThreshold)
		}
		c.loadThreshold, c.loadFactor = n, f
	}
	return c, nil
}

// readSmall reads dir/name trimmed; ok is false if it does not exist.
func readSmall(dir, name string) (s string, ok bool, err error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return "", false, fmt.Errorf("%s: read %s: %w", name, path, err)
	}
	if len(data) > maxFileSize {
		return "", false, fmt.Errorf("%s: larger than %d bytes", name, maxFileSize)
	}
	return strings.TrimSpace(string(data)), true, nil
}

func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// app holds the handlers' state.
type app struct {
	dir    string
	cfg    config
	onRoot func()
	served atomic.Uint64 // requests to / so far, for ERROR_RATE
	// inFlight counts the requests to / being served, for LOAD_FACTOR.
	inFlight atomic.Int64
	// degradeAt is when ERROR_RATE and LATENCY start to apply.
	degradeAt time.Time

	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newApp(dir string, cfg config, onRoot func()) *app {
	buckets := prometheus.DefBuckets
	if cfg.fineBuckets {
		buckets = fineBuckets
	}
	a := &app{
		dir:       dir,
		cfg:       cfg,
		onRoot:    onRoot,
		degradeAt: time.Now().Add(cfg.degradeAfter),
		registry:  prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests by status code and path.",
		}, []string{"code", "path"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "HTTP request duration by path.",
			Buckets: buckets,
		}, []string{"path"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "demoapp_build_info",
		Help: "Always 1; the version label says which release runs.",
	}, []string{"version"})
	build.WithLabelValues(cfg.version).Set(1)
	// Static metric definitions on a fresh registry: cannot collide.
	a.registry.MustRegister(a.requests, a.duration, build)
	return a
}

// fineBuckets (FINE_BUCKETS) are 1.25x apart from 1 ms to about 7.5 s (40
// buckets), so that a quantile estimated from them (histogram_quantile, the
// coordinator's comparison) moves with a 20-30% slowdown; the client's
// default buckets are 2-2.5x apart.
var fineBuckets = prometheus.ExponentialBuckets(0.001, 1.25, 40)

// knownPaths are the path label values; anything else is "other", so that
// scanners cannot blow up the label cardinality.
var knownPaths = map[string]bool{"/": true, "/healthz": true, "/version": true, "/metrics": true}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.root)
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /version", a.version)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(rec, r)
		path := r.URL.Path
		if !knownPaths[path] {
			path = "other"
		}
		a.requests.WithLabelValues(strconv.Itoa(rec.code), path).Inc()
		a.duration.WithLabelValues(path).Observe(time.Since(start).Seconds())
	})
}

func (a *app) root(w http.ResponseWriter, r *http.Request) {
	if a.onRoot != nil {
		a.onRoot()
	}
	inFlight := a.inFlight.Add(1)
	defer a.inFlight.Add(-1)
	degraded := !time.Now().Before(a.degradeAt)
	if a.cfg.latency > 0 && degraded {
		d := a.cfg.latency
		if a.cfg.loadThreshold > 0 && inFlight >= a.cfg.loadThreshold {
			d = time.Duration(float64(d) * a.cfg.loadFactor)
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if !degraded {
		writeText(w, http.StatusOK, "hello from "+a.cfg.version)
		return
	}
	n := a.served.Add(1)
	if injectError(n, a.cfg.errorRate) {
		writeText(w, http.StatusInternalServerError, "injected error")
		return
	}
	writeText(w, http.StatusOK, "hello from "+a.cfg.version)
}

// injectError says whether the n-th request (from 1) fails at rate: exactly
// floor(n*rate) of the first n requests fail, spread evenly.
func injectError(n uint64, rate float64) bool {
	const eps = 1e-9
	return math.Floor(float64(n)*rate+eps) > math.Floor(float64(n-1)*rate+eps)
}

func (a *app) healthz(w http.ResponseWriter, r *http.Request) {
	if _, err := os.Stat(filepath.Join(a.dir, FileFailHealth)); err == nil {
		writeText(w, http.StatusInternalServerError, "unhealthy")
		return
	}
	writeText(w, http.StatusOK, "ok")
}

func (a *app) version(w http.ResponseWriter, r *http.Request) {
	writeText(w, http.StatusOK, a.cfg.version)
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wroteHeader {
		s.code = code
		s.wroteHeader = true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wroteHeader = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
