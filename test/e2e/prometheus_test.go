package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"github.com/fleetwave/fleetwave/agent/analysis/fetch"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

// requirePrometheus skips without a prometheus binary, unless make test
// asked for it (then its absence fails the test).
func requirePrometheus(t *testing.T) {
	t.Helper()
	if _, err := testfleet.PrometheusBinary(); err != nil {
		if os.Getenv("FLEETWAVE_REQUIRE_PROMETHEUS") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// The PromQL client the agent's promql rules use, against a real
// Prometheus server scraping the real demo app.
func TestPromQLAgainstRealPrometheus(t *testing.T) {
	requirePrometheus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	port, err := ports.Take()
	if err != nil {
		t.Fatal(err)
	}
	rel := filepath.Join(dir, "release")
	if err := os.MkdirAll(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rel, "VERSION"), []byte("v9"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rel, "ERROR_RATE"), []byte("0.25"), 0o644); err != nil {
		t.Fatal(err)
	}
	app, err := testfleet.Start("demoapp", bins.DemoApp, filepath.Join(dir, "demoapp.log"), "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--dir", rel)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Stop(5 * time.Second)
	prom, promURL, err := testfleet.StartPrometheus(ctx, filepath.Join(dir, "prom"), []string{fmt.Sprintf("127.0.0.1:%d", port)})
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Stop(10 * time.Second)

	// Load: 200 requests, a quarter of which the app answers 500.
	client := &http.Client{Timeout: 2 * time.Second}
	for range 200 {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	query := `sum(http_requests_total{job="fleet",path="/",code=~"5.."}) / sum(http_requests_total{job="fleet",path="/"})`
	var ratio float64
	err = testfleet.WaitFor(ctx, 60*time.Second, "prometheus has the demo app's counters", func() (bool, string) {
		v, ok, err := fetch.QueryPromQL(ctx, client, promURL, query)
		if err != nil || !ok {
			return false, fmt.Sprintf("ok=%v err=%v", ok, err)
		}
		ratio = v
		// Scrapes may land mid-load; wait for the scrape after the load.
		return v > 0.2, fmt.Sprint("ratio ", v)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, prom.Tail(2000))
	}
	if ratio < 0.2 || ratio > 0.3 {
		t.Fatalf("error ratio from Prometheus %.3f, want about 0.25", ratio)
	}
	// No series: not a number, reported as no result.
	if _, ok, err := fetch.QueryPromQL(ctx, client, promURL, `http_requests_total{job="nope"}`); err != nil || ok {
		t.Fatalf("empty result: ok=%v err=%v", ok, err)
	}
	// A malformed query is an error naming Prometheus' complaint.
	if _, _, err := fetch.QueryPromQL(ctx, client, promURL, `sum(`); err == nil {
		t.Fatal("a malformed query passed")
	}
}

func startPrometheus(e *env, targets []string) (*testfleet.Proc, string, error) {
	return testfleet.StartPrometheus(e.ctx, filepath.Join(e.dir, "prometheus"), targets)
}
