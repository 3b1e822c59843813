package lifecycle

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/fleetwave/fleetwave/internal/hookspec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestTraces replays the scenario traces in testdata/ (the way etcd's raft
// tests its state machine): each directive feeds the machine one input and
// prints the actions it returned and where the machine stands. Every
// `subtest` starts with a new machine at t=0s. Rewrite the expected output
// after a deliberate change with
//
//	go test ./agent/lifecycle -run TestTraces -rewrite
//
// and read the diff. The commands (arguments in brackets are optional):
//
//	assign V gen=N [checks=N] [interval=D] [min_healthy=D] [deadline=D] [analysis] [watch=D] [inconclusive=fail]
//	        [sockets] [notify] [ready_timeout=D] [hooks=NAME,...] [hook_timeout=D] [pre_stop]
//	        [env=K=V] [check=CMD] [policy=N] [mem=SIZE] [cpu=N]
//	        a valid assignment of release V (defaults: 1 check, min_healthy
//	        10s, deadline 1m); analysis adds the error_ratio rule "errors";
//	        sockets declares a socket (http); notify sets ready: notify;
//	        hooks gives it those hooks (command ./NAME, timeout hook_timeout
//	        or the default); pre_stop sets run.pre_stop (before_stop's alias);
//	        env sets run.env (a spec change hosts run: printed V{K=V} in
//	        actions and snapshots), policy the rollout's max_parallel (one
//	        they do not), check the checks' command (a spec change that
//	        only changes how the release is judged: printed V{check=CMD}),
//	        mem and cpu its resources.memory_max and cpu_weight (a change
//	        applied in place, its limits written: printed V{cpu=N,mem=SIZE})
//	invalid gen=N [reason=TEXT]     an assignment that failed validation
//	remove gen=N                    an assignment to remove the service
//	done KIND [err=TEXT] [link=V|none]
//	        the long step in flight, which must be KIND, finished; link: the
//	        switch's read-back link (SwitchDone; without it the link is unknown)
//	done seq=N [err=TEXT]           Done for any Seq (a stale one is ignored)
//	done hook [err=TEXT] [output=TEXT]   the hook in flight ended (HookDone;
//	        \n in output is a line break)
//	checks ok|fail|none [detail=TEXT] [epoch=N]
//	checks NAME=ok|fail ...         one result per check of the checked release
//	exit [epoch=N]                  the process exited
//	ready [epoch=N]                 the process said READY=1
//	analysis pass|fail|inconclusive [rule=NAME] [epoch=N]
//	tick                            time passed
//	advance D                       move the clock without an input
//	restart [running=V] [epoch=N]   the agent restarts: Restore from the last persisted
//	        snapshot, with a process of release V found running (epoch: the last
//	        ActStart's); without running=, nothing runs (as after a reboot);
//	        running=(V,W) epoch=(N,M): two processes found (a handover)
//	restore PHASE gen=N [current=V] [last_good=V] [target=V] [previous=V watch_until=D] [current_ok]
//	        [reason=TEXT] [running=V] [epoch=N] [sockets] [notify]
//	        Restore from this snapshot (releases as last assigned, else built;
//	        with sockets, built declaring a socket; with notify, ready: notify)
//	install V gen=N [assign args]   setup: assign and finish every step up to CHECKING
//	healthy V gen=N [assign args]   setup: install, pass checks (and analysis) to HEALTHY
//	state                           print the machine's report and state in full
//
// Epochs default to the last ActStart's. Every input command takes +D
// (e.g. `checks ok +10s`) to move the clock by D first. The output is one
// line per action, then `> PHASE t=T` with the flags that hold: in-flight=KIND
// (the long step in flight), probing (checks run), watching, analysing
// (AnalysisEpoch ok), superseded (FetchSuperseded), ready-by=T (a started
// process must say READY=1 by T), procs=E,E (the epochs of the processes
// that serve, and +E the one being started).
func TestTraces(t *testing.T) {
	// The service machine's traces: testdata/*.txt (the agent's own
	// upgrade has its own in testdata/agent/, agent_test.go).
	paths, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no traces in testdata: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) { runTraceFile(t, path) })
	}
}

