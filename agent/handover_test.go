package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/demo/demoapp"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// handoverAppEnv makes the test binary run as a socket-activated service
// (see TestMain and handoverAppMain).
const handoverAppEnv = "FLEETWAVE_AGENT_TEST_HANDOVER"

// handoverTimeout is a failure deadline, not an expected time.
const handoverTimeout = 2 * time.Minute

// The service's behaviour files, beside demoapp's (VERSION, FAIL_HEALTH,
// CRASH).
const (
	// fileReadyAfter holds a path: the service waits for it to exist before
	// it serves and sends READY=1.
	fileReadyAfter = "READY_AFTER"
	// fileNoReady: the service serves but never sends READY=1.
	fileNoReady = "NO_READY"
)

// handoverAppMain is the service of the handover tests: demoapp serving
// the socket passed by socket activation (fd 3; it refuses to run without
// one), READY=1 once it serves (unless NO_READY), graceful stop on SIGTERM.
// It logs JSON lines to stdout (the service log), each with its pid and
// version; "sigterm" with the time it got SIGTERM. With the argument
// pre-stop it is the pre_stop command instead: it prints where and when it
// ran.
func handoverAppMain() int {
	version, _ := os.ReadFile(demoapp.FileVersion)
	log := zerolog.New(os.Stdout).With().Timestamp().Int("pid", os.Getpid()).
		Str("version", strings.TrimSpace(string(version))).Logger()
	if len(os.Args) > 1 && os.Args[1] == "pre-stop" {
		wd, _ := os.Getwd()
		log.Info().Int64("at", time.Now().UnixNano()).Str("dir", wd).Msg("pre_stop")
		return 0
	}
	// SIGTERM is logged before the shutdown begins.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		log.Info().Int64("at", time.Now().UnixNano()).Msg("sigterm")
		stop()
	}()
	files := activation.Files(true)
	if len(files) == 0 {
		log.Error().Msg("no socket passed")
		return 2
	}
	ln, err := net.FileListener(files[0])
	_ = files[0].Close()
	if err != nil {
		log.Error().Err(err).Msg("fd 3")
		return 2
	}
	if _, err := os.Stat(fileNoReady); err == nil {
		_ = os.Unsetenv("NOTIFY_SOCKET")
	}
	if flag, err := os.ReadFile(fileReadyAfter); err == nil {
		path := strings.TrimSpace(string(flag))
		log.Info().Str("path", path).Msg("waiting")
		for {
			if _, err := os.Stat(path); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return 0
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	if err := demoapp.Serve(ctx, ln, ".", log); err != nil {
		log.Error().Err(err).Msg("serve")
		return 1
	}
	return 0
}

// handoverAssignment runs the handover service on the host's port label:
// one socket, ready: notify, a pre_stop and a shutdown_delay, an HTTP check.
func handoverAssignment(t *testing.T, version string, gen int64, art []byte) *v1.Assignment {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &v1.Assignment{
		Service:    testSvc,
		Generation: gen,
		Release: &v1.Release{Service: testSvc, Version: version, Artifact: &v1.Artifact{
			Sha256: sha(art), Size: int64(len(art)),
		}},
		Spec: &v1.ServiceSpec{
			Name: testSvc,
			Run: &v1.RunSpec{
				Command:       []string{self},
				Env:           map[string]string{handoverAppEnv: "1", "GORACE": "atexit_sleep_ms=0"},
				StopGrace:     durationpb.New(10 * time.Second),
				Sockets:       []*v1.Socket{{Name: "http", Listen: "127.0.0.1:${host.label.port}"}},
				Ready:         "notify",
				ReadyTimeout:  durationpb.New(time.Minute),
				ShutdownDelay: durationpb.New(300 * time.Millisecond),
				PreStop:       &v1.PreStop{Command: []string{self, "pre-stop"}, Timeout: durationpb.New(time.Minute)},
			},
			Checks: []*v1.Check{{
				Name:     "http",
				Kind:     &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:${host.label.port}/healthz"}},
				Interval: durationpb.New(100 * time.Millisecond),
			}},
			MinHealthyTime:  durationpb.New(500 * time.Millisecond),
			HealthyDeadline: durationpb.New(2 * time.Minute),
		},
	}
}

// handoverRelease adds an artifact of the handover service (VERSION and
// the given behaviour files) and returns its assignment.
func handoverRelease(t *testing.T, fc *fakeCoordinator, version string, gen int64, files map[string]string) *v1.Assignment {
	t.Helper()
	all := map[string]string{demoapp.FileVersion: version}
	for k, v := range files {
		all[k] = v
	}
	art := tarGz(t, all)
	fc.addArtifact(art)
	return handoverAssignment(t, version, gen, art)
}

// clients send requests to addr in a loop, each on a new connection, and
// count the answers by version and every failure: a refused or reset
// connection, or anything but 200.
type clients struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	byVersion map[string]int
	errs      []error
}

