package analysis

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func sec(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Second))) }

func parse(t *testing.T, at time.Time, text string) Sample {
	t.Helper()
	s, err := Parse(strings.NewReader(text), at)
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, text)
	}
	return s
}

func compile(t *testing.T, a *v1.Analysis) Config {
	t.Helper()
	c, err := Compile(a)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return c
}

func errRule(r *v1.ErrorRatioRule) *v1.AnalysisRule {
	return &v1.AnalysisRule{Kind: &v1.AnalysisRule_ErrorRatio{ErrorRatio: r}}
}

func latRule(r *v1.LatencyRule) *v1.AnalysisRule {
	return &v1.AnalysisRule{Kind: &v1.AnalysisRule_Latency{Latency: r}}
}

// analysisOf builds a 1s/30s Analysis with rules.
func analysisOf(rules ...*v1.AnalysisRule) *v1.Analysis {
	return &v1.Analysis{
		MetricsUrl: "http://127.0.0.1:9100/metrics",
		Interval:   durationpb.New(time.Second),
		Window:     durationpb.New(30 * time.Second),
		Rules:      rules,
	}
}

// requests is an exposition of http_requests_total with the given values by
// code (and an extra label so several series share a code).
func requests(byCode map[string]float64, extra string) string {
	var b strings.Builder
	b.WriteString("# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n")
	for code, v := range byCode {
		fmt.Fprintf(&b, "http_requests_total{code=%q%s} %v\n", code, extra, v)
	}
	return b.String()
}

// add parses text at t and adds it to w.
func add(t *testing.T, w *Window, at time.Time, text string) {
	t.Helper()
	if err := w.Add(parse(t, at, text)); err != nil {
		t.Fatalf("Add at %v refused: %v", at, err)
	}
}

// evalOne evaluates the only rule of c and checks that no number is
// NaN or ±Inf.
func evalOne(t *testing.T, c Config, w *Window, base Baseline, now time.Time) Result {
	t.Helper()
	rs := Evaluate(c.Rules, w, base, now, nil, nil)
	if len(rs) != 1 {
		t.Fatalf("Evaluate returned %d results, want 1", len(rs))
	}
	checkFinite(t, rs)
	return rs[0]
}

func checkFinite(t *testing.T, rs []Result) {
	t.Helper()
	for _, r := range rs {
		for _, v := range []float64{r.Value, r.Baseline, r.Threshold} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("result %+v has a non-finite number", r)
			}
		}
		if r.Verdict != lifecycle.VerdictPass && !strings.Contains(r.Reason, fmt.Sprintf("rule %q", r.Rule)) {
			t.Errorf("reason %q does not name rule %q", r.Reason, r.Rule)
		}
	}
}

func wantResult(t *testing.T, got Result, verdict lifecycle.Verdict, reason string) {
	t.Helper()
	if got.Verdict != verdict || got.Reason != reason {
		t.Errorf("got %s %q\nwant %s %q", got.Verdict, got.Reason, verdict, reason)
	}
}

func TestParse(t *testing.T) {
	s := parse(t, t0, requests(map[string]float64{"200": 5}, ""))
	if !s.At.Equal(t0) || s.Families["http_requests_total"] == nil {
		t.Fatalf("Parse = %+v", s)
	}
	if _, err := Parse(strings.NewReader("http_requests_total{code=\"200\" 5\n"), t0); err == nil {
		t.Error("Parse accepted a malformed line")
	}
	big := strings.Repeat("# padding comment line\n", MaxScrapeBytes/23+1)
	if _, err := Parse(strings.NewReader(big), t0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Parse of %d bytes = %v, want ErrTooLarge", len(big), err)
	}
	exact := "x 1\n# " + strings.Repeat("p", MaxScrapeBytes-7) + "\n"
	if _, err := Parse(strings.NewReader(exact), t0); err != nil || len(exact) != MaxScrapeBytes {
		t.Errorf("Parse of exactly MaxScrapeBytes: %v", err)
	}
}

