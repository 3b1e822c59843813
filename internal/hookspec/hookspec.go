// Package hookspec is the one place that says what a service spec's
// lifecycle hooks are: their names in the order a release meets them,
// which hook of a spec a name means (before_stop: hooks.before_stop, or
// its alias run.pre_stop when that is unset), the field it is written in,
// and its timeouts. The spec's validation (internal/spec), the agent and
// its pure lifecycle (agent/lifecycle) all ask it; it is pure (it imports
// only the generated types and time) so the lifecycle may.
package hookspec

import (
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The hooks (hooks.*).
const (
	AfterInstall = "after_install"
	BeforeStart  = "before_start"
	AfterStart   = "after_start"
	Validate     = "validate"
	BeforeStop   = "before_stop"
)

// Names are the hooks in the order a release meets them.
var Names = []string{AfterInstall, BeforeStart, AfterStart, Validate, BeforeStop}

// Timeouts. DefaultTimeout applies to after_install, before_start,
// after_start and validate when their timeout is not set, and MaxTimeout
// bounds it (a migration in after_install may be long). before_stop (and
// its alias run.pre_stop) delays every stop of a process that served:
// DefaultBeforeStopTimeout and MaxBeforeStopTimeout. MinTimeout is the
// floor of every hook's timeout: a hook killed sooner cannot have done
// anything (its fork and exec take milliseconds on a loaded host), and
// before_stop runs at every stop of a process that served, so a timeout
// of 1ns would fail every hook at once rather than say what is wrong.
const (
	MinTimeout               = 100 * time.Millisecond
	DefaultTimeout           = 60 * time.Second
	MaxTimeout               = 30 * time.Minute
	DefaultBeforeStopTimeout = 10 * time.Second
	MaxBeforeStopTimeout     = 5 * time.Minute
)

// Of returns the spec's hook of that name (nil: none). before_stop is
// hooks.before_stop or, when that is unset, its alias run.pre_stop.
func Of(s *v1.ServiceSpec, name string) *v1.Hook {
	h := s.GetHooks()
	switch name {
	case AfterInstall:
		return h.GetAfterInstall()
	case BeforeStart:
		return h.GetBeforeStart()
	case AfterStart:
		return h.GetAfterStart()
	case Validate:
		return h.GetValidate()
	case BeforeStop:
		if bs := h.GetBeforeStop(); bs != nil {
			return bs
		}
		if ps := s.GetRun().GetPreStop(); ps != nil {
			return &v1.Hook{Command: ps.GetCommand(), Timeout: ps.GetTimeout()}
		}
	}
	return nil
}

// Field is the field path of the hook name as written in the spec:
// "hooks.NAME", or "run.pre_stop" for a before_stop given by its alias.
func Field(s *v1.ServiceSpec, name string) string {
	if name == BeforeStop && s.GetHooks().GetBeforeStop() == nil && s.GetRun().GetPreStop() != nil {
		return "run.pre_stop"
	}
	return "hooks." + name
}

// Timeout is the timeout of the spec's hook name, or its default when
// unset.
func Timeout(s *v1.ServiceSpec, name string) time.Duration {
	if d := Of(s, name).GetTimeout(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	if name == BeforeStop {
		return DefaultBeforeStopTimeout
	}
	return DefaultTimeout
}

// MaxTimeoutOf bounds the timeout of the hook name.
func MaxTimeoutOf(name string) time.Duration {
	if name == BeforeStop {
		return MaxBeforeStopTimeout
	}
	return MaxTimeout
}