func runTraceFile(t *testing.T, path string) {
	traces := map[string]*trace{}
	datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
		tr := traces[t.Name()]
		if tr == nil {
			tr = &trace{m: New("web"), now: t0, asgs: map[string]*v1.Assignment{}}
			traces[t.Name()] = tr
		}
		return tr.run(t, d)
	})
}

// trace drives one machine the way the agent's run loop does.
type trace struct {
	m         *Machine
	now       time.Time
	inflight  *Action        // the long step in flight
	epoch     uint64         // epoch of the last ActStart
	chkEpoch  uint64         // epoch of the last ActBeginChecks
	checked   *v1.Assignment // the release of the last ActBeginChecks
	probing   bool
	persisted *Snapshot                 // last ActPersist
	asgs      map[string]*v1.Assignment // last assignment built for each version
}

func (tr *trace) run(t *testing.T, d *datadriven.TestData) string {
	var out strings.Builder
	var args []datadriven.CmdArg
	for _, a := range d.CmdArgs {
		if !strings.HasPrefix(a.Key, "+") {
			args = append(args, a)
			continue
		}
		dur, err := time.ParseDuration(a.Key[1:])
		if err != nil {
			d.Fatalf(t, "%s: %v", a.Key, err)
		}
		tr.now = tr.now.Add(dur)
	}
	d.CmdArgs = args
	switch d.Cmd {
	case "assign":
		tr.step(t, d, &out, Assign(tr.assignment(t, d), tr.now))
	case "remove":
		var gen int64
		d.ScanArgs(t, "gen", &gen)
		a := &v1.Assignment{Service: "web", Generation: gen, Remove: true}
		d.MaybeScanArgs(t, "replaces", &a.ReplacesGeneration)
		tr.step(t, d, &out, Assign(a, tr.now))
	case "invalid":
		a := &v1.Assignment{Service: "web"}
		d.ScanArgs(t, "gen", &a.Generation)
		d.MaybeScanArgs(t, "replaces", &a.ReplacesGeneration)
		reason := "release.version: invalid"
		d.MaybeScanArgs(t, "reason", &reason)
		tr.step(t, d, &out, Invalid(a, reason, tr.now))
	case "done":
		tr.step(t, d, &out, tr.done(t, d))
	case "checks":
		tr.step(t, d, &out, tr.checks(t, d))
	case "exit":
		epoch := tr.epoch
		d.MaybeScanArgs(t, "epoch", &epoch)
		why := ""
		d.MaybeScanArgs(t, "reason", &why)
		tr.step(t, d, &out, ExitedBecause(epoch, why, tr.now))
	case "ready":
		epoch := tr.epoch
		d.MaybeScanArgs(t, "epoch", &epoch)
		tr.step(t, d, &out, Ready(epoch, tr.now))
	case "analysis":
		tr.step(t, d, &out, tr.analysis(t, d))
	case "tick":
		tr.step(t, d, &out, Tick(tr.now))
	case "advance":
		dur, err := time.ParseDuration(tr.positional(t, d))
		if err != nil {
			d.Fatalf(t, "advance: %v", err)
		}
		tr.now = tr.now.Add(dur)
	case "restart":
		if tr.persisted == nil {
			d.Fatalf(t, "restart: nothing persisted")
		}
		tr.restore(t, d, &out, *tr.persisted, tr.found(t, d))
	case "restore":
		tr.restore(t, d, &out, tr.snapshot(t, d), tr.found(t, d))
	case "install", "healthy":
		tr.setup(t, d)
	case "state":
		tr.describe(&out)
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	fmt.Fprintf(&out, "> %s", tr.status())
	return out.String()
}

// step feeds one input and prints the actions.
func (tr *trace) step(t *testing.T, d *datadriven.TestData, out *strings.Builder, in Input) {
	tr.record(t, d, out, tr.m.Step(in))
}

func (tr *trace) record(t *testing.T, d *datadriven.TestData, out *strings.Builder, acts []Action) {
	for i := range acts {
		a := acts[i]
		if a.Kind.Long() {
			if tr.inflight != nil {
				d.Fatalf(t, "second long step %v while %v is in flight", a, *tr.inflight)
			}
			tr.inflight = &a
			if a.Kind == ActStart {
				tr.epoch = a.Epoch
			}
		}
		switch a.Kind {
		case ActAdopt:
			tr.epoch = a.Epoch
		case ActBeginChecks:
			tr.probing, tr.checked, tr.chkEpoch = true, a.Assignment, a.Epoch
		case ActStopChecks:
			tr.probing = false
		case ActPersist:
			tr.persisted = a.Snapshot
		}
		if out != nil {
			out.WriteString(tr.action(a))
		}
	}
}

// checkedEpoch is the default epoch of checks and analysis: the checked
// process's while probing, else the last started one's.
func (tr *trace) checkedEpoch() uint64 {
	if tr.probing {
		return tr.chkEpoch
	}
	return tr.epoch
}

// positional returns the argument without a value (a version, a verdict).
func (tr *trace) positional(t *testing.T, d *datadriven.TestData) string {
	for _, a := range d.CmdArgs {
		if len(a.Vals) == 0 {
			return a.Key
		}
	}
	d.Fatalf(t, "%s: missing the positional argument", d.Cmd)
	return ""
}

func (tr *trace) duration(t *testing.T, d *datadriven.TestData, key string) (time.Duration, bool) {
	var s string
	if !d.MaybeScanArgs(t, key, &s) {
		return 0, false
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.Fatalf(t, "%s: %v", key, err)
	}
	return dur, true
}

// assignment builds the assignment an assign (or a setup) command names.
func (tr *trace) assignment(t *testing.T, d *datadriven.TestData) *v1.Assignment {
	version := tr.positional(t, d)
	var gen int64
	d.ScanArgs(t, "gen", &gen)
	n := 1
	d.MaybeScanArgs(t, "checks", &n)
	a := asgChecks(version, gen, n)
	d.MaybeScanArgs(t, "replaces", &a.ReplacesGeneration)
	if dur, ok := tr.duration(t, d, "min_healthy"); ok {
		a.Spec.MinHealthyTime = durationpb.New(dur)
	}
	if dur, ok := tr.duration(t, d, "deadline"); ok {
		a.Spec.HealthyDeadline = durationpb.New(dur)
	}
	if dur, ok := tr.duration(t, d, "interval"); ok {
		for _, c := range a.Spec.Checks {
			c.Interval = durationpb.New(dur)
		}
	}
	if d.HasArg("analysis") || d.HasArg("watch") || d.HasArg("inconclusive") {
		a.Spec.Analysis = &v1.Analysis{}
	}
	if d.HasArg("analysis") {
		a.Spec.Analysis.Rules = []*v1.AnalysisRule{{Name: "errors", Kind: &v1.AnalysisRule_ErrorRatio{
			ErrorRatio: &v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05}}}}
	}
	if dur, ok := tr.duration(t, d, "watch"); ok {
		a.Spec.Analysis.Watch = durationpb.New(dur)
	}
	if a.Spec.Analysis != nil {
		d.MaybeScanArgs(t, "inconclusive", &a.Spec.Analysis.Inconclusive)
	}
	if d.HasArg("sockets") {
		a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:8080"}}
	}
	if d.HasArg("notify") {
		a.Spec.Run.Ready = ReadyNotify
	}
	if dur, ok := tr.duration(t, d, "ready_timeout"); ok {
		a.Spec.Run.ReadyTimeout = durationpb.New(dur)
	}
	var timeout *durationpb.Duration
	if dur, ok := tr.duration(t, d, "hook_timeout"); ok {
		timeout = durationpb.New(dur)
	}
	for _, arg := range d.CmdArgs {
		if arg.Key != "hooks" {
			continue
		}
		a.Spec.Hooks = &v1.Hooks{}
		for _, name := range arg.Vals {
			h := &v1.Hook{Command: []string{"./" + name}, Timeout: timeout}
			switch name {
			case hookspec.AfterInstall:
				a.Spec.Hooks.AfterInstall = h
			case hookspec.BeforeStart:
				a.Spec.Hooks.BeforeStart = h
			case hookspec.AfterStart:
				a.Spec.Hooks.AfterStart = h
			case hookspec.Validate:
				a.Spec.Hooks.Validate = h
			case hookspec.BeforeStop:
				a.Spec.Hooks.BeforeStop = h
			default:
				d.Fatalf(t, "hooks: unknown hook %q", name)
			}
		}
	}
	if d.HasArg("pre_stop") {
		a.Spec.Run.PreStop = &v1.PreStop{Command: []string{"./pre_stop"}, Timeout: timeout}
	}
	var env string
	if d.MaybeScanArgs(t, "env", &env) {
		k, v, _ := strings.Cut(env, "=")
		a.Spec.Run.Env = map[string]string{k: v}
	}
	var check string
	if d.MaybeScanArgs(t, "check", &check) {
		for _, c := range a.Spec.Checks {
			c.GetExec().Command = []string{check}
		}
	}
	var mem string
	if d.MaybeScanArgs(t, "mem", &mem) {
		a.Spec.Resources = &v1.Resources{MemoryMax: mem}
	}
	var cpu uint32
	if d.MaybeScanArgs(t, "cpu", &cpu) {
		if a.Spec.Resources == nil {
			a.Spec.Resources = &v1.Resources{}
		}
		a.Spec.Resources.CpuWeight = cpu
	}
	var policy uint32
	if d.MaybeScanArgs(t, "policy", &policy) {
		a.Spec.Rollout = &v1.RolloutPolicy{MaxParallel: policy}
	}
	tr.asgs[version] = a
	return a
}