func TestCompileDefaults(t *testing.T) {
	c := compile(t, &v1.Analysis{Rules: []*v1.AnalysisRule{
		errRule(&v1.ErrorRatioRule{Metric: "m", Max: 0.1}),
		latRule(&v1.LatencyRule{Metric: "h", Quantile: 0.9, MaxSeconds: 1}),
		{Name: "crash", Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{Max: 2}}},
		{Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: "up", Max: 1, Min: proto.Float64(0.5)}}},
	}, Inconclusive: "fail"})
	if c.Interval != time.Second || c.Window != 30*time.Second || c.Watch != 5*time.Minute || !c.FailInconclusive {
		t.Errorf("defaults: %+v", c)
	}
	e := c.Rules[0]
	if e.Name != KindErrorRatio || e.ErrorLabel != "code" || e.MinCount != 20 || !e.ErrorRegex.MatchString("503") || e.ErrorRegex.MatchString("1503") {
		t.Errorf("error_ratio defaults: %+v", e)
	}
	if l := c.Rules[1]; l.Name != KindLatency || l.MinCount != 20 || l.Max != 1 || l.Quantile != 0.9 {
		t.Errorf("latency defaults: %+v", l)
	}
	if r := c.Rules[2]; r.Name != "crash" || r.Kind != KindRestarts || r.Max != 2 {
		t.Errorf("restarts: %+v", r)
	}
	if p := c.Rules[3]; p.Name != KindPromQL || !p.HasMin || p.Min != 0.5 || p.Query != "up" {
		t.Errorf("promql: %+v", p)
	}
	if !c.NeedsMetrics() {
		t.Error("NeedsMetrics = false")
	}
	if c := compile(t, nil); len(c.Rules) != 0 || c.NeedsMetrics() || c.Window != 30*time.Second {
		t.Errorf("Compile(nil) = %+v", c)
	}
	// Under the coordinators' floor (a spec stored before it existed):
	// scraped at the floor, not in a loop.
	if c := compile(t, &v1.Analysis{Interval: durationpb.New(time.Millisecond)}); c.Interval != spec.MinAnalysisInterval {
		t.Errorf("interval of 1ms compiled to %v, want the floor %v", c.Interval, spec.MinAnalysisInterval)
	}
	if _, err := Compile(&v1.Analysis{Rules: []*v1.AnalysisRule{{}, errRule(&v1.ErrorRatioRule{Metric: "m", ErrorRegex: "("})}}); err == nil ||
		!strings.Contains(err.Error(), "analysis.rules[0]: no rule kind") || !strings.Contains(err.Error(), "analysis.rules[1]: error_ratio.error_regex") {
		t.Errorf("Compile of bad rules = %v", err)
	}
}

func TestErrorRatioFailsWithReason(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05})))
	w := NewWindow(c)
	add(t, w, sec(0), requests(map[string]float64{"200": 1000, "500": 10}, ""))
	add(t, w, sec(15), requests(map[string]float64{"200": 1080, "500": 20}, ""))
	add(t, w, sec(30), requests(map[string]float64{"200": 1160, "500": 50}, ""))
	r := evalOne(t, c, w, Baseline{}, sec(30))
	wantResult(t, r, lifecycle.VerdictFail, `rule "error_ratio": error ratio 0.200 over 30s (40/200 requests) > max 0.050`)
	if r.Value != 0.2 || r.Threshold != 0.05 || r.Rule != "error_ratio" {
		t.Errorf("numbers: %+v", r)
	}
}

func TestErrorRatioInconclusiveWithFewRequests(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05})))
	w := NewWindow(c)
	add(t, w, sec(0), requests(map[string]float64{"200": 10}, ""))
	add(t, w, sec(30), requests(map[string]float64{"200": 12, "500": 1}, ""))
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(30)), lifecycle.VerdictInconclusive, `rule "error_ratio": inconclusive: 3 requests in 30s, need 20`)

	// No counter at all, one scrape only, no scrape, a stale scrape.
	w = NewWindow(c)
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(30)), lifecycle.VerdictInconclusive, `rule "error_ratio": inconclusive: no scrape of the metrics in the last 30s, need 2`)
	add(t, w, sec(0), "other_total 5\n")
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(1)), lifecycle.VerdictInconclusive, `rule "error_ratio": inconclusive: 1 scrape in the last 30s, need 2`)
	add(t, w, sec(1), "other_total 6\n")
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(1)), lifecycle.VerdictInconclusive, `rule "error_ratio": inconclusive: no series of counter http_requests_total in 2 scrapes over 1s`)
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(10)), lifecycle.VerdictInconclusive, `rule "error_ratio": inconclusive: last scrape 9s ago, need one within 3s`)
}

func TestCounterResetsMissingAndNewSeries(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 1, MinRequests: 1})))
	w := NewWindow(c)
	// 200: 100 -> 150 -> reset to 20 -> 50      = 50 + 20 + 30 = 100
	// 404: 7 -> (missing) -> (missing) -> 9     = 2
	// 500: (absent at the reference) 5 -> 6 -> 6 = 6: it appeared in the window
	add(t, w, sec(0), "http_requests_total{code=\"200\"} 100\nhttp_requests_total{code=\"404\"} 7\n")
	add(t, w, sec(10), "http_requests_total{code=\"200\"} 150\nhttp_requests_total{code=\"500\"} 5\n")
	add(t, w, sec(20), "http_requests_total{code=\"200\"} 20\nhttp_requests_total{code=\"500\"} 6\n")
	add(t, w, sec(30), "http_requests_total{code=\"200\"} 50\nhttp_requests_total{code=\"404\"} 9\nhttp_requests_total{code=\"500\"} 6\n")
	r := evalOne(t, c, w, Baseline{}, sec(30))
	wantResult(t, r, lifecycle.VerdictPass, `rule "error_ratio": error ratio 0.056 over 30s (6/108 requests) <= max 1.000`)

	// A series missing then back lower than before is a reset.
	w = NewWindow(c)
	add(t, w, sec(0), "http_requests_total{code=\"200\"} 100\n")
	add(t, w, sec(10), "http_requests_total{code=\"404\"} 1\n")
	add(t, w, sec(20), "http_requests_total{code=\"200\"} 30\nhttp_requests_total{code=\"404\"} 1\n")
	if r := evalOne(t, c, w, Baseline{}, sec(20)); r.Verdict != lifecycle.VerdictPass || !strings.Contains(r.Reason, "(0/31 requests)") {
		t.Errorf("missing series: %+v", r)
	}
}

