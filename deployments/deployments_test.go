// Package deployments holds the systemd units, example configs and the
// compose file. Its test checks that every command line in them is one the
// real binaries accept, so the examples cannot drift from the flags.
package deployments

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
)

// accepts runs a binary with args and -h: the flag package parses every
// flag before -h, so an unknown or malformed flag fails with exit status 2.
func accepts(t *testing.T, bin string, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(append([]string{}, args...), "-h")...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
}

// build builds the binaries once for the package's tests.
var build = sync.OnceValues(func() (*testfleet.Binaries, error) {
	dir, err := os.MkdirTemp("", "fleetwave-deployments-")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return testfleet.Build(ctx, dir)
})

func TestMain(m *testing.M) {
	code := m.Run()
	if b, err := build(); err == nil && b != nil {
		os.RemoveAll(b.Dir)
	}
	os.Exit(code)
}

func binaries(t *testing.T) *testfleet.Binaries {
	t.Helper()
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestExamplesUseRealFlags(t *testing.T) {
	bin := binaries(t)
	binFor := map[string]string{"fleetwave-coordinator": bin.Coordinator, "fleetwave-agent": bin.Agent, "fleetwave": bin.CLI}

	// The env files: one OPTS variable each, with shell line continuations.
	for file, b := range map[string]string{"examples/coordinator.env": bin.Coordinator, "examples/agent.env": bin.Agent} {
		accepts(t, b, envOpts(t, file))
	}

	// The compose file: every fleetwave command.
	compose := readCompose(t)
	seen := map[string]int{}
	for name, svc := range compose.Services {
		argv := svc.argv()
		if len(argv) == 0 {
			continue
		}
		if name == "pki" {
			// sh -c: the CLI's tls init and gossip keygen, run for real by
			// TestExamplesLeastPrivilege.
			if !strings.Contains(strings.Join(argv, " "), "fleetwave tls init") {
				t.Errorf("pki service does not run tls init: %v", argv)
			}
			continue
		}
		b, ok := binFor[argv[0]]
		if !ok {
			t.Errorf("compose service %s runs %q", name, argv[0])
			continue
		}
		seen[argv[0]]++
		accepts(t, b, argv[1:])
	}
	if seen["fleetwave-coordinator"] < 2 || seen["fleetwave-agent"] < 2 || len(compose.Services) < 4+seen["fleetwave-coordinator"]+seen["fleetwave-agent"] {
		t.Errorf("compose file runs %v of %d services; want 3 etcd, 2+ coordinators, agents", seen, len(compose.Services))
	}

	// The systemd units read their options from the env files.
	for _, unit := range []string{"systemd/fleetwave-coordinator.service", "systemd/fleetwave-agent.service"} {
		data, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "EnvironmentFile=/etc/fleetwave/") || !strings.Contains(string(data), "_OPTS") {
			t.Errorf("%s does not take its options from /etc/fleetwave/*.env", unit)
		}
	}
}

// envOpts reads the options of an env file: one OPTS variable, with shell
// line continuations.
func envOpts(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var body []string
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, "#") && strings.TrimSpace(l) != "" {
			body = append(body, l)
		}
	}
	m := optsRE.FindStringSubmatch(strings.Join(body, "\n"))
	if m == nil {
		t.Fatalf("%s: no OPTS=\"...\" line", file)
	}
	args := strings.Fields(strings.ReplaceAll(m[1], "\\\n", " "))
	if len(args) < 4 {
		t.Fatalf("%s: options %q", file, args)
	}
	return args
}

var optsRE = regexp.MustCompile(`(?s)^[A-Z_]+_OPTS="(.*)"\s*$`)

// composeFile is what the tests read of compose.yaml.
type composeFile struct {
	Services map[string]composeService `json:"services"`
}

type composeService struct {
	Entrypoint []string `json:"entrypoint"`
	Command    []string `json:"command"`
	Volumes    []string `json:"volumes"`
	// Environment: the CLI takes its files from there.
	Environment map[string]string `json:"environment"`
}

// argv is what the service runs: its entrypoint, then its command.
func (s composeService) argv() []string {
	return append(append([]string{}, s.Entrypoint...), s.Command...)
}

// mount is one volume of a service: "NAME:TARGET[:MODE]".
type mount struct{ name, target, mode string }