func (tr *trace) done(t *testing.T, d *datadriven.TestData) Input {
	var err error
	var msg string
	if d.MaybeScanArgs(t, "err", &msg) {
		err = errors.New(msg)
	}
	if d.HasArg("seq") {
		var seq uint64
		d.ScanArgs(t, "seq", &seq)
		return Done(seq, err, tr.now)
	}
	kind := tr.positional(t, d)
	if tr.inflight == nil {
		d.Fatalf(t, "done %s: nothing in flight", kind)
	}
	if got := tr.inflight.Kind.String(); got != kind {
		d.Fatalf(t, "done %s: %s is in flight", kind, got)
	}
	seq := tr.inflight.Seq
	tr.inflight = nil
	if kind == "hook" {
		var output string
		d.MaybeScanArgs(t, "output", &output)
		return HookDone(seq, err, strings.ReplaceAll(output, `\n`, "\n"), tr.now)
	}
	var link string
	if d.MaybeScanArgs(t, "link", &link) {
		if link == "none" {
			link = ""
		}
		return SwitchDone(seq, err, link, tr.now)
	}
	return Done(seq, err, tr.now)
}

func (tr *trace) checks(t *testing.T, d *datadriven.TestData) Input {
	epoch := tr.checkedEpoch()
	d.MaybeScanArgs(t, "epoch", &epoch)
	detail := "down"
	d.MaybeScanArgs(t, "detail", &detail)
	var res []CheckResult
	result := func(name, outcome string) {
		switch outcome {
		case "ok":
			res = append(res, CheckResult{Name: name, OK: true})
		case "fail":
			res = append(res, CheckResult{Name: name, Detail: detail})
		default:
			d.Fatalf(t, "checks: %s=%s: want ok or fail", name, outcome)
		}
	}
	for _, a := range d.CmdArgs {
		switch {
		case a.Key == "epoch" || a.Key == "detail":
		case len(a.Vals) == 1:
			result(a.Key, a.Vals[0])
		case a.Key == "none":
		case a.Key == "ok" || a.Key == "fail":
			for _, c := range tr.checked.GetSpec().GetChecks() {
				result(c.GetName(), a.Key)
			}
		default:
			d.Fatalf(t, "checks: bad argument %s", a)
		}
	}
	return Checks(epoch, tr.now, res...)
}

