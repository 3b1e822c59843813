package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/promcheck"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// startCoordinatorWithMetrics is startCoordinator with --metrics-listen on
// a free port; it returns the gRPC connection and the /metrics URL.
func startCoordinatorWithMetrics(t *testing.T) (*grpc.ClientConn, string) {
	t.Helper()
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	metricsc := make(chan string, 1)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second,
		MetricsListen: "127.0.0.1:0", MetricsReady: func(a string) { metricsc <- a }})
	maddr := <-metricsc // sent before the gRPC address
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, "http://" + maddr + "/metrics"
}

// scrape fetches url over HTTP and parses the text exposition.
func scrape(t *testing.T, url string) ([]byte, map[string]*dto.MetricFamily) {
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
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("content type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", url, err, body)
	}
	return body, mfs
}

// sample finds the series of family name with exactly labels (name=value
// pairs) and returns its value: a counter's or gauge's value, a
// histogram's sample count (and sum).
func sample(mfs map[string]*dto.MetricFamily, name string, labels ...string) (v, sum float64, ok bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range mf.GetMetric() {
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
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), 0, true
		}
	}
	return 0, 0, false
}

// The coordinator's /metrics over real HTTP after a rollout driven by a
// fake agent on a real stream: every series the README promises exists,
// with values that follow from what happened.
func TestMetricsEndpoint(t *testing.T) {
	began := time.Now() // everything measured below happens after this
	cc, url := startCoordinatorWithMetrics(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	// v1 over no host: succeeds at once (counted, not timed).
	art := upload(t, ctx, cc, []byte("release one"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := v1.NewAgentServiceClient(cc).Connect(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1", Labels: map[string]string{"role": "web"}}}}); err != nil {
		t.Fatal(err)
	}
	expect := func(version string) int64 {
		t.Helper()
		for {
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("waiting for %s: %v", version, err)
			}
			if as := m.GetAssignments(); len(as) == 1 && as[0].GetRelease().GetVersion() == version {
				return as[0].GetGeneration()
			}
		}
	}
	report := func(version string, gen int64) {
		t.Helper()
		r := &v1.ServiceReport{Service: "web", Generation: gen, Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: version, TargetVersion: version, LastGoodVersion: version}
		if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
			t.Fatal(err)
		}
	}
	report("v1", expect("v1"))

	// v2 with a commit two hours old rolls out to h1 and succeeds.
	committed := time.Now().Add(-2 * time.Hour)
	art2 := upload(t, ctx, cc, []byte("release two"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v2", Artifact: art2,
		Commit: "abc123", CommitTime: timestamppb.New(committed)}}); err != nil {
		t.Fatal(err)
	}
	report("v2", expect("v2"))
	waitRollout(t, ctx, op, "v2 succeeded", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	})

	// The leader records a rollout's metrics after the write the test saw:
	// wait for them rather than scrape once (TestMetricsEndpoint failed 1
	// of 10 -race runs with lead_time missing). And for all of them in one
	// scrape: a scrape gathers each collector apart, so one taken while
	// the leader records them can hold the lead time and not the wave's
	// duration, recorded just before it (1 CI rehearsal failed so).
	var body []byte
	var mfs map[string]*dto.MetricFamily
	testkit.Eventually(t, 30*time.Second, "the ended rollout's metrics recorded", func() bool {
		body, mfs = scrape(t, url)
		for _, m := range [][]string{
			{"fleetwave_coordinator_wave_duration_seconds", "service", "web", "result", "done"},
			{"fleetwave_coordinator_rollout_duration_seconds", "service", "web", "result", "succeeded"},
			{"fleetwave_coordinator_lead_time_seconds", "service", "web"},
		} {
			if _, _, ok := sample(mfs, m[0], m[1:]...); !ok {
				return false
			}
		}
		n, _, _ := sample(mfs, "fleetwave_coordinator_rollouts_total", "service", "web", "result", "succeeded")
		return n >= 2 // v1's and v2's
	})
	checks := []struct {
		name   string
		labels []string
		min    float64
		max    float64
	}{
		{"fleetwave_coordinator_rollouts_total", []string{"service", "web", "result", "succeeded"}, 2, 2},
		{"fleetwave_coordinator_rollout_duration_seconds", []string{"service", "web", "result", "succeeded"}, 1, 1}, // v1 had no host
		{"fleetwave_coordinator_wave_duration_seconds", []string{"service", "web", "result", "done"}, 1, 1},
		{"fleetwave_coordinator_lead_time_seconds", []string{"service", "web"}, 1, 1},
		{"fleetwave_coordinator_hosts", []string{"service", "web", "version", "v2", "phase", "healthy"}, 1, 1},
		{"fleetwave_coordinator_connected_agents", nil, 1, 1},
		{"fleetwave_coordinator_leader", nil, 1, 1},
		{"fleetwave_coordinator_events_undecodable_total", nil, 0, 0},
		{"fleetwave_coordinator_assignment_delivery_seconds", []string{"trigger", "connect"}, 1, 1},
		{"fleetwave_coordinator_assignment_delivery_seconds", []string{"trigger", "change"}, 1, 100},
		{"fleetwave_coordinator_etcd_request_duration_seconds", []string{"op", "get"}, 1, 1e9},
		{"fleetwave_coordinator_etcd_request_duration_seconds", []string{"op", "put"}, 1, 1e9},
		{"fleetwave_coordinator_etcd_request_duration_seconds", []string{"op", "txn"}, 3, 1e9},
		{"fleetwave_coordinator_etcd_session_losses_total", nil, 0, 0},
		// h1's two reports (a slow machine may coalesce them into one).
		{"fleetwave_coordinator_report_txns_total", nil, 1, 2},
		{"fleetwave_coordinator_reports_written_total", nil, 1, 2},
		{"fleetwave_coordinator_reports_coalesced_total", nil, 0, 1},
		{"fleetwave_coordinator_reports_dropped_total", nil, 0, 0},        // one stream
		{"fleetwave_coordinator_etcd_quota_bytes", nil, 2 << 30, 2 << 30}, // an external etcd: etcd's default
		{"fleetwave_coordinator_audit_entries", nil, 1, 100},
		{"fleetwave_coordinator_connections", []string{"cert", "yes"}, 1, 10},
		{"fleetwave_coordinator_connections", []string{"cert", "no"}, 0, 0},
		{"go_goroutines", nil, 1, 1e9},
		{"process_start_time_seconds", nil, 1, 1e12},
	}
	for _, c := range checks {
		v, _, ok := sample(mfs, c.name, c.labels...)
		if !ok {
			t.Errorf("%s%v: missing", c.name, c.labels)
			continue
		}
		if v < c.min || v > c.max {
			t.Errorf("%s%v = %g, want %g..%g", c.name, c.labels, v, c.min, c.max)
		}
	}
	// The rollout ended after the commit's two hours and before the scrape.
	if _, sum, _ := sample(mfs, "fleetwave_coordinator_lead_time_seconds", "service", "web"); sum < 7200 || sum > time.Since(committed).Seconds() {
		t.Errorf("lead time %gs, want the commit's age (2h) plus the rollout, at most %v", sum, time.Since(committed))
	}
	// Every delivery happened during the test.
	if n, sum, _ := sample(mfs, "fleetwave_coordinator_assignment_delivery_seconds", "trigger", "change"); sum <= 0 || sum > n*time.Since(began).Seconds() {
		t.Errorf("delivery latency sum %gs of %g deliveries within %v: implausible", sum, n, time.Since(began))
	}
	if v, _, ok := sample(mfs, "fleetwave_coordinator_hosts", "service", "web", "version", "v1", "phase", "healthy"); ok && v != 0 {
		t.Errorf("hosts still counted on v1: %g", v)
	}
	// etcd's size, read from its status: one endpoint.
	if db := mfs["fleetwave_coordinator_etcd_db_size_bytes"].GetMetric(); len(db) != 1 || db[0].GetGauge().GetValue() < 4096 ||
		!strings.HasPrefix(db[0].GetLabel()[0].GetValue(), "https://127.0.0.1:") {
		t.Errorf("etcd database size: %v, want one endpoint's size", db)
	}
	if use := mfs["fleetwave_coordinator_etcd_db_size_in_use_bytes"].GetMetric(); len(use) != 1 || use[0].GetGauge().GetValue() <= 0 {
		t.Errorf("etcd database size in use: %v", use)
	}
	if fams := mfs["fleetwave_coordinator_forwarded_calls_total"]; fams != nil && len(fams.GetMetric()) > 0 {
		t.Errorf("a single coordinator forwarded calls: %v", fams)
	}
	promcheck.Check(t, body)

	// The agent goes away: it is unknown, and no longer connected here.
	scancel()
	testkit.EventuallyErr(t, 30*time.Second, "the host unknown and not connected after the disconnect", func() error {
		_, mfs = scrape(t, url)
		unknown, _, _ := sample(mfs, "fleetwave_coordinator_hosts", "service", "web", "version", "v2", "phase", "unknown")
		conns, _, _ := sample(mfs, "fleetwave_coordinator_connected_agents")
		if unknown != 1 || conns != 0 {
			return fmt.Errorf("hosts unknown %g, connected agents %g", unknown, conns)
		}
		return nil
	})
}

