package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
)

// testUser creates an unprivileged user for the test (removed at its end).
func testUser(t *testing.T) *user.User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running a service as another user needs the agent to be root (useradd too)")
	}
	name := fmt.Sprintf("fwtest%d", os.Getpid()%100000)
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name).CombinedOutput()
	if err != nil {
		t.Skipf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// traversable opens dir and its parents up to the temporary directory
// for others to pass through (t.TempDir makes them 0700).
func traversable(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRunAsUser: with run.user the service and its hooks run as that user
// (uid and group), the release's files are theirs (the service writes
// into its release), and a user the host does not have is refused with
// the field and the name.
func TestRunAsUser(t *testing.T) {
	u := testUser(t)
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	traversable(t, dataDir)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	run := "#!/bin/sh\necho \"service uid=$(id -u) gid=$(id -g)\"\ntouch ./written-by-the-service\nexec sleep 300\n"
	hook := "#!/bin/sh\necho \"hook $FLEETWAVE_HOOK uid=$(id -u) gid=$(id -g)\"\n"
	art := tarGz(t, map[string]string{"run.sh": run, "check.sh": goodCheck, "hook.sh": hook})
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.Run.User = u.Username
	a.Spec.Hooks = &v1.Hooks{AfterInstall: &v1.Hook{Command: []string{"./hook.sh"}}, BeforeStart: &v1.Hook{Command: []string{"./hook.sh"},
		Timeout: durationpb.New(time.Minute)}}
	fc.assign(a)
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	ids := fmt.Sprintf("uid=%s gid=%s", u.Uid, u.Gid)
	log, err := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hook after_install " + ids, "hook before_start " + ids, "service " + ids} {
		if !strings.Contains(string(log), want) {
			t.Errorf("service log has no %q:\n%s", want, log)
		}
	}
	rel := filepath.Join(dataDir, "releases", testSvc, "1.0.0")
	for _, f := range []string{".", "run.sh", "written-by-the-service"} {
		fi, err := os.Lstat(filepath.Join(rel, f))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if strconv.Itoa(int(st.Uid)) != u.Uid || strconv.Itoa(int(st.Gid)) != u.Gid {
			t.Errorf("%s owned by %d:%d, want %s:%s", f, st.Uid, st.Gid, u.Uid, u.Gid)
		}
	}
	pid := readPID(t, filepath.Join(dataDir, "run", testSvc+".pid"))
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || !strings.Contains(string(status), "\nUid:\t"+u.Uid+"\t") {
		t.Fatalf("the service's process %d: %v\n%s", pid, err, status)
	}

	bad := testAssignment("2.0.0", 2, fc.addArtifact(art), int64(len(art)), "")
	bad.Spec.Run.User = "fleetwave-no-such-user"
	fc.assign(bad)
	var reason string
	fc.waitFor(t, "2.0.0 refused", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r := lastReport(rs, testSvc)
		reason = r.GetReason()
		return r.GetGeneration() == 2 && r.GetPhase() == v1.Phase_PHASE_FAILED
	})
	if want := `invalid assignment: spec.run.user: no user "fleetwave-no-such-user" on this host`; reason != want {
		t.Fatalf("reason %q, want %q", reason, want)
	}
	if readPID(t, filepath.Join(dataDir, "run", testSvc+".pid")) != pid || !alive(pid) {
		t.Fatal("the running release was touched")
	}
}

