package rollout

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

func TestSelects(t *testing.T) {
	web := map[string]string{"role": "web", "zone": "a"}
	cases := []struct {
		sel  map[string]string
		lab  map[string]string
		want bool
	}{
		{nil, nil, true},
		{map[string]string{}, web, true},
		{map[string]string{"role": "web"}, web, true},
		{map[string]string{"role": "web", "zone": "a"}, web, true},
		{map[string]string{"role": "web", "zone": "b"}, web, false},
		{map[string]string{"role": "db"}, web, false},
		{map[string]string{"role": ""}, web, false},
		{map[string]string{"role": "web"}, nil, false},
	}
	for _, c := range cases {
		if got := Selects(c.sel, c.lab); got != c.want {
			t.Errorf("Selects(%v, %v) = %v, want %v", c.sel, c.lab, got, c.want)
		}
	}
}

func TestWithDefaults(t *testing.T) {
	got := WithDefaults(nil)
	want := &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 1, Bake: dur(0),
		ProgressDeadline: dur(10 * time.Minute), Mode: spec.ModeAuto}
	if !proto.Equal(got, want) {
		t.Errorf("WithDefaults(nil) = %v, want %v", got, want)
	}

	in := &v1.RolloutPolicy{Canary: 3, NoCanary: true, Bake: dur(-time.Second), ProgressDeadline: dur(0)}
	orig := proto.Clone(in)
	got = WithDefaults(in)
	if !proto.Equal(in, orig) {
		t.Errorf("WithDefaults mutated its input")
	}
	if got.Canary != 0 || got.Bake.AsDuration() != 0 || got.ProgressDeadline.AsDuration() != DefaultProgressDeadline {
		t.Errorf("WithDefaults(%v) = %v: want canary 0, bake 0, deadline 10m", in, got)
	}

	set := &v1.RolloutPolicy{Canary: 2, Waves: []uint32{10, 100}, MaxParallel: 5, Bake: dur(time.Minute),
		MaxFailures: 2, ProgressDeadline: dur(time.Hour), Mode: spec.ModeManual}
	if got := WithDefaults(set); !proto.Equal(got, set) || got == set {
		t.Errorf("WithDefaults of a full policy = %v, want an equal copy of %v", got, set)
	}
}

func TestNewPlanSizes(t *testing.T) {
	cases := []struct {
		name  string
		n     int
		pol   *v1.RolloutPolicy
		sizes []int
	}{
		{"default", 10, nil, []int{1, 9}},
		{"canary 1 waves 50 100", 10, &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}}, []int{1, 4, 5}},
		{"no canary", 10, &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{10, 20, 100}}, []int{1, 1, 8}},
		{"no canary ignores canary count", 4, &v1.RolloutPolicy{Canary: 3, NoCanary: true}, []int{4}},
		{"ceil and skip empty", 3, &v1.RolloutPolicy{Canary: 1, Waves: []uint32{10, 50, 100}}, []int{1, 1, 1}},
		{"percent adds nothing", 4, &v1.RolloutPolicy{Canary: 1, Waves: []uint32{1, 25, 26, 100}}, []int{1, 1, 2}},
		{"single host", 1, &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}}, []int{1}},
		{"canary larger than fleet", 5, &v1.RolloutPolicy{Canary: 10}, []int{5}},
		{"canary 2 quarters", 100, &v1.RolloutPolicy{Canary: 2, Waves: []uint32{25, 50, 75, 100}}, []int{2, 23, 25, 25, 25}},
		{"last wave below 100", 10, &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{30}}, []int{3, 7}},
		{"percent above 100", 10, &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{150}}, []int{10}},
		{"not increasing", 10, &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{50, 20, 100}}, []int{5, 5}},
		{"zero percent", 10, &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{0, 100}}, []int{10}},
		{"big fleet", 1000, &v1.RolloutPolicy{Canary: 1, Waves: []uint32{1, 10, 100}}, []int{1, 9, 90, 900}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := New("r1", newSvc(c.pol, nil), toV, zoned(c.n, "a", "b"), t0)
			if got := waveSizes(r); !reflect.DeepEqual(got, c.sizes) {
				t.Fatalf("wave sizes = %v, want %v", got, c.sizes)
			}
			seen := map[string]bool{}
			for i, w := range r.Waves {
				if int(w.Index) != i {
					t.Errorf("wave %d has index %d", i, w.Index)
				}
				wantCanary := i == 0 && !WithDefaults(c.pol).NoCanary
				if w.Canary != wantCanary {
					t.Errorf("wave %d canary = %v, want %v", i, w.Canary, wantCanary)
				}
				for _, h := range w.Hosts {
					if seen[h.HostId] {
						t.Errorf("host %s planned twice", h.HostId)
					}
					seen[h.HostId] = true
					if h.State != v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING {
						t.Errorf("host %s starts %v, want PENDING", h.HostId, h.State)
					}
				}
			}
			if len(seen) != c.n {
				t.Errorf("planned %d hosts, want %d", len(seen), c.n)
			}
		})
	}
}