func startClients(t *testing.T, addr string, n int) *clients {
	c := &clients{addr: addr, stop: make(chan struct{}), byVersion: map[string]int{}}
	for range n {
		c.wg.Go(c.loop)
	}
	t.Cleanup(func() { c.finish() })
	return c
}

func (c *clients) loop() {
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		v, err := c.request()
		c.mu.Lock()
		if err != nil {
			c.errs = append(c.errs, err)
		} else {
			c.byVersion[v]++
		}
		c.mu.Unlock()
	}
}

func (c *clients) request() (string, error) {
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		return "", fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: test\r\n\r\n"); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	resp := string(b)
	if !strings.HasPrefix(resp, "HTTP/1.0 200 OK\r\n") {
		return "", fmt.Errorf("response %q", resp)
	}
	_, body, _ := strings.Cut(resp, "\r\n\r\n")
	return strings.TrimPrefix(strings.TrimSpace(body), "hello from "), nil
}

func (c *clients) served(version string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byVersion[version]
}

// finish stops the clients and returns what they got.
func (c *clients) finish() (map[string]int, []error) {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps(c.byVersion), slices.Clone(c.errs)
}

func maps(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// noFailures stops the clients and fails the test if any request failed.
func (c *clients) noFailures(t *testing.T) map[string]int {
	t.Helper()
	byVersion, errs := c.finish()
	for i, err := range errs {
		if i < 10 {
			t.Errorf("client: %v", err)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d failed requests (served: %v)", len(errs), byVersion)
	}
	t.Logf("served without a failure: %v", byVersion)
	return byVersion
}

// waitServed waits until the clients got n more answers from version.
func (c *clients) waitServed(t *testing.T, version string, n int) {
	t.Helper()
	from := c.served(version)
	testkit.Eventually(t, handoverTimeout, fmt.Sprintf("%d answers from %s", n, version), func() bool {
		return c.served(version) >= from+n
	})
}

// logLine is one JSON line of the service log.
type logLine struct {
	Message string `json:"message"`
	Version string `json:"version"`
	PID     int    `json:"pid"`
	At      int64  `json:"at"`
	Dir     string `json:"dir"`
	Path    string `json:"path"`
}

// serviceLog returns the JSON lines of the test service's log, in order.
func serviceLog(t *testing.T, dataDir string) []logLine {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Message != "" {
			out = append(out, l)
		}
	}
	return out
}

// find returns the index of the first line with message msg of version
// (and pid, unless 0), -1 if none.
func find(lines []logLine, msg, version string, pid int) int {
	return slices.IndexFunc(lines, func(l logLine) bool {
		return l.Message == msg && l.Version == version && (pid == 0 || l.PID == pid)
	})
}

// waitLog waits for a line with message msg of version and returns it.
func waitLog(t *testing.T, dataDir, msg, version string) logLine {
	t.Helper()
	var l logLine
	testkit.Eventually(t, handoverTimeout, fmt.Sprintf("%q of %s in the service log", msg, version), func() bool {
		lines := serviceLog(t, dataDir)
		i := find(lines, msg, version, 0)
		if i >= 0 {
			l = lines[i]
		}
		return i >= 0
	})
	return l
}

// holdsSocket reports whether process pid has a descriptor of the socket
// with inode.
func holdsSocket(t *testing.T, pid int, inode uint64) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && link == fmt.Sprintf("socket:[%d]", inode) {
			return true
		}
	}
	return false
}

