package spec

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Defaults the spec format documents; Validate uses them to compare a set
// value with an unset one.
const (
	DefaultMinHealthyTime  = 10 * time.Second
	DefaultHealthyDeadline = 5 * time.Minute
	// MaxCanary bounds rollout.canary.
	MaxCanary = 1000
)

var (
	envKeyRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	checkNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
)

// FieldError is one validation problem: the field path as written in the
// YAML spec (e.g. "rollout.waves[1]") and what is wrong with its value.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

type problems []error

// addErr records an error from the Check* helpers, whose messages start
// with "field: ".
func (p *problems) addErr(err error) {
	if err == nil {
		return
	}
	field, msg, ok := strings.Cut(err.Error(), ": ")
	if !ok {
		*p = append(*p, err)
		return
	}
	*p = append(*p, &FieldError{Field: field, Msg: msg})
}

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks a parsed spec and returns every problem found, joined with
// errors.Join (nil if none). Each problem is a *FieldError naming the field
// path and the bad value.
func Validate(s *v1.ServiceSpec) error {
	if s == nil {
		return &FieldError{Field: "spec", Msg: "must be set"}
	}
	var p problems
	p.addErr(CheckName("name", s.GetName()))
	p.addErr(checkNotReserved("name", s.GetName()))
	for _, k := range sortedKeys(s.GetSelector()) {
		p.addErr(CheckLabels("selector", map[string]string{k: s.GetSelector()[k]}))
	}
	validateRun(&p, s.GetRun())
	validateHandover(&p, s)
	validateHooks(&p, s)
	validateUser(&p, s.GetRun())
	validateResources(&p, s.GetResources())
	validateChecks(&p, s.GetChecks())
	if n, r := len(s.GetChecks()), len(s.GetAnalysis().GetRules()); n+r > MaxChecksAndRules {
		p.add("checks", "%d checks and %d analysis rules, more than %d together (a host reports a result for each, and coordinators refuse more)", n, r, MaxChecksAndRules)
	}
	mht := validDuration(&p, "min_healthy_time", s.GetMinHealthyTime())
	hd := validDuration(&p, "healthy_deadline", s.GetHealthyDeadline())
	if mht >= 0 && hd >= 0 && (s.GetMinHealthyTime() != nil || s.GetHealthyDeadline() != nil) {
		effM, effD := durationOr(s.GetMinHealthyTime(), mht, DefaultMinHealthyTime), durationOr(s.GetHealthyDeadline(), hd, DefaultHealthyDeadline)
		if effM.d >= effD.d {
			p.add("min_healthy_time", "%s%s is not less than healthy_deadline %s%s", effM.d, effM.note, effD.d, effD.note)
		}
	}
	validateRollout(&p, s.GetRollout())
	for i, a := range s.GetRollout().GetAfter() {
		if a == s.GetName() {
			p.add(fmt.Sprintf("rollout.after[%d]", i), "%q is the service itself (a cycle)", a)
		}
	}
	validateAnalysisAndAlerts(&p, s)
	return errors.Join(p...)
}

func validateRun(p *problems, r *v1.RunSpec) {
	if len(r.GetCommand()) == 0 {
		p.add("run.command", "must not be empty")
	}
	for i, arg := range r.GetCommand() {
		field := fmt.Sprintf("run.command[%d]", i)
		if i == 0 && arg == "" {
			p.add(field, "program must not be empty")
			continue
		}
		checkTemplate(p, field, arg)
	}
	for _, k := range sortedKeys(r.GetEnv()) {
		field := fmt.Sprintf("run.env[%s]", k)
		if !envKeyRE.MatchString(k) {
			p.add(field, "invalid environment variable name %q (want [A-Za-z_][A-Za-z0-9_]*)", k)
		}
		checkTemplate(p, field, r.GetEnv()[k])
	}
	validDuration(p, "run.stop_grace", r.GetStopGrace())
}

// MaxChecksAndRules bounds a spec's checks and analysis rules together:
// each host's report carries one result for each, and coordinators refuse
// a report (and an agent's Hello) with more.
const MaxChecksAndRules = 64

