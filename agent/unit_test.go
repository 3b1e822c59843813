package agent

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Insecure: true, Coordinators: []string{"127.0.0.1:7070", "dns:///coord.example:7070"}, HostID: "h-1", Labels: map[string]string{"zone": "a"}, DataDir: "d"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"no coordinators", func(c *Config) { c.Coordinators = nil }, "coordinators"},
		{"bad coordinator", func(c *Config) { c.Coordinators = []string{"ok:1", "nohostport"} }, "coordinators[1]"},
		{"empty coordinator", func(c *Config) { c.Coordinators = []string{""} }, "coordinators[0]"},
		{"host id", func(c *Config) { c.HostID = "bad host" }, "host_id"},
		{"labels", func(c *Config) { c.Labels = map[string]string{"a b": "c"} }, "labels"},
		{"data dir", func(c *Config) { c.DataDir = " " }, "data_dir"},
		{"max bytes", func(c *Config) { c.MaxArtifactBytes = -1 }, "max_artifact_bytes"},
		// Over what coordinators take in a Hello: refused at start, not
		// cut off at every connection.
		{"too many labels", func(c *Config) {
			c.Labels = map[string]string{}
			for i := range spec.MaxHostLabels + 1 {
				c.Labels[fmt.Sprintf("l%d", i)] = "v"
			}
		}, "labels"},
		{"long peer advertise", func(c *Config) {
			c.Insecure, c.TLSCA, c.TLSCert, c.TLSKey = false, "ca", "cert", "key"
			c.PeerListen, c.PeerAdvertise = ":7071", strings.Repeat("a", 63)+"."+strings.Repeat("b", 63)+"."+strings.Repeat("c", 63)+"."+strings.Repeat("d", 60)+":65535"
		}, "peer_advertise"},
		{"long peer listen advertised", func(c *Config) {
			c.Insecure, c.TLSCA, c.TLSCert, c.TLSKey = false, "ca", "cert", "key"
			c.PeerListen = strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 60) + ":65535"
		}, "peer_listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mod(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.field) {
				t.Fatalf("err %v, want it to name %s", err, tt.field)
			}
		})
	}
}

