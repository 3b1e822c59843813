package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

func httpCheck(url string, expect int32) *v1.Check {
	return &v1.Check{Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: url, ExpectStatus: expect}}}
}

func tcpCheck(addr string) *v1.Check {
	return &v1.Check{Kind: &v1.Check_Tcp{Tcp: &v1.TcpCheck{Address: addr}}}
}

func execCheck(cmd ...string) *v1.Check {
	return &v1.Check{Kind: &v1.Check_Exec{Exec: &v1.ExecCheck{Command: cmd}}}
}

func mustNew(t *testing.T, c *v1.Check, dir string) Prober {
	t.Helper()
	p, err := New(c, dir, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func TestIntervalTimeoutDefaults(t *testing.T) {
	c := tcpCheck("127.0.0.1:1")
	if Interval(c) != time.Second || Timeout(c) != 2*time.Second {
		t.Fatalf("defaults = %v, %v; want 1s, 2s", Interval(c), Timeout(c))
	}
	if Interval(nil) != time.Second || Timeout(nil) != 2*time.Second {
		t.Fatalf("nil check defaults = %v, %v", Interval(nil), Timeout(nil))
	}
	c.Interval = durationpb.New(5 * time.Second)
	c.Timeout = durationpb.New(300 * time.Millisecond)
	if Interval(c) != 5*time.Second || Timeout(c) != 300*time.Millisecond {
		t.Fatalf("set = %v, %v; want 5s, 300ms", Interval(c), Timeout(c))
	}
	c.Interval = durationpb.New(0)
	if Interval(c) != time.Second {
		t.Fatalf("zero interval = %v, want default", Interval(c))
	}
	// Under the coordinators' floors (a spec stored before they existed):
	// run at the floors, not in a loop.
	c.Interval, c.Timeout = durationpb.New(time.Nanosecond), durationpb.New(time.Nanosecond)
	if Interval(c) != spec.MinCheckInterval || Timeout(c) != spec.MinCheckTimeout {
		t.Fatalf("1ns = %v, %v; want the floors %v, %v", Interval(c), Timeout(c), spec.MinCheckInterval, spec.MinCheckTimeout)
	}
}

func TestNewErrorsNameField(t *testing.T) {
	withTimeout := tcpCheck("127.0.0.1:80")
	withTimeout.Timeout = durationpb.New(-time.Second)
	withInterval := tcpCheck("127.0.0.1:80")
	withInterval.Interval = durationpb.New(0)
	for _, tc := range []struct {
		name  string
		check *v1.Check
		want  string
	}{
		{"nil", nil, "check: missing"},
		{"no kind", &v1.Check{Name: "x"}, "kind: one of http, tcp, exec"},
		{"bad url", httpCheck("http://[::1", 0), `http.url: invalid URL "http://[::1"`},
		{"no scheme", httpCheck("localhost:8080/healthz", 0), `http.url: invalid URL "localhost:8080/healthz"`},
		{"ftp", httpCheck("ftp://host/x", 0), `http.url: invalid URL "ftp://host/x"`},
		{"no host", httpCheck("http:///healthz", 0), `http.url: invalid URL "http:///healthz"`},
		{"status", httpCheck("http://127.0.0.1/", 42), "http.expect_status: invalid status 42"},
		{"tcp no port", tcpCheck("localhost"), `tcp.address: invalid address "localhost"`},
		{"tcp no host", tcpCheck(":8080"), `tcp.address: invalid address ":8080"`},
		{"exec empty", execCheck(), "exec.command: empty command"},
		{"exec empty name", execCheck("", "x"), "exec.command: empty command"},
		{"timeout", withTimeout, "timeout: invalid duration -1s"},
		{"interval", withInterval, "interval: invalid duration 0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.check, t.TempDir(), nil)
			if err == nil {
				t.Fatalf("New = %v, want error", p)
			}
			if !errors.Is(err, ErrInvalidCheck) {
				t.Fatalf("error %v does not wrap ErrInvalidCheck", err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error = %q, want prefix %q", err, tc.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	dir := t.TempDir()
	if n := mustNew(t, httpCheck("http://127.0.0.1/", 0), dir).Name(); n != "http" {
		t.Fatalf("http default name = %q", n)
	}
	if n := mustNew(t, tcpCheck("127.0.0.1:1"), dir).Name(); n != "tcp" {
		t.Fatalf("tcp default name = %q", n)
	}
	if n := mustNew(t, execCheck("true"), dir).Name(); n != "exec" {
		t.Fatalf("exec default name = %q", n)
	}
	c := tcpCheck("127.0.0.1:1")
	c.Name = "port-open"
	p := mustNew(t, c, dir)
	if p.Name() != "port-open" {
		t.Fatalf("name = %q, want port-open", p.Name())
	}
	if r := p.Probe(context.Background()); r.Name != "port-open" {
		t.Fatalf("result name = %q, want port-open", r.Name)
	}
}

func TestHTTP(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unhealthy", http.StatusInternalServerError)
	})
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, tc := range []struct {
		path    string
		expect  int32
		timeout time.Duration
		ok      bool
		detail  []string
	}{
		{"/ok", 0, 0, true, []string{"status 200"}},
		{"/ok", 200, 0, true, []string{"status 200"}},
		{"/created", 0, 0, true, []string{"status 201"}},
		{"/created", 200, 0, false, []string{"status 201 (want 200)"}},
		{"/fail", 0, 0, false, []string{"GET " + srv.URL + "/fail: status 500 (want 2xx)", `"unhealthy"`}},
		{"/fail", 500, 0, true, []string{"status 500"}},
		{"/missing", 0, 0, false, []string{"status 404"}},
		{"/slow", 0, 100 * time.Millisecond, false, []string{"timeout after 100ms"}},
	} {
		c := httpCheck(srv.URL+tc.path, tc.expect)
		if tc.timeout != 0 {
			c.Timeout = durationpb.New(tc.timeout)
		}
		r := mustNew(t, c, "").Probe(context.Background())
		if r.OK != tc.ok {
			t.Errorf("%s expect %d: OK = %v, want %v (%s)", tc.path, tc.expect, r.OK, tc.ok, r.Detail)
		}
		for _, want := range tc.detail {
			if !strings.Contains(r.Detail, want) {
				t.Errorf("%s: detail %q lacks %q", tc.path, r.Detail, want)
			}
		}
	}

	url := srv.URL + "/ok"
	srv.Close()
	r := mustNew(t, httpCheck(url, 0), "").Probe(context.Background())
	if r.OK || !strings.Contains(r.Detail, "GET "+url) {
		t.Fatalf("closed server: %+v, want failure naming the URL", r)
	}
}

func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
			accepted <- struct{}{}
		}
	}()
	addr := ln.Addr().String()
	r := mustNew(t, tcpCheck(addr), "").Probe(context.Background())
	if !r.OK {
		t.Fatalf("open port: %+v", r)
	}
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("listener never saw the probe's connection")
	}
	_ = ln.Close()
	r = mustNew(t, tcpCheck(addr), "").Probe(context.Background())
	if r.OK || !strings.Contains(r.Detail, "dial "+addr) {
		t.Fatalf("closed port: %+v, want failure naming the address", r)
	}
}

