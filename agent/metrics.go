package agent

// Prometheus metrics of the agent, on a private registry served at /metrics
// on Config.MetricsListen (off when empty). All label values are bounded:
// service names, rule names from the spec, and small fixed sets.
//
// Every method of *agentMetrics accepts a nil receiver and then does
// nothing, so code paths that run without Run (tests) need no instruments.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/agent/analysis"
	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Revert reason classes (the label "reason" of fleetwave_agent_reverts_total).
const (
	revertHealth   = "health"   // health checks failed past the deadline, or during the watch
	revertCrash    = "crash"    // crash loop
	revertAnalysis = "analysis" // an analysis rule failed (or stayed inconclusive at the deadline)
	revertStart    = "start"    // the new release's process could not be started
	revertOther    = "other"
)

// agentMetrics holds the agent's instruments.
type agentMetrics struct {
	reg *prometheus.Registry

	installs      *prometheus.CounterVec   // service, result
	reverts       *prometheus.CounterVec   // service, reason
	anaValue      *prometheus.GaugeVec     // service, rule
	anaThreshold  *prometheus.GaugeVec     // service, rule
	fetchBytes    *prometheus.CounterVec   // service
	fetchDuration *prometheus.HistogramVec // service, result
	delivery      prometheus.Histogram

	// Peer-to-peer artifacts (peer.go).
	sourceBytes   *prometheus.CounterVec // source: peer, coordinator, url
	peersRejected prometheus.Counter
	peerUploaded  prometheus.Counter
	peerRefused   prometheus.Counter
	// Resumed downloads (resume.go).
	resumedBytes prometheus.Counter

	// Staging ahead of the wave (ahead.go).
	stagedAhead   prometheus.Counter
	installsReady prometheus.Counter

	// installing marks services with an install under way (since FETCHING,
	// or CHECKING straight from a settled phase: an install in place), so
	// an install is counted once when it ends. Only the run loop touches
	// it.
	installing map[string]bool
}

// newAgentMetrics makes the agent's registry: Go and process collectors,
// the phase of every service (read from rep at scrape time) and the
// instruments.
func newAgentMetrics(rep *reporter) *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry(), installing: map[string]bool{}}
	m.installs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_agent_installs_total",
		Help: "Installs that ended, by service and result: succeeded (healthy), failed (before the switch; the old release ran on) or reverted.",
	}, []string{"service", "result"})
	m.reverts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_agent_reverts_total",
		Help: "Reverts to the last good release decided on this host, by service and reason: health, crash, analysis, start, restart or other.",
	}, []string{"service", "reason"})
	m.anaValue = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "fleetwave_agent_analysis_value",
		Help: "Value an analysis rule measured in its last evaluation (error ratio, latency in seconds, restarts, query value); absent while inconclusive.",
	}, []string{"service", "rule"})
	m.anaThreshold = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "fleetwave_agent_analysis_threshold",
		Help: "Limit an analysis rule compared against in its last evaluation: the one exceeded, else the tightest that applies (max, or factor × baseline).",
	}, []string{"service", "rule"})
	m.fetchBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_agent_fetch_bytes_total",
		Help: "Artifact bytes downloaded, by service (failed attempts included).",
	}, []string{"service"})
	m.fetchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetwave_agent_fetch_duration_seconds",
		Help:    "Duration of one artifact download attempt, by service and result (ok, error, canceled).",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800},
	}, []string{"service", "result"})
	m.sourceBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_agent_artifact_source_bytes_total",
		Help: "Artifact bytes downloaded, by kind of source: peer (another agent), coordinator, url (the release's URL); failed attempts included.",
	}, []string{"source"})
	for _, k := range []string{sourcePeer, sourceCoordinator, sourceURL} {
		m.sourceBytes.WithLabelValues(k)
	}
	m.peersRejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_agent_peer_sources_rejected_total",
		Help: "Peers dropped because the bytes they served failed verification (digest or size).",
	})
	m.peerUploaded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_agent_peer_upload_bytes_total",
		Help: "Artifact bytes this agent served to other agents on its peer listener.",
	})
	m.peerRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_agent_peer_uploads_refused_total",
		Help: "Peer downloads refused because --peer-max-uploads were being served already.",
	})
	m.resumedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_agent_artifact_resumed_bytes_total",
		Help: "Artifact bytes not downloaded again: the length of a partial download (kept on disk) each time a source was asked to continue from it.",
	})
	m.stagedAhead = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_agent_staged_ahead_total",
		Help: "Releases staged ahead of the host's wave (Assignment.stage): fetched, verified and unpacked without switching.",
	})
	m.installsReady = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_agent_installs_prestaged_total",
		Help: "Installs that found their release already unpacked from the assigned digest (staged ahead, or kept) and fetched nothing.",
	})
	m.delivery = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "fleetwave_agent_assignment_delivery_seconds",
		Help: "Time from the coordinator sending an assignment set (its sent_at) to this agent receiving it; " +
			"includes the clock offset between the two hosts (negative values count as 0).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	})
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&phaseCollector{rep: rep, desc: prometheus.NewDesc("fleetwave_agent_phase",
			"1 for the phase each service is in (as last reported), 0 for the others.", []string{"service", "phase"}, nil)},
		m.installs, m.reverts, m.anaValue, m.anaThreshold, m.fetchBytes, m.fetchDuration, m.delivery,
		m.sourceBytes, m.peersRejected, m.peerUploaded, m.peerRefused, m.stagedAhead, m.installsReady,
		m.resumedBytes,
	)
	return m
}