// handoverSetup runs an agent with v1 of the handover service HEALTHY and
// clients sending requests to it.
func handoverSetup(t *testing.T) (fc *fakeCoordinator, cfg Config, cancel func(), done <-chan error, cl *clients, pid1 int) {
	t.Helper()
	fc = newFakeCoordinator(t)
	port := strconv.Itoa(ports.Port(t))
	cfg = Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": port}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	done = runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(cancel) // before runAgent's cleanup waits for the agent to end
	fc.assign(handoverRelease(t, fc, "v1", 1, nil))
	fc.waitFor(t, "v1 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "v1")
	})
	pid1 = readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid"))
	cl = startClients(t, "127.0.0.1:"+port, 4)
	cl.waitServed(t, "v1", 20)
	return fc, cfg, cancel, done, cl, pid1
}

// TestHandoverZeroDowntime: a release change v1 -> v2 of a socket-activated
// ready: notify service under continuous load: v2 starts beside v1 on the
// same socket; v1 gets SIGTERM only after v2 said READY=1, after v1's
// pre_stop ran (from v1's release, its output in the service log) and the
// shutdown_delay passed; no request fails; v2 then serves alone and owns
// the main PID file.
func TestHandoverZeroDowntime(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)
	flag := filepath.Join(t.TempDir(), "v2-may-be-ready")
	fc.assign(handoverRelease(t, fc, "v2", 2, map[string]string{fileReadyAfter: flag}))

	// v2 runs beside v1 but is not ready: v1 serves on, untouched.
	waiting := waitLog(t, cfg.DataDir, "waiting", "v2")
	// The supervisor writes the PID file once the process started, which
	// can be after the process wrote its first line.
	testkit.EventuallyErr(t, handoverTimeout, "the handover PID file names v2's process", func() error {
		if rec, err := supervise.ReadPIDFile(filepath.Join(cfg.DataDir, "run", testSvc+".next.pid")); err != nil || rec.PGID != waiting.PID {
			return fmt.Errorf("handover pid file: %+v, %v; want v2's pid %d", rec, err, waiting.PID)
		}
		return nil
	})
	cl.waitServed(t, "v1", 20)
	lines := serviceLog(t, cfg.DataDir)
	if i := find(lines, "sigterm", "v1", pid1); i >= 0 || !alive(pid1) {
		t.Fatalf("v1 stopped before v2 was ready (sigterm at line %d, alive %v)", i, alive(pid1))
	}
	if i := find(lines, "pre_stop", "v1", 0); i >= 0 {
		t.Fatal("v1's pre_stop ran before v2 was ready")
	}

	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fc.waitFor(t, "v2 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "v2")
	})
	waitGone(t, pid1)
	cl.waitServed(t, "v2", 20)
	served := cl.noFailures(t)
	if served["v1"] == 0 || served["v2"] == 0 {
		t.Fatalf("served %v: want answers from both", served)
	}

	lines = serviceLog(t, cfg.DataDir)
	listening := find(lines, "listening", "v2", waiting.PID) // logged just before READY=1
	preStop := find(lines, "pre_stop", "v1", 0)              // v1's drain
	sigterm := find(lines, "sigterm", "v1", pid1)            // v1's stop
	if listening < 0 || preStop < 0 || sigterm < 0 || !(listening < preStop && preStop < sigterm) {
		t.Fatalf("service log order: v2 ready at line %d, v1 pre_stop at %d, v1 SIGTERM at %d; want them in that order", listening, preStop, sigterm)
	}
	if want := filepath.Join(cfg.DataDir, "releases", testSvc, "v1"); lines[preStop].Dir != want {
		t.Errorf("pre_stop ran in %s, want v1's release %s", lines[preStop].Dir, want)
	}
	if d := time.Duration(lines[sigterm].At - lines[preStop].At); d < 300*time.Millisecond {
		t.Errorf("SIGTERM %v after pre_stop, want at least the shutdown_delay of 300ms", d)
	}
	if got := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid")); got != waiting.PID {
		t.Errorf("main pid file names %d, want v2's %d", got, waiting.PID)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "run", testSvc+".next.pid")); !os.IsNotExist(err) {
		t.Errorf("handover pid file left behind: %v", err)
	}
	cancel()
	waitDone(t, done)
}

