package demoapp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type server struct {
	url  string
	dir  string
	logs *syncBuffer
	stop func() error // cancels and returns what Serve returned
}

// start serves dir on 127.0.0.1:0; onRoot may be nil.
func start(t *testing.T, dir string, onRoot func()) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, dir, zerolog.New(logs), onRoot) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(15 * time.Second):
				serveErr = errors.New("Serve did not return after cancel")
			}
		})
		return serveErr
	}
	t.Cleanup(func() { _ = stop() })
	return &server{url: "http://" + ln.Addr().String(), dir: dir, logs: logs, stop: stop}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func expect(t *testing.T, url string, code int, body string) {
	t.Helper()
	gotCode, gotBody := get(t, url)
	if gotCode != code || gotBody != body {
		t.Fatalf("GET %s = %d %q, want %d %q", url, gotCode, gotBody, code, body)
	}
}

func TestEndpoints(t *testing.T) {
	s := start(t, writeFiles(t, map[string]string{"VERSION": " 1.2.3\n"}), nil)
	expect(t, s.url+"/", 200, "hello from 1.2.3")
	expect(t, s.url+"/healthz", 200, "ok")
	expect(t, s.url+"/version", 200, "1.2.3")
	if code, _ := get(t, s.url+"/nope"); code != 404 {
		t.Fatalf("GET /nope = %d, want 404", code)
	}
	resp, err := http.Post(s.url+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST / = %d, want 405", resp.StatusCode)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("Serve after cancel = %v, want nil", err)
	}
	if _, err := http.Get(s.url + "/healthz"); err == nil {
		t.Fatal("server still answering after shutdown")
	}
	for _, want := range []string{`"message":"listening"`, `"version":"1.2.3"`, `"message":"stopped"`} {
		if !strings.Contains(s.logs.String(), want) {
			t.Fatalf("logs lack %s:\n%s", want, s.logs)
		}
	}
}

func TestFailHealthToggles(t *testing.T) {
	dir := writeFiles(t, map[string]string{"VERSION": "v2", "FAIL_HEALTH": ""})
	s := start(t, dir, nil)
	expect(t, s.url+"/healthz", 500, "unhealthy")
	expect(t, s.url+"/", 200, "hello from v2")
	if err := os.Remove(filepath.Join(dir, "FAIL_HEALTH")); err != nil {
		t.Fatal(err)
	}
	expect(t, s.url+"/healthz", 200, "ok")
}