func TestProcessRestartCountsFromZero(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5, MinRequests: 1})))
	w := NewWindow(c)
	// The process restarted between the scrapes and served more than
	// before: without process_start_time_seconds this would look like +20.
	add(t, w, sec(0), "process_start_time_seconds 1000\nhttp_requests_total{code=\"200\"} 100\n")
	add(t, w, sec(10), "process_start_time_seconds 1010\nhttp_requests_total{code=\"200\"} 120\n")
	add(t, w, sec(20), "process_start_time_seconds 1010\nhttp_requests_total{code=\"200\"} 125\n")
	if r := evalOne(t, c, w, Baseline{}, sec(20)); !strings.Contains(r.Reason, "(0/125 requests)") {
		t.Errorf("restart: %+v", r)
	}
}

func TestErrorRegexAndLabel(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "rpc_total", ErrorLabel: "status", ErrorRegex: "5..|429", Max: 0.1, MinRequests: 10})))
	w := NewWindow(c)
	add(t, w, sec(0), "rpc_total{status=\"200\"} 0\nrpc_total{status=\"429\"} 0\nrpc_total{status=\"5xx\"} 0\nrpc_total{status=\"1500\"} 0\nrpc_total{code=\"500\"} 0\n")
	// errors: 429 (3) and 5xx (2: "5.." matches "5xx"); 1500 is not an
	// error (anchored), nor a series without the status label.
	add(t, w, sec(10), "rpc_total{status=\"200\"} 80\nrpc_total{status=\"429\"} 3\nrpc_total{status=\"5xx\"} 2\nrpc_total{status=\"1500\"} 10\nrpc_total{code=\"500\"} 5\n")
	r := evalOne(t, c, w, Baseline{}, sec(10))
	wantResult(t, r, lifecycle.VerdictPass, `rule "error_ratio": error ratio 0.050 over 10s (5/100 requests) <= max 0.100`)
}

// oldAndNew returns a window holding the old release's 30s ending at
// sec(30), with the given errors and requests, frozen into a baseline, and
// the same window holding the new release's 30s ending at sec(62).
func oldAndNew(t *testing.T, c Config, oldErr, oldTotal, newErr, newTotal float64) (*Window, Baseline) {
	t.Helper()
	w := NewWindow(c)
	// The old release labels its series version="1", the new one "2": the
	// sums over series do not care (no NaN as in Kayenta #738).
	add(t, w, sec(0), requests(map[string]float64{"200": 5000, "500": 50}, `,version="1"`))
	add(t, w, sec(30), requests(map[string]float64{"200": 5000 + oldTotal - oldErr, "500": 50 + oldErr}, `,version="1"`))
	base := w.Freeze(c.Rules, sec(30))
	if w.Len() != 0 {
		t.Fatalf("Freeze left %d samples", w.Len())
	}
	add(t, w, sec(32), requests(map[string]float64{"200": 0, "500": 0}, `,version="2"`))
	add(t, w, sec(62), requests(map[string]float64{"200": newTotal - newErr, "500": newErr}, `,version="2"`))
	return w, base
}

func TestErrorRatioBaselineFactor(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05, MaxBaselineFactor: 2})))

	w, base := oldAndNew(t, c, 2, 200, 6, 200)
	if v, ok := base.Value("error_ratio"); !ok || v != 0.01 {
		t.Fatalf("baseline = %v, %v", v, ok)
	}
	r := evalOne(t, c, w, base, sec(62))
	wantResult(t, r, lifecycle.VerdictFail, `rule "error_ratio": error ratio 0.030 over 30s (6/200 requests) > 2.0 × baseline 0.010`)
	if r.Baseline != 0.01 || r.Threshold != 0.02 {
		t.Errorf("numbers: %+v", r)
	}

	w, base = oldAndNew(t, c, 2, 200, 3, 200)
	wantResult(t, evalOne(t, c, w, base, sec(62)), lifecycle.VerdictPass, `rule "error_ratio": error ratio 0.015 over 30s (3/200 requests) <= 2.0 × baseline 0.010`)

	// A zero baseline compares against max only.
	w, base = oldAndNew(t, c, 0, 200, 6, 200)
	wantResult(t, evalOne(t, c, w, base, sec(62)), lifecycle.VerdictPass, `rule "error_ratio": error ratio 0.030 over 30s (6/200 requests) <= max 0.050 (baseline 0: max only)`)
	w, base = oldAndNew(t, c, 0, 200, 20, 200)
	wantResult(t, evalOne(t, c, w, base, sec(62)), lifecycle.VerdictFail, `rule "error_ratio": error ratio 0.100 over 30s (20/200 requests) > max 0.050`)

	// Too little traffic before the switch: the baseline is unknown.
	w, base = oldAndNew(t, c, 1, 5, 6, 200)
	if _, ok := base.Value("error_ratio"); ok {
		t.Error("baseline of 5 requests is known")
	}
	wantResult(t, evalOne(t, c, w, base, sec(62)), lifecycle.VerdictPass, `rule "error_ratio": error ratio 0.030 over 30s (6/200 requests) <= max 0.050 (no baseline: 5 requests in 30s, need 20)`)
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(62)), lifecycle.VerdictPass, `rule "error_ratio": error ratio 0.030 over 30s (6/200 requests) <= max 0.050 (no baseline)`)
}