// TestHandoverNotReadyKeepsTheOldOne: a v2 that never sends READY=1 is
// stopped at its ready_timeout (not drained: no pre_stop), v1 serves on
// (the same process, not restarted), no request fails, and the host
// reports the failed start and reverts; a v3 that exits before it is
// ready fails the same way, at once.
func TestHandoverNotReadyKeepsTheOldOne(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)

	a2 := handoverRelease(t, fc, "v2", 2, map[string]string{fileNoReady: ""})
	// Long enough for v2 (this race-built test binary, started through
	// the cgroup gate and the LISTEN_PID shell) to serve before it is
	// stopped, on a loaded machine too: the test waits for its "listening".
	a2.Spec.Run.ReadyTimeout = durationpb.New(5 * time.Second)
	fc.assign(a2)
	fc.waitFor(t, "v2 reverted", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "v1") && strings.Contains(r.GetReason(), "start v2: not ready within 5s")
	})
	v2 := waitLog(t, cfg.DataDir, "listening", "v2") // it served beside v1, never ready
	waitGone(t, v2.PID)
	if !alive(pid1) || readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid")) != pid1 {
		t.Fatal("v1 was not kept running")
	}
	if lines := serviceLog(t, cfg.DataDir); find(lines, "pre_stop", "v2", 0) >= 0 || find(lines, "sigterm", "v1", 0) >= 0 {
		t.Fatal("v2 was drained, or v1 stopped")
	}
	cl.waitServed(t, "v1", 20)

	fc.assign(handoverRelease(t, fc, "v3", 3, map[string]string{demoapp.FileCrash: ""}))
	fc.waitFor(t, "v3 reverted", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 3, v1.Phase_PHASE_REVERTED, "v1") && strings.Contains(r.GetReason(), "start v3: exited before it was ready")
	})
	if !alive(pid1) {
		t.Fatal("v1 was not kept running")
	}
	cl.waitServed(t, "v1", 20)
	cl.noFailures(t)
	cancel()
	waitDone(t, done)
}

// TestHandoverRevertsAFailingRelease: a v2 that fails its checks is
// reverted the same way: v1 starts beside it on the same socket, and v2 is
// stopped (drained) once v1 is ready; no request fails.
func TestHandoverRevertsAFailingRelease(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)
	a2 := handoverRelease(t, fc, "v2", 2, map[string]string{demoapp.FileFailHealth: ""})
	a2.Spec.HealthyDeadline = durationpb.New(2 * time.Second)
	fc.assign(a2)
	fc.waitFor(t, "v2 reverted", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "v1") && strings.Contains(r.GetReason(), "not healthy within 2s")
	})
	waitGone(t, pid1) // stopped when v2 took over
	v1again := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid"))
	cl.waitServed(t, "v1", 20)
	cl.noFailures(t)

	lines := serviceLog(t, cfg.DataDir)
	v2 := find(lines, "listening", "v2", 0)
	ready := find(lines, "listening", "v1", v1again)
	preStop := find(lines, "pre_stop", "v2", 0)
	sigterm := find(lines, "sigterm", "v2", 0)
	if v2 < 0 || ready < 0 || preStop < 0 || sigterm < 0 || !(v2 < ready && ready < preStop && preStop < sigterm) || lines[v2].PID != lines[sigterm].PID {
		t.Fatalf("service log order: v2 at line %d, v1 ready again at %d, v2's pre_stop at %d, v2's SIGTERM at %d; want that order", v2, ready, preStop, sigterm)
	}
	waitGone(t, lines[v2].PID)
	cancel()
	waitDone(t, done)
}

