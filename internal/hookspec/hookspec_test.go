package hookspec

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/testkit/purity"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestPureImports: the lifecycle imports this package, so it stays pure.
func TestPureImports(t *testing.T) {
	purity.Check(t, map[string]bool{"time": true, "github.com/fleetwave/fleetwave/proto/fleetwave/v1": true}, 1)
}

// TestOf: every name means its field of hooks; before_stop falls back to
// run.pre_stop (its alias) only when hooks.before_stop is unset; timeouts
// default by hook; an unknown name is no hook.
func TestOf(t *testing.T) {
	h := func(cmd string) *v1.Hook { return &v1.Hook{Command: []string{cmd}} }
	s := &v1.ServiceSpec{
		Hooks: &v1.Hooks{AfterInstall: h("ai"), BeforeStart: h("bs"), AfterStart: h("as"), Validate: h("va")},
		Run:   &v1.RunSpec{PreStop: &v1.PreStop{Command: []string{"ps"}, Timeout: durationpb.New(3 * time.Second)}},
	}
	want := map[string]string{AfterInstall: "ai", BeforeStart: "bs", AfterStart: "as", Validate: "va", BeforeStop: "ps"}
	for _, name := range Names {
		if got := Of(s, name).GetCommand(); len(got) != 1 || got[0] != want[name] {
			t.Errorf("%s: %v, want %s", name, got, want[name])
		}
	}
	if Field(s, BeforeStop) != "run.pre_stop" || Field(s, Validate) != "hooks.validate" {
		t.Errorf("fields %s, %s", Field(s, BeforeStop), Field(s, Validate))
	}
	if Timeout(s, BeforeStop) != 3*time.Second || Timeout(s, AfterStart) != DefaultTimeout || Timeout(nil, BeforeStop) != DefaultBeforeStopTimeout {
		t.Errorf("timeouts %s, %s, %s", Timeout(s, BeforeStop), Timeout(s, AfterStart), Timeout(nil, BeforeStop))
	}
	if MaxTimeoutOf(BeforeStop) != MaxBeforeStopTimeout || MaxTimeoutOf(Validate) != MaxTimeout {
		t.Errorf("max timeouts %s, %s", MaxTimeoutOf(BeforeStop), MaxTimeoutOf(Validate))
	}
	s.Hooks.BeforeStop = h("bst")
	if got := Of(s, BeforeStop).GetCommand(); got[0] != "bst" || Field(s, BeforeStop) != "hooks.before_stop" || Timeout(s, BeforeStop) != DefaultBeforeStopTimeout {
		t.Errorf("hooks.before_stop set: %v, %s, %s", got, Field(s, BeforeStop), Timeout(s, BeforeStop))
	}
	if Of(s, "nope") != nil {
		t.Error("an unknown name is a hook")
	}
}