// histogram renders http_request_duration_seconds with cumulative counts
// for le 0.1, 0.5, 1 and +Inf.
func histogram(labels string, c01, c05, c1, inf float64) string {
	return fmt.Sprintf(`# HELP http_request_duration_seconds Latency.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{%[1]sle="0.1"} %[2]v
http_request_duration_seconds_bucket{%[1]sle="0.5"} %[3]v
http_request_duration_seconds_bucket{%[1]sle="1"} %[4]v
http_request_duration_seconds_bucket{%[1]sle="+Inf"} %[5]v
http_request_duration_seconds_sum{%[6]s} 1
http_request_duration_seconds_count{%[6]s} %[5]v
`, labels, c01, c05, c1, inf, strings.TrimSuffix(labels, ","))
}

// histogramSeries is histogram without the # lines, for a second series.
func histogramSeries(labels string, c01, c05, c1, inf float64) string {
	h := histogram(labels, c01, c05, c1, inf)
	return h[strings.Index(h, "http_request_duration_seconds_bucket"):]
}

func TestBucketQuantile(t *testing.T) {
	inf := math.Inf(1)
	bs := []bucket{{0.1, 50}, {0.5, 90}, {1, 100}, {inf, 100}}
	for _, tt := range []struct{ q, want float64 }{{0.5, 0.1}, {0.25, 0.05}, {0.9, 0.5}, {0.95, 0.75}, {0.99, 0.95}} {
		if got, ok := bucketQuantile(tt.q, bs); !ok || math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("q%v = %v, %v; want %v", tt.q, got, ok, tt.want)
		}
	}
	// The rank in the +Inf bucket: the largest finite bound.
	if got, ok := bucketQuantile(0.99, []bucket{{0.1, 50}, {1, 90}, {inf, 100}}); !ok || got != 1 {
		t.Errorf("+Inf bucket: %v %v", got, ok)
	}
	// A first bucket with a negative bound is returned as is.
	if got, ok := bucketQuantile(0.1, []bucket{{-1, 50}, {1, 90}, {inf, 100}}); !ok || got != -1 {
		t.Errorf("negative first bucket: %v %v", got, ok)
	}
	for name, bs := range map[string][]bucket{
		"no +Inf":      {{0.1, 5}, {1, 10}},
		"only +Inf":    {{inf, 10}},
		"empty":        nil,
		"no samples":   {{0.1, 0}, {inf, 0}},
		"-Inf bound":   {{math.Inf(-1), 10}, {inf, 10}},
		"huge counts":  {{1, math.MaxFloat64}, {inf, inf}},
		"-Inf then +1": {{math.Inf(-1), 1}, {1, 5}, {inf, 10}},
	} {
		if got, ok := bucketQuantile(0.3, bs); ok {
			t.Errorf("%s: %v, want not ok", name, got)
		}
	}
}

func TestLatency(t *testing.T) {
	c := compile(t, analysisOf(latRule(&v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.99, MaxSeconds: 0.5, MaxBaselineFactor: 2})))
	w := NewWindow(c)
	// Two series (two handlers) summed by le; increases over the window:
	// 0.1: 40, 0.5: 60, 1: 64, +Inf: 66 -> p99 at rank 65.34 is in the +Inf
	// bucket: the largest finite bound, 1s.
	add(t, w, sec(0), histogram(`handler="a",`, 10, 10, 10, 10)+histogramSeries(`handler="b",`, 0, 0, 0, 0))
	add(t, w, sec(30), histogram(`handler="a",`, 30, 40, 42, 43)+histogramSeries(`handler="b",`, 20, 30, 32, 33))
	r := evalOne(t, c, w, Baseline{}, sec(30))
	wantResult(t, r, lifecycle.VerdictFail, `rule "latency": p99 latency 1s over 30s (66 observations) > max 0.5s`)

	// Few observations: inconclusive.
	w = NewWindow(c)
	add(t, w, sec(0), histogram("", 0, 0, 0, 0))
	add(t, w, sec(30), histogram("", 1, 2, 3, 3))
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(30)), lifecycle.VerdictInconclusive, `rule "latency": inconclusive: 3 observations of http_request_duration_seconds in 30s, need 20`)
}