func TestCrash(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	err = Serve(context.Background(), ln, writeFiles(t, map[string]string{"VERSION": "v3", "CRASH": "1"}), zerolog.New(logs))
	if !errors.Is(err, ErrCrash) {
		t.Fatalf("Serve = %v, want ErrCrash", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("listener still open after crash")
	}
	if !strings.Contains(logs.String(), "crashing") {
		t.Fatalf("no crash log line: %s", logs)
	}
}

func TestErrorRate(t *testing.T) {
	for _, tc := range []struct {
		rate string
		want string // per request: . = 200, x = 500
	}{
		{"0", "........"},
		{"0.25", "...x...x"},
		{"0.5", ".x.x.x.x"},
		{"1", "xxxxxxxx"},
		{"0.3", "...x..x..x"},
	} {
		s := start(t, writeFiles(t, map[string]string{"VERSION": "v1", "ERROR_RATE": tc.rate + "\n"}), nil)
		var got strings.Builder
		for range len(tc.want) {
			code, body := get(t, s.url+"/")
			switch {
			case code == 200 && body == "hello from v1":
				got.WriteByte('.')
			case code == 500:
				got.WriteByte('x')
			default:
				t.Fatalf("rate %s: unexpected answer %d %q", tc.rate, code, body)
			}
		}
		if got.String() != tc.want {
			t.Fatalf("rate %s: answers %s, want %s", tc.rate, got.String(), tc.want)
		}
		// Only / is affected.
		expect(t, s.url+"/healthz", 200, "ok")
	}
}

func TestLatency(t *testing.T) {
	s := start(t, writeFiles(t, map[string]string{"VERSION": "v1", "LATENCY": "150ms"}), nil)
	begin := time.Now()
	expect(t, s.url+"/", 200, "hello from v1")
	if d := time.Since(begin); d < 150*time.Millisecond {
		t.Fatalf("GET / took %v, want >= 150ms", d)
	}
}

func TestDegradeAfter(t *testing.T) {
	// Taken before the app starts, so DEGRADE_AFTER counts from later.
	before := time.Now()
	s := start(t, writeFiles(t, map[string]string{"VERSION": "v1", "ERROR_RATE": "1", "DEGRADE_AFTER": "300ms"}), nil)
	// Healthy at first: checked only when the answer came before 300 ms
	// had passed since before (so surely before DEGRADE_AFTER; a slow
	// machine skips the check rather than failing it)...
	code, _ := get(t, s.url+"/")
	if time.Since(before) < 300*time.Millisecond && code != 200 {
		t.Fatalf("GET / before DEGRADE_AFTER = %d, want 200", code)
	}
	// ...then every request fails, and never before DEGRADE_AFTER.
	testkit.Eventually(t, 20*time.Second, "ERROR_RATE applied after DEGRADE_AFTER", func() bool {
		code, _ := get(t, s.url+"/")
		return code == 500
	})
	if d := time.Since(before); d < 300*time.Millisecond {
		t.Fatalf("degraded %v after the app started, want >= 300ms", d)
	}
}

func TestBadFiles(t *testing.T) {
	for _, tc := range []struct {
		files map[string]string
		want  string
	}{
		{map[string]string{}, "VERSION: missing"},
		{map[string]string{"VERSION": "  \n"}, `VERSION: invalid version ""`},
		{map[string]string{"VERSION": "a b"}, `VERSION: invalid version "a b"`},
		{map[string]string{"VERSION": strings.Repeat("v", 2000)}, "VERSION: larger than"},
		{map[string]string{"VERSION": "v1", "ERROR_RATE": "1.5"}, `ERROR_RATE: invalid rate "1.5"`},
		{map[string]string{"VERSION": "v1", "ERROR_RATE": "lots"}, `ERROR_RATE: invalid rate "lots"`},
		{map[string]string{"VERSION": "v1", "ERROR_RATE": "NaN"}, `ERROR_RATE: invalid rate "NaN"`},
		{map[string]string{"VERSION": "v1", "LATENCY": "slow"}, `LATENCY: invalid duration "slow"`},
		{map[string]string{"VERSION": "v1", "LATENCY": "-1s"}, `LATENCY: invalid duration "-1s"`},
		{map[string]string{"VERSION": "v1", "DEGRADE_AFTER": "soon"}, `DEGRADE_AFTER: invalid duration "soon"`},
		{map[string]string{"VERSION": "v1", "LOAD_FACTOR": "4"}, `LOAD_FACTOR: invalid "4" (want "N F"`},
		{map[string]string{"VERSION": "v1", "LOAD_FACTOR": "0 2"}, `LOAD_FACTOR: invalid "0 2"`},
		{map[string]string{"VERSION": "v1", "LOAD_FACTOR": "1001 2"}, `LOAD_FACTOR: invalid "1001 2"`},
		{map[string]string{"VERSION": "v1", "LOAD_FACTOR": "4 -1"}, `LOAD_FACTOR: invalid "4 -1"`},
		{map[string]string{"VERSION": "v1", "LOAD_FACTOR": "4 NaN"}, `LOAD_FACTOR: invalid "4 NaN"`},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = Serve(context.Background(), ln, writeFiles(t, tc.files), zerolog.Nop())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("files %v: Serve = %v, want error containing %q", tc.files, err, tc.want)
		}
		if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			t.Fatal("listener left open after a start error")
		}
	}
}

func TestMetrics(t *testing.T) {
	s := start(t, writeFiles(t, map[string]string{"VERSION": "9.9.9", "ERROR_RATE": "0.5"}), nil)
	for range 4 {
		get(t, s.url+"/") // 2 x 200, 2 x 500
	}
	get(t, s.url+"/healthz")
	get(t, s.url+"/wp-admin")
	get(t, s.url+"/wp-login")

	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics = %d", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for name := range fams {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			t.Fatalf("metric %s from the global registry leaked in", name)
		}
	}

	reqs := fams["http_requests_total"]
	if reqs.GetType() != dto.MetricType_COUNTER {
		t.Fatalf("http_requests_total type = %v", reqs.GetType())
	}
	for _, tc := range []struct {
		code, path string
		want       float64
	}{
		{"200", "/", 2},
		{"500", "/", 2},
		{"200", "/healthz", 1},
		{"404", "other", 2},
	} {
		m := find(reqs, map[string]string{"code": tc.code, "path": tc.path})
		if m == nil || m.GetCounter().GetValue() != tc.want {
			t.Errorf("http_requests_total{code=%q,path=%q} = %v, want %v", tc.code, tc.path, m.GetCounter().GetValue(), tc.want)
		}
	}

	dur := fams["http_request_duration_seconds"]
	if dur.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("http_request_duration_seconds type = %v", dur.GetType())
	}
	if m := find(dur, map[string]string{"path": "/"}); m == nil || m.GetHistogram().GetSampleCount() != 4 {
		t.Errorf("duration histogram for / = %v, want 4 samples", m)
	}

	build := find(fams["demoapp_build_info"], map[string]string{"version": "9.9.9"})
	if build == nil || build.GetGauge().GetValue() != 1 {
		t.Errorf("demoapp_build_info{version=9.9.9} = %v, want 1", build)
	}
}

