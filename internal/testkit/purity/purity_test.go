package purity

import (
	"path/filepath"
	"reflect"
	"testing"
)

// Each catch fires on a bad source in testdata/ (not built: the files only
// have to parse), and a clean source passes.
func TestInspect(t *testing.T) {
	std := map[string]bool{"fmt": true, "time": true}
	tests := []struct {
		file    string
		allowed map[string]bool
		want    []string
	}{
		{"clean.go", std, nil},
		{"clean.go", map[string]bool{"fmt": true, "time": true, "strings": true, "os": false}, []string{
			"allowed import strings is not imported by any source: remove it from the list",
		}},
		{"forbidden.go", nil, []string{
			"testdata/forbidden.go:4:8: imports os, which is not allowed",
		}},
		{"aliased.go", map[string]bool{"time": true}, []string{
			"testdata/aliased.go:8:6: clock.Now (package time): take the time as an argument",
			"testdata/aliased.go:9:9: clock.Since (package time): take the time as an argument",
		}},
		{"sleep.go", map[string]bool{"time": true}, []string{
			"testdata/sleep.go:7:15: time.Sleep (package time): take the time as an argument",
		}},
		{"timers.go", map[string]bool{"time": true}, []string{
			"testdata/timers.go:8:4: time.After (package time): take the time as an argument",
			"testdata/timers.go:9:4: time.Tick (package time): take the time as an argument",
			"testdata/timers.go:10:2: time.NewTimer (package time): take the time as an argument",
			"testdata/timers.go:11:2: time.NewTicker (package time): take the time as an argument",
			"testdata/timers.go:12:2: time.AfterFunc (package time): take the time as an argument",
			"testdata/timers.go:13:6: time.Until (package time): take the time as an argument",
			"testdata/timers.go:14:9: time.Now (package time): take the time as an argument",
		}},
		{"goroutine.go", nil, []string{
			"testdata/goroutine.go:5:24: go statement: a pure core starts no goroutines",
		}},
		{"dotimport.go", map[string]bool{"time": true}, []string{
			"testdata/dotimport.go:4:8: dot import of time: its clock reads could not be told apart",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := Inspect([]string{filepath.Join("testdata", tt.file)}, tt.allowed)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n%q\nwant:\n%q", got, tt.want)
			}
		})
	}
}

// time.LoadLocation (DefaultCalls) and a call the package forbids are
// caught through the name their package is imported under; without the
// extra Call only the default fires.
func TestInspectCalls(t *testing.T) {
	allowed := map[string]bool{"time": true, "example.com/spec": true}
	file := []string{filepath.Join("testdata", "zones.go")}
	parse := Call{Path: "example.com/spec", Name: "ParseWindows", Why: "resolves time zones"}
	got, err := Inspect(file, allowed, parse)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"testdata/zones.go:13:12: time.LoadLocation (package time) reads the machine's zoneinfo files: take the *time.Location (parsed by the caller) as an argument",
		"testdata/zones.go:14:9: sp.ParseWindows (package example.com/spec) resolves time zones",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n%q\nwant:\n%q", got, want)
	}
	got, err = Inspect(file, allowed)
	if err != nil || !reflect.DeepEqual(got, want[:1]) {
		t.Errorf("without the extra call: problems %q, err %v; want %q", got, err, want[:1])
	}
}

// An import used by one file of several is used.
func TestInspectAllowListCoversAllFiles(t *testing.T) {
	files := []string{filepath.Join("testdata", "clean.go"), filepath.Join("testdata", "forbidden.go")}
	got, err := Inspect(files, map[string]bool{"fmt": true, "time": true, "os": true})
	if err != nil || len(got) != 0 {
		t.Fatalf("problems %q, err %v", got, err)
	}
}

func TestInspectUnparsable(t *testing.T) {
	if _, err := Inspect([]string{filepath.Join("testdata", "missing.go")}, nil); err == nil {
		t.Fatal("no error for a missing file")
	}
}

// The package's own sources use the standard library only (as its doc
// says) and this check itself.
func TestOwnImports(t *testing.T) {
	got, err := Inspect([]string{"purity.go"}, map[string]bool{
		"fmt": true, "go/ast": true, "go/parser": true, "go/token": true, "path/filepath": true,
		"slices": true, "strconv": true, "strings": true, "testing": true,
	})
	if err != nil || len(got) != 0 {
		t.Fatalf("problems %q, err %v", got, err)
	}
}
