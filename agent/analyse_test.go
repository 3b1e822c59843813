package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"github.com/fleetwave/fleetwave/agent/analysis/fetch"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/probe"
	"github.com/fleetwave/fleetwave/demo/demoapp"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// demoAppEnv makes the test binary run as the demo app (see TestMain): the
// agent supervises the test binary itself, so no separate build is needed.
const demoAppEnv = "FLEETWAVE_AGENT_TEST_DEMOAPP"

func TestMain(m *testing.M) {
	if os.Getenv(handoverAppEnv) == "1" {
		os.Exit(handoverAppMain())
	}
	if os.Getenv(demoAppEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		err := demoapp.Run(ctx, os.Args[1:], os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "demoapp: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// demoAssignment runs the demo app on the host's port label, with an HTTP
// check and analysis rules scraped every interval over window.
func demoAssignment(t *testing.T, version string, gen int64, art []byte, interval, window time.Duration) *v1.Assignment {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	port := "${host.label.port}"
	return &v1.Assignment{
		Service:    testSvc,
		Generation: gen,
		Release: &v1.Release{Service: testSvc, Version: version, Artifact: &v1.Artifact{
			Sha256: sha(art), Size: int64(len(art)),
		}},
		Spec: &v1.ServiceSpec{
			Name: testSvc,
			Run: &v1.RunSpec{
				Command:   []string{self, "--listen", "127.0.0.1:" + port},
				Env:       map[string]string{demoAppEnv: "1"},
				StopGrace: durationpb.New(2 * time.Second),
			},
			Checks: []*v1.Check{{
				Name:     "http",
				Kind:     &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:" + port + "/healthz"}},
				Interval: durationpb.New(200 * time.Millisecond),
			}},
			MinHealthyTime:  durationpb.New(time.Second),
			HealthyDeadline: durationpb.New(20 * time.Second),
			Analysis: &v1.Analysis{
				MetricsUrl: "http://127.0.0.1:" + port + "/metrics",
				Interval:   durationpb.New(interval),
				Window:     durationpb.New(window),
				Watch:      durationpb.New(60 * time.Second),
				Rules: []*v1.AnalysisRule{
					{Name: "errors", Kind: &v1.AnalysisRule_ErrorRatio{ErrorRatio: &v1.ErrorRatioRule{
						Metric: "http_requests_total", Max: 0.05, MinRequests: 10}}},
					{Name: "latency", Kind: &v1.AnalysisRule_Latency{Latency: &v1.LatencyRule{
						Metric: "http_request_duration_seconds", Quantile: 0.99, MaxSeconds: 1, MinSamples: 10}}},
					{Name: "restarts", Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{Max: 2}}},
				},
			},
		},
	}
}

// observation is one answer the load generator got.
type observation struct {
	at   time.Time
	code int // 0: no answer
	body string
}

// loadGen sends GET / about every 5 ms until stopped and records answers.
type loadGen struct {
	mu   sync.Mutex
	obs  []observation
	stop func()
}

func startLoad(t *testing.T, url string) *loadGen {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lg := &loadGen{}
	lg.stop = func() { cancel(); <-done }
	t.Cleanup(lg.stop)
	client := &http.Client{Timeout: 2 * time.Second}
	go func() {
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			o := observation{}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return
			}
			if resp, err := client.Do(req); err == nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
				resp.Body.Close()
				o.code, o.body = resp.StatusCode, string(b)
			}
			o.at = time.Now()
			lg.mu.Lock()
			lg.obs = append(lg.obs, o)
			lg.mu.Unlock()
		}
	}()
	return lg
}

// first returns the first answer after `after` that matches.
func (lg *loadGen) first(after time.Time, match func(observation) bool) (observation, bool) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	for _, o := range lg.obs {
		if o.at.After(after) && match(o) {
			return o, true
		}
	}
	return observation{}, false
}

