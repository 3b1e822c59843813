package coordinator

// Prometheus metrics of one coordinator. Each Coordinator has its own
// registry (tests run several in one process; nothing is registered with
// the global default registry), served at /metrics on Config.MetricsListen.
//
// What is measured where:
//   - rollouts, rollout and wave durations, lead time: by the rollout leader
//     as it commits a rollout's next state (leader.commit, leader.start), so
//     only the coordinator that leads counts them;
//   - release records deleted: by the rollout leader as it deletes them
//     (pruneAllReleases);
//   - hosts by service, version and phase: computed at scrape time from the
//     mirror of etcd (the same on every coordinator);
//   - connected agents: streams held by this coordinator (the hub);
//   - assignment delivery: from the moment the hub notices a change of the
//     desired state (or accepts a connection) to the moment the new
//     assignment set has been written to the host's stream;
//   - etcd request latency: every request through the etcd client's KV
//     (store.InstrumentKV);
//   - report transactions, reports written, coalesced and dropped: the hub's report
//     writer (reports.go), on every coordinator for its own streams;
//   - leader, etcd session losses, calls forwarded to the leader;
//   - artifact files held and deleted: this coordinator's store (each
//     coordinator has its own).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Buckets, in seconds.
var (
	// Fast paths: an etcd request, pushing an assignment set to a stream.
	fastBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// A wave: seconds (a canary with no bake) to hours.
	waveBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800}
	// A rollout: seconds to a day.
	rolloutBuckets = []float64{5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400}
	// Lead time: minutes to a month; 3600 is the DORA elite limit.
	leadTimeBuckets = []float64{300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800, 2592000}
)

// metrics holds the coordinator's instruments.
type metrics struct {
	reg *prometheus.Registry

	rollouts        *prometheus.CounterVec   // service, result
	rolloutDuration *prometheus.HistogramVec // service, result
	waveDuration    *prometheus.HistogramVec // service, result
	leadTime        *prometheus.HistogramVec // service
	delivery        *prometheus.HistogramVec // trigger
	etcdLatency     *prometheus.HistogramVec // op
	etcdFailures    *prometheus.CounterVec   // op
	sessionLosses   prometheus.Counter
	forwarded       *prometheus.CounterVec // method, result
	// The report path (reportWriter).
	reportTxns, reportsWritten, reportsCoalesced, reportsDropped prometheus.Counter
	pushPasses                                                   prometheus.Counter
	releasesDeleted                                              *prometheus.CounterVec // service
}

// newMetrics makes the coordinator's registry with the Go and process
// collectors and the instruments; the collectors that read the
// coordinator's state (hub, leader, mirror) are added by startMetrics.
func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.rollouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_rollouts_total",
		Help: "Rollouts that ended, by service and result (succeeded, failed, superseded); counted by the rollout leader.",
	}, []string{"service", "result"})
	m.rolloutDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetwave_coordinator_rollout_duration_seconds",
		Help:    "Time from a rollout's start (after any approval) to its end, by service and result; rollouts over no host are not observed.",
		Buckets: rolloutBuckets,
	}, []string{"service", "result"})
	m.waveDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetwave_coordinator_wave_duration_seconds",
		Help:    "Time from a wave's start to its end (bake included), by service and result (done, failed).",
		Buckets: waveBuckets,
	}, []string{"service", "result"})
	m.leadTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetwave_coordinator_lead_time_seconds",
		Help:    "Lead time for changes: from the release's commit time to the end of its successful rollout (every selected host live), by service; releases without a commit time and rollbacks are not observed.",
		Buckets: leadTimeBuckets,
	}, []string{"service"})
	m.delivery = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "fleetwave_coordinator_assignment_delivery_seconds",
		Help: "Time from the hub noticing a change of the desired state (trigger=change) or accepting an agent's stream (trigger=connect) " +
			"to the new assignment set being written to the host's stream.",
		Buckets: fastBuckets,
	}, []string{"trigger"})
	m.etcdLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetwave_coordinator_etcd_request_duration_seconds",
		Help:    "Latency of etcd requests by op (get, put, delete, txn, compact).",
		Buckets: fastBuckets,
	}, []string{"op"})
	m.etcdFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_etcd_request_failures_total",
		Help: "etcd requests that returned an error (cancellations excluded), by op.",
	}, []string{"op"})
	m.sessionLosses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_etcd_session_losses_total",
		Help: "Times this coordinator's etcd session lease expired (it stepped down and ended its agent streams).",
	})
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_forwarded_calls_total",
		Help: "Leader-only operator calls this coordinator forwarded to the rollout leader (or failed to), by method and result (ok, error).",
	}, []string{"method", "result"})
	m.reportTxns = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_report_txns_total",
		Help: "etcd transactions that wrote agents' reports (failed ones included; up to --etcd-max-txn-ops - 28 reports each).",
	})
	m.reportsWritten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_reports_written_total",
		Help: "Agents' reports stored in etcd.",
	})
	m.reportsCoalesced = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_reports_coalesced_total",
		Help: "Agents' reports replaced, before their transaction, by a newer report of the same host and service (never written).",
	})
	m.pushPasses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_push_passes_total",
		Help: "Passes of the agent hub over every connected host to push changed assignments (after a change of what hosts should run; staging and host-record changes at most one a second).",
	})
	m.reportsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_reports_dropped_total",
		Help: "Agents' reports dropped unwritten because they arrived on an older stream of their host after a newer stream of it began its hello (they would overwrite its newer status).",
	})
	m.releasesDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetwave_coordinator_releases_deleted_total",
		Help: "Release records the rollout leader deleted, by service: their artifacts pruned, older than --rollout-retention, named by no stored rollout (a tombstone of each is kept).",
	}, []string{"service"})
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.rollouts, m.rolloutDuration, m.waveDuration, m.leadTime, m.delivery,
		m.etcdLatency, m.etcdFailures, m.sessionLosses, m.forwarded,
		m.reportTxns, m.reportsWritten, m.reportsCoalesced, m.reportsDropped, m.pushPasses, m.releasesDeleted,
	)
	return m
}

