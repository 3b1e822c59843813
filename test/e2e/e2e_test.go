// Package e2e holds Fleetwave's end-to-end tests: the real binaries, started
// as processes, over real loopback sockets, with a real embedded etcd.
package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/testcluster"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

var bins *testfleet.Binaries

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "fleetwave-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	bins, err = testfleet.Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	testcluster.RemoveBuilds() // etcdnode, when a test started an etcd of its own
	os.Exit(code)
}

const specTmpl = `name: %s
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/healthz"}
    interval: 200ms
    timeout: 1s
min_healthy_time: 1s
healthy_deadline: 6s
rollout:
  canary: 1
  waves: [50, 100]
  max_parallel: 2
  bake: %s
  progress_deadline: 2m
`

type env struct {
	t     *testing.T
	ctx   context.Context
	fleet *testfleet.Fleet
	dir   string
}

// newEnv starts a coordinator and n agents in zones a and b, and applies the
// demo service spec.
func newEnv(t *testing.T, n int, service, bake string) *env {
	t.Helper()
	e := newFleetEnv(t, n)
	e.apply(service, fmt.Sprintf(specTmpl, service, bake))
	return e
}

// apply writes a spec file and applies it with the CLI.
func (e *env) apply(name, spec string) {
	e.t.Helper()
	specPath := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.cli(0, "service", "apply", "-f", specPath)
}

// newFleetEnv starts a coordinator and n agents in zones a and b.
func newFleetEnv(t *testing.T, n int) *env {
	t.Helper()
	return newFleetEnvWith(t, n, testfleet.Options{})
}

// newFleetEnvWith is newFleetEnv with options for the fleet.
func newFleetEnvWith(t *testing.T, n int, opts testfleet.Options) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	f, err := testfleet.NewFleetWith(ctx, bins, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, fleet: f, dir: dir}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			e.dumpLogs()
		}
	})
	for i := range n {
		zone := []string{"a", "b"}[i%2]
		if _, err := f.AddAgent(fmt.Sprintf("host-%d", i+1), zone); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitConnected(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(e.dir, "logs", "*.log"))
	svcLogs, _ := filepath.Glob(filepath.Join(e.dir, "agents", "*", "logs", "*.log"))
	for _, p := range append(files, svcLogs...) {
		b, _ := os.ReadFile(p)
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		e.t.Logf("==== %s ====\n%s", p, b)
	}
}

func (e *env) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	e.t.Helper()
	if err := testfleet.WaitFor(e.ctx, timeout, what, cond); err != nil {
		e.t.Fatal(err)
	}
}