func TestLatencyBaseline(t *testing.T) {
	c := compile(t, analysisOf(latRule(&v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.5, MaxSeconds: 2, MaxBaselineFactor: 2})))
	w := NewWindow(c)
	// Old release: 100 observations, median at rank 50 in (0, 0.1]: 0.05s.
	add(t, w, sec(0), histogram(`version="1",`, 0, 0, 0, 0))
	add(t, w, sec(30), histogram(`version="1",`, 100, 100, 100, 100))
	base := w.Freeze(c.Rules, sec(30))
	if v, ok := base.Value("latency"); !ok || math.Abs(v-0.05) > 1e-9 {
		t.Fatalf("baseline = %v %v", v, ok)
	}
	// New release: 100 observations, 20 under 0.1, 80 in (0.1, 0.5]:
	// median at rank 50: 0.1 + 0.4 × 30/80 = 0.25s > 2 × 0.05s.
	add(t, w, sec(31), histogram(`version="2",`, 0, 0, 0, 0))
	add(t, w, sec(61), histogram(`version="2",`, 20, 100, 100, 100))
	r := evalOne(t, c, w, base, sec(61))
	wantResult(t, r, lifecycle.VerdictFail, `rule "latency": p50 latency 0.25s over 30s (100 observations) > 2.0 × baseline 0.05s`)
	if math.Abs(r.Threshold-0.1) > 1e-9 || r.Baseline != 0.05 {
		t.Errorf("numbers: %+v", r)
	}
}

func TestLatencyHistogramVariants(t *testing.T) {
	c := compile(t, analysisOf(latRule(&v1.LatencyRule{Metric: "h", Quantile: 0.5, MaxSeconds: 10, MinSamples: 1})))
	for name, texts := range map[string][2]string{
		// No # TYPE line: the buckets come as the untyped family h_bucket.
		"untyped": {
			"h_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 0\nh_bucket{le=\"+Inf\"} 0\n",
			"h_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 10\nh_bucket{le=\"+Inf\"} 10\n",
		},
		// No +Inf bucket: the count stands in for it.
		"no +Inf bucket": {
			"# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 0\nh_count 0\n",
			"# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 10\nh_count 10\n",
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := NewWindow(c)
			add(t, w, sec(0), texts[0])
			add(t, w, sec(10), texts[1])
			r := evalOne(t, c, w, Baseline{}, sec(10))
			if r.Verdict != lifecycle.VerdictPass || r.Value != 1.5 {
				t.Errorf("got %+v, want p50 1.5s", r)
			}
		})
	}
	// Series with different bucket layouts, summed by le: 1: 4, 2: 3, 3: 10,
	// +Inf: 10. Made monotonic (2: 4) as histogram_quantile does, the
	// median at rank 5 is 2 + 1 × 1/6 (2 + 2/7 without).
	w := NewWindow(c)
	add(t, w, sec(0), "# TYPE h histogram\nh_bucket{s=\"a\",le=\"1\"} 0\nh_bucket{s=\"a\",le=\"3\"} 0\nh_bucket{s=\"a\",le=\"+Inf\"} 0\n"+
		"h_bucket{s=\"b\",le=\"2\"} 0\nh_bucket{s=\"b\",le=\"3\"} 0\nh_bucket{s=\"b\",le=\"+Inf\"} 0\n")
	add(t, w, sec(10), "# TYPE h histogram\nh_bucket{s=\"a\",le=\"1\"} 4\nh_bucket{s=\"a\",le=\"3\"} 4\nh_bucket{s=\"a\",le=\"+Inf\"} 4\n"+
		"h_bucket{s=\"b\",le=\"2\"} 3\nh_bucket{s=\"b\",le=\"3\"} 6\nh_bucket{s=\"b\",le=\"+Inf\"} 6\n")
	if r := evalOne(t, c, w, Baseline{}, sec(10)); r.Verdict != lifecycle.VerdictPass || math.Abs(r.Value-(2+1.0/6)) > 1e-9 {
		t.Errorf("mixed layouts: %+v", r)
	}
	// Only a +Inf bucket: no finite bucket to estimate from.
	w = NewWindow(c)
	add(t, w, sec(0), "h_bucket{le=\"+Inf\"} 0\n")
	add(t, w, sec(10), "h_bucket{le=\"+Inf\"} 10\n")
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(10)), lifecycle.VerdictInconclusive, `rule "latency": inconclusive: histogram h has no finite bucket to estimate p50 from`)
	// Buckets without +Inf (untyped): inconclusive.
	w = NewWindow(c)
	add(t, w, sec(0), "h_bucket{le=\"1\"} 0\n")
	add(t, w, sec(10), "h_bucket{le=\"1\"} 10\n")
	wantResult(t, evalOne(t, c, w, Baseline{}, sec(10)), lifecycle.VerdictInconclusive, `rule "latency": inconclusive: histogram h has no +Inf bucket`)
}