// TestHandoverAfterAgentRestart: the agent stops and starts again while v1
// serves under load: v1 keeps its pid (adopted), the agent gets its socket
// back from v1 (the inode recorded in the state file), and a deploy of v2
// right after still hands over on that very socket without a failed
// request.
func TestHandoverAfterAgentRestart(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)
	cancel()
	waitDone(t, done)
	if !alive(pid1) {
		t.Fatal("v1 died with the agent")
	}
	st, err := state.Open(filepath.Join(cfg.DataDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.LoadWith(testSvc)
	if err != nil || len(sv.Runtime.Sockets) != 1 || sv.Runtime.Sockets[0].Name != "http" {
		t.Fatalf("state file records %+v, %v; want the socket http", sv, err)
	}
	inode := sv.Runtime.Sockets[0].Inode
	if !holdsSocket(t, pid1, inode) {
		t.Fatalf("v1 does not hold the recorded socket (inode %d)", inode)
	}

	nr := reportCount(fc)
	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "v1 adopted healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nr:], testSvc), 1, v1.Phase_PHASE_HEALTHY, "v1")
	})
	if got := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid")); got != pid1 || !alive(pid1) {
		t.Fatalf("v1 restarted across the agent restart: pid %d, was %d", got, pid1)
	}
	cl.waitServed(t, "v1", 20)

	fc.assign(handoverRelease(t, fc, "v2", 2, nil))
	fc.waitFor(t, "v2 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "v2")
	})
	waitGone(t, pid1)
	pid2 := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid"))
	if !holdsSocket(t, pid2, inode) {
		t.Errorf("v2 does not hold the recovered socket (inode %d)", inode)
	}
	cl.waitServed(t, "v2", 20)
	cl.noFailures(t)
	if lines := serviceLog(t, cfg.DataDir); find(lines, "pre_stop", "v1", 0) < 0 {
		t.Error("v1's pre_stop did not run after the agent restart")
	}
	cancel2()
	waitDone(t, done2)
}

// TestHandoverAgentStoppedMidHandover: the agent stops while v2 runs
// beside v1, not yet ready. Both keep running, each with its PID file. The
// next agent finds both, gets the socket back from them, adopts v2 (the
// target, taken as ready), stops v1 drained, as the handover would have,
// and checks v2; v2 then owns the main PID file. No request fails.
func TestHandoverAgentStoppedMidHandover(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)
	flag := filepath.Join(t.TempDir(), "v2-may-be-ready")
	fc.assign(handoverRelease(t, fc, "v2", 2, map[string]string{fileReadyAfter: flag}))
	v2 := waitLog(t, cfg.DataDir, "waiting", "v2")
	cancel()
	waitDone(t, done)
	main, next := filepath.Join(cfg.DataDir, "run", testSvc+".pid"), filepath.Join(cfg.DataDir, "run", testSvc+".next.pid")
	if readPID(t, main) != pid1 || readPID(t, next) != v2.PID || !alive(pid1) || !alive(v2.PID) {
		t.Fatalf("after the agent stopped: pid files name %d and %d, want v1 %d and v2 %d, both running",
			readPID(t, main), readPID(t, next), pid1, v2.PID)
	}
	// v2 becomes ready while no agent runs.
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitLog(t, cfg.DataDir, "listening", "v2")

	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "v2 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "v2")
	})
	waitGone(t, pid1)
	if got := readPID(t, main); got != v2.PID || !alive(v2.PID) {
		t.Fatalf("main pid file names %d, want v2's %d (adopted, not restarted)", got, v2.PID)
	}
	if _, err := os.Stat(next); !os.IsNotExist(err) {
		t.Errorf("handover pid file left behind: %v", err)
	}
	if lines := serviceLog(t, cfg.DataDir); find(lines, "pre_stop", "v1", 0) < 0 || find(lines, "sigterm", "v1", pid1) < find(lines, "pre_stop", "v1", 0) {
		t.Error("v1 was not stopped drained")
	}
	cl.waitServed(t, "v2", 20)
	cl.noFailures(t)
	cancel2()
	waitDone(t, done2)
}

