// Package specdiff is the one rule for which changes of a service spec
// alter what runs on hosts. The coordinator uses it to decide whether an
// applied spec rolls out (a config rollout) or is simply recorded (it
// changes only what the coordinator reads), and the agent's lifecycle uses
// it to decide whether an assignment of the release it runs, with another
// spec, needs the process restarted with the new spec.
//
// The rule is a table of the fields that do NOT affect hosts; every other
// field, including any field added to ServiceSpec later (hooks, resources),
// affects hosts, so a new field can never be silently ignored by a rollout.
//
// Within the Host kind, a change of only how hosts judge a release
// (checks, min_healthy_time, healthy_deadline, analysis: Judging) and of
// the resource limits (resources: memory_max, cpu_weight, tasks_max, which
// cgroups let a running process's limits be rewritten) still rolls out,
// but a host applies it in place: the running process is kept, its
// cgroup's limits are written when resources changed, and it is judged
// again under the new spec (InPlace). No field of run is in that class
// (each takes effect only when a process starts, so applying it without a
// restart would leave the process running with the old value), nor are
// hooks, and neither is any field added later: a new field restarts until
// it is decided otherwise, here, with a row in the table test.
//
// It is pure (values in, values out) and imports only the generated types
// and protobuf, so the agent's pure lifecycle may use it.
package specdiff

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Kind is what a change of a spec field affects.
type Kind int

const (
	// Host: what runs on hosts or how the agent judges it (run, checks,
	// min_healthy_time, healthy_deadline, analysis, and every field not
	// listed below). A change rolls out through canary, waves and gates.
	Host Kind = iota + 1
	// Coordinator: read by the coordinator alone (rollout policy, alerts;
	// the name, which never changes). A change applies without a rollout.
	Coordinator
	// Placement: which hosts run the service (selector). A change moves
	// hosts: those no longer selected remove the service, those newly
	// selected get the stable release. Nothing rolls out on the others.
	Placement
)

func (k Kind) String() string {
	switch k {
	case Host:
		return "host"
	case Coordinator:
		return "coordinator"
	case Placement:
		return "placement"
	}
	return "unknown"
}

// notHost is every top-level ServiceSpec field that does not affect hosts.
var notHost = map[protoreflect.Name]Kind{
	"name":     Coordinator,
	"rollout":  Coordinator,
	"alerts":   Coordinator,
	"selector": Placement,
}

// judging is every Host field whose change only changes how hosts judge
// the running release, not what runs.
var judging = map[protoreflect.Name]bool{
	"checks":           true,
	"min_healthy_time": true,
	"healthy_deadline": true,
	"analysis":         true,
}

// live is every Host field other than the judging ones whose change a
// host applies to the running process without restarting it: the
// resource limits, written to its cgroup (agent: ActSetLimits).
var live = map[protoreflect.Name]bool{
	"resources": true,
}

// Judging reports whether a change of the top-level ServiceSpec field
// (by its proto name) only changes how hosts judge the running release.
func Judging(field string) bool {
	return judging[protoreflect.Name(field)]
}

// InPlaceField reports whether a host applies a change of the top-level
// ServiceSpec field (by its proto name) in place, keeping the running
// process: a Judging field, or resources.
func InPlaceField(field string) bool {
	return judging[protoreflect.Name(field)] || live[protoreflect.Name(field)]
}

// InPlace reports whether a host applies a change from spec a to spec b
// in place: they differ in a Host field, and every Host field they differ
// in is an InPlaceField one (how the release is judged, its resource
// limits). The process keeps running (its limits rewritten when
// Resized); any other Host change restarts it.
func InPlace(a, b *v1.ServiceSpec) bool {
	host := HostChanges(a, b)
	for _, p := range host {
		if !InPlaceField(topField(p)) {
			return false
		}
	}
	return len(host) > 0
}

// Resized reports whether a and b differ in their resource limits
// (resources): applying one in place of the other rewrites the running
// process's cgroup.
func Resized(a, b *v1.ServiceSpec) bool {
	return !proto.Equal(a.GetResources(), b.GetResources())
}

