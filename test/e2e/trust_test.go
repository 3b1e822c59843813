package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

const trustSpec = `name: web
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]
checks:
  - {name: http, http: {url: "http://127.0.0.1:${host.label.port}/healthz"}, interval: 200ms}
min_healthy_time: 500ms
healthy_deadline: 10s
rollout:
  canary: 1
  waves: [100]
  max_parallel: 3
  bake: 0s
  mode: manual
`

// trustEnv is a fleet with TLS on everywhere: certificates from
// `fleetwave tls init`, a coordinator that signs join requests with the
// join CA (not the root key), agents
// that trust one release signing key, and operators who authenticate.
type trustEnv struct {
	t        *testing.T
	ctx      context.Context
	dir, pki string
	addr     string
	coord    *testfleet.Proc
	agents   map[string]*testfleet.Proc
	ports    map[string]int
	dataDirs map[string]string
	pub, key string // release signing key pair
}

// cli runs the CLI as the given operator ("" = no certificate) with extra
// global flags (e.g. --token).
func (e *trustEnv) cli(as string, args ...string) testfleet.CLIResult {
	g := []string{"--tls-ca", filepath.Join(e.pki, "ca.pem")}
	if as != "" {
		g = append(g, "--tls-cert", filepath.Join(e.pki, as+".pem"), "--tls-key", filepath.Join(e.pki, as+"-key.pem"))
	}
	return testfleet.CLI(e.ctx, bins.CLI, e.addr, append(g, args...)...)
}