func find(f *dto.MetricFamily, labels map[string]string) *dto.Metric {
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := len(got) == len(labels)
		for k, v := range labels {
			if got[k] != v {
				match = false
			}
		}
		if match {
			return m
		}
	}
	return nil
}

func TestGracefulShutdownFinishesRequest(t *testing.T) {
	started := make(chan struct{}, 1)
	s := start(t, writeFiles(t, map[string]string{"VERSION": "v1", "LATENCY": "300ms"}),
		func() { started <- struct{}{} })
	type answer struct {
		code int
		body string
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		resp, err := http.Get(s.url + "/")
		if err != nil {
			answers <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		answers <- answer{resp.StatusCode, string(body), err}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the handler")
	}
	if err := s.stop(); err != nil {
		t.Fatalf("Serve = %v, want nil after graceful shutdown", err)
	}
	a := <-answers
	if a.err != nil || a.code != 200 || a.body != "hello from v1" {
		t.Fatalf("in-flight request got %d %q %v, want 200 hello from v1", a.code, a.body, a.err)
	}
}

func TestRun(t *testing.T) {
	dir := writeFiles(t, map[string]string{"VERSION": "r1"})
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, []string{"--listen", "127.0.0.1:0", "--dir", dir}, out) }()

	var addr string
	testkit.EventuallyErr(t, 20*time.Second, "the listening line in the output", func() error {
		for _, line := range strings.Split(out.String(), "\n") {
			var rec struct {
				Message, Addr, Service string
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Message == "listening" {
				if rec.Service != "demoapp" {
					t.Fatalf("log line %s lacks service=demoapp", line)
				}
				addr = rec.Addr
			}
		}
		if addr == "" {
			return fmt.Errorf("output so far:\n%s", out)
		}
		return nil
	})
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("logged address %q is not the real one", addr)
	}
	expect(t, "http://"+addr+"/version", 200, "r1")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestRunFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--listen: required"},
		{[]string{"--dir", "x"}, "--listen: required"},
		{[]string{"--listen", "127.0.0.1:0", "extra"}, "unexpected arguments"},
		{[]string{"--bogus"}, "bogus"},
		{[]string{"--listen", "not an address"}, `--listen "not an address"`},
	} {
		err := Run(context.Background(), tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%q) = %v, want error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestInjectErrorExactFraction(t *testing.T) {
	for _, rate := range []float64{0, 0.01, 0.1, 1.0 / 3, 0.5, 0.9, 1} {
		fails := 0
		for n := uint64(1); n <= 1000; n++ {
			if injectError(n, rate) {
				fails++
			}
		}
		want := int(rate*1000 + 1e-6)
		if fails != want {
			t.Errorf("rate %v: %d of 1000 failed, want %d", rate, fails, want)
		}
	}
}

// TestLoadFactor: from N requests in flight, LATENCY is multiplied by F: a
// lone request with "1 0" skips an hour of LATENCY.
func TestLoadFactor(t *testing.T) {
	s := start(t, writeFiles(t, map[string]string{"VERSION": "v1", "LATENCY": "1h", "LOAD_FACTOR": "1 0"}), nil)
	if code, body := get(t, s.url+"/"); code != 200 || body != "hello from v1" {
		t.Fatalf("GET / = %d %q", code, body)
	}
}

// TestFineBuckets: with FINE_BUCKETS the latency histogram's buckets are
// 1.25x apart from 1 ms; without it, the client's default.
func TestFineBuckets(t *testing.T) {
	for _, tc := range []struct {
		files map[string]string
		want  string
	}{
		{map[string]string{"VERSION": "v1", "FINE_BUCKETS": ""}, `le="0.00125"`},
		{map[string]string{"VERSION": "v1"}, `le="0.005"`},
	} {
		s := start(t, writeFiles(t, tc.files), nil)
		get(t, s.url+"/")
		if _, body := get(t, s.url+"/metrics"); !strings.Contains(body, `http_request_duration_seconds_bucket{path="/",`+tc.want+`}`) {
			t.Errorf("files %v: no bucket %s in\n%s", tc.files, tc.want, body)
		}
	}
}