func (tr *trace) analysis(t *testing.T, d *datadriven.TestData) Input {
	epoch := tr.checkedEpoch()
	d.MaybeScanArgs(t, "epoch", &epoch)
	rule := "errors"
	d.MaybeScanArgs(t, "rule", &rule)
	var v Verdict
	var why string
	switch word := tr.positional(t, d); word {
	case "pass":
		v, why = VerdictPass, "error ratio 0.000 over 10s (0/200 requests) <= max 0.050"
	case "fail":
		v, why = VerdictFail, "error ratio 0.200 over 10s (40/200 requests) > max 0.050"
	case "inconclusive":
		v, why = VerdictInconclusive, "inconclusive: 3 requests in 10s, need 20"
	default:
		d.Fatalf(t, "analysis %s: want pass, fail or inconclusive", word)
	}
	return Analysis(epoch, tr.now, v, RuleResult{Rule: rule, Verdict: v, Reason: fmt.Sprintf("rule %q: %s", rule, why)})
}

// snapshot builds the snapshot a restore command names.
func (tr *trace) snapshot(t *testing.T, d *datadriven.TestData) Snapshot {
	name := "PHASE_" + strings.ToUpper(tr.positional(t, d))
	p, ok := v1.Phase_value[name]
	if !ok {
		d.Fatalf(t, "restore: unknown phase %s", name)
	}
	s := Snapshot{Service: "web", Phase: v1.Phase(p)}
	d.ScanArgs(t, "gen", &s.Generation)
	d.MaybeScanArgs(t, "reason", &s.Reason)
	release := func(key string) *v1.Assignment {
		var v string
		if !d.MaybeScanArgs(t, key, &v) {
			return nil
		}
		if a := tr.asgs[v]; a != nil {
			return a
		}
		a := asg(v, s.Generation)
		if d.HasArg("sockets") {
			a.Spec.Run.Sockets = []*v1.Socket{{Name: "http", Listen: "127.0.0.1:8080"}}
		}
		if d.HasArg("notify") {
			a.Spec.Run.Ready = ReadyNotify
		}
		tr.asgs[v] = a
		return a
	}
	s.Current, s.LastGood, s.Target, s.Previous = release("current"), release("last_good"), release("target"), release("previous")
	s.CurrentOK = d.HasArg("current_ok")
	d.MaybeScanArgs(t, "target_epoch", &s.TargetEpoch)
	s.InPlace = d.HasArg("in_place")
	if dur, ok := tr.duration(t, d, "watch_until"); ok {
		s.WatchUntil = t0.Add(dur)
	}
	return s
}

