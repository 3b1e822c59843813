package specdiff

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func base() *v1.ServiceSpec {
	return &v1.ServiceSpec{
		Name:     "web",
		Selector: map[string]string{"role": "web"},
		Run: &v1.RunSpec{Command: []string{"./app", "--port", "${host.label.port}"}, Env: map[string]string{"A": "1"},
			StopGrace: durationpb.New(10 * time.Second)},
		Checks:          []*v1.Check{{Name: "http", Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:8080/healthz"}}}},
		MinHealthyTime:  durationpb.New(time.Second),
		HealthyDeadline: durationpb.New(time.Minute),
		Rollout:         &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}},
		Analysis:        &v1.Analysis{MetricsUrl: "http://127.0.0.1:8080/metrics", Rules: []*v1.AnalysisRule{{Name: "r", Kind: &v1.AnalysisRule_Restarts{Restarts: &v1.RestartsRule{Max: 1}}}}},
		Alerts:          &v1.Alerts{WebhookUrl: "http://hooks/x"},
		Resources:       &v1.Resources{MemoryMax: "256Mi", CpuWeight: 100},
	}
}

// inPlace are the rows of TestRule whose change a host applies in place
// (InPlace: only how the release is judged or its resource limits
// change); every other row with host changes restarts the process.
var inPlace = map[string]bool{
	"checks": true, "checks removed": true, "min_healthy_time": true, "healthy_deadline": true,
	"analysis.rules": true, "analysis.watch": true, "analysis removed": true, "judging together": true,
	"resources": true, "resources.memory_max": true, "resources.cpu_weight": true, "resources.tasks_max": true,
	"resources removed": true, "resources and judging": true,
}

// resized are the rows of TestRule whose change rewrites the running
// process's limits (Resized).
var resized = map[string]bool{
	"resources": true, "resources.memory_max": true, "resources.cpu_weight": true, "resources.tasks_max": true,
	"resources removed": true, "resources and judging": true, "resources and run": true, "resources and hooks": true,
}

