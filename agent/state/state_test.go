package state

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/sockets"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func asg(service, version string, gen int64) *v1.Assignment {
	return &v1.Assignment{
		Service: service, Generation: gen,
		Release: &v1.Release{Service: service, Version: version, Artifact: &v1.Artifact{Sha256: strings.Repeat("b", 64), Size: 42}},
		Spec: &v1.ServiceSpec{Name: service, Run: &v1.RunSpec{Command: []string{"./run", "--port=${host.label.port}"}},
			MinHealthyTime: durationpb.New(3e9)},
	}
}

func sample() *lifecycle.Snapshot {
	a1, a2 := asg("web", "v1", 1), asg("web", "v2", 2)
	return &lifecycle.Snapshot{
		Service: "web", Phase: v1.Phase_PHASE_CHECKING, Generation: 2, Reason: "why",
		Current: a2, LastGood: a1, Target: a2, TargetEpoch: 3, InPlace: true, LimitsUnknown: 2,
	}
}

// equal compares two snapshots, assignments by value.
func equal(t *testing.T, got, want *lifecycle.Snapshot) {
	t.Helper()
	if got.Service != want.Service || got.Phase != want.Phase || got.Generation != want.Generation ||
		got.Reason != want.Reason || !got.WatchUntil.Equal(want.WatchUntil) || got.CurrentOK != want.CurrentOK || got.TargetEpoch != want.TargetEpoch ||
		got.InPlace != want.InPlace || got.LimitsUnknown != want.LimitsUnknown {
		t.Fatalf("loaded %+v, want %+v", got, want)
	}
	for _, f := range []struct {
		name      string
		got, want *v1.Assignment
	}{{"current", got.Current, want.Current}, {"last good", got.LastGood, want.LastGood},
		{"target", got.Target, want.Target}, {"previous", got.Previous, want.Previous}} {
		if !proto.Equal(f.got, f.want) {
			t.Fatalf("%s: %v, want %v", f.name, f.got, f.want)
		}
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	in := sample()
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	out, err := st.Load("web")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, out, in)
	if out.Current != out.Target {
		t.Error("the same release loaded as two assignments")
	}
	b, err := os.ReadFile(st.Path("web"))
	if err != nil || !strings.Contains(string(b), `"format": 2`) {
		t.Fatalf("file %s %v", b, err)
	}
	// Overwrite; no temp files remain.
	in.Phase = v1.Phase_PHASE_HEALTHY
	in.LastGood = in.Current
	in.CurrentOK = true
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	out, err = st.Load("web")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, out, in)
	entries, _ := os.ReadDir(st.dir)
	if len(entries) != 1 || entries[0].Name() != "web.json" {
		t.Fatalf("dir holds %v", entries)
	}
}

// Files written by agents before the state stored the lifecycle's snapshot
// (format 1, in testdata/ as such an agent wrote them) still load, and are
// rewritten in the current format on the next save.
func TestLoadLegacyFiles(t *testing.T) {
	a1, a2 := asg("web", "v1", 1), asg("web", "v2", 2)
	tests := []struct {
		file string
		want *lifecycle.Snapshot
	}{
		{"legacy-healthy-watching.json", &lifecycle.Snapshot{
			Service: "web", Phase: v1.Phase_PHASE_HEALTHY, Generation: 2,
			Current: a2, LastGood: a2, Target: a2,
			WatchUntil: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), Previous: a1,
		}},
		{"legacy-checking.json", &lifecycle.Snapshot{
			Service: "web", Phase: v1.Phase_PHASE_CHECKING, Generation: 2,
			Current: a2, LastGood: a1, Target: a2,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), `"format"`) || !strings.Contains(string(b), `"releases"`) {
				t.Fatalf("%s is not a format 1 file", tt.file)
			}
			st, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(st.Path("web"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			all, err := st.LoadAll()
			if err != nil || len(all) != 1 {
				t.Fatalf("LoadAll: %v %v", all, err)
			}
			equal(t, all[0], tt.want)
			if all[0].Current != all[0].Target {
				t.Error("one release of the file loaded as two assignments")
			}
			if err := st.Save(all[0]); err != nil {
				t.Fatal(err)
			}
			again, err := st.Load("web")
			if err != nil {
				t.Fatal(err)
			}
			equal(t, again, tt.want)
			if b, _ := os.ReadFile(st.Path("web")); !strings.Contains(string(b), `"format": 2`) || strings.Contains(string(b), "releases") {
				t.Fatalf("not rewritten in format 2: %s", b)
			}
		})
	}
}