// topField is the top-level field of a change's path ("analysis.rules" →
// "analysis").
func topField(path string) string {
	for i := range len(path) {
		if path[i] == '.' {
			return path[:i]
		}
	}
	return path
}

// KindOf is what a change of the top-level ServiceSpec field (by its proto
// name, e.g. "run", "rollout") affects.
func KindOf(field string) Kind {
	if k, ok := notHost[protoreflect.Name(field)]; ok {
		return k
	}
	return Host
}

// Changes are the fields in which two specs differ, by what they affect, as
// paths ("run.env", "checks", "rollout"), in field order.
type Changes struct {
	Host        []string
	Coordinator []string
	Placement   []string
}

// Diff compares spec a with spec b (either may be nil: an empty spec).
// Host fields that are messages are compared one level down, so that a
// change names the part that changed ("run.env", "analysis.rules").
func Diff(a, b *v1.ServiceSpec) Changes {
	var c Changes
	ma, mb := a.ProtoReflect(), b.ProtoReflect()
	fields := ma.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fieldEqual(ma, mb, fd) {
			continue
		}
		name := string(fd.Name())
		switch KindOf(name) {
		case Coordinator:
			c.Coordinator = append(c.Coordinator, name)
		case Placement:
			c.Placement = append(c.Placement, name)
		default:
			c.Host = append(c.Host, subPaths(ma, mb, fd)...)
		}
	}
	return c
}

// HostChanges is Diff(a, b).Host: nil when hosts run a and b the same.
func HostChanges(a, b *v1.ServiceSpec) []string {
	return Diff(a, b).Host
}

// HostAffecting reports whether hosts run a and b differently.
func HostAffecting(a, b *v1.ServiceSpec) bool {
	return len(HostChanges(a, b)) > 0
}

// subPaths names the changed parts of field fd (known to differ): its
// own changed fields when it is a message other than a well-known type
// (set in both), else the field itself.
func subPaths(ma, mb protoreflect.Message, fd protoreflect.FieldDescriptor) []string {
	name := string(fd.Name())
	if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() ||
		fd.Message().ParentFile().Package() == "google.protobuf" || !ma.Has(fd) || !mb.Has(fd) {
		return []string{name}
	}
	sa, sb := ma.Get(fd).Message(), mb.Get(fd).Message()
	var out []string
	sub := fd.Message().Fields()
	for i := range sub.Len() {
		if f := sub.Get(i); !fieldEqual(sa, sb, f) {
			out = append(out, name+"."+string(f.Name()))
		}
	}
	if len(out) == 0 { // unknown fields differ: name the message
		out = []string{name}
	}
	return out
}

// fieldEqual reports whether field fd has the same presence and value in
// ma and mb (messages of the same type; invalid = nil = empty).
func fieldEqual(ma, mb protoreflect.Message, fd protoreflect.FieldDescriptor) bool {
	return proto.Equal(only(ma, fd), only(mb, fd))
}

// only is a new message of m's type holding m's value of fd alone.
func only(m protoreflect.Message, fd protoreflect.FieldDescriptor) proto.Message {
	out := m.Type().New()
	if m.IsValid() && m.Has(fd) {
		out.Set(fd, m.Get(fd))
	}
	return out.Interface()
}

// HostSpec is a copy of s holding only the fields that affect hosts (the
// Host kind, whatever fields ServiceSpec has): what a host runs of it. Two
// specs run the same on hosts exactly when their HostSpecs are equal. A
// nil spec gives an empty one.
func HostSpec(s *v1.ServiceSpec) *v1.ServiceSpec {
	out := &v1.ServiceSpec{}
	m, o := s.ProtoReflect(), out.ProtoReflect()
	if !m.IsValid() {
		return out
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if KindOf(string(fd.Name())) == Host && m.Has(fd) {
			o.Set(fd, m.Get(fd))
		}
	}
	return proto.Clone(out).(*v1.ServiceSpec)
}