func validateChecks(p *problems, checks []*v1.Check) {
	names := map[string]int{}
	for i, c := range checks {
		field := fmt.Sprintf("checks[%d]", i)
		kind := ""
		switch k := c.GetKind().(type) {
		case *v1.Check_Http:
			kind = "http"
			validateHTTPCheck(p, field+".http", k.Http)
		case *v1.Check_Tcp:
			kind = "tcp"
			validateTCPCheck(p, field+".tcp", k.Tcp)
		case *v1.Check_Exec:
			kind = "exec"
			cmd := k.Exec.GetCommand()
			if len(cmd) == 0 || cmd[0] == "" {
				p.add(field+".exec.command", "must not be empty")
			}
			for j, arg := range cmd {
				checkTemplate(p, fmt.Sprintf("%s.exec.command[%d]", field, j), arg)
			}
		default:
			p.add(field, "exactly one of http, tcp, exec must be set")
		}
		name := c.GetName()
		if name != "" && !checkNameRE.MatchString(name) {
			p.add(field+".name", "invalid check name %q (want [A-Za-z0-9][A-Za-z0-9._-]{0,62})", name)
		}
		if name == "" {
			name = kind
		}
		if prev, dup := names[name]; dup && name != "" {
			p.add(field+".name", "%q is also the name of checks[%d] (names default to the kind; set name to tell them apart)", name, prev)
		} else {
			names[name] = i
		}
		validDuration(p, field+".interval", c.GetInterval())
		validDuration(p, field+".timeout", c.GetTimeout())
		p.addErr(checkFloor(field+".interval", c.GetInterval(), MinCheckInterval))
		p.addErr(checkFloor(field+".timeout", c.GetTimeout(), MinCheckTimeout))
	}
}

// Floors of a check's interval and timeout. The agent runs every check
// again each interval (an exec check forks a process each time) for as
// long as the release is checked and watched, up to MaxChecksAndRules
// checks per service, so an interval of 1ns would be a fork loop.
// Nomad refuses check intervals and timeouts under 1s and Consul raises
// an interval under 1s to 1s; Fleetwave's floor is lower because tests
// and fast canaries use sub-second checks, and 100ms keeps 64 exec checks
// at most 640 forks a second per service. A timeout under 10ms fails a
// healthy service (a fork and exec, or a TCP handshake on a loaded host,
// takes milliseconds) without any use; it does not loop, as a check's
// next run waits for the last one.
const (
	MinCheckInterval = 100 * time.Millisecond
	MinCheckTimeout  = 10 * time.Millisecond
)

// checkFloor reports d of field when it is set, valid, positive and below
// floor (validDuration reports an invalid or negative one; 0 means the
// default, as it always has for checks).
func checkFloor(field string, d *durationpb.Duration, floor time.Duration) error {
	if d == nil || d.CheckValid() != nil || d.AsDuration() <= 0 || d.AsDuration() >= floor {
		return nil
	}
	return fmt.Errorf("%s: %s is less than %s", field, d.AsDuration(), floor)
}

func validateHTTPCheck(p *problems, field string, h *v1.HttpCheck) {
	if st := h.GetExpectStatus(); st != 0 && (st < 100 || st > 599) {
		p.add(field+".expect_status", "%d is not an HTTP status (100..599)", st)
	}
	raw := h.GetUrl()
	if raw == "" {
		p.add(field+".url", "must not be empty")
		return
	}
	s, ok := checkTemplate(p, field+".url", raw)
	if !ok {
		return
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		p.add(field+".url", "invalid URL %q: %v", raw, unwrapURLError(err))
	case u.Scheme != "http" && u.Scheme != "https":
		p.add(field+".url", "%q is not an http:// or https:// URL", raw)
	case u.Host == "":
		p.add(field+".url", "%q has no host", raw)
	}
}