// TestRule is the rule, one row per change: which fields a change names
// and whether it rolls out (and whether in place: inPlace). Every field of ServiceSpec and RunSpec has a
// row (TestEveryFieldHasARow).
func TestRule(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(s *v1.ServiceSpec)
		host   []string // host-affecting changes (rolls out)
		coord  []string // coordinator-only (applied without a rollout)
		place  []string // placement (hosts move)
	}{
		{"nothing", func(s *v1.ServiceSpec) {}, nil, nil, nil},
		{"name", func(s *v1.ServiceSpec) { s.Name = "api" }, nil, []string{"name"}, nil},
		{"selector", func(s *v1.ServiceSpec) { s.Selector["zone"] = "a" }, nil, nil, []string{"selector"}},
		{"selector removed", func(s *v1.ServiceSpec) { s.Selector = nil }, nil, nil, []string{"selector"}},
		{"run.command", func(s *v1.ServiceSpec) { s.Run.Command[2] = "9090" }, []string{"run.command"}, nil, nil},
		{"run.env value", func(s *v1.ServiceSpec) { s.Run.Env["A"] = "2" }, []string{"run.env"}, nil, nil},
		{"run.env added", func(s *v1.ServiceSpec) { s.Run.Env["B"] = "" }, []string{"run.env"}, nil, nil},
		{"run.stop_grace", func(s *v1.ServiceSpec) { s.Run.StopGrace = durationpb.New(time.Minute) }, []string{"run.stop_grace"}, nil, nil},
		{"run.stop_grace unset", func(s *v1.ServiceSpec) { s.Run.StopGrace = nil }, []string{"run.stop_grace"}, nil, nil},
		{"run.sockets", func(s *v1.ServiceSpec) { s.Run.Sockets = []*v1.Socket{{Name: "http", Listen: ":80"}} }, []string{"run.sockets"}, nil, nil},
		{"run.ready", func(s *v1.ServiceSpec) { s.Run.Ready = "notify" }, []string{"run.ready"}, nil, nil},
		{"run.ready_timeout", func(s *v1.ServiceSpec) { s.Run.ReadyTimeout = durationpb.New(time.Minute) }, []string{"run.ready_timeout"}, nil, nil},
		{"run.shutdown_delay", func(s *v1.ServiceSpec) { s.Run.ShutdownDelay = durationpb.New(time.Second) }, []string{"run.shutdown_delay"}, nil, nil},
		{"run.pre_stop", func(s *v1.ServiceSpec) { s.Run.PreStop = &v1.PreStop{Command: []string{"./drain"}} }, []string{"run.pre_stop"}, nil, nil},
		{"run.user", func(s *v1.ServiceSpec) { s.Run.User = "web" }, []string{"run.user"}, nil, nil},
		{"run.group", func(s *v1.ServiceSpec) { s.Run.User, s.Run.Group = "web", "web" }, []string{"run.user", "run.group"}, nil, nil},
		{"run unset", func(s *v1.ServiceSpec) { s.Run = nil }, []string{"run"}, nil, nil},
		{"hooks", func(s *v1.ServiceSpec) { s.Hooks = &v1.Hooks{Validate: &v1.Hook{Command: []string{"./validate"}}} }, []string{"hooks"}, nil, nil},
		{"resources", func(s *v1.ServiceSpec) { s.Resources = &v1.Resources{MemoryMax: "512Mi"} }, []string{"resources.memory_max", "resources.cpu_weight"}, nil, nil},
		{"resources.memory_max", func(s *v1.ServiceSpec) { s.Resources.MemoryMax = "1Gi" }, []string{"resources.memory_max"}, nil, nil},
		{"resources.cpu_weight", func(s *v1.ServiceSpec) { s.Resources.CpuWeight = 500 }, []string{"resources.cpu_weight"}, nil, nil},
		{"resources.tasks_max", func(s *v1.ServiceSpec) { s.Resources.TasksMax = 64 }, []string{"resources.tasks_max"}, nil, nil},
		{"resources removed", func(s *v1.ServiceSpec) { s.Resources = nil }, []string{"resources"}, nil, nil},
		{"resources and judging", func(s *v1.ServiceSpec) {
			s.Resources.CpuWeight = 500
			s.Checks = nil
			s.Alerts = nil
		}, []string{"checks", "resources.cpu_weight"}, []string{"alerts"}, nil},
		{"resources and run", func(s *v1.ServiceSpec) {
			s.Resources.MemoryMax = "1Gi"
			s.Run.Env["A"] = "2"
		}, []string{"run.env", "resources.memory_max"}, nil, nil},
		{"resources and hooks", func(s *v1.ServiceSpec) {
			s.Resources.TasksMax = 64
			s.Hooks = &v1.Hooks{Validate: &v1.Hook{Command: []string{"./validate"}}}
		}, []string{"hooks", "resources.tasks_max"}, nil, nil},
		{"checks", func(s *v1.ServiceSpec) { s.Checks[0].GetHttp().Url = "http://127.0.0.1:8080/ready" }, []string{"checks"}, nil, nil},
		{"checks removed", func(s *v1.ServiceSpec) { s.Checks = nil }, []string{"checks"}, nil, nil},
		{"min_healthy_time", func(s *v1.ServiceSpec) { s.MinHealthyTime = durationpb.New(2 * time.Second) }, []string{"min_healthy_time"}, nil, nil},
		{"healthy_deadline", func(s *v1.ServiceSpec) { s.HealthyDeadline = nil }, []string{"healthy_deadline"}, nil, nil},
		{"analysis.rules", func(s *v1.ServiceSpec) { s.Analysis.Rules[0].GetRestarts().Max = 2 }, []string{"analysis.rules"}, nil, nil},
		{"analysis.watch", func(s *v1.ServiceSpec) { s.Analysis.Watch = durationpb.New(time.Minute) }, []string{"analysis.watch"}, nil, nil},
		{"analysis removed", func(s *v1.ServiceSpec) { s.Analysis = nil }, []string{"analysis"}, nil, nil},
		{"judging together", func(s *v1.ServiceSpec) {
			s.Checks = nil
			s.MinHealthyTime = nil
			s.Analysis.Watch = durationpb.New(time.Minute)
			s.Alerts = nil
		}, []string{"checks", "min_healthy_time", "analysis.watch"}, []string{"alerts"}, nil},
		{"judging and run", func(s *v1.ServiceSpec) {
			s.Checks = nil
			s.Run.Env["A"] = "2"
		}, []string{"run.env", "checks"}, nil, nil},
		{"judging and hooks", func(s *v1.ServiceSpec) {
			s.MinHealthyTime = nil
			s.Hooks = &v1.Hooks{Validate: &v1.Hook{Command: []string{"./validate"}}}
		}, []string{"min_healthy_time", "hooks"}, nil, nil},
		{"rollout", func(s *v1.ServiceSpec) { s.Rollout.MaxParallel = 5; s.Rollout.Mode = "manual" }, nil, []string{"rollout"}, nil},
		{"rollout removed", func(s *v1.ServiceSpec) { s.Rollout = nil }, nil, []string{"rollout"}, nil},
		{"alerts", func(s *v1.ServiceSpec) { s.Alerts.WebhookUrl = "http://hooks/y" }, nil, []string{"alerts"}, nil},
		{"all kinds", func(s *v1.ServiceSpec) {
			s.Run.Env = nil
			s.Checks = nil
			s.Alerts = nil
			s.Selector = nil
		}, []string{"run.env", "checks"}, []string{"alerts"}, []string{"selector"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.change(b)
			for _, dir := range [][2]*v1.ServiceSpec{{a, b}, {b, a}} {
				got := Diff(dir[0], dir[1])
				if !slices.Equal(got.Host, tc.host) || !slices.Equal(got.Coordinator, tc.coord) || !slices.Equal(got.Placement, tc.place) {
					t.Errorf("Diff = %+v, want host %v coordinator %v placement %v", got, tc.host, tc.coord, tc.place)
				}
				if got, want := InPlace(dir[0], dir[1]), inPlace[tc.name]; got != want {
					t.Errorf("InPlace = %v, want %v", got, want)
				}
				if got, want := Resized(dir[0], dir[1]), resized[tc.name]; got != want {
					t.Errorf("Resized = %v, want %v", got, want)
				}
				if HostAffecting(dir[0], dir[1]) != (len(tc.host) > 0) {
					t.Errorf("HostAffecting = %v", !(len(tc.host) > 0))
				}
			}
		})
	}
}