// cli runs the CLI and fails the test unless it exits with want.
func (e *env) cli(want int, args ...string) testfleet.CLIResult {
	e.t.Helper()
	r := e.fleet.CLI(e.ctx, args...)
	if r.Code != want {
		e.t.Fatalf("fleetwave %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r
}

// artifact writes a demo-app tarball for version with extra files.
func (e *env) artifact(version string, extra map[string]string) string {
	e.t.Helper()
	p := filepath.Join(e.dir, "artifact-"+version+".tar.gz")
	if err := testfleet.Artifact(p, bins.DemoApp, version, extra); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// release creates a release and watches its rollout to the end; it returns
// the watch exit code.
func (e *env) release(service, version string, extra map[string]string) int {
	e.t.Helper()
	e.cli(0, "release", "create", service, "--version", version, "--artifact", e.artifact(version, extra))
	return e.fleet.CLI(e.ctx, "rollout", "watch", service).Code
}

func (e *env) rollout(service string) *v1.Rollout {
	e.t.Helper()
	cc, err := e.fleet.Dial() // plain text or TLS, as the fleet
	if err != nil {
		e.t.Fatal(err)
	}
	defer cc.Close()
	resp, err := v1.NewOperatorServiceClient(cc).GetRollout(e.ctx, &v1.GetRolloutRequest{Service: service})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.GetRollout()
}

// versions asks every host's service for its /version.
func (e *env) versions() map[string]string {
	out := map[string]string{}
	for _, id := range e.fleet.AgentIDs() {
		out[id] = e.fleet.Version(e.ctx, id)
	}
	return out
}

func (e *env) allOn(version string) {
	e.t.Helper()
	e.waitFor(30*time.Second, "every host serves "+version, func() (bool, string) {
		vs := e.versions()
		for _, v := range vs {
			if v != version {
				return false, fmt.Sprint(vs)
			}
		}
		return true, ""
	})
}

// ran reports whether a host ever ran a version of the demo service: the
// demo app logs its version when it starts listening, and the supervisor
// appends its output to the service log, which nothing truncates.
func (e *env) ran(host, service, version string) bool {
	b, err := os.ReadFile(filepath.Join(e.fleet.Agents[host].DataDir, "logs", service+".log"))
	if err != nil {
		return false
	}
	return strings.Contains(string(b), `"version":"`+version+`"`)
}

func TestReleaseReachesFleetInWavesAndBrokenOneStopsAtCanary(t *testing.T) {
	e := newEnv(t, 5, "web", "1s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("rollout of v1: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	if code := e.release("web", "v2", nil); code != 0 {
		t.Fatalf("rollout of v2: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	r := e.rollout("web")
	if got := len(r.GetWaves()); got != 3 {
		t.Fatalf("v2 plan has %d waves, want canary + 2", got)
	}
	// Waves ran in order: each wave started after the previous one was done.
	for i := 1; i < len(r.GetWaves()); i++ {
		prev, cur := r.GetWaves()[i-1], r.GetWaves()[i]
		if cur.GetStartedAt().AsTime().Before(prev.GetDoneAt().AsTime()) {
			t.Fatalf("wave %d started at %v before wave %d was done at %v", i, cur.GetStartedAt().AsTime(), i-1, prev.GetDoneAt().AsTime())
		}
	}

	// v3 fails its health check: the canary reverts it, the rollout fails.
	if code := e.release("web", "v3", map[string]string{"FAIL_HEALTH": "1"}); code == 0 {
		t.Fatal("rollout of broken v3 reported success")
	}
	r = e.rollout("web")
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED {
		t.Fatalf("v3 rollout state %v, want FAILED", r.GetState())
	}
	if !strings.Contains(r.GetReason(), "canary") {
		t.Errorf("failure reason does not name the canary: %q", r.GetReason())
	}
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	e.allOn("v2")
	for _, id := range e.fleet.AgentIDs() {
		if id != canary && e.ran(id, "web", "v3") {
			t.Errorf("host %s outside the canary ran v3", id)
		}
	}
	if !e.ran(canary, "web", "v3") {
		t.Errorf("canary %s never ran v3: the failure was not the health check", canary)
	}
	// The service is frozen: a new release does not roll out, and says why.
	out := e.cli(0, "service", "list", "-o", "json").Stdout
	if !strings.Contains(out, "frozen") {
		t.Errorf("service list does not show the freeze:\n%s", out)
	}
	out = e.cli(0, "release", "create", "web", "--version", "v4", "--artifact", e.artifact("v4", nil)).Stdout
	if !strings.Contains(out, "frozen") || !strings.Contains(out, "fleetwave service unfreeze web") {
		t.Errorf("release create on a frozen service does not say so:\n%s", out)
	}
	if r := e.rollout("web"); r.GetToVersion() != "v3" {
		t.Fatalf("a rollout to %s started while frozen", r.GetToVersion())
	}
	// A person unfreezes: the newest release (v4, not the failed v3) rolls out.
	e.cli(0, "service", "unfreeze", "web")
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("rollout of v4 after unfreeze: exit %d: %v", code, e.rollout("web"))
	}
	if r := e.rollout("web"); r.GetToVersion() != "v4" || r.GetFromVersion() != "v2" {
		t.Fatalf("after unfreeze the rollout went %s → %s, want v2 → v4", r.GetFromVersion(), r.GetToVersion())
	}
	e.allOn("v4")

	// A person rolls back: one fast wave to the release before (v2), never
	// onto the failed v3.
	if r := e.cli(1, "rollback", "web", "--to", "v3"); !strings.Contains(r.Stderr, "refusing") {
		t.Errorf("rollback onto the failed v3:\n%s", r.Stderr)
	}
	out = e.cli(0, "rollback", "web").Stdout
	if !strings.Contains(out, "v4 → v2") {
		t.Errorf("rollback did not go v4 → v2:\n%s", out)
	}
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("rollback: exit %d: %v", code, e.rollout("web"))
	}
	r = e.rollout("web")
	if !r.GetRollback() || len(r.GetWaves()) != 1 {
		t.Errorf("rollback rollout %s: rollback=%v waves %d, want one wave", r.GetId(), r.GetRollback(), len(r.GetWaves()))
	}
	e.allOn("v2")
	// Every decision is in the history, with who made it.
	hist := e.cli(0, "rollout", "history", "web").Stdout
	for _, want := range []string{rollout.EventRolloutFailed, rollout.EventHostFailed, rollout.EventServiceUnfrozen, rollout.EventRollbackCreated, "peer:"} {
		if !strings.Contains(hist, want) {
			t.Errorf("rollout history lacks %s:\n%s", want, hist)
		}
	}
}

func TestAgentKilledMidRolloutConverges(t *testing.T) {
	e := newEnv(t, 5, "web", "2s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d", code)
	}
	e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil))
	// Kill -9 the first host of the second wave once it is updating.
	var victim string
	e.waitFor(60*time.Second, "a host of wave 1 updating", func() (bool, string) {
		r := e.rollout("web")
		if len(r.GetWaves()) < 2 {
			return false, "plan too short"
		}
		for _, h := range r.GetWaves()[1].GetHosts() {
			if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING {
				victim = h.GetHostId()
				return true, ""
			}
		}
		return false, r.GetState().String()
	})
	a := e.fleet.Agents[victim]
	a.Kill9()
	e.waitFor(30*time.Second, "host marked unknown or done", func() (bool, string) {
		for _, w := range e.rollout("web").GetWaves() {
			for _, h := range w.GetHosts() {
				if h.GetHostId() == victim {
					return h.GetUnknown() || h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, h.String()
				}
			}
		}
		return false, "victim not in plan"
	})
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v2 rollout after agent restart: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
}

func TestCoordinatorRestartMidRolloutCompletes(t *testing.T) {
	e := newEnv(t, 5, "web", "3s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d", code)
	}
	e.cli(0, "release", "create", "web", "--version", "v2", "--artifact", e.artifact("v2", nil))
	e.waitFor(60*time.Second, "canary done", func() (bool, string) {
		r := e.rollout("web")
		w := r.GetWaves()[0]
		return w.GetState() == v1.WaveState_WAVE_STATE_BAKING || w.GetState() == v1.WaveState_WAVE_STATE_DONE, w.GetState().String()
	})
	e.fleet.Coord.Kill9()
	if err := e.fleet.Coord.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := testfleet.WaitServing(e.ctx, e.fleet.Addr, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v2 rollout after coordinator restart: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v2")
	r := e.rollout("web")
	if r.GetToVersion() != "v2" || r.GetId() != "000002" {
		t.Fatalf("after restart the newest rollout is %s to %s, want 000002 to v2", r.GetId(), r.GetToVersion())
	}
}

func TestBadInputIsRejectedAndChangesNothing(t *testing.T) {
	e := newEnv(t, 3, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d", code)
	}
	e.allOn("v1")

	// A malformed spec names the field and value; nothing is stored.
	bad := filepath.Join(e.dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: web\nselector: {role: web}\nrun: {command: []}\nrollout: {waves: [50, 40], mode: fast}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.cli(1, "service", "apply", "-f", bad)
	for _, want := range []string{"run.command", "rollout.waves[1]", "40", `"fast"`} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("spec error does not name %s:\n%s", want, r.Stderr)
		}
	}
	out := e.cli(0, "service", "get", "web", "-o", "json").Stdout
	if !strings.Contains(out, "demoapp") {
		t.Errorf("the stored spec changed after a rejected apply:\n%s", out)
	}

	// An artifact whose digest does not match: the canary refuses it.
	body := []byte("not the artifact you are looking for")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	wrong := sha256.Sum256([]byte("something else"))
	e.cli(0, "release", "create", "web", "--version", "v2-bad-digest",
		"--url", "http://"+ln.Addr().String()+"/a.tar.gz", "--sha256", hex.EncodeToString(wrong[:]), "--size", fmt.Sprint(len(body)))
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code == 0 {
		t.Fatal("a release with a wrong digest rolled out")
	}
	ro := e.rollout("web")
	if !strings.Contains(ro.GetReason(), "sha256") {
		t.Errorf("failure reason does not mention the digest: %q", ro.GetReason())
	}
	e.allOn("v1")
	for _, id := range e.fleet.AgentIDs() {
		if e.ran(id, "web", "v2-bad-digest") {
			t.Errorf("host %s ran an unverified artifact", id)
		}
		if _, err := os.Stat(filepath.Join(e.fleet.Agents[id].DataDir, "releases", "web", "v2-bad-digest")); err == nil {
			t.Errorf("host %s unpacked an unverified artifact", id)
		}
	}
}