func (s composeService) mounts(t *testing.T) []mount {
	t.Helper()
	var out []mount
	for _, v := range s.Volumes {
		p := strings.Split(v, ":")
		if len(p) < 2 || len(p) > 3 || !strings.HasPrefix(p[1], "/") {
			t.Fatalf("volume %q: want NAME:/TARGET[:MODE]", v)
		}
		m := mount{name: p[0], target: p[1]}
		if len(p) == 3 {
			m.mode = p[2]
		}
		out = append(out, m)
	}
	return out
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

// stopCmdRE finds the documented command that stops an agent's services.
var stopCmdRE = regexp.MustCompile(`fleetwave-agent (stop-services --data-dir (\S+))`)

// TestAgentUnitLeavesServicesRunning: services outlive the agent, so the
// unit must make systemd signal the agent alone (KillMode=process, else a
// restart of the agent kills every service in its cgroup), and the
// command the unit and the README document for stopping the services must
// stop them with the real binary.
func TestAgentUnitLeavesServicesRunning(t *testing.T) {
	data, err := os.ReadFile("systemd/fleetwave-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	var section string
	var killModes []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "#") || l == "":
		case strings.HasPrefix(l, "["):
			section = l
		case strings.HasPrefix(l, "KillMode="):
			killModes = append(killModes, section+" "+l)
		}
	}
	if len(killModes) != 1 || killModes[0] != "[Service] KillMode=process" {
		t.Errorf("fleetwave-agent.service: KillMode directives %q, want exactly [Service] KillMode=process", killModes)
	}
	// An agent upgrade tells systemd the new agent's pid (MAINPID=), which
	// systemd takes from the main process only with NotifyAccess.
	if !strings.Contains(string(data), "\nNotifyAccess=main\n") {
		t.Error("fleetwave-agent.service: no NotifyAccess=main: systemd would not follow an upgraded agent")
	}
	// The agent says READY=1 and pings the watchdog (agent/watchdog.go).
	for _, want := range []string{"\nType=notify\n", "\nWatchdogSec=30\n"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("fleetwave-agent.service: no %s: a stuck agent would never be restarted", strings.TrimSpace(want))
		}
	}
	unitCmd := stopCmdRE.FindStringSubmatch(string(data))
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if unitCmd == nil || !strings.Contains(string(readme), unitCmd[0]) {
		t.Fatalf("the stop command: the unit documents %q; want it documented in the README too", unitCmd)
	}

	// A data dir with a service an agent left running: a process group its
	// PID file proves.
	bin := binaries(t)
	dataDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dataDir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	svc := exec.Command("sleep", "600")
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	reaped := make(chan struct{})
	go func() { waitErr = svc.Wait(); close(reaped) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-svc.Process.Pid, syscall.SIGKILL)
		<-reaped
	})
	pidFile := filepath.Join(dataDir, "run", "web.pid")
	if _, err := supervise.WritePIDRecord(pidFile, svc.Process.Pid, "1.0.0", 1); err != nil {
		t.Fatal(err)
	}
	args := strings.Fields(strings.Replace(unitCmd[1], unitCmd[2], dataDir, 1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin.Agent, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fleetwave-agent %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// stop-services returned once the service had exited; only its reaping
	// (by this test) may still be under way: a failure deadline, not a
	// measure.
	select {
	case <-reaped:
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("service ended with %v, want SIGTERM", waitErr)
		}
	case <-time.After(time.Minute):
		t.Fatalf("fleetwave-agent %s returned with the service still running\n%s", strings.Join(args, " "), out)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file after stop-services: %v", err)
	}
}