// TestExecChecksRunAsUser: with run.user the release's exec checks run as
// that user and group (not as the agent, root), from the release's
// directory, which is theirs.
func TestExecChecksRunAsUser(t *testing.T) {
	u := testUser(t)
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	traversable(t, dataDir)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	check := "#!/bin/sh\necho \"check uid=$(id -u) gid=$(id -g)\" > ./checked-as.tmp && mv ./checked-as.tmp ./checked-as\n"
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": check})
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.Run.User = u.Username
	fc.assign(a)
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	got, err := os.ReadFile(filepath.Join(dataDir, "releases", testSvc, "1.0.0", "checked-as"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("check uid=%s gid=%s\n", u.Uid, u.Gid); string(got) != want {
		t.Fatalf("the exec check ran as %q, want %q", got, want)
	}
}

// TestNotifyAsUser: a service with run.user and ready: notify gets a notify
// socket its user can reach (in notify-users/, mode 0711: passed through,
// not listed; the socket 0600 and the user's), says READY=1 from its own
// process and becomes healthy; its socket is reachable by no other user:
// the agent's own notify directory stays 0700.
func TestNotifyAsUser(t *testing.T) {
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no " + py + " to send READY=1 from the service")
	}
	u := testUser(t)
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	traversable(t, dataDir)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	// The service's own process (exec'd) sends READY=1, then sleeps.
	run := "#!/bin/sh\necho \"service uid=$(id -u) notify=$NOTIFY_SOCKET\"\nexec " + py +
		" -c 'import os, socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"]); print(\"ready sent\", flush=True); time.sleep(300)'\n"
	art := tarGz(t, map[string]string{"run.sh": run, "check.sh": goodCheck})
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.Run.User = u.Username
	a.Spec.Run.Ready = "notify"
	a.Spec.Run.ReadyTimeout = durationpb.New(20 * time.Second)
	fc.assign(a)
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	log, err := os.ReadFile(filepath.Join(dataDir, "logs", testSvc+".log"))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dataDir, "notify-users", testSvc+"-1")
	if !strings.Contains(string(log), "service uid="+u.Uid+" notify="+sock) || !strings.Contains(string(log), "ready sent") {
		t.Fatalf("service log:\n%s", log)
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 || strconv.Itoa(int(st.Uid)) != u.Uid || strconv.Itoa(int(st.Gid)) != u.Gid {
		t.Errorf("notify socket %s: mode %v, owner %d:%d; want a socket 0600 of %s:%s", sock, fi.Mode(), st.Uid, st.Gid, u.Uid, u.Gid)
	}
	for dir, mode := range map[string]os.FileMode{filepath.Dir(sock): 0o711, filepath.Join(dataDir, "notify"): 0o700} {
		if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", dir, fi.Mode().Perm(), mode)
		}
	}
}