func TestNewFields(t *testing.T) {
	pol := &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2}
	svc := newSvc(pol, nil)
	svcBefore := proto.Clone(svc)
	r := New("web-8", svc, toV, zoned(3, "a"), t0)
	if !proto.Equal(svc, svcBefore) {
		t.Fatalf("New mutated the service")
	}
	if r.Id != "web-8" || r.Service != "web" || r.FromVersion != fromV || r.ToVersion != toV || r.Generation != stableGen+1 {
		t.Errorf("identity fields wrong: %v", r)
	}
	if r.State != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Errorf("state = %v, want PROGRESSING", r.State)
	}
	for name, ts := range map[string]interface{ AsTime() time.Time }{
		"created_at": r.CreatedAt, "started_at": r.StartedAt, "last_progress_at": r.LastProgressAt, "wave 0 started_at": r.Waves[0].StartedAt,
	} {
		if !ts.AsTime().Equal(t0) {
			t.Errorf("%s = %v, want %v", name, ts.AsTime(), t0)
		}
	}
	if r.FinishedAt != nil {
		t.Errorf("finished_at set on a new rollout")
	}
	if !proto.Equal(r.Policy, WithDefaults(pol)) {
		t.Errorf("policy = %v, want %v", r.Policy, WithDefaults(pol))
	}
	if r.Waves[0].State != v1.WaveState_WAVE_STATE_PROGRESSING || r.Waves[1].State != v1.WaveState_WAVE_STATE_PENDING {
		t.Errorf("wave states = %v, %v; want PROGRESSING, PENDING", r.Waves[0].State, r.Waves[1].State)
	}
	// The rollout's policy is a copy: changing the service later does not
	// change it.
	svc.Spec.Rollout.MaxParallel = 9
	if r.Policy.MaxParallel != 2 {
		t.Errorf("rollout policy aliases the service's")
	}
}

func TestNewZoneInterleaving(t *testing.T) {
	hosts := []Host{
		{ID: "h5", Labels: map[string]string{"zone": "b"}},
		{ID: "h1", Labels: map[string]string{"zone": "b"}},
		{ID: "h3", Labels: map[string]string{"zone": "a"}},
		{ID: "h9", Labels: map[string]string{"zone": "a"}},
		{ID: "h2", Labels: map[string]string{"zone": "c"}},
		{ID: "h4", Labels: map[string]string{"zone": "b"}},
		{ID: "h0"}, // no zone: one more group after the zones
		{ID: "h8", Labels: map[string]string{"role": "x"}},
	}
	pol := &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}}
	r := New("r", newSvc(pol, nil), toV, hosts, t0)
	// zones a:[h3 h9] b:[h1 h4 h5] c:[h2] none:[h0 h8]
	// order: h3 h1 h2 h0 | h9 h4 h8 | h5
	want := [][]string{{"h3"}, {"h1", "h2", "h0"}, {"h9", "h4", "h8", "h5"}}
	if got := planIDs(r); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan = %v, want %v", got, want)
	}

	// Each of 4 waves over 3 equal zones covers every zone.
	r = New("r", newSvc(&v1.RolloutPolicy{NoCanary: true, Waves: []uint32{25, 50, 75, 100}}, nil), toV, zoned(12, "x", "y", "z"), t0)
	for i, w := range r.Waves {
		zs := map[byte]int{}
		for _, h := range w.Hosts {
			zs[zoneOf(h.HostId)]++
		}
		if len(zs) != 3 {
			t.Errorf("wave %d covers zones %v, want all 3", i, zs)
		}
	}
}

// zoneOf gives the zone letter zoned(12, "x","y","z") assigned to id.
func zoneOf(id string) byte {
	var n int
	for _, c := range id[len("host-"):] {
		n = n*10 + int(c-'0')
	}
	return "xyz"[n%3]
}

func TestNewSelectorFiltering(t *testing.T) {
	var hosts []Host
	for i, role := range []string{"web", "db", "web", "web", "db"} {
		hosts = append(hosts, Host{ID: string(rune('a' + i)), Labels: map[string]string{"role": role}})
	}
	hosts = append(hosts, Host{ID: "", Labels: map[string]string{"role": "web"}})  // empty id ignored
	hosts = append(hosts, Host{ID: "c", Labels: map[string]string{"role": "web"}}) // duplicate
	r := New("r", newSvc(nil, map[string]string{"role": "web"}), toV, hosts, t0)
	want := [][]string{{"a"}, {"c", "d"}}
	if got := planIDs(r); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan = %v, want %v", got, want)
	}
}