func TestMetricsListenValidated(t *testing.T) {
	err := (&Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d", MetricsListen: "nope"}).Validate()
	if err == nil || !strings.Contains(err.Error(), "metrics-listen:") || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Validate: %v, want it to name metrics-listen and the value", err)
	}
	if err := (&Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d", MetricsListen: ":9100"}).Validate(); err != nil {
		t.Errorf("valid metrics-listen rejected: %v", err)
	}
}

// rolloutWritten counts each wave and each rollout once, however many
// writes follow, and leaves rollbacks and rollouts over no host out of the
// timings.
func TestRolloutWrittenCountsEachEndOnce(t *testing.T) {
	m := newMetrics()
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	rel := func(service, version string) (*v1.Release, bool) {
		return &v1.Release{Service: service, Version: version, CommitTime: ts(-time.Hour)}, true
	}
	r0 := &v1.Rollout{Service: "web", Id: "000002", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING, StartedAt: ts(0),
		Waves: []*v1.Wave{{State: v1.WaveState_WAVE_STATE_PROGRESSING, StartedAt: ts(0)}, {State: v1.WaveState_WAVE_STATE_PENDING}}}
	m.rolloutWritten(nil, r0, rel)
	r1 := cloneRollout(r0)
	r1.Waves[0].State, r1.Waves[0].DoneAt = v1.WaveState_WAVE_STATE_DONE, ts(30*time.Second)
	r1.Waves[1].State, r1.Waves[1].StartedAt = v1.WaveState_WAVE_STATE_PROGRESSING, ts(30*time.Second)
	m.rolloutWritten(r0, r1, rel)
	m.rolloutWritten(r1, cloneRollout(r1), rel) // a write that ends nothing
	r2 := cloneRollout(r1)
	r2.Waves[1].State, r2.Waves[1].DoneAt = v1.WaveState_WAVE_STATE_DONE, ts(90*time.Second)
	r2.State, r2.FinishedAt = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, ts(90*time.Second)
	m.rolloutWritten(r1, r2, rel)
	r3 := cloneRollout(r2)
	r3.RestoredAt = ts(time.Hour) // written again after it ended
	m.rolloutWritten(r2, r3, rel)

	// A rollback that succeeds, and a rollout over no host.
	rb := &v1.Rollout{Service: "web", Id: "000003", ToVersion: "v1", Rollback: true, State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED,
		StartedAt: ts(0), FinishedAt: ts(10 * time.Second), Waves: []*v1.Wave{{State: v1.WaveState_WAVE_STATE_DONE, StartedAt: ts(0), DoneAt: ts(10 * time.Second)}}}
	m.rolloutWritten(nil, rb, rel)
	none := &v1.Rollout{Service: "web", Id: "000004", ToVersion: "v3", State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, StartedAt: ts(0), FinishedAt: ts(0)}
	m.rolloutWritten(nil, none, rel)

	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	for _, c := range []struct {
		name   string
		labels []string
		count  float64
		sum    float64
	}{
		{"fleetwave_coordinator_rollouts_total", []string{"service", "web", "result", "succeeded"}, 3, 0},
		{"fleetwave_coordinator_wave_duration_seconds", []string{"service", "web", "result", "done"}, 3, 30 + 60 + 10},
		{"fleetwave_coordinator_rollout_duration_seconds", []string{"service", "web", "result", "succeeded"}, 2, 90 + 10},
		{"fleetwave_coordinator_lead_time_seconds", []string{"service", "web"}, 1, 3600 + 90},
	} {
		v, sum, ok := sample(byName, c.name, c.labels...)
		if !ok || v != c.count || sum != c.sum {
			t.Errorf("%s%v: count %g sum %g (found %v), want %g and %g", c.name, c.labels, v, sum, ok, c.count, c.sum)
		}
	}
}

