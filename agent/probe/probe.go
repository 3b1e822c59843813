// Package probe runs one health check of a service: an HTTP GET, a TCP dial
// or a command (no shell). New turns a v1.Check into a Prober; Probe runs it
// once, bounded by the check's timeout, and says why it failed.
//
// It owns no scheduling (the caller probes every Interval) and must not
// import etcd, the coordinator or any other agent package.
package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/procenv"
	"github.com/fleetwave/fleetwave/internal/spec"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Defaults for a check's interval and timeout.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = 2 * time.Second
)

const (
	// outputTail is how much of an exec check's output is kept.
	outputTail = 4096
	// bodyPeek is how much of a failing HTTP answer goes into the detail.
	bodyPeek = 128
	// waitDelay bounds how long an exec check waits for its output pipe
	// after the process exited or was killed (a grandchild may hold it).
	waitDelay = time.Second
)

// ErrInvalidCheck is wrapped by every error New returns.
var ErrInvalidCheck = errors.New("invalid check")

// Result is the outcome of one probe.
type Result struct {
	Name   string
	OK     bool
	Detail string // says why it failed ("GET http://..: status 500")
}

// Prober runs one check. Probe is safe for concurrent use and returns within
// the check's timeout (plus a short grace for exec checks' output).
type Prober interface {
	Name() string
	Probe(ctx context.Context) Result
}

// Interval is how often c should be probed (default 1s), never more often
// than every spec.MinCheckInterval, and Timeout bounds one probe of c
// (default 2s), never under spec.MinCheckTimeout. Coordinators refuse specs
// under those floors; one stored before they existed (a check every 1ns:
// an exec check forked in a loop) is run at the floor, not refused: an
// agent upgrade must not fail the services its host runs.
func Interval(c *v1.Check) time.Duration {
	return max(durationOr(c.GetInterval().AsDuration(), c.GetInterval() != nil, DefaultInterval), spec.MinCheckInterval)
}

// Timeout bounds one probe of c (default 2s), never under
// spec.MinCheckTimeout (see Interval).
func Timeout(c *v1.Check) time.Duration {
	return max(durationOr(c.GetTimeout().AsDuration(), c.GetTimeout() != nil, DefaultTimeout), spec.MinCheckTimeout)
}

func durationOr(d time.Duration, set bool, def time.Duration) time.Duration {
	if !set || d <= 0 {
		return def
	}
	return d
}

// New builds a prober from a check whose strings are already expanded
// (${host.*} resolved). dir is the working dir for exec checks; a command
// starting with "./" names a file in dir; cred, when set, is the user and
// groups exec checks run as (the service's run.user; nil: as the agent).
// Defaults: interval 1s, timeout 2s, name = kind if empty.
//
// Errors name the field relative to the check, e.g.
// `http.url: invalid URL "..."`; a caller validating a list prefixes the
// index: fmt.Errorf("checks[%d].%w", i, err) gives `checks[0].http.url: ...`.
func New(c *v1.Check, dir string, cred *syscall.Credential) (Prober, error) {
	if c == nil {
		return nil, fmt.Errorf("check: missing: %w", ErrInvalidCheck)
	}
	for _, f := range []struct {
		name string
		d    interface {
			IsValid() bool
			AsDuration() time.Duration
		}
		set bool
	}{
		{"interval", c.GetInterval(), c.GetInterval() != nil},
		{"timeout", c.GetTimeout(), c.GetTimeout() != nil},
	} {
		if f.set && (!f.d.IsValid() || f.d.AsDuration() <= 0) {
			return nil, fmt.Errorf("%s: invalid duration %v (want > 0): %w", f.name, f.d.AsDuration(), ErrInvalidCheck)
		}
	}
	timeout := Timeout(c)
	switch k := c.GetKind().(type) {
	case *v1.Check_Http:
		return newHTTP(c.GetName(), k.Http, timeout)
	case *v1.Check_Tcp:
		return newTCP(c.GetName(), k.Tcp, timeout)
	case *v1.Check_Exec:
		return newExec(c.GetName(), k.Exec, dir, timeout, cred)
	default:
		return nil, fmt.Errorf("kind: one of http, tcp, exec is required: %w", ErrInvalidCheck)
	}
}

func nameOr(name, kind string) string {
	if name == "" {
		return kind
	}
	return name
}