func TestNewDeterministic(t *testing.T) {
	hosts := zoned(57, "a", "b", "c")
	hosts[3].Labels = map[string]string{"role": "web"} // one without a zone
	pol := &v1.RolloutPolicy{Canary: 2, Waves: []uint32{10, 40, 100}, MaxParallel: 3}
	want := New("r", newSvc(pol, nil), toV, hosts, t0)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		sh := append([]Host(nil), hosts...)
		rng.Shuffle(len(sh), func(i, j int) { sh[i], sh[j] = sh[j], sh[i] })
		if got := New("r", newSvc(pol, nil), toV, sh, t0); !proto.Equal(got, want) {
			t.Fatalf("plan depends on host order:\n got %v\nwant %v", planIDs(got), planIDs(want))
		}
	}
}

func TestNewManual(t *testing.T) {
	r := New("r", newSvc(&v1.RolloutPolicy{Mode: spec.ModeManual}, nil), toV, zoned(4, "a"), t0)
	if r.State != v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		t.Fatalf("state = %v, want WAITING_APPROVAL", r.State)
	}
	if r.StartedAt != nil || r.LastProgressAt != nil {
		t.Errorf("manual rollout has started_at/last_progress_at before approval")
	}
	for _, w := range r.Waves {
		if w.State != v1.WaveState_WAVE_STATE_PENDING {
			t.Errorf("wave %d is %v before approval", w.Index, w.State)
		}
	}
	out, res := step(t, r, fleet{}, t0.Add(time.Hour))
	if out != r || res.Changed || len(res.Events) != 0 || !res.NextWake.IsZero() {
		t.Errorf("Step moved a rollout waiting for approval: %v %+v", out.State, res)
	}
}

func TestNewZeroHosts(t *testing.T) {
	for _, mode := range []string{spec.ModeAuto, spec.ModeManual} {
		// Hosts exist but none is selected.
		r := New("r", newSvc(&v1.RolloutPolicy{Mode: mode}, map[string]string{"role": "db"}), toV, zoned(5, "a"), t0)
		if r.State != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.Reason != ReasonNoHosts || len(r.Waves) != 0 {
			t.Errorf("mode %s: zero hosts gave state %v reason %q waves %d", mode, r.State, r.Reason, len(r.Waves))
		}
		if !r.GetFinishedAt().AsTime().Equal(t0) {
			t.Errorf("mode %s: finished_at = %v", mode, r.GetFinishedAt())
		}
	}
	// A nil service still gives a (trivially succeeded) rollout.
	if r := New("r", nil, toV, nil, t0); r.State != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.Generation != 1 {
		t.Errorf("New with nil service: state %v generation %d", r.State, r.Generation)
	}
}

func TestRollbackIsFastButPolicyAware(t *testing.T) {
	svc := newSvc(&v1.RolloutPolicy{Canary: 2, Waves: []uint32{10, 50, 100}, MaxParallel: 1, Bake: dur(time.Minute), Mode: spec.ModeManual}, map[string]string{"role": "web"})
	svc.Status.StableSpec = &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./old"}}}
	hosts := append(zoned(12, "a", "b"), Host{ID: "db-1", Labels: map[string]string{"role": "db"}})
	r := NewRollback("r9", svc, fromV, hosts, t0)
	if !r.GetRollback() || r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Fatalf("rollback: rollback=%v state %v (manual mode must not make it wait)", r.GetRollback(), r.GetState())
	}
	if got := waveSizes(r); len(got) != 1 || got[0] != 12 {
		t.Fatalf("rollback waves %v, want one wave of the 12 selected hosts", got)
	}
	p := r.GetPolicy()
	if p.GetMaxParallel() != 3 || p.GetBake().AsDuration() != 0 || p.GetMaxFailures() != 12 {
		t.Fatalf("rollback policy %v: want max_parallel 3 (a quarter), no bake, budget 12", p)
	}
	if r.GetSpec().GetRun().GetCommand()[0] != "./old" || r.GetSpec().GetSelector()["role"] != "web" {
		t.Fatalf("rollback to the stable release runs with %v, want the stable spec with the live selector", r.GetSpec())
	}
	f := fleet{}
	r, _ = step(t, r, f, t0)
	if n := countState(r, updating); n != 3 {
		t.Fatalf("%d hosts moving at once, want 3", n)
	}
}
