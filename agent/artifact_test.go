package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestRedirectPolicy(t *testing.T) {
	req := func(raw string) *http.Request {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Request{URL: u}
	}
	chain := func(raws ...string) []*http.Request {
		var rs []*http.Request
		for _, r := range raws {
			rs = append(rs, req(r))
		}
		return rs
	}
	allowed := redirectPolicy{"cdn.example.com", "blobs.example.net:8443", "*.s3.example.org"}
	tests := []struct {
		from, to string
		ok       bool
	}{
		{"https://a.example.com/x", "https://a.example.com/y", true},
		{"https://a.example.com/x", "https://A.EXAMPLE.COM:443/y", true},
		{"http://a.example.com/x", "http://a.example.com:80/y", true},
		{"http://a.example.com/x", "https://a.example.com/y", false}, // another port (443): another host
		{"https://a.example.com/x", "http://a.example.com/y", false}, // downgrade
		{"https://a.example.com/x", "https://a.example.com:8443/y", false},
		{"https://a.example.com/x", "https://b.example.com/y", false},
		{"https://a.example.com/x", "http://169.254.169.254/latest/meta-data", false},
		{"https://a.example.com/x", "https://cdn.example.com/y", true},
		{"https://a.example.com/x", "https://cdn.example.com:444/y", false},
		{"https://a.example.com/x", "https://blobs.example.net:8443/y", true},
		{"https://a.example.com/x", "https://blobs.example.net/y", false},
		{"https://a.example.com/x", "https://bucket.s3.example.org/y", true},
		{"https://a.example.com/x", "https://s3.example.org/y", false},
		{"https://a.example.com/x", "https://evil-s3.example.org/y", false},
		{"https://a.example.com/x", "http://cdn.example.com/y", false}, // downgrade, even to an allowed host
	}
	for _, tt := range tests {
		err := allowed.check(req(tt.to), chain(tt.from))
		if (err == nil) != tt.ok {
			t.Errorf("%s -> %s: %v, want allowed=%v", tt.from, tt.to, err, tt.ok)
		}
	}
	// Without the list only the same host is followed.
	if err := redirectPolicy(nil).check(req("https://cdn.example.com/y"), chain("https://a.example.com/x")); err == nil ||
		!strings.Contains(err.Error(), "to another host, cdn.example.com (list it in --artifact-redirect-hosts") {
		t.Errorf("no list: %v", err)
	}
	// At most maxArtifactRedirects redirects.
	var via []string
	for i := 0; i <= maxArtifactRedirects; i++ {
		via = append(via, fmt.Sprintf("https://a.example.com/%d", i))
	}
	if err := allowed.check(req("https://a.example.com/y"), chain(via[:maxArtifactRedirects]...)); err != nil {
		t.Errorf("%d redirects: %v", maxArtifactRedirects, err)
	}
	if err := allowed.check(req("https://a.example.com/y"), chain(via...)); err == nil || !strings.Contains(err.Error(), "more than 5 redirects") {
		t.Errorf("%d redirects: %v", maxArtifactRedirects+1, err)
	}
	for _, bad := range []string{"", "http://x", "x/y", "*.", "a.*.b", "*.x:80", "u@x", " x"} {
		if err := checkRedirectHost(bad); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
	for _, good := range []string{"x", "x.example.com", "x:8443", "*.example.com", "10.0.0.1", "[::1]:9000"} {
		if err := checkRedirectHost(good); err != nil {
			t.Errorf("entry %q: %v", good, err)
		}
	}
}

// serve runs handler on a port from internal/testkit/ports until the test
// ends and returns its host:port.
func serve(t *testing.T, handler http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(ports.Port(t)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return lis.Addr().String()
}

// An artifact URL that redirects to another host (here an "internal page")
// is not followed unless that host is listed, and nothing of what answered
// there reaches a report. Before, the agent followed the redirect, fetched
// the page and reported its sha256 and length ("got sha256 ... (N bytes)").
func TestArtifactRedirectToAnotherHost(t *testing.T) {
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	page := []byte("internal page: secret=hunter2\n")
	// A page of the artifact's size: its digest is what a mismatch would
	// have reported.
	sized := []byte(strings.Repeat("internal page ", len(art))[:len(art)])
	var internalHits atomic.Int32
	internal := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		switch r.URL.Path {
		case "/artifact":
			w.Write(art)
		case "/sized":
			w.Write(sized)
		default:
			w.Write(page)
		}
	}))
	public := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-internal":
			http.Redirect(w, r, "http://"+internal+"/admin?token=abc", http.StatusFound)
		case "/to-internal-sized":
			http.Redirect(w, r, "http://"+internal+"/sized", http.StatusFound)
		case "/to-internal-artifact":
			http.Redirect(w, r, "http://"+internal+"/artifact", http.StatusFound)
		case "/same-host":
			http.Redirect(w, r, "/artifact", http.StatusMovedPermanently)
		case "/artifact":
			w.Write(art)
		}
	}))
	start := func(t *testing.T, redirectHosts ...string) *fakeCoordinator {
		fc := newFakeCoordinator(t)
		cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
			DataDir: t.TempDir(), ArtifactRedirectHosts: redirectHosts}
		ctx, cancel := context.WithCancel(context.Background())
		done := runAgent(t, ctx, cfg, testOptions())
		t.Cleanup(func() { cancel(); waitDone(t, done) })
		return fc
	}
	t.Run("not followed", func(t *testing.T) {
		fc := start(t)
		fc.assign(testAssignment("1.0.0", 1, sha(art), int64(len(art)), "http://"+public+"/to-internal"))
		var reason string
		fc.waitFor(t, "the fetch refused", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			r := lastReport(rs, testSvc)
			reason = r.GetReason()
			return reportIs(r, 1, v1.Phase_PHASE_FAILED, "")
		})
		want := "redirect not followed: to another host, " + internal + " (list it in --artifact-redirect-hosts"
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q, want %q", reason, want)
		}
		// The page's length is a number: look for it as a whole number,
		// not inside the ports the reason names.
		size := regexp.MustCompile(`(^|[^0-9])` + strconv.Itoa(len(page)) + `([^0-9]|$)`)
		if size.MatchString(reason) {
			t.Errorf("reason %q tells the size %d of what the redirect pointed at", reason, len(page))
		}
		for _, leak := range []string{sha(page), "token=abc", "hunter2"} {
			if strings.Contains(reason, leak) {
				t.Errorf("reason %q tells %q of what the redirect pointed at", reason, leak)
			}
		}
		if n := internalHits.Load(); n != 0 {
			t.Errorf("the internal host got %d requests", n)
		}
	})
	t.Run("same host followed", func(t *testing.T) {
		fc := start(t)
		fc.assign(testAssignment("1.0.0", 1, sha(art), int64(len(art)), "http://"+public+"/same-host"))
		fc.waitFor(t, "healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
		})
	})
	t.Run("listed host followed", func(t *testing.T) {
		internalHits.Store(0)
		fc := start(t, internal)
		fc.assign(testAssignment("1.0.0", 1, sha(art), int64(len(art)), "http://"+public+"/to-internal-artifact"))
		fc.waitFor(t, "healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
		})
		if internalHits.Load() == 0 {
			t.Error("the listed host was not asked")
		}
	})
	t.Run("listed host answering something else", func(t *testing.T) {
		// Followed, and the mismatch names only what was assigned.
		fc := start(t, internal)
		fc.assign(testAssignment("1.0.0", 1, sha(art), int64(len(art)), "http://"+public+"/to-internal-sized"))
		var reason string
		fc.waitFor(t, "the artifact refused", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			r := lastReport(rs, testSvc)
			reason = r.GetReason()
			return reportIs(r, 1, v1.Phase_PHASE_FAILED, "")
		})
		if !strings.Contains(reason, "not the assigned sha256 "+sha(art)) {
			t.Errorf("reason %q", reason)
		}
		if strings.Contains(reason, sha(sized)) {
			t.Errorf("reason %q tells the digest of the page", reason)
		}
	})
}
