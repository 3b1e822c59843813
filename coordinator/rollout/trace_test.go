package rollout

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/specdiff"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestTraces replays the scenario traces in testdata/*.txt, the way etcd's
// raft tests do: each file is a sequence of commands against one world (the
// leader loop without I/O, world_test.go) and the output each command
// should print. `go test ./coordinator/rollout -run TestTraces -rewrite`
// rewrites the expected output (read the diff before committing it).
//
// Commands (time is an offset from the start, t=<duration>, never going
// back; a command without t= runs at the current time):
//
//	service [name=web] [mode=auto|manual] [canary=N] [no-canary] [waves=(50,100)]
//	        [parallel=N] [bake=D] [deadline=D] [failures=N] [on-new=supersede|queue]
//	        [each-wave] [selector=(k=v,...)] [stable=VERSION]
//	        [run=(./app,ARG...)] [env=(K=V,...)] [mem=SIZE] [cpu=N] [webhook=URL]
//	        [window=(DAYS,HH:MM,HH:MM,ZONE)] [after=(NAME,...)]
//	        [zone-limit=N|P%] [zone-order=one_at_a_time] [abort-on=(ALERT,...)]
//	    the service's spec: its policy, what hosts run (run, env; mem and
//	    cpu its resources.memory_max and cpu_weight) and its alerts. The first is spec 1; again: an apply (a spec that differs gets
//	    the next revision; it prints the revision and what changed), same
//	    status. stable= makes VERSION an existing release that runs
//	    everywhere (generation 1) with spec 1.
//	hosts                      one host per input line: "ID [k=v ...]"
//	release VERSION            a new release, created after everything so far
//	decide                     print what Decide says, without acting
//	reconcile [t=D]            one pass of the leader loop: decisions, events, state
//	report H=PHASE... [reason=(text)] [gen=N] [version=V] [down]
//	    what hosts report for the service (of the newest rollout's
//	    generation and, for healthy, its target; else its source); down: the
//	    stream drops after the report
//	disconnect H...  connect H...  gossip H=STATE...
//	labels H [k=v ...]         the host's labels change (its agent restarted with others)
//	approve [wave=N] [t=D]  pause  resume [t=D]  abort [reason=(text)] [t=D]
//	compare-fail reason=(text) [t=D]
//	    the canary-versus-baseline comparison failed (the leader's judge)
//	rollback [to=V] [t=D]  unfreeze [t=D]  delete [force] [t=D]
//	alert NAME[=(k=v,...)]... [t=D]
//	    Alertmanager posts these alerts firing (NAME is the alertname,
//	    the values its other labels): the leader aborts the rollout in
//	    flight when AlertAbort says so
//	    the operator's calls, as the leader serves them (after a delete,
//	    `service` creates the service anew)
//	blackout ID from=D to=D [reason=(text)]   a coordinator-wide blackout
//	unblackout ID              the blackout is deleted
//	upstream NAME=STATE...     the newest rollout of a service in rollout.after
//	                           (succeeded, failed, progressing, ...; none: no
//	                           rollout; missing: no such service)
//	override [reason=(text)]   an admin lets the newest release past the holds
//	plan [version=V]           the preview (Preview) of a rollout now
//	state                      the service and its newest rollout
//	desired                    what each host is told to run
//
// Every command that acts prints what happened (decisions, events as
// "<rollout> <kind> [w<wave>] [<host>]: <message>", errors) and then the
// state. The world checks the engine's and the policy's invariants after
// every action, as the simulations do.
func TestTraces(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if filepath.Dir(path) != "testdata" {
			return // testdata/stage/: PlanStage's scenarios (stage_test.go)
		}
		var w *world
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("%s: %s", td.Pos, fmt.Sprintf(format, args...))
			}
			if w == nil && td.Cmd != "service" {
				fail("the first command must be service")
			}
			if w != nil {
				w.fail = fail
				if td.HasArg("t") {
					d, err := time.ParseDuration(arg(td, "t"))
					if err != nil || t0.Add(d).Before(w.now) {
						fail("t=%s: %v (time only goes forward; now %s)", arg(td, "t"), err, w.at(w.now))
					}
					w.now = t0.Add(d)
				}
			}
			var out []string
			act := func(err error) string {
				out = append(out, w.take()...)
				if err != nil {
					out = append(out, "error: "+err.Error())
				}
				out = append(out, w.state()...)
				if err == nil && steps(td.Cmd) {
					out = append(out, w.wakeLine()...)
				}
				return strings.Join(out, "\n")
			}
			switch td.Cmd {
			case "service":
				svc := traceService(t, td)
				if w == nil {
					svc.SpecRevision = 1
					w = newWorld(svc, nil, t0, fail)
					if v := arg(td, "stable"); v != "" {
						w.release(v)
						w.svc.Status = &v1.ServiceStatus{StableVersion: v, StableGeneration: 1,
							StableSpec: proto.Clone(svc.GetSpec()).(*v1.ServiceSpec), StableSpecRevision: 1}
						w.goodStables[v] = true
						w.goodSpecs[1] = true
					}
					return ""
				}
				before := w.svc.GetSpec()
				if w.svc.GetStatus().GetRemoved() {
					w.apply(svc.GetSpec())
					return strings.Join(append(w.take(), w.state()...), "\n")
				}
				if rev := w.svc.GetSpecRevision(); w.apply(svc.GetSpec()) == rev {
					return fmt.Sprintf("%s unchanged", SpecName(rev))
				}
				d := specdiff.Diff(before, w.svc.GetSpec())
				return fmt.Sprintf("%s applied: host %v, coordinator %v, placement %v", SpecName(w.svc.GetSpecRevision()), d.Host, d.Coordinator, d.Placement)
			case "hosts":
				for _, line := range strings.Split(strings.TrimSpace(td.Input), "\n") {
					f := strings.Fields(line)
					if len(f) == 0 {
						continue
					}
					h := Host{ID: f[0], Labels: map[string]string{}}
					for _, kv := range f[1:] {
						k, v, ok := strings.Cut(kv, "=")
						if !ok {
							fail("label %q: want k=v", kv)
						}
						h.Labels[k] = v
					}
					w.hosts = append(w.hosts, h)
				}
				return ""
			case "release":
				for _, a := range td.CmdArgs {
					w.release(a.Key)
				}
				return ""
			case "decide":
				cur, created := w.current()
				d := Decide(w.svc, cur, created, w.releases)
				return Gated(d, Holding(w.svc, w.holdGates(), d.Version, w.now)).String()
			case "blackout":
				if len(td.CmdArgs) == 0 {
					fail("blackout: want an id")
				}
				from, err1 := time.ParseDuration(arg(td, "from"))
				to, err2 := time.ParseDuration(arg(td, "to"))
				if err1 != nil || err2 != nil {
					fail("blackout: from=%s to=%s: want durations", arg(td, "from"), arg(td, "to"))
				}
				w.gates.Blackouts = append(w.gates.Blackouts, &v1.Blackout{Id: td.CmdArgs[0].Key,
					From: timestamppb.New(t0.Add(from)), To: timestamppb.New(t0.Add(to)), Reason: arg(td, "reason")})
				return ""
			case "unblackout":
				w.gates.Blackouts = slices.DeleteFunc(w.gates.Blackouts, func(b *v1.Blackout) bool { return b.GetId() == td.CmdArgs[0].Key })
				return ""
			case "upstream":
				if w.gates.Upstream == nil {
					w.gates.Upstream = map[string]*v1.Rollout{}
				}
				for _, a := range td.CmdArgs {
					switch st := a.SingleVal(t); st {
					case "missing":
						delete(w.gates.Upstream, a.Key)
					case "none":
						w.gates.Upstream[a.Key] = nil
					default:
						n, ok := v1.RolloutState_value["ROLLOUT_STATE_"+strings.ToUpper(st)]
						if !ok {
							fail("upstream %s=%s: not a rollout state", a.Key, st)
						}
						w.gates.Upstream[a.Key] = &v1.Rollout{Id: "000009", Service: a.Key, ToVersion: "u1", State: v1.RolloutState(n), Reason: "upstream reason"}
					}
				}
				return ""
			case "override":
				return act(w.override(arg(td, "reason")))
			case "plan":
				cur, created := w.current()
				d := Decide(w.svc, cur, created, w.releases)
				v := arg(td, "version")
				if v == "" {
					v = d.Version
				}
				h := Holding(w.svc, w.holdGates(), v, w.now)
				p := Preview(w.svc, v, w.hosts, w.observe, Gated(d, h), h, w.now)
				out := []string{fmt.Sprintf("plan %s → %s: %s", orNone(p.Rollout.GetFromVersion()), p.Rollout.GetToVersion(), p.Decision)}
				for i, wv := range p.Rollout.GetWaves() {
					var ids []string
					for _, hp := range wv.GetHosts() {
						ids = append(ids, hp.GetHostId())
					}
					out = append(out, fmt.Sprintf("  %s: %s", waveName(i, wv), strings.Join(ids, " ")))
				}
				if len(p.Unknown) > 0 {
					out = append(out, "unknown: "+strings.Join(p.Unknown, " "))
				}
				if r := h.Reason(); r != "" {
					out = append(out, "held: "+r)
				}
				return strings.Join(out, "\n")
			case "reconcile":
				w.reconcile()
				return act(nil)
			case "report":
				traceReport(td, w, fail)
				return ""
			case "labels":
				if len(td.CmdArgs) == 0 {
					fail("labels: want a host")
				}
				i := slices.IndexFunc(w.hosts, func(h Host) bool { return h.ID == td.CmdArgs[0].Key })
				if i < 0 {
					fail("labels: no host %s", td.CmdArgs[0].Key)
				}
				w.hosts[i].Labels = map[string]string{}
				for _, a := range td.CmdArgs[1:] {
					w.hosts[i].Labels[a.Key] = a.SingleVal(t)
				}
				return ""
			case "disconnect", "connect":
				for _, a := range td.CmdArgs {
					o := w.observe(a.Key)
					o.Connected = td.Cmd == "connect"
					w.obs[a.Key] = o
				}
				return ""
			case "gossip":
				for _, a := range td.CmdArgs {
					o := w.observe(a.Key)
					o.Gossip = a.SingleVal(t)
					w.obs[a.Key] = o
				}
				return ""
			case "approve":
				var wave uint32
				if s := arg(td, "wave"); s != "" {
					n, err := strconv.ParseUint(s, 10, 32)
					if err != nil {
						fail("wave=%s: %v", s, err)
					}
					wave = uint32(n)
				}
				return act(w.approve(wave))
			case "pause":
				return act(w.pause())
			case "resume":
				return act(w.resume())
			case "abort":
				return act(w.abort(arg(td, "reason")))
			case "compare-fail":
				return act(w.compareFailed(arg(td, "reason")))
			case "alert":
				var firing []FiringAlert
				for _, a := range td.CmdArgs {
					if a.Key == "t" {
						continue
					}
					l := map[string]string{AlertLabelName: a.Key}
					for _, kv := range a.Vals {
						k, v, _ := strings.Cut(kv, "=")
						l[k] = v
					}
					firing = append(firing, FiringAlert{Labels: l})
				}
				w.alerts(firing)
				return act(nil)
			case "rollback":
				return act(w.rollback(arg(td, "to")))
			case "unfreeze":
				w.unfreeze()
				return act(nil)
			case "delete":
				return act(w.deleteService(td.HasArg("force")))
			case "state":
				return strings.Join(w.state(), "\n")
			case "desired":
				return strings.Join(w.desiredLines(), "\n")
			}
			fail("unknown command %q", td.Cmd)
			return ""
		})
	})
}

