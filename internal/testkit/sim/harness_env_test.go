package sim

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

// The harnesses' settings: every FLEETWAVE_SIM_* variable is read through
// these. A bad value fails the test with the variable and the value named;
// an unset (empty) one gives the default.

// envOr is the variable's value, def when unset.
func envOr(name, def string) string {
	if s := os.Getenv(name); s != "" {
		return s
	}
	return def
}

// envInt is an integer variable in lo..hi, def when unset.
func envInt(t testing.TB, name string, def, lo, hi int64) int64 {
	t.Helper()
	v, err := parseEnvInt(name, os.Getenv(name), def, lo, hi)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func parseEnvInt(name, s string, def, lo, hi int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("%s: %q, want an integer in %d..%d", name, s, lo, hi)
	}
	return v, nil
}

// envDuration is a duration variable (not negative), def when unset.
func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	d, err := parseEnvDuration(name, os.Getenv(name), def)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func parseEnvDuration(name, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s: %q, want a duration of at least 0 (e.g. 5s, 2m)", name, s)
	}
	return d, nil
}

// envList is a comma-separated list variable (def when unset), each item
// parsed by parse; nil when both are empty.
func envList[T any](t testing.TB, name, def string, parse func(string) (T, error)) []T {
	t.Helper()
	vs, err := parseEnvList(name, envOr(name, def), parse)
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func parseEnvList[T any](name, s string, parse func(string) (T, error)) ([]T, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []T
	for _, item := range strings.Split(s, ",") {
		v, err := parse(strings.TrimSpace(item))
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", name, item, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// fleetSize parses a list item that is a number of hosts, at least lo.
func fleetSize(lo int) func(string) (int, error) {
	return func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > maxHarnessHosts {
			return 0, fmt.Errorf("want a number of hosts in %d..%d", lo, maxHarnessHosts)
		}
		return n, nil
	}
}

// maxHarnessHosts bounds a harness's fleet (Config.Validate's bound).
const maxHarnessHosts = 1_000_000

// maxSpreadCoordinators bounds the coordinators of a spread size.
const maxSpreadCoordinators = 16

// spreadSize is a size of the spread harness: hosts over coordinators.
type spreadSize struct{ hosts, coords int }

func (s spreadSize) String() string { return fmt.Sprintf("%d/%d", s.hosts, s.coords) }

// parseSpreadSize parses "hosts/coordinators".
func parseSpreadSize(s string) (spreadSize, error) {
	h, c, ok := strings.Cut(s, "/")
	n, err1 := strconv.Atoi(h)
	k, err2 := strconv.Atoi(c)
	if !ok || err1 != nil || err2 != nil || k < 1 || k > maxSpreadCoordinators || n < k || n > maxHarnessHosts {
		return spreadSize{}, fmt.Errorf("want hosts/coordinators, coordinators 1..%d, hosts from one per coordinator to %d", maxSpreadCoordinators, maxHarnessHosts)
	}
	return spreadSize{n, k}, nil
}

// parseSpreadMode parses an artifact-spread mode: off, on or stage.
func parseSpreadMode(s string) (spreadMode, error) {
	switch s {
	case "off":
		return spreadMode{}, nil
	case "on":
		return spreadMode{p2p: true}, nil
	case "stage":
		return spreadMode{p2p: true, stage: true}, nil
	}
	return spreadMode{}, fmt.Errorf("want off, on or stage")
}

// harnessOut is where a harness prints its tables: stdout, and appended
// to FLEETWAVE_SIM_OUT when set (closed at the end of t).
func harnessOut(t testing.TB) io.Writer {
	t.Helper()
	p := os.Getenv("FLEETWAVE_SIM_OUT")
	if p == "" {
		return os.Stdout
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("FLEETWAVE_SIM_OUT: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return io.MultiWriter(os.Stdout, f)
}

// harnessDir is a new directory for one process's files (its log, its
// data): under FLEETWAVE_SIM_LOGS when set, kept after the test for a
// look at a failed or slow run (named after the test and name, replaced
// if there), in t's temporary directory otherwise.
func harnessDir(t testing.TB, name string) (string, error) {
	dir := filepath.Join(t.TempDir(), name)
	if root := os.Getenv("FLEETWAVE_SIM_LOGS"); root != "" {
		dir = filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name)
		if err := os.RemoveAll(dir); err != nil {
			return "", fmt.Errorf("FLEETWAVE_SIM_LOGS: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("FLEETWAVE_SIM_LOGS: %w", err)
	}
	return dir, nil
}

// coordinatorBinary is FLEETWAVE_SIM_COORDINATOR, or the coordinator built
// for this test.
func coordinatorBinary(t testing.TB) string {
	return envBinary(t, "FLEETWAVE_SIM_COORDINATOR", "fleetwave-coordinator")
}

// simBinary is FLEETWAVE_SIM_BIN, or fleetwave-sim built for this test.
func simBinary(t testing.TB) string {
	return envBinary(t, "FLEETWAVE_SIM_BIN", "fleetwave-sim")
}

// envBinary is the prebuilt binary the variable names (it must exist), or
// ./cmd/<cmd> built into t's temporary directory.
func envBinary(t testing.TB, name, cmd string) string {
	t.Helper()
	if p := os.Getenv(name); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %q: %v", name, p, err)
		}
		return p
	}
	root, err := testfleet.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), cmd)
	c := exec.Command("go", "build", "-o", bin, "./cmd/"+cmd)
	c.Dir = root
	c.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := c.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", cmd, err, b)
	}
	return bin
}

