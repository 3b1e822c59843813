package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestUpgradeRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if rec, err := loadUpgradeRecord(dir); rec != nil || err != nil {
		t.Fatalf("no record: %v, %v", rec, err)
	}
	want := &lifecycle.AgentUpgrade{Version: "v0.2.0", Generation: 4, From: "v0.1.0", State: lifecycle.AgentFailed, Reason: "why"}
	if err := saveUpgradeRecord(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadUpgradeRecord(dir)
	if err != nil || *got != *want {
		t.Fatalf("got %+v, %v", got, err)
	}
	if err := os.WriteFile(upgradeRecordPath(dir), []byte(`{"version":"v1","state":"maybe"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadUpgradeRecord(dir); err == nil || !strings.Contains(err.Error(), `state "maybe"`) {
		t.Fatalf("bad state: %v", err)
	}
}

func TestCheckAgentBinary(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	good := filepath.Join(dir, "good", agentBinary)
	writeScript(t, good, `[ "$1" = version ] && echo v0.2.0`)
	if err := checkAgentBinary(ctx, good, "v0.2.0"); err != nil {
		t.Fatal(err)
	}
	if err := checkAgentBinary(ctx, good, "v0.3.0"); err == nil || !strings.Contains(err.Error(), `printed "v0.2.0", not "v0.3.0"`) {
		t.Fatalf("wrong version: %v", err)
	}
	if err := checkAgentBinary(ctx, filepath.Join(dir, "none", agentBinary), "v0.2.0"); err == nil || !strings.Contains(err.Error(), "no fleetwave-agent at its root") {
		t.Fatalf("missing: %v", err)
	}
	plain := filepath.Join(dir, "plain", agentBinary)
	writeScript(t, plain, "echo v0.2.0")
	if err := os.Chmod(plain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkAgentBinary(ctx, plain, "v0.2.0"); err == nil || !strings.Contains(err.Error(), "not an executable file") {
		t.Fatalf("not executable: %v", err)
	}
	failing := filepath.Join(dir, "failing", agentBinary)
	writeScript(t, failing, "exit 3")
	if err := checkAgentBinary(ctx, failing, "v0.2.0"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("failing: %v", err)
	}
}

func TestValidateAgentAssignment(t *testing.T) {
	good := func() *v1.Assignment {
		return &v1.Assignment{Service: spec.AgentService, Generation: 2,
			Release: &v1.Release{Version: "v0.2.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("a", 64), Size: 10}}}
	}
	if err := validateAgentAssignment(good(), 100); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		mut  func(*v1.Assignment)
		want string
	}{
		{func(a *v1.Assignment) { a.Service = "web" }, `agent.service: "web"`},
		{func(a *v1.Assignment) { a.Generation = 0 }, "agent.generation: 0"},
		{func(a *v1.Assignment) { a.ReplacesGeneration = a.Generation }, "agent.replaces_generation: "},
		{func(a *v1.Assignment) { a.Release.Version = "../x" }, `agent.release.version: invalid version "../x"`},
		{func(a *v1.Assignment) { a.Release.Version = "current" }, `agent.release.version: "current" is reserved`},
		{func(a *v1.Assignment) { a.Release.Artifact.Sha256 = "x" }, "agent.release.artifact.sha256"},
		{func(a *v1.Assignment) { a.Release.Artifact.Size = 101 }, "agent.release.artifact.size: 101 is not within 1 and 100"},
		{func(a *v1.Assignment) { a.Release.Artifact.Url = "file:///etc/passwd" }, `agent.release.artifact.url: "file:///etc/passwd"`},
		{func(a *v1.Assignment) { a.Release = nil }, "agent.release: missing"},
	} {
		a := good()
		tt.mut(a)
		if err := validateAgentAssignment(a, 100); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want %q", a, err, tt.want)
		}
	}
}

// handoffFixture is a data dir with a trying record, an "executable" of
// the old agent and a new agent script.
type handoffFixture struct {
	cfg     Config
	up      *Upgrade
	exe     string
	pidFile string
}

func newHandoffFixture(t *testing.T, script string) *handoffFixture {
	t.Helper()
	dir := t.TempDir()
	f := &handoffFixture{exe: filepath.Join(dir, "bin", "fleetwave-agent"), pidFile: filepath.Join(dir, "new.pid")}
	writeScript(t, f.exe, "echo old agent")
	old := executable
	executable = func() (string, error) { return f.exe, nil }
	t.Cleanup(func() { executable = old })
	bin := filepath.Join(dir, "data", "releases", spec.AgentService, "v0.2.0", agentBinary)
	writeScript(t, bin, "env > "+f.pidFile+".env\necho $$ > "+f.pidFile+".tmp && mv "+f.pidFile+".tmp "+f.pidFile+"\n"+script)
	f.cfg = Config{HostID: "h1", DataDir: filepath.Join(dir, "data"), UpgradeDeadline: MinUpgradeDeadline}
	f.up = &Upgrade{Binary: bin, Record: lifecycle.AgentUpgrade{Version: "v0.2.0", Generation: 3, From: "v0.1.0", State: lifecycle.AgentTrying}}
	if err := saveUpgradeRecord(f.cfg.DataDir, &f.up.Record); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *handoffFixture) record(t *testing.T) *lifecycle.AgentUpgrade {
	t.Helper()
	rec, err := loadUpgradeRecord(f.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// newPID is the new agent's pid (it wrote it first thing).
func (f *handoffFixture) newPID(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(f.pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// An old agent killed -9 in its commit leaves the new binary's temp copy
// beside the installed executable; the next agent to start removes it (and
// nothing else there). Found by TestAgentKilledInUpgradeConverges seed 17.
func TestStartRemovesInterruptedCommitTemps(t *testing.T) {
	f := newHandoffFixture(t, "exit 0")
	if err := os.Remove(upgradeRecordPath(f.cfg.DataDir)); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(f.exe)
	left := filepath.Join(dir, ".fleetwave-agent.tmp-1717858588")
	other := filepath.Join(dir, "fleetwave-agent.previous")
	for _, p := range []string{left, other} {
		if err := os.WriteFile(p, []byte("x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := &agent{cfg: f.cfg, log: zerolog.Nop()}
	if err := a.startAgent(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); err == nil {
		t.Fatal("the interrupted commit's temp copy is still beside the executable")
	}
	for _, p := range []string{other, f.exe} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
}

// A new agent that confirms takes over: its binary becomes the executable,
// the old one is kept as .previous, the record says done, and it runs on.
func TestHandoffConfirmed(t *testing.T) {
	f := newHandoffFixture(t, `[ "$`+EnvConfirmFD+`" = 3 ] || exit 9
echo accepted >&3
exec sleep 600`)
	if !Handoff(context.Background(), f.cfg, f.up, []string{"--host-id", "h1"}, zerolog.Nop()) {
		t.Fatalf("not taken over: %+v", f.record(t))
	}
	pid := f.newPID(t)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if !alive(pid) {
		t.Fatal("the new agent is not running")
	}
	if rec := f.record(t); rec.State != lifecycle.AgentDone || rec.Reason != "" {
		t.Fatalf("record %+v", rec)
	}
	newBin, _ := os.ReadFile(f.up.Binary)
	exe, _ := os.ReadFile(f.exe)
	prev, _ := os.ReadFile(f.exe + ".previous")
	if string(exe) != string(newBin) || !strings.Contains(string(prev), "echo old agent") {
		t.Fatalf("executable %q, previous %q", exe, prev)
	}
	if fi, err := os.Stat(f.exe); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("executable: %v, %v", fi, err)
	}
	// The new agent runs from its release directory and is told which
	// executable its own upgrade replaces.
	env, _ := os.ReadFile(f.pidFile + ".env")
	if !strings.Contains(string(env), "\n"+EnvExecutable+"="+f.exe+"\n") {
		t.Fatalf("the new agent's environment has no %s=%s:\n%s", EnvExecutable, f.exe, env)
	}
}

// A new agent that exits before it confirms: failed, the executable kept.
func TestHandoffNewAgentExits(t *testing.T) {
	f := newHandoffFixture(t, "exit 4")
	if Handoff(context.Background(), f.cfg, f.up, nil, zerolog.Nop()) {
		t.Fatal("taken over")
	}
	rec := f.record(t)
	if rec.State != lifecycle.AgentFailed || !strings.Contains(rec.Reason, "exited before it connected (exit status 4): went back to v0.1.0") {
		t.Fatalf("record %+v", rec)
	}
	if b, _ := os.ReadFile(f.exe); !strings.Contains(string(b), "echo old agent") {
		t.Fatalf("executable replaced: %q", b)
	}
	if _, err := os.Stat(f.exe + ".previous"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("previous: %v", err)
	}
}

// A new agent that never confirms is stopped at the deadline (and one that
// ignores SIGTERM is killed after the grace): failed, nothing left running.
func TestHandoffDeadline(t *testing.T) {
	f := newHandoffFixture(t, "exec sleep 600")
	if Handoff(context.Background(), f.cfg, f.up, nil, zerolog.Nop()) {
		t.Fatal("taken over")
	}
	rec := f.record(t)
	if rec.State != lifecycle.AgentFailed || !strings.Contains(rec.Reason, "did not connect and confirm within 1s") {
		t.Fatalf("record %+v", rec)
	}
	pid := f.newPID(t)
	testkit.Eventually(t, 30*time.Second, "the new agent is gone", func() bool { return !alive(pid) })
	if b, _ := os.ReadFile(f.exe); !strings.Contains(string(b), "echo old agent") {
		t.Fatalf("executable replaced: %q", b)
	}
}

// The old agent told to stop during the handover stops the new one.
func TestHandoffStopped(t *testing.T) {
	f := newHandoffFixture(t, "exec sleep 600")
	f.cfg.UpgradeDeadline = MaxUpgradeDeadline
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		testkit.Eventually(t, 30*time.Second, "the new agent started", func() bool {
			_, err := os.Stat(f.pidFile)
			return err == nil
		})
		cancel()
	}()
	if Handoff(ctx, f.cfg, f.up, nil, zerolog.Nop()) {
		t.Fatal("taken over")
	}
	if rec := f.record(t); rec.State != lifecycle.AgentFailed || !strings.Contains(rec.Reason, "was stopped") {
		t.Fatalf("record %+v", rec)
	}
	pid := f.newPID(t)
	testkit.Eventually(t, 30*time.Second, "the new agent is gone", func() bool { return !alive(pid) })
}

// After a handover systemd is told the new main pid on the unit's notify
// socket, and the new agent gets the socket for its own upgrades.
func TestHandoffTellsSystemdTheNewMainPID(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The new agent keeps the unit's watchdog: its interval, without
	// WATCHDOG_PID (its pid is not the unit's until MAINPID=).
	f := newHandoffFixture(t, `[ "$NOTIFY_SOCKET" = "`+sock+`" ] || exit 9
[ "$WATCHDOG_USEC" = "30000000" ] || exit 8
[ -z "${WATCHDOG_PID+set}" ] || exit 7
printf 'accepted\nwatchdog\n' >&3
exec sleep 600`)
	f.cfg.NotifySocket = sock
	f.cfg.Watchdog = &Watchdog{socket: sock, interval: 30 * time.Second, log: zerolog.Nop()}
	t.Setenv(EnvWatchdogPID, "1") // as systemd set it for this agent: not passed on
	if !Handoff(context.Background(), f.cfg, f.up, nil, zerolog.Nop()) {
		t.Fatalf("not taken over: %+v", f.record(t))
	}
	pid := f.newPID(t)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	buf := make([]byte, 64)
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "MAINPID="+strconv.Itoa(pid) {
		t.Fatalf("notify: %q, %v; want MAINPID=%d", buf[:n], err, pid)
	}
}

func TestNotifySocketFromEnv(t *testing.T) {
	t.Setenv(EnvNotifySocket, "/run/systemd/notify")
	if got := NotifySocketFromEnv(); got != "/run/systemd/notify" {
		t.Fatalf("got %q", got)
	}
	if v, ok := os.LookupEnv(EnvNotifySocket); ok {
		t.Fatalf("still in the environment: %q", v)
	}
}

// With trusted keys an agent release must be signed for the reserved
// service and its version: unsigned, a service release's signature over the
// same bytes, or a lower sequence than one accepted are refused; a good
// one raises the agent's own floor.
func TestVerifyAgentRelease(t *testing.T) {
	k := newTestKey(t)
	a := &agent{cfg: Config{DataDir: t.TempDir()}, trusted: trustedKeys{k.id: k.pub}}
	now := time.Now()
	art := &v1.Artifact{Sha256: strings.Repeat("b", 64), Size: 42}
	agentAsg := func(gen int64) *v1.Assignment {
		return &v1.Assignment{Service: spec.AgentService, Generation: gen, Spec: spec.AgentSpec(nil),
			Release: &v1.Release{Service: spec.AgentService, Version: "v0.2.0", Artifact: art}}
	}
	if err := a.verifyAgent(agentAsg(1)); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("unsigned: %v", err)
	}
	// The same bytes released and signed as the service web: the signed
	// manifest names web, not the agent.
	web := k.signSeq(t, &v1.Assignment{Service: "web", Generation: 1, Spec: spec.AgentSpec(nil),
		Release: &v1.Release{Service: "web", Version: "v0.2.0", Artifact: art}}, 9, now, now.Add(time.Hour))
	replay := agentAsg(2)
	replay.Release.Signed = web.GetRelease().GetSigned()
	if err := a.verifyAgent(replay); err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "signed manifest has service web, the release fleetwave-agent") {
		t.Fatalf("a service's signature: %v", err)
	}
	good := k.signSeq(t, agentAsg(3), 5, now, now.Add(time.Hour))
	if err := a.verifyAgent(good); err != nil {
		t.Fatalf("signed for the agent: %v", err)
	}
	if fl, err := a.floors.get(spec.AgentService); err != nil || fl.Sequence != 5 {
		t.Fatalf("agent floor %+v, %v", fl, err)
	}
	older := agentAsg(4)
	older.Release.Version = "v0.1.5"
	older = k.signSeq(t, older, 4, now, now.Add(time.Hour))
	if err := a.verifyAgent(older); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("below the floor: %v", err)
	}
}

// Under systemd without a notify socket the agent refuses to upgrade
// itself (systemd could not follow the new agent) and says how to fix it.
func TestPrepareAgentRefusedUnderSystemdWithoutNotify(t *testing.T) {
	t.Setenv("INVOCATION_ID", "0123456789abcdef")
	a := &agent{cfg: Config{DataDir: t.TempDir()}}
	_, err := a.prepareAgent(context.Background(), &v1.Assignment{Service: spec.AgentService, Generation: 1,
		Release: &v1.Release{Version: "v0.2.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("c", 64), Size: 1}}})
	if err == nil || !strings.Contains(err.Error(), "without NotifyAccess=main") {
		t.Fatalf("prepare: %v", err)
	}
}

func TestExecutableFromEnv(t *testing.T) {
	t.Setenv(EnvExecutable, "/usr/local/bin/fleetwave-agent")
	if got := ExecutableFromEnv(); got != "/usr/local/bin/fleetwave-agent" {
		t.Fatalf("got %q", got)
	}
	if v, ok := os.LookupEnv(EnvExecutable); ok {
		t.Fatalf("still in the environment: %q", v)
	}
	// Configured, it is what an upgrade replaces, not the running binary.
	exe := filepath.Join(t.TempDir(), "fleetwave-agent")
	writeScript(t, exe, "true")
	if got, err := installedExecutable(Config{Executable: exe}); err != nil || got != exe {
		t.Fatalf("installedExecutable: %q, %v", got, err)
	}
}

// stageAgentRelease unpacks an agent artifact whose fleetwave-agent is a
// script printing printed, as version, the way a fetched one is.
func stageAgentRelease(t *testing.T, a *agent, version, printed string) *v1.Assignment {
	t.Helper()
	script := []byte("#!/bin/sh\necho " + printed + "\n")
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: agentBinary, Mode: 0o755, Size: int64(len(script)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(script); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	want := install.Artifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(buf.Len())}
	ctx := context.Background()
	f, err := a.inst.Fetch(ctx, bytes.NewReader(buf.Bytes()), want)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := a.inst.Verify(f, want)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.inst.Stage(ctx, spec.AgentService, version, ver); err != nil {
		t.Fatal(err)
	}
	return &v1.Assignment{Service: spec.AgentService, Generation: 1,
		Release: &v1.Release{Version: version, Artifact: &v1.Artifact{Sha256: want.SHA256, Size: want.Size}}}
}

// Preparing an unpacked agent release checks its binary's version and
// keeps the newest --keep-releases agent binaries besides the target and
// the running one.
func TestPrepareAgentChecksAndPrunes(t *testing.T) {
	dir := t.TempDir()
	inst, err := install.New(dir, install.Limits{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{cfg: Config{DataDir: dir, KeepReleases: 1, AgentVersion: "v0.1.0"}, inst: inst, log: zerolog.Nop()}
	for _, v := range []string{"v0.1.0", "v0.1.1", "v0.1.2"} {
		stageAgentRelease(t, a, v, v)
	}
	bad := stageAgentRelease(t, a, "v0.1.3", "v0.1.4")
	if _, err := a.prepareAgent(context.Background(), bad); err == nil || !strings.Contains(err.Error(), `printed "v0.1.4", not "v0.1.3"`) {
		t.Fatalf("wrong version: %v", err)
	}
	good := stageAgentRelease(t, a, "v0.2.0", "v0.2.0")
	bin, err := a.prepareAgent(context.Background(), good)
	if err != nil || bin != filepath.Join(inst.ReleaseDir(spec.AgentService, "v0.2.0"), agentBinary) {
		t.Fatalf("prepare: %q, %v", bin, err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "releases", spec.AgentService))
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			kept = append(kept, e.Name())
		}
	}
	if strings.Join(kept, " ") != "v0.1.0 v0.2.0" {
		t.Fatalf("agent releases kept: %v, want the running v0.1.0 and the target v0.2.0 (the newest)", kept)
	}
}

// A new agent whose old agent is gone before it confirmed stops (and does
// not confirm); one that confirmed is not stopped by the old agent's exit
// once the old agent recorded the upgrade done (TestWatchParentOldGoneBeforeDone).
func TestWatchParent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ppid atomic.Int64
		ppid.Store(100)
		getppid := func() int { return int(ppid.Load()) }
		confirms := 0
		ctx, confirm, _ := watchParent(context.Background(), func() { confirms++ }, 100, getppid, time.Second, func() bool { return false }, zerolog.Nop())
		time.Sleep(3 * time.Second) // fake time: three checks, the parent there
		synctest.Wait()
		if ctx.Err() != nil {
			t.Fatal("stopped while the old agent is there")
		}
		ppid.Store(1) // the old agent died: reparented
		time.Sleep(time.Second)
		synctest.Wait()
		if ctx.Err() == nil {
			t.Fatal("not stopped after the old agent died")
		}
		confirm()
		if confirms != 0 {
			t.Fatal("confirmed without the old agent")
		}

		ppid.Store(100)
		ctx, confirm, handedOver := watchParent(context.Background(), func() { confirms++ }, 100, getppid, time.Second, func() bool { return false }, zerolog.Nop())
		confirm()
		confirm()
		ppid.Store(1) // the old agent exits after the confirmation, the upgrade recorded done
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if ctx.Err() != nil || confirms != 1 {
			t.Fatalf("after confirming: stopped %v, %d confirmations", ctx.Err(), confirms)
		}
		select {
		case <-handedOver:
		default:
			t.Fatal("the handover's end not told after the old agent recorded it done and exited")
		}
	})
}

// A new agent that confirmed, whose old agent is gone while the upgrade
// record still says TRYING (the old agent killed -9 between reading the
// confirmation and recording the upgrade done: the new binary maybe not
// installed), stops: it runs outside what the supervisor knows, the
// installed executable started again finds the data dir taken, and the
// record would stay TRYING for good. Found by
// TestAgentKilledInUpgradeConverges.
func TestWatchParentOldGoneBeforeDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ppid atomic.Int64
		ppid.Store(100)
		var trying atomic.Bool
		trying.Store(true)
		ctx, confirm, _ := watchParent(context.Background(), func() {}, 100, func() int { return int(ppid.Load()) }, time.Second,
			trying.Load, zerolog.Nop())
		confirm()
		time.Sleep(3 * time.Second) // the old agent commits
		synctest.Wait()
		if ctx.Err() != nil {
			t.Fatal("stopped while the old agent is there")
		}
		ppid.Store(1) // killed before it recorded the upgrade done
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if ctx.Err() == nil {
			t.Fatal("the new agent runs on after its old agent died before recording the upgrade done")
		}
	})
}

// A coordinator must not install an agent release as an ordinary service:
// it would share DATA_DIR/releases/fleetwave-agent/<version>/ with the
// agent's own upgrade, be given to the spec's run.user (ownRelease) and be
// changed by that user's command, then run as root by an agent upgrade of
// the same version and digest (already staged: not fetched again).
func TestUpgradeServiceAssignmentOfReservedNameRefused(t *testing.T) {
	asg := testAssignment("v0.3.0", 1, strings.Repeat("a", 64), 10, "")
	asg.Service, asg.Release.Service, asg.Spec.Name = spec.AgentService, spec.AgentService, spec.AgentService
	err := validateAssignment(asg, testHostID, map[string]string{"port": "1"}, 1000, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("a service assignment of %s: %v, want refused as reserved", spec.AgentService, err)
	}
}

// `fleetwave-agent version` of a new binary is bounded: a binary that
// leaves a child holding its stdout does not keep the agent waiting for
// ever (the timeout killed only the binary, and the agent read on until
// every holder of the pipe closed it), and one that prints without end
// does not fill the agent's memory.
func TestUpgradeCheckAgentBinaryBounded(t *testing.T) {
	dir := t.TempDir()
	held := filepath.Join(dir, "held", agentBinary)
	// The child outlives the binary and keeps stdout; the binary prints
	// the right version and exits 0.
	writeScript(t, held, `sleep 3600 & echo $! > `+filepath.Join(dir, "child.pid")+`; echo v0.2.0`)
	loud := filepath.Join(dir, "loud", agentBinary)
	writeScript(t, loud, `exec yes v0.2.0`)
	// No timer: a check that never returns fails the test by its timeout.
	if err := checkAgentBinary(context.Background(), held, "v0.2.0"); err == nil || !strings.Contains(err.Error(), "holding its output") {
		t.Fatalf("held: %v, want refused for leaving a process holding its output", err)
	}
	if err := checkAgentBinary(context.Background(), loud, "v0.2.0"); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("loud: %v, want refused for its output", err)
	}
	// Nothing of the check is left running.
	b, err := os.ReadFile(filepath.Join(dir, "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(time.Minute)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the version check's child %d is still running", pid)
		}
		runtime.Gosched()
	}
}

// An agent preparing (or holding, until its services settle) a new binary
// goes no further once its assignment is gone (the first agent rollout
// aborted) or says to stay on the version it runs (a failed rollout's
// hosts are assigned the stable agent): the preparation is cancelled and
// its end hands over to nothing.
func TestUpgradeWithdrawnMidPrepareDoesNotHandOver(t *testing.T) {
	for _, tt := range []struct {
		name string
		next func(a *agent) *v1.Assignment
	}{
		{"gone", func(*agent) *v1.Assignment { return nil }},
		{"back to the running version", func(a *agent) *v1.Assignment {
			return &v1.Assignment{Service: spec.AgentService, Generation: 3,
				Release: &v1.Release{Version: a.cfg.AgentVersion, Artifact: &v1.Artifact{Sha256: strings.Repeat("d", 64), Size: 10}}}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, prepared := range []bool{false, true} {
				a := &agent{cfg: Config{DataDir: t.TempDir(), AgentVersion: "v0.1.0", MaxArtifactBytes: 1 << 20}, rep: newReporter(spec.MaxServicesPerHost), log: zerolog.Nop()}
				up := &v1.Assignment{Service: spec.AgentService, Generation: 2,
					Release: &v1.Release{Version: "v0.2.0", Artifact: &v1.Artifact{Sha256: strings.Repeat("e", 64), Size: 10}}}
				cancelled := false
				a.up.asg, a.up.cancel = up, func() { cancelled = true }
				busy := &service{name: "web", m: lifecycle.New("web")}
				if prepared {
					// Ready, waiting for a service in the middle of something.
					busy.blocked = true
					a.services = map[string]*service{"web": busy}
					a.up.cancel, cancelled = nil, true
					a.agentPrepared(agentPreparedEv{asg: up, binary: "/new/fleetwave-agent"})
					if a.up.stop || a.up.binary == "" {
						t.Fatalf("setup: stop %v, binary %q", a.up.stop, a.up.binary)
					}
				}
				a.agentAssigned(tt.next(a))
				if !cancelled {
					t.Fatalf("prepared %v: the preparation was not cancelled", prepared)
				}
				if !prepared {
					a.agentPrepared(agentPreparedEv{asg: up, binary: "/new/fleetwave-agent"})
				}
				busy.blocked = false
				a.maybeHandOver()
				if a.up.stop {
					t.Fatalf("prepared %v: the agent hands over to v0.2.0, no longer assigned", prepared)
				}
			}
		})
	}
}

// A new agent that closes its confirmation pipe without the line but runs
// on is still held to the deadline: the old agent waited for its exit
// with no deadline at all, while it ran the host unconfirmed.
func TestHandoffPipeClosedWithoutConfirmationKeepsDeadline(t *testing.T) {
	f := newHandoffFixture(t, "exec 3>&-\nexec sleep 600")
	if Handoff(context.Background(), f.cfg, f.up, nil, zerolog.Nop()) {
		t.Fatal("taken over")
	}
	rec := f.record(t)
	if rec.State != lifecycle.AgentFailed || !strings.Contains(rec.Reason, "did not connect and confirm within 1s") {
		t.Fatalf("record %+v", rec)
	}
	pid := f.newPID(t)
	testkit.Eventually(t, 30*time.Second, "the new agent is gone", func() bool { return !alive(pid) })
}

// With trusted keys a validly signed agent release older than the running
// agent is a downgrade even where the agent's floor is still 0 (every host
// whose agent was installed by hand, before its first fleet upgrade): a
// replayed old (say vulnerable) agent must come with a signed rollback
// statement.
func TestUpgradeVerifyAgentRefusesOlderThanRunning(t *testing.T) {
	k := newTestKey(t)
	a := &agent{cfg: Config{DataDir: t.TempDir(), AgentVersion: "v0.3.0"}, trusted: trustedKeys{k.id: k.pub}}
	now := time.Now()
	asg := func(v string, gen int64) *v1.Assignment {
		return &v1.Assignment{Service: spec.AgentService, Generation: gen, Spec: spec.AgentSpec(nil),
			Release: &v1.Release{Service: spec.AgentService, Version: v, Artifact: &v1.Artifact{Sha256: strings.Repeat("b", 64), Size: 42}}}
	}
	old := k.signSeq(t, asg("v0.2.0", 1), 4, now, now.Add(time.Hour))
	if err := a.verifyAgent(old); err == nil || !strings.Contains(err.Error(), "older than the running agent v0.3.0") {
		t.Fatalf("older signed agent on a floor of 0: %v, want refused", err)
	}
	if fl, err := a.floors.get(spec.AgentService); err != nil || fl.Sequence != 0 {
		t.Fatalf("floor raised by a refused downgrade: %+v, %v", fl, err)
	}
	// A signed rollback statement allows it; a newer agent needs none.
	if err := a.verifyAgent(k.rollback(t, old, 4, "", now, now.Add(time.Hour))); err != nil {
		t.Fatalf("older agent with a rollback statement: %v", err)
	}
	if err := a.verifyAgent(k.signSeq(t, asg("v0.4.0", 2), 6, now, now.Add(time.Hour))); err != nil {
		t.Fatalf("newer agent: %v", err)
	}
	// An unnumbered running agent (a build from source) cannot tell.
	a.cfg.AgentVersion = "dev"
	if err := a.verifyAgent(k.signSeq(t, asg("v0.5.0", 3), 7, now, now.Add(time.Hour))); err != nil {
		t.Fatalf("from dev: %v", err)
	}
}

// While a handover waits for the new agent the run loop has stopped, yet
// systemd's watchdog is still told the agent is alive (else a handover
// longer than half of WatchdogSec would get the old agent killed); once
// the handover failed and the loop does not turn, it is not.
func TestHandoffKeepsTheWatchdog(t *testing.T) {
	sd := newFakeSystemd(t)
	f := newHandoffFixture(t, "exec sleep 600") // never confirms: the 1 s deadline
	w := &Watchdog{socket: sd.path, interval: 100 * time.Millisecond, log: zerolog.Nop()}
	w.armed.Store(true)
	f.cfg.NotifySocket, f.cfg.Watchdog = sd.path, w
	ctx, cancel := context.WithCancel(context.Background())
	wdDone := make(chan struct{})
	go func() { defer close(wdDone); w.Run(ctx, 10*time.Millisecond) }()
	defer func() { cancel(); <-wdDone }()
	w.Alive(time.Now().Add(-time.Hour)) // the loop stopped long ago
	if Handoff(context.Background(), f.cfg, f.up, nil, zerolog.Nop()) {
		t.Fatal("taken over")
	}
	pings := 0
	for _, m := range drain(sd.msgs) {
		if m == "WATCHDOG=1" {
			pings++
		}
	}
	// 1 s of handover at a ping every 25 ms: any is enough to show it.
	if pings == 0 {
		t.Fatal("no WATCHDOG=1 during the handover")
	}
	if w.hold.Load() {
		t.Error("still held after the handover")
	}
}

// Under a unit with a watchdog, a new agent that confirms without saying
// it keeps the watchdog (an agent older than the watchdog: a rollback, a
// downgrade) is not made the unit's main process: systemd would kill it
// at WatchdogSec, then start it again from the executable it replaced and
// stop it at TimeoutStartSec (it never says READY=1), for ever. The old
// agent stops it and runs on, reporting why. Without a watchdog it takes
// over as before.
func TestHandoffRefusesANewAgentWithoutTheWatchdog(t *testing.T) {
	sd := newFakeSystemd(t)
	// An older agent's confirmation: the line, and the pipe closed.
	f := newHandoffFixture(t, "echo accepted >&3\nexec 3>&-\nexec sleep 600")
	f.cfg.NotifySocket = sd.path
	f.cfg.Watchdog = &Watchdog{socket: sd.path, interval: 30 * time.Second, log: zerolog.Nop()}
	f.cfg.Watchdog.armed.Store(true)
	if Handoff(context.Background(), f.cfg, f.up, nil, zerolog.Nop()) {
		pid := f.newPID(t)
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
		t.Fatalf("taken over: %+v", f.record(t))
	}
	rec := f.record(t)
	if rec.State != lifecycle.AgentFailed || !strings.Contains(rec.Reason, "does not keep systemd's watchdog") {
		t.Fatalf("record %+v", rec)
	}
	pid := f.newPID(t)
	testkit.Eventually(t, 30*time.Second, "the new agent is gone", func() bool { return !alive(pid) })
	if b, _ := os.ReadFile(f.exe); !strings.Contains(string(b), "echo old agent") {
		t.Fatalf("executable replaced: %q", b)
	}
	for _, m := range drain(sd.msgs) {
		if strings.HasPrefix(m, "MAINPID=") {
			t.Fatalf("systemd told %s", m)
		}
	}
}

// TestConfirmSaysItKeepsTheWatchdog: what a new agent writes to confirm
// is the line and the watchdog line (TestHandoffTellsSystemdTheNewMainPID
// hands over to a new agent writing them under a watchdog), and the
// descriptor is closed after them.
func TestConfirmSaysItKeepsTheWatchdog(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fd, err := syscall.Dup(int(w.Fd())) // the new agent's own descriptor, closed by it
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvConfirmFD, strconv.Itoa(fd))
	confirm, err := ConfirmFromEnv()
	if err != nil || confirm == nil {
		t.Fatalf("ConfirmFromEnv: no confirmation (%v)", err)
	}
	confirm()
	b, err := io.ReadAll(r) // EOF: the new agent's end is closed
	if err != nil || string(b) != "accepted\nwatchdog\n" {
		t.Fatalf("confirmation %q, %v", b, err)
	}
}