func TestNonFiniteInputsNeverLeak(t *testing.T) {
	c := compile(t, analysisOf(
		errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5, MaxBaselineFactor: 2, MinRequests: 1}),
		latRule(&v1.LatencyRule{Metric: "h", Quantile: 0.5, MaxSeconds: 10, MaxBaselineFactor: 3, MinSamples: 1}),
	))
	texts := []string{
		"http_requests_total{code=\"200\"} NaN\nhttp_requests_total{code=\"500\"} +Inf\nh_bucket{le=\"1\"} NaN\nh_bucket{le=\"+Inf\"} -Inf\n",
		"http_requests_total{code=\"200\"} 1e308\nhttp_requests_total{code=\"500\"} 1.7e308\nh_bucket{le=\"NaN\"} 5\nh_bucket{le=\"+Inf\"} 1.7e308\n",
		"http_requests_total{code=\"200\"} -5\nhttp_requests_total{code=\"500\"} 1.7e308\nh_bucket{le=\"1\"} 1.7e308\nh_bucket{le=\"+Inf\"} 1.7e308\n",
		"http_requests_total{code=\"200\"} 0\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\n",
	}
	for i := range texts {
		for j := range texts {
			w := NewWindow(c)
			add(t, w, sec(0), texts[i])
			add(t, w, sec(10), texts[j])
			base := NewBaseline(c.Rules, w, sec(10))
			add(t, w, sec(11), texts[i])
			rs := Evaluate(c.Rules, w, base, sec(11), nil, nil)
			checkFinite(t, rs)
			for _, r := range rs {
				if strings.Contains(r.Reason, "NaN") || strings.Contains(r.Reason, "Inf") {
					t.Errorf("texts %d, %d: reason %q", i, j, r.Reason)
				}
			}
		}
	}
}

func TestRestarts(t *testing.T) {
	c := compile(t, analysisOf(&v1.AnalysisRule{Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{Max: 1}}}))
	w := NewWindow(c)
	restarts := []time.Time{sec(-5), sec(15), sec(40), sec(41)}
	rs := Evaluate(c.Rules, w, Baseline{}, sec(30), restarts, nil)
	checkFinite(t, rs)
	wantResult(t, rs[0], lifecycle.VerdictPass, `rule "restarts": 1 restarts in 30s <= max 1`)
	rs = Evaluate(c.Rules, w, Baseline{}, sec(41), restarts, nil)
	wantResult(t, rs[0], lifecycle.VerdictFail, `rule "restarts": 3 restarts in 30s > max 1`)
	if rs[0].Value != 3 || rs[0].Threshold != 1 {
		t.Errorf("numbers: %+v", rs[0])
	}
	// A nil window uses the default window.
	rs = Evaluate(c.Rules, nil, Baseline{}, sec(41), restarts, nil)
	wantResult(t, rs[0], lifecycle.VerdictFail, `rule "restarts": 3 restarts in 30s > max 1`)
}

func TestPromQLRule(t *testing.T) {
	c := compile(t, &v1.Analysis{PrometheusUrl: "http://prom:9090", Rules: []*v1.AnalysisRule{
		{Name: "q", Kind: &v1.AnalysisRule_Promql{Promql: &v1.PromQLRule{Query: "x", Max: 10, Min: proto.Float64(1)}}},
	}})
	for _, tt := range []struct {
		in      map[string]PromQLResult
		verdict lifecycle.Verdict
		reason  string
	}{
		{nil, lifecycle.VerdictInconclusive, `rule "q": inconclusive: no query result yet (min 1, max 10)`},
		{map[string]PromQLResult{"q": {Err: errors.New("boom")}}, lifecycle.VerdictInconclusive, `rule "q": inconclusive: query failed (min 1, max 10): boom`},
		{map[string]PromQLResult{"q": {}}, lifecycle.VerdictInconclusive, `rule "q": inconclusive: query returned no sample (min 1, max 10)`},
		{map[string]PromQLResult{"q": {Value: math.NaN(), OK: true}}, lifecycle.VerdictInconclusive, `rule "q": inconclusive: query returned NaN (min 1, max 10)`},
		{map[string]PromQLResult{"q": {Value: 12.5, OK: true}}, lifecycle.VerdictFail, `rule "q": query value 12.5 > max 10`},
		{map[string]PromQLResult{"q": {Value: 0.5, OK: true}}, lifecycle.VerdictFail, `rule "q": query value 0.5 < min 1`},
		{map[string]PromQLResult{"q": {Value: 10, OK: true}}, lifecycle.VerdictPass, `rule "q": query value 10 within min 1, max 10`},
	} {
		rs := Evaluate(c.Rules, NewWindow(c), Baseline{}, sec(0), nil, tt.in)
		checkFinite(t, rs)
		wantResult(t, rs[0], tt.verdict, tt.reason)
	}
}

