// Package testfleet starts a real Fleetwave fleet on one machine: the real
// binaries as separate processes talking over loopback sockets, with
// artifacts built from the demo app. The end-to-end tests and `make demo`
// use it. It must not be imported by the coordinator or the agent.
package testfleet

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Binaries are the paths of the built Fleetwave binaries.
type Binaries struct {
	Dir         string
	Coordinator string
	Agent       string
	CLI         string
	DemoApp     string
}

// ModuleRoot finds the repository root (the directory with go.mod) from the
// working directory upwards.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Build compiles the four binaries into dir.
func Build(ctx context.Context, dir string) (*Binaries, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	b := &Binaries{
		Dir:         dir,
		Coordinator: filepath.Join(dir, "fleetwave-coordinator"),
		Agent:       filepath.Join(dir, "fleetwave-agent"),
		CLI:         filepath.Join(dir, "fleetwave"),
		DemoApp:     filepath.Join(dir, "fleetwave-demoapp"),
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/fleetwave-coordinator", "./cmd/fleetwave-agent", "./cmd/fleetwave", "./cmd/fleetwave-demoapp")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w\n%s", err, out)
	}
	return b, nil
}

// Proc is one running process with its output in a log file.
type Proc struct {
	Name    string
	LogPath string
	args    []string
	bin     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts bin with args, output appended to logPath.
func Start(name, bin, logPath string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, LogPath: logPath, args: args, bin: bin}
	return p, p.start()
}

func (p *Proc) start() error {
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	cmd := exec.Command(p.bin, p.args...)
	// Not a systemd service, even when the tests run in one: an agent under
	// systemd without its notify socket refuses to upgrade itself.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "INVOCATION_ID=") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Restart starts the process again with the same arguments after it ended.
func (p *Proc) Restart() error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	<-done
	return p.start()
}

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Kill9 kills the process with SIGKILL (only it, not its children) and
// waits for it.
func (p *Proc) Kill9() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Stop sends SIGTERM and waits up to grace, then SIGKILLs the process group.
func (p *Proc) Stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// Tail returns the last n bytes of the process's log.
func (p *Proc) Tail(n int64) string {
	return tail(p.LogPath, n)
}

func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	_, _ = f.ReadAt(b, off)
	return string(b)
}

// WaitFor polls cond until it returns true or the deadline passes; the
// error carries cond's last explanation.
func WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	var why string
	for {
		ok, w := cond()
		if ok {
			return nil
		}
		why = w
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not true after %s: %s", what, timeout, why)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %s)", what, ctx.Err(), why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Dial opens a gRPC client connection to addr.
func Dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// WaitServing waits until the gRPC health service at addr says SERVING.
func WaitServing(ctx context.Context, addr string, timeout time.Duration) error {
	cc, err := Dial(addr)
	if err != nil {
		return err
	}
	defer cc.Close()
	return waitHealthy(ctx, cc, addr, timeout)
}

// waitHealthy waits until the gRPC health service on cc says SERVING.
func waitHealthy(ctx context.Context, cc *grpc.ClientConn, addr string, timeout time.Duration) error {
	hc := healthpb.NewHealthClient(cc)
	return WaitFor(ctx, timeout, "coordinator "+addr+" serving", func() (bool, string) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return false, err.Error()
		}
		return resp.GetStatus() == healthpb.HealthCheckResponse_SERVING, resp.GetStatus().String()
	})
}