// observeEtcd is store.InstrumentKV's observer.
func (m *metrics) observeEtcd(op string, d time.Duration, err error) {
	m.etcdLatency.WithLabelValues(op).Observe(d.Seconds())
	if err != nil && !errors.Is(err, context.Canceled) {
		m.etcdFailures.WithLabelValues(op).Inc()
	}
}

// queuedSet is an assignment set waiting for a host's stream (hub), with
// when the hub noticed what produced it, for the delivery latency.
type queuedSet struct {
	set     *encodedSet
	since   time.Time
	connect bool // queued when the stream was accepted
}

// delivered records that q was written to its stream.
func (m *metrics) delivered(q queuedSet) {
	trigger := "change"
	if q.connect {
		trigger = "connect"
	}
	m.delivery.WithLabelValues(trigger).Observe(time.Since(q.since).Seconds())
}

// rolloutWritten is called by the leader after it wrote a rollout's next
// state: prev is the state before (nil for a new rollout). It counts what
// ended between the two: waves, and the rollout itself.
func (m *metrics) rolloutWritten(prev, next *v1.Rollout, release func(service, version string) (*v1.Release, bool)) {
	svc := next.GetService()
	for i, w := range next.GetWaves() {
		if w.GetDoneAt() == nil || w.GetStartedAt() == nil {
			continue
		}
		if pw := prev.GetWaves(); i < len(pw) && pw[i].GetDoneAt() != nil {
			continue // ended earlier
		}
		result := "done"
		if w.GetState() == v1.WaveState_WAVE_STATE_FAILED {
			result = "failed"
		}
		m.waveDuration.WithLabelValues(svc, result).Observe(nonNegative(w.GetDoneAt().AsTime().Sub(w.GetStartedAt().AsTime())))
	}
	if !rollout.Terminal(next) || rollout.Terminal(prev) {
		return
	}
	result := rolloutResult(next.GetState())
	m.rollouts.WithLabelValues(svc, result).Inc()
	if len(next.GetWaves()) == 0 || next.GetStartedAt() == nil || next.GetFinishedAt() == nil {
		return // over no host, or never started (superseded while waiting for approval)
	}
	end := next.GetFinishedAt().AsTime()
	m.rolloutDuration.WithLabelValues(svc, result).Observe(nonNegative(end.Sub(next.GetStartedAt().AsTime())))
	if next.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || next.GetRollback() || release == nil {
		return
	}
	if rel, ok := release(svc, next.GetToVersion()); ok && rel.GetCommitTime() != nil {
		m.leadTime.WithLabelValues(svc).Observe(nonNegative(end.Sub(rel.GetCommitTime().AsTime())))
	}
}

func rolloutResult(s v1.RolloutState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROLLOUT_STATE_"))
}

func phaseLabel(p v1.Phase) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "PHASE_"))
}

func nonNegative(d time.Duration) float64 {
	return max(d.Seconds(), 0)
}