func TestWindowIsBounded(t *testing.T) {
	c := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5})))
	w := NewWindow(c)
	for i := 0; i <= 1000; i++ {
		add(t, w, sec(float64(i)), requests(map[string]float64{"200": float64(10 * i)}, "")+"unrelated_metric 1\n")
		if w.Len() > 32 {
			t.Fatalf("after %d samples the window holds %d", i+1, w.Len())
		}
	}
	// The reference sample is exactly at now-30s, so the window covers 30s.
	if r := evalOne(t, c, w, Baseline{}, sec(1000)); !strings.Contains(r.Reason, "over 30s (0/300 requests)") {
		t.Errorf("reason %q", r.Reason)
	}
	if got := w.at(0).Families; got["unrelated_metric"] != nil || got["http_requests_total"] == nil {
		t.Errorf("kept families %v", got)
	}
	// Samples arriving faster than the interval push the oldest out.
	for i := 1; i <= 100; i++ {
		add(t, w, sec(1000+float64(i)/10), requests(map[string]float64{"200": 10000 + float64(i)}, ""))
	}
	if w.Len() > 33 {
		t.Errorf("window holds %d samples", w.Len())
	}
	if err := w.Add(parse(t, sec(5), "x 1\n")); !errors.Is(err, ErrNotNewer) {
		t.Errorf("Add of a sample older than the newest: %v, want ErrNotNewer", err)
	}
	if err := w.Add(parse(t, sec(1010), "x 1\n")); !errors.Is(err, ErrNotNewer) {
		t.Errorf("Add of a sample as old as the newest: %v, want ErrNotNewer", err)
	}
	w.Reset()
	if w.Len() != 0 {
		t.Error("Reset left samples")
	}
}

func TestEvaluateIgnoresFutureSamplesAndKeepsOrder(t *testing.T) {
	c := compile(t, analysisOf(
		errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5, MinRequests: 1}),
		&v1.AnalysisRule{Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{}}},
	))
	w := NewWindow(c)
	add(t, w, sec(0), requests(map[string]float64{"200": 0}, ""))
	add(t, w, sec(10), requests(map[string]float64{"200": 10}, ""))
	add(t, w, sec(20), requests(map[string]float64{"200": 1000}, ""))
	rs := Evaluate(c.Rules, w, Baseline{}, sec(10), nil, nil)
	checkFinite(t, rs)
	if len(rs) != 2 || rs[0].Rule != "error_ratio" || rs[1].Rule != "restarts" {
		t.Fatalf("results %+v", rs)
	}
	if !strings.Contains(rs[0].Reason, "(0/10 requests)") {
		t.Errorf("reason %q", rs[0].Reason)
	}
}

func TestOverall(t *testing.T) {
	result := func(v lifecycle.Verdict) Result { return Result{RuleResult: lifecycle.RuleResult{Verdict: v}} }
	p, i, f := result(lifecycle.VerdictPass), result(lifecycle.VerdictInconclusive), result(lifecycle.VerdictFail)
	for _, tt := range []struct {
		rs   []Result
		want lifecycle.Verdict
	}{{nil, lifecycle.VerdictPass}, {[]Result{p, p}, lifecycle.VerdictPass}, {[]Result{p, i}, lifecycle.VerdictInconclusive}, {[]Result{i, f, p}, lifecycle.VerdictFail}} {
		if got := Overall(tt.rs); got != tt.want {
			t.Errorf("Overall(%v) = %s, want %s", tt.rs, got, tt.want)
		}
	}
}

func TestFormatting(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{fmtRatio(0.2), "0.200"}, {fmtRatio(0), "0.000"}, {fmtRatio(0.0004), "0.0004"}, {fmtRatio(1), "1.000"},
		{fmtSeconds(0.84), "0.84s"}, {fmtSeconds(0.123456), "0.123s"}, {fmtSeconds(1234.5), "1234s"},
		{fmtFactor(2), "2.0"}, {fmtFactor(1.25), "1.25"},
		{fmtCount(40), "40"}, {fmtCount(2.5), "2.5"},
		{fmtQuantile(0.99), "p99"}, {fmtQuantile(0.999), "p99.9"}, {fmtQuantile(0.5), "p50"},
		{fmtSpan(30*time.Second + 12*time.Millisecond), "30s"}, {fmtSpan(1500 * time.Millisecond), "1.5s"}, {fmtSpan(0), "0s"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestRetargetCarriesSamples(t *testing.T) {
	old := compile(t, analysisOf(errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5})))
	w := NewWindow(old)
	for i := 0; i <= 40; i++ {
		add(t, w, sec(float64(i)), requests(map[string]float64{"200": float64(10 * i), "500": float64(i)}, ""))
	}
	// The new spec: a shorter window, the same counter and a latency rule
	// on a histogram the old rules did not keep.
	na := analysisOf(
		errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05}),
		latRule(&v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.99, MaxSeconds: 1}),
	)
	na.Window = durationpb.New(10 * time.Second)
	nc := compile(t, na)
	before := w.Len()
	nw := w.Retarget(nc)
	if w.Len() == 0 || nw.Len() == 0 || nw.Len() > 13 {
		t.Fatalf("old window %d samples, retargeted %d", w.Len(), nw.Len())
	}
	rs := Evaluate(nc.Rules, nw, Baseline{}, sec(40), nil, nil)
	checkFinite(t, rs)
	wantResult(t, rs[0], lifecycle.VerdictFail, `rule "error_ratio": error ratio 0.091 over 10s (10/110 requests) > max 0.050`)
	if rs[1].Verdict != lifecycle.VerdictInconclusive || !strings.Contains(rs[1].Reason, "no histogram buckets") {
		t.Errorf("latency on samples that never kept it: %+v", rs[1])
	}
	if w.Len() != before {
		t.Errorf("the old window changed: %d samples, had %d", w.Len(), before)
	}
}

