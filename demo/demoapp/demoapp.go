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
//
// VERSION, CRASH, ERROR_RATE, LATENCY and DEGRADE_AFTER are read once at
// start; a bad value is a start error naming the file.
//
// Endpoints: / ("hello from VERSION"), /healthz ("ok"), /version (the
// version, no newline), /metrics (Prometheus text format from its own
// registry: http_requests_total{code,path}, http_request_duration_seconds
// {path}, demoapp_build_info{version}).
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
	"sync/atomic"
	"time"

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
)

const (
	// maxFileSize bounds what is read from a behaviour file.
	maxFileSize = 1024
	// maxVersionLen bounds the reported version.
	maxVersionLen = 128
	// shutdownTimeout bounds graceful shutdown; open requests are then cut.
	shutdownTimeout = 10 * time.Second
)

// ErrCrash is returned by Serve and Run when the CRASH file is present.
var ErrCrash = errors.New("CRASH file present: crashing on purpose")

// Run parses flags (--listen ADDR, required; --dir DIR, default "."),
// listens and serves until ctx is cancelled, then shuts down gracefully.
// Logs go to stdout as JSON lines. --listen 127.0.0.1:0 picks a free port;
// the "listening" log line carries the real address in "addr".
func Run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fleetwave-demoapp", flag.ContinueOnError)
	fs.SetOutput(stdout)
	listen := fs.String("listen", "", "address to listen on, e.g. 127.0.0.1:8080 (required)")
	dir := fs.String("dir", ".", "directory holding VERSION and the behaviour files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *listen == "" {
		return errors.New("--listen: required")
	}
	log := zerolog.New(stdout).With().Timestamp().Str("service", "demoapp").Logger()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", *listen, err)
	}
	return Serve(ctx, ln, *dir, log)
}

// Serve serves on ln until ctx is cancelled, then shuts down gracefully and
// returns nil. It closes ln. With a CRASH file it returns ErrCrash at once.
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
	srv := &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          stdlog.New(log.With().Str("level", "warn").Logger(), "", 0),
	}
	log.Info().Str("addr", ln.Addr().String()).Float64("error_rate", cfg.errorRate).
		Dur("latency", cfg.latency).Msg("listening")

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	log.Info().Str("reason", "shutdown requested").Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		<-errc
		return fmt.Errorf("shutdown: %w", err)
	}
	<-errc // http.ErrServerClosed
	log.Info().Msg("stopped")
	return nil
}

// config is what the behaviour files say, read at start.
type config struct {
	version   string
	crash     bool
	errorRate float64
	latency   time.Duration
	// degradeAfter delays errorRate and latency (0: from the start).
	degradeAfter time.Duration
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
	// degradeAt is when ERROR_RATE and LATENCY start to apply.
	degradeAt time.Time

	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newApp(dir string, cfg config, onRoot func()) *app {
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
			Buckets: prometheus.DefBuckets,
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
	degraded := !time.Now().Before(a.degradeAt)
	if a.cfg.latency > 0 && degraded {
		t := time.NewTimer(a.cfg.latency)
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