// TestOwnReleaseStaysInside: giving a release to run.user changes nothing
// outside it, whatever the tree holds or becomes while the agent (root)
// walks it: a link to a directory or a file outside is changed itself, a
// hard link to a file outside is left alone, and a directory swapped for
// a link to one outside after it was listed is not entered (the service
// user, writing in its release, can do that). Everything else is the
// user's, the release's root last. (Failed before: the walk went by path
// and chowned the hard link's file, and a swapped directory's contents
// outside the release: review, 3 of 3 runs.)
func TestOwnReleaseStaysInside(t *testing.T) {
	u := testUser(t)
	uid, _ := strconv.Atoi(u.Uid)
	base := t.TempDir()
	rel, victim, secret := filepath.Join(base, "rel"), filepath.Join(base, "victim"), filepath.Join(base, "secret")
	for _, d := range []string{filepath.Join(rel, "a", "b"), filepath.Join(rel, "z"), victim} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(rel, "a", "f1"), filepath.Join(rel, "a", "b", "f2"), filepath.Join(rel, "z", "f3"), filepath.Join(victim, "shadow"), secret} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for link, to := range map[string]string{"to-dir": victim, "to-file": secret} {
		if err := os.Symlink(to, filepath.Join(rel, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(secret, filepath.Join(rel, "hard")); err != nil {
		t.Fatal(err)
	}
	// Once the walk has listed the release, z becomes a link to victim.
	ownHook = func(dir string) {
		if dir != rel {
			return
		}
		if err := os.Rename(filepath.Join(rel, "z"), filepath.Join(base, "z.old")); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(victim, filepath.Join(rel, "z")); err != nil {
			t.Error(err)
		}
	}
	defer func() { ownHook = nil }()
	if err := ownRelease(t.Context(), rel, &v1.RunSpec{User: u.Username}); err != nil {
		t.Fatal(err)
	}
	owner := func(p string) int {
		t.Helper()
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return int(fi.Sys().(*syscall.Stat_t).Uid)
	}
	for _, p := range []string{victim, filepath.Join(victim, "shadow"), secret, filepath.Join(base, "z.old", "f3")} {
		if got := owner(p); got != 0 {
			t.Errorf("%s (outside the release) now owned by uid %d", p, got)
		}
	}
	for _, p := range []string{rel, filepath.Join(rel, "a"), filepath.Join(rel, "a", "b"), filepath.Join(rel, "a", "f1"), filepath.Join(rel, "a", "b", "f2"),
		filepath.Join(rel, "to-dir"), filepath.Join(rel, "to-file"), filepath.Join(rel, "z")} {
		if got := owner(p); got != uid {
			t.Errorf("%s owned by uid %d, want the run.user's %d", p, got, uid)
		}
	}
}

// TestOwnReleaseStopsWithContext: the walk stops at the next directory
// once its context ends (the agent stopping, or the assignment changed
// while a release of many entries is given away) and says why; what it
// had not reached, the release's root included, is left as it was.
func TestOwnReleaseStopsWithContext(t *testing.T) {
	u := testUser(t)
	rel := filepath.Join(t.TempDir(), "rel")
	deep := filepath.Join(rel, "a", "b")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(deep, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ownHook = func(dir string) {
		if dir == rel {
			cancel()
		}
	}
	defer func() { ownHook = nil }()
	err := ownRelease(ctx, rel, &v1.RunSpec{User: u.Username})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), filepath.Join(rel, "a")) {
		t.Fatalf("ownRelease with its context ended: %v, want context.Canceled naming %s", err, filepath.Join(rel, "a"))
	}
	for _, p := range []string{rel, filepath.Join(rel, "a"), deep, filepath.Join(deep, "f")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 0 {
			t.Errorf("%s owned by uid %d after the walk stopped, want root's (not reached)", p, uid)
		}
	}
}

// TestReleaseGivenToUserNotRunAsAnother: a release given to run.user is
// that user's to change (the service writes into it). Before, the same
// release assigned with another run.user, or none (root), was found staged
// and run as it was: the service had rewritten its ./run.sh, and the
// agent ran the user's script as root. Now such a release is unpacked
// again from its artifact when it is not current, and refused, naming
// spec.run.user, when it is (the running release cannot be replaced under
// its process).
func TestReleaseGivenToUserNotRunAsAnother(t *testing.T) {
	u := testUser(t)
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	traversable(t, dataDir)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	// As its user, the service replaces its own ./run.sh (its release is
	// its user's); as root it does not.
	run := "#!/bin/sh\necho \"service $(basename \"$PWD\") uid=$(id -u)\"\n" +
		"if [ \"$(id -u)\" != 0 ]; then printf '#!/bin/sh\\necho \"tampered uid=$(id -u)\"\\nexec sleep 300\\n' > ./run.new && chmod 755 ./run.new && mv ./run.new ./run.sh; fi\n" +
		"exec sleep 300\n"
	art1 := tarGz(t, map[string]string{"run.sh": run, "check.sh": goodCheck})
	sha1 := fc.addArtifact(art1)
	v1User := testAssignment("1.0.0", 1, sha1, int64(len(art1)), "")
	v1User.Spec.Run.User = u.Username
	fc.assign(v1User)
	fc.waitFor(t, "1.0.0 healthy as the user", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	runSh := filepath.Join(dataDir, "releases", testSvc, "1.0.0", "run.sh")
	testkit.EventuallyErr(t, time.Minute, "the service rewrote its run.sh", func() error {
		b, err := os.ReadFile(runSh)
		if err != nil || !strings.Contains(string(b), "tampered") {
			return fmt.Errorf("run.sh: %q, %v", b, err)
		}
		return nil
	})
	logPath := filepath.Join(dataDir, "logs", testSvc+".log")
	noTamperedRoot := func(step string) {
		t.Helper()
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "tampered uid=0") {
			t.Fatalf("%s: the script the service's user wrote ran as root:\n%s", step, b)
		}
	}

	// The same release, current, now without run.user: refused.
	v1Root := testAssignment("1.0.0", 2, sha1, int64(len(art1)), "")
	fc.assign(v1Root)
	var r *v1.ServiceReport
	fc.waitFor(t, "1.0.0 as root settled", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r = lastReport(rs, testSvc)
		return r.GetGeneration() == 2 && (r.GetPhase() == v1.Phase_PHASE_FAILED || r.GetPhase() == v1.Phase_PHASE_HEALTHY ||
			r.GetPhase() == v1.Phase_PHASE_REVERTED)
	})
	noTamperedRoot("the current release run as root")
	if !strings.Contains(r.GetReason(), "spec.run.user") || !strings.Contains(r.GetReason(), "uid "+u.Uid) {
		t.Fatalf("1.0.0 without run.user: %v %q, want a failure naming spec.run.user and uid %s", r.GetPhase(), r.GetReason(), u.Uid)
	}

	// Another release as root, then back to 1.0.0 (kept, the user's) as
	// root: unpacked again from its artifact.
	art2 := tarGz(t, map[string]string{"run.sh": run, "check.sh": goodCheck, "two": "2"})
	fc.assign(testAssignment("2.0.0", 3, fc.addArtifact(art2), int64(len(art2)), ""))
	fc.waitFor(t, "2.0.0 healthy as root", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 3, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	fc.assign(testAssignment("1.0.0", 4, sha1, int64(len(art1)), ""))
	fc.waitFor(t, "1.0.0 healthy as root", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 4, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	noTamperedRoot("a kept release of the user's run as root")
	b, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(b), "service 1.0.0 uid=0") {
		t.Fatalf("1.0.0's own run.sh did not run as root: %v\n%s", err, b)
	}
	fi, err := os.Lstat(filepath.Dir(runSh))
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("1.0.0 not unpacked again for root: %v %v", fi, err)
	}
}

