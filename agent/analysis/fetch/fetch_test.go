package fetch

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/analysis"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func TestScrape(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept"), "text/plain") {
			http.Error(w, "want text", http.StatusNotAcceptable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 7\n")
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "database on fire", http.StatusInternalServerError)
	})
	mux.HandleFunc("/garbage", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "<html>not metrics</html>\n")
	})
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) {
		line := strings.Repeat("#", 1023) + "\n"
		for i := 0; i <= analysis.MaxScrapeBytes/len(line); i++ {
			if _, err := io.WriteString(w, line); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()

	s, err := Scrape(ctx, srv.Client(), srv.URL+"/metrics", t0)
	if err != nil {
		t.Fatalf("Scrape: %v", err)
	}
	if f := s.Families["http_requests_total"]; !s.At.Equal(t0) || f == nil || f.GetMetric()[0].GetCounter().GetValue() != 7 {
		t.Errorf("Scrape = %+v", s)
	}

	_, err = Scrape(ctx, nil, srv.URL+"/broken", t0)
	if err == nil || !strings.Contains(err.Error(), srv.URL+"/broken") || !strings.Contains(err.Error(), "status 500") || !strings.Contains(err.Error(), "database on fire") {
		t.Errorf("non-200: %v", err)
	}
	_, err = Scrape(ctx, nil, srv.URL+"/garbage", t0)
	if err == nil || !strings.Contains(err.Error(), "scrape "+srv.URL+"/garbage: parse metrics") {
		t.Errorf("garbage: %v", err)
	}
	_, err = Scrape(ctx, nil, srv.URL+"/huge", t0)
	if !errors.Is(err, analysis.ErrTooLarge) || !strings.Contains(err.Error(), srv.URL+"/huge") {
		t.Errorf("huge: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = Scrape(tctx, nil, srv.URL+"/slow", t0)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), srv.URL+"/slow") {
		t.Errorf("slow: %v", err)
	}

	// A password in the URL never shows in an error.
	secretURL := strings.Replace(srv.URL, "http://", "http://user:hunter2@", 1) + "/broken"
	_, err = Scrape(ctx, nil, secretURL, t0)
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "user:xxxxx@") {
		t.Errorf("redaction: %v", err)
	}
	if _, err := Scrape(ctx, nil, "http://[::1/x", t0); err == nil || !strings.Contains(err.Error(), `scrape "http://[::1/x"`) {
		t.Errorf("bad URL: %v", err)
	}
}

// promServer answers /prefix/api/v1/query with body and status when the
// query is "q{a=\"b c\"}"; any other path or query is a 404.
func promServer(t *testing.T, status int, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/prefix/api/v1/query" || r.URL.Query().Get("query") != `q{a="b c"}` || r.Method != http.MethodGet {
			http.Error(w, "unexpected request "+r.Method+" "+r.URL.String(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestQueryPromQL(t *testing.T) {
	const query = `q{a="b c"}`
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		status int
		body   string
		value  float64
		ok     bool
		errHas string // "" = no error
	}{
		{"scalar", 200, `{"status":"success","data":{"resultType":"scalar","result":[1712345678.123,"0.25"]}}`, 0.25, true, ""},
		{"vector of one", 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"x"},"value":[1712345678,"42"]}]}}`, 42, true, ""},
		{"NaN", 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}`, math.NaN(), true, ""},
		{"+Inf", 200, `{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}`, math.Inf(1), true, ""},
		{"empty vector", 200, `{"status":"success","data":{"resultType":"vector","result":[]}}`, 0, false, ""},
		{"two samples", 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}`, 0, false, "the query returned 2 samples, want 1"},
		{"matrix", 200, `{"status":"success","data":{"resultType":"matrix","result":[]}}`, 0, false, `result type "matrix", want scalar or vector`},
		{"malformed JSON", 200, `{"status":"success","data":{"resultType":"vector","result":[`, 0, false, "decode answer"},
		{"not a number", 200, `{"status":"success","data":{"resultType":"scalar","result":[1,"abc"]}}`, 0, false, `value "abc" is not a number`},
		{"number not string", 200, `{"status":"success","data":{"resultType":"scalar","result":[1,5]}}`, 0, false, "value 5 is not a string"},
		{"short pair", 200, `{"status":"success","data":{"resultType":"scalar","result":[1]}}`, 0, false, "want [time, value], got 1 elements"},
		{"histogram sample", 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}`, 0, false, "no value"},
		{"api error in 200", 200, `{"status":"error","errorType":"execution","error":"too many samples"}`, 0, false, `status "error": execution: too many samples`},
		{"bad query 400", 400, `{"status":"error","errorType":"bad_data","error":"parse error at char 3"}`, 0, false, "status 400: bad_data: parse error at char 3"},
		{"plain 503", 503, `overloaded`, 0, false, `status 503 Service Unavailable: "overloaded"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := promServer(t, tt.status, tt.body)
			v, ok, err := QueryPromQL(ctx, srv.Client(), srv.URL+"/prefix/", query)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) || !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), `"q{a=\"b c\"}"`) {
					t.Fatalf("err = %v, want it to contain %q, the URL and the query", err, tt.errHas)
				}
				if ok {
					t.Error("ok with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("QueryPromQL: %v", err)
			}
			if ok != tt.ok || !(v == tt.value || math.IsNaN(v) && math.IsNaN(tt.value)) {
				t.Errorf("got %v, %v; want %v, %v", v, ok, tt.value, tt.ok)
			}
		})
	}

	t.Run("huge", func(t *testing.T) {
		srv := promServer(t, 200, `{"status":"success","data":{"resultType":"vector","result":[`+strings.Repeat(`{"metric":{},"value":[1,"1"]},`, MaxQueryBytes/20)+`]}}`)
		if _, _, err := QueryPromQL(ctx, nil, srv.URL+"/prefix", query); !errors.Is(err, analysis.ErrTooLarge) {
			t.Errorf("err = %v, want analysis.ErrTooLarge", err)
		}
	})
	t.Run("bad base URL", func(t *testing.T) {
		if _, _, err := QueryPromQL(ctx, nil, "prom:9090", query); err == nil || !strings.Contains(err.Error(), "not an http:// or https:// URL") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
		defer srv.Close()
		tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, _, err := QueryPromQL(tctx, nil, srv.URL, query); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want a deadline error", err)
		}
	})
}
