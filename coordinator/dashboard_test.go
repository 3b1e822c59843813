package coordinator

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/coordinator/dashboard"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

func TestDashboardConfigValidateNamesFields(t *testing.T) {
	err := (&Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d", HTTPListen: "nope",
		HTTPLimits: dashboard.Limits{MaxSessions: -1, MaxBodyBytes: 5}}).Validate()
	for _, want := range []string{`http-listen: "nope"`, "http-max-sessions: -1 is negative", "http-max-body-bytes: 5: want at least 1024"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v does not say %s", err, want)
		}
	}
	// Live pages share a session's gRPC connection: they must fit in its
	// calls in flight (4 pages take 14 of the default 16).
	ok := Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d", HTTPListen: "127.0.0.1:7080"}
	if err := ok.Validate(); err != nil {
		t.Errorf("the default limits: %v", err)
	}
	tooMany := ok
	tooMany.HTTPLimits.MaxStreamsPerIdentity = 5
	err = tooMany.Validate()
	if want := "http-max-streams-per-identity: 5 live pages take up to 17 calls at once on a session's gRPC connection, more than max-calls-per-conn-without-cert 16 (at most 4 pages)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Validate: %v, want %q", err, want)
	}
	tooMany.Limits.MaxCallsPerConnWithoutCert = 17
	if err := tooMany.Validate(); err != nil {
		t.Errorf("5 pages with 17 calls per connection: %v", err)
	}
}

// The dashboard is served by the coordinator (here insecure: plain HTTP,
// the login takes no token), and an address that is taken fails the start
// unless it is only the default.
func TestDashboardServedAndTakenAddress(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	base := Config{Insecure: true, Listen: "127.0.0.1:0", EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second}

	cfg := base
	cfg.DataDir, cfg.HTTPListen = t.TempDir(), ports.Addr(t)
	urlc := make(chan string, 1)
	cfg.HTTPReady = func(u string) { urlc <- u }
	runTestCoordinator(t, cfg)
	url := <-urlc
	if url != "http://"+cfg.HTTPListen+"/" {
		t.Fatalf("dashboard at %s, want http://%s/", url, cfg.HTTPListen)
	}
	resp, err := http.Get(url + "login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "no token is needed") || resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("login page: %d %v\n%s", resp.StatusCode, resp.Header, body)
	}

	held, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := base
	taken.DataDir, taken.HTTPListen = t.TempDir(), held.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = Run(ctx, taken, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "http-listen "+held.Addr().String()) {
		t.Fatalf("Run with a taken --http-listen: %v, want an error naming it", err)
	}
	// The default address taken: the coordinator runs without a dashboard.
	taken.DataDir, taken.HTTPListenOptional = t.TempDir(), true
	runTestCoordinator(t, taken)
}

// The dashboard's HTTP server errors (anyone can fail a TLS handshake)
// reach the log a few a second at most.
func TestDashboardErrorLogLimited(t *testing.T) {
	var buf strings.Builder
	now := time.Unix(1000, 0)
	l := limitedLog{log: zerolog.New(&buf), b: &bucket{rate: 5, burst: 20}, now: func() time.Time { return now }}
	write := func(n int) {
		for range n {
			if _, err := l.Write([]byte("http: TLS handshake error from 127.0.0.1:1: EOF\n")); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(1000)
	if n := strings.Count(buf.String(), "\n"); n != 20 {
		t.Errorf("%d of 1000 lines logged at once, want the burst of 20", n)
	}
	now = now.Add(time.Second)
	write(1000)
	if n := strings.Count(buf.String(), "\n"); n != 25 {
		t.Errorf("%d lines logged after a second more, want 25 (5 a second)", n)
	}
}
