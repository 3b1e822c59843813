package spec

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseWebExample(t *testing.T) {
	s, err := Parse(readTestdata(t, "web.yaml"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := Validate(s); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := &v1.ServiceSpec{
		Name:     "web",
		Selector: map[string]string{"role": "web"},
		Run: &v1.RunSpec{
			Command:   []string{"./demoapp", "--listen", "127.0.0.1:${host.label.port}"},
			Env:       map[string]string{"GREETING": "hello", "HOST_ID": "${host.id}"},
			StopGrace: durationpb.New(5 * time.Second),
		},
		Checks: []*v1.Check{
			{
				Name:     "http",
				Kind:     &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:${host.label.port}/healthz"}},
				Interval: durationpb.New(500 * time.Millisecond),
				Timeout:  durationpb.New(time.Second),
			},
			{Name: "port", Kind: &v1.Check_Tcp{Tcp: &v1.TcpCheck{Address: "127.0.0.1:${host.label.port}"}}},
		},
		MinHealthyTime:  durationpb.New(2 * time.Second),
		HealthyDeadline: durationpb.New(30 * time.Second),
		Rollout: &v1.RolloutPolicy{
			Canary:           1,
			Waves:            []uint32{50, 100},
			MaxParallel:      2,
			Bake:             durationpb.New(3 * time.Second),
			ProgressDeadline: durationpb.New(5 * time.Minute),
			Mode:             ModeAuto,
		},
	}
	if !proto.Equal(s, want) {
		t.Fatalf("Parse(web.yaml) =\n%v\nwant\n%v", s, want)
	}
}

func TestParseCamelCaseAndJSON(t *testing.T) {
	s, err := Parse([]byte(`{"name":"api","run":{"command":["./api"],"stopGrace":"1.5s"},"minHealthyTime":"1h30m","rollout":{"maxParallel":3,"noCanary":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.GetRun().GetStopGrace().AsDuration(); got != 1500*time.Millisecond {
		t.Errorf("stop_grace = %v", got)
	}
	if got := s.GetMinHealthyTime().AsDuration(); got != 90*time.Minute {
		t.Errorf("min_healthy_time = %v", got)
	}
	if s.GetRollout().GetMaxParallel() != 3 || !s.GetRollout().GetNoCanary() {
		t.Errorf("rollout = %v", s.GetRollout())
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // substrings of the error
	}{
		{"empty", ``, []string{"empty spec"}},
		{"null", `null`, []string{"empty spec"}},
		{"top-level list", `[1, 2]`, []string{"want a mapping of fields at the top level, got a list"}},
		{"top-level scalar", `hello`, []string{"got string"}},
		{"bad yaml", "name: [", []string{"yaml: line 1"}},
		{"list for string", "name: [a]\n", []string{"name: want a string, got a list"}},
		{"duplicate yaml key", "name: a\nname: b\n", []string{"name"}},
		{"unknown top field", "name: web\nreplicas: 3\n", []string{"replicas: unknown field"}},
		{"unknown nested field", "name: web\nrollout: {wave: [100]}\n", []string{"rollout.wave: unknown field"}},
		{"unknown field in list", "checks:\n  - http: {url: x, method: GET}\n", []string{"checks[0].http.method: unknown field"}},
		{"several unknown", "foo: 1\nbar: 2\n", []string{"foo: unknown field", "bar: unknown field"}},
		{"set twice", "min_healthy_time: 1s\nminHealthyTime: 2s\n", []string{"min_healthy_time: set twice"}},
		{"two oneof members", "checks:\n  - http: {url: 'http://x/'}\n    tcp: {address: 'x:1'}\n", []string{"checks[0]: exactly one of http, tcp, exec must be set, got http and tcp"}},
		{"bad duration", "min_healthy_time: soon\n", []string{`min_healthy_time: invalid duration "soon"`}},
		{"numeric duration", "rollout: {bake: 10}\n", []string{`rollout.bake: want a duration such as "10s"`, "number 10"}},
		{"number for string", "name: 123\n", []string{"name: want a string, got number 123 (quote it)"}},
		{"number in map", "selector: {port: 8081}\n", []string{"selector[port]: want a string, got number 8081"}},
		{"bool for string", "run: {env: {DEBUG: yes}}\n", []string{"run.env[DEBUG]: want a string, got boolean true"}},
		{"string in command list", "run: {command: [./a, 1]}\n", []string{"run.command[1]: want a string, got number 1"}},
		{"list expected", "run: {command: ./a}\n", []string{"run.command: want a list, got string"}},
		{"map expected", "selector: [a]\n", []string{"selector: want a mapping, got a list"}},
		{"message expected", "run: ./a\n", []string{"run: want a mapping of fields, got string"}},
		{"wrong number type", "rollout: {canary: -1}\n", []string{"rollout.canary: -1 is not a whole number in 0..4294967295"}},
		{"fraction for int", "rollout: {waves: [50.5, 100]}\n", []string{"rollout.waves[0]: 50.5 is not a whole number in 0..4294967295"}},
		{"uint32 overflow", "rollout: {max_parallel: 4294967296}\n", []string{"rollout.max_parallel: 4294967296 is not a whole number"}},
		{"string for int", "rollout: {canary: one}\n", []string{`rollout.canary: want a whole number, got string "one"`}},
		{"bool", "rollout: {no_canary: 1}\n", []string{"rollout.no_canary: want true or false, got number 1"}},
		{"too big", "name: " + strings.Repeat("a", MaxSpecSize), []string{"more than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded: %v", s)
			}
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("error %q is not ErrSyntax", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// valid returns a spec that passes Validate; tests break one thing in it.
func valid() *v1.ServiceSpec {
	return &v1.ServiceSpec{
		Name:     "web",
		Selector: map[string]string{"role": "web"},
		Run:      &v1.RunSpec{Command: []string{"./app", "--port=${host.label.port}"}, Env: map[string]string{"ID": "${host.id}"}},
		Checks: []*v1.Check{
			{Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:${host.label.port}/healthz"}}},
			{Kind: &v1.Check_Tcp{Tcp: &v1.TcpCheck{Address: "${host.label.ip}:${host.label.port}"}}},
			{Kind: &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"./check", "${host.id}"}}}},
		},
		MinHealthyTime:  durationpb.New(2 * time.Second),
		HealthyDeadline: durationpb.New(time.Minute),
		Rollout:         &v1.RolloutPolicy{Canary: 1, Waves: []uint32{10, 50, 100}, Mode: ModeManual},
	}
}

func TestValidateOK(t *testing.T) {
	cases := map[string]func(s *v1.ServiceSpec){
		"as is":            func(s *v1.ServiceSpec) {},
		"no rollout":       func(s *v1.ServiceSpec) { s.Rollout = nil },
		"no checks":        func(s *v1.ServiceSpec) { s.Checks = nil },
		"no selector":      func(s *v1.ServiceSpec) { s.Selector = nil },
		"only deadline":    func(s *v1.ServiceSpec) { s.MinHealthyTime = nil; s.HealthyDeadline = durationpb.New(11 * time.Second) },
		"only min healthy": func(s *v1.ServiceSpec) { s.HealthyDeadline = nil; s.MinHealthyTime = durationpb.New(4 * time.Minute) },
		"wave 100 only":    func(s *v1.ServiceSpec) { s.Rollout.Waves = []uint32{100} },
		"no canary":        func(s *v1.ServiceSpec) { s.Rollout.Canary = 0; s.Rollout.NoCanary = true },
		"canary max":       func(s *v1.ServiceSpec) { s.Rollout.Canary = MaxCanary },
		"https url":        func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "https://${host.id}.example:8443/x?y=1" },
		"expect status":    func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().ExpectStatus = 204 },
		"named duplicates kind": func(s *v1.ServiceSpec) {
			s.Checks[1] = proto.Clone(s.Checks[0]).(*v1.Check)
			s.Checks[1].Name = "http2"
		},
		"auto mode":            func(s *v1.ServiceSpec) { s.Rollout.Mode = ModeAuto },
		"empty mode":           func(s *v1.ServiceSpec) { s.Rollout.Mode = "" },
		"dollar without brace": func(s *v1.ServiceSpec) { s.Run.Command = append(s.Run.Command, "$HOME", "cost: $5") },
		// 0 is the default (1s, 2s), as it always was: not under the floor.
		"check interval and timeout 0": func(s *v1.ServiceSpec) {
			s.Checks[0].Interval, s.Checks[0].Timeout = durationpb.New(0), durationpb.New(0)
		},
		"check interval and timeout at the floors": func(s *v1.ServiceSpec) {
			s.Checks[0].Interval, s.Checks[0].Timeout = durationpb.New(MinCheckInterval), durationpb.New(MinCheckTimeout)
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s := valid()
			mutate(s)
			if err := Validate(s); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *v1.ServiceSpec)
		want   string // one complete problem line
	}{
		{"bad name", func(s *v1.ServiceSpec) { s.Name = "Web_1" }, `name: invalid name "Web_1"`},
		{"empty name", func(s *v1.ServiceSpec) { s.Name = "" }, `name: invalid name ""`},
		{"bad selector key", func(s *v1.ServiceSpec) { s.Selector = map[string]string{"bad key": "x"} }, `selector: invalid label key "bad key"`},
		{"bad selector value", func(s *v1.ServiceSpec) { s.Selector = map[string]string{"role": "a b"} }, `selector[role]: invalid label value "a b"`},
		{"no run", func(s *v1.ServiceSpec) { s.Run = nil }, `run.command: must not be empty`},
		{"empty command", func(s *v1.ServiceSpec) { s.Run.Command = nil }, `run.command: must not be empty`},
		{"empty program", func(s *v1.ServiceSpec) { s.Run.Command = []string{""} }, `run.command[0]: program must not be empty`},
		{"unknown placeholder", func(s *v1.ServiceSpec) { s.Run.Command[1] = "${host.name}" }, `run.command[1]: unknown placeholder ${host.name} (want ${host.id} or ${host.label.KEY})`},
		{"unterminated placeholder", func(s *v1.ServiceSpec) { s.Run.Command[1] = "--id=${host.id" }, `run.command[1]: unterminated placeholder in "--id=${host.id"`},
		{"bad placeholder label", func(s *v1.ServiceSpec) { s.Run.Command[1] = "${host.label.a b}" }, `run.command[1]: placeholder ${host.label.a b}: invalid label key "a b"`},
		{"empty placeholder label", func(s *v1.ServiceSpec) { s.Run.Command[1] = "${host.label.}" }, `run.command[1]: placeholder ${host.label.}: invalid label key ""`},
		{"NUL in arg", func(s *v1.ServiceSpec) { s.Run.Command[1] = "a\x00b" }, `run.command[1]: "a\x00b" contains a NUL byte`},
		{"bad env name", func(s *v1.ServiceSpec) { s.Run.Env = map[string]string{"1X": "y"} }, `run.env[1X]: invalid environment variable name "1X"`},
		{"bad env placeholder", func(s *v1.ServiceSpec) { s.Run.Env = map[string]string{"X": "${zone}"} }, `run.env[X]: unknown placeholder ${zone}`},
		{"negative stop grace", func(s *v1.ServiceSpec) { s.Run.StopGrace = durationpb.New(-time.Second) }, `run.stop_grace: -1s is negative`},
		{"invalid duration", func(s *v1.ServiceSpec) { s.Run.StopGrace = &durationpb.Duration{Seconds: 1, Nanos: -5} }, `run.stop_grace: invalid duration 1s -5ns`},
		{"no check kind", func(s *v1.ServiceSpec) { s.Checks[0].Kind = nil }, `checks[0]: exactly one of http, tcp, exec must be set`},
		{"bad check name", func(s *v1.ServiceSpec) { s.Checks[0].Name = "my check" }, `checks[0].name: invalid check name "my check"`},
		{"duplicate check name", func(s *v1.ServiceSpec) { s.Checks[2].Name = "http" }, `checks[2].name: "http" is also the name of checks[0]`},
		{"duplicate default name", func(s *v1.ServiceSpec) { s.Checks[1] = proto.Clone(s.Checks[0]).(*v1.Check) }, `checks[1].name: "http" is also the name of checks[0]`},
		{"empty url", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "" }, `checks[0].http.url: must not be empty`},
		{"url scheme", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "ftp://x/" }, `checks[0].http.url: "ftp://x/" is not an http:// or https:// URL`},
		{"url no host", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "http:///healthz" }, `checks[0].http.url: "http:///healthz" has no host`},
		{"url unparsable", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "http://[::1/x" }, `checks[0].http.url: invalid URL "http://[::1/x"`},
		{"url placeholder", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "http://${host.ip}/" }, `checks[0].http.url: unknown placeholder ${host.ip}`},
		{"expect status", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().ExpectStatus = 700 }, `checks[0].http.expect_status: 700 is not an HTTP status (100..599)`},
		{"tcp empty", func(s *v1.ServiceSpec) { s.Checks[1].GetTcp().Address = "" }, `checks[1].tcp.address: must not be empty`},
		{"tcp no port", func(s *v1.ServiceSpec) { s.Checks[1].GetTcp().Address = "localhost" }, `checks[1].tcp.address: "localhost" is not host:port`},
		{"tcp bad port", func(s *v1.ServiceSpec) { s.Checks[1].GetTcp().Address = "localhost:http" }, `checks[1].tcp.address: "localhost:http" has an invalid port "http"`},
		{"tcp port 0", func(s *v1.ServiceSpec) { s.Checks[1].GetTcp().Address = "localhost:0" }, `checks[1].tcp.address: "localhost:0" has an invalid port "0"`},
		{"tcp no host", func(s *v1.ServiceSpec) { s.Checks[1].GetTcp().Address = ":80" }, `checks[1].tcp.address: ":80" has no host`},
		{"exec empty", func(s *v1.ServiceSpec) { s.Checks[2].GetExec().Command = nil }, `checks[2].exec.command: must not be empty`},
		{"exec placeholder", func(s *v1.ServiceSpec) { s.Checks[2].GetExec().Command[1] = "${x}" }, `checks[2].exec.command[1]: unknown placeholder ${x}`},
		{"negative interval", func(s *v1.ServiceSpec) { s.Checks[0].Interval = durationpb.New(-time.Millisecond) }, `checks[0].interval: -1ms is negative`},
		{"negative timeout", func(s *v1.ServiceSpec) { s.Checks[0].Timeout = durationpb.New(-time.Second) }, `checks[0].timeout: -1s is negative`},
		{"interval 1ns", func(s *v1.ServiceSpec) { s.Checks[2].Interval = durationpb.New(time.Nanosecond) }, `checks[2].interval: 1ns is less than 100ms`},
		{"interval under the floor", func(s *v1.ServiceSpec) { s.Checks[1].Interval = durationpb.New(99 * time.Millisecond) }, `checks[1].interval: 99ms is less than 100ms`},
		{"timeout under the floor", func(s *v1.ServiceSpec) { s.Checks[0].Timeout = durationpb.New(time.Millisecond) }, `checks[0].timeout: 1ms is less than 10ms`},
		{"min healthy >= deadline", func(s *v1.ServiceSpec) { s.MinHealthyTime = durationpb.New(time.Minute) }, `min_healthy_time: 1m0s is not less than healthy_deadline 1m0s`},
		{"deadline below default min", func(s *v1.ServiceSpec) { s.MinHealthyTime = nil; s.HealthyDeadline = durationpb.New(5 * time.Second) }, `min_healthy_time: 10s (default) is not less than healthy_deadline 5s`},
		{"min above default deadline", func(s *v1.ServiceSpec) { s.HealthyDeadline = nil; s.MinHealthyTime = durationpb.New(time.Hour) }, `min_healthy_time: 1h0m0s is not less than healthy_deadline 5m0s (default)`},
		{"negative deadline", func(s *v1.ServiceSpec) { s.HealthyDeadline = durationpb.New(-time.Second) }, `healthy_deadline: -1s is negative`},
		{"negative min healthy", func(s *v1.ServiceSpec) { s.MinHealthyTime = durationpb.New(-time.Second) }, `min_healthy_time: -1s is negative`},
		{"wave not increasing", func(s *v1.ServiceSpec) { s.Rollout.Waves = []uint32{50, 40, 100} }, `rollout.waves[1]: 40 is not greater than the previous wave 50`},
		{"wave equal", func(s *v1.ServiceSpec) { s.Rollout.Waves = []uint32{50, 50, 100} }, `rollout.waves[1]: 50 is not greater than the previous wave 50`},
		{"wave zero", func(s *v1.ServiceSpec) { s.Rollout.Waves = []uint32{0, 100} }, `rollout.waves[0]: 0 is not a percentage in 1..100`},
		{"wave over 100", func(s *v1.ServiceSpec) { s.Rollout.Waves = []uint32{50, 150} }, `rollout.waves[1]: 150 is not a percentage in 1..100`},
		{"last wave not 100", func(s *v1.ServiceSpec) { s.Rollout.Waves = []uint32{10, 80} }, `rollout.waves: the last wave is 80, must be 100`},
		{"bad mode", func(s *v1.ServiceSpec) { s.Rollout.Mode = "fast" }, `rollout.mode: "fast" is not auto or manual`},
		{"bad on_new_release", func(s *v1.ServiceSpec) { s.Rollout.OnNewRelease = "wait" }, `rollout.on_new_release: "wait" is not supersede or queue`},
		{"canary too big", func(s *v1.ServiceSpec) { s.Rollout.Canary = 1001 }, `rollout.canary: 1001 is more than 1000`},
		{"canary with no_canary", func(s *v1.ServiceSpec) { s.Rollout.NoCanary = true }, `rollout.canary: 1 is set but no_canary is true`},
		{"negative bake", func(s *v1.ServiceSpec) { s.Rollout.Bake = durationpb.New(-time.Second) }, `rollout.bake: -1s is negative`},
		{"too many checks", func(s *v1.ServiceSpec) {
			for i := len(s.Checks); i < 65; i++ {
				s.Checks = append(s.Checks, &v1.Check{Name: fmt.Sprintf("c%d", i), Kind: &v1.Check_Tcp{Tcp: &v1.TcpCheck{Address: "127.0.0.1:1"}}})
			}
		}, `checks: 65 checks and 0 analysis rules, more than 64 together`},
		{"negative progress deadline", func(s *v1.ServiceSpec) { s.Rollout.ProgressDeadline = durationpb.New(-time.Minute) }, `rollout.progress_deadline: -1m0s is negative`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := valid()
			tt.mutate(s)
			err := Validate(s)
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			lines := strings.Split(err.Error(), "\n")
			found := false
			for _, l := range lines {
				if strings.HasPrefix(l, tt.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no problem starting with %q in:\n%v", tt.want, err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error is not a *FieldError: %T", err)
			}
		})
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	s := valid()
	s.Name = ""
	s.Run.Command = nil
	s.Checks[0].Kind = nil
	s.Rollout.Waves = []uint32{50, 40}
	s.Rollout.Mode = "fast"
	err := Validate(s)
	if err == nil {
		t.Fatal("Validate succeeded")
	}
	want := []string{
		`name: invalid name ""`,
		"run.command: must not be empty",
		"checks[0]: exactly one of http, tcp, exec must be set",
		"rollout.waves[1]: 40 is not greater than the previous wave 50",
		"rollout.waves: the last wave is 40, must be 100",
		`rollout.mode: "fast" is not auto or manual`,
	}
	got := strings.Split(err.Error(), "\n")
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = strings.HasPrefix(got[i], want[i])
	}
	if !ok {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if Validate(nil) == nil {
		t.Error("Validate(nil) succeeded")
	}
}

