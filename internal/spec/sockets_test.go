package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/hookspec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestParseHandoverExample(t *testing.T) {
	s, err := Parse(readTestdata(t, "handover.yaml"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := Validate(s); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := &v1.RunSpec{
		Command: []string{"./api"},
		Sockets: []*v1.Socket{
			{Name: "http", Listen: "127.0.0.1:${host.label.port}"},
			{Name: "admin", Listen: "unix:/run/fleetwave/api-${host.id}.sock"},
		},
		Ready:         ReadyNotify,
		ReadyTimeout:  durationpb.New(30 * time.Second),
		ShutdownDelay: durationpb.New(5 * time.Second),
		PreStop:       &v1.PreStop{Command: []string{"./deregister.sh", "${host.id}"}, Timeout: durationpb.New(10 * time.Second)},
		StopGrace:     durationpb.New(20 * time.Second),
	}
	if !proto.Equal(s.GetRun(), want) {
		t.Fatalf("run =\n%v\nwant\n%v", s.GetRun(), want)
	}
}

func TestParseHandoverErrors(t *testing.T) {
	for in, want := range map[string]string{
		"run: {sockets: {name: http}}\n":                     "run.sockets: want a list, got a mapping",
		"run: {sockets: [{name: http, port: 80}]}\n":         "run.sockets[0].port: unknown field",
		"run: {sockets: [{name: http, listen: 8080}]}\n":     "run.sockets[0].listen: want a string, got number 8080 (quote it)",
		"run: {ready_timeout: soon}\n":                       `run.ready_timeout: invalid duration "soon"`,
		"run: {shutdown_delay: 5}\n":                         `run.shutdown_delay: want a duration such as "10s"`,
		"run: {pre_stop: [./x]}\n":                           "run.pre_stop: want a mapping of fields, got a list",
		"run: {pre_stop: {command: [./x], timeout: 1d}}\n":   `run.pre_stop.timeout: invalid duration "1d"`,
		"run: {readyTimeout: 1s, ready_timeout: 2s}\n":       "run.ready_timeout: set twice",
		"run: {sockets: [{name: a, listen: 'x:1'}], x: 1}\n": "run.x: unknown field",
	} {
		_, err := Parse([]byte(in))
		if err == nil || !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want ErrSyntax containing %q", in, err, want)
		}
	}
}

// handover returns a valid spec using every handover field.
func handover() *v1.ServiceSpec {
	s := valid()
	s.Run.Sockets = []*v1.Socket{
		{Name: "http", Listen: "127.0.0.1:${host.label.port}"},
		{Name: "grpc", Listen: "[::1]:9090"},
		{Name: "admin", Listen: "unix:/run/web/${host.id}.sock"},
	}
	s.Run.Ready = ReadyNotify
	s.Run.ReadyTimeout = durationpb.New(30 * time.Second)
	s.Run.ShutdownDelay = durationpb.New(5 * time.Second)
	s.Run.PreStop = &v1.PreStop{Command: []string{"./deregister.sh", "--host=${host.id}"}, Timeout: durationpb.New(10 * time.Second)}
	return s
}

func TestValidateHandoverOK(t *testing.T) {
	cases := map[string]func(r *v1.RunSpec){
		"as is":            func(r *v1.RunSpec) {},
		"ready started":    func(r *v1.RunSpec) { r.Ready = ReadyStarted; r.ReadyTimeout = nil },
		"ready unset":      func(r *v1.RunSpec) { r.Ready = ""; r.ReadyTimeout = nil },
		"no sockets":       func(r *v1.RunSpec) { r.Sockets = nil },
		"all addresses":    func(r *v1.RunSpec) { r.Sockets[0].Listen = ":8080" },
		"ipv4 any":         func(r *v1.RunSpec) { r.Sockets[0].Listen = "0.0.0.0:${host.label.port}" },
		"ipv6 any":         func(r *v1.RunSpec) { r.Sockets[0].Listen = "[::]:80" },
		"ipv6 zone":        func(r *v1.RunSpec) { r.Sockets[0].Listen = "[fe80::1%eth0]:80" },
		"hostname":         func(r *v1.RunSpec) { r.Sockets[0].Listen = "localhost:65535" },
		"host from label":  func(r *v1.RunSpec) { r.Sockets[0].Listen = "${host.label.ip}:${host.label.port}" },
		"name with space":  func(r *v1.RunSpec) { r.Sockets[0].Name = "web server" },
		"name 255":         func(r *v1.RunSpec) { r.Sockets[0].Name = strings.Repeat("n", 255) },
		"name punctuation": func(r *v1.RunSpec) { r.Sockets[0].Name = "a.b-c_d/e=f" },
		"16 sockets": func(r *v1.RunSpec) {
			r.Sockets = nil
			for i := range MaxSockets {
				r.Sockets = append(r.Sockets, &v1.Socket{Name: fmt.Sprint("s", i), Listen: fmt.Sprint("127.0.0.1:", 8000+i)})
			}
		},
		"unix path 107": func(r *v1.RunSpec) { r.Sockets[2].Listen = "unix:/" + strings.Repeat("p", 106) },
		"no delay":      func(r *v1.RunSpec) { r.ShutdownDelay = nil },
		"zero delay":    func(r *v1.RunSpec) { r.ShutdownDelay = durationpb.New(0) },
		"max delay":     func(r *v1.RunSpec) { r.ShutdownDelay = durationpb.New(MaxShutdownDelay) },
		"pre_stop default timeout": func(r *v1.RunSpec) {
			r.PreStop.Timeout = nil
		},
		"pre_stop max timeout": func(r *v1.RunSpec) { r.PreStop.Timeout = durationpb.New(hookspec.MaxBeforeStopTimeout) },
		"no pre_stop":          func(r *v1.RunSpec) { r.PreStop = nil },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s := handover()
			mutate(s.Run)
			if err := Validate(s); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
	// The readiness wait must fit in healthy_deadline.
	s := handover()
	s.Run.ReadyTimeout = nil // default 1m
	s.HealthyDeadline = nil  // default 5m
	if err := Validate(s); err != nil {
		t.Errorf("default ready_timeout and healthy_deadline: %v", err)
	}
	s.Run.ReadyTimeout = durationpb.New(MaxReadyTimeout)
	s.HealthyDeadline = durationpb.New(2 * MaxReadyTimeout)
	if err := Validate(s); err != nil {
		t.Errorf("longest ready_timeout: %v", err)
	}
}

func TestValidateHandoverErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *v1.ServiceSpec)
		want   string // one complete problem line, or its start
	}{
		{"empty socket name", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Name = "" }, `run.sockets[0].name: must not be empty`},
		{"colon in name", func(s *v1.ServiceSpec) { s.Run.Sockets[1].Name = "a:b" }, `run.sockets[1].name: invalid socket name "a:b": ':' separates the names in LISTEN_FDNAMES`},
		{"control in name", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Name = "a\tb" }, `run.sockets[0].name: invalid socket name "a\tb": want printable ASCII`},
		{"DEL in name", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Name = "a\x7f" }, `run.sockets[0].name: invalid socket name "a\x7f": want printable ASCII`},
		{"non-ASCII name", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Name = "héllo" }, `run.sockets[0].name: invalid socket name "héllo": want printable ASCII`},
		{"name too long", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Name = strings.Repeat("n", 256) }, `run.sockets[0].name: "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn..." is 256 bytes, more than 255`},
		{"duplicate name", func(s *v1.ServiceSpec) { s.Run.Sockets[2].Name = "http" }, `run.sockets[2].name: "http" is also the name of run.sockets[0]`},
		{"too many sockets", func(s *v1.ServiceSpec) {
			for i := range MaxSockets {
				s.Run.Sockets = append(s.Run.Sockets, &v1.Socket{Name: fmt.Sprint("x", i), Listen: fmt.Sprint(":", 9100+i)})
			}
		}, `run.sockets: 19 sockets, more than 16`},
		{"empty listen", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "" }, `run.sockets[0].listen: must not be empty`},
		{"no port", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "127.0.0.1" }, `run.sockets[0].listen: "127.0.0.1": want host:port or unix:/absolute/path`},
		{"named port", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "127.0.0.1:http" }, `run.sockets[0].listen: "127.0.0.1:http": invalid port "http" (want a number in 1..65535)`},
		{"port too big", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "127.0.0.1:65536" }, `run.sockets[0].listen: "127.0.0.1:65536": invalid port "65536"`},
		{"port 0", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "127.0.0.1:0" }, `run.sockets[0].listen: "127.0.0.1:0": port 0 is not a fixed address`},
		{"port 00", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "127.0.0.1:00" }, `run.sockets[0].listen: "127.0.0.1:00": invalid port "00"`},
		{"bad host", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "a b:80" }, `run.sockets[0].listen: "a b:80": invalid host "a b"`},
		{"unbracketed ipv6", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "::1:80" }, `run.sockets[0].listen: "::1:80": want host:port`},
		{"url", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "http://x:80" }, `run.sockets[0].listen: "http://x:80": want host:port or unix:/absolute/path`},
		{"unix relative", func(s *v1.ServiceSpec) { s.Run.Sockets[2].Listen = "unix:run/x.sock" }, `run.sockets[2].listen: "unix:run/x.sock": path "run/x.sock" is not absolute`},
		{"unix empty", func(s *v1.ServiceSpec) { s.Run.Sockets[2].Listen = "unix:" }, `run.sockets[2].listen: "unix:": unix: needs a path`},
		{"unix dir", func(s *v1.ServiceSpec) { s.Run.Sockets[2].Listen = "unix:/run/" }, `run.sockets[2].listen: "unix:/run/": path "/run/" names a directory`},
		{"unix too long", func(s *v1.ServiceSpec) { s.Run.Sockets[2].Listen = "unix:/" + strings.Repeat("p", 107) }, `run.sockets[2].listen: "unix:/ppp`},
		{"unix NUL", func(s *v1.ServiceSpec) { s.Run.Sockets[2].Listen = "unix:/a\x00b" }, `run.sockets[2].listen: "unix:/a\x00b" contains a NUL byte`},
		{"listen placeholder", func(s *v1.ServiceSpec) { s.Run.Sockets[0].Listen = "127.0.0.1:${port}" }, `run.sockets[0].listen: unknown placeholder ${port}`},
		{"duplicate listen", func(s *v1.ServiceSpec) { s.Run.Sockets[1].Listen = s.Run.Sockets[0].Listen }, `run.sockets[1].listen: "127.0.0.1:${host.label.port}" is also the address of run.sockets[0]`},
		{"bad ready", func(s *v1.ServiceSpec) { s.Run.Ready = "healthy" }, `run.ready: "healthy" is not started or notify`},
		{"ready_timeout without notify", func(s *v1.ServiceSpec) { s.Run.Ready = "" }, `run.ready_timeout: 30s is set but run.ready is "started" (only notify waits)`},
		{"ready_timeout zero", func(s *v1.ServiceSpec) { s.Run.ReadyTimeout = durationpb.New(0) }, `run.ready_timeout: 0s: must be more than 0 (leave it out for the default 1m0s)`},
		{"ready_timeout negative", func(s *v1.ServiceSpec) { s.Run.ReadyTimeout = durationpb.New(-time.Second) }, `run.ready_timeout: -1s is negative`},
		{"ready_timeout too long", func(s *v1.ServiceSpec) { s.Run.ReadyTimeout = durationpb.New(2 * time.Hour) }, `run.ready_timeout: 2h0m0s is more than 1h0m0s`},
		{"ready_timeout >= deadline", func(s *v1.ServiceSpec) { s.Run.ReadyTimeout = durationpb.New(time.Minute) }, `run.ready_timeout: 1m0s is not less than healthy_deadline 1m0s`},
		{"default ready_timeout >= deadline", func(s *v1.ServiceSpec) {
			s.Run.ReadyTimeout = nil
			s.HealthyDeadline = durationpb.New(40 * time.Second)
		}, `run.ready_timeout: 1m0s (default) is not less than healthy_deadline 40s`},
		{"ready_timeout >= default deadline", func(s *v1.ServiceSpec) {
			s.Run.ReadyTimeout = durationpb.New(5 * time.Minute)
			s.HealthyDeadline = nil
		}, `run.ready_timeout: 5m0s is not less than healthy_deadline 5m0s (default)`},
		{"negative delay", func(s *v1.ServiceSpec) { s.Run.ShutdownDelay = durationpb.New(-time.Second) }, `run.shutdown_delay: -1s is negative`},
		{"delay too long", func(s *v1.ServiceSpec) { s.Run.ShutdownDelay = durationpb.New(11 * time.Minute) }, `run.shutdown_delay: 11m0s is more than 10m0s`},
		{"invalid delay", func(s *v1.ServiceSpec) { s.Run.ShutdownDelay = &durationpb.Duration{Seconds: -1, Nanos: 5} }, `run.shutdown_delay: invalid duration -1s 5ns`},
		{"pre_stop no command", func(s *v1.ServiceSpec) { s.Run.PreStop.Command = nil }, `run.pre_stop.command: must not be empty`},
		{"pre_stop empty program", func(s *v1.ServiceSpec) { s.Run.PreStop.Command = []string{""} }, `run.pre_stop.command: must not be empty`},
		{"pre_stop placeholder", func(s *v1.ServiceSpec) { s.Run.PreStop.Command[1] = "${host.ip}" }, `run.pre_stop.command[1]: unknown placeholder ${host.ip}`},
		{"pre_stop zero timeout", func(s *v1.ServiceSpec) { s.Run.PreStop.Timeout = durationpb.New(0) }, `run.pre_stop.timeout: 0s: must be more than 0 (leave it out for the default 10s)`},
		{"pre_stop negative timeout", func(s *v1.ServiceSpec) { s.Run.PreStop.Timeout = durationpb.New(-time.Second) }, `run.pre_stop.timeout: -1s is negative`},
		{"pre_stop long timeout", func(s *v1.ServiceSpec) { s.Run.PreStop.Timeout = durationpb.New(time.Hour) }, `run.pre_stop.timeout: 1h0m0s is more than 5m0s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := handover()
			tt.mutate(s)
			err := Validate(s)
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			found := false
			for _, l := range strings.Split(err.Error(), "\n") {
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

func TestParseListen(t *testing.T) {
	ok := []struct{ in, network, addr string }{
		{"127.0.0.1:80", "tcp", "127.0.0.1:80"},
		{":8080", "tcp", ":8080"},
		{"127.0.0.1:0", "tcp", "127.0.0.1:0"},
		{"[::1]:443", "tcp", "[::1]:443"},
		{"localhost:1", "tcp", "localhost:1"},
		{"unix:/run/a.sock", "unix", "/run/a.sock"},
	}
	for _, c := range ok {
		n, a, err := ParseListen(c.in)
		if err != nil || n != c.network || a != c.addr {
			t.Errorf("ParseListen(%q) = %q, %q, %v; want %q, %q", c.in, n, a, err, c.network, c.addr)
		}
	}
	for _, in := range []string{"", "80", "unix:", "unix:a", "host:-1", "host:+1", "[::1]80", "a_b:80", "tcp://a:1"} {
		if n, a, err := ParseListen(in); err == nil {
			t.Errorf("ParseListen(%q) = %q, %q, want an error", in, n, a)
		}
	}
	if got := ListenPort("tcp", "[::1]:443"); got != "443" {
		t.Errorf("ListenPort = %q", got)
	}
	if got := ListenPort("unix", "/a"); got != "" {
		t.Errorf("ListenPort(unix) = %q", got)
	}
}