func TestParseEnv(t *testing.T) {
	const v = "FLEETWAVE_SIM_X"
	if n, err := parseEnvInt(v, "", 7, 1, 10); n != 7 || err != nil {
		t.Errorf("unset int: %d %v", n, err)
	}
	if n, err := parseEnvInt(v, " 10", 7, 1, 10); n != 10 || err != nil {
		t.Errorf("int at the bound: %d %v", n, err)
	}
	if n, err := parseEnvInt(v, "-5", 7, math.MinInt64, 10); n != -5 || err != nil {
		t.Errorf("negative int: %d %v", n, err)
	}
	if d, err := parseEnvDuration(v, "", time.Second); d != time.Second || err != nil {
		t.Errorf("unset duration: %s %v", d, err)
	}
	if d, err := parseEnvDuration(v, "0s", time.Second); d != 0 || err != nil {
		t.Errorf("zero duration: %s %v", d, err)
	}
	if got, err := parseEnvList(v, " 1000 , 5000", fleetSize(1)); err != nil || fmt.Sprint(got) != "[1000 5000]" {
		t.Errorf("sizes: %v %v", got, err)
	}
	if got, err := parseEnvList(v, "", fleetSize(1)); err != nil || got != nil {
		t.Errorf("no sizes: %v %v", got, err)
	}
	if got, err := parseEnvList(v, "2000/1,20000/2", parseSpreadSize); err != nil || fmt.Sprint(got) != "[2000/1 20000/2]" {
		t.Errorf("spread: %v %v", got, err)
	}
	if got, err := parseEnvList(v, "off,stage", parseSpreadMode); err != nil || fmt.Sprint(got) != "[off p2p+stage]" {
		t.Errorf("modes: %v %v", got, err)
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{second(parseEnvInt(v, "x", 7, 1, 10)), `FLEETWAVE_SIM_X: "x", want an integer in 1..10`},
		{second(parseEnvInt(v, "11", 7, 1, 10)), `FLEETWAVE_SIM_X: "11", want an integer in 1..10`},
		{second(parseEnvInt(v, "0", 7, 1, 10)), `FLEETWAVE_SIM_X: "0", want an integer in 1..10`},
		{second(parseEnvDuration(v, "5", time.Second)), `FLEETWAVE_SIM_X: "5", want a duration of at least 0`},
		{second(parseEnvDuration(v, "-1s", time.Second)), `FLEETWAVE_SIM_X: "-1s", want a duration of at least 0`},
		{second(parseEnvList(v, "1000,x", fleetSize(1))), `FLEETWAVE_SIM_X: "x": want a number of hosts in 1..1000000`},
		{second(parseEnvList(v, "1000,,2000", fleetSize(1))), `FLEETWAVE_SIM_X: "": want a number of hosts`},
		{second(parseEnvList(v, "1", fleetSize(2))), `FLEETWAVE_SIM_X: "1": want a number of hosts in 2..1000000`},
		{second(parseEnvList(v, "1000001", fleetSize(1))), `FLEETWAVE_SIM_X: "1000001": want a number of hosts in 1..1000000`},
		{second(parseEnvList(v, "2000", parseSpreadSize)), `FLEETWAVE_SIM_X: "2000": want hosts/coordinators, coordinators 1..16`},
		{second(parseEnvList(v, "2000/17", parseSpreadSize)), `FLEETWAVE_SIM_X: "2000/17": want hosts/coordinators`},
		{second(parseEnvList(v, "2000/0", parseSpreadSize)), `FLEETWAVE_SIM_X: "2000/0": want hosts/coordinators`},
		{second(parseEnvList(v, "1/2", parseSpreadSize)), `FLEETWAVE_SIM_X: "1/2": want hosts/coordinators`},
		{second(parseEnvList(v, "2000/x", parseSpreadSize)), `FLEETWAVE_SIM_X: "2000/x": want hosts/coordinators`},
		{second(parseEnvList(v, "on,p2p", parseSpreadMode)), `FLEETWAVE_SIM_X: "p2p": want off, on or stage`},
	} {
		if c.err == nil || !strings.HasPrefix(c.err.Error(), c.want) {
			t.Errorf("error %v, want %q...", c.err, c.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }
