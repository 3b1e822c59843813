package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"net/http"

	"github.com/fleetwave/fleetwave/agent"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/revocation"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	cfg, level, err := parseFlags([]string{
		"--coordinator", "a:1,b:2", "--coordinator=c:3", "--host-id", "h1",
		"--labels", "zone=a, port=8081", "--data-dir", "d", "--log-level", "debug", "--insecure",
		"--artifact-redirect-hosts", "cdn.example.com,*.s3.example.org", "--artifact-redirect-hosts=blobs:8443",
	}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Coordinators, " ") != "a:1 b:2 c:3" || cfg.HostID != "h1" || cfg.Labels["port"] != "8081" ||
		cfg.Labels["zone"] != "a" || cfg.DataDir != "d" || level.String() != "debug" || cfg.AgentVersion != version ||
		strings.Join(cfg.ArtifactRedirectHosts, " ") != "cdn.example.com *.s3.example.org blobs:8443" {
		t.Fatalf("cfg %+v level %v", cfg, level)
	}
}

func TestBadFlagsExit2NamingFlagAndValue(t *testing.T) {
	base := []string{"--coordinator", "a:1", "--host-id", "h1", "--data-dir", "d"}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"labels", append(base, "--labels", "zoneA"), []string{"--labels", `"zoneA"`}},
		{"label value", append(base, "--labels", "zone=a b"), []string{"--labels", `"zone=a b"`}},
		{"host id", []string{"--coordinator", "a:1", "--host-id", "bad id", "--data-dir", "d"}, []string{"--host-id", `"bad id"`}},
		{"log level", append(base, "--log-level", "loud"), []string{"--log-level", `"loud"`}},
		{"no coordinator", []string{"--host-id", "h1"}, []string{"--coordinator"}},
		{"bad coordinator", []string{"--coordinator", "nohostport", "--host-id", "h1"}, []string{"--coordinator", `"nohostport"`}},
		{"unknown flag", append(base, "--bogus"), []string{"bogus"}},
		{"no transport security", base, []string{"--tls-ca", "insecure"}},
		{"insecure with tls", append(base, "--insecure", "--tls-ca", "ca.pem"), []string{"--insecure", "cannot be combined"}},
		{"tls without identity", append(base, "--tls-ca", "ca.pem"), []string{"--tls-cert", "join_token_file"}},
		{"redirect host", append(base, "--insecure", "--artifact-redirect-hosts", "https://cdn"), []string{"--artifact-redirect-hosts", `"https://cdn"`}},
		{"upgrade deadline too short", append(base, "--insecure", "--upgrade-deadline", "500ms"), []string{"--upgrade-deadline", `"500ms"`, "1s to 1h0m0s"}},
		{"upgrade deadline too long", append(base, "--insecure", "--upgrade-deadline", "2h"), []string{"--upgrade-deadline", `"2h0m0s"`}},
		{"revocations save interval too short", append(base, "--insecure", "--revocations-save-interval", "5ms"), []string{"--revocations-save-interval", `"5ms"`, "10ms to 1h0m0s"}},
		{"revocations save interval too long", append(base, "--insecure", "--revocations-save-interval", "61m"), []string{"--revocations-save-interval", `"1h1m0s"`, "10ms to 1h0m0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tt.args, io.Discard, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2; stderr %s", code, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Fatalf("stderr %q does not contain %q", stderr.String(), w)
				}
			}
		})
	}
}