// countForwarded wraps the forwarder's interceptor: a leader-only call that
// the forwarder did not hand to the local handler went (or was meant to go)
// to the leader.
func (m *metrics) countForwarded(next grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, ok := leaderMethods[info.FullMethod]; !ok {
			return next(ctx, req, info, handler)
		}
		local := false
		resp, err := next(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			local = true
			return handler(ctx, req)
		})
		if !local {
			result := "ok"
			if err != nil {
				result = "error"
			}
			m.forwarded.WithLabelValues(path.Base(info.FullMethod), result).Inc()
		}
		return resp, err
	}
}

// hostsCollector counts hosts per service, running version and phase at
// scrape time from the mirror. A host whose stream is down on every
// coordinator counts in phase "unknown" (the rollout rules' word for it).
type hostsCollector struct {
	c    *Coordinator
	desc *prometheus.Desc
}

func (h *hostsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *hostsCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ service, version, phase string }
	counts := map[key]int{}
	for _, host := range h.c.mirror.Hosts() {
		connected := h.c.mirror.Connected(host.GetId())
		for _, r := range h.c.mirror.Reports(host.GetId()) {
			k := key{r.GetService(), r.GetCurrentVersion(), phaseLabel(r.GetPhase())}
			if k.version == "" {
				k.version = "none"
			}
			if !connected {
				k.phase = "unknown"
			}
			counts[k]++
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(h.desc, prometheus.GaugeValue, float64(n), k.service, k.version, k.phase)
	}
}

// stagedCollector counts, per service whose rollout in flight stages
// ahead (rollout.stage_ahead), the hosts of its plan that report its
// target's artifact staged, and those staging it now (admitted, not staged
// yet), from the hub's desired table.
type stagedCollector struct {
	c              *Coordinator
	staged, active *prometheus.Desc
}

func (s *stagedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- s.staged; ch <- s.active }

func (s *stagedCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range s.c.hub.table().services {
		if e.stage == nil {
			continue
		}
		name := e.svc.GetSpec().GetName()
		ch <- prometheus.MustNewConstMetric(s.staged, prometheus.GaugeValue, float64(e.stage.Staged), name, e.latest.GetToVersion())
		ch <- prometheus.MustNewConstMetric(s.active, prometheus.GaugeValue, float64(e.stage.Admitted()), name, e.latest.GetToVersion())
	}
}

// artifactFilesCollector counts the artifact files of this coordinator's
// store and their bytes at scrape time (one directory read).
type artifactFilesCollector struct {
	c            *Coordinator
	files, bytes *prometheus.Desc
}

func (a *artifactFilesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- a.files; ch <- a.bytes }

func (a *artifactFilesCollector) Collect(ch chan<- prometheus.Metric) {
	files, err := a.c.arts.Files()
	if err != nil {
		return
	}
	var n int64
	for _, f := range files {
		n += f.Size
	}
	ch <- prometheus.MustNewConstMetric(a.files, prometheus.GaugeValue, float64(len(files)))
	ch <- prometheus.MustNewConstMetric(a.bytes, prometheus.GaugeValue, float64(n))
}

// etcdCollector reads etcd's database size (each endpoint's status), the
// configured quota and the audit log's length at scrape time: an audit log
// or history that grows shows before etcd reaches its quota and refuses
// writes (NOSPACE), which stops every rollout.
type etcdCollector struct {
	c                         *Coordinator
	size, inUse, quota, audit *prometheus.Desc
}

func newEtcdCollector(c *Coordinator) *etcdCollector {
	return &etcdCollector{c: c,
		size: prometheus.NewDesc("fleetwave_coordinator_etcd_db_size_bytes",
			"Size of etcd's database file by endpoint (what counts against etcd's quota), read at scrape time.", []string{"endpoint"}, nil),
		inUse: prometheus.NewDesc("fleetwave_coordinator_etcd_db_size_in_use_bytes",
			"Bytes of etcd's database file in use by endpoint (the rest is freed by a defragmentation), read at scrape time.", []string{"endpoint"}, nil),
		quota: prometheus.NewDesc("fleetwave_coordinator_etcd_quota_bytes",
			"etcd's backend quota as configured (--etcd-quota-bytes; the embedded etcd's own): at it etcd refuses writes.", nil, nil),
		audit: prometheus.NewDesc("fleetwave_coordinator_audit_entries",
			"Entries in the audit log (kept at most --audit-max-entries), read at scrape time.", nil, nil),
	}
}

