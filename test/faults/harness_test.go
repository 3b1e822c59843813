package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/gossip"
	"github.com/fleetwave/fleetwave/internal/testkit/testcluster"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

const (
	service   = "web"
	leaseTTL  = "2s"
	nHosts    = 5
	nCoords   = 3
	gossipTag = "fleetwave-faults"
	// linkEnv set to "proxy" makes the cut scenario use TCP proxies even
	// when network namespaces are available (to test the fallback).
	linkEnv = "FLEETWAVE_FAULTS_LINK"
	// logsEnv set to 1 prints every process's log tail also when a
	// scenario passes.
	logsEnv = "FLEETWAVE_FAULTS_LOGS"
)

// setupSpec rolls v1 out to every host in one wave, fast: the scenarios
// start from a fleet that runs v1.
const setupSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "${host.label.listen}"]
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://${host.label.listen}/healthz"}
    interval: 200ms
    timeout: 1s
min_healthy_time: %s
healthy_deadline: 20s
rollout:
  no_canary: true
  waves: [100]
  max_parallel: 10
  bake: 0s
  progress_deadline: 2m
`

// faultSpec is the policy the faulted rollout (v1 → v2) runs with: with 5
// hosts, a canary (host-1), then host-2 and host-3, then host-4 and host-5.
// It differs from setupSpec only in its rollout policy, which the
// coordinator alone reads: applying it rolls nothing out (a change of what
// hosts run, min_healthy_time included, would start a config rollout).
const faultSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "${host.label.listen}"]
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://${host.label.listen}/healthz"}
    interval: 200ms
    timeout: 1s
min_healthy_time: %s
healthy_deadline: 20s
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: %s
  progress_deadline: 2m
`

// options shape one scenario's cluster.
type options struct {
	// bake and minHealthy are the v2 rollout's bake and min_healthy_time.
	bake, minHealthy string
	// isolate names a host whose agent reaches the coordinators only over a
	// link the test can cut ("" = none).
	isolate string
}

// coord is one coordinator process.
type coord struct {
	name       string
	addr       string // loopback address the test and most agents dial
	listen     string
	gossipAddr string
	proc       *testfleet.Proc
	down       bool // killed on purpose
	paused     bool // SIGSTOPped
}

func (c *coord) live() bool { return !c.down && !c.paused && c.proc.Running() }

// host is one agent process.
type host struct {
	id, zone string
	listen   string // the service's address (label "listen")
	dataDir  string
	proc     *testfleet.Proc
}

// harness is one scenario's cluster: etcd, coordinators, agents.
type harness struct {
	t     *testing.T
	ctx   context.Context
	dir   string
	began time.Time
	opts  options

	etcd    *testcluster.EtcdCluster
	coords  []*coord
	hosts   []*host
	keyFile string

	// The isolated host's link (nil when none): a NetNS or proxies.
	link     testcluster.Link
	linkKind string
	ns       *testcluster.NetNS

	connsMu sync.Mutex
	conns   map[string]*grpc.ClientConn

	released []string
	// unknownOK names hosts the final rollout record may leave flagged
	// unknown (see scenario 4).
	unknownOK map[string]bool
}

// multiLink cuts and restores several links together (one proxy per
// coordinator).
type multiLink []testcluster.Link

func (m multiLink) Cut() error {
	var errs []error
	for _, l := range m {
		errs = append(errs, l.Cut())
	}
	return errors.Join(errs...)
}

func (m multiLink) Restore() error {
	var errs []error
	for _, l := range m {
		errs = append(errs, l.Restore())
	}
	return errors.Join(errs...)
}