func cloneRollout(r *v1.Rollout) *v1.Rollout { return proto.Clone(r).(*v1.Rollout) }

// countForwarded counts a leader-only call the forwarder did not serve
// locally, and nothing else.
func TestCountForwarded(t *testing.T) {
	m := newMetrics()
	local := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(ctx, req)
	}
	remote := func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return "from leader", nil
	}
	failed := func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return nil, errors.New("leader unreachable")
	}
	handler := func(context.Context, any) (any, error) { return "here", nil }
	approve := &grpc.UnaryServerInfo{FullMethod: v1.OperatorService_ApproveRollout_FullMethodName}
	list := &grpc.UnaryServerInfo{FullMethod: v1.OperatorService_ListServices_FullMethodName}
	ctx := context.Background()
	if r, _ := m.countForwarded(local)(ctx, nil, approve, handler); r != "here" {
		t.Fatalf("local call answered %v", r)
	}
	if r, _ := m.countForwarded(remote)(ctx, nil, approve, handler); r != "from leader" {
		t.Fatalf("forwarded call answered %v", r)
	}
	_, _ = m.countForwarded(failed)(ctx, nil, approve, handler)
	_, _ = m.countForwarded(remote)(ctx, nil, list, handler) // not leader-only: never counted
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	for _, c := range []struct {
		result string
		want   float64
	}{{"ok", 1}, {"error", 1}} {
		if v, _, _ := sample(byName, "fleetwave_coordinator_forwarded_calls_total", "method", "ApproveRollout", "result", c.result); v != c.want {
			t.Errorf("forwarded ApproveRollout %s = %g, want %g", c.result, v, c.want)
		}
	}
	if n := len(byName["fleetwave_coordinator_forwarded_calls_total"].GetMetric()); n != 2 {
		t.Errorf("%d forwarded series, want 2", n)
	}
}