func TestLoadMissing(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "new"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := st.Load("web")
	if s != nil || err != nil {
		t.Fatalf("%v %v", s, err)
	}
	all, err := st.LoadAll()
	if len(all) != 0 || err != nil {
		t.Fatalf("%v %v", all, err)
	}
}

func TestLoadCorrupt(t *testing.T) {
	const other = `{"service":"api","generation":"1","release":{"service":"api","version":"v1"}}`
	cases := map[string]string{
		"not json":               "{not json",
		"truncated":              `{"format":2,"service":"web","phase":"PHASE_HEALTHY"`,
		"unknown format":         `{"format":3,"service":"web","phase":"PHASE_IDLE"}`,
		"unknown phase":          `{"format":2,"service":"web","phase":"PHASE_BOGUS"}`,
		"other service":          `{"format":2,"service":"api","phase":"PHASE_IDLE"}`,
		"release of another":     `{"format":2,"service":"web","phase":"PHASE_HEALTHY","current":` + other + `}`,
		"bad version":            `{"format":2,"service":"web","phase":"PHASE_IDLE","target":{"service":"web","release":{"version":"../x"}}}`,
		"bad assignment":         `{"format":2,"service":"web","phase":"PHASE_IDLE","target":{"generation":"x"}}`,
		"previous without":       `{"format":2,"service":"web","phase":"PHASE_HEALTHY","previous":{"service":"web","release":{"version":"v1"}}}`,
		"legacy missing":         `{"service":"web","phase":"PHASE_HEALTHY","current":"v1"}`,
		"legacy bad version":     `{"service":"web","phase":"PHASE_IDLE","target":"../x"}`,
		"legacy release differs": `{"service":"web","phase":"PHASE_IDLE","target":"v1","releases":{"v1":{"service":"web","release":{"version":"v2"}}}}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			st, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(st.Path("web"), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = st.Load("web")
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), st.Path("web")) {
				t.Fatalf("err %v", err)
			}
			if _, err := st.LoadAll(); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("LoadAll err %v", err)
			}
		})
	}
}

func TestLoadAllAndLeftovers(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"zeta", "alpha"} {
		if err := st.Save(&lifecycle.Snapshot{Service: svc, Phase: v1.Phase_PHASE_IDLE}); err != nil {
			t.Fatal(err)
		}
	}
	leftover := filepath.Join(dir, ".alpha.tmp123")
	if err := os.WriteFile(leftover, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	all, err := st.LoadAll()
	if err != nil || len(all) != 2 || all[0].Service != "alpha" || all[1].Service != "zeta" {
		t.Fatalf("%v %v", all, err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover temp file kept: %v", err)
	}
}

func TestSaveRejectsInconsistent(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := sample()
	s.LastGood = asg("api", "v1", 1)
	if err := st.Save(s); err == nil || !strings.Contains(err.Error(), `last_good: release "v1" is for service "api", not "web"`) {
		t.Fatalf("err %v", err)
	}
	s = sample()
	s.Target = asg("web", "../x", 2)
	if err := st.Save(s); err == nil || !strings.Contains(err.Error(), `target.release.version: invalid version "../x"`) {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(st.Path("web")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an inconsistent snapshot was written: %v", err)
	}
}

func TestWatchRoundTrip(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	a2 := asg("web", "v2", 2)
	in := &lifecycle.Snapshot{
		Service: "web", Phase: v1.Phase_PHASE_HEALTHY, Generation: 2,
		Current: a2, LastGood: a2, Target: a2, WatchUntil: until, Previous: asg("web", "v1", 1),
	}
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	out, err := st.Load("web")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, out, in)
	// Not watching: neither field is written.
	in.WatchUntil, in.Previous = time.Time{}, nil
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(st.Path("web"))
	if err != nil || strings.Contains(string(b), "watch_until") || strings.Contains(string(b), "previous") || strings.Contains(string(b), `"v1"`) {
		t.Fatalf("file %s %v", b, err)
	}
	// Previous needs a watch.
	bad := *out
	bad.WatchUntil = time.Time{}
	if err := st.Save(&bad); err == nil || !strings.Contains(err.Error(), "previous") {
		t.Fatalf("err %v", err)
	}
}

// TestRuntimeRoundTrip: the runtime record (socket identities, notify
// sockets) is saved beside the snapshot and loaded back; Save alone writes
// none.
func TestRuntimeRoundTrip(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	in := sample()
	rt := Runtime{
		Sockets: []sockets.Identity{{Name: "http", Listen: "127.0.0.1:8080", Inode: 4242}, {Name: "admin", Listen: "unix:/run/web.sock", Inode: 4343}},
		Notify:  []NotifySocket{{Epoch: 3, Path: "/var/lib/fleetwave-agent/notify/web-3"}},
	}
	if err := st.SaveWith(in, rt); err != nil {
		t.Fatal(err)
	}
	sv, err := st.LoadWith("web")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, sv.Snapshot, in)
	if !reflect.DeepEqual(sv.Runtime, rt) {
		t.Fatalf("runtime %+v, want %+v", sv.Runtime, rt)
	}
	all, err := st.LoadAllWith()
	if err != nil || len(all) != 1 || !reflect.DeepEqual(all[0].Runtime, rt) {
		t.Fatalf("LoadAllWith = %+v, %v", all, err)
	}
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	if sv, err := st.LoadWith("web"); err != nil || len(sv.Runtime.Sockets)+len(sv.Runtime.Notify) != 0 {
		t.Fatalf("after Save: %+v, %v; want no runtime record", sv, err)
	}
}

// TestRuntimeFieldsAreOptional: a format 2 file written before the runtime
// fields existed loads, with an empty record; Marshal without a record
// writes none of them, so such files read the same in older agents.
func TestRuntimeFieldsAreOptional(t *testing.T) {
	b, err := Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"sockets"`) || strings.Contains(string(b), `"notify"`) {
		t.Fatalf("runtime fields written without a record:\n%s", b)
	}
	old := `{"format": 2, "service": "web", "phase": "PHASE_HEALTHY", "generation": 1,
		"current": {"service": "web", "generation": 1, "release": {"service": "web", "version": "v1"}},
		"last_good": {"service": "web", "generation": 1, "release": {"service": "web", "version": "v1"}},
		"target": {"service": "web", "generation": 1, "release": {"service": "web", "version": "v1"}}}`
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "web.json"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := st.LoadWith("web")
	if err != nil {
		t.Fatal(err)
	}
	if sv.Snapshot.Phase != v1.Phase_PHASE_HEALTHY || lifecycle.Version(sv.Snapshot.Current) != "v1" ||
		sv.Runtime.Sockets != nil || sv.Runtime.Notify != nil {
		t.Fatalf("old format 2 file: %+v", sv)
	}
}