// --- http ---

type httpProber struct {
	name    string
	url     string
	expect  int
	timeout time.Duration
	client  *http.Client
}

func newHTTP(name string, h *v1.HttpCheck, timeout time.Duration) (Prober, error) {
	raw := h.GetUrl()
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("http.url: invalid URL %q (want http:// or https:// with a host): %w", raw, ErrInvalidCheck)
	}
	expect := int(h.GetExpectStatus())
	if expect != 0 && (expect < 100 || expect > 599) {
		return nil, fmt.Errorf("http.expect_status: invalid status %d (want 100..599, or 0 for any 2xx): %w", expect, ErrInvalidCheck)
	}
	return &httpProber{
		name:    nameOr(name, "http"),
		url:     u.String(),
		expect:  expect,
		timeout: timeout,
		client: &http.Client{
			// A fresh connection per probe: a health check must see a
			// server that stopped accepting, and leaves no idle conns.
			Transport: &http.Transport{
				Proxy:                  nil,
				DisableKeepAlives:      true,
				DialContext:            (&net.Dialer{}).DialContext,
				MaxResponseHeaderBytes: MaxResponseHeaderBytes,
			},
			CheckRedirect: SameOriginRedirects,
		},
	}, nil
}

// MaxResponseHeaderBytes bounds the response headers of the agent's
// requests to a service (checks, scrapes): net/http's default, 10 MiB,
// was what a service could make the agent hold for every probe.
const MaxResponseHeaderBytes = 64 << 10

// maxRedirects bounds the redirects SameOriginRedirects follows.
const maxRedirects = 5

// SameOriginRedirects is the redirect policy of the agent's requests to a
// service (health checks, metrics scrapes): what answers is the service,
// which may send the agent, whose user may reach what the service's may
// not, to an internal page whose start would then be in a check's detail
// or a scrape's error. A redirect is followed only on the first request's
// scheme, host and port, at most 5 times; otherwise the request fails
// naming the host it was sent to.
func SameOriginRedirects(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return fmt.Errorf("more than %d redirects", maxRedirects)
	}
	from, to := via[0].URL, req.URL
	if from.Scheme != to.Scheme || originHost(from) != originHost(to) {
		return fmt.Errorf("redirect to %s://%s not followed: only redirects on %s://%s are", to.Scheme, to.Host, from.Scheme, from.Host)
	}
	return nil
}

func (p *httpProber) Name() string { return p.name }

func (p *httpProber) Probe(ctx context.Context) Result {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	fail := func(format string, args ...any) Result {
		return Result{Name: p.name, Detail: "GET " + p.url + ": " + fmt.Sprintf(format, args...)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return fail("%v", err)
	}
	req.Header.Set("User-Agent", "fleetwave-agent-probe")
	resp, err := p.client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fail("timeout after %v", p.timeout)
		}
		return fail("%v", err)
	}
	defer resp.Body.Close()
	peek, _ := io.ReadAll(io.LimitReader(resp.Body, bodyPeek))
	ok := resp.StatusCode >= 200 && resp.StatusCode <= 299
	want := "2xx"
	if p.expect != 0 {
		ok = resp.StatusCode == p.expect
		want = fmt.Sprint(p.expect)
	}
	if !ok {
		return fail("status %d (want %s) %q", resp.StatusCode, want, strings.TrimSpace(string(peek)))
	}
	return Result{Name: p.name, OK: true, Detail: fmt.Sprintf("GET %s: status %d", p.url, resp.StatusCode)}
}

// originHost is u's host and port, the scheme's default port when it has
// none.
func originHost(u *url.URL) string {
	if u.Port() != "" {
		return strings.ToLower(u.Host)
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return strings.ToLower(net.JoinHostPort(u.Hostname(), port))
}

// --- tcp ---

type tcpProber struct {
	name    string
	addr    string
	timeout time.Duration
}

func newTCP(name string, t *v1.TcpCheck, timeout time.Duration) (Prober, error) {
	addr := t.GetAddress()
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return nil, fmt.Errorf("tcp.address: invalid address %q (want host:port): %w", addr, ErrInvalidCheck)
	}
	return &tcpProber{name: nameOr(name, "tcp"), addr: addr, timeout: timeout}, nil
}

func (p *tcpProber) Name() string { return p.name }