func validateTCPCheck(p *problems, field string, t *v1.TcpCheck) {
	raw := t.GetAddress()
	if raw == "" {
		p.add(field+".address", "must not be empty")
		return
	}
	s, ok := checkTemplate(p, field+".address", raw)
	if !ok {
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		p.add(field+".address", "%q is not host:port", raw)
		return
	}
	if host == "" {
		p.add(field+".address", "%q has no host", raw)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		p.add(field+".address", "%q has an invalid port %q", raw, port)
	}
}

func validateRollout(p *problems, r *v1.RolloutPolicy) {
	if r == nil {
		return
	}
	if r.GetCanary() > MaxCanary {
		p.add("rollout.canary", "%d is more than %d", r.GetCanary(), MaxCanary)
	}
	if r.GetNoCanary() && r.GetCanary() > 0 {
		p.add("rollout.canary", "%d is set but no_canary is true", r.GetCanary())
	}
	waves := r.GetWaves()
	for i, w := range waves {
		field := fmt.Sprintf("rollout.waves[%d]", i)
		switch {
		case w < 1 || w > 100:
			p.add(field, "%d is not a percentage in 1..100", w)
		case i > 0 && w <= waves[i-1]:
			p.add(field, "%d is not greater than the previous wave %d", w, waves[i-1])
		}
	}
	if n := len(waves); n > 0 && waves[n-1] != 100 {
		p.add("rollout.waves", "the last wave is %d, must be 100", waves[n-1])
	}
	switch r.GetMode() {
	case "", ModeAuto, ModeManual:
	default:
		p.add("rollout.mode", "%q is not %s or %s", r.GetMode(), ModeAuto, ModeManual)
	}
	switch r.GetOnNewRelease() {
	case "", OnNewReleaseSupersede, OnNewReleaseQueue:
	default:
		p.add("rollout.on_new_release", "%q is not %s or %s", r.GetOnNewRelease(), OnNewReleaseSupersede, OnNewReleaseQueue)
	}
	validDuration(p, "rollout.bake", r.GetBake())
	validDuration(p, "rollout.progress_deadline", r.GetProgressDeadline())
	if n := len(r.GetWindows()); n > MaxWindows {
		p.add("rollout.windows", "%d windows, more than %d", n, MaxWindows)
	}
	for i, w := range r.GetWindows() {
		if _, err := ParseWindow(fmt.Sprintf("rollout.windows[%d]", i), w); err != nil {
			p.addErr(err)
		}
	}
	if n := len(r.GetAfter()); n > MaxAfter {
		p.add("rollout.after", "%d services, more than %d", n, MaxAfter)
	}
	seen := map[string]bool{}
	for i, a := range r.GetAfter() {
		field := fmt.Sprintf("rollout.after[%d]", i)
		if err := CheckName(field, a); err != nil {
			p.addErr(err)
		} else if seen[a] {
			p.add(field, "%q is named twice", a)
		}
		seen[a] = true
	}
	if _, _, err := ParseZoneLimit(r.GetMaxUnavailablePerZone()); err != nil {
		p.addErr(err)
	}
	switch r.GetZoneOrder() {
	case "", ZoneOrderOneAtATime:
	default:
		p.add("rollout.zone_order", "%q is not %s (or empty: waves spread over the zones)", r.GetZoneOrder(), ZoneOrderOneAtATime)
	}
	if n := len(r.GetAbortOnAlerts()); n > MaxAbortOnAlerts {
		p.add("rollout.abort_on_alerts", "%d alert names, more than %d", n, MaxAbortOnAlerts)
	}
	seen = map[string]bool{}
	for i, a := range r.GetAbortOnAlerts() {
		field := fmt.Sprintf("rollout.abort_on_alerts[%d]", i)
		switch {
		case !alertNameRE.MatchString(a):
			p.add(field, "%q is not an alert name ([A-Za-z_:][A-Za-z0-9_:]{0,127}, like Prometheus metric names)", a)
		case seen[a]:
			p.add(field, "%q is listed twice", a)
		}
		seen[a] = true
	}
}