// found is what a restart or restore command says runs (none, one or two
// processes).
func (tr *trace) found(t *testing.T, d *datadriven.TestData) []Running {
	var versions []string
	var epochs []uint64
	for _, a := range d.CmdArgs {
		switch a.Key {
		case "running":
			versions = a.Vals
		case "epoch":
			for _, v := range a.Vals {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					d.Fatalf(t, "epoch: %v", err)
				}
				epochs = append(epochs, n)
			}
		}
	}
	var found []Running
	for i, v := range versions {
		r := Running{Version: v, Epoch: tr.epoch}
		if i < len(epochs) {
			r.Epoch = epochs[i]
		}
		found = append(found, r)
	}
	return found
}

// restore restarts the machine from s, as the agent does after a restart,
// with found running.
func (tr *trace) restore(t *testing.T, d *datadriven.TestData, out *strings.Builder, s Snapshot, found []Running) {
	tr.inflight, tr.probing, tr.epoch, tr.chkEpoch, tr.checked = nil, false, 0, 0, nil
	m, acts := Restore(s, found, tr.now)
	tr.m = m
	tr.record(t, d, out, acts)
}

// setup drives the machine through a whole install without printing it
// (the long-hand traces show every step).
func (tr *trace) setup(t *testing.T, d *datadriven.TestData) {
	a := tr.assignment(t, d)
	v := Version(a)
	tr.record(t, d, nil, tr.m.Step(Assign(a, tr.now)))
	// Every step succeeds (the fetch .. the switch, the hooks, stops and
	// a start in either order: a handover starts first), and READY=1 comes
	// when it is waited for.
	for range 16 {
		switch {
		case tr.inflight != nil:
			seq := tr.inflight.Seq
			tr.inflight = nil
			tr.record(t, d, nil, tr.m.Step(Done(seq, nil, tr.now)))
		case !tr.m.readyBy.IsZero():
			tr.record(t, d, nil, tr.m.Step(Ready(tr.epoch, tr.now)))
		}
	}
	if tr.m.Phase() != v1.Phase_PHASE_CHECKING {
		d.Fatalf(t, "%s %s: %v after the install, want CHECKING", d.Cmd, v, tr.m.Phase())
	}
	if d.Cmd == "install" {
		return
	}
	ok := func() []CheckResult {
		var res []CheckResult
		for _, c := range a.GetSpec().GetChecks() {
			res = append(res, CheckResult{Name: c.GetName(), OK: true})
		}
		return res
	}
	tr.record(t, d, nil, tr.m.Step(Checks(tr.epoch, tr.now, ok()...)))
	if HasAnalysis(a) {
		tr.record(t, d, nil, tr.m.Step(Analysis(tr.epoch, tr.now, VerdictPass,
			RuleResult{Rule: "errors", Verdict: VerdictPass, Reason: `rule "errors": pass`})))
	}
	tr.now = tr.now.Add(MinHealthyTime(a))
	tr.record(t, d, nil, tr.m.Step(Checks(tr.epoch, tr.now, ok()...)))
	if tr.inflight != nil && tr.inflight.Kind == ActHook {
		seq := tr.inflight.Seq // validate
		tr.inflight = nil
		tr.record(t, d, nil, tr.m.Step(Done(seq, nil, tr.now)))
	}
	if tr.m.Phase() != v1.Phase_PHASE_HEALTHY {
		d.Fatalf(t, "healthy %s: %v, want HEALTHY (%s)", v, tr.m.Phase(), tr.m.Report().GetReason())
	}
}