func TestValidateAssignment(t *testing.T) {
	sha := strings.Repeat("a", 64)
	base := func() *v1.Assignment { return testAssignment("1.0.0", 1, sha, 100, "") }
	labels := map[string]string{"port": "8081", "name": "web"}
	if err := validateAssignment(base(), "h", labels, 1000, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	// The handover's fields are taken.
	handover := base()
	handover.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:${host.label.port}"}, {Name: "admin", Listen: "unix:/run/${host.id}.sock"}}
	handover.Spec.Run.Ready = "notify"
	handover.Spec.Run.ReadyTimeout = durationpb.New(10 * time.Second)
	handover.Spec.Run.ShutdownDelay = durationpb.New(time.Second)
	handover.Spec.Run.PreStop = &v1.PreStop{Command: []string{"./deregister", "${host.id}"}, Timeout: durationpb.New(5 * time.Second)}
	if err := validateAssignment(handover, "h", labels, 1000, t.TempDir()); err != nil {
		t.Fatalf("the handover's fields: %v", err)
	}
	tests := []struct {
		name  string
		mod   func(*v1.Assignment)
		field string
		value string // the error also names the bad value ("" not checked)
	}{
		{"service", func(a *v1.Assignment) { a.Service = "Bad_Name" }, "service", ""},
		{"generation", func(a *v1.Assignment) { a.Generation = 0 }, "generation", ""},
		{"replaces its own generation", func(a *v1.Assignment) { a.ReplacesGeneration = a.Generation }, "replaces_generation", ""},
		{"replaces a lower generation", func(a *v1.Assignment) { a.Generation, a.ReplacesGeneration = 5, 4 }, "replaces_generation", "4"},
		{"replaces a negative generation", func(a *v1.Assignment) { a.ReplacesGeneration = -5 }, "replaces_generation", "-5"},
		{"release missing", func(a *v1.Assignment) { a.Release = nil }, "release", ""},
		{"release service", func(a *v1.Assignment) { a.Release.Service = "other" }, "release.service", ""},
		{"version", func(a *v1.Assignment) { a.Release.Version = "../etc" }, "release.version", ""},
		{"version reserved", func(a *v1.Assignment) { a.Release.Version = "current" }, "release.version", ""},
		{"artifact missing", func(a *v1.Assignment) { a.Release.Artifact = nil }, "release.artifact", ""},
		{"sha", func(a *v1.Assignment) { a.Release.Artifact.Sha256 = "ABC" }, "release.artifact.sha256", ""},
		{"size zero", func(a *v1.Assignment) { a.Release.Artifact.Size = 0 }, "release.artifact.size", ""},
		{"size cap", func(a *v1.Assignment) { a.Release.Artifact.Size = 1001 }, "release.artifact.size", ""},
		{"url", func(a *v1.Assignment) { a.Release.Artifact.Url = "file:///etc/passwd" }, "release.artifact.url", ""},
		{"spec missing", func(a *v1.Assignment) { a.Spec = nil }, "spec", ""},
		{"spec name", func(a *v1.Assignment) { a.Spec.Name = "other" }, "spec.name", ""},
		{"command", func(a *v1.Assignment) { a.Spec.Run.Command = nil }, "spec.run.command", ""},
		{"command placeholder", func(a *v1.Assignment) { a.Spec.Run.Command = []string{"./x", "${host.label.nope}"} }, "spec.run.command[1]", ""},
		{"env name", func(a *v1.Assignment) { a.Spec.Run.Env = map[string]string{"A=B": "x"} }, "spec.run.env", ""},
		{"env placeholder", func(a *v1.Assignment) { a.Spec.Run.Env = map[string]string{"X": "${host.bogus}"} }, "spec.run.env[X]", "${host.bogus}"},
		{"deadline", func(a *v1.Assignment) { a.Spec.HealthyDeadline = durationpb.New(-time.Second) }, "spec.healthy_deadline", ""},
		// The handover's fields, as this host expands them.
		{"socket address from a label", func(a *v1.Assignment) {
			a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:${host.label.name}"}}
		}, "spec.run.sockets[0].listen", `"127.0.0.1:web"`},
		{"socket label missing", func(a *v1.Assignment) {
			a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:${host.label.nope}"}}
		}, "spec.run.sockets[0].listen", "${host.label.nope}"},
		{"socket name twice", func(a *v1.Assignment) {
			a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:1"}, {Name: "http", Listen: "127.0.0.1:2"}}
		}, "spec.run.sockets[1].name", `"http"`},
		{"socket port 0", func(a *v1.Assignment) {
			a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:0"}}
		}, "spec.run.sockets[0].listen", `"127.0.0.1:0"`},
		{"ready", func(a *v1.Assignment) { a.Spec.Run.Ready = "bogus" }, "spec.run.ready", `"bogus"`},
		{"ready_timeout", func(a *v1.Assignment) { a.Spec.Run.ReadyTimeout = durationpb.New(-time.Second) }, "spec.run.ready_timeout", "-1s"},
		{"shutdown_delay", func(a *v1.Assignment) { a.Spec.Run.ShutdownDelay = durationpb.New(11 * time.Minute) }, "spec.run.shutdown_delay", "11m0s"},
		{"pre_stop command", func(a *v1.Assignment) { a.Spec.Run.PreStop = &v1.PreStop{} }, "spec.run.pre_stop.command", ""},
		{"pre_stop placeholder", func(a *v1.Assignment) {
			a.Spec.Run.PreStop = &v1.PreStop{Command: []string{"./x", "${host.label.nope}"}}
		}, "spec.run.pre_stop.command[1]", "${host.label.nope}"},
		{"pre_stop timeout", func(a *v1.Assignment) {
			a.Spec.Run.PreStop = &v1.PreStop{Command: []string{"./x"}, Timeout: durationpb.New(0)}
		}, "spec.run.pre_stop.timeout", "0s"},
		{"min healthy", func(a *v1.Assignment) { a.Spec.MinHealthyTime = durationpb.New(-time.Second) }, "spec.min_healthy_time", ""},
		{"stop grace", func(a *v1.Assignment) { a.Spec.Run.StopGrace = durationpb.New(-time.Second) }, "spec.run.stop_grace", ""},
		{"check placeholder", func(a *v1.Assignment) {
			a.Spec.Checks[0].Kind = &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"${host.label.none}"}}}
		}, "spec.checks[0].exec.command[0]", ""},
		{"check invalid", func(a *v1.Assignment) {
			a.Spec.Checks = append(a.Spec.Checks, &v1.Check{Name: "empty"})
		}, "spec.checks[1]", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := base()
			tt.mod(a)
			err := validateAssignment(a, "h", labels, 1000, t.TempDir())
			if err == nil || !strings.HasPrefix(err.Error(), tt.field) || !strings.Contains(err.Error(), tt.value) {
				t.Fatalf("err %v, want it to name %s and %s", err, tt.field, tt.value)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	a := testAssignment("1", 1, strings.Repeat("a", 64), 1, "")
	a.Spec.Run.Env["B"] = "${host.id}-x"
	cmd, env, err := expandRun(a.Spec.Run, "h-9", map[string]string{"port": "81"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cmd, " ") != "./run.sh --id=h-9" || strings.Join(env, " ") != "B=h-9-x PORT=81" {
		t.Fatalf("cmd %q env %q", cmd, env)
	}
	c := &v1.Check{Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:${host.label.port}/health"}}}
	ec, err := expandCheck(c, 0, "h", map[string]string{"port": "81"})
	if err != nil || ec.GetHttp().GetUrl() != "http://127.0.0.1:81/health" || c.GetHttp().GetUrl() == ec.GetHttp().GetUrl() {
		t.Fatalf("%v %v (original must stay unexpanded)", ec, err)
	}
}

func TestBackoff(t *testing.T) {
	a := &agent{opts: options{backoffBase: 100 * time.Millisecond, backoffMax: 2 * time.Second}, rnd: rand.New(rand.NewPCG(1, 2))}
	for attempt := 0; attempt < 20; attempt++ {
		want := 100 * time.Millisecond << min(attempt, 10)
		if want > 2*time.Second {
			want = 2 * time.Second
		}
		for i := 0; i < 50; i++ {
			d := a.backoff(attempt)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: %v not in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

func TestReporterCoalescesAndHelloClears(t *testing.T) {
	r := newReporter(spec.MaxServicesPerHost)
	r.put(&v1.ServiceReport{Service: "b", Generation: 1})
	r.put(&v1.ServiceReport{Service: "a", Generation: 1})
	r.put(&v1.ServiceReport{Service: "b", Generation: 2})
	r.setLatest(&v1.ServiceReport{Service: "c", Generation: 7})
	got := r.take()
	if len(got) != 2 || got[0].Service != "a" || got[1].Service != "b" || got[1].Generation != 2 {
		t.Fatalf("take %v", got)
	}
	if len(r.take()) != 0 {
		t.Fatal("take twice")
	}
	r.put(&v1.ServiceReport{Service: "a", Generation: 3})
	h := r.hello(Config{HostID: "h"})
	if len(h.Services) != 3 || h.Services[2].Service != "c" || h.Services[0].Generation != 3 {
		t.Fatalf("hello %v", h)
	}
	if len(r.take()) != 0 {
		t.Fatal("hello must carry what was pending")
	}
}