func (p *tcpProber) Probe(ctx context.Context) Result {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return Result{Name: p.name, Detail: fmt.Sprintf("dial %s: timeout after %v", p.addr, p.timeout)}
		}
		return Result{Name: p.name, Detail: fmt.Sprintf("dial %s: %v", p.addr, err)}
	}
	_ = conn.Close()
	return Result{Name: p.name, OK: true, Detail: "dial " + p.addr + ": connected"}
}

// --- exec ---

type execProber struct {
	name    string
	command []string
	dir     string
	timeout time.Duration
	cred    *syscall.Credential
	env     []string // KEY=VALUE after procenv.Env's PATH and HOME: the service's run.env
	start   Starter  // nil: cmd.Start
}

// Starter starts an exec check's command in place of cmd.Start, giving up
// when ctx (the check's, with its timeout) ends; end is called once the
// command has been waited for.
type Starter func(ctx context.Context, cmd *exec.Cmd) (end func(), err error)

// WithStarter makes an exec prober start its command with start (the
// agent's: in a cgroup of its own, so that nothing the check leaves behind
// outlives it); other probers are returned as they are.
func WithStarter(p Prober, start Starter) Prober {
	if e, ok := p.(*execProber); ok && start != nil {
		c := *e
		c.start = start
		return &c
	}
	return p
}

// WithEnv gives an exec prober the service's environment (run.env,
// KEY=VALUE), after procenv.Env's PATH and HOME as for the service and its
// hooks: a PATH in it also finds the check's program. Other probers are
// returned as they are.
func WithEnv(p Prober, env []string) Prober {
	if e, ok := p.(*execProber); ok && len(env) > 0 {
		c := *e
		c.env = append([]string(nil), env...)
		return &c
	}
	return p
}

func newExec(name string, e *v1.ExecCheck, dir string, timeout time.Duration, cred *syscall.Credential) (Prober, error) {
	cmd := e.GetCommand()
	if len(cmd) == 0 || cmd[0] == "" {
		return nil, fmt.Errorf("exec.command: empty command %q: %w", cmd, ErrInvalidCheck)
	}
	return &execProber{
		name:    nameOr(name, "exec"),
		command: append([]string(nil), cmd...),
		dir:     dir,
		timeout: timeout,
		cred:    cred,
	}, nil
}

func (p *execProber) Name() string { return p.name }

func (p *execProber) Probe(ctx context.Context) Result {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	env := procenv.Env(p.dir, p.env)
	name, lookErr := procenv.Program(p.command[0], p.dir, env)
	if lookErr != nil {
		return Result{Name: p.name, Detail: fmt.Sprintf("exec %q: %v", p.command[0], lookErr)}
	}
	cmd := exec.CommandContext(ctx, name, p.command[1:]...)
	cmd.Dir = p.dir
	cmd.Env = env
	out := &tailBuffer{max: outputTail}
	cmd.Stdout = out
	cmd.Stderr = out
	// Own process group, so a timeout kills whatever the check spawned.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: p.cred}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	var err error
	if p.start == nil {
		err = cmd.Run()
	} else {
		var end func()
		if end, err = p.start(ctx, cmd); err == nil {
			err = cmd.Wait()
			end()
		}
	}
	last := lastLine(out.Bytes())
	desc := fmt.Sprintf("exec %q", p.command[0])
	var detail string
	switch {
	case err == nil:
		detail = desc + ": exit 0"
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		detail = fmt.Sprintf("%s: timeout after %v", desc, p.timeout)
	default:
		detail = fmt.Sprintf("%s: %v", desc, err)
	}
	if last != "" {
		detail += ": " + last
	}
	return Result{Name: p.name, OK: err == nil, Detail: detail}
}

// lastLine is the last non-empty line of b, at most 200 bytes.
func lastLine(b []byte) string {
	b = bytes.TrimRight(b, " \t\r\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	s := strings.TrimSpace(strings.ToValidUTF8(string(b), "?"))
	if len(s) > 200 {
		s = s[len(s)-200:]
		s = "..." + strings.ToValidUTF8(s, "")
	}
	return s
}

// tailBuffer keeps the last max bytes written to it. It is not locked:
// os/exec calls Write from at most one goroutine at a time when Stdout and
// Stderr are the same comparable writer, and Bytes is read after Run.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) Bytes() []byte { return t.buf }