func TestServiceLogFlags(t *testing.T) {
	base := []string{"--coordinator", "a:1", "--host-id", "h1", "--data-dir", "d", "--insecure"}
	var stderr bytes.Buffer
	cfg, _, err := parseFlags(base, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServiceLogMaxBytes != 64<<20 || cfg.ServiceLogKeep != 3 || cfg.RemovedLogRetention != 7*24*time.Hour {
		t.Fatalf("defaults: max %d keep %d removed-log-retention %s", cfg.ServiceLogMaxBytes, cfg.ServiceLogKeep, cfg.RemovedLogRetention)
	}
	cfg, _, err = parseFlags(append(base, "--service-log-max-bytes", "-1", "--service-log-keep", "0", "--removed-log-retention", "0"), &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServiceLogMaxBytes != -1 || cfg.ServiceLogKeep >= 0 || cfg.RemovedLogRetention >= 0 {
		t.Fatalf("never rotate, keep none, keep removed logs for ever: max %d keep %d removed-log-retention %s", cfg.ServiceLogMaxBytes, cfg.ServiceLogKeep, cfg.RemovedLogRetention)
	}
	cfg, _, err = parseFlags(append(base, "--removed-log-retention", "36h"), &stderr)
	if err != nil || cfg.RemovedLogRetention != 36*time.Hour {
		t.Fatalf("--removed-log-retention 36h: %s, %v", cfg.RemovedLogRetention, err)
	}
	for _, bad := range [][]string{{"--service-log-max-bytes", "0"}, {"--service-log-max-bytes", "-5"}, {"--service-log-keep", "-1"}, {"--removed-log-retention", "-1h"}} {
		stderr.Reset()
		if code := run(context.Background(), append(append([]string{}, base...), bad...), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), bad[0]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming the flag", bad, code, stderr.String())
		}
	}
}

func TestStopServicesCommand(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"stop-services", "--bogus"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("unknown flag: exit %d, want 2", code)
	}
	if code := run(context.Background(), []string{"stop-services", "--data-dir", t.TempDir(), "extra"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("extra argument: exit %d, want 2", code)
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"stop-services", "--data-dir", t.TempDir() + "/missing"}, io.Discard, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "missing") {
		t.Fatalf("missing data dir: exit %d, stderr %q; want 1 naming it", code, stderr.String())
	}
	// Nothing runs: nothing to do, exit 0.
	if code := run(context.Background(), []string{"stop-services", "--data-dir", t.TempDir()}, io.Discard, &stderr); code != 0 {
		t.Fatalf("empty data dir: exit %d, stderr %q", code, stderr.String())
	}
}

// TestStopServicesHostFlags: stop-services takes --host-id, --labels
// (parsed and checked as the agent's: a bad value exits 2 naming the flag
// and the value) and --no-drain.
func TestStopServicesHostFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--labels", "zoneA"}, []string{"--labels", `"zoneA"`}},
		{[]string{"--labels", "zone=a b"}, []string{"--labels", `"zone=a b"`}},
		{[]string{"--labels", "zone=a,zone=b"}, []string{"--labels", `"zone=a,zone=b"`, "given twice"}},
		{[]string{"--host-id", "bad id"}, []string{"--host-id", `"bad id"`}},
		{[]string{"--no-drain=maybe"}, []string{"no-drain"}},
	} {
		var stderr bytes.Buffer
		args := append([]string{"stop-services", "--data-dir", t.TempDir()}, tt.args...)
		if code := run(context.Background(), args, io.Discard, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2; stderr %s", tt.args, code, stderr.String())
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%v: stderr %q does not contain %q", tt.args, stderr.String(), w)
			}
		}
	}
	for _, args := range [][]string{
		{"--host-id", "h1", "--labels", "zone=a,port=8080"},
		{"--host-id", "h1", "--no-drain"},
		{"--no-drain"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), append([]string{"stop-services", "--data-dir", t.TempDir()}, args...), io.Discard, &stderr); code != 0 {
			t.Errorf("%v: exit %d, stderr %s", args, code, stderr.String())
		}
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"stop-services", "--help"}, io.Discard, &stderr); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, w := range []string{"-host-id", "-labels", "-no-drain", "before_stop", "shutdown_delay"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("--help %q does not mention %q", stderr.String(), w)
		}
	}
}

func TestKeepReleasesFlag(t *testing.T) {
	base := []string{"--coordinator", "a:1", "--host-id", "h1", "--data-dir", "d", "--insecure"}
	var stderr bytes.Buffer
	cfg, _, err := parseFlags(base, &stderr)
	if err != nil || cfg.KeepReleases != 3 {
		t.Fatalf("default: keep %d, %v", cfg.KeepReleases, err)
	}
	if cfg, _, err = parseFlags(append(base, "--keep-releases", "1"), &stderr); err != nil || cfg.KeepReleases != 1 {
		t.Fatalf("--keep-releases 1: keep %d, %v", cfg.KeepReleases, err)
	}
	for _, v := range []string{"0", "-2"} {
		stderr.Reset()
		if code := run(context.Background(), append(append([]string{}, base...), "--keep-releases", v), io.Discard, &stderr); code != 2 ||
			!strings.Contains(stderr.String(), `invalid value "`+v+`" for flag --keep-releases: want 1 or more`) {
			t.Errorf("--keep-releases %s: exit %d, stderr %q", v, code, stderr.String())
		}
	}
}

func TestPeerFlags(t *testing.T) {
	base := []string{"--coordinator", "a:1", "--host-id", "h1", "--data-dir", "d", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem"}
	var stderr bytes.Buffer
	cfg, _, err := parseFlags(base, &stderr)
	if err != nil || cfg.PeerListen != "" || cfg.PeerMaxUploads != agent.DefaultPeerMaxUploads || cfg.PeerUploadRate != agent.DefaultPeerUploadRate {
		t.Fatalf("defaults: %q %d %d, %v", cfg.PeerListen, cfg.PeerMaxUploads, cfg.PeerUploadRate, err)
	}
	cfg, _, err = parseFlags(append(base, "--peer-listen", "10.0.0.1:7071", "--peer-max-uploads", "2", "--peer-upload-rate", "1048576"), &stderr)
	if err != nil || cfg.PeerListen != "10.0.0.1:7071" || cfg.PeerMaxUploads != 2 || cfg.PeerUploadRate != 1<<20 {
		t.Fatalf("set: %+v, %v", cfg, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--peer-max-uploads", "0"}, `invalid value "0" for flag --peer-max-uploads: want 1 to 1024`},
		{[]string{"--peer-max-uploads", "1025"}, `invalid value "1025" for flag --peer-max-uploads`},
		{[]string{"--max-revocations", "0"}, `invalid value "0" for flag --max-revocations: want 1 to 100000`},
		{[]string{"--max-revocations", "100001"}, `invalid value "100001" for flag --max-revocations`},
		{[]string{"--peer-upload-rate", "1000"}, `invalid value "1000" for flag --peer-upload-rate: want at least 65536`},
		{[]string{"--peer-listen", ":7071"}, "peer_advertise: required when peer_listen"},
		{[]string{"--peer-listen", "nonsense"}, `peer_listen: "nonsense": want host:port`},
		{[]string{"--peer-advertise", "h:1"}, "peer_advertise: \"h:1\" without peer_listen"},
	} {
		stderr.Reset()
		if code := run(context.Background(), append(append([]string{}, base...), c.args...), io.Discard, &stderr); code != 2 ||
			!strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", c.args, code, stderr.String(), c.want)
		}
	}
	stderr.Reset()
	insecure := []string{"--coordinator", "a:1", "--host-id", "h1", "--data-dir", "d", "--insecure", "--peer-listen", "127.0.0.1:7071"}
	if code := run(context.Background(), insecure, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "mutual TLS only, not with insecure") {
		t.Errorf("--insecure --peer-listen: exit %d, stderr %q", code, stderr.String())
	}
}

func TestVersionCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &stdout, &stderr); code != 0 || stdout.String() != version+"\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"version", "extra"}, &stdout, &stderr); code != 2 || stdout.Len() != 0 ||
		!strings.Contains(stderr.String(), `unexpected argument "extra"`) {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

func TestUpgradeDeadlineFlag(t *testing.T) {
	base := []string{"--coordinator", "a:1", "--host-id", "h1", "--data-dir", "d", "--insecure"}
	var stderr bytes.Buffer
	cfg, _, err := parseFlags(base, &stderr)
	if err != nil || cfg.UpgradeDeadline != agent.DefaultUpgradeDeadline {
		t.Fatalf("default: %v, %v", cfg.UpgradeDeadline, err)
	}
	cfg, _, err = parseFlags(append(base, "--upgrade-deadline", "20s"), &stderr)
	if err != nil || cfg.UpgradeDeadline != 20*time.Second {
		t.Fatalf("20s: %v, %v", cfg.UpgradeDeadline, err)
	}
}

// TestStopServicesDrainsWithHostFlags: the command's --host-id and
// --labels reach the running release's before_stop (${host.id} in its
// command, ${host.label.zone} in the service's env), which runs before the
// service is stopped; --no-drain runs none.
func TestStopServicesDrainsWithHostFlags(t *testing.T) {
	for _, noDrain := range []bool{false, true} {
		dataDir, out := t.TempDir(), t.TempDir()
		for _, d := range []string{"run", "state", "logs", "releases/web/1.0.0"} {
			if err := os.MkdirAll(filepath.Join(dataDir, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		asg := &v1.Assignment{Service: "web", Generation: 1,
			Release: &v1.Release{Service: "web", Version: "1.0.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 1}},
			Spec: &v1.ServiceSpec{Name: "web",
				Run:   &v1.RunSpec{Command: []string{"./run.sh"}, Env: map[string]string{"ZONE": "${host.label.zone}", "OUT": out}},
				Hooks: &v1.Hooks{BeforeStop: &v1.Hook{Command: []string{"/bin/sh", "-c", `echo "$0 $ZONE" > "$OUT/hook"`, "${host.id}"}}},
			}}
		reaped := leftRunning(t, dataDir, asg)
		args := []string{"stop-services", "--data-dir", dataDir, "--host-id", "h9", "--labels", "zone=z1"}
		if noDrain {
			args = append(args, "--no-drain")
		}
		var stderr bytes.Buffer
		if code := run(context.Background(), args, io.Discard, &stderr); code != 0 {
			t.Fatalf("%v: exit %d, stderr %s", args, code, stderr.String())
		}
		select {
		case <-reaped:
		case <-time.After(time.Minute): // failure deadline, not a measure
			t.Fatalf("%v returned with the service still running", args)
		}
		b, err := os.ReadFile(filepath.Join(out, "hook"))
		switch {
		case noDrain && !errors.Is(err, os.ErrNotExist):
			t.Errorf("--no-drain: hook file %q, %v; want no hook run", b, err)
		case !noDrain && (err != nil || string(b) != "h9 z1\n"):
			t.Errorf("hook wrote %q, %v; want %q", b, err, "h9 z1\n")
		}
	}
}

// mainEnv set to 1 makes the test binary the command itself (TestMain
// runs main), so that a test can signal a real fleetwave-agent process.
const mainEnv = "FLEETWAVE_AGENT_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// TestStopServicesSignalAbandonsDrain: the signal wiring of the command.
// A SIGTERM to a stop-services process while a before_stop runs (its
// timeout 4 min, the shutdown_delay an hour) kills the hook's process
// group, skips the delay and stops the service at once; the command exits
// 0 (every service stopped).
func TestStopServicesSignalAbandonsDrain(t *testing.T) {
	dataDir, out := t.TempDir(), t.TempDir()
	for _, d := range []string{"run", "state", "logs", "releases/web/1.0.0"} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	asg := &v1.Assignment{Service: "web", Generation: 1,
		Release: &v1.Release{Service: "web", Version: "1.0.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 1}},
		Spec: &v1.ServiceSpec{Name: "web",
			Run: &v1.RunSpec{Command: []string{"./run.sh"}, Env: map[string]string{"OUT": out}, ShutdownDelay: durationpb.New(time.Hour)},
			Hooks: &v1.Hooks{BeforeStop: &v1.Hook{Timeout: durationpb.New(4 * time.Minute),
				Command: []string{"/bin/sh", "-c", `echo "$$" > "$OUT/hook.pid.tmp"; mv "$OUT/hook.pid.tmp" "$OUT/hook.pid"; exec sleep 300`}}},
		}}
	reaped := leftRunning(t, dataDir, asg)

	var stderr bytes.Buffer
	cmd := exec.Command(os.Args[0], "stop-services", "--data-dir", dataDir, "--host-id", "h9")
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var hookPID int
	testkit.Eventually(t, time.Minute, "the before_stop running", func() bool {
		b, err := os.ReadFile(filepath.Join(out, "hook.pid"))
		if err != nil {
			return false
		}
		hookPID, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("stop-services: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute): // failure deadline, not a measure
		t.Fatalf("stop-services still runs a minute after SIGTERM (the hour's shutdown_delay?); stderr:\n%s", stderr.String())
	}
	select {
	case <-reaped:
	case <-time.After(time.Minute): // failure deadline, not a measure
		t.Fatal("stop-services exited with the service still running")
	}
	if err := syscall.Kill(hookPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the hook (pid %d) still runs after stop-services exited: %v", hookPID, err)
	}
	if !strings.Contains(stderr.String(), "drain abandoned") {
		t.Errorf("stderr lacks the abandoned drain:\n%s", stderr.String())
	}
}

// leftRunning is a data dir as an agent leaves it: the state records asg
// (current and last good, healthy) and a process of it runs (sleep, its
// PID file written); it returns a channel closed once that is reaped.
func leftRunning(t *testing.T, dataDir string, asg *v1.Assignment) <-chan struct{} {
	t.Helper()
	st, err := state.Open(filepath.Join(dataDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(&lifecycle.Snapshot{Service: asg.GetService(), Phase: v1.Phase_PHASE_HEALTHY, Generation: asg.GetGeneration(),
		Current: asg, LastGood: asg, Target: asg, CurrentOK: true}); err != nil {
		t.Fatal(err)
	}
	svc := exec.Command("sleep", "600")
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = svc.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = syscall.Kill(-svc.Process.Pid, syscall.SIGKILL); <-reaped })
	if _, err := supervise.WritePIDRecord(filepath.Join(dataDir, "run", asg.GetService()+".pid"), svc.Process.Pid, asg.GetRelease().GetVersion(), 1); err != nil {
		t.Fatal(err)
	}
	return reaped
}

// TestMaxRevocationsLoweredBelowFile: the real agent started with
// --max-revocations 2 on a data dir whose revocations file holds 3 (saved
// under a larger maximum) starts, enforces all 3 (none dropped: it fails
// closed), warns naming the flag, its value, the file, the count and what
// to do, and a clean stop leaves the 3 in the file.
func TestMaxRevocationsLoweredBelowFile(t *testing.T) {
	pki, dataDir := t.TempDir(), t.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	set := revocation.NewSet(0, time.Time{})
	var in []*v1.Revocation
	for _, id := range []string{"agent:h2", "agent:h3", "agent:h4"} {
		in = append(in, &v1.Revocation{Identity: id, RevokedAt: timestamppb.New(now), RevokedBy: "operator:admin", ExpiresAt: timestamppb.New(now.Add(time.Hour))})
	}
	if _, err := set.Merge(&v1.RevocationSet{Revision: 4, Revocations: in}, now); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dataDir, "revocations.pb")
	if _, err := set.Save(file); err != nil {
		t.Fatal(err)
	}
	metrics := ports.Addr(t)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(os.Args[0], "--coordinator", ports.Addr(t), "--host-id", "h1", "--data-dir", dataDir,
		"--tls-ca", filepath.Join(pki, tlsutil.CAFile), "--tls-cert", filepath.Join(pki, "agent-h1.pem"), "--tls-key", filepath.Join(pki, "agent-h1-key.pem"),
		"--metrics-listen", metrics, "--max-revocations", "2")
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	held := func() string {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "fleetwave_agent_revocations "); ok {
				return v
			}
		}
		return ""
	}
	testkit.Eventually(t, 30*time.Second, "the agent serving its metrics", func() bool {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logFile.Name())
			t.Fatalf("agent exited: %v\n%s", err, b)
		default:
		}
		return held() != ""
	})
	if got := held(); got != "3" {
		t.Fatalf("fleetwave_agent_revocations %s, want 3 (the file's, none dropped)", got)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("agent after SIGTERM: %v", err)
	}
	b, err := os.ReadFile(logFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"over --max-revocations 2", file, "holds 3 revocations", "raise --max-revocations to at least 3"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("log does not say %q:\n%s", w, b)
		}
	}
	l := revocation.NewSet(0, time.Time{})
	if err := l.Load(file, time.Now(), 0); err != nil || l.Len() != 3 || l.Revision() != 4 {
		t.Fatalf("file after the stop: %d entries, revision %d, %v; want 3, 4", l.Len(), l.Revision(), err)
	}
}

// TestSystemdNotifyAndWatchdog: run under a (fake) systemd unit with
// Type=notify and WatchdogSec (NOTIFY_SOCKET, WATCHDOG_USEC), the agent
// says READY=1 once it runs, then WATCHDOG=1 again and again, with no
// coordinator reachable; neither variable stays in its environment (its
// services must not inherit them). A malformed WATCHDOG_USEC is refused,
// named.
func TestSystemdNotifyAndWatchdog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	args := []string{"--coordinator", ports.Addr(t), "--host-id", "h1", "--data-dir", t.TempDir(), "--insecure"}

	t.Setenv(agent.EnvNotifySocket, sock)
	t.Setenv(agent.EnvWatchdogUsec, "soon")
	var stderr bytes.Buffer
	if code := run(context.Background(), args, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "WATCHDOG_USEC") {
		t.Fatalf("WATCHDOG_USEC=soon: exit %d, stderr %q; want 1 naming it", code, stderr.String())
	}

	t.Setenv(agent.EnvNotifySocket, sock)
	t.Setenv(agent.EnvWatchdogUsec, "400000")
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, args, io.Discard, io.Discard) }()
	defer func() {
		cancel()
		if code := <-exited; code != 0 {
			t.Errorf("exit %d", code)
		}
	}()
	var got []string
	buf := make([]byte, 256)
	for len(got) < 4 {
		if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, string(buf[:n]))
	}
	if strings.Join(got, " ") != "READY=1 WATCHDOG=1 WATCHDOG=1 WATCHDOG=1" {
		t.Fatalf("messages %q, want READY=1 then WATCHDOG=1s", got)
	}
	for _, k := range []string{agent.EnvNotifySocket, agent.EnvWatchdogUsec} {
		if v, ok := os.LookupEnv(k); ok {
			t.Errorf("%s=%q still in the agent's environment", k, v)
		}
	}
}