func reportCheck(r *v1.ServiceReport, name string) *v1.CheckResult {
	for _, c := range r.GetChecks() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

// TestAnalysisRevertsDegradedReleases runs real demo app releases under load:
// v1 is healthy; v2 answers half its requests with 500 while /healthz says
// ok and is reverted during its checks; v3 degrades only after it reported
// healthy and is reverted during its watch, at the same generation. It logs
// the time from v3's first bad answer until v1 serves again.
func TestAnalysisRevertsDegradedReleases(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real releases for about 15 s")
	}
	fc := newFakeCoordinator(t)
	port := strconv.Itoa(ports.Port(t))
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": port}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	lg := startLoad(t, "http://127.0.0.1:"+port+"/")

	last := func() *v1.ServiceReport {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return lastReport(fc.reports, testSvc)
	}
	release := func(version string, gen int64, files map[string]string, interval, window time.Duration) *v1.Assignment {
		files["VERSION"] = version
		art := tarGz(t, files)
		fc.addArtifact(art)
		a := demoAssignment(t, version, gen, art, interval, window)
		fc.assign(a)
		return a
	}

	// v1: healthy, with every rule passing in the report.
	// v1 and v2 are analysed every 250ms to keep the test short; v3, the
	// measured case, every 1s over 5s.
	release("v1", 1, map[string]string{}, 250*time.Millisecond, 1500*time.Millisecond)
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "v1")
	})
	r := last()
	for _, rule := range []string{"errors", "latency", "restarts"} {
		if c := reportCheck(r, "analysis:"+rule); c == nil || !c.GetOk() || !strings.Contains(c.GetDetail(), `rule "`+rule+`"`) {
			t.Fatalf("v1 HEALTHY report lacks a passing analysis:%s: %v", rule, r.GetChecks())
		}
	}

	// v2: half its requests fail while /healthz passes: reverted while checking.
	release("v2", 2, map[string]string{"ERROR_RATE": "0.5"}, 250*time.Millisecond, 1500*time.Millisecond)
	fc.waitFor(t, "v2 reverted", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "v1") && r.GetLastGoodVersion() == "v1"
	})
	r = last()
	if !strings.HasPrefix(r.GetReason(), `v2: rule "errors": error ratio `) || !strings.Contains(r.GetReason(), "> max 0.050") {
		t.Fatalf("v2 reason %q does not name the rule, the value and the limit", r.GetReason())
	}
	fc.mu.Lock()
	for _, rep := range fc.reports {
		if rep.GetGeneration() == 2 && rep.GetPhase() == v1.Phase_PHASE_HEALTHY {
			t.Errorf("v2 reported HEALTHY: %v", rep)
		}
	}
	fc.mu.Unlock()

	// v3: fine at first, errors after 5 s: HEALTHY, then REVERTED at the
	// same generation during its watch.
	release("v3", 3, map[string]string{"ERROR_RATE": "0.5", "DEGRADE_AFTER": "5s"}, time.Second, 5*time.Second)
	fc.waitFor(t, "v3 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 3, v1.Phase_PHASE_HEALTHY, "v3")
	})
	healthyAt := time.Now()
	var revertingAt time.Time
	// REVERTING is passed through: look for it among all reports, not only
	// the last (REVERTED may follow before the poll sees it).
	fc.waitFor(t, "v3 reverting", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return slices.ContainsFunc(rs, func(r *v1.ServiceReport) bool {
			return r.GetService() == testSvc && reportIs(r, 3, v1.Phase_PHASE_REVERTING, "v3")
		})
	})
	revertingAt = time.Now()
	fc.waitFor(t, "v3 reverted", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 3, v1.Phase_PHASE_REVERTED, "v1") && r.GetLastGoodVersion() == "v1" && r.GetTargetVersion() == "v3"
	})
	revertedAt := time.Now()
	r = last()
	if !strings.HasPrefix(r.GetReason(), `v3: rule "errors": error ratio `) || !strings.Contains(r.GetReason(), "> max 0.050") {
		t.Fatalf("v3 reason %q", r.GetReason())
	}
	if got := currentLink(t, cfg.DataDir); got != "v1" {
		t.Fatalf("current -> %q", got)
	}
	bad, ok := lg.first(healthyAt, func(o observation) bool { return o.code == http.StatusInternalServerError })
	if !ok {
		t.Fatal("the load generator never saw v3 fail")
	}
	back, ok := lg.first(bad.at, func(o observation) bool { return o.code == http.StatusOK && o.body == "hello from v1" })
	if !ok {
		testkit.Eventually(t, 10*time.Second, "v1 serving again", func() bool {
			back, ok = lg.first(bad.at, func(o observation) bool { return o.code == http.StatusOK && o.body == "hello from v1" })
			return ok
		})
	}
	t.Logf("v3 degraded %v after HEALTHY; first bad answer -> REVERTING report %v, -> v1 serving again %v, -> REVERTED report %v (interval 1s, window 5s)",
		bad.at.Sub(healthyAt).Round(time.Millisecond), revertingAt.Sub(bad.at).Round(time.Millisecond),
		back.at.Sub(bad.at).Round(time.Millisecond), revertedAt.Sub(bad.at).Round(time.Millisecond))
	cancel()
	waitDone(t, done)
}

