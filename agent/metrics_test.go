package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/agent/analysis"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/promcheck"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// newStampingCoordinator is the fake coordinator with one difference: it
// stamps every assignment set with sent_at, as the real hub does.
func newStampingCoordinator(t *testing.T) *fakeCoordinator {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCoordinator{addr: lis.Addr().String(), srv: grpc.NewServer(), artifacts: map[string][]byte{}, changed: make(chan struct{})}
	v1.RegisterAgentServiceServer(f.srv, stampingService{f})
	v1.RegisterArtifactServiceServer(f.srv, f)
	go f.srv.Serve(lis)
	t.Cleanup(f.srv.Stop)
	return f
}

type stampingService struct{ *fakeCoordinator }

func (s stampingService) Connect(stream grpc.BidiStreamingServer[v1.ConnectRequest, v1.ConnectResponse]) error {
	return s.fakeCoordinator.Connect(stampedStream{stream})
}

type stampedStream struct {
	grpc.BidiStreamingServer[v1.ConnectRequest, v1.ConnectResponse]
}

func (s stampedStream) Send(m *v1.ConnectResponse) error {
	m = proto.Clone(m).(*v1.ConnectResponse)
	m.SentAt = timestamppb.Now()
	return s.BidiStreamingServer.Send(m)
}

func scrapeMetrics(t *testing.T, url string) ([]byte, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v\n%s", url, resp.Status, err, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", url, err, body)
	}
	return body, mfs
}

// metricValue finds the series of family name with exactly labels (name,
// value pairs): a counter's or gauge's value, a histogram's count and sum.
func metricValue(mfs map[string]*dto.MetricFamily, name string, labels ...string) (v, sum float64, ok bool) {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range mfs[name].GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		for _, lp := range m.GetLabel() {
			if w, ok := want[lp.GetName()]; !ok || w != lp.GetValue() {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), 0, true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), 0, true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), m.GetHistogram().GetSampleSum(), true
		}
	}
	return 0, 0, false
}

type want struct {
	name     string
	labels   []string
	min, max float64
}

func expectMetrics(t *testing.T, mfs map[string]*dto.MetricFamily, wants ...want) {
	t.Helper()
	for _, w := range wants {
		v, _, ok := metricValue(mfs, w.name, w.labels...)
		if !ok {
			t.Errorf("%s%v: missing", w.name, w.labels)
			continue
		}
		if v < w.min || v > w.max {
			t.Errorf("%s%v = %g, want %g..%g", w.name, w.labels, v, w.min, w.max)
		}
	}
}