// steps reports whether a command steps the rollout in flight, so that
// its output ends with the next wake.
func steps(cmd string) bool {
	return slices.Contains([]string{"reconcile", "approve", "rollback", "unfreeze", "delete", "override"}, cmd)
}

// arg is a command argument's value ("" if absent), values in parentheses
// joined by commas.
func arg(td *datadriven.TestData, key string) string {
	a, ok := td.Arg(key)
	if !ok {
		return ""
	}
	return strings.Join(a.Vals, ",")
}

func traceService(t *testing.T, td *datadriven.TestData) *v1.Service {
	name := arg(td, "name")
	if name == "" {
		name = "web"
	}
	pol := &v1.RolloutPolicy{Mode: arg(td, "mode"), OnNewRelease: arg(td, "on-new"), NoCanary: td.HasArg("no-canary"), ApproveEachWave: td.HasArg("each-wave")}
	num := func(key string) uint32 {
		s := arg(td, key)
		if s == "" {
			return 0
		}
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			t.Fatalf("%s: %s=%s: %v", td.Pos, key, s, err)
		}
		return uint32(n)
	}
	dur := func(key string) *durationpb.Duration {
		s := arg(td, key)
		if s == "" {
			return nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s: %s=%s: %v", td.Pos, key, s, err)
		}
		return durationpb.New(d)
	}
	pol.Canary, pol.MaxParallel, pol.MaxFailures = num("canary"), num("parallel"), num("failures")
	pol.Bake, pol.ProgressDeadline = dur("bake"), dur("deadline")
	pol.MaxUnavailablePerZone, pol.ZoneOrder = arg(td, "zone-limit"), arg(td, "zone-order")
	if a, ok := td.Arg("abort-on"); ok {
		pol.AbortOnAlerts = a.Vals
	}
	if s := arg(td, "waves"); s != "" {
		for _, p := range strings.Split(s, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 32)
			if err != nil {
				t.Fatalf("%s: waves=%s: %v", td.Pos, s, err)
			}
			pol.Waves = append(pol.Waves, uint32(n))
		}
	}
	var sel map[string]string
	if a, ok := td.Arg("selector"); ok {
		sel = map[string]string{}
		for _, kv := range a.Vals {
			k, v, _ := strings.Cut(kv, "=")
			sel[k] = v
		}
	}
	sp := &v1.ServiceSpec{Name: name, Selector: sel, Rollout: pol}
	if a, ok := td.Arg("run"); ok {
		sp.Run = &v1.RunSpec{Command: a.Vals}
	}
	if a, ok := td.Arg("env"); ok {
		if sp.Run == nil {
			sp.Run = &v1.RunSpec{}
		}
		sp.Run.Env = map[string]string{}
		for _, kv := range a.Vals {
			k, v, _ := strings.Cut(kv, "=")
			sp.Run.Env[k] = v
		}
	}
	if m, c := arg(td, "mem"), num("cpu"); m != "" || c != 0 {
		sp.Resources = &v1.Resources{MemoryMax: m, CpuWeight: c}
	}
	if a, ok := td.Arg("checks"); ok {
		for _, c := range a.Vals {
			sp.Checks = append(sp.Checks, &v1.Check{Name: c})
		}
	}
	if u := arg(td, "webhook"); u != "" {
		sp.Alerts = &v1.Alerts{WebhookUrl: u}
	}
	if a, ok := td.Arg("window"); ok {
		if len(a.Vals) != 4 {
			t.Fatalf("%s: window=%v: want (days,start,end,zone)", td.Pos, a.Vals)
		}
		pol.Windows = []*v1.DeployWindow{{Days: a.Vals[0], Start: a.Vals[1], End: a.Vals[2], TimeZone: a.Vals[3]}}
	}
	if a, ok := td.Arg("after"); ok {
		pol.After = a.Vals
	}
	return &v1.Service{Spec: sp}
}