// The lifecycle's copies of the spec's defaults must not drift.
func TestLifecycleDefaultsMatchSpec(t *testing.T) {
	if lifecycle.DefaultWatch != spec.DefaultAnalysisWatch {
		t.Errorf("lifecycle.DefaultWatch %v, spec %v", lifecycle.DefaultWatch, spec.DefaultAnalysisWatch)
	}
	if lifecycle.DefaultReadyTimeout != spec.DefaultReadyTimeout || lifecycle.ReadyNotify != spec.ReadyNotify {
		t.Errorf("lifecycle ready timeout %v / %q, spec %v / %q", lifecycle.DefaultReadyTimeout, lifecycle.ReadyNotify, spec.DefaultReadyTimeout, spec.ReadyNotify)
	}
	if lifecycle.MaxReportChecks != spec.MaxChecksAndRules {
		t.Errorf("lifecycle.MaxReportChecks %d, spec.MaxChecksAndRules %d", lifecycle.MaxReportChecks, spec.MaxChecksAndRules)
	}
	if d := probe.Interval(&v1.Check{}); lifecycle.DefaultCheckInterval != d {
		t.Errorf("lifecycle.DefaultCheckInterval %v, probe %v", lifecycle.DefaultCheckInterval, d)
	}
}

func TestValidateAnalysis(t *testing.T) {
	art := []byte("x")
	tests := []struct {
		name  string
		mod   func(*v1.Analysis)
		field string
	}{
		{"unknown label", func(a *v1.Analysis) { a.MetricsUrl = "http://127.0.0.1:${host.label.nope}/metrics" }, "spec.analysis.metrics_url"},
		{"no metrics url", func(a *v1.Analysis) { a.MetricsUrl = "" }, "spec.analysis.metrics_url"},
		{"bad regex", func(a *v1.Analysis) { a.Rules[0].GetErrorRatio().ErrorRegex = "(" }, "spec.analysis.rules[0]"},
		{"promql without prometheus", func(a *v1.Analysis) {
			a.Rules = append(a.Rules, &v1.AnalysisRule{Name: "p", Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: "up", Max: 1}}})
		}, "spec.analysis.prometheus_url"},
		{"promql placeholder", func(a *v1.Analysis) {
			a.PrometheusUrl = "http://prom:9090"
			a.Rules = append(a.Rules, &v1.AnalysisRule{Name: "p", Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: `up{x="${host.label.nope}"}`, Max: 1}}})
		}, "spec.analysis.rules[3].promql.query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := demoAssignment(t, "v1", 1, art, time.Second, 5*time.Second)
			tt.mod(a.Spec.Analysis)
			err := validateAssignment(a, testHostID, map[string]string{"port": "8081"}, DefaultMaxArtifactBytes, t.TempDir())
			if err == nil || !strings.HasPrefix(err.Error(), tt.field) {
				t.Fatalf("err %v, want it to name %s", err, tt.field)
			}
		})
	}
	a := demoAssignment(t, "v1", 1, art, time.Second, 5*time.Second)
	if err := validateAssignment(a, testHostID, map[string]string{"port": "8081"}, DefaultMaxArtifactBytes, t.TempDir()); err != nil {
		t.Fatalf("valid assignment: %v", err)
	}
	_, metrics, _, ok, err := compileAnalysis(a, testHostID, map[string]string{"port": "8081"})
	if err != nil || !ok || metrics != "http://127.0.0.1:8081/metrics" {
		t.Fatalf("compileAnalysis = %q %v %v", metrics, ok, err)
	}
}