func (e *trustEnv) mustCLI(as string, args ...string) string {
	e.t.Helper()
	r := e.cli(as, args...)
	if r.Code != 0 {
		e.t.Fatalf("fleetwave %s: exit %d\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// op is a gRPC client as the admin operator.
func (e *trustEnv) op() v1.OperatorServiceClient {
	e.t.Helper()
	tc, err := tlsutil.ClientConfig(filepath.Join(e.pki, "operator-admin.pem"), filepath.Join(e.pki, "operator-admin-key.pem"), filepath.Join(e.pki, "ca.pem"))
	if err != nil {
		e.t.Fatal(err)
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return v1.NewOperatorServiceClient(cc)
}

func (e *trustEnv) startAgent(id string, extra ...string) *testfleet.Proc {
	e.t.Helper()
	port, err := ports.Take()
	if err != nil {
		e.t.Fatal(err)
	}
	dd := filepath.Join(e.dir, "agents", id)
	args := append([]string{"--coordinator", e.addr, "--host-id", id, "--labels", fmt.Sprintf("role=web,port=%d", port),
		"--data-dir", dd, "--tls-ca", filepath.Join(e.pki, "ca.pem"), "--trusted-keys", e.pub}, extra...)
	p, err := testfleet.Start("agent "+id, bins.Agent, filepath.Join(e.dir, "logs", "agent-"+id+".log"), args...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.agents[id], e.ports[id], e.dataDirs[id] = p, port, dd
	return p
}

func (e *trustEnv) versions() map[string]string {
	out := map[string]string{}
	for id, port := range e.ports {
		body, code, err := testfleet.HTTPGet(e.ctx, fmt.Sprintf("http://127.0.0.1:%d/version", port))
		if err == nil && code == 200 {
			out[id] = strings.TrimSpace(body)
		}
	}
	return out
}

func (e *trustEnv) ran(id, version string) bool {
	b, _ := os.ReadFile(filepath.Join(e.dataDirs[id], "logs", "web.log"))
	return strings.Contains(string(b), `"version":"`+version+`"`)
}

func (e *trustEnv) waitFor(what string, cond func() (bool, string)) {
	e.t.Helper()
	if err := testfleet.WaitFor(e.ctx, 60*time.Second, what, cond); err != nil {
		e.t.Fatal(err)
	}
}

func newTrustEnv(t *testing.T) *trustEnv {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	e := &trustEnv{t: t, ctx: ctx, dir: dir, pki: filepath.Join(dir, "pki"), agents: map[string]*testfleet.Proc{}, ports: map[string]int{}, dataDirs: map[string]string{}}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Certificates and the release signing key, with the real CLI.
	r := localCLI(ctx, "tls", "init", "--dir", e.pki, "--coordinator", "c1",
		"--agent", "host-1", "--agent", "host-2", "--operator", "admin=admin", "--operator", "vera=viewer")
	if r.Code != 0 {
		t.Fatalf("tls init: %s%s", r.Stdout, r.Stderr)
	}
	r = localCLI(ctx, "keys", "generate", "--out", filepath.Join(dir, "release"))
	if r.Code != 0 {
		t.Fatalf("keys generate: %s%s", r.Stdout, r.Stderr)
	}
	e.pub, e.key = filepath.Join(dir, "release.pub"), filepath.Join(dir, "release.key")

	port, err := ports.Take()
	if err != nil {
		t.Fatal(err)
	}
	e.addr = fmt.Sprintf("127.0.0.1:%d", port)
	e.coord, err = testfleet.Start("coordinator", bins.Coordinator, filepath.Join(dir, "logs", "coordinator.log"),
		"--listen", e.addr, "--name", "c1", "--data-dir", filepath.Join(dir, "coordinator"), "--lease-ttl", "2s",
		"--tls-cert", filepath.Join(e.pki, "coordinator-c1.pem"), "--tls-key", filepath.Join(e.pki, "coordinator-c1-key.pem"),
		"--tls-ca", filepath.Join(e.pki, "ca.pem"),
		// Joins are signed with the join CA: the root key stays off the
		// coordinator.
		"--tls-join-ca", filepath.Join(e.pki, "join-ca.pem"), "--tls-join-ca-key", filepath.Join(e.pki, "join-ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, a := range e.agents {
			if a.Running() {
				a.Stop(15 * time.Second)
			}
		}
		for _, dd := range e.dataDirs {
			testfleet.StopServices(bins.Agent, dd) // services outlive their agent
		}
		e.coord.Stop(15 * time.Second)
		if t.Failed() {
			for _, f := range []string{"coordinator", "agent-host-1", "agent-host-2", "agent-host-3", "agent-host-9"} {
				b, _ := os.ReadFile(filepath.Join(dir, "logs", f+".log"))
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("==== %s ====\n%s", f, b)
			}
		}
	})
	e.waitFor("coordinator serving over TLS", func() (bool, string) {
		r := e.cli("operator-admin", "whoami")
		return r.Code == 0, r.Stderr
	})
	return e
}

// Trust end to end: TLS on everywhere, roles, a joined agent, signed
// releases. A wrong CA, an expired certificate, a host certificate used for
// another host, a viewer creating a release, a tampered artifact, a bad
// signature and an expired manifest are each refused with a clear error and
// change nothing; then the fleet deploys a good release. Then what runs is
// signed (a spec changed on the coordinator is refused), a validly signed
// older release is refused below the hosts' floor, and a signed rollback
// statement lets them go back.
func TestTrustEndToEnd(t *testing.T) {
	e := newTrustEnv(t)
	if out := e.mustCLI("operator-admin", "whoami"); !strings.Contains(out, "operator:admin (role admin, by certificate)") {
		t.Errorf("whoami: %s", out)
	}
	specPath := filepath.Join(e.dir, "web.yaml")
	if err := os.WriteFile(specPath, []byte(trustSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	e.mustCLI("operator-admin", "service", "apply", "-f", specPath)

	// Agents: two with certificates from tls init, one joining with a token.
	e.startAgent("host-1", "--tls-cert", filepath.Join(e.pki, "agent-host-1.pem"), "--tls-key", filepath.Join(e.pki, "agent-host-1-key.pem"))
	e.startAgent("host-2", "--tls-cert", filepath.Join(e.pki, "agent-host-2.pem"), "--tls-key", filepath.Join(e.pki, "agent-host-2-key.pem"))
	out := e.mustCLI("operator-admin", "token", "create", "host-3-join", "--role", "join", "--host", "host-3")
	i := strings.Index(out, "secret (shown only now): ")
	if i < 0 {
		t.Fatalf("token create: %s", out)
	}
	tokenFile := filepath.Join(e.dir, "join-token")
	if err := os.WriteFile(tokenFile, []byte(strings.TrimSpace(out[i+len("secret (shown only now): "):])), 0o600); err != nil {
		t.Fatal(err)
	}
	e.startAgent("host-3", "--join-token-file", tokenFile)
	op := e.op()
	connected := func() (bool, string) {
		h, err := op.ListHosts(e.ctx, &v1.ListHostsRequest{})
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, x := range h.GetHosts() {
			if x.GetConnected() {
				n++
			}
		}
		return n == 3, fmt.Sprintf("%d connected", n)
	}
	e.waitFor("three agents connected over mutual TLS (one joined)", connected)

	release := func(as, version string, extra map[string]string, flags ...string) testfleet.CLIResult {
		art := filepath.Join(e.dir, "artifact-"+version+".tar.gz")
		if err := testfleet.Artifact(art, bins.DemoApp, version, extra); err != nil {
			t.Fatal(err)
		}
		return e.cli(as, append([]string{"release", "create", "web", "--version", version, "--artifact", art}, flags...)...)
	}
	rollout := func() *v1.Rollout {
		r, err := op.GetRollout(e.ctx, &v1.GetRolloutRequest{Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetRollout()
	}
	deploy := func(version string) {
		e.mustCLI("operator-admin", "rollout", "approve", "web")
		e.waitFor(version+" on every host", func() (bool, string) {
			vs := e.versions()
			for _, id := range []string{"host-1", "host-2", "host-3"} {
				if vs[id] != version {
					return false, fmt.Sprint(vs)
				}
			}
			return rollout().GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, rollout().GetState().String()
		})
	}
	// failsOnCanary approves the waiting rollout and expects its canary to
	// refuse the release with reason; the service is unfrozen after.
	failsOnCanary := func(version, reason string) {
		t.Helper()
		e.mustCLI("operator-admin", "rollout", "approve", "web")
		e.waitFor(version+" refused on the canary", func() (bool, string) {
			r := rollout()
			return r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED, r.GetState().String() + " " + r.GetReason()
		})
		if r := rollout(); !strings.Contains(r.GetReason(), reason) {
			t.Errorf("%s failed with %q, want it to name %q", version, r.GetReason(), reason)
		}
		e.mustCLI("operator-admin", "service", "unfreeze", "web")
	}

	if r := release("operator-admin", "v1", nil, "--sign", e.key, "--spec", specPath); r.Code != 0 {
		t.Fatalf("release v1: %s%s", r.Stdout, r.Stderr)
	}
	deploy("v1")

	// 1. A certificate from another CA: refused in the handshake.
	other := filepath.Join(e.dir, "other-pki")
	if r := localCLI(e.ctx, "tls", "init", "--dir", other, "--operator", "mallory=admin"); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	r := testfleet.CLI(e.ctx, bins.CLI, e.addr, "--tls-ca", filepath.Join(e.pki, "ca.pem"),
		"--tls-cert", filepath.Join(other, "operator-mallory.pem"), "--tls-key", filepath.Join(other, "operator-mallory-key.pem"), "--timeout", "5s", "service", "list")
	// TLS 1.3: the server refuses the client certificate after the client's
	// side of the handshake, so the client sees the connection end.
	if r.Code == 0 || !strings.Contains(r.Stderr, "list services: ") || strings.Contains(r.Stdout, "web") {
		t.Errorf("certificate from another CA: exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	// Trusting another CA: the coordinator's certificate is refused.
	r = testfleet.CLI(e.ctx, bins.CLI, e.addr, "--tls-ca", filepath.Join(other, "ca.pem"), "--timeout", "5s", "service", "list")
	if r.Code == 0 || !strings.Contains(r.Stderr, "certificate") {
		t.Errorf("coordinator under another CA accepted: exit %d: %s", r.Code, r.Stderr)
	}

	// 2. An expired operator certificate.
	ca, err := tlsutil.LoadCA(filepath.Join(e.pki, "ca.pem"), filepath.Join(e.pki, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueKeyPair(tlsutil.Identity{Kind: tlsutil.KindOperator, Name: "old", Role: tlsutil.RoleAdmin}, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsutil.WriteKeyPair(filepath.Join(e.pki, "operator-old.pem"), filepath.Join(e.pki, "operator-old-key.pem"), certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(time.Second)
	e.waitFor("the clock passes the certificate's expiry", func() (bool, string) { return time.Now().After(expiry.Add(time.Second)), "" })
	r = e.cli("operator-old", "--timeout", "5s", "service", "apply", "-f", specPath)
	if r.Code == 0 || !strings.Contains(r.Stderr, "apply") {
		t.Errorf("expired certificate: exit %d: %s", r.Code, r.Stderr)
	}

	// 3. host-1's certificate used for another host.
	imp := e.startAgent("host-9", "--tls-cert", filepath.Join(e.pki, "agent-host-1.pem"), "--tls-key", filepath.Join(e.pki, "agent-host-1-key.pem"))
	e.waitFor("the impostor refused", func() (bool, string) {
		b, _ := os.ReadFile(filepath.Join(e.dir, "logs", "agent-host-9.log"))
		return strings.Contains(string(b), `certificate is for host \"host-1\"`), "no refusal in its log yet"
	})
	imp.Stop(10 * time.Second)
	delete(e.agents, "host-9")
	delete(e.ports, "host-9")
	hosts, err := op.ListHosts(e.ctx, &v1.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts.GetHosts() {
		if h.GetId() == "host-9" {
			t.Errorf("the impostor was recorded as a host: %v", h)
		}
	}

	// 4. A viewer token creating a release.
	tok := e.mustCLI("operator-admin", "token", "create", "dash", "--role", "viewer")
	secret := strings.TrimSpace(tok[strings.Index(tok, "secret (shown only now): ")+len("secret (shown only now): "):])
	r = release("", "v2", nil, "--token", secret, "--sign", e.key, "--spec", specPath)
	if r.Code == 0 || !strings.Contains(r.Stderr, "needs role deployer; token:dash has role viewer") {
		t.Errorf("viewer token creating a release: exit %d: %s", r.Code, r.Stderr)
	}

	// 5. A tampered artifact: signed for one content, served another.
	good := filepath.Join(e.dir, "artifact-v3.tar.gz")
	if err := testfleet.Artifact(good, bins.DemoApp, "v3", nil); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	tampered := append([]byte(nil), data...)
	tampered[len(tampered)/2] ^= 0xff
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(tampered) })}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	e.mustCLI("operator-admin", "release", "create", "web", "--version", "v3", "--url", "http://"+lis.Addr().String()+"/v3.tar.gz",
		"--sha256", hex.EncodeToString(sum[:]), "--size", fmt.Sprint(len(data)), "--sign", e.key, "--spec", specPath)
	failsOnCanary("v3", "sha256")

	// 6. A bad signature: signed by a key the agents do not trust.
	if r := localCLI(e.ctx, "keys", "generate", "--out", filepath.Join(e.dir, "rogue")); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	if r := release("operator-admin", "v4", nil, "--sign", filepath.Join(e.dir, "rogue.key"), "--spec", specPath); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	failsOnCanary("v4", "unknown key")
	// Unsigned is refused too.
	if r := release("operator-admin", "v5", nil); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	failsOnCanary("v5", "unsigned: refused")

	// 7. An expired manifest.
	if r := release("operator-admin", "v6", nil, "--sign", e.key, "--spec", specPath, "--expires", "1s"); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	signed := time.Now()
	e.waitFor("the manifest expires", func() (bool, string) { return time.Now().After(signed.Add(2 * time.Second)), "" })
	failsOnCanary("v6", "expired")

	// Nothing of the refused releases ran anywhere, and the fleet still
	// deploys a good one.
	for _, id := range []string{"host-1", "host-2", "host-3"} {
		for _, v := range []string{"v2", "v3", "v4", "v5", "v6"} {
			if e.ran(id, v) {
				t.Errorf("%s ran refused release %s", id, v)
			}
		}
	}
	if vs := e.versions(); vs["host-1"] != "v1" || vs["host-2"] != "v1" || vs["host-3"] != "v1" {
		t.Errorf("after the refusals the fleet serves %v, want v1 everywhere", vs)
	}
	if r := release("operator-admin", "v7", nil, "--sign", e.key, "--spec", specPath); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	deploy("v7")

	// 8. What runs is signed: a spec changed on the coordinator (here by an
	// admin, as whoever controls it or its etcd could) is refused with a
	// release signed with the spec CI has.
	pwned := filepath.Join(e.dir, "pwned")
	evilPath := filepath.Join(e.dir, "web-evil.yaml")
	evil := strings.Replace(trustSpec, `command: ["./demoapp", "--listen", "127.0.0.1:${host.label.port}"]`,
		`command: ["/bin/sh", "-c", "touch `+pwned+`; exec ./demoapp --listen 127.0.0.1:${host.label.port}"]`, 1)
	if evil == trustSpec {
		t.Fatal("the evil spec is the spec")
	}
	if err := os.WriteFile(evilPath, []byte(evil), 0o644); err != nil {
		t.Fatal(err)
	}
	e.mustCLI("operator-admin", "service", "apply", "-f", evilPath)
	if r := release("operator-admin", "v8", nil, "--sign", e.key, "--spec", specPath); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	failsOnCanary("v8", "the assigned spec has sha256")
	e.mustCLI("operator-admin", "service", "apply", "-f", specPath)
	if r := release("operator-admin", "v9", nil, "--sign", e.key, "--spec", specPath); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	deploy("v9")

	// 9. The floor: v7 is validly signed and not expired, but older than
	// v9, which the hosts accepted. A rollback to it (a higher generation)
	// is refused on every host, which keeps running v9.
	webReports := func() (map[string]string, error) {
		h, err := op.ListHosts(e.ctx, &v1.ListHostsRequest{})
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, x := range h.GetHosts() {
			for _, sr := range x.GetServices() {
				if sr.GetService() == "web" {
					out[x.GetId()] = sr.GetPhase().String() + " " + sr.GetReason()
				}
			}
		}
		return out, nil
	}
	e.mustCLI("operator-admin", "rollback", "web", "--to", "v7")
	e.waitFor("the rollback to v7 refused on every host", func() (bool, string) {
		rs, err := webReports()
		if err != nil {
			return false, err.Error()
		}
		for _, id := range []string{"host-1", "host-2", "host-3"} {
			if !strings.Contains(rs[id], "PHASE_FAILED") || !strings.Contains(rs[id], "release v7: signed sequence") ||
				!strings.Contains(rs[id], "is below this host's floor") || !strings.Contains(rs[id], "(release v9)") {
				return false, fmt.Sprint(rs)
			}
		}
		return true, ""
	})
	if vs := e.versions(); vs["host-1"] != "v9" || vs["host-2"] != "v9" || vs["host-3"] != "v9" {
		t.Errorf("after the refused downgrade the fleet serves %v, want v9 everywhere", vs)
	}

	// 10. A signed rollback statement lets the hosts go back (to v1 here:
	// the coordinator now counts v7 as its stable release).
	out = e.mustCLI("operator-admin", "rollback", "web", "--to", "v1", "--sign", e.key)
	if !strings.Contains(out, "→ v1") {
		t.Errorf("signed rollback: %s", out)
	}
	e.waitFor("v1 on every host after the signed rollback, and the rollback done", func() (bool, string) {
		vs := e.versions()
		r := rollout()
		return vs["host-1"] == "v1" && vs["host-2"] == "v1" && vs["host-3"] == "v1" &&
				r.GetToVersion() == "v1" && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED,
			fmt.Sprint(vs, " ", r.GetToVersion(), " ", r.GetState())
	})
	// A statement is bound to one release: the same statement's bytes do
	// not verify for another (checked in internal/signing); and the floor
	// did not go down: the next release needs a sequence above v9's, which
	// the CLI gives it.
	if r := release("operator-admin", "v10", nil, "--sign", e.key, "--spec", specPath); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	deploy("v10")
	for _, id := range []string{"host-1", "host-2", "host-3"} {
		if e.ran(id, "v8") {
			t.Errorf("%s ran v8 with the changed spec", id)
		}
		b, err := os.ReadFile(filepath.Join(e.dataDirs[id], "trust", "floors", "web.json"))
		if err != nil || !strings.Contains(string(b), `"version":"v10"`) {
			t.Errorf("%s floor: %s %v", id, b, err)
		}
	}
	if _, err := os.Stat(pwned); !os.IsNotExist(err) {
		t.Errorf("the changed command ran: %v", err)
	}

	// The audit log has the refused calls and who made the good ones.
	audit := e.mustCLI("operator-admin", "audit", "--limit", "500")
	for _, want := range []string{"token:dash", "PermissionDenied", "operator:admin", "ApplyService", "CreateRelease", "Join"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %q:\n%s", want, audit)
		}
	}
	// The joined agent's certificate lives in its data dir, bound to host-3.
	id, err := certIdentity(filepath.Join(e.dataDirs["host-3"], "tls", "agent.pem"))
	if err != nil || id.String() != "agent:host-3" {
		t.Errorf("joined certificate: %v %v", id, err)
	}
}

func certIdentity(file string) (tlsutil.Identity, error) {
	c, err := tlsutil.ReadCertFile(file)
	if err != nil {
		return tlsutil.Identity{}, err
	}
	return tlsutil.IdentityFromCert(c)
}

// localCLI runs a CLI command that talks to no coordinator (tls init, keys).
func localCLI(ctx context.Context, args ...string) testfleet.CLIResult {
	cmd := exec.CommandContext(ctx, bins.CLI, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := 0
	if err := cmd.Run(); err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		errb.WriteString(err.Error())
	}
	return testfleet.CLIResult{Stdout: out.String(), Stderr: errb.String(), Code: code}
}
