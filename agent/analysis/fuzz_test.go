package analysis

import (
	"bytes"
	"math"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// FuzzParse feeds arbitrary bytes to Parse and evaluates every rule kind
// over what parses, between two fixed samples: nothing may panic and no
// result may carry NaN or ±Inf. Run it with
//
//	go test ./agent/analysis -run '^$' -fuzz FuzzParse -fuzztime 30s
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		``,
		"# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 10\nhttp_requests_total{code=\"500\"} 1\n",
		histogram(`version="2",`, 1, 2, 3, 4),
		"h_bucket{le=\"1\"} NaN\nh_bucket{le=\"+Inf\"} -Inf\nhttp_requests_total{code=\"500\"} 1e308\n",
		"process_start_time_seconds 17e8\nhttp_requests_total 5 1712345678000\n",
		"# TYPE h summary\nh{quantile=\"0.5\"} 1\nh_sum 1\nh_count 1\n",
		"# TYPE h histogram\nh_bucket{le=\"NaN\"} 1\nh_bucket{le=\"-Inf\"} 1\nh_count 2\n",
		"\xff\xfe{=\"\n",
		"metric{label=\"\\\"\\n\\\\\"} 1\n",
	} {
		f.Add([]byte(s))
	}
	c, err := Compile(analysisOf(
		errRule(&v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.1, MaxBaselineFactor: 2, MinRequests: 1}),
		latRule(&v1.LatencyRule{Metric: "h", Quantile: 0.9, MaxSeconds: 1, MaxBaselineFactor: 2, MinSamples: 1}),
		latRule(&v1.LatencyRule{Metric: "http_request_duration_seconds", Quantile: 0.5, MaxSeconds: 1, MinSamples: 1}),
	))
	if err != nil {
		f.Fatal(err)
	}
	c.Rules[2].Name = "latency2"
	before, err := Parse(bytes.NewReader([]byte(histogram("", 0, 0, 0, 0)+"http_requests_total{code=\"200\"} 3\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n")), sec(0))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(bytes.NewReader(data), sec(10))
		if err != nil {
			if s.Families != nil {
				t.Fatalf("Parse returned families and an error %v", err)
			}
			return
		}
		w := NewWindow(c)
		_ = w.Add(before)
		_ = w.Add(s)
		base := NewBaseline(c.Rules, w, sec(10))
		after := s
		after.At = sec(20)
		_ = w.Add(after)
		for _, r := range Evaluate(c.Rules, w, base, sec(20), nil, nil) {
			for _, v := range []float64{r.Value, r.Baseline, r.Threshold} {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("non-finite number in %+v", r)
				}
			}
			if r.Reason == "" || r.Rule == "" {
				t.Fatalf("result without reason or rule: %+v", r)
			}
		}
	})
}