// The scraper scrapes the metrics URL every interval, and queries
// Prometheus (with the query expanded for this host) only while the machine
// judges the release.
func TestScraperQueriesPrometheusOnlyWhileJudging(t *testing.T) {
	var mu sync.Mutex
	var queries []string
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.Query().Get("query"))
		mu.Unlock()
		io.WriteString(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}`)
	}))
	defer prom.Close()
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 5\n")
	}))
	defer metrics.Close()

	a := newLoopAgent(t)
	// The interval is also each round's deadline: 100 ms timed scrapes out
	// on a loaded machine (seen with -race -cpu 1). One second keeps the
	// test to about two rounds' time.
	asg := demoAssignment(t, "v1", 1, []byte("x"), time.Second, 10*time.Second)
	asg.Spec.Analysis.MetricsUrl = metrics.URL + "/metrics"
	asg.Spec.Analysis.PrometheusUrl = prom.URL
	asg.Spec.Analysis.Rules = append(asg.Spec.Analysis.Rules, &v1.AnalysisRule{Name: "p",
		Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: `up{host="${host.id}"}`, Max: 1}}})
	s := &service{name: testSvc, m: lifecycle.New(testSvc)}
	a.services[testSvc] = s
	s.m.Step(lifecycle.Assign(asg, time.Now())) // FETCHING: the target's rules
	a.syncAnalysis(s)
	if s.ana == nil || s.ana.asg != asg {
		t.Fatal("no analyser for the target")
	}
	defer a.stopAnalysis(s)
	next := func() sampleEv {
		t.Helper()
		for {
			if ev, ok := a.nextEvent(t).(sampleEv); ok {
				return ev
			}
		}
	}
	for i := 0; i < 2; i++ {
		ev := next()
		if ev.id != s.ana.id || ev.err != nil || ev.sample.Families["http_requests_total"] == nil || ev.promql != nil {
			t.Fatalf("round %d: id %d (want %d), scrape error %v, families %v, promql %v", i, ev.id, s.ana.id, ev.err, ev.sample.Families, ev.promql)
		}
	}
	mu.Lock()
	if len(queries) != 0 {
		t.Fatalf("queried Prometheus while nothing is judged: %v", queries)
	}
	mu.Unlock()
	s.ana.judging.Store(true)
	var ev sampleEv
	for i := 0; ev.promql == nil; i++ {
		if i > 2 {
			t.Fatal("no promql results while judging")
		}
		ev = next()
	}
	if got := ev.promql["p"]; got.Err != nil || !got.OK || got.Value != 0.25 {
		t.Fatalf("promql result %+v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(queries) == 0 || queries[0] != `up{host="host-1"}` {
		t.Fatalf("queries %q", queries)
	}
}

// Many slow PromQL rules must not make a round so long that its metrics
// sample is stale when judged: the queries of a round run at once under one
// deadline. Prometheus answers no query until all of a round's are in
// flight together, so queries run one after another would each wait for
// the round's deadline and come back as errors.
func TestPrometheusQueriesOfARoundRunAtOnce(t *testing.T) {
	const rules = 8
	var mu sync.Mutex
	inFlight, maxInFlight := 0, 0
	allIn := make(chan struct{})
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		maxInFlight = max(maxInFlight, inFlight)
		if inFlight == rules {
			close(allIn)
		}
		mu.Unlock()
		defer func() {
			mu.Lock()
			inFlight--
			mu.Unlock()
		}()
		select {
		case <-allIn:
		case <-r.Context().Done(): // the round's deadline: the client gave up
			return
		}
		io.WriteString(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}`)
	}))
	defer prom.Close()
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 5\n")
	}))
	defer metrics.Close()

	a := newLoopAgent(t)
	// The interval is the round's deadline: generous, so that a loaded
	// machine gets all the queries of a round out in time.
	asg := demoAssignment(t, "v1", 1, []byte("x"), 5*time.Second, 20*time.Second)
	asg.Spec.Analysis.MetricsUrl = metrics.URL + "/metrics"
	asg.Spec.Analysis.PrometheusUrl = prom.URL
	for i := range rules {
		asg.Spec.Analysis.Rules = append(asg.Spec.Analysis.Rules, &v1.AnalysisRule{Name: fmt.Sprintf("p%d", i),
			Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: fmt.Sprintf("q%d", i), Max: 1}}})
	}
	s := &service{name: testSvc, m: lifecycle.New(testSvc)}
	a.services[testSvc] = s
	s.m.Step(lifecycle.Assign(asg, time.Now()))
	a.syncAnalysis(s)
	defer a.stopAnalysis(s)
	s.ana.judging.Store(true)
	// The first round may have started before judging: it has no queries.
	var ev sampleEv
	for ev.promql == nil {
		got, ok := a.nextEvent(t).(sampleEv)
		if ok {
			ev = got
		}
	}
	if ev.err != nil || ev.sample.Families["http_requests_total"] == nil {
		t.Fatalf("scrape of the round: %+v", ev)
	}
	for i := range rules {
		if r := ev.promql[fmt.Sprintf("p%d", i)]; !r.OK || r.Err != nil || r.Value != 0.25 {
			t.Fatalf("rule p%d: %+v (queries of a round one after another?)", i, r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxInFlight != rules {
		t.Fatalf("at most %d queries in flight at once, want all %d", maxInFlight, rules)
	}
}

// TestAnalysisAddedInPlace: the running release assigned again with the
// same run and analysis added (a judging-only change, installed in place)
// is analysed: the same process is measured under the new rules, which
// pass, so it becomes HEALTHY at the new generation with the rules in its
// report (not reverted for want of a verdict). Real processes.
func TestAnalysisAddedInPlace(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real release for several seconds")
	}
	fc := newFakeCoordinator(t)
	port := strconv.Itoa(ports.Port(t))
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": port}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	lg := startLoad(t, "http://127.0.0.1:"+port+"/")
	_ = lg

	art := tarGz(t, map[string]string{"VERSION": "v1"})
	fc.addArtifact(art)
	a := demoAssignment(t, "v1", 1, art, 250*time.Millisecond, 1500*time.Millisecond)
	rules := a.Spec.Analysis
	a.Spec.Analysis = nil
	fc.assign(a)
	fc.waitFor(t, "v1 healthy without analysis", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "v1")
	})
	pid := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid"))

	b := demoAssignment(t, "v1", 2, art, 250*time.Millisecond, 1500*time.Millisecond)
	b.Spec.Analysis = rules
	fc.assign(b)
	var r *v1.ServiceReport
	fc.waitFor(t, "v1 settled with analysis", 40*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r = lastReport(rs, testSvc)
		return r.GetGeneration() == 2 && (r.GetPhase() == v1.Phase_PHASE_HEALTHY || r.GetPhase() == v1.Phase_PHASE_REVERTED || r.GetPhase() == v1.Phase_PHASE_FAILED)
	})
	if r.GetPhase() != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("analysis added in place: %v, reason %q, want HEALTHY", r.GetPhase(), r.GetReason())
	}
	for _, rule := range []string{"errors", "latency", "restarts"} {
		if c := reportCheck(r, "analysis:"+rule); c == nil || !c.GetOk() {
			t.Fatalf("HEALTHY report lacks a passing analysis:%s: %v", rule, r.GetChecks())
		}
	}
	if got := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid")); got != pid || !alive(pid) {
		t.Fatalf("restarted: pid %d -> %d", pid, got)
	}
	cancel()
	waitDone(t, done)
}