func TestExec(t *testing.T) {
	dir := t.TempDir()
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "check.sh"), []byte("#!/bin/sh\necho checking\necho \"home=$HOME\" >&2\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		cmd    []string
		ok     bool
		detail []string
	}{
		{"pass", []string{"/bin/sh", "-c", "echo first; echo 'all good'"}, true, []string{"exit 0: all good"}},
		{"exit 3", []string{"/bin/sh", "-c", "echo first; echo 'disk full' >&2; exit 3"}, false, []string{"exit status 3", "disk full"}},
		{"exit 1 no output", []string{"/bin/sh", "-c", "exit 1"}, false, []string{"exit status 1"}},
		{"runs in dir", []string{"/bin/sh", "-c", "pwd"}, true, []string{realDir}},
		{"relative to dir", []string{"./check.sh"}, true, []string{"home=" + dir}},
		{"path lookup", []string{"sh", "-c", "echo via path"}, true, []string{"via path"}},
		{"no shell", []string{"/bin/echo", "a;", "exit", "1"}, true, []string{"a; exit 1"}},
		{"missing binary", []string{"./nope"}, false, []string{`exec "./nope"`}},
	} {
		r := mustNew(t, execCheck(tc.cmd...), dir).Probe(context.Background())
		if r.OK != tc.ok {
			t.Errorf("%s: OK = %v, want %v (%s)", tc.name, r.OK, tc.ok, r.Detail)
		}
		for _, want := range tc.detail {
			if !strings.Contains(r.Detail, want) {
				t.Errorf("%s: detail %q lacks %q", tc.name, r.Detail, want)
			}
		}
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	// Both sleeps outlast any test: the probe returns only because the
	// timeout killed the group (the background sleep holds the output
	// pipe until it dies).
	c := execCheck("/bin/sh", "-c", "sleep 600 & echo bg=$!; sleep 600")
	c.Timeout = durationpb.New(200 * time.Millisecond)
	p := mustNew(t, c, dir)
	done := make(chan Result, 1)
	go func() { done <- p.Probe(context.Background()) }()
	var r Result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("probe did not return: the 200ms timeout did not end the check and its group")
	}
	if r.OK {
		t.Fatalf("sleeping check passed: %+v", r)
	}
	if !strings.Contains(r.Detail, "timeout after 200ms") {
		t.Fatalf("detail = %q, want the timeout", r.Detail)
	}
	// The last output line names the background sleep, which must have
	// been killed with the group.
	i := strings.LastIndex(r.Detail, "bg=")
	if i < 0 {
		t.Fatalf("detail = %q, want the last output line", r.Detail)
	}
	bg := r.Detail[i+3:]
	testkit.Eventually(t, 20*time.Second, "background process "+bg+" killed with the group", func() bool {
		data, err := os.ReadFile("/proc/" + bg + "/stat")
		// Gone, or a zombie nobody reaped: either way dead.
		return err != nil || strings.Contains(string(data), ") Z ")
	})
}

func TestExecParentContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := mustNew(t, execCheck("/bin/sh", "-c", "sleep 30"), t.TempDir()).Probe(ctx)
	if r.OK {
		t.Fatalf("probe with cancelled context passed: %+v", r)
	}
}

func TestTailBufferAndLastLine(t *testing.T) {
	b := &tailBuffer{max: 8}
	for _, s := range []string{"abc", "defg", "hij"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := string(b.Bytes()); got != "cdefghij" {
		t.Fatalf("tail = %q, want cdefghij", got)
	}
	_, _ = b.Write([]byte("0123456789"))
	if got := string(b.Bytes()); got != "23456789" {
		t.Fatalf("tail = %q, want 23456789", got)
	}
	for in, want := range map[string]string{
		"":                       "",
		"one\ntwo\n\n":           "two",
		"  only  ":               "only",
		"a\r\nb\r\n":             "b",
		strings.Repeat("x", 300): "..." + strings.Repeat("x", 200),
	} {
		if got := lastLine([]byte(in)); got != want {
			t.Errorf("lastLine(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHTTPRedirectStaysOnItsOrigin: the service answers its health check
// with a redirect to another address (an internal page, a metadata
// service the agent's user may reach and the service's may not). Before,
// the agent followed it (10 times, to any host) and put the start of that
// page's body in the check's detail, which the host reports. Now a
// redirect is followed only on the check's own scheme, host and port;
// elsewhere the probe fails naming the host it was sent to, and nothing
// of that page.
func TestHTTPRedirectStaysOnItsOrigin(t *testing.T) {
	inner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "INTERNAL-SECRET", http.StatusForbidden)
	}))
	defer inner.Close()
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			http.Redirect(w, r, "/healthz", http.StatusFound) // its own: followed
		case "/healthz":
			w.WriteHeader(http.StatusOK)
		default:
			http.Redirect(w, r, inner.URL+"/latest/meta-data", http.StatusFound)
		}
	}))
	defer svc.Close()
	p, err := New(httpCheck(svc.URL+"/health", 0), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Probe(context.Background()); !r.OK {
		t.Fatalf("a redirect on the check's own origin: %+v", r)
	}
	p, err = New(httpCheck(svc.URL+"/elsewhere", 0), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	r := p.Probe(context.Background())
	if r.OK || strings.Contains(r.Detail, "INTERNAL-SECRET") || !strings.Contains(r.Detail, strings.TrimPrefix(inner.URL, "http://")) {
		t.Fatalf("a redirect to another host: %+v; want a failure naming %s and nothing of its page", r, inner.URL)
	}
}

// TestHTTPResponseHeadersBounded: a service answering its check with 1 MiB
// of headers fails the check (MaxResponseHeaderBytes), instead of making
// the agent read and hold up to net/http's 10 MiB for every probe.
func TestHTTPResponseHeadersBounded(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("X-Big", big)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer svc.Close()
	for path, ok := range map[string]bool{"/small": true, "/big": false} {
		p, err := New(httpCheck(svc.URL+path, 0), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r := p.Probe(context.Background()); r.OK != ok {
			t.Errorf("%s: %+v, want ok %v", path, r, ok)
		}
	}
}