// newHarness starts 3 etcd members, 3 coordinators (c1 first, so it leads),
// 5 agents with gossip on, and rolls v1 out to every host; then it applies
// the fault spec for the scenario's v2 rollout.
func newHarness(t *testing.T, o options) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, dir: t.TempDir(), began: time.Now(), opts: o, conns: map[string]*grpc.ClientConn{}}
	for _, d := range []string{"logs", "coordinators", "agents", "artifacts"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// The namespace first: its teardown then runs after every process is
	// stopped (cleanups run last-in first-out).
	hostSide, coordListen := "127.0.0.1", "127.0.0.1"
	if o.isolate != "" && os.Getenv(linkEnv) != "proxy" {
		ns, err := testcluster.NewNetNS(t)
		switch {
		case err == nil:
			h.ns, h.link, h.linkKind = ns, ns, "netns "+ns.Name()
			// Processes outside the namespace bind gossip to the host side
			// of the veth (reachable from loopback processes and from the
			// namespace); coordinators serve gRPC on every interface.
			hostSide, coordListen = ns.HostAddr(), "0.0.0.0"
		case errors.Is(err, testcluster.ErrNoNetNS):
			t.Logf("no network namespace (%v): cutting %s with TCP proxies", err, o.isolate)
		default:
			t.Fatal(err)
		}
	}

	h.etcd = testcluster.StartEtcd(t, 3)
	t.Cleanup(h.cleanup)

	key, err := gossip.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	h.keyFile = filepath.Join(h.dir, "gossip.key")
	if err := os.WriteFile(h.keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for i := range nCoords {
		port, gport := ports.Port(t), ports.Port(t)
		h.coords = append(h.coords, &coord{
			name:       fmt.Sprintf("c%d", i+1),
			addr:       fmt.Sprintf("127.0.0.1:%d", port),
			listen:     fmt.Sprintf("%s:%d", coordListen, port),
			gossipAddr: fmt.Sprintf("%s:%d", hostSide, gport),
		})
	}
	// c1 first and alone, so it is the leader; then the others.
	h.startCoord(h.coords[0])
	h.waitFor(30*time.Second, "c1 leads", func() (bool, string) {
		cs, err := h.clusterStatus(h.coords[0])
		if err != nil {
			return false, err.Error()
		}
		return cs.GetLeader() == "c1", "leader " + cs.GetLeader()
	})
	for _, c := range h.coords[1:] {
		h.startCoord(c)
	}
	h.waitFor(30*time.Second, "3 coordinators registered", func() (bool, string) {
		cs, err := h.clusterStatus(h.coords[0])
		if err != nil {
			return false, err.Error()
		}
		return len(cs.GetCoordinators()) == nCoords, fmt.Sprintf("%d registered", len(cs.GetCoordinators()))
	})

	for i := range nHosts {
		h.startAgent(i, hostSide)
	}
	h.waitFor(30*time.Second, "every agent connected and alive in gossip", func() (bool, string) {
		hosts, err := h.listHosts(h.coords[0])
		if err != nil {
			return false, err.Error()
		}
		ok := 0
		var why []string
		for _, x := range hosts {
			if x.GetConnected() && x.GetGossip() == "alive" {
				ok++
			} else {
				why = append(why, fmt.Sprintf("%s connected=%v gossip=%q", x.GetId(), x.GetConnected(), x.GetGossip()))
			}
		}
		return ok == nHosts, fmt.Sprintf("%d of %d: %s", ok, nHosts, strings.Join(why, "; "))
	})
	h.logf("cluster up: etcd %v, coordinators %s, agents %d (link: %s)", h.etcd.Endpoints(), h.coordNames(), nHosts, orNone(h.linkKind))

	h.apply("setup", fmt.Sprintf(setupSpec, or(o.minHealthy, "1s")))
	id := h.release("v1")
	h.waitSucceeded(id, 60*time.Second)
	h.waitVersions("v1", 20*time.Second)
	if out := h.apply("fault", fmt.Sprintf(faultSpec, or(o.minHealthy, "1s"), or(o.bake, "2s"))); strings.Contains(out, "started") {
		t.Fatalf("the fault spec changes the rollout policy alone, yet it started a rollout: %s", out)
	}
	h.logf("fleet on v1 (rollout %s); fault spec applied (bake %s, min_healthy_time %s)", id, or(o.bake, "2s"), or(o.minHealthy, "1s"))
	return h
}

func (h *harness) startCoord(c *coord) {
	h.t.Helper()
	var join []string
	for _, o := range h.coords {
		join = append(join, o.gossipAddr)
	}
	args := []string{
		"--listen", c.listen, "--advertise", c.addr, "--name", c.name,
		"--data-dir", filepath.Join(h.dir, "coordinators", c.name),
		"--etcd-endpoints", strings.Join(h.etcd.Endpoints(), ","),
		"--lease-ttl", leaseTTL,
		"--gossip-listen", c.gossipAddr, "--gossip-join", strings.Join(join, ","),
		"--gossip-key-file", h.keyFile, "--gossip-label", gossipTag, "--insecure",
	}
	p, err := testfleet.Start("coordinator "+c.name, bins.Coordinator, filepath.Join(h.dir, "logs", "coordinator-"+c.name+".log"), args...)
	if err != nil {
		h.t.Fatal(err)
	}
	c.proc = p
	if err := testfleet.WaitServing(h.ctx, c.addr, 60*time.Second); err != nil {
		h.t.Fatalf("%v\n%s", err, p.Tail(4000))
	}
}

// startAgent starts host-(i+1). Its coordinator list starts at coordinator
// i mod 3, so streams spread: c1 serves host-1 and host-4, c2 host-2 and
// host-5, c3 host-3.
func (h *harness) startAgent(i int, hostSide string) {
	h.t.Helper()
	id := fmt.Sprintf("host-%d", i+1)
	x := &host{id: id, zone: []string{"a", "b"}[i%2], dataDir: filepath.Join(h.dir, "agents", id)}
	isolated := id == h.opts.isolate
	var coords []string
	var links multiLink
	for k := range nCoords {
		c := h.coords[(i+k)%nCoords]
		addr := c.addr
		switch {
		case isolated && h.ns != nil:
			_, port, _ := strings.Cut(c.addr, ":")
			addr = h.ns.HostAddr() + ":" + port
		case isolated:
			p := testcluster.NewProxy(h.t, c.addr)
			links = append(links, p)
			addr = p.Addr()
		}
		coords = append(coords, addr)
	}
	gossipBind := hostSide
	x.listen = fmt.Sprintf("127.0.0.1:%d", ports.Port(h.t))
	if isolated && h.ns != nil {
		gossipBind = h.ns.Addr()
		x.listen = fmt.Sprintf("%s:%d", h.ns.Addr(), ports.Port(h.t))
	}
	if isolated && h.ns == nil {
		h.link, h.linkKind = links, fmt.Sprintf("%d TCP proxies", len(links))
	}
	var join []string
	for _, c := range h.coords {
		join = append(join, c.gossipAddr)
	}
	args := []string{
		"--coordinator", strings.Join(coords, ","),
		"--host-id", id,
		"--labels", fmt.Sprintf("zone=%s,role=web,listen=%s", x.zone, x.listen),
		"--data-dir", x.dataDir,
		"--gossip-listen", fmt.Sprintf("%s:%d", gossipBind, ports.Port(h.t)),
		"--gossip-join", strings.Join(join, ","),
		"--gossip-key-file", h.keyFile, "--gossip-label", gossipTag, "--insecure",
	}
	logPath := filepath.Join(h.dir, "logs", "agent-"+id+".log")
	var p *testfleet.Proc
	var err error
	if isolated && h.ns != nil {
		// `ip netns exec` execs the agent: the process is the agent itself.
		p, err = testfleet.Start("agent "+id, "ip", logPath, append([]string{"netns", "exec", h.ns.Name(), bins.Agent}, args...)...)
	} else {
		p, err = testfleet.Start("agent "+id, bins.Agent, logPath, args...)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	x.proc = p
	h.hosts = append(h.hosts, x)
}

// cleanup stops the agents, then the services they leave running (agents
// never stop them), and the coordinators; on failure it prints every log's
// tail first.
func (h *harness) cleanup() {
	if h.t.Failed() || os.Getenv(logsEnv) == "1" {
		h.dumpLogs()
	}
	var wg sync.WaitGroup
	for _, x := range h.hosts {
		wg.Go(func() {
			if x.proc.Running() {
				x.proc.Stop(15 * time.Second)
			}
			testfleet.StopServices(bins.Agent, x.dataDir)
		})
	}
	wg.Wait()
	for _, c := range h.coords {
		if c.proc == nil {
			continue
		}
		wg.Go(func() {
			if c.proc.Running() {
				_ = c.proc.Signal(syscall.SIGCONT)
				c.proc.Stop(10 * time.Second)
			}
		})
	}
	wg.Wait()
	h.connsMu.Lock()
	for _, cc := range h.conns {
		cc.Close()
	}
	h.connsMu.Unlock()
}

func (h *harness) dumpLogs() {
	for _, c := range h.coords {
		if c.proc != nil {
			h.t.Logf("==== coordinator %s (%s) log tail ====\n%s", c.name, c.addr, c.proc.Tail(8000))
		}
	}
	for _, x := range h.hosts {
		h.t.Logf("==== agent %s log tail ====\n%s", x.id, x.proc.Tail(5000))
		b, _ := os.ReadFile(filepath.Join(x.dataDir, "logs", service+".log"))
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		h.t.Logf("==== %s service %s log tail ====\n%s", x.id, service, b)
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orNone(s string) string { return or(s, "none") }

// logf logs with the time since the scenario began.
func (h *harness) logf(format string, args ...any) {
	h.t.Helper()
	h.t.Logf("[t+%5.1fs] %s", time.Since(h.began).Seconds(), fmt.Sprintf(format, args...))
}

func (h *harness) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	h.t.Helper()
	if err := testfleet.WaitFor(h.ctx, timeout, what, cond); err != nil {
		h.t.Fatal(err)
	}
}

// pause waits d: the length of a fault, never a synchronisation.
func (h *harness) pause(d time.Duration) {
	select {
	case <-h.ctx.Done():
	case <-time.After(d):
	}
}

func (h *harness) coordNames() string {
	var s []string
	for _, c := range h.coords {
		s = append(s, c.name+"="+c.addr)
	}
	return strings.Join(s, " ")
}

func (h *harness) coord(name string) *coord {
	h.t.Helper()
	for _, c := range h.coords {
		if c.name == name {
			return c
		}
	}
	h.t.Fatalf("no coordinator %q", name)
	return nil
}

func (h *harness) host(id string) *host {
	h.t.Helper()
	for _, x := range h.hosts {
		if x.id == id {
			return x
		}
	}
	h.t.Fatalf("no host %q", id)
	return nil
}

// live returns the coordinators that run and are not paused, c3 first (the
// one no scenario kills, so operator calls and uploads go there).
func (h *harness) live() []*coord {
	var out []*coord
	for i := len(h.coords) - 1; i >= 0; i-- {
		if c := h.coords[i]; c.live() {
			out = append(out, c)
		}
	}
	return out
}

// opCoord is the coordinator operator calls go to.
func (h *harness) opCoord() *coord {
	h.t.Helper()
	l := h.live()
	if len(l) == 0 {
		h.t.Fatal("no live coordinator")
	}
	return l[0]
}

func (h *harness) conn(c *coord) (*grpc.ClientConn, error) {
	h.connsMu.Lock()
	defer h.connsMu.Unlock()
	if cc, ok := h.conns[c.addr]; ok {
		return cc, nil
	}
	cc, err := testfleet.Dial(c.addr)
	if err != nil {
		return nil, err
	}
	h.conns[c.addr] = cc
	return cc, nil
}

func (h *harness) op(c *coord) (v1.OperatorServiceClient, error) {
	cc, err := h.conn(c)
	if err != nil {
		return nil, err
	}
	return v1.NewOperatorServiceClient(cc), nil
}

// callTimeout bounds one operator call of the test's own.
const callTimeout = 3 * time.Second

// call runs one operator call with a short deadline.
func call[T any](h *harness, c *coord, f func(context.Context, v1.OperatorServiceClient) (T, error)) (T, error) {
	return callT(h, c, callTimeout, f)
}

// callT is call with a given deadline.
func callT[T any](h *harness, c *coord, timeout time.Duration, f func(context.Context, v1.OperatorServiceClient) (T, error)) (T, error) {
	var zero T
	op, err := h.op(c)
	if err != nil {
		return zero, err
	}
	ctx, cancel := context.WithTimeout(h.ctx, timeout)
	defer cancel()
	return f(ctx, op)
}

func (h *harness) clusterStatus(c *coord) (*v1.ClusterStatusResponse, error) {
	return call(h, c, func(ctx context.Context, op v1.OperatorServiceClient) (*v1.ClusterStatusResponse, error) {
		return op.ClusterStatus(ctx, &v1.ClusterStatusRequest{})
	})
}

func (h *harness) listHosts(c *coord) ([]*v1.Host, error) {
	resp, err := call(h, c, func(ctx context.Context, op v1.OperatorServiceClient) (*v1.ListHostsResponse, error) {
		return op.ListHosts(ctx, &v1.ListHostsRequest{})
	})
	return resp.GetHosts(), err
}

func (h *harness) rolloutFrom(c *coord, id string) (*v1.Rollout, error) {
	return h.rolloutFromT(c, id, callTimeout)
}

func (h *harness) rolloutFromT(c *coord, id string, timeout time.Duration) (*v1.Rollout, error) {
	resp, err := callT(h, c, timeout, func(ctx context.Context, op v1.OperatorServiceClient) (*v1.GetRolloutResponse, error) {
		return op.GetRollout(ctx, &v1.GetRolloutRequest{Service: service, Id: id})
	})
	return resp.GetRollout(), err
}

// listEvents reads a rollout's recorded events from the operator
// coordinator (the CLI's rollout history reads the same, see events).
func (h *harness) listEvents(id string) ([]*v1.Event, error) {
	resp, err := call(h, h.opCoord(), func(ctx context.Context, op v1.OperatorServiceClient) (*v1.ListEventsResponse, error) {
		return op.ListEvents(ctx, &v1.ListEventsRequest{Service: service, RolloutId: id})
	})
	return resp.GetEvents(), err
}

// rollout reads rollout id ("" = the newest) from the first live
// coordinator that answers.
func (h *harness) rollout(id string) (*v1.Rollout, error) {
	var errs []error
	for _, c := range h.live() {
		r, err := h.rolloutFrom(c, id)
		if err == nil {
			return r, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.name, err))
	}
	return nil, fmt.Errorf("no coordinator answered: %w", errors.Join(errs...))
}

// waitRollout polls rollout id until cond holds and returns it.
func (h *harness) waitRollout(id string, timeout time.Duration, what string, cond func(*v1.Rollout) bool) *v1.Rollout {
	h.t.Helper()
	var last *v1.Rollout
	h.waitFor(timeout, what, func() (bool, string) {
		r, err := h.rollout(id)
		if err != nil {
			return false, err.Error()
		}
		last = r
		if cond(r) {
			return true, ""
		}
		return false, summary(r)
	})
	return last
}

// waitSucceeded waits for rollout id to end and fails the test unless it
// succeeded.
func (h *harness) waitSucceeded(id string, timeout time.Duration) *v1.Rollout {
	h.t.Helper()
	r := h.waitRollout(id, timeout, "rollout "+id+" ends", rollout.Terminal)
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		h.t.Fatalf("rollout %s ended %s: %s\n%s", id, r.GetState(), r.GetReason(), summary(r))
	}
	return r
}

// summary is a one-line view of a rollout for logs and failure messages.
func summary(r *v1.Rollout) string {
	if r == nil {
		return "<no rollout>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s→%s %s", r.GetId(), r.GetFromVersion(), r.GetToVersion(), trimEnum(r.GetState().String(), "ROLLOUT_STATE_"))
	for i, w := range r.GetWaves() {
		fmt.Fprintf(&b, " | w%d %s:", i, trimEnum(w.GetState().String(), "WAVE_STATE_"))
		for _, x := range w.GetHosts() {
			u := ""
			if x.GetUnknown() {
				u = "?"
			}
			fmt.Fprintf(&b, " %s=%s/%s%s", x.GetHostId(), trimEnum(x.GetState().String(), "HOST_ROLLOUT_STATE_"), trimEnum(x.GetPhase().String(), "PHASE_"), u)
		}
	}
	if r.GetReason() != "" {
		fmt.Fprintf(&b, " (%s)", r.GetReason())
	}
	return b.String()
}

func trimEnum(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

// hostProgress finds a host in a rollout's plan.
func hostProgress(r *v1.Rollout, id string) (wave int, hp *v1.HostProgress) {
	for i, w := range r.GetWaves() {
		for _, x := range w.GetHosts() {
			if x.GetHostId() == id {
				return i, x
			}
		}
	}
	return -1, nil
}

// waveUpdating reports whether wave i progresses with a host updating.
func waveUpdating(r *v1.Rollout, i int) bool {
	if len(r.GetWaves()) <= i {
		return false
	}
	w := r.GetWaves()[i]
	if w.GetState() != v1.WaveState_WAVE_STATE_PROGRESSING {
		return false
	}
	for _, x := range w.GetHosts() {
		if x.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
			return true
		}
	}
	return false
}

// cli runs the CLI against the operator coordinator and fails the test
// unless it exits 0.
func (h *harness) cli(args ...string) string {
	h.t.Helper()
	return h.cliAt(h.opCoord(), args...)
}

func (h *harness) cliAt(c *coord, args ...string) string {
	h.t.Helper()
	r := testfleet.CLI(h.ctx, bins.CLI, c.addr, args...)
	if r.Code != 0 {
		h.t.Fatalf("fleetwave --coordinator %s %s: exit %d\nstdout:\n%s\nstderr:\n%s", c.addr, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// cliJSON runs a CLI command with -o json and decodes its output into m.
func (h *harness) cliJSON(c *coord, m proto.Message, args ...string) {
	h.t.Helper()
	out := h.cliAt(c, append(args, "-o", "json")...)
	if err := protojson.Unmarshal([]byte(out), m); err != nil {
		h.t.Fatalf("fleetwave %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// apply applies spec (saved as name.yaml) and returns what the CLI said.
func (h *harness) apply(name, spec string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name+".yaml")
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return h.cli("service", "apply", "-f", p)
}

// release builds a demo-app artifact of version, creates the release
// through the CLI and returns the id of the rollout it started.
func (h *harness) release(version string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, "artifacts", version+".tar.gz")
	if err := testfleet.Artifact(p, bins.DemoApp, version, nil); err != nil {
		h.t.Fatal(err)
	}
	h.cli("release", "create", service, "--version", version, "--artifact", p)
	h.released = append(h.released, version)
	r := h.waitRollout("", 30*time.Second, "rollout to "+version+" created", func(r *v1.Rollout) bool {
		return r.GetToVersion() == version
	})
	h.logf("release %s created: rollout %s, plan %s", version, r.GetId(), summary(r))
	return r.GetId()
}

// versions asks every host's service for its /version ("" = no answer).
func (h *harness) versions(skip ...string) map[string]string {
	out := map[string]string{}
	for _, x := range h.hosts {
		if slices.Contains(skip, x.id) {
			continue
		}
		body, code, err := testfleet.HTTPGet(h.ctx, "http://"+x.listen+"/version")
		if err != nil || code != 200 {
			out[x.id] = ""
			continue
		}
		out[x.id] = strings.TrimSpace(body)
	}
	return out
}

func (h *harness) waitVersions(version string, timeout time.Duration) {
	h.t.Helper()
	h.waitFor(timeout, "every host serves "+version, func() (bool, string) {
		vs := h.versions()
		for _, v := range vs {
			if v != version {
				return false, fmt.Sprint(vs)
			}
		}
		return true, ""
	})
}

// waitLeader waits until a live coordinator's cluster status names a
// leader other than old, and returns it.
func (h *harness) waitLeader(old string, timeout time.Duration) string {
	h.t.Helper()
	var leader string
	h.waitFor(timeout, "a new rollout leader", func() (bool, string) {
		var why []string
		for _, c := range h.live() {
			cs, err := h.clusterStatus(c)
			if err != nil {
				why = append(why, c.name+": "+err.Error())
				continue
			}
			if l := cs.GetLeader(); l != "" && l != old {
				leader = l
				return true, ""
			}
			why = append(why, fmt.Sprintf("%s says leader %q", c.name, cs.GetLeader()))
		}
		return false, strings.Join(why, "; ")
	})
	return leader
}
