package lifecycle

import (
	"fmt"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Defaults applied when an assignment's spec leaves the durations unset.
const (
	DefaultMinHealthyTime  = 10 * time.Second
	DefaultHealthyDeadline = 5 * time.Minute
	// CrashLoopExits is how many exits of a release since it started count as
	// a crash loop, while it is checked or watched (which reverts at once).
	CrashLoopExits = 3
	// DefaultWatch is how long a release is watched after it became HEALTHY
	// when its spec leaves analysis.watch unset (also when it has no
	// analysis rules). It equals spec.DefaultAnalysisWatch.
	DefaultWatch = 5 * time.Minute
	// DefaultCheckInterval is a check's interval when its spec leaves it
	// unset (as in package probe).
	DefaultCheckInterval = time.Second
	// WatchFailIntervals: during the watch, health checks failing
	// continuously for this many times the longest check interval revert.
	WatchFailIntervals = 3
	// DefaultReadyTimeout is how long a process of a release with ready:
	// notify has to send READY=1 when its spec leaves run.ready_timeout
	// unset. It equals spec.DefaultReadyTimeout.
	DefaultReadyTimeout = 60 * time.Second
	// ReadyNotify is the value of run.ready that makes the machine wait for
	// READY=1 (spec.ReadyNotify); any other value means ready once started.
	ReadyNotify = "notify"

	// MaxHookOutput bounds the end of a failed hook's output that the
	// machine puts in its report's reason.
	MaxHookOutput = 2048
	// MaxReason bounds a report's reason (the coordinator refuses longer
	// ones): the middle of a longer one is left out.
	MaxReason = 4096
	// MaxCheckDetail bounds the name and the detail of each check result
	// in a report (the coordinator refuses longer ones, and a Hello
	// holding one): the middle of a longer one is left out.
	MaxCheckDetail = 1024
	// MaxReportChecks bounds a report's check results, one per check and
	// per analysis rule (the coordinator refuses more, and a Hello holding
	// such a report): an assignment asking for more is refused.
	MaxReportChecks = 64
)

// The operations a hook runs in (Action.Operation, the hook's
// FLEETWAVE_OPERATION).
const (
	OpInstall = "install" // installing an assigned release
	OpRevert  = "revert"  // going back to the last good release
	OpRecover = "recover" // putting the last good release back after an agent restart found it not running
	OpRestore = "restore" // an agent restart finishing a handover it found half done
	OpRemove  = "remove"  // removing the service from the host (remove.go)
	OpStop    = "stop"    // fleetwave-agent stop-services draining the service (agent/stop.go; not the machine's)
)

// InputKind says what happened.
type InputKind int

const (
	// InputAssign: the coordinator assigned a (validated) release.
	InputAssign InputKind = iota + 1
	// InputInvalid: the coordinator sent an assignment that failed validation.
	InputInvalid
	// InputDone: a long step (an Action with a Seq) finished.
	InputDone
	// InputChecks: the results of all probers at one time.
	InputChecks
	// InputExit: the process started with an Epoch exited unexpectedly.
	InputExit
	// InputTick: time passed.
	InputTick
	// InputAnalysis: the analysis verdict on the process started with an
	// Epoch.
	InputAnalysis
	// InputReady: the process started with an Epoch said READY=1 (its
	// release has ready: notify).
	InputReady
)

// (An ActHook's end is an InputDone, with the end of its output: HookDone.)

func (k InputKind) String() string {
	switch k {
	case InputAssign:
		return "assign"
	case InputInvalid:
		return "invalid"
	case InputDone:
		return "done"
	case InputChecks:
		return "checks"
	case InputExit:
		return "exit"
	case InputTick:
		return "tick"
	case InputAnalysis:
		return "analysis"
	case InputReady:
		return "ready"
	}
	return fmt.Sprintf("input(%d)", int(k))
}

// CheckResult is the latest result of one prober.
type CheckResult struct {
	Name   string
	OK     bool
	Detail string
}

// Verdict is the overall outcome of one analysis round (the worst of its
// rules' verdicts).
type Verdict int

// Verdicts, from best to worst.
const (
	VerdictPass Verdict = iota + 1
	// VerdictInconclusive: too little data to judge (too few requests, the
	// metrics endpoint unreachable).
	VerdictInconclusive
	VerdictFail
)

func (v Verdict) String() string {
	switch v {
	case VerdictPass:
		return "pass"
	case VerdictInconclusive:
		return "inconclusive"
	case VerdictFail:
		return "fail"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// RuleResult is one analysis rule's outcome.
type RuleResult struct {
	Rule    string
	Verdict Verdict
	// Reason names the rule, the measured value and the limit, e.g.
	//   rule "errors": error ratio 0.200 over 10s (40/200 requests) > max 0.050
	Reason string
}

// Input is one event fed to Machine.Step. Build it with the helpers below.
type Input struct {
	Kind InputKind
	// At is when it happened. The machine never reads the clock.
	At time.Time
	// Assignment for InputAssign and InputInvalid. For InputAssign the
	// caller has validated it (names, version, artifact); for InputInvalid
	// only its generations are read. It must not be modified afterwards.
	Assignment *v1.Assignment
	// Reason for InputInvalid. Reason for InputExit, when how the process
	// ended is worth reporting (killed at its memory limit): the crash
	// loop's reason names the last such exit.
	Reason string
	// Seq and Err for InputDone: Seq echoes Action.Seq, Err is nil on success.
	Seq uint64
	Err error
	// Output for the InputDone of an ActHook: the end of what the hook
	// wrote (the machine keeps at most MaxHookOutput bytes of it).
	Output string
	// Link and LinkKnown for the InputDone of an ActSwitch (see SwitchDone):
	// the version `current` points at after the attempt ("" = no link), as
	// read back by the caller; LinkKnown is false when it could not be read.
	Link      string
	LinkKnown bool
	// Epoch for InputChecks, InputExit, InputAnalysis and InputReady:
	// echoes Action.Epoch.
	Epoch uint64
	// Checks for InputChecks: one result per prober.
	Checks []CheckResult
	// Verdict and Rules for InputAnalysis: the overall verdict and every
	// rule's result.
	Verdict Verdict
	Rules   []RuleResult
}

// Assign is an InputAssign.
func Assign(a *v1.Assignment, at time.Time) Input {
	return Input{Kind: InputAssign, At: at, Assignment: a}
}

// Invalid is an InputInvalid for an assignment that failed validation (or
// the trust checks); reason names the bad field. The service ends FAILED at
// its generation.
func Invalid(a *v1.Assignment, reason string, at time.Time) Input {
	return Input{Kind: InputInvalid, At: at, Assignment: a, Reason: reason}
}

// Done is an InputDone for the action with the given Seq.
func Done(seq uint64, err error, at time.Time) Input {
	return Input{Kind: InputDone, At: at, Seq: seq, Err: err}
}

// SwitchDone is the InputDone of an ActSwitch, with the version `current`
// points at after the attempt (read back by the caller, "" = no link). The
// machine needs it when the switch failed: it must not claim a release the
// link does not point at.
func SwitchDone(seq uint64, err error, link string, at time.Time) Input {
	return Input{Kind: InputDone, At: at, Seq: seq, Err: err, Link: link, LinkKnown: true}
}

// HookDone is the InputDone of an ActHook: err is nil when the hook exited
// 0, else why it failed (its exit status, or that it was killed at its
// timeout); output is the end of what it wrote.
func HookDone(seq uint64, err error, output string, at time.Time) Input {
	return Input{Kind: InputDone, At: at, Seq: seq, Err: err, Output: output}
}

// Checks is an InputChecks.
func Checks(epoch uint64, at time.Time, results ...CheckResult) Input {
	return Input{Kind: InputChecks, At: at, Epoch: epoch, Checks: results}
}

// Exited is an InputExit.
func Exited(epoch uint64, at time.Time) Input {
	return Input{Kind: InputExit, At: at, Epoch: epoch}
}

// ExitedBecause is an InputExit with how the process ended (e.g. killed at
// its memory limit), which the reasons of its failure name.
func ExitedBecause(epoch uint64, why string, at time.Time) Input {
	if len(why) > MaxExitReason {
		why = why[:MaxExitReason] + "..."
	}
	return Input{Kind: InputExit, At: at, Epoch: epoch, Reason: why}
}

// MaxExitReason bounds ExitedBecause's why (bytes; longer is cut).
const MaxExitReason = 256

// Analysis is an InputAnalysis: the verdict v of one analysis round on the
// process started with epoch, and every rule's result.
func Analysis(epoch uint64, at time.Time, v Verdict, rules ...RuleResult) Input {
	return Input{Kind: InputAnalysis, At: at, Epoch: epoch, Verdict: v, Rules: rules}
}

// Tick is an InputTick.
func Tick(at time.Time) Input { return Input{Kind: InputTick, At: at} }

// Ready is an InputReady: the process started with epoch sent READY=1.
func Ready(epoch uint64, at time.Time) Input { return Input{Kind: InputReady, At: at, Epoch: epoch} }

// ActionKind says what the caller must do.
type ActionKind int

const (
	// ActFetch: download Assignment's artifact (size cap, running sha256).
	ActFetch ActionKind = iota + 1
	// ActVerify: compare the fetched artifact with Assignment's digest and size.
	ActVerify
	// ActStage: unpack the verified artifact into the release directory.
	ActStage
	// ActSwitch: point the `current` symlink at Version ("" = remove it).
	ActSwitch
	// ActStart: start Version with Assignment's run spec, on the service's
	// sockets if it declares any; tag its exits (and its READY=1, see
	// InputReady) with Epoch. Beside: another process of the service still
	// serves on the same sockets (a handover): start this one next to it
	// and stop nothing; the machine stops the old one once this one is
	// ready.
	ActStart
	// ActStop: stop the process with Epoch (started or adopted with that
	// Epoch, or found running with it at Restore and not adopted); Version
	// and Assignment are its release (nil: unknown). Drain: it has been
	// serving: run its release's pre_stop, wait its shutdown_delay, then
	// stop it (SIGTERM, SIGKILL after stop_grace); else stop it at once.
	ActStop
	// ActBeginChecks: start probing with Assignment's checks; tag results with Epoch.
	ActBeginChecks
	// ActStopChecks: stop probing.
	ActStopChecks
	// ActPersist: write Snapshot durably before going on.
	ActPersist
	// ActReport: send Report to the coordinator (or keep it until connected).
	ActReport
	// ActFreezeBaseline: the running release is about to be stopped for
	// the install of Version (an ActStop follows), whose spec has analysis
	// rules: freeze what those rules measured of the running release into
	// the baseline the new release is compared with.
	ActFreezeBaseline
	// ActAdopt (only from Restore): the process of Version found running
	// (see Running) is this service's running process, as if an ActStart
	// with Epoch had started it: supervise it (exits tagged with Epoch,
	// restarts with Assignment's run spec) without restarting it.
	ActAdopt
	// ActHook: run the hook named Hook of Assignment (release Version) from
	// that release's directory, killing its process group at Timeout; feed
	// its end with HookDone. Previous (after_install, before_start,
	// after_start, validate: the release it replaces) or Next (before_stop:
	// the release that takes over) and Operation are for its environment;
	// Epoch is the process it is about (before_stop: the one to be stopped;
	// after_start, validate: the one started), 0 for none.
	ActHook
	// ActRemove: remove the service's files from the host (its releases,
	// `current`, its PID file; its log stays). Nothing of it runs (an
	// ActStop came first).
	ActRemove
	// ActSetLimits: write Assignment's resource limits (spec.resources:
	// memory_max, cpu_weight, tasks_max; an unset one is no limit, the
	// default weight) to the cgroup of the process with Epoch, which keeps
	// running, and use them for its restarts (an install or a revert in
	// place, spec.go). An error (a write refused, cgroups unusable for a
	// limit the spec sets) fails the install, which is reverted.
	ActSetLimits
)

func (k ActionKind) String() string {
	switch k {
	case ActFetch:
		return "fetch"
	case ActVerify:
		return "verify"
	case ActStage:
		return "stage"
	case ActSwitch:
		return "switch"
	case ActStart:
		return "start"
	case ActStop:
		return "stop"
	case ActBeginChecks:
		return "begin-checks"
	case ActStopChecks:
		return "stop-checks"
	case ActPersist:
		return "persist"
	case ActReport:
		return "report"
	case ActFreezeBaseline:
		return "freeze-baseline"
	case ActAdopt:
		return "adopt"
	case ActHook:
		return "hook"
	case ActRemove:
		return "remove"
	case ActSetLimits:
		return "set-limits"
	}
	return fmt.Sprintf("action(%d)", int(k))
}

// Long reports whether the action is a long step whose completion must be
// fed back with Done.
func (k ActionKind) Long() bool {
	switch k {
	case ActFetch, ActVerify, ActStage, ActSwitch, ActStart, ActStop, ActHook, ActRemove, ActSetLimits:
		return true
	}
	return false
}

// Action is one thing for the caller to do.
type Action struct {
	Kind ActionKind
	// Seq identifies a long step; feed it back with Done.
	Seq uint64
	// Epoch tags a started process and its checks (ActStart, ActAdopt,
	// ActBeginChecks) and names the process to stop (ActStop).
	Epoch uint64
	// Beside (ActStart): start next to the process that serves, a handover.
	Beside bool
	// Drain (ActStop): run pre_stop and wait shutdown_delay before the stop
	// signal.
	Drain bool
	// Limits (ActAdopt): also write Assignment's resource limits to the
	// adopted process's cgroup, as ActSetLimits does (idempotent): it may
	// have been found in the middle of an install or a revert in place that
	// changes them (Snapshot.InPlace). Failing, it is not adopted (stopped,
	// its exit reported).
	Limits bool
	// Version for ActSwitch, ActStart and ActAdopt (and the release of the
	// others).
	Version string
	// Assignment whose release/spec the action is about (fetch, verify,
	// stage, start, adopt, begin-checks). Shared, never modify it.
	Assignment *v1.Assignment
	// Snapshot for ActPersist.
	Snapshot *Snapshot
	// Report for ActReport.
	Report *v1.ServiceReport
	// Hook, Timeout, Previous, Next and Operation for ActHook.
	Hook      string
	Timeout   time.Duration
	Previous  string
	Next      string
	Operation string
}

func (a Action) String() string {
	s := a.Kind.String()
	if a.Hook != "" {
		s += " " + a.Hook
	}
	if a.Version != "" {
		s += " " + a.Version
	}
	if a.Seq != 0 {
		s += fmt.Sprintf(" seq=%d", a.Seq)
	}
	if a.Epoch != 0 {
		s += fmt.Sprintf(" epoch=%d", a.Epoch)
	}
	if a.Beside {
		s += " beside"
	}
	if a.Drain {
		s += " drain"
	}
	if a.Limits {
		s += " limits"
	}
	if a.Report != nil {
		s += fmt.Sprintf(" %s gen=%d cur=%q good=%q", a.Report.Phase, a.Report.Generation, a.Report.CurrentVersion, a.Report.LastGoodVersion)
	}
	return s
}

// Snapshot is the durable state of one service: what ActPersist writes and
// what Restore takes after a restart. Assignments are shared, never modify
// them.
type Snapshot struct {
	Service    string
	Phase      v1.Phase
	Generation int64
	Reason     string
	// Current is the release the `current` symlink points at (nil = none).
	Current *v1.Assignment
	// LastGood is the newest release that became healthy here (nil = none).
	LastGood *v1.Assignment
	// Target is the accepted assignment being installed or last installed.
	Target *v1.Assignment
	// WatchUntil is when the watch of the HEALTHY release ends (zero: not
	// watching), and Previous the release a revert during the watch returns
	// to (nil: none, the revert would stop the service). The caller keeps
	// Previous on disk while it is set.
	WatchUntil time.Time
	Previous   *v1.Assignment
	// CurrentOK: Current passed its checks and was not restarted since (so
	// an assignment of it at a newer generation needs no restart).
	CurrentOK bool
	// TargetEpoch is the epoch of the process started for Target by the
	// install under way (0: none started yet, or not recorded). In a config
	// install (the same release, another spec) it tells the process running
	// the new spec from those running the old one (spec.go).
	TargetEpoch uint64
	// InPlace: Target was installed in place (only how it is judged or its
	// resource limits changed; the process that served was kept, its limits
	// written) and no process has been started since
	// (ServiceReport.in_place; spec.go).
	InPlace bool
	// LimitsUnknown is the epoch of the process that a failed write of
	// resource limits (ActSetLimits) left with limits of neither spec, or
	// that a revert whose restart failed left serving with the reverted
	// spec's limits, or that runs its release with a spec the snapshot
	// names for no release (a process a failed revert kept serving, its
	// release assigned again with other limits: Snapshot derives it)
	// (0: none): no revert keeps it as the last good release's, no
	// Restore adopts it as the target's (spec.go).
	LimitsUnknown uint64
}

// Running is what the caller found running of a service when it restores
// the service's machine after an agent restart: a process a PID record
// names, proven to be one an earlier agent started (Restore's found; two
// when the agent stopped during a handover).
type Running struct {
	// Version is the release it runs, as recorded ("" = not recorded: a
	// process of an unknown release, which is stopped).
	Version string
	// Epoch is the epoch of the ActStart that started it (0 = not
	// recorded). Epochs go on from it.
	Epoch uint64
}

// Version returns the release version of an assignment, "" for nil.
func Version(a *v1.Assignment) string {
	return a.GetRelease().GetVersion()
}

// MinHealthyTime is the spec's min_healthy_time or its default.
func MinHealthyTime(a *v1.Assignment) time.Duration {
	if d := a.GetSpec().GetMinHealthyTime(); d != nil && d.AsDuration() >= 0 {
		return d.AsDuration()
	}
	return DefaultMinHealthyTime
}

// StartupProbeDelay is the first delay before a failing check runs again
// while it has not passed yet in its checking period (ProbeDelay).
const StartupProbeDelay = 100 * time.Millisecond

// ProbeDelay is how long after one run of a check with interval its next
// run starts. Once the check has passed in its checking period (passed),
// and for an interval at or below StartupProbeDelay, that is interval.
// Before, a process is usually still starting: a failing check is retried
// after StartupProbeDelay, doubled with each further failure (failures:
// how many runs failed so far, at least 1), never later than interval. So
// a process that does not answer yet when its first check runs (at once,
// when the checks begin) is found passing about when it starts answering
// rather than one interval later, and a slow starter costs only a few more
// probes (about log2(interval / StartupProbeDelay)).
func ProbeDelay(interval time.Duration, passed bool, failures int) time.Duration {
	if passed || interval <= StartupProbeDelay || failures < 1 {
		return interval
	}
	d := StartupProbeDelay
	for i := 1; i < failures && d < interval; i++ {
		d *= 2
	}
	return min(d, interval)
}

// HealthyDeadline is the spec's healthy_deadline or its default.
func HealthyDeadline(a *v1.Assignment) time.Duration {
	if d := a.GetSpec().GetHealthyDeadline(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return DefaultHealthyDeadline
}

// HasSockets reports whether the assignment's spec declares listening
// sockets (run.sockets): its processes are started on the service's
// sockets, and a process of it can take over from one of another such
// release without a gap (a handover).
func HasSockets(a *v1.Assignment) bool {
	return len(a.GetSpec().GetRun().GetSockets()) > 0
}

// NotifiesReady reports whether the spec says ready: notify: a started
// process is ready only once it sent READY=1.
func NotifiesReady(a *v1.Assignment) bool {
	return a.GetSpec().GetRun().GetReady() == ReadyNotify
}

// ReadyTimeout is the spec's run.ready_timeout or DefaultReadyTimeout.
func ReadyTimeout(a *v1.Assignment) time.Duration {
	if d := a.GetSpec().GetRun().GetReadyTimeout(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return DefaultReadyTimeout
}

// HasAnalysis reports whether the assignment's spec has analysis rules.
func HasAnalysis(a *v1.Assignment) bool {
	return len(a.GetSpec().GetAnalysis().GetRules()) > 0
}

// FailInconclusive reports whether the spec says analysis.inconclusive: fail.
func FailInconclusive(a *v1.Assignment) bool {
	return a.GetSpec().GetAnalysis().GetInconclusive() == "fail"
}

// Watch is the spec's analysis.watch or DefaultWatch: how long the release
// is watched after it became HEALTHY.
func Watch(a *v1.Assignment) time.Duration {
	if d := a.GetSpec().GetAnalysis().GetWatch(); d != nil && d.AsDuration() > 0 {
		return d.AsDuration()
	}
	return DefaultWatch
}

// WatchFailAfter is how long the health checks may fail continuously during
// the watch before the release is reverted: WatchFailIntervals times the
// longest check interval (DefaultCheckInterval when unset).
func WatchFailAfter(a *v1.Assignment) time.Duration {
	longest := time.Duration(0)
	for _, c := range a.GetSpec().GetChecks() {
		d := DefaultCheckInterval
		if iv := c.GetInterval(); iv != nil && iv.AsDuration() > 0 {
			d = iv.AsDuration()
		}
		longest = max(longest, d)
	}
	if longest == 0 {
		longest = DefaultCheckInterval
	}
	return WatchFailIntervals * longest
}
