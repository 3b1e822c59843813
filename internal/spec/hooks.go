package spec

import (
	"fmt"
	"regexp"
	"strconv"

	"github.com/fleetwave/fleetwave/internal/hookspec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func validateHooks(p *problems, s *v1.ServiceSpec) {
	if s.GetHooks().GetBeforeStop() != nil && s.GetRun().GetPreStop() != nil {
		p.add("run.pre_stop", "set together with hooks.before_stop: run.pre_stop is an alias of hooks.before_stop, set one of them")
	}
	for _, name := range hookspec.Names {
		h := hookspec.Of(s, name)
		if h == nil {
			continue
		}
		field := hookspec.Field(s, name)
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
			p.add(field+".timeout", "0s: must be more than 0 (leave it out for the default %s)", hookspec.Timeout(nil, name))
		case t < hookspec.MinTimeout:
			p.add(field+".timeout", "%s is less than %s", t, hookspec.MinTimeout)
		case t > hookspec.MaxTimeoutOf(name):
			p.add(field+".timeout", "%s is more than %s", t, hookspec.MaxTimeoutOf(name))
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