func phaseName(p v1.Phase) string { return strings.TrimPrefix(p.String(), "PHASE_") }

func versionOr(v string) string {
	if v == "" {
		return "-"
	}
	return v
}

func (tr *trace) at(t time.Time) string { return t.Sub(t0).String() }

// envOf is "{K=V,check=CMD,cpu=N,mem=SIZE}" for an assignment whose spec
// sets run.env (K=V), checks that run another command than "true"
// (check=CMD) or resources (cpu=N, mem=SIZE), else "".
func envOf(a *v1.Assignment) string {
	var kv []string
	for k, v := range a.GetSpec().GetRun().GetEnv() {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	if cs := a.GetSpec().GetChecks(); len(cs) > 0 {
		if cmd := cs[0].GetExec().GetCommand(); len(cmd) > 0 && cmd[0] != "true" {
			kv = append(kv, "check="+cmd[0])
		}
	}
	if r := a.GetSpec().GetResources(); r != nil {
		if r.GetCpuWeight() != 0 {
			kv = append(kv, fmt.Sprintf("cpu=%d", r.GetCpuWeight()))
		}
		if r.GetMemoryMax() != "" {
			kv = append(kv, "mem="+r.GetMemoryMax())
		}
	}
	if len(kv) == 0 {
		return ""
	}
	return "{" + strings.Join(kv, ",") + "}"
}

// action prints one action (and, for a report, its reason and checks).
func (tr *trace) action(a Action) string {
	var b strings.Builder
	b.WriteString(a.Kind.String())
	if a.Kind == ActHook {
		b.WriteString(" " + a.Hook)
	}
	switch a.Kind {
	case ActFetch, ActVerify, ActStage, ActSwitch, ActStart, ActStop, ActAdopt, ActBeginChecks, ActFreezeBaseline, ActHook, ActSetLimits:
		b.WriteString(" " + versionOr(a.Version) + envOf(a.Assignment))
	}
	if a.Seq != 0 {
		fmt.Fprintf(&b, " seq=%d", a.Seq)
	}
	if a.Epoch != 0 || a.Kind == ActStop {
		fmt.Fprintf(&b, " epoch=%d", a.Epoch)
	}
	if a.Beside {
		b.WriteString(" beside")
	}
	if a.Drain {
		b.WriteString(" drain")
	}
	if a.Limits {
		b.WriteString(" limits")
	}
	if a.Kind == ActHook {
		fmt.Fprintf(&b, " timeout=%s %s", a.Timeout, a.Operation)
		if a.Hook == hookspec.BeforeStop {
			fmt.Fprintf(&b, " next=%s", versionOr(a.Next))
		} else {
			fmt.Fprintf(&b, " previous=%s", versionOr(a.Previous))
		}
	}
	switch a.Kind {
	case ActPersist:
		s := a.Snapshot
		fmt.Fprintf(&b, " %s gen=%d cur=%s good=%s target=%s", phaseName(s.Phase), s.Generation,
			versionOr(Version(s.Current))+envOf(s.Current), versionOr(Version(s.LastGood))+envOf(s.LastGood),
			versionOr(Version(s.Target))+envOf(s.Target))
		if !s.WatchUntil.IsZero() || s.Previous != nil {
			fmt.Fprintf(&b, " watch_until=%s previous=%s", tr.at(s.WatchUntil), versionOr(Version(s.Previous))+envOf(s.Previous))
		}
		if s.TargetEpoch != 0 {
			fmt.Fprintf(&b, " target_epoch=%d", s.TargetEpoch)
		}
		if s.InPlace {
			b.WriteString(" in_place")
		}
		if s.LimitsUnknown != 0 {
			fmt.Fprintf(&b, " limits_unknown=%d", s.LimitsUnknown)
		}
	case ActReport:
		r := a.Report
		fmt.Fprintf(&b, " %s gen=%d cur=%s good=%s target=%s", phaseName(r.Phase), r.Generation,
			versionOr(r.CurrentVersion), versionOr(r.LastGoodVersion), versionOr(r.TargetVersion))
		if r.InPlace {
			b.WriteString(" in-place")
		}
		if r.Reason != "" {
			b.WriteString("\n  reason: " + r.Reason)
		}
		if len(r.Checks) > 0 {
			b.WriteString("\n  checks:")
			for _, c := range r.Checks {
				fmt.Fprintf(&b, " %s=%s", c.Name, map[bool]string{true: "ok", false: "fail"}[c.Ok])
			}
		}
	}
	b.WriteString("\n")
	return b.String()
}

// status is the line after every command.
func (tr *trace) status() string {
	s := fmt.Sprintf("%s t=%s", phaseName(tr.m.Phase()), tr.at(tr.now))
	if k, _ := tr.m.InFlight(); k != 0 {
		s += " in-flight=" + k.String()
	}
	if tr.probing {
		s += " probing"
	}
	if tr.m.Watching() {
		s += " watching"
	}
	if at, ok := tr.m.HealthyAt(); ok {
		s += " healthy-at=" + tr.at(at)
	}
	if e, ok := tr.m.AnalysisEpoch(); ok {
		s += " analysing=" + strconv.FormatUint(e, 10)
	}
	if tr.m.FetchSuperseded() {
		s += " superseded"
	}
	if !tr.m.readyBy.IsZero() {
		s += " ready-by=" + tr.at(tr.m.readyBy)
	}
	if n := len(tr.m.procs); (n > 0 && tr.m.fresh != nil) || n > 1 || (n == 1 && tr.epoch != 0 && tr.m.procs[0].epoch != tr.epoch) {
		var es []string
		for _, p := range tr.m.procs {
			es = append(es, strconv.FormatUint(p.epoch, 10))
		}
		if f := tr.m.fresh; f != nil {
			es = append(es, "+"+strconv.FormatUint(f.epoch, 10))
		}
		s += " procs=" + strings.Join(es, ",")
	}
	return s
}

// describe prints the report in full and the last persisted snapshot.
func (tr *trace) describe(out *strings.Builder) {
	r := tr.m.Report()
	fmt.Fprintf(out, "report %s gen=%d cur=%s good=%s target=%s%s\n", phaseName(r.Phase), r.Generation,
		versionOr(r.CurrentVersion), versionOr(r.LastGoodVersion), versionOr(r.TargetVersion), map[bool]string{true: " in-place"}[r.InPlace])
	if r.Reason != "" {
		fmt.Fprintf(out, "  reason: %s\n", r.Reason)
	}
	checks := append([]*v1.CheckResult(nil), r.Checks...)
	sort.SliceStable(checks, func(i, j int) bool { return checks[i].Name < checks[j].Name })
	for _, c := range checks {
		fmt.Fprintf(out, "  check %s: %s %q\n", c.Name, map[bool]string{true: "ok", false: "fail"}[c.Ok], c.Detail)
	}
	if s := tr.persisted; s != nil {
		out.WriteString("persisted:" + strings.TrimPrefix(tr.action(Action{Kind: ActPersist, Snapshot: s}), "persist"))
		if s.CurrentOK {
			out.WriteString("  current_ok\n")
		}
	}
}
