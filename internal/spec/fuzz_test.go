package spec

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse and Validate: neither may panic,
// and a spec that parses must survive Validate. Run it with
//
//	go test ./internal/spec -run '^$' -fuzz FuzzParse -fuzztime 30s
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		``,
		`null`,
		`[]`,
		`name: web`,
		"checks:\n  - http: {url: 'http://${host.label.port}/'}\n    tcp: {address: 'x:1'}\n",
		"run: {command: ['${host.label.}', '${', '${host.id}'], env: {A: '${host.label.a}'}}",
		"rollout: {waves: [50, 40], bake: -5s, mode: fast, canary: 4294967295}",
		"min_healthy_time: 2562047h\nhealthy_deadline: 1ns\n",
		"a: &a [*a]",
		"{\"name\": \"x\", \"minHealthyTime\": \"1.5s\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if s != nil {
				t.Fatalf("Parse returned a spec and an error %v", err)
			}
			return
		}
		_ = Validate(s)
	})
}