// TestServiceLogsNotReadableByOthers: a service's log (its output and its
// hooks') is the agent's to hand out. Before, DATA_DIR/logs was 0755 and
// each log 0644: every local user, and every other service's user, read
// every service's output. Now the directory gives nothing to others (one
// an older agent made 0755 included) and each log is 0640.
func TestServiceLogsNotReadableByOthers(t *testing.T) {
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	logs := filepath.Join(dataDir, "logs")
	if err := os.Mkdir(logs, 0o755); err != nil { // as older agents made it
		t.Fatal(err)
	}
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "hook.sh": "#!/bin/sh\necho hook\n"})
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.Hooks = &v1.Hooks{AfterInstall: &v1.Hook{Command: []string{"./hook.sh"}}}
	fc.assign(a)
	fc.waitFor(t, "1.0.0 healthy", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	for _, p := range []string{logs, filepath.Join(logs, testSvc+".log")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o007 != 0 {
			t.Errorf("%s: mode %v: others may read it", p, perm)
		}
	}
}

// TestDataDirLockNotTakenByOthers: the data dir's lock file was 0644, and
// flock(2) needs no write access: any local user could open it read-only
// and hold the lock (`flock agent.lock sleep infinity`), and the agent
// then refused to start ("in use by another agent"): after a reboot, a
// restart or an upgrade's handover, the host was left without its agent.
// Now the file is 0600 (one an older agent made 0644 included).
func TestDataDirLockNotTakenByOthers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to try as another user")
	}
	dir := t.TempDir()
	traversable(t, dir)
	path := filepath.Join(dir, "agent.lock")
	if err := os.WriteFile(path, nil, 0o644); err != nil { // as older agents made it
		t.Fatal(err)
	}
	unlock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	cmd := exec.Command("flock", "--nonblock", path, "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("user nobody took the data dir's lock (%s)", out)
	}
	unlock, err = lockDataDir(dir)
	if err != nil {
		t.Fatalf("the agent's own lock: %v", err)
	}
	unlock()
}

// TestReleaseGivenAwayPartlyIsDropped: a walk giving a release to run.user
// that fails or is cancelled half way (a newer assignment, the agent
// stopping, a chown refused) left the release staged, its marker written,
// its root still the agent's and part of it the user's, which the user's
// processes may change. The same release assigned later without run.user
// was then taken as the agent's own (TestReleaseGivenToUserNotRunAsAnother
// goes by the root's owner) and run as root. Now a release whose walk
// failed is no longer staged: it is unpacked again.
func TestReleaseGivenAwayPartlyIsDropped(t *testing.T) {
	u := testUser(t)
	uid, _ := strconv.Atoi(u.Uid)
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("chattr: ", err)
	}
	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	traversable(t, dataDir)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	rel := filepath.Join(dataDir, "releases", testSvc, "1.0.0")
	// The walk fails on the last file of the release's root it comes to,
	// made immutable: what it went through before is the user's.
	var pinned string
	unpin := func() {
		if pinned != "" {
			if out, err := exec.Command("chattr", "-i", pinned).CombinedOutput(); err != nil {
				t.Errorf("chattr -i %s: %v: %s", pinned, err, out)
			}
		}
	}
	ownHook = func(dir string) {
		if filepath.Base(filepath.Dir(dir)) != testSvc || pinned != "" {
			return
		}
		d, err := os.Open(dir)
		if err != nil {
			t.Error(err)
			return
		}
		names, err := d.Readdirnames(-1) // the walk's order
		d.Close()
		if err != nil {
			t.Error(err)
		}
		for _, n := range names {
			if fi, err := os.Lstat(filepath.Join(dir, n)); err == nil && fi.Mode().IsRegular() {
				pinned = filepath.Join(dir, n)
			}
		}
		if out, err := exec.Command("chattr", "+i", pinned).CombinedOutput(); err != nil {
			t.Errorf("chattr +i %s: %v: %s", pinned, err, out)
		}
	}
	t.Cleanup(func() {
		ownHook = nil
		unpin()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	files := map[string]string{"run.sh": runScript, "check.sh": goodCheck, "sub/f": "x"}
	for i := range 6 {
		files[fmt.Sprintf("f%d", i)] = "x"
	}
	art := tarGz(t, files)
	sha := fc.addArtifact(art)
	a := testAssignment("1.0.0", 1, sha, int64(len(art)), "")
	a.Spec.Run.User = u.Username
	fc.assign(a)
	var r *v1.ServiceReport
	fc.waitFor(t, "1.0.0 failed", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		r = lastReport(rs, testSvc)
		return r.GetGeneration() == 1 && r.GetPhase() == v1.Phase_PHASE_FAILED
	})
	if !strings.Contains(r.GetReason(), "spec.run.user") {
		t.Fatalf("reason %q, want the walk's failure", r.GetReason())
	}
	unpin()
	pinned = ""

	fc.assign(testAssignment("1.0.0", 2, sha, int64(len(art)), ""))
	fc.waitFor(t, "1.0.0 healthy as root", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	err := noneOwnedBy(rel, uid)
	if err != nil {
		t.Fatal(err)
	}
}

// TestReleaseGivenAwayWhenKilledIsDropped: an agent killed (kill -9, the
// host losing power) while it gives a release to run.user leaves the
// release's top directory its own (given last) and files inside the
// user's, which the user's processes may change. The next agent, assigned
// that release without run.user, took the tree for its own (it goes by
// the top directory's owner) and ran as root what the user wrote. Here
// the disk at the moment of the kill is the data dir's releases/ copied
// while the first agent is in the walk, with a file of it given to the
// user and rewritten by the user; a second agent on that copy must unpack
// the release again (nothing in it the user's, the user's check never
// run).
func TestReleaseGivenAwayWhenKilledIsDropped(t *testing.T) {
	u := testUser(t)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	files := map[string]string{"run.sh": runScript, "check.sh": goodCheck, "sub/f": "x"}
	art := tarGz(t, files)

	fc := newFakeCoordinator(t)
	dataDir := t.TempDir()
	traversable(t, dataDir)
	crashDir := t.TempDir()
	traversable(t, crashDir)
	rel := filepath.Join(crashDir, "releases", testSvc, "1.0.0")
	// What root would run of the user's: it writes here, where the user
	// cannot (0700, root's), so only a check run as root leaves it.
	proofDir := t.TempDir()
	proof := filepath.Join(proofDir, "ran-as")
	killed := make(chan struct{})
	var once bool
	ownHook = func(dir string) {
		if once || filepath.Base(dir) != "1.0.0" || filepath.Base(filepath.Dir(dir)) != testSvc {
			return
		}
		once = true
		defer close(killed)
		// The kill: the disk as it is now, in the middle of the walk.
		if out, err := exec.Command("cp", "-a", filepath.Join(dataDir, "releases"), crashDir).CombinedOutput(); err != nil {
			t.Errorf("cp -a: %v: %s", err, out)
			return
		}
		// The walk had given check.sh away, and the user's process (an
		// older version of the service, running as the user) rewrote it.
		p := filepath.Join(rel, "check.sh")
		if err := os.Chown(p, uid, gid); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\nid -u > "+proof+"\nexit 0\n"), 0o755); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { ownHook = nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}, testOptions())
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.Run.User = u.Username
	fc.assign(a)
	select {
	case <-killed:
	case <-time.After(time.Minute): // failure deadline
		t.Fatal("the first agent did not come to the walk in a minute")
	}
	cancel()
	waitDone(t, done)
	stopServices(t, dataDir)
	ownHook = nil

	fc2 := newFakeCoordinator(t)
	fc2.assign(testAssignment("1.0.0", 2, fc2.addArtifact(art), int64(len(art)), ""))
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := runAgent(t, ctx2, Config{Insecure: true, Coordinators: []string{fc2.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: crashDir}, testOptions())
	t.Cleanup(func() {
		cancel2()
		waitDone(t, done2)
	})
	fc2.waitFor(t, "1.0.0 healthy as root", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 2, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	if b, err := os.ReadFile(proof); err == nil {
		t.Errorf("the user's check.sh ran as uid %s", strings.TrimSpace(string(b)))
	}
	err := noneOwnedBy(rel, uid)
	if err != nil {
		t.Error(err)
	}
}

// TestCurrentReleaseGivenAwayInPart: a give-away cut short on the current
// release (staged again with a run.user it did not have) cannot be undone
// by unpacking it again: assigned with that same user it is walked again
// (the stage completes the give-away), without it (run as root) it is
// refused naming spec.run.user and both users.
func TestCurrentReleaseGivenAwayInPart(t *testing.T) {
	u := testUser(t)
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	a := newLoopAgent(t)
	dir := a.inst.ReleaseDir(testSvc, "1.0.0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.inst.Switch(testSvc, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if err := a.inst.GiveAwayStarted(testSvc, "1.0.0", uint32(uid), uint32(gid)); err != nil {
		t.Fatal(err)
	}
	if err := a.reclaimRelease(testSvc, "1.0.0", &v1.RunSpec{User: u.Username}); err != nil {
		t.Fatalf("current, assigned to the user it was being given to: %v", err)
	}
	err := a.reclaimRelease(testSvc, "1.0.0", &v1.RunSpec{})
	if err == nil || !strings.HasPrefix(err.Error(), "spec.run.user") || !strings.Contains(err.Error(), fmt.Sprintf("being given to uid %d", uid)) {
		t.Fatalf("current, assigned without run.user: %v", err)
	}
	if _, err := os.Lstat(dir); err != nil {
		t.Fatalf("the current release was removed: %v", err)
	}
}

// noneOwnedBy fails naming the first file under dir (dir too) that uid
// owns: a release run as root must hold nothing of the user's.
func noneOwnedBy(dir string, uid int) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if int(fi.Sys().(*syscall.Stat_t).Uid) == uid {
			return fmt.Errorf("%s, run as root, is the user's (uid %d)", p, uid)
		}
		return nil
	})
}

// TestDupCloexec: the descriptor the give-away lists a directory through is
// close-on-exec, so that a process started meanwhile (another service's,
// as another user) does not inherit it and list the directory.
func TestDupCloexec(t *testing.T) {
	fd, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	dup, err := dupCloexec(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	flags, err := unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("descriptor %d flags %#x: not close-on-exec", dup, flags)
	}
}