func TestValidateFromYAML(t *testing.T) {
	// The example from the brief with two mistakes, end to end.
	in := strings.Replace(string(readTestdata(t, "web.yaml")), "waves: [50, 100]", "waves: [50, 40, 100]", 1)
	in = strings.Replace(in, "mode: auto", "mode: fast", 1)
	s, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	err = Validate(s)
	for _, w := range []string{"rollout.waves[1]: 40 is not greater than the previous wave 50", `rollout.mode: "fast" is not auto or manual`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Validate = %v, want it to contain %q", err, w)
		}
	}
}

func validRelease() *v1.Release {
	return &v1.Release{
		Service:    "web",
		Version:    "1.2.3+build.4",
		Artifact:   &v1.Artifact{Sha256: strings.Repeat("ab", 32), Size: 1024},
		Commit:     "0123abc",
		CommitTime: timestamppb.New(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)),
		CreatedBy:  "ci@build-1",
	}
}

func TestValidateRelease(t *testing.T) {
	if err := ValidateRelease(validRelease()); err != nil {
		t.Fatalf("valid release: %v", err)
	}
	withURL := validRelease()
	withURL.Artifact.Url = "https://artifacts.example/web-1.2.3.tar.gz"
	if err := ValidateRelease(withURL); err != nil {
		t.Fatalf("release with url: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(r *v1.Release)
		want   string
	}{
		{"service", func(r *v1.Release) { r.Service = "Web" }, `service: invalid name "Web"`},
		{"version", func(r *v1.Release) { r.Version = "" }, `version: invalid version ""`},
		{"version chars", func(r *v1.Release) { r.Version = "1.0/evil" }, `version: invalid version "1.0/evil"`},
		{"no artifact", func(r *v1.Release) { r.Artifact = nil }, `artifact: must be set`},
		{"sha missing", func(r *v1.Release) { r.Artifact.Sha256 = "" }, `artifact.sha256: invalid sha256 ""`},
		{"sha missing with url", func(r *v1.Release) { r.Artifact.Sha256 = ""; r.Artifact.Url = "http://x/a" }, `artifact.sha256: invalid sha256 ""`},
		{"sha upper", func(r *v1.Release) { r.Artifact.Sha256 = strings.Repeat("AB", 32) }, `artifact.sha256: invalid sha256 "ABAB`},
		{"sha short", func(r *v1.Release) { r.Artifact.Sha256 = "abc" }, `artifact.sha256: invalid sha256 "abc"`},
		{"size zero", func(r *v1.Release) { r.Artifact.Size = 0 }, `artifact.size: 0 is not greater than 0`},
		{"size negative", func(r *v1.Release) { r.Artifact.Size = -4 }, `artifact.size: -4 is not greater than 0`},
		{"url scheme", func(r *v1.Release) { r.Artifact.Url = "file:///etc/passwd" }, `artifact.url: "file:///etc/passwd" is not an http:// or https:// URL`},
		{"url parse", func(r *v1.Release) { r.Artifact.Url = "http://a b/" }, `artifact.url: invalid URL "http://a b/"`},
		{"url no host", func(r *v1.Release) { r.Artifact.Url = "https:/x" }, `artifact.url: "https:/x" has no host`},
		{"commit long", func(r *v1.Release) { r.Commit = strings.Repeat("a", 129) }, `commit: 129 bytes, more than 128`},
		{"commit control", func(r *v1.Release) { r.Commit = "abc\n" }, `commit: "abc\n" contains non-printable characters`},
		{"created_by invalid utf8", func(r *v1.Release) { r.CreatedBy = "a\xffb" }, `created_by: "a\xffb" contains non-printable characters`},
		{"commit time", func(r *v1.Release) { r.CommitTime = &timestamppb.Timestamp{Seconds: math.MaxInt64} }, `commit_time: invalid timestamp`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRelease()
			tt.mutate(r)
			err := ValidateRelease(r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ValidateRelease = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if err := ValidateRelease(nil); err == nil {
		t.Error("ValidateRelease(nil) succeeded")
	}
}

func TestProtoDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                        "0s",
		500 * time.Millisecond:   "0.5s",
		90 * time.Minute:         "5400s",
		-1500 * time.Millisecond: "-1.5s",
		time.Nanosecond:          "0.000000001s",
		math.MinInt64:            "-9223372036.854775808s",
		math.MaxInt64:            "9223372036.854775807s",
	} {
		if got := protoDuration(d); got != want {
			t.Errorf("protoDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestExampleFiles parses and validates every spec in testdata/ and every
// service spec among the project's example files (a YAML file under
// deployments/examples/ with a top-level "run" key is a service spec).
func TestExampleFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata specs: %v", err)
	}
	for _, pattern := range []string{"*.yaml", "*.yml", "*/*.yaml", "*/*.yml"} {
		more, _ := filepath.Glob(filepath.Join("..", "..", "deployments", "examples", pattern))
		for _, f := range more {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var top map[string]any
			if yaml.Unmarshal(b, &top) == nil && top["run"] != nil {
				files = append(files, f)
			}
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			s, err := Parse(b)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if err := Validate(s); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		})
	}
}

// A refused value is quoted clipped, with its length: a caller's
// megabytes are not echoed back (a peer's Download echoed a 3 MiB sha256
// in its error).
func TestCheckErrorsQuoteClipped(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	for name, err := range map[string]error{
		"sha256":  CheckSHA256("sha256", big),
		"name":    CheckName("service", big),
		"version": CheckVersion("version", big),
		"host":    CheckHostID("host_id", big),
		"label":   CheckLabels("labels", map[string]string{"k": big}),
	} {
		if err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), "(3145728 bytes)") {
			t.Errorf("%s: %d-byte error, want under 400 naming the value's length", name, len(fmt.Sprint(err)))
		}
	}
	if err := CheckSHA256("sha256", "ABC"); err == nil || !strings.Contains(err.Error(), `sha256: invalid sha256 "ABC"`) {
		t.Errorf("a short value: %v, want it quoted whole", err)
	}
}
