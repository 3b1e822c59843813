package agent

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/install"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestStartRemovesCrashLeftovers: what a kill -9 leaves in the middle of
// each of the agent's atomic writes (names as each writer makes them) is
// removed when the next agent starts, and only that: the files they were
// writing, and names alike that are not temp files, are kept. An agent
// that cannot take the data dir (another one holds it, as while an old
// agent hands over) removes nothing. (Before: only the leftovers in
// state/, tmp/ and the .stage-* and .current-* ones were removed; the
// others stayed for good, one more file per kill.)
func TestStartRemovesCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	left := map[string]string{
		"state/.web.tmp123456":               "state.Store.SaveWith",
		"tmp/fetch-123456":                   "install download",
		"releases/web/.stage-1.0.0-123456/x": "install.Stage",
		"releases/web/.current-4242":         "install.Switch",
		"releases/web/.sha256/.1.0.0.tmp":    "install digest marker",
		"run/.web.pid.tmp-123456":            "supervise PID file",
		"run/.web.next.pid.tmp-654321":       "supervise PID file of a handover",
		"logs/web.log.1.tmp":                 "supervise.RotateLog",
		".revocations.pb.tmp123456":          "revocations.pb (tlsutil.WriteFileAtomic)",
		"tls/.agent.pem.tmp123456":           "joined certificate (tlsutil.WriteKeyPair)",
		"tls/.agent-key.pem.tmp123456":       "joined key (tlsutil.WriteKeyPair)",
		"agent/.upgrade.json.tmp-123456":     "agent upgrade record",
		"trust/floors/web.json.tmp":          "release floor",
	}
	// Live files, some named like temp files of another kind.
	live := []string{
		"run/web.pid", "logs/web.log", "logs/web.log.1", "logs/web.log.2",
		"releases/web/.sha256/1.0.0", "releases/web/.sha256/x.tmp",
		"tls/agent.pem", "trust/floors/web.json", "agent/.keep",
	}
	all := slices.Clone(live)
	for p := range left {
		all = append(all, p)
	}
	for _, p := range all {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Notify sockets bound under their temp name (sockets.ListenNotify),
	// not yet renamed: the socket file stays after the close, as after a
	// kill.
	for _, p := range []string{"notify/.0123456789ab.tmp", "notify-users/.ba9876543210.tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o700); err != nil {
			t.Fatal(err)
		}
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, p), Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		left[p] = "notify socket"
	}
	exists := func(p string) bool {
		_, err := os.Lstat(filepath.Join(dir, p))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		return err == nil
	}
	fc := newFakeCoordinator(t)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, DataDir: dir}

	// Another agent holds the data dir: this one stops before touching it.
	unlock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), cfg, testLogger(t), testOptions()); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("start beside another agent: %v", err)
	}
	unlock()
	for p, who := range left {
		if !exists(p) {
			t.Fatalf("%s (%s) removed by an agent that does not hold the data dir", p, who)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	fc.waitFor(t, "hello", 30*time.Second, func(h []*v1.Hello, _ []*v1.ServiceReport) bool { return len(h) > 0 })
	cancel()
	waitDone(t, done)
	var kept []string
	for p, who := range left {
		if exists(p) {
			kept = append(kept, p+" ("+who+")")
		}
	}
	if len(kept) > 0 {
		t.Errorf("%d of %d leftovers survived the start: %s", len(kept), len(left), strings.Join(kept, ", "))
	}
	for _, p := range live {
		if !exists(p) {
			t.Errorf("live file %s removed", p)
		}
	}
}

// TestLeftoverGlobsDoNotReadTheDataDirAsAPattern: the start-up cleanup's
// globs are relative to the data dir. One named "agent[1]" removes its own
// leftovers and nothing of the data dir "agent1" beside it (before, its
// path was read as a pattern: another agent's PID file being written and
// its release being unpacked were removed, and its own leftovers kept: a
// review).
func TestLeftoverGlobsDoNotReadTheDataDirAsAPattern(t *testing.T) {
	base := t.TempDir()
	other := filepath.Join(base, "agent1")  // another agent's data dir, live
	mine := filepath.Join(base, "agent[1]") // this agent's
	live := []string{
		filepath.Join(other, "run", ".web.pid.tmp-123456"),
		filepath.Join(other, "releases", "web", ".stage-2.0.0-1234", "x"),
	}
	own := []string{
		filepath.Join(mine, "run", ".web.pid.tmp-123456"),
		filepath.Join(mine, "releases", "web", ".stage-2.0.0-1234", "x"),
	}
	for _, p := range append(slices.Clone(live), own...) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := install.New(mine, install.Limits{}, testLogger(t), crashTemps()...); err != nil {
		t.Fatal(err)
	}
	for _, p := range live {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("another data dir's live file %s removed: %v", p, err)
		}
	}
	for _, p := range own {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("this data dir's leftover %s kept (%v)", p, err)
		}
	}
}