// The agent's /metrics over real HTTP: an install that becomes healthy with
// an analysis rule, then one that fails its check and is reverted.
func TestAgentMetricsEndpoint(t *testing.T) {
	began := time.Now() // every assignment set is stamped and received after this
	fc := newStampingCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": badCheck, "pad": "v2"})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)

	addrc := make(chan string, 1)
	opts := testOptions()
	opts.metricsReady = func(a string) { addrc <- a }
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir(),
		MetricsListen: "127.0.0.1:0"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	var url string
	select {
	case a := <-addrc:
		url = "http://" + a + "/metrics"
	case err := <-done:
		t.Fatalf("agent exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("metrics not serving after 10s")
	}

	// The (empty) set answering the hello arrives first, stamped.
	testkit.Eventually(t, 10*time.Second, "first assignment set received", func() bool {
		_, mfs := scrapeMetrics(t, url)
		n, _, _ := metricValue(mfs, "fleetwave_agent_assignment_delivery_seconds")
		return n == 1
	})
	a1 := testAssignment("1.0.0", 1, d1, int64(len(v1Art)), "")
	a1.Spec.Analysis = &v1.Analysis{Interval: durationpb.New(100 * time.Millisecond), Rules: []*v1.AnalysisRule{
		{Name: "restarts", Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{Max: 3}}}}}
	fc.assign(a1)
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	_, mfs := scrapeMetrics(t, url)
	expectMetrics(t, mfs,
		want{"fleetwave_agent_phase", []string{"service", testSvc, "phase", "healthy"}, 1, 1},
		want{"fleetwave_agent_phase", []string{"service", testSvc, "phase", "fetching"}, 0, 0},
		want{"fleetwave_agent_installs_total", []string{"service", testSvc, "result", "succeeded"}, 1, 1},
		want{"fleetwave_agent_analysis_value", []string{"service", testSvc, "rule", "restarts"}, 0, 0},
		want{"fleetwave_agent_analysis_threshold", []string{"service", testSvc, "rule", "restarts"}, 3, 3},
		want{"fleetwave_agent_fetch_bytes_total", []string{"service", testSvc}, float64(len(v1Art)), float64(len(v1Art))},
		want{"fleetwave_agent_fetch_duration_seconds", []string{"service", testSvc, "result", "ok"}, 1, 1},
		// The empty set on connect, then v1.
		want{"fleetwave_agent_assignment_delivery_seconds", nil, 2, 10},
	)

	// v2 fails its check: reverted for health.
	a2 := testAssignment("2.0.0", 2, d2, int64(len(v2Art)), "")
	a2.Spec.HealthyDeadline = durationpb.New(time.Second)
	fc.assign(a2)
	fc.waitFor(t, "v2 reverted", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_REVERTED, "1.0.0")
	})
	body, mfs := scrapeMetrics(t, url)
	total := float64(len(v1Art) + len(v2Art))
	expectMetrics(t, mfs,
		want{"fleetwave_agent_phase", []string{"service", testSvc, "phase", "reverted"}, 1, 1},
		want{"fleetwave_agent_phase", []string{"service", testSvc, "phase", "healthy"}, 0, 0},
		want{"fleetwave_agent_installs_total", []string{"service", testSvc, "result", "succeeded"}, 1, 1},
		want{"fleetwave_agent_installs_total", []string{"service", testSvc, "result", "reverted"}, 1, 1},
		want{"fleetwave_agent_reverts_total", []string{"service", testSvc, "reason", "health"}, 1, 1},
		want{"fleetwave_agent_fetch_bytes_total", []string{"service", testSvc}, total, total},
		want{"fleetwave_agent_fetch_duration_seconds", []string{"service", testSvc, "result", "ok"}, 2, 2},
		want{"fleetwave_agent_assignment_delivery_seconds", nil, 3, 10},
		want{"go_goroutines", nil, 1, 1e9},
		want{"process_start_time_seconds", nil, 1, 1e12},
	)
	// Each set was sent and received during the test: its latency is at
	// most the test's age (a unit mistake, ms as s, would show here).
	if n, sum, _ := metricValue(mfs, "fleetwave_agent_assignment_delivery_seconds"); sum < 0 || sum > n*time.Since(began).Seconds() {
		t.Errorf("delivery latency sum %gs of %g sets within %v: implausible", sum, n, time.Since(began))
	}
	if n := len(mfs["fleetwave_agent_reverts_total"].GetMetric()); n != 1 {
		t.Errorf("%d revert series, want only health", n)
	}
	promcheck.Check(t, body)
	cancel()
	waitDone(t, done)
}

func TestRevertClass(t *testing.T) {
	for _, tt := range []struct {
		kind   lifecycle.InputKind
		reason string
		want   string
	}{
		{lifecycle.InputExit, "2.0.0: crash loop: 3 exits within 1s", revertCrash},
		{lifecycle.InputAnalysis, `2.0.0: rule "errors": error ratio 0.2 > max 0.05`, revertAnalysis},
		{lifecycle.InputDone, "start 2.0.0: exec: not found", revertStart},
		{lifecycle.InputTick, "2.0.0: not healthy within 2s (checks must pass for 1s): script: broken", revertHealth},
		{lifecycle.InputChecks, "1.0.0: health checks failing for 3s after healthy: http: 500", revertHealth},
		{lifecycle.InputTick, "2.0.0: analysis inconclusive at the healthy deadline (2s): no analysis verdict yet", revertAnalysis},
		{lifecycle.InputAssign, "", revertOther},
	} {
		if got := revertClass(tt.kind, tt.reason); got != tt.want {
			t.Errorf("revertClass(%v, %q) = %s, want %s", tt.kind, tt.reason, got, tt.want)
		}
	}
}

