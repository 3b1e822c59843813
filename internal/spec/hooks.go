package spec

import (
	"fmt"
	"regexp"
	"strconv"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The hooks of a spec (hooks.*): their names, in the order of a release's
// life on a host, and their timeouts.
const (
	HookAfterInstall = "after_install"
	HookBeforeStart  = "before_start"
	HookAfterStart   = "after_start"
	HookValidate     = "validate"
	HookBeforeStop   = "before_stop"

	// DefaultHookTimeout applies to after_install, before_start,
	// after_start and validate when their timeout is not set, and
	// MaxHookTimeout bounds it (a migration in after_install may be long).
	DefaultHookTimeout = 60 * time.Second
	MaxHookTimeout     = 30 * time.Minute
	// before_stop (and its alias run.pre_stop) delays every stop of a
	// process that served: DefaultPreStopTimeout and MaxPreStopTimeout.
)

// HookNames are the hooks in the order a release meets them.
var HookNames = []string{HookAfterInstall, HookBeforeStart, HookAfterStart, HookValidate, HookBeforeStop}

// Hook returns the spec's hook of that name (nil: none). before_stop is
// hooks.before_stop or, when that is unset, its alias run.pre_stop.
func Hook(s *v1.ServiceSpec, name string) *v1.Hook {
	h := s.GetHooks()
	switch name {
	case HookAfterInstall:
		return h.GetAfterInstall()
	case HookBeforeStart:
		return h.GetBeforeStart()
	case HookAfterStart:
		return h.GetAfterStart()
	case HookValidate:
		return h.GetValidate()
	case HookBeforeStop:
		if bs := h.GetBeforeStop(); bs != nil {
			return bs
		}
		if ps := s.GetRun().GetPreStop(); ps != nil {
			return &v1.Hook{Command: ps.GetCommand(), Timeout: ps.GetTimeout()}
		}
	}
	return nil
}

// HookField is the field path of a hook as written in the spec:
// "hooks.NAME", or "run.pre_stop" for a before_stop given by its alias.
func HookField(s *v1.ServiceSpec, name string) string {
	if name == HookBeforeStop && s.GetHooks().GetBeforeStop() == nil && s.GetRun().GetPreStop() != nil {
		return "run.pre_stop"
	}
	return "hooks." + name
}

// HookTimeout is a hook's timeout, or its default when unset.
func HookTimeout(name string, h *v1.Hook) time.Duration {
	if d := h.GetTimeout(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	if name == HookBeforeStop {
		return DefaultPreStopTimeout
	}
	return DefaultHookTimeout
}

// MaxHookTimeoutOf bounds the timeout of the hook name.
func MaxHookTimeoutOf(name string) time.Duration {
	if name == HookBeforeStop {
		return MaxPreStopTimeout
	}
	return MaxHookTimeout
}

func validateHooks(p *problems, s *v1.ServiceSpec) {
	if s.GetHooks().GetBeforeStop() != nil && s.GetRun().GetPreStop() != nil {
		p.add("run.pre_stop", "set together with hooks.before_stop: run.pre_stop is an alias of hooks.before_stop, set one of them")
	}
	for _, name := range HookNames {
		h := Hook(s, name)
		if h == nil {
			continue
		}
		field := HookField(s, name)
		validateHook(p, field, name, h)
	}
}

func validateHook(p *problems, field, name string, h *v1.Hook) {
	cmd := h.GetCommand()
	if len(cmd) == 0 || cmd[0] == "" {
		p.add(field+".command", "must not be empty")
	}
	for i, arg := range cmd {
		checkTemplate(p, fmt.Sprintf("%s.command[%d]", field, i), arg)
	}
	if h.GetTimeout() != nil {
		switch t := validDuration(p, field+".timeout", h.GetTimeout()); {
		case t < 0:
		case t == 0:
			p.add(field+".timeout", "0s: must be more than 0 (leave it out for the default %s)", HookTimeout(name, nil))
		case t > MaxHookTimeoutOf(name):
			p.add(field+".timeout", "%s is more than %s", t, MaxHookTimeoutOf(name))
		}
	}
}

// userRE is what run.user and run.group accept besides a number: a POSIX
// portable user or group name (useradd's default rule, with a trailing $
// for machine accounts).
var userRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$`)

// CheckUserName reports whether s is a user or group name the agent can
// look up, or a numeric id.
func CheckUserName(field, s string) error {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if n == 1<<32-1 {
			return fmt.Errorf("%s: %q is not a valid id", field, s)
		}
		return nil
	}
	if !userRE.MatchString(s) {
		return fmt.Errorf("%s: invalid name %q (want a number or [A-Za-z_][A-Za-z0-9_.-]{0,31})", field, s)
	}
	return nil
}

func validateUser(p *problems, r *v1.RunSpec) {
	if u := r.GetUser(); u != "" {
		p.addErr(CheckUserName("run.user", u))
	}
	if g := r.GetGroup(); g != "" {
		p.addErr(CheckUserName("run.group", g))
		if r.GetUser() == "" {
			p.add("run.group", "%q is set but run.user is not (the group applies to the service's user)", g)
		}
	}
}