func TestTarballWithDotDotIsRejected(t *testing.T) {
	e := newEnv(t, 3, "web", "0s")
	if code := e.release("web", "v1", nil); code != 0 {
		t.Fatalf("v1: exit %d", code)
	}
	evil := filepath.Join(e.dir, "evil.tar.gz")
	if err := testfleet.EvilArtifact(evil, "../../escaped"); err != nil {
		t.Fatal(err)
	}
	e.cli(0, "release", "create", "web", "--version", "v2-evil", "--artifact", evil)
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code == 0 {
		t.Fatal("a tarball with ../ rolled out")
	}
	ro := e.rollout("web")
	if !strings.Contains(ro.GetReason(), "..") {
		t.Errorf("failure reason does not name the bad entry: %q", ro.GetReason())
	}
	e.allOn("v1")
	for _, id := range e.fleet.AgentIDs() {
		a := e.fleet.Agents[id]
		matches, _ := filepath.Glob(filepath.Join(filepath.Dir(a.DataDir), "*", "escaped"))
		m2, _ := filepath.Glob(filepath.Join(a.DataDir, "*", "escaped"))
		if len(matches)+len(m2) > 0 {
			t.Errorf("host %s: archive wrote outside its root: %v %v", id, matches, m2)
		}
		if _, err := os.Stat(filepath.Join(a.DataDir, "releases", "web", "v2-evil")); err == nil {
			t.Errorf("host %s has the rejected release unpacked", id)
		}
	}
}
