package spec

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/hookspec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestParseHooksExample(t *testing.T) {
	s, err := Parse(readTestdata(t, "hooks.yaml"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := Validate(s); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := &v1.Hooks{
		AfterInstall: &v1.Hook{Command: []string{"./migrate", "--check"}, Timeout: durationpb.New(10 * time.Minute)},
		BeforeStart:  &v1.Hook{Command: []string{"./render-config", "${host.id}"}},
		AfterStart:   &v1.Hook{Command: []string{"./register", "${host.label.zone}"}, Timeout: durationpb.New(30 * time.Second)},
		Validate:     &v1.Hook{Command: []string{"./smoke-test"}, Timeout: durationpb.New(2 * time.Minute)},
		BeforeStop:   &v1.Hook{Command: []string{"./deregister"}, Timeout: durationpb.New(20 * time.Second)},
	}
	if !proto.Equal(s.GetHooks(), want) {
		t.Fatalf("hooks =\n%v\nwant\n%v", s.GetHooks(), want)
	}
	if s.GetRun().GetUser() != "shop" || s.GetRun().GetGroup() != "shop" {
		t.Fatalf("run.user, run.group = %q, %q", s.GetRun().GetUser(), s.GetRun().GetGroup())
	}
	if got := hookspec.Timeout(s, hookspec.BeforeStart); got != hookspec.DefaultTimeout {
		t.Errorf("before_start timeout %s, want the default %s", got, hookspec.DefaultTimeout)
	}
}

// TestHookAlias: run.pre_stop is hooks.before_stop under another name.
func TestHookAlias(t *testing.T) {
	s := valid()
	s.Run.PreStop = &v1.PreStop{Command: []string{"./deregister"}}
	h := hookspec.Of(s, hookspec.BeforeStop)
	if h == nil || h.GetCommand()[0] != "./deregister" || hookspec.Field(s, hookspec.BeforeStop) != "run.pre_stop" {
		t.Fatalf("before_stop of a spec with run.pre_stop = %v (field %s)", h, hookspec.Field(s, hookspec.BeforeStop))
	}
	if got := hookspec.Timeout(s, hookspec.BeforeStop); got != hookspec.DefaultBeforeStopTimeout {
		t.Errorf("before_stop default timeout %s, want %s", got, hookspec.DefaultBeforeStopTimeout)
	}
	s.Hooks = &v1.Hooks{BeforeStop: &v1.Hook{Command: []string{"./other"}}}
	err := Validate(s)
	if err == nil || !strings.Contains(err.Error(), "run.pre_stop: set together with hooks.before_stop") {
		t.Fatalf("both set: %v", err)
	}
	s.Run.PreStop = nil
	if err := Validate(s); err != nil {
		t.Fatalf("hooks.before_stop alone: %v", err)
	}
	if hookspec.Field(s, hookspec.BeforeStop) != "hooks.before_stop" {
		t.Errorf("field %s", hookspec.Field(s, hookspec.BeforeStop))
	}
}

func TestValidateHooksErrors(t *testing.T) {
	for name, c := range map[string]struct {
		edit func(s *v1.ServiceSpec)
		want string
	}{
		"empty command": {func(s *v1.ServiceSpec) { s.Hooks = &v1.Hooks{AfterInstall: &v1.Hook{}} }, "hooks.after_install.command: must not be empty"},
		"empty program": {func(s *v1.ServiceSpec) { s.Hooks = &v1.Hooks{Validate: &v1.Hook{Command: []string{""}}} }, "hooks.validate.command: must not be empty"},
		"placeholder": {func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{BeforeStart: &v1.Hook{Command: []string{"./x", "${host.name}"}}}
		}, "hooks.before_start.command[1]: unknown placeholder ${host.name}"},
		"zero timeout": {func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{AfterStart: &v1.Hook{Command: []string{"./x"}, Timeout: durationpb.New(0)}}
		}, "hooks.after_start.timeout: 0s: must be more than 0 (leave it out for the default 1m0s)"},
		"long timeout": {func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{AfterInstall: &v1.Hook{Command: []string{"./x"}, Timeout: durationpb.New(31 * time.Minute)}}
		}, "hooks.after_install.timeout: 31m0s is more than 30m0s"},
		"long stop timeout": {func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{BeforeStop: &v1.Hook{Command: []string{"./x"}, Timeout: durationpb.New(6 * time.Minute)}}
		}, "hooks.before_stop.timeout: 6m0s is more than 5m0s"},
		"short timeout": {func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{AfterStart: &v1.Hook{Command: []string{"./x"}, Timeout: durationpb.New(time.Nanosecond)}}
		}, "hooks.after_start.timeout: 1ns is less than 100ms"},
		"short alias timeout": {func(s *v1.ServiceSpec) {
			s.Run.PreStop = &v1.PreStop{Command: []string{"./x"}, Timeout: durationpb.New(99 * time.Millisecond)}
		}, "run.pre_stop.timeout: 99ms is less than 100ms"},
		"negative timeout": {func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{Validate: &v1.Hook{Command: []string{"./x"}, Timeout: durationpb.New(-time.Second)}}
		}, "hooks.validate.timeout: -1s is negative"},
		"alias timeout": {func(s *v1.ServiceSpec) {
			s.Run.PreStop = &v1.PreStop{Command: []string{"./x"}, Timeout: durationpb.New(6 * time.Minute)}
		}, "run.pre_stop.timeout: 6m0s is more than 5m0s"},
		"bad user":         {func(s *v1.ServiceSpec) { s.Run.User = "web user" }, `run.user: invalid name "web user"`},
		"bad group":        {func(s *v1.ServiceSpec) { s.Run.User, s.Run.Group = "web", "-x" }, `run.group: invalid name "-x"`},
		"group alone":      {func(s *v1.ServiceSpec) { s.Run.Group = "web" }, `run.group: "web" is set but run.user is not`},
		"uid out of range": {func(s *v1.ServiceSpec) { s.Run.User = "4294967295" }, `run.user: "4294967295" is not a valid id`},
	} {
		s := valid()
		c.edit(s)
		err := Validate(s)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want %q", name, err, c.want)
		}
	}
	s := valid()
	s.Run.User, s.Run.Group = "1000", "nogroup"
	if err := Validate(s); err != nil {
		t.Errorf("numeric user and named group: %v", err)
	}
}

func TestParseHooksErrors(t *testing.T) {
	for in, want := range map[string]string{
		"hooks: {after_install: [./x]}\n":                   "hooks.after_install: want a mapping of fields, got a list",
		"hooks: {before_stop: {command: ./x}}\n":            "hooks.before_stop.command: want a list, got string",
		"hooks: {validate: {command: [./x], timeout: 5}}\n": `hooks.validate.timeout: want a duration such as "10s"`,
		"hooks: {after_stop: {command: [./x]}}\n":           "hooks.after_stop: unknown field",
		"run: {user: 1000}\n":                               "run.user: want a string, got number 1000 (quote it)",
	} {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want %q", in, err, want)
		}
	}
}