func (e *etcdCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- e.size
	ch <- e.inUse
	ch <- e.quota
	ch <- e.audit
}

func (e *etcdCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ch <- prometheus.MustNewConstMetric(e.quota, prometheus.GaugeValue, float64(e.c.cfg.EtcdQuotaBytes))
	for _, ep := range e.c.cli.Endpoints() {
		st, err := e.c.cli.Status(ctx, ep)
		if err != nil {
			e.c.log.Debug().Err(err).Str("endpoint", ep).Msg("etcd status for metrics")
			continue
		}
		ch <- prometheus.MustNewConstMetric(e.size, prometheus.GaugeValue, float64(st.DbSize), ep)
		ch <- prometheus.MustNewConstMetric(e.inUse, prometheus.GaugeValue, float64(st.DbSizeInUse), ep)
	}
	if n, err := e.c.store.CountAudit(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(e.audit, prometheus.GaugeValue, float64(n))
	}
}

// startMetrics registers the collectors that read the coordinator's state
// and, when Config.MetricsListen is set, serves /metrics there. stop ends
// the server.
func (c *Coordinator) startMetrics() (stop func(), err error) {
	m := c.metrics
	m.reg.MustRegister(c.limits.collectors()...)
	m.reg.MustRegister(newEtcdCollector(c))
	m.reg.MustRegister(
		&hostsCollector{c: c, desc: prometheus.NewDesc("fleetwave_coordinator_hosts",
			"Hosts by service, the version they run (none: nothing yet) and the phase they last reported (unknown: stream down), from etcd; the same on every coordinator.",
			[]string{"service", "version", "phase"}, nil)},
		&stagedCollector{c: c,
			staged: prometheus.NewDesc("fleetwave_coordinator_staged_hosts",
				"Hosts of the rollout in flight (rollout.stage_ahead) that report its target's artifact staged ahead of their wave.",
				[]string{"service", "version"}, nil),
			active: prometheus.NewDesc("fleetwave_coordinator_staging_hosts",
				"Hosts of the rollout in flight (rollout.stage_ahead) admitted to stage its target now, not staged yet (each holder's rollout.StageFanout children in the staging tree, and rollout.StageOrigin roots).",
				[]string{"service", "version"}, nil)},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fleetwave_coordinator_connected_agents",
			Help: "Agents whose stream this coordinator holds.",
		}, func() float64 {
			c.hub.mu.Lock()
			defer c.hub.mu.Unlock()
			return float64(len(c.hub.conns))
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fleetwave_coordinator_artifact_egress_bytes_total",
			Help: "Artifact bytes this coordinator's ArtifactService sent (to agents, and to other coordinators copying an artifact); peer-to-peer transfers between agents are not counted here.",
		}, func() float64 { return float64(c.arts.BytesSent()) }),
		&artifactFilesCollector{c: c,
			files: prometheus.NewDesc("fleetwave_coordinator_artifact_files",
				"Artifact files this coordinator's store holds (uploads in progress excluded).", nil, nil),
			bytes: prometheus.NewDesc("fleetwave_coordinator_artifact_bytes",
				"Bytes of the artifact files this coordinator's store holds (uploads in progress excluded).", nil, nil)},
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fleetwave_coordinator_artifact_files_deleted_total",
			Help: "Artifact files this coordinator deleted from its store: every release naming them had its artifact pruned (--keep-release-artifacts), or none named them past --artifact-upload-grace.",
		}, func() float64 { return float64(c.arts.Removed()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "fleetwave_coordinator_events_undecodable_total",
			Help: "Event records this coordinator's event listings and watches (ListEvents, WatchEvents, the dashboard) skipped because their values did not decode; each is logged with its key.",
		}, func() float64 { return float64(c.store.UndecodableEvents()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fleetwave_coordinator_leader",
			Help: "1 while this coordinator is the rollout leader, else 0.",
		}, func() float64 {
			if c.leader.leading.Load() {
				return 1
			}
			return 0
		}),
	)
	if c.cfg.MetricsListen == "" {
		return func() {}, nil
	}
	return serveMetrics(c.cfg.MetricsListen, m.reg, c.log, c.cfg.MetricsReady)
}

// serveMetrics serves reg at /metrics on addr until stop.
func serveMetrics(addr string, reg *prometheus.Registry, log zerolog.Logger, ready func(string)) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server failed")
		}
	}()
	log.Info().Str("addr", lis.Addr().String()).Msg("serving metrics at /metrics")
	if ready != nil {
		ready(lis.Addr().String())
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	}, nil
}