// traceReport records reports: H=PHASE for each host, for the newest
// rollout's generation (gen= overrides), running its target when healthy
// and its source otherwise (version= overrides); inplace: the host says it
// applied the change in place (ServiceReport.in_place).
func traceReport(td *datadriven.TestData, w *world, fail func(string, ...any)) {
	cur, _ := w.current()
	gen := cur.GetGeneration()
	if s := arg(td, "gen"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fail("gen=%s: %v", s, err)
		}
		gen = n
	}
	for _, a := range td.CmdArgs {
		if slices.Contains([]string{"reason", "gen", "version", "down", "t", "inplace"}, a.Key) {
			continue
		}
		name := strings.ToUpper(strings.Join(a.Vals, ""))
		ph, ok := v1.Phase_value["PHASE_"+name]
		if !ok {
			fail("%s=%s: not a phase", a.Key, name)
		}
		phase := v1.Phase(ph)
		running := cur.GetFromVersion()
		switch phase {
		case v1.Phase_PHASE_HEALTHY:
			running = cur.GetToVersion()
		case v1.Phase_PHASE_REMOVING, v1.Phase_PHASE_REMOVED:
			running = ""
		}
		if v := arg(td, "version"); v != "" {
			running = v
		}
		o := w.observe(a.Key)
		o.Connected = !td.HasArg("down")
		o.Report = &v1.ServiceReport{Service: w.name(), Generation: gen, Phase: phase, CurrentVersion: running,
			TargetVersion: cur.GetToVersion(), Reason: arg(td, "reason"), InPlace: td.HasArg("inplace")}
		w.obs[a.Key] = o
	}
}