// Artifact builds a release tarball of the demo app: the binary as
// ./demoapp, a VERSION file, and any extra files (behaviour switches such
// as FAIL_HEALTH).
func Artifact(path, demoApp, version string, extra map[string]string) error {
	bin, err := os.ReadFile(demoApp)
	if err != nil {
		return fmt.Errorf("artifact %s: %w", version, err)
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	add := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	files := map[string]string{"VERSION": version}
	for k, v := range extra {
		files[k] = v
	}
	names := make([]string, 0, len(files))
	for k := range files {
		names = append(names, k)
	}
	sort.Strings(names)
	if err := add("demoapp", 0o755, bin); err != nil {
		return fmt.Errorf("artifact %s: %w", version, err)
	}
	for _, n := range names {
		if err := add(n, 0o644, []byte(files[n])); err != nil {
			return fmt.Errorf("artifact %s: %w", version, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// CLIResult is one run of the fleetwave CLI.
type CLIResult struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs the fleetwave CLI against coordinator addr.
func CLI(ctx context.Context, bin, addr string, args ...string) CLIResult {
	cmd := exec.CommandContext(ctx, bin, append([]string{"--coordinator", addr}, args...)...)
	if !slices.Contains(args, "--tls-ca") && !slices.Contains(args, "--insecure") {
		// The fleets tests start serve plain text unless they say otherwise.
		cmd.Env = append(os.Environ(), "FLEETWAVE_INSECURE=1")
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return CLIResult{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// Hosts lists the fleet's hosts through the operator API.
func Hosts(ctx context.Context, addr string) ([]*v1.Host, error) {
	cc, err := Dial(addr)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return listHosts(ctx, cc)
}

func listHosts(ctx context.Context, cc *grpc.ClientConn) ([]*v1.Host, error) {
	resp, err := v1.NewOperatorServiceClient(cc).ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetHosts(), nil
}

// Rollout fetches a service's newest rollout.
func Rollout(ctx context.Context, addr, service string) (*v1.Rollout, error) {
	cc, err := Dial(addr)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	resp, err := v1.NewOperatorServiceClient(cc).GetRollout(ctx, &v1.GetRolloutRequest{Service: service})
	if err != nil {
		return nil, err
	}
	return resp.GetRollout(), nil
}

// HTTPGet fetches a URL's body with a short timeout.
func HTTPGet(ctx context.Context, url string) (string, int, error) {
	return httpGet(ctx, url)
}

// Fleet is a coordinator and agents started from one set of binaries.
type Fleet struct {
	Bin  *Binaries
	Dir  string
	Addr string
	// MetricsAddr serves the coordinator's Prometheus metrics.
	MetricsAddr string
	// DashboardURL is the coordinator's web dashboard (https:// with TLS).
	DashboardURL string
	Coord        *Proc
	Agents       map[string]*Agent
	agentIDs     []string
	// PKI is the directory with the CA and certificates when TLS is on
	// ("" = plain text).
	PKI string
	ca  *tlsutil.CA
}

// Options change how NewFleetWith starts a fleet.
type Options struct {
	// TLS turns mutual TLS on: a CA and certificates are made in DIR/pki
	// (the coordinator c1, an admin operator, one per agent).
	TLS bool
	// CoordinatorArgs are more flags for the coordinator.
	CoordinatorArgs []string
}

// Agent is one agent process and the port its service uses.
type Agent struct {
	*Proc
	ID      string
	Zone    string
	Port    int
	DataDir string
	// MetricsAddr serves the agent's Prometheus metrics.
	MetricsAddr string
}

// NewFleet starts a coordinator with embedded etcd in dir, plain text.
func NewFleet(ctx context.Context, bin *Binaries, dir string) (*Fleet, error) {
	return NewFleetWith(ctx, bin, dir, Options{})
}

// NewFleetWith starts a coordinator with embedded etcd in dir.
func NewFleetWith(ctx context.Context, bin *Binaries, dir string, opts Options) (*Fleet, error) {
	port, err := ports.Take()
	if err != nil {
		return nil, err
	}
	mport, err := ports.Take()
	if err != nil {
		return nil, err
	}
	hport, err := ports.Take()
	if err != nil {
		return nil, err
	}
	f := &Fleet{Bin: bin, Dir: dir, Addr: fmt.Sprintf("127.0.0.1:%d", port), MetricsAddr: fmt.Sprintf("127.0.0.1:%d", mport), Agents: map[string]*Agent{}}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", hport)
	f.DashboardURL = "http://" + httpAddr + "/"
	if opts.TLS {
		f.DashboardURL = "https://" + httpAddr + "/"
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	args := []string{"--listen", f.Addr, "--name", "c1", "--data-dir", filepath.Join(dir, "coordinator"), "--lease-ttl", "2s", "--metrics-listen", f.MetricsAddr, "--http-listen", httpAddr}
	if opts.TLS {
		f.PKI = filepath.Join(dir, "pki")
		if err := tlsutil.Init(f.PKI, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil},
			Operators: map[string]string{"admin": tlsutil.RoleAdmin}}); err != nil {
			return nil, err
		}
		if f.ca, err = tlsutil.LoadCA(filepath.Join(f.PKI, tlsutil.CAFile), filepath.Join(f.PKI, tlsutil.CAKeyFile)); err != nil {
			return nil, err
		}
		args = append(args, "--tls-cert", filepath.Join(f.PKI, "coordinator-c1.pem"), "--tls-key", filepath.Join(f.PKI, "coordinator-c1-key.pem"),
			"--tls-ca", filepath.Join(f.PKI, tlsutil.CAFile),
			// Joins are signed with the join CA; the root key stays here.
			"--tls-join-ca", filepath.Join(f.PKI, tlsutil.JoinCAFile), "--tls-join-ca-key", filepath.Join(f.PKI, tlsutil.JoinCAKeyFile))
	} else {
		args = append(args, "--insecure")
	}
	args = append(args, opts.CoordinatorArgs...)
	f.Coord, err = Start("coordinator", bin.Coordinator, filepath.Join(dir, "logs", "coordinator.log"), args...)
	if err != nil {
		return nil, err
	}
	if err := f.waitServing(ctx, 60*time.Second); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w\ncoordinator log:\n%s", err, f.Coord.Tail(4000))
	}
	return f, nil
}

// CLIFlags are the global flags the CLI needs for this fleet (TLS as the
// admin operator; none for plain text).
func (f *Fleet) CLIFlags() []string {
	if f.PKI == "" {
		return []string{"--insecure"}
	}
	return []string{"--tls-ca", filepath.Join(f.PKI, tlsutil.CAFile),
		"--tls-cert", filepath.Join(f.PKI, "operator-admin.pem"), "--tls-key", filepath.Join(f.PKI, "operator-admin-key.pem")}
}

// Dial connects to the coordinator (as the admin operator with TLS on).
func (f *Fleet) Dial() (*grpc.ClientConn, error) {
	if f.PKI == "" {
		return Dial(f.Addr)
	}
	tc, err := tlsutil.ClientConfig(filepath.Join(f.PKI, "operator-admin.pem"), filepath.Join(f.PKI, "operator-admin-key.pem"), filepath.Join(f.PKI, tlsutil.CAFile))
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(f.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
}

func (f *Fleet) waitServing(ctx context.Context, timeout time.Duration) error {
	cc, err := f.Dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	return waitHealthy(ctx, cc, f.Addr, timeout)
}

// Hosts lists the fleet's hosts.
func (f *Fleet) Hosts(ctx context.Context) ([]*v1.Host, error) {
	cc, err := f.Dial()
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return listHosts(ctx, cc)
}

// AgentOptions change how AddAgentWith starts an agent.
type AgentOptions struct {
	// Binary is the agent executable ("" = the fleet's). An agent that
	// upgrades itself replaces its executable: give each such agent a copy.
	Binary string
	// Coordinator is the address the agent connects to ("" = the
	// coordinator's; e.g. a proxy in front of it).
	Coordinator string
	// Args are more flags.
	Args []string
}

// AddAgent starts an agent with labels zone=<zone>, role=web and a free
// port label for its service.
func (f *Fleet) AddAgent(id, zone string) (*Agent, error) {
	return f.AddAgentWith(id, zone, AgentOptions{})
}

// AddAgentWith is AddAgent with options.
func (f *Fleet) AddAgentWith(id, zone string, o AgentOptions) (*Agent, error) {
	port, err := ports.Take()
	if err != nil {
		return nil, err
	}
	mport, err := ports.Take()
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(f.Dir, "agents", id)
	labels := fmt.Sprintf("zone=%s,role=web,port=%d", zone, port)
	maddr := fmt.Sprintf("127.0.0.1:%d", mport)
	coord, bin := f.Addr, f.Bin.Agent
	if o.Coordinator != "" {
		coord = o.Coordinator
	}
	if o.Binary != "" {
		bin = o.Binary
	}
	args := []string{"--coordinator", coord, "--host-id", id, "--labels", labels, "--data-dir", dataDir, "--metrics-listen", maddr}
	if f.PKI == "" {
		args = append(args, "--insecure")
	} else {
		cert, key, err := f.ca.IssueKeyPair(tlsutil.Identity{Kind: tlsutil.KindAgent, Name: id}, nil, 24*time.Hour)
		if err != nil {
			return nil, err
		}
		certFile, keyFile := filepath.Join(f.PKI, "agent-"+id+".pem"), filepath.Join(f.PKI, "agent-"+id+"-key.pem")
		if err := tlsutil.WriteKeyPair(certFile, keyFile, cert, key); err != nil {
			return nil, err
		}
		args = append(args, "--tls-ca", filepath.Join(f.PKI, tlsutil.CAFile), "--tls-cert", certFile, "--tls-key", keyFile)
	}
	args = append(args, o.Args...)
	p, err := Start("agent "+id, bin, filepath.Join(f.Dir, "logs", "agent-"+id+".log"), args...)
	if err != nil {
		return nil, err
	}
	a := &Agent{Proc: p, ID: id, Zone: zone, Port: port, DataDir: dataDir, MetricsAddr: maddr}
	f.Agents[id] = a
	f.agentIDs = append(f.agentIDs, id)
	return a, nil
}

// AgentIDs returns the agents' ids in the order they were added.
func (f *Fleet) AgentIDs() []string { return append([]string(nil), f.agentIDs...) }

// CLI runs the fleetwave CLI against this fleet.
func (f *Fleet) CLI(ctx context.Context, args ...string) CLIResult {
	return CLI(ctx, f.Bin.CLI, f.Addr, append(f.CLIFlags(), args...)...)
}

// Version asks an agent's service for its /version ("" if it does not answer).
func (f *Fleet) Version(ctx context.Context, id string) string {
	a := f.Agents[id]
	body, code, err := httpGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/version", a.Port))
	if err != nil || code != 200 {
		return ""
	}
	return strings.TrimSpace(body)
}

// Close stops every agent, then the services they leave running (agents
// never stop them: fleetwave-agent stop-services does), and the
// coordinator.
func (f *Fleet) Close() {
	var wg sync.WaitGroup
	for _, a := range f.Agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a.Running() {
				a.Stop(15 * time.Second)
			}
			// An agent that upgraded itself runs as another process.
			StopPID(a.CurrentPID(), 15*time.Second)
			StopServices(f.Bin.Agent, a.DataDir)
		}()
	}
	wg.Wait()
	if f.Coord != nil && f.Coord.Running() {
		f.Coord.Stop(15 * time.Second)
	}
}

// CurrentPID is the pid of the agent process running on a's data dir
// now, which is not a's own process once the agent upgraded itself (the new
// agent is started by the old one); 0 when none runs. It looks for a
// process whose arguments hold --data-dir DATA-DIR and which is not a's.
func (a *Agent) CurrentPID() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	running := a.Running()
	a.mu.Lock()
	own := 0
	if running && a.cmd != nil && a.cmd.Process != nil {
		own = a.cmd.Process.Pid
	}
	a.mu.Unlock()
	want := "\x00--data-dir\x00" + a.DataDir + "\x00"
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == own {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), want) || strings.Contains(string(b), "\x00stop-services\x00") {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				continue // exited, not reaped yet
			}
		}
		return pid
	}
	if own != 0 {
		return own
	}
	return 0
}

// StopPID sends pid (0: nothing) SIGTERM and waits until it is gone,
// SIGKILL after grace. For processes the test did not start itself (it
// cannot wait for them): it polls.
func StopPID(pid int, grace time.Duration) {
	if pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	gone := func() bool {
		st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			return true
		}
		i := strings.LastIndexByte(string(st), ')')
		return i > 0 && len(st) > i+2 && st[i+2] == 'Z'
	}
	deadline := time.Now().Add(grace)
	for !gone() {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(grace)
		}
		time.Sleep(20 * time.Millisecond) // polling a process that is not our child
	}
}