// An install is counted once, when it ends; a recovery after a restart is
// not an install; a revert is counted with its class.
func TestTransitionCounts(t *testing.T) {
	m := newAgentMetrics(newReporter(spec.MaxServicesPerHost))
	const (
		idle, fetching, checking = v1.Phase_PHASE_IDLE, v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_CHECKING
		healthy, failed          = v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED
		reverting, reverted      = v1.Phase_PHASE_REVERTING, v1.Phase_PHASE_REVERTED
		starting                 = v1.Phase_PHASE_STARTING
	)
	steps := []struct {
		from, to v1.Phase
		kind     lifecycle.InputKind
	}{
		{idle, fetching, lifecycle.InputAssign},
		{fetching, checking, lifecycle.InputDone},
		{checking, healthy, lifecycle.InputChecks}, // install 1 succeeded
		{healthy, reverting, lifecycle.InputExit},  // crash during the watch: a revert, not another install
		{reverting, reverted, lifecycle.InputChecks},
		{reverted, fetching, lifecycle.InputAssign},
		{fetching, failed, lifecycle.InputDone}, // install 2 failed before the switch
		{failed, fetching, lifecycle.InputAssign},
		{fetching, checking, lifecycle.InputDone},
		{checking, reverting, lifecycle.InputAnalysis}, // install 3 reverted
		{reverting, failed, lifecycle.InputChecks},     // the last good failed too: not an install
		{starting, checking, lifecycle.InputDone},      // agent restarted: recovery
		{checking, healthy, lifecycle.InputChecks},     // not an install
		{checking, reverted, lifecycle.InputChecks},    // recovery back to a restored REVERTED: no revert
	}
	for _, s := range steps {
		m.transition("web", s.from, s.to, s.kind, "")
	}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	for _, w := range []want{
		{"fleetwave_agent_installs_total", []string{"service", "web", "result", "succeeded"}, 1, 1},
		{"fleetwave_agent_installs_total", []string{"service", "web", "result", "failed"}, 1, 1},
		{"fleetwave_agent_installs_total", []string{"service", "web", "result", "reverted"}, 1, 1},
		{"fleetwave_agent_reverts_total", []string{"service", "web", "reason", "crash"}, 1, 1},
		{"fleetwave_agent_reverts_total", []string{"service", "web", "reason", "analysis"}, 1, 1},
	} {
		v, _, ok := metricValue(byName, w.name, w.labels...)
		if !ok || v != w.min {
			t.Errorf("%s%v = %g (found %v), want %g", w.name, w.labels, v, ok, w.min)
		}
	}
	if v, _, ok := metricValue(byName, "fleetwave_agent_reverts_total", "service", "web", "reason", "restart"); ok {
		t.Errorf("an agent restart counted as a revert: %g", v)
	}
	// An install resumed by a restarted agent is counted when it ends.
	m.resumed("web", checking)
	m.transition("web", checking, healthy, lifecycle.InputChecks, "")
	mfs, err = m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	if v, _, _ := metricValue(byName, "fleetwave_agent_installs_total", "service", "web", "result", "succeeded"); v != 2 {
		t.Errorf("installs succeeded = %g after a resumed install, want 2", v)
	}
}

// Each evaluation replaces the service's analysis series; inconclusive
// rules have a threshold and no value.
func TestAnalysisSeriesReplaced(t *testing.T) {
	m := newAgentMetrics(newReporter(spec.MaxServicesPerHost))
	m.analysis("web", []analysis.Result{
		{RuleResult: lifecycle.RuleResult{Rule: "errors", Verdict: lifecycle.VerdictPass}, Value: 0.01, Threshold: 0.05},
		{RuleResult: lifecycle.RuleResult{Rule: "old", Verdict: lifecycle.VerdictPass}, Value: 1, Threshold: 2},
	})
	m.analysis("web", []analysis.Result{
		{RuleResult: lifecycle.RuleResult{Rule: "errors", Verdict: lifecycle.VerdictFail}, Value: 0.2, Threshold: 0.05},
		{RuleResult: lifecycle.RuleResult{Rule: "p99", Verdict: lifecycle.VerdictInconclusive}, Threshold: 0.5},
	})
	m.analysis("api", []analysis.Result{{RuleResult: lifecycle.RuleResult{Rule: "errors", Verdict: lifecycle.VerdictPass}, Value: 0, Threshold: 0.1}})
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	expectMetrics(t, byName,
		want{"fleetwave_agent_analysis_value", []string{"service", "web", "rule", "errors"}, 0.2, 0.2},
		want{"fleetwave_agent_analysis_threshold", []string{"service", "web", "rule", "errors"}, 0.05, 0.05},
		want{"fleetwave_agent_analysis_threshold", []string{"service", "web", "rule", "p99"}, 0.5, 0.5},
		want{"fleetwave_agent_analysis_value", []string{"service", "api", "rule", "errors"}, 0, 0},
	)
	for _, gone := range [][]string{{"service", "web", "rule", "old"}, {"service", "web", "rule", "p99"}} {
		if _, _, ok := metricValue(byName, "fleetwave_agent_analysis_value", gone...); ok {
			t.Errorf("analysis value %v still exported", gone)
		}
	}
}

func TestMetricsListenValidated(t *testing.T) {
	cfg := Config{Insecure: true, Coordinators: []string{"a:1"}, HostID: "h1", DataDir: "d", MetricsListen: "nope"}
	if err := cfg.Validate(); err == nil || !bytes.HasPrefix([]byte(err.Error()), []byte("metrics_listen:")) {
		t.Errorf("Validate: %v, want an error naming metrics_listen", err)
	}
	cfg.MetricsListen = "127.0.0.1:9101"
	if err := cfg.Validate(); err != nil {
		t.Errorf("valid metrics_listen rejected: %v", err)
	}
}