// TestEveryFieldHasARow fails when ServiceSpec or RunSpec gains a field
// that TestRule does not exercise: decide its kind (the default is Host)
// and add a row.
func TestEveryFieldHasARow(t *testing.T) {
	covered := []string{"name", "selector", "run", "checks", "min_healthy_time", "healthy_deadline", "rollout", "analysis", "alerts", "hooks", "resources"}
	fields := (&v1.ServiceSpec{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if n := string(fields.Get(i).Name()); !slices.Contains(covered, n) {
			t.Errorf("ServiceSpec.%s (kind %s) has no row in TestRule", n, KindOf(n))
		}
	}
	runCovered := []string{"command", "env", "stop_grace", "sockets", "ready", "ready_timeout", "shutdown_delay", "pre_stop", "user", "group"}
	run := (&v1.RunSpec{}).ProtoReflect().Descriptor().Fields()
	for i := range run.Len() {
		if n := string(run.Get(i).Name()); !slices.Contains(runCovered, n) {
			t.Errorf("RunSpec.%s has no row in TestRule", n)
		}
	}
	// A field added to Resources is applied in place with the others:
	// decide whether a running process's cgroup can take it (agent
	// supervise.SetLimits), and add a row.
	resCovered := []string{"memory_max", "cpu_weight", "tasks_max"}
	res := (&v1.Resources{}).ProtoReflect().Descriptor().Fields()
	for i := range res.Len() {
		if n := string(res.Get(i).Name()); !slices.Contains(resCovered, n) {
			t.Errorf("Resources.%s has no row in TestRule", n)
		}
	}
}

func TestKinds(t *testing.T) {
	for f, want := range map[string]Kind{"run": Host, "checks": Host, "analysis": Host, "min_healthy_time": Host,
		"healthy_deadline": Host, "hooks": Host, "resources": Host, "rollout": Coordinator, "alerts": Coordinator,
		"name": Coordinator, "selector": Placement} {
		if got := KindOf(f); got != want {
			t.Errorf("KindOf(%s) = %s, want %s", f, got, want)
		}
	}
}

// TestJudging: the judging class is exactly checks, min_healthy_time,
// healthy_deadline and analysis, and the in-place class is those and
// resources; no run field and no other field (a field added later
// restarts by default).
func TestJudging(t *testing.T) {
	fields := (&v1.ServiceSpec{}).ProtoReflect().Descriptor().Fields()
	var got, inPlace []string
	for i := range fields.Len() {
		n := string(fields.Get(i).Name())
		if Judging(n) {
			got = append(got, n)
		}
		if InPlaceField(n) {
			inPlace = append(inPlace, n)
			if KindOf(n) != Host {
				t.Errorf("in-place field %s is of kind %s, want host", n, KindOf(n))
			}
		}
	}
	if want := []string{"checks", "min_healthy_time", "healthy_deadline", "analysis"}; !slices.Equal(got, want) {
		t.Errorf("judging fields %v, want %v", got, want)
	}
	if want := []string{"checks", "min_healthy_time", "healthy_deadline", "analysis", "resources"}; !slices.Equal(inPlace, want) {
		t.Errorf("in-place fields %v, want %v", inPlace, want)
	}
	if InPlace(nil, nil) || InPlace(base(), base()) {
		t.Error("no change is in place")
	}
	if !InPlace(nil, &v1.ServiceSpec{Checks: base().Checks}) {
		t.Error("nil → checks only is in place")
	}
	if !InPlace(nil, &v1.ServiceSpec{Resources: &v1.Resources{CpuWeight: 200}}) || !Resized(nil, &v1.ServiceSpec{Resources: &v1.Resources{CpuWeight: 200}}) {
		t.Error("nil → resources only is in place, resized")
	}
	if Resized(nil, nil) || Resized(base(), base()) {
		t.Error("no change is resized")
	}
}

func TestNilAndInputsUntouched(t *testing.T) {
	if HostAffecting(nil, nil) || HostAffecting(nil, &v1.ServiceSpec{}) {
		t.Error("nil and empty specs differ")
	}
	if got := HostChanges(nil, base()); !slices.Equal(got, []string{"run", "checks", "min_healthy_time", "healthy_deadline", "analysis", "resources"}) {
		t.Errorf("nil → base: %v", got)
	}
	a, b := base(), base()
	b.Run.Env["A"] = "2"
	a0, b0 := proto.Clone(a), proto.Clone(b)
	_ = Diff(a, b)
	if !proto.Equal(a, a0) || !proto.Equal(b, b0) {
		t.Error("Diff changed its inputs")
	}
}

func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{
		"github.com/fleetwave/fleetwave/proto/fleetwave/v1": true,
		"google.golang.org/protobuf/proto":                  true,
		"google.golang.org/protobuf/reflect/protoreflect":   true,
	}, 1)
}

// HostSpec keeps exactly the host fields: equal HostSpecs, no host change.
func TestHostSpec(t *testing.T) {
	b := base()
	h := HostSpec(b)
	if h.GetName() != "" || h.GetSelector() != nil || h.GetRollout() != nil || h.GetAlerts() != nil {
		t.Errorf("HostSpec kept a field hosts do not run: %v", h)
	}
	if HostAffecting(h, b) {
		t.Errorf("HostSpec lost a host field: %v", HostChanges(h, b))
	}
	h.Run.Env["A"] = "changed"
	if b.Run.Env["A"] != "1" {
		t.Error("HostSpec shares its fields with its input")
	}
	if !proto.Equal(HostSpec(nil), &v1.ServiceSpec{}) {
		t.Error("HostSpec(nil)")
	}
}