// transition is called by the run loop when a service's phase changed from
// `from` to `to` on an input of kind; reason is the machine's reason after
// it.
func (m *agentMetrics) transition(svc string, from, to v1.Phase, kind lifecycle.InputKind, reason string) {
	if m == nil {
		return
	}
	end := func(result string) {
		if m.installing[svc] {
			delete(m.installing, svc)
			m.installs.WithLabelValues(svc, result).Inc()
		}
	}
	switch to {
	case v1.Phase_PHASE_FETCHING:
		m.installing[svc] = true
	case v1.Phase_PHASE_CHECKING:
		if from == v1.Phase_PHASE_HEALTHY || from == v1.Phase_PHASE_REVERTED || from == v1.Phase_PHASE_FAILED {
			m.installing[svc] = true // an install in place (lifecycle spec.go)
		}
	case v1.Phase_PHASE_HEALTHY:
		end("succeeded")
	case v1.Phase_PHASE_FAILED:
		end("failed")
	case v1.Phase_PHASE_REVERTING:
		end("reverted")
		m.reverts.WithLabelValues(svc, revertClass(kind, reason)).Inc()
	case v1.Phase_PHASE_REMOVING:
		delete(m.installing, svc) // an install a removal abandoned is not one that ended
	}
	// REVERTED without REVERTING is a recovery after an agent restart back
	// to a restored REVERTED: nothing was reverted (an agent restart never
	// reverts a release).
}

// resumed is called when a restarted agent restores a service whose
// snapshot was in phase p: an install in progress there is counted when it
// ends, as one that began in this agent would be (a recovery of a settled
// service is not an install).
func (m *agentMetrics) resumed(svc string, p v1.Phase) {
	if m == nil {
		return
	}
	switch p {
	case v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_VERIFYING, v1.Phase_PHASE_STAGING, v1.Phase_PHASE_SWITCHING,
		v1.Phase_PHASE_STARTING, v1.Phase_PHASE_CHECKING:
		m.installing[svc] = true
	}
}

// revertClass names why a revert began from the input that began it.
func revertClass(kind lifecycle.InputKind, reason string) string {
	switch kind {
	case lifecycle.InputExit:
		return revertCrash
	case lifecycle.InputAnalysis:
		return revertAnalysis
	case lifecycle.InputDone:
		return revertStart
	case lifecycle.InputChecks, lifecycle.InputTick:
		// The healthy deadline passed: the checks did not pass in time, or
		// they did and the analysis stayed inconclusive (lifecycle's words).
		if strings.Contains(reason, "analysis inconclusive") {
			return revertAnalysis
		}
		return revertHealth
	}
	return revertOther
}

// forget drops a forgotten service's series (remove.go: forgetRemoved).
func (m *agentMetrics) forget(svc string) {
	if m == nil {
		return
	}
	l := prometheus.Labels{"service": svc}
	m.installs.DeletePartialMatch(l)
	m.reverts.DeletePartialMatch(l)
	m.anaValue.DeletePartialMatch(l)
	m.anaThreshold.DeletePartialMatch(l)
	m.fetchBytes.DeletePartialMatch(l)
	m.fetchDuration.DeletePartialMatch(l)
	delete(m.installing, svc)
}

// analysis records one evaluation of a service's rules; it replaces the
// service's earlier series, so rules removed from the spec disappear.
func (m *agentMetrics) analysis(svc string, results []analysis.Result) {
	if m == nil {
		return
	}
	m.anaValue.DeletePartialMatch(prometheus.Labels{"service": svc})
	m.anaThreshold.DeletePartialMatch(prometheus.Labels{"service": svc})
	for _, r := range results {
		m.anaThreshold.WithLabelValues(svc, r.Rule).Set(r.Threshold)
		if r.Verdict != lifecycle.VerdictInconclusive {
			m.anaValue.WithLabelValues(svc, r.Rule).Set(r.Value)
		}
	}
}