// seriesText is a counter family of n series (one code each) and, if
// unrelated, as many series of a family no rule reads.
func seriesText(family string, n int, v float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# TYPE %s counter\n", family)
	for i := range n {
		fmt.Fprintf(&b, "%s{code=\"200\",i=\"%d\"} %v\n", family, i, v)
	}
	return b.String()
}

// TestWindowPointsBounded: a service's exposition can make the window hold
// at most MaxWindowPoints values, however many series it writes into the
// families the rules read. A sample over MaxSamplePoints is refused and
// names the family (the window is unchanged); values of families no rule
// reads do not count; samples that would put the window over
// MaxWindowPoints push the oldest out. (Before: every sample kept whole,
// 31 samples of a 4 MiB exposition in the rule's family held 1.2 GiB: a
// review.)
func TestWindowPointsBounded(t *testing.T) {
	c := compile(t, analysisOf(
		errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.5}),
		latRule(&v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.9, MaxSeconds: 1})))
	w := NewWindow(c)
	add(t, w, sec(0), seriesText("http_requests_total", 10, 1)+seriesText("unrelated_total", 3*MaxSamplePoints, 1))
	err := w.Add(parse(t, sec(1), seriesText("http_requests_total", MaxSamplePoints+1, 2)))
	if !errors.Is(err, ErrTooManyPoints) || !strings.Contains(err.Error(), fmt.Sprintf("%d in http_requests_total, at most %d", MaxSamplePoints+1, MaxSamplePoints)) {
		t.Fatalf("a sample of %d series in the rule's family: %v, want ErrTooManyPoints naming it", MaxSamplePoints+1, err)
	}
	// A histogram's buckets count: 2,001 series of 9 buckets (+Inf added
	// by the parser) and a count each are over the bound.
	var h strings.Builder
	h.WriteString("# TYPE http_request_duration_seconds histogram\n")
	for i := range MaxSamplePoints/10 + 1 {
		for _, le := range []string{"0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "10"} {
			fmt.Fprintf(&h, "http_request_duration_seconds_bucket{i=\"%d\",le=%q} 1\n", i, le)
		}
		fmt.Fprintf(&h, "http_request_duration_seconds_bucket{i=\"%d\",le=\"+Inf\"} 1\nhttp_request_duration_seconds_count{i=\"%d\"} 1\nhttp_request_duration_seconds_sum{i=\"%d\"} 1\n", i, i, i)
	}
	if err := w.Add(parse(t, sec(2), h.String())); !errors.Is(err, ErrTooManyPoints) || !strings.Contains(err.Error(), "http_request_duration_seconds") {
		t.Fatalf("a histogram of %d series: %v, want ErrTooManyPoints naming it", MaxSamplePoints/10+1, err)
	}
	if w.Len() != 1 || w.total != 10 {
		t.Fatalf("after the refused samples: %d samples of %d values, want the first alone (10)", w.Len(), w.total)
	}
	// Samples just under the bound: the window keeps what MaxWindowPoints
	// holds, the newest ones, fewer than its 33 samples.
	per := MaxSamplePoints - 5
	for i := 3; i < 40; i++ {
		add(t, w, sec(float64(i)), seriesText("http_requests_total", per, float64(i)))
		if w.total > MaxWindowPoints {
			t.Fatalf("after the sample at %ds the window holds %d values, over %d", i, w.total, MaxWindowPoints)
		}
	}
	if want := MaxWindowPoints / per; w.Len() != want {
		t.Fatalf("window holds %d samples of %d values, want %d", w.Len(), per, want)
	}
	if got := w.at(w.n - 1).At; !got.Equal(sec(39)) {
		t.Fatalf("newest sample at %v, want the last added", got)
	}
	// The increase is measured over the span the samples left cover.
	r := evalOne(t, Config{Rules: c.Rules[:1]}, w, Baseline{}, sec(39))
	if r.Verdict == lifecycle.VerdictFail {
		t.Fatalf("no errors over the held samples, got %v: %s", r.Verdict, r.Reason)
	}
}