// TestExamplesLeastPrivilege: no example gives an agent a CA key or an
// operator's key, nor a coordinator the root CA key. The compose file's pki
// script is run for real (the real CLI, each volume a directory), and every
// private key each service can read is matched against the CAs' and the
// operators' certificates; every file a service's command names must be
// in its own read-only volume. The env files name no such key. (Before,
// the compose file mounted the whole PKI, root and admin keys included,
// into every agent and coordinator, and coordinator.env gave every
// coordinator the root key.)
func TestExamplesLeastPrivilege(t *testing.T) {
	bin := binaries(t)
	compose := readCompose(t)
	pki, ok := compose.Services["pki"]
	if !ok {
		t.Fatal("compose.yaml has no pki service")
	}
	// Each volume is a directory, linked at its mount point under a root
	// directory that the script's absolute paths are moved into.
	vols := map[string]string{}
	if a := pki.argv(); len(a) < 3 || a[0] != "sh" || a[1] != "-c" {
		t.Fatalf("pki service runs %q, want sh -c SCRIPT", a)
	}
	script := strings.Join(pki.argv()[2:], " ")
	fsRoot := t.TempDir()
	tops := map[string]bool{}
	var pkiDir string
	for _, m := range pki.mounts(t) {
		dir := filepath.Join(t.TempDir(), m.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		vols[m.name] = dir
		if m.target == "/pki" {
			pkiDir = dir
		}
		link := filepath.Join(fsRoot, m.target)
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(dir, link); err != nil {
			t.Fatal(err)
		}
		tops[strings.Split(m.target, "/")[1]] = true
	}
	for top := range tops {
		re := regexp.MustCompile(`(^|[\s'"=])(/` + regexp.QuoteMeta(top) + `)\b`)
		script = re.ReplaceAllString(script, "${1}"+fsRoot+"${2}")
	}
	if pkiDir == "" {
		t.Fatalf("the pki service mounts nothing at /pki: %v", pki.Volumes)
	}
	for run := range 2 { // the second run finds the PKI made and copies again
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+bin.Dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pki script (run %d): %v\n%s", run+1, err, out)
		}
	}
	secrets := secretKeys(t, pkiDir)
	if len(secrets.agentForbidden) < 3 || len(secrets.coordinatorForbidden) != 1 {
		t.Fatalf("found %d keys an agent must not have, %d a coordinator must not have, in %s", len(secrets.agentForbidden), len(secrets.coordinatorForbidden), pkiDir)
	}

	checked := map[string]int{}
	for name, svc := range compose.Services {
		argv := svc.argv()
		if name == "pki" || len(argv) == 0 {
			continue
		}
		var forbidden map[string]string
		switch filepath.Base(argv[0]) {
		case "fleetwave-agent":
			forbidden = secrets.agentForbidden
		case "fleetwave-coordinator":
			forbidden = secrets.coordinatorForbidden
		case "fleetwave":
			forbidden = secrets.coordinatorForbidden
		default:
			continue
		}
		checked[filepath.Base(argv[0])]++
		visible := map[string]string{} // path in the container -> file
		for _, m := range svc.mounts(t) {
			dir, ok := vols[m.name]
			if !ok {
				t.Errorf("%s mounts %s, which the pki service does not fill", name, m.name)
				continue
			}
			if m.mode != "ro" {
				t.Errorf("%s mounts %s read-write, want :ro", name, m.name)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				visible[m.target+"/"+e.Name()] = filepath.Join(dir, e.Name())
			}
		}
		for inside, file := range visible {
			if what, bad := forbidden[keyID(t, file)]; bad {
				t.Errorf("%s (%s) can read %s: %s", name, argv[0], inside, what)
			}
		}
		// Every file the command names is in the service's volume.
		args := argv[1:]
		for _, v := range svc.Environment {
			args = append(args, v)
		}
		for _, a := range args {
			if strings.HasPrefix(a, "/pki/") {
				if _, ok := visible[a]; !ok {
					t.Errorf("%s names %s, which is not in its volume", name, a)
				}
			}
		}
	}
	if checked["fleetwave-agent"] < 2 || checked["fleetwave-coordinator"] < 2 {
		t.Errorf("checked the mounts of %v; want the agents and coordinators", checked)
	}

	// The env files: no key of a CA or an operator for the agent, no root
	// key for the coordinator.
	for file, banned := range map[string][]string{
		"examples/agent.env":       {"ca-key.pem", "join-ca-key.pem", "operator-"},
		"examples/coordinator.env": {"/ca-key.pem", "--tls-ca-key", "operator-"},
	} {
		for _, a := range envOpts(t, file) {
			for _, b := range banned {
				if strings.Contains(a, b) {
					t.Errorf("%s: %q gives it what it must not have (%s)", file, a, b)
				}
			}
		}
	}
	if opts := strings.Join(envOpts(t, "examples/coordinator.env"), " "); !strings.Contains(opts, "--tls-join-ca-key") {
		t.Errorf("coordinator.env: no --tls-join-ca-key: %s", opts)
	}
}

// forbiddenKeys maps the public key (keyID) of each key a service must not
// hold to what it is.
type forbiddenKeys struct {
	agentForbidden, coordinatorForbidden map[string]string
}

// secretKeys reads the CA and operator certificates tls init wrote in dir.
func secretKeys(t *testing.T, dir string) forbiddenKeys {
	t.Helper()
	k := forbiddenKeys{agentForbidden: map[string]string{}, coordinatorForbidden: map[string]string{}}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, "-key.pem") || !strings.HasSuffix(path, ".pem") {
			return err
		}
		c, err := tlsutil.ReadCertFile(path)
		if err != nil {
			return err
		}
		id := pubID(t, c.PublicKey)
		switch {
		case c.IsCA && bytes.Equal(c.RawIssuer, c.RawSubject):
			k.agentForbidden[id] = "the root CA key"
			k.coordinatorForbidden[id] = "the root CA key"
		case c.IsCA:
			k.agentForbidden[id] = "the join CA key"
		default:
			if ident, err := tlsutil.IdentityFromCert(c); err == nil && ident.Kind == tlsutil.KindOperator {
				k.agentForbidden[id] = "the key of " + ident.String()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keyID is the public key of the private key in a PEM file ("" when the
// file holds none).
func keyID(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return ""
		}
		var key any
		switch b.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return pubID(t, key.(crypto.Signer).Public())
	}
}

func pubID(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", der)
}
