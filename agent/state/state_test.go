package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

func sample() *Service {
	a1, a2 := asg("web", "v1", 1), asg("web", "v2", 2)
	return &Service{
		Service: "web", Phase: v1.Phase_PHASE_CHECKING, Generation: 2, Reason: "why",
		Current: "v2", LastGood: "v1", Target: "v2",
		Releases: map[string]*v1.Assignment{"v1": a1, "v2": a2},
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
	if out.Phase != in.Phase || out.Generation != 2 || out.Current != "v2" || out.LastGood != "v1" || out.Target != "v2" || out.Reason != "why" {
		t.Fatalf("loaded %+v", out)
	}
	for _, v := range []string{"v1", "v2"} {
		if !proto.Equal(out.Assignment(v), in.Assignment(v)) {
			t.Fatalf("release %s: %v != %v", v, out.Assignment(v), in.Assignment(v))
		}
	}
	// Overwrite; no temp files remain.
	in.Phase = v1.Phase_PHASE_HEALTHY
	in.LastGood = "v2"
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	out, err = st.Load("web")
	if err != nil || out.Phase != v1.Phase_PHASE_HEALTHY || len(out.Releases) != 1 {
		t.Fatalf("%+v %v", out, err)
	}
	entries, _ := os.ReadDir(st.dir)
	if len(entries) != 1 || entries[0].Name() != "web.json" {
		t.Fatalf("dir holds %v", entries)
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
	cases := map[string]string{
		"not json":        "{not json",
		"truncated":       `{"service":"web","phase":"PHASE_HEALTHY"`,
		"unknown phase":   `{"service":"web","phase":"PHASE_BOGUS"}`,
		"missing release": `{"service":"web","phase":"PHASE_HEALTHY","current":"v1"}`,
		"other service":   `{"service":"api","phase":"PHASE_IDLE"}`,
		"bad version":     `{"service":"web","phase":"PHASE_IDLE","target":"../x"}`,
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
		if err := st.Save(&Service{Service: svc, Phase: v1.Phase_PHASE_IDLE}); err != nil {
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
	delete(s.Releases, "v1")
	if err := st.Save(s); err == nil || !strings.Contains(err.Error(), `last_good: no release recorded for version "v1"`) {
		t.Fatalf("err %v", err)
	}
}

func TestWatchRoundTrip(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	in := &Service{
		Service: "web", Phase: v1.Phase_PHASE_HEALTHY, Generation: 2,
		Current: "v2", LastGood: "v2", Target: "v2", WatchUntil: until, Previous: "v1",
		Releases: map[string]*v1.Assignment{"v1": asg("web", "v1", 1), "v2": asg("web", "v2", 2)},
	}
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	out, err := st.Load("web")
	if err != nil {
		t.Fatal(err)
	}
	if !out.WatchUntil.Equal(until) || out.Previous != "v1" || !proto.Equal(out.Assignment("v1"), in.Assignment("v1")) {
		t.Fatalf("loaded %+v", out)
	}
	// Not watching: neither field is written, and files of older agents load.
	in.WatchUntil, in.Previous = time.Time{}, ""
	if err := st.Save(in); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(st.Path("web"))
	if err != nil || strings.Contains(string(b), "watch_until") || strings.Contains(string(b), "previous") || strings.Contains(string(b), `"v1"`) {
		t.Fatalf("file %s %v", b, err)
	}
	// Previous needs its release and a watch.
	bad := *out
	delete(bad.Releases, "v1")
	if err := st.Save(&bad); err == nil || !strings.Contains(err.Error(), `previous: no release recorded for version "v1"`) {
		t.Fatalf("err %v", err)
	}
	bad = *out
	bad.WatchUntil = time.Time{}
	if err := st.Save(&bad); err == nil || !strings.Contains(err.Error(), "previous") {
		t.Fatalf("err %v", err)
	}
}