// TestRuntimeValidated: a runtime record that could make the agent bind or
// listen somewhere unexpected is refused on save and on load, naming the
// field.
func TestRuntimeValidated(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rt   Runtime
		want string
	}{
		{Runtime{Sockets: []sockets.Identity{{Name: "a:b", Listen: "127.0.0.1:1", Inode: 1}}}, "sockets[0].name"},
		{Runtime{Sockets: []sockets.Identity{{Name: "http", Listen: "nowhere", Inode: 1}}}, `sockets[0].listen: "nowhere"`},
		{Runtime{Sockets: []sockets.Identity{{Name: "http", Listen: "127.0.0.1:1"}}}, "sockets[0]: no inode"},
		{Runtime{Notify: []NotifySocket{{Epoch: 1, Path: "notify/web-1"}}}, `notify[0]: epoch 1, path "notify/web-1"`},
		{Runtime{Notify: []NotifySocket{{Epoch: 0, Path: "/x/web-0"}}}, "notify[0]: epoch 0"},
	} {
		if err := st.SaveWith(sample(), tc.rt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SaveWith(%+v) = %v, want %q", tc.rt, err, tc.want)
		}
		b, err := MarshalWith(sample(), tc.rt)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(st.Path("web"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := st.LoadWith("web"); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("loading %+v = %v, want ErrCorrupt naming %q", tc.rt, err, tc.want)
		}
	}
}

// TestStateIsPrivate: a state file holds the service's spec, its run.env
// too (database passwords, API keys). Before, the directory was 0755 and
// every file 0644: any local user, and every other service's user, read
// every service's environment. Now the directory is 0700 (also one an
// older agent made 0755, whose files are 0644 until their next save) and
// each file 0600.
func TestStateIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil { // as older agents made it
		t.Fatal(err)
	}
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := sample()
	s.Current.Spec.Run.Env = map[string]string{"DB_PASSWORD": "hunter2"}
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, st.Path("web"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v (it holds run.env)", path, got, want)
		}
	}
}