// TestNotifyPath: notify sockets live in data_dir/notify (mode 0700); when
// that path would not fit a Unix socket address, in a directory of the
// agent's under the temporary directory with a shorter name; when neither
// fits, the error names the path.
func TestNotifyPath(t *testing.T) {
	short := t.TempDir()
	a := &agent{cfg: Config{DataDir: short}}
	p, err := a.notifyPath(testSvc, 7, false)
	if err != nil || p != filepath.Join(short, "notify", testSvc+"-7") {
		t.Fatalf("notifyPath = %q, %v", p, err)
	}
	if fi, err := os.Stat(filepath.Dir(p)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("notify dir: %v, %v; want mode 0700", fi, err)
	}
	n, err := a.listenNotify(&service{name: testSvc}, 7, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = n.Close()

	long := filepath.Join(short, strings.Repeat("d", 100))
	a = &agent{cfg: Config{DataDir: long}}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	tmpBase(t)
	p, err = a.notifyPath(strings.Repeat("s", 63), 18446744073709551615, false)
	if err != nil || !strings.HasPrefix(p, tmp+"/fleetwave-notify-") || len(p) > 107 {
		t.Fatalf("notifyPath with a long data dir = %q (%d bytes), %v; want a path under %s", p, len(p), err, tmp)
	}
	if fi, err := os.Stat(filepath.Dir(p)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("fallback dir: %v, %v; want mode 0700", fi, err)
	}

	t.Setenv("TMPDIR", filepath.Join(tmp, strings.Repeat("t", 100)))
	if _, err := a.notifyPath(testSvc, 1, false); err == nil || !strings.Contains(err.Error(), filepath.Join(long, "notify", testSvc+"-1")) ||
		!strings.Contains(err.Error(), "107 bytes") {
		t.Fatalf("notifyPath with nowhere short enough: %v; want the path named", err)
	}
}

// TestSocketSetReusesByAddress: a service's socket is bound once and
// reused by address, under the name a later release gives it (the same
// socket); sockets no process uses any more are closed.
func TestSocketSetReusesByAddress(t *testing.T) {
	ss := &socketSet{}
	t.Cleanup(ss.closeAll)
	addr := ports.Addr(t)
	a, bound, err := ss.get([]sockets.Decl{{Name: "http", Listen: addr}})
	if err != nil || !bound || len(a) != 1 {
		t.Fatalf("get = %v, %v, %v", a, bound, err)
	}
	b, bound, err := ss.get([]sockets.Decl{{Name: "http", Listen: addr}})
	if err != nil || bound || b[0] != a[0] {
		t.Fatalf("second get = %v, bound %v, %v; want the same socket", b, bound, err)
	}
	c, bound, err := ss.get([]sockets.Decl{{Name: "web", Listen: addr}})
	if err != nil || bound || c[0].Name != "web" || c[0].Inode != a[0].Inode {
		t.Fatalf("renamed get = %+v, bound %v, %v; want the same socket named web", c[0], bound, err)
	}
	if ids := ss.identities(); len(ids) != 1 || ids[0] != (sockets.Identity{Name: "web", Listen: addr, Inode: a[0].Inode}) {
		t.Fatalf("identities %+v", ids)
	}
	ss.keepOnly(map[string]bool{addr: true})
	if len(ss.identities()) != 1 {
		t.Fatal("keepOnly closed a socket in use")
	}
	ss.keepOnly(nil)
	if len(ss.identities()) != 0 {
		t.Fatal("keepOnly kept a socket no process uses")
	}
	// Closed: the address is free again.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("address still taken after keepOnly: %v", err)
	}
	_ = l.Close()
}

// TestSocketsReleasedForAReleaseWithout: v1 binds its own address (no
// sockets); v2 declares a socket on it, so v1 stops first and the agent
// binds it; v2 fails to start; the revert's v1 must bind the address
// again, so the agent has let go of it.
func TestSocketsReleasedForAReleaseWithout(t *testing.T) {
	fc := newFakeCoordinator(t)
	port := strconv.Itoa(ports.Port(t))
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": port}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(cancel)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a1 := handoverRelease(t, fc, "v1", 1, nil)
	run := a1.Spec.Run
	run.Command = []string{self, "--listen", "127.0.0.1:${host.label.port}"}
	run.Env = map[string]string{demoAppEnv: "1", "GORACE": "atexit_sleep_ms=0"}
	run.Sockets, run.Ready, run.ReadyTimeout = nil, "", nil
	run.PreStop = nil // the demo app has no pre-stop mode (and a failing before_stop would keep v1)
	fc.assign(a1)
	fc.waitFor(t, "v1 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "v1")
	})
	a2 := handoverRelease(t, fc, "v2", 2, nil)
	a2.Spec.Run.Command = []string{"./missing"}
	fc.assign(a2)
	fc.waitFor(t, "v2 reverted, v1 bound its address again", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		return reportIs(r, 2, v1.Phase_PHASE_REVERTED, "v1") && strings.Contains(r.GetReason(), "start v2")
	})
	st, err := state.Open(filepath.Join(cfg.DataDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if sv, err := st.LoadWith(testSvc); err != nil || len(sv.Runtime.Sockets) != 0 {
		t.Fatalf("state records %+v, %v; want no socket held", sv, err)
	}
	cancel()
	waitDone(t, done)
}

// TestRemoveStaleNotifyInFallbackDir: an agent whose data dir is too long
// for notify sockets keeps them under the temporary directory; the stale
// ones an earlier agent left there (killed with -9) are removed at start
// like those in the data dir, the ones of processes still running are
// kept, and a fallback directory the agent's user does not own (anyone
// may create one under /tmp) is left alone. Before, sockets in the
// fallback directory were never removed.
func TestRemoveStaleNotifyInFallbackDir(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	t.Setenv("TMPDIR", t.TempDir())
	tmpBase(t)
	a := &agent{cfg: Config{DataDir: long}}
	bind := func(path string) {
		t.Helper()
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		_ = l.Close() // a datagram socket's file stays, as a killed agent leaves it
	}
	stale, err := a.notifyPath(testSvc, 1, false)
	if err != nil || !strings.HasPrefix(stale, os.TempDir()) {
		t.Fatalf("notifyPath = %q, %v; want the fallback under %s", stale, err, os.TempDir())
	}
	running, _ := a.notifyPath(testSvc, 2, false)
	staleUser, err := a.notifyPath(testSvc, 3, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stale, running, staleUser} {
		bind(p)
	}
	other := filepath.Join(filepath.Dir(stale), "notes")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	a.removeStaleNotify(map[string]bool{running: true})
	for p, want := range map[string]bool{stale: false, staleUser: false, running: true, other: true} {
		if _, err := os.Lstat(p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", p, err == nil, want)
		}
	}

	if os.Geteuid() != 0 {
		return
	}
	bind(stale)
	if err := os.Chown(filepath.Dir(stale), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	a.removeStaleNotify(nil)
	if _, err := os.Lstat(stale); err != nil {
		t.Errorf("a socket in a fallback directory of another user removed: %v", err)
	}
}

// tmpBase puts notify sockets' fallback directories under the temporary
// directory (TMPDIR) for the test, not /run.
func tmpBase(t *testing.T) {
	orig := notifyFallbackBase
	notifyFallbackBase = os.TempDir
	t.Cleanup(func() { notifyFallbackBase = orig })
}

// TestNotifyFallbackUnderRunAsRoot: as root, the fallback directory of
// notify sockets is under /run, where no other user may make it first;
// otherwise under the temporary directory. (Before: always under the
// temporary directory, where any local user could make
// fleetwave-notify-<hash> first, and every service with ready: notify on
// a host whose data dir has a long path failed to start: an attack
// review.)
func TestNotifyFallbackUnderRunAsRoot(t *testing.T) {
	fi, err := os.Stat("/run")
	want := os.TempDir()
	if os.Geteuid() == 0 && err == nil && fi.IsDir() {
		want = "/run"
	}
	if got := notifyFallbackBase(); got != want {
		t.Fatalf("fallback base %q, want %q", got, want)
	}
	if os.Geteuid() == 0 && want != "/run" {
		t.Log("no /run here: the temporary directory")
	}
}

// TestHandoverKilledMidHandoverLeavesNoNotifySocket: an agent killed (-9)
// while v2 runs beside v1 leaves both processes' notify sockets in
// notify/. The next agent adopts v2 and stops v1: v1's notify socket goes
// with v1 (before, it stayed until the agent after that one started: found
// by the torture test, TestAgentKilledAtRandomConverges).
func TestHandoverKilledMidHandoverLeavesNoNotifySocket(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)
	flag := filepath.Join(t.TempDir(), "v2-may-be-ready")
	fc.assign(handoverRelease(t, fc, "v2", 2, map[string]string{fileReadyAfter: flag}))
	v2 := waitLog(t, cfg.DataDir, "waiting", "v2")
	notifyDir := filepath.Join(cfg.DataDir, "notify")
	ents, err := os.ReadDir(notifyDir)
	if err != nil || len(ents) != 2 {
		t.Fatalf("notify sockets during the handover: %v %v, want v1's and v2's", ents, err)
	}
	cancel()
	waitDone(t, done)
	// A kill -9 leaves the socket files (a stop removes them): put them back
	// as the kill leaves them, bound and with nothing listening.
	for _, e := range ents {
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(notifyDir, e.Name()), Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitLog(t, cfg.DataDir, "listening", "v2")

	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "v2 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "v2")
	})
	waitGone(t, pid1)
	if got := readPID(t, filepath.Join(cfg.DataDir, "run", testSvc+".pid")); got != v2.PID {
		t.Fatalf("main pid file names %d, want v2's %d", got, v2.PID)
	}
	// The stop's socket removal runs after v1 is gone: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		left, _ := os.ReadDir(notifyDir)
		if len(left) == 1 {
			break
		}
		if time.Now().After(deadline) {
			var names []string
			for _, e := range left {
				names = append(names, e.Name())
			}
			t.Fatalf("notify sockets once v1 is stopped: %v, want v2's alone", names)
		}
		time.Sleep(50 * time.Millisecond) // polling the directory
	}
	cl.noFailures(t)
	cancel2()
	waitDone(t, done2)
}

// TestHandoverOldGoneWhileNoAgentRuns: the agent stops while v2 runs
// beside v1, and v1 exits before the next agent starts (the stopped agent
// had signalled it: a kill -9 between v1's SIGTERM and the move of v2's
// record). The next agent adopts v2 from the handover's PID file, which
// must then move to the main one, as the handover's end would have moved
// it: a later handover writes its new process to the handover's file, and
// an agent killed then would find v2 recorded nowhere (found by
// TestAgentKilledAtRandomConverges, seed 4, FLEETWAVE_TORTURE_MAX_DELAY_MS=1200).
func TestHandoverOldGoneWhileNoAgentRuns(t *testing.T) {
	fc, cfg, cancel, done, cl, pid1 := handoverSetup(t)
	flag := filepath.Join(t.TempDir(), "v2-may-be-ready")
	fc.assign(handoverRelease(t, fc, "v2", 2, map[string]string{fileReadyAfter: flag}))
	v2 := waitLog(t, cfg.DataDir, "waiting", "v2")
	cancel()
	waitDone(t, done)
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitLog(t, cfg.DataDir, "listening", "v2")
	if err := syscall.Kill(-pid1, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid1)

	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "v2 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "v2")
	})
	main, next := filepath.Join(cfg.DataDir, "run", testSvc+".pid"), filepath.Join(cfg.DataDir, "run", testSvc+".next.pid")
	if _, err := os.Stat(next); !os.IsNotExist(err) {
		t.Errorf("handover pid file left behind once v2 serves alone: %v", err)
	}
	if _, err := os.Stat(main); err != nil || readPID(t, main) != v2.PID {
		t.Fatalf("main pid file (%v) does not name v2 (%d), adopted", err, v2.PID)
	}
	// The next handover ends with v3 alone, in the main PID file.
	fc.assign(handoverRelease(t, fc, "v3", 3, nil))
	fc.waitFor(t, "v3 healthy", handoverTimeout, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 3, v1.Phase_PHASE_HEALTHY, "v3")
	})
	waitGone(t, v2.PID)
	if _, err := os.Stat(next); !os.IsNotExist(err) {
		t.Errorf("handover pid file left behind after v3: %v", err)
	}
	cl.waitServed(t, "v3", 20)
	cl.noFailures(t)
	cancel2()
	waitDone(t, done2)
}