// An install in place (a judging-only spec change: a settled phase goes
// straight to CHECKING) is an install: counted when it ends, like one that
// began at FETCHING; its revert too.
func TestInPlaceInstallCounted(t *testing.T) {
	m := newAgentMetrics(newReporter(spec.MaxServicesPerHost))
	const (
		checking, healthy       = v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_HEALTHY
		reverting, reverted     = v1.Phase_PHASE_REVERTING, v1.Phase_PHASE_REVERTED
		failed, starting, idle  = v1.Phase_PHASE_FAILED, v1.Phase_PHASE_STARTING, v1.Phase_PHASE_IDLE
		fetching, assign, check = v1.Phase_PHASE_FETCHING, lifecycle.InputAssign, lifecycle.InputChecks
	)
	for _, s := range []struct {
		from, to v1.Phase
		kind     lifecycle.InputKind
	}{
		{idle, fetching, assign},
		{fetching, checking, lifecycle.InputDone},
		{checking, healthy, check},   // install 1 succeeded
		{healthy, checking, assign},  // in place
		{checking, healthy, check},   // install 2 succeeded
		{healthy, checking, assign},  // in place
		{checking, reverting, check}, // install 3 reverted
		{reverting, reverted, check},
		{reverted, checking, assign}, // in place
		{checking, reverting, check}, // install 4 reverted
		{reverting, failed, check},
		{failed, checking, assign}, // in place
		{checking, healthy, check}, // install 5 succeeded
		{starting, checking, lifecycle.InputDone},
		{checking, healthy, check}, // a recovery: not an install
	} {
		m.transition("web", s.from, s.to, s.kind, "")
	}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	for _, w := range []want{
		{"fleetwave_agent_installs_total", []string{"service", "web", "result", "succeeded"}, 3, 3},
		{"fleetwave_agent_installs_total", []string{"service", "web", "result", "reverted"}, 2, 2},
	} {
		if v, _, ok := metricValue(byName, w.name, w.labels...); !ok || v != w.min {
			t.Errorf("%s%v = %g (found %v), want %g", w.name, w.labels, v, ok, w.min)
		}
	}
}

// TestMetricsListenerBounded: the metrics port (plain HTTP, anyone who
// reaches it) keeps at most metricsMaxConnsPerIP connections from one
// address (one more is closed as accepted: a request on it gets no
// answer; another address, Prometheus's, is still served), and closes
// idle ones. (Failed before: 300 of 300 idle connections were held for
// good, each a file and a goroutine.)
func TestMetricsListenerBounded(t *testing.T) {
	serve := func(set func(*options)) string {
		t.Helper()
		a := &agent{cfg: Config{MetricsListen: "127.0.0.1:0"}, opts: testOptions(), log: testLogger(t), rep: newReporter(spec.MaxServicesPerHost)}
		addrc := make(chan string, 1)
		a.opts.metricsReady = func(addr string) { addrc <- addr }
		set(&a.opts)
		stop, err := a.startMetrics()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		return <-addrc
	}
	dial := func(from, addr string) net.Conn {
		t.Helper()
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	scrape := func(c net.Conn) error {
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("scrape: %s", resp.Status)
		}
		return nil
	}

	// Two kept-alive connections from one address, idle for an hour at
	// most: a third from it is closed unanswered; another address is
	// served.
	addr := serve(func(o *options) { o.metricsMaxConnsPerIP = 2; o.metricsIdle = time.Hour })
	for range 2 {
		if err := scrape(dial("127.0.0.1", addr)); err != nil {
			t.Fatal(err)
		}
	}
	if err := scrape(dial("127.0.0.1", addr)); err == nil {
		t.Fatal("a third connection from one address was answered, want it closed")
	}
	if err := scrape(dial("127.0.0.2", addr)); err != nil {
		t.Fatalf("a connection from another address: %v", err)
	}

	// Idle after a scrape: closed by the server, its place free again.
	addr = serve(func(o *options) { o.metricsMaxConnsPerIP = 1; o.metricsIdle = 200 * time.Millisecond })
	c := dial("127.0.0.1", addr)
	if err := scrape(c); err != nil {
		t.Fatal(err)
	}
	if err := closedByServer(t, c); err != io.EOF && !isReset(err) {
		t.Fatalf("an idle connection: %v, want closed by the server", err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "a scrape once the idle connection went", func() error {
		return scrape(dial("127.0.0.1", addr))
	})
}