// assignmentsReceived records the delivery latency of an assignment set
// stamped sentAt by the coordinator (unstamped sets are not observed).
func (m *agentMetrics) assignmentsReceived(sentAt *timestamppb.Timestamp, now time.Time) {
	if m == nil || sentAt == nil || sentAt.CheckValid() != nil {
		return
	}
	m.delivery.Observe(max(now.Sub(sentAt.AsTime()).Seconds(), 0))
}

// countSource counts the bytes read through r as downloaded from a kind of
// source.
func (m *agentMetrics) countSource(kind string, r io.Reader) io.Reader {
	if m == nil {
		return r
	}
	return &countingReader{r: r, c: m.sourceBytes.WithLabelValues(kind)}
}

// resumedFrom counts the bytes of a partial download a source was asked to
// continue from.
func (m *agentMetrics) resumedFrom(off int64) {
	if m == nil || off <= 0 {
		return
	}
	m.resumedBytes.Add(float64(off))
}

// countFetch counts the bytes read through r as downloaded for svc.
func (m *agentMetrics) countFetch(svc string, r io.Reader) io.Reader {
	if m == nil {
		return r
	}
	return &countingReader{r: r, c: m.fetchBytes.WithLabelValues(svc)}
}

type countingReader struct {
	r io.Reader
	c prometheus.Counter
}

func (cr *countingReader) Read(p []byte) (int, error) {
	n, err := cr.r.Read(p)
	if n > 0 {
		cr.c.Add(float64(n))
	}
	return n, err
}

// fetchTimed is fetchOnce, timed.
func (a *agent) fetchTimed(ctx context.Context, asg *v1.Assignment, want install.Artifact) (*install.Fetched, error) {
	start := time.Now()
	f, err := a.fetchOnce(ctx, asg, want)
	if a.metrics != nil {
		result := "ok"
		switch {
		case err == nil:
		case ctx.Err() != nil:
			result = "canceled"
		default:
			result = "error"
		}
		a.metrics.fetchDuration.WithLabelValues(asg.GetService(), result).Observe(time.Since(start).Seconds())
	}
	return f, err
}

// phaseCollector exports every service's phase from the reporter's latest
// reports at scrape time (a state set: one series per phase).
type phaseCollector struct {
	rep  *reporter
	desc *prometheus.Desc
}

func (p *phaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *phaseCollector) Collect(ch chan<- prometheus.Metric) {
	p.rep.mu.Lock()
	cur := make(map[string]v1.Phase, len(p.rep.latest))
	for name, r := range p.rep.latest {
		cur[name] = r.GetPhase()
	}
	p.rep.mu.Unlock()
	phases := make([]int32, 0, len(v1.Phase_name))
	for n := range v1.Phase_name {
		if n != int32(v1.Phase_PHASE_UNSPECIFIED) {
			phases = append(phases, n)
		}
	}
	sort.Slice(phases, func(i, j int) bool { return phases[i] < phases[j] })
	for svc, at := range cur {
		for _, n := range phases {
			v := 0.0
			if v1.Phase(n) == at {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, v, svc, phaseLabel(v1.Phase(n)))
		}
	}
}

func phaseLabel(p v1.Phase) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "PHASE_"))
}

// startMetrics makes the agent's instruments and, when Config.MetricsListen
// is set, serves them; stop ends the server.
func (a *agent) startMetrics() (stop func(), err error) {
	a.metrics = newAgentMetrics(a.rep)
	if a.cfg.MetricsListen == "" {
		return func() {}, nil
	}
	tcp, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen %s: %w", a.cfg.MetricsListen, err)
	}
	// Anyone who reaches the port may connect (plain HTTP, no
	// credentials): connections are bounded, and from one address (more
	// are closed as accepted: one address cannot shut Prometheus out),
	// idle ones closed, each request read and answered in bounded time.
	lis := &capListener{Listener: tcp, open: make(chan struct{}, a.opts.metricsMaxConns), maxPerIP: a.opts.metricsMaxConnsPerIP,
		perIP: map[netip.Addr]int{}, conns: map[string]*capConn{}}
	reg := a.metrics.reg
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: a.opts.metricsIdle, MaxHeaderBytes: 16 << 10}
	log := a.log
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server failed")
		}
	}()
	log.Info().Str("addr", lis.Addr().String()).Msg("serving metrics at /metrics")
	if a.opts.metricsReady != nil {
		a.opts.metricsReady(lis.Addr().String())
	}
	return func() { shutdownHTTP(srv, log) }, nil
}

func shutdownHTTP(srv *http.Server, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("metrics server shutdown")
		_ = srv.Close()
	}
}
