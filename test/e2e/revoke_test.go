package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Revocation end to end, with the real binaries: an agent whose host is
// revoked is disconnected at once and cannot reconnect (its attempts are
// refused in the handshake) until it joins with a token created after the
// revocation; an operator certificate revoked by serial is refused on its
// next call, and its open `rollout watch` ends with the reason.
func TestRevocationEndToEnd(t *testing.T) {
	e := newTrustEnv(t)
	specPath := filepath.Join(e.dir, "web.yaml")
	if err := os.WriteFile(specPath, []byte(trustSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	e.mustCLI("operator-admin", "service", "apply", "-f", specPath)
	e.startAgent("host-1", "--tls-cert", filepath.Join(e.pki, "agent-host-1.pem"), "--tls-key", filepath.Join(e.pki, "agent-host-1-key.pem"))
	tokenFile := filepath.Join(e.dir, "join-token")
	writeToken := func() {
		t.Helper()
		out := e.mustCLI("operator-admin", "token", "create", "host-3-join", "--role", "join", "--host", "host-3")
		_, secret, ok := strings.Cut(out, "secret (shown only now): ")
		if !ok {
			t.Fatalf("token create: %s", out)
		}
		if err := os.WriteFile(tokenFile, []byte(strings.TrimSpace(secret)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeToken()
	host3 := e.startAgent("host-3", "--join-token-file", tokenFile)
	op := e.op()
	connected := func() map[string]bool {
		h, err := op.ListHosts(e.ctx, &v1.ListHostsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, x := range h.GetHosts() {
			out[x.GetId()] = x.GetConnected()
		}
		return out
	}
	testkit.Eventually(t, time.Minute, "host-1 and host-3 (joined through the join CA) connected", func() bool {
		c := connected()
		return c["host-1"] && c["host-3"]
	})
	// A rollout that waits for approval, for the viewer to watch.
	art := filepath.Join(e.dir, "artifact-v1.tar.gz")
	if err := testfleet.Artifact(art, bins.DemoApp, "v1", nil); err != nil {
		t.Fatal(err)
	}
	e.mustCLI("operator-admin", "release", "create", "web", "--version", "v1", "--artifact", art, "--sign", e.key, "--spec", specPath)

	who := e.mustCLI("operator-vera", "whoami")
	_, rest, ok := strings.Cut(who, "certificate serial ")
	if !ok {
		t.Fatalf("whoami shows no serial: %s", who)
	}
	serial, _, _ := strings.Cut(rest, ",")
	watchOut, watchErr := filepath.Join(e.dir, "watch.out"), filepath.Join(e.dir, "watch.err")
	watch := exec.CommandContext(e.ctx, bins.CLI, "--coordinator", e.addr, "--tls-ca", filepath.Join(e.pki, "ca.pem"),
		"--tls-cert", filepath.Join(e.pki, "operator-vera.pem"), "--tls-key", filepath.Join(e.pki, "operator-vera-key.pem"), "rollout", "watch", "web")
	outF, err := os.Create(watchOut)
	if err != nil {
		t.Fatal(err)
	}
	defer outF.Close()
	errF, err := os.Create(watchErr)
	if err != nil {
		t.Fatal(err)
	}
	defer errF.Close()
	watch.Stdout, watch.Stderr = outF, errF
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	watched := make(chan error, 1)
	go func() { watched <- watch.Wait() }()
	testkit.EventuallyErr(t, time.Minute, "the viewer's rollout watch shows the rollout", func() error {
		b, _ := os.ReadFile(watchOut)
		if len(b) == 0 {
			be, _ := os.ReadFile(watchErr)
			return fmt.Errorf("no output yet; stderr %q", be)
		}
		return nil
	})

	// The host: revoked, its stream ends at once, it cannot reconnect.
	logPath := filepath.Join(e.dir, "logs", "agent-host-3.log")
	before, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if out := e.mustCLI("operator-admin", "hosts", "revoke", "host-3", "--reason", "e2e"); !strings.Contains(out, "revoked every certificate of agent:host-3") {
		t.Errorf("hosts revoke: %s", out)
	}
	// The revocation returned once the stream had ended on the coordinator:
	// the host's connection record goes right after.
	testkit.Eventually(t, time.Minute, "host-3 disconnected", func() bool { return !connected()["host-3"] })
	refusals := func() (int, string) {
		b, _ := os.ReadFile(logPath)
		after := string(b[min(int(before.Size()), len(b)):])
		return strings.Count(after, "bad certificate"), after
	}
	testkit.EventuallyErr(t, time.Minute, "host-3 tries to reconnect and is refused, twice", func() error {
		if n, log := refusals(); n < 2 {
			return fmt.Errorf("%d refusals in the agent's log since the revocation:\n%s", n, log)
		}
		return nil
	})
	if _, log := refusals(); !strings.Contains(log, "was revoked") {
		t.Errorf("the agent's stream did not end with the revocation:\n%s", log)
	}
	if c := connected(); c["host-3"] || !c["host-1"] {
		t.Errorf("after host-3's revocation and its reconnect attempts: connected %v", c)
	}

	// The operator: revoked by serial; the open watch ends, the next call
	// is refused.
	if out := e.mustCLI("operator-admin", "tls", "revoke", serial, "--reason", "laptop stolen"); !strings.Contains(out, "revoked certificate serial "+serial) {
		t.Errorf("tls revoke: %s", out)
	}
	err = <-watched
	var ee *exec.ExitError
	stderr, _ := os.ReadFile(watchErr)
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(stderr), "(operator:vera) was revoked") || !strings.Contains(string(stderr), "laptop stolen") {
		t.Errorf("the revoked viewer's rollout watch ended with %v: %s", err, stderr)
	}
	// Its next call: refused in the handshake. The client sees the alert,
	// or only the connection closing when the alert loses the race with
	// its own writes; the coordinator logs the refusal either way.
	refusedVera := func() int {
		b, _ := os.ReadFile(filepath.Join(e.dir, "logs", "coordinator.log"))
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"certificate":"operator:vera"`) && strings.Contains(l, "refused in the TLS handshake: revoked certificate") {
				n++
			}
		}
		return n
	}
	n := refusedVera()
	r := e.cli("operator-vera", "service", "list")
	if r.Code == 0 || !strings.Contains(r.Stderr, "list services: ") || !strings.Contains(r.Stderr, "accept the certificate") && !strings.Contains(r.Stderr, "refused the certificate") {
		t.Errorf("the revoked viewer's next call: exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	testkit.Eventually(t, time.Minute, "the coordinator logs the refused handshake", func() bool { return refusedVera() > n })
	if out := e.mustCLI("operator-admin", "tls", "revocations"); !strings.Contains(out, "agent:host-3") || !strings.Contains(out, "serial "+serial) {
		t.Errorf("tls revocations: %s", out)
	}

	// Back with a join token created after the revocation.
	writeToken()
	host3.Stop(15 * time.Second)
	if err := os.RemoveAll(filepath.Join(e.dataDirs["host-3"], "tls")); err != nil {
		t.Fatal(err)
	}
	if err := host3.Restart(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, time.Minute, "host-3 back with a new join token", func() bool { return connected()["host-3"] })

	audit := e.mustCLI("operator-admin", "audit", "--limit", "500")
	for _, want := range []string{"RevokeCertificate", "identity agent:host-3", "(TLS handshake)", "agent:host-3"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %q:\n%s", want, audit)
		}
	}
}