// TestScrapeRedirectStaysOnItsOrigin: a service's metrics endpoint
// redirects the agent's scrape to another address. Before, the scrape
// followed it (10 times, any host) and a page that is not an exposition
// put one of its words in the error ("expected float as value, got
// \"AKIA...\""), which the host reports as the analysis' reason. Now
// redirects stay on the scrape's own scheme, host and port.
func TestScrapeRedirectStaysOnItsOrigin(t *testing.T) {
	inner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "aws_secret AKIAINTERNALSECRET\n")
	}))
	defer inner.Close()
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			http.Redirect(w, r, "/metrics/", http.StatusFound) // its own: followed
		case "/metrics/":
			_, _ = io.WriteString(w, "up 1\n")
		default:
			http.Redirect(w, r, inner.URL+"/creds", http.StatusFound)
		}
	}))
	defer svc.Close()
	c := newAnalysisClient()
	if _, err := fetch.Scrape(context.Background(), c, svc.URL+"/metrics", time.Now()); err != nil {
		t.Fatalf("a redirect on the scrape's own origin: %v", err)
	}
	_, err := fetch.Scrape(context.Background(), c, svc.URL+"/elsewhere", time.Now())
	if err == nil || strings.Contains(err.Error(), "AKIAINTERNALSECRET") || !strings.Contains(err.Error(), strings.TrimPrefix(inner.URL, "http://")) {
		t.Fatalf("a redirect to another host: %v; want an error naming %s and nothing of its page", err, inner.URL)
	}
}