// alertNameRE is what rollout.abort_on_alerts accepts: a Prometheus
// alerting rule's name (a metric name), at most 128 characters.
var alertNameRE = regexp.MustCompile(`^[A-Za-z_:][A-Za-z0-9_:]{0,127}$`)

// validDuration returns d, or -1 after recording a problem (out of range or
// negative). An unset duration is 0.
func validDuration(p *problems, field string, d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil {
		p.add(field, "invalid duration %ds %dns", d.GetSeconds(), d.GetNanos())
		return -1
	}
	if v := d.AsDuration(); v < 0 {
		p.add(field, "%s is negative", v)
		return -1
	}
	return d.AsDuration()
}

type effDuration struct {
	d    time.Duration
	note string
}

func durationOr(set *durationpb.Duration, v, def time.Duration) effDuration {
	if set == nil || v == 0 {
		return effDuration{def, " (default)"}
	}
	return effDuration{v, ""}
}

// Dummy values for a trial expansion: they let Validate check the shape of a
// URL or address that contains placeholders.
const (
	dummyHostID     = "host-1"
	dummyLabelValue = "1"
)

// checkTemplate checks the placeholders in s and returns s expanded for a
// dummy host whose every label is "1". ok is false after recording a problem.
func checkTemplate(p *problems, field, s string) (string, bool) {
	labels := map[string]string{}
	rest := s
	for {
		i := strings.Index(rest, "${")
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			break // Expand reports it
		}
		if key, ok := strings.CutPrefix(rest[i+2:i+j], "host.label."); ok {
			if !labelKRE.MatchString(key) {
				p.add(field, "placeholder ${host.label.%s}: invalid label key %q", key, key)
				return "", false
			}
			labels[key] = dummyLabelValue
		}
		rest = rest[i+j+1:]
	}
	out, err := Expand(s, dummyHostID, labels)
	if err != nil {
		p.add(field, "%v", err)
		return "", false
	}
	if strings.ContainsRune(out, 0) {
		p.add(field, "%q contains a NUL byte", s)
		return "", false
	}
	return out, true
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// ValidateRelease checks a release before it is created: service name,
// version, artifact (sha256 always, size > 0, optional http(s) URL), and the
// free-text fields. It returns every problem joined, as Validate does.
func ValidateRelease(r *v1.Release) error {
	if r == nil {
		return &FieldError{Field: "release", Msg: "must be set"}
	}
	var p problems
	p.addErr(CheckName("service", r.GetService()))
	p.addErr(CheckVersion("version", r.GetVersion()))
	if a := r.GetArtifact(); a == nil {
		p.add("artifact", "must be set")
	} else {
		p.addErr(CheckSHA256("artifact.sha256", a.GetSha256()))
		if a.GetSize() <= 0 {
			p.add("artifact.size", "%d is not greater than 0", a.GetSize())
		}
		if raw := a.GetUrl(); raw != "" {
			u, err := url.Parse(raw)
			switch {
			case err != nil:
				p.add("artifact.url", "invalid URL %q: %v", raw, unwrapURLError(err))
			case u.Scheme != "http" && u.Scheme != "https":
				p.add("artifact.url", "%q is not an http:// or https:// URL", raw)
			case u.Host == "":
				p.add("artifact.url", "%q has no host", raw)
			}
		}
	}
	checkText(&p, "commit", r.GetCommit(), 128)
	checkText(&p, "created_by", r.GetCreatedBy(), 256)
	checkTime(&p, "commit_time", r.GetCommitTime())
	checkTime(&p, "created_at", r.GetCreatedAt())
	return errors.Join(p...)
}

func checkText(p *problems, field, s string, maxLen int) {
	if len(s) > maxLen {
		p.add(field, "%d bytes, more than %d", len(s), maxLen)
		return
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == unicode.ReplacementChar }) >= 0 {
		p.add(field, "%q contains non-printable characters", s)
	}
}

func checkTime(p *problems, field string, t *timestamppb.Timestamp) {
	if t == nil {
		return
	}
	if err := t.CheckValid(); err != nil {
		p.add(field, "invalid timestamp %ds %dns", t.GetSeconds(), t.GetNanos())
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