// StopServices runs `fleetwave-agent stop-services --no-drain` on an
// agent's data dir (whose agent has exited): the services outlive their
// agent. Errors are not returned: this is clean-up (no drain: no hook of a
// test's release runs, no shutdown_delay is waited).
func StopServices(agentBin, dataDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_ = exec.CommandContext(ctx, agentBin, "stop-services", "--no-drain", "--data-dir", dataDir).Run()
}

// EvilArtifact writes a tarball with one entry named name (e.g. a path with
// ".."), for tests of the agent's extraction checks.
func EvilArtifact(path, name string) error {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	data := []byte("escaped\n")
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// PrometheusBinary finds Debian's prometheus (installed by `make deps`).
// With FLEETWAVE_REQUIRE_PROMETHEUS set (make test sets it) a missing
// binary is an error, not a reason to skip.
func PrometheusBinary() (string, error) {
	p, err := exec.LookPath("prometheus")
	if err != nil {
		return "", fmt.Errorf("prometheus not found (run `make deps`, which installs Debian's prometheus package): %w", err)
	}
	return p, nil
}

// StartPrometheus runs a real Prometheus server in dir scraping targets
// (host:port) every second under job "fleet", and waits until it serves.
func StartPrometheus(ctx context.Context, dir string, targets []string) (*Proc, string, error) {
	bin, err := PrometheusBinary()
	if err != nil {
		return nil, "", err
	}
	port, err := ports.Take()
	if err != nil {
		return nil, "", err
	}
	quoted := make([]string, len(targets))
	for i, t := range targets {
		quoted[i] = fmt.Sprintf("%q", t)
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n      - targets: [%s]\n", strings.Join(quoted, ", "))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := Start("prometheus", bin, filepath.Join(dir, "prometheus.log"),
		"--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	if err != nil {
		return nil, "", err
	}
	err = WaitFor(ctx, 60*time.Second, "prometheus ready", func() (bool, string) {
		_, code, err := httpGet(ctx, "http://"+addr+"/-/ready")
		if err != nil {
			return false, err.Error()
		}
		return code == 200, fmt.Sprint("status ", code)
	})
	if err != nil {
		p.Stop(5 * time.Second)
		return nil, "", fmt.Errorf("%w\n%s", err, p.Tail(2000))
	}
	return p, "http://" + addr, nil
}

// WaitConnected waits until every agent added to the fleet is connected.
func (f *Fleet) WaitConnected(ctx context.Context, timeout time.Duration) error {
	n := len(f.agentIDs)
	return WaitFor(ctx, timeout, "all agents connected", func() (bool, string) {
		hosts, err := f.Hosts(ctx)
		if err != nil {
			return false, err.Error()
		}
		up := 0
		for _, h := range hosts {
			if h.GetConnected() {
				up++
			}
		}
		return up == n, fmt.Sprintf("%d of %d connected", up, n)
	})
}