// TestReportResultsBounded: a report carries one result per check and per
// analysis rule, and the coordinator refuses a report (and a Hello) with
// more than 64. Before, a spec with 62 checks and 3 rules was taken: every
// Hello of every host running it was refused, cutting those hosts off from
// every coordinator. Now such an assignment is refused, naming spec.checks
// and the counts; 64 in all is taken.
func TestReportResultsBounded(t *testing.T) {
	art := []byte("x")
	for _, n := range []int{61, 62} {
		a := demoAssignment(t, "v1", 1, art, time.Second, 5*time.Second)
		rules := len(a.Spec.Analysis.Rules)
		for i := len(a.Spec.Checks); i < n; i++ {
			a.Spec.Checks = append(a.Spec.Checks, &v1.Check{Name: fmt.Sprintf("c%d", i), Kind: &v1.Check_Tcp{Tcp: &v1.TcpCheck{Address: "127.0.0.1:1"}}})
		}
		err := validateAssignment(a, testHostID, map[string]string{"port": "8081"}, DefaultMaxArtifactBytes, t.TempDir())
		if n+rules <= lifecycle.MaxReportChecks {
			if err != nil {
				t.Fatalf("%d checks and %d rules: %v", n, rules, err)
			}
			continue
		}
		want := fmt.Sprintf("spec.checks: %d checks and %d analysis rules", n, rules)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("%d checks and %d rules: err %v, want it to start %q", n, rules, err, want)
		}
	}
}

// TestCompareRulesBounded: with analysis.compare each report carries a
// metric summary of every error_ratio and latency rule, and coordinators
// refuse a summary of more than 32 rules (the report ignored, the Hello
// refused). Before, a spec comparing 33 rules was taken, and every host
// running it was cut off from every coordinator. Now such an assignment is
// refused naming spec.analysis.compare; 32 are taken.
func TestCompareRulesBounded(t *testing.T) {
	art := []byte("x")
	for _, n := range []int{spec.MaxCompareRules, spec.MaxCompareRules + 1} {
		a := demoAssignment(t, "v1", 1, art, time.Second, 5*time.Second)
		a.Spec.Analysis.Compare = &v1.Compare{Against: spec.CompareBaselineHosts}
		for i := 2; i < n; i++ { // errors and latency are there
			a.Spec.Analysis.Rules = append(a.Spec.Analysis.Rules, &v1.AnalysisRule{Name: fmt.Sprintf("errors%d", i),
				Kind: &v1.AnalysisRule_ErrorRatio{ErrorRatio: &v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05, MinRequests: 10}}})
		}
		err := validateAssignment(a, testHostID, map[string]string{"port": "8081"}, DefaultMaxArtifactBytes, t.TempDir())
		if n <= spec.MaxCompareRules {
			if err != nil {
				t.Fatalf("%d compared rules: %v", n, err)
			}
			continue
		}
		want := fmt.Sprintf("spec.analysis.compare: %d error_ratio and latency rules", n)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("%d compared rules: err %v, want it to start %q", n, err, want)
		}
	}
}
