// Package alertfmt is what a rollout alert says and how it is written:
// the alert's data model (Alert, the JSON webhook's body and the data a
// template sees) and its formats (Fleetwave's JSON, a Slack-compatible
// message, a text/template). Specs are checked with Check when applied,
// so a template that does not parse or does not run on an alert is refused
// then, not when a rollout fails.
package alertfmt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
	"text/template"
	tparse "text/template/parse"
	"time"
)

// Values of alerts.format, alerts.min_severity and Alert.Severity.
const (
	FormatJSON     = "json"
	FormatSlack    = "slack"
	FormatTemplate = "template"

	// SeverityError: a failed rollout (the default min_severity: only
	// those alert).
	SeverityError = "error"
	// SeverityInfo: a rollout that succeeded or was superseded.
	SeverityInfo = "info"

	// DefaultContentType is a template's Content-Type by default.
	DefaultContentType = "application/json"
)

// Limits.
const (
	// MaxTemplate bounds alerts.template's source.
	MaxTemplate = 16 << 10
	// MaxBody bounds a rendered body (any format): rendering stops past
	// it, and the alert is not sent (an alert_failed event says why).
	MaxBody = 64 << 10
	// maxSlackReason and maxSlackHosts bound a Slack message's parts.
	maxSlackReason = 2000
	maxSlackHosts  = 5
)

// Alert is a rollout alert: the JSON body of format json, and the data of
// a template ({{.Service}}, {{range .Hosts}}{{.Host}}{{end}}, ...).
type Alert struct {
	// Kind is the event: rollout_failed, rollout_succeeded or
	// rollout_superseded.
	Kind string `json:"kind"`
	// Severity is SeverityError for a failure, else SeverityInfo.
	Severity    string `json:"severity"`
	Service     string `json:"service"`
	RolloutID   string `json:"rollout_id"`
	FromVersion string `json:"from_version"`
	ToVersion   string `json:"to_version"`
	// Change says what the rollout changes: "v1 → v2", "v2 with spec 3 →
	// spec 4", "remove (was v2)".
	Change string `json:"change"`
	// State is the rollout's end: FAILED, SUCCEEDED or SUPERSEDED.
	State  string      `json:"state"`
	Reason string      `json:"reason"`
	Hosts  []AlertHost `json:"failed_hosts"`
	At     time.Time   `json:"at"`
	// Frozen: the service is frozen (after a failure).
	Frozen bool `json:"frozen"`
	// Action is what a person should do ("" when nothing).
	Action string      `json:"action"`
	Waves  []AlertWave `json:"waves"`
}

// AlertHost is one host that failed, with why.
type AlertHost struct {
	Host   string `json:"host"`
	Reason string `json:"reason"`
}

// AlertWave summarises one wave.
type AlertWave struct {
	Index    uint32 `json:"index"`
	State    string `json:"state"`
	Hosts    int    `json:"hosts"`
	Failures uint32 `json:"failures"`
}

// Wanted reports whether an alert of severity goes out under
// min_severity ("" is SeverityError).
func Wanted(minSeverity, severity string) bool {
	return severity == SeverityError || minSeverity == SeverityInfo
}

// funcs are the functions a template may call.
var funcs = template.FuncMap{
	// json writes any value as JSON: {{json .Reason}} is a quoted,
	// escaped string, safe inside a JSON body.
	"json": func(v any) (string, error) {
		b, err := marshal(v)
		return strings.TrimSuffix(string(b), "\n"), err
	},
}

// Check validates the alerts settings of a spec: each problem names its
// field (alerts.format, alerts.template, alerts.content_type,
// alerts.min_severity) and value. A template is parsed and run on a
// sample alert of each severity.
func Check(format, tmpl, contentType, minSeverity string) []error {
	var errs []error
	switch minSeverity {
	case "", SeverityError, SeverityInfo:
	default:
		errs = append(errs, fmt.Errorf("alerts.min_severity: %q is not %s or %s", minSeverity, SeverityError, SeverityInfo))
	}
	switch format {
	case "", FormatJSON, FormatSlack:
		if tmpl != "" {
			errs = append(errs, fmt.Errorf("alerts.template: set, but alerts.format is %q, not %s", orDefault(format, FormatJSON), FormatTemplate))
		}
		if contentType != "" {
			errs = append(errs, fmt.Errorf("alerts.content_type: %q is set, but alerts.format is %q, not %s", contentType, orDefault(format, FormatJSON), FormatTemplate))
		}
	case FormatTemplate:
		if mt, _, err := mime.ParseMediaType(contentType); contentType != "" && (err != nil || !strings.Contains(mt, "/")) {
			errs = append(errs, fmt.Errorf("alerts.content_type: %q is not a media type (type/subtype, e.g. text/plain; charset=utf-8)", contentType))
		}
		if err := checkTemplate(tmpl, orDefault(contentType, DefaultContentType)); err != nil {
			errs = append(errs, fmt.Errorf("alerts.template: %w", err))
		}
	default:
		errs = append(errs, fmt.Errorf("alerts.format: %q is not %s, %s or %s", format, FormatJSON, FormatSlack, FormatTemplate))
	}
	return errs
}

func checkTemplate(tmpl, contentType string) error {
	switch {
	case tmpl == "":
		return errors.New("must be set with format template")
	case len(tmpl) > MaxTemplate:
		return fmt.Errorf("%d bytes, more than %d", len(tmpl), MaxTemplate)
	}
	t, err := parse(tmpl)
	if err != nil {
		return err
	}
	for _, a := range []Alert{Sample(SeverityError), Sample(SeverityInfo)} {
		body, err := execute(t, a)
		if err == nil {
			err = validJSON(contentType, body)
		}
		if err != nil {
			return fmt.Errorf("on a sample %s alert: %w", a.Kind, err)
		}
	}
	return nil
}

func parse(tmpl string) (*template.Template, error) {
	t, err := template.New("alerts.template").Funcs(funcs).Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return nil, err
	}
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		if err := bounded(tt.Root); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Ranged are the only fields a template may range over: the alert's own
// lists (or, inside a with on a wave, its host count), so its running time
// is bounded by the alert's data. Text/template can otherwise loop without
// end and without output, which the body cap does not stop: {{range
// 2000000000}}, {{range .At.UnixNano}}, or a {{template}} that calls
// itself twice on a shorter slice each time.
var ranged = []string{"Hosts", "Waves"}

// maxRanges bounds the range actions of a template.
const maxRanges = 16

// bounded refuses what could run a template for long: {{template}} and
// {{block}} (recursion), a range over anything but .Hosts or .Waves (or
// $.Hosts, $.Waves), a range inside a range, more than maxRanges ranges
// in one (named) template.
func bounded(n tparse.Node) error {
	var count int
	return walk(n, 0, &count)
}

// walk checks n, at depth ranges deep; count is the ranges seen so far.
func walk(n tparse.Node, depth int, count *int) error {
	switch n := n.(type) {
	case *tparse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := walk(c, depth, count); err != nil {
				return err
			}
		}
	case *tparse.TemplateNode:
		return fmt.Errorf("{{template %q}}: not allowed (a template could call itself without end); write it out", n.Name)
	case *tparse.IfNode:
		return walkBranch(&n.BranchNode, depth, count)
	case *tparse.WithNode:
		return walkBranch(&n.BranchNode, depth, count)
	case *tparse.RangeNode:
		*count++
		switch {
		case depth > 0:
			return fmt.Errorf("{{range %s}}: a range inside a range is not allowed", n.Pipe)
		case *count > maxRanges:
			return fmt.Errorf("{{range %s}}: more than %d ranges", n.Pipe, maxRanges)
		case !rangesOverData(n.Pipe):
			return fmt.Errorf("{{range %s}}: only .Hosts and .Waves may be ranged over (a range over a number or a function could run without end)", n.Pipe)
		}
		return walkBranch(&n.BranchNode, depth+1, count)
	}
	return nil
}

func walkBranch(b *tparse.BranchNode, depth int, count *int) error {
	if err := walk(b.List, depth, count); err != nil {
		return err
	}
	return walk(b.ElseList, depth, count)
}

// rangesOverData: the pipe is .Hosts, .Waves, $.Hosts or $.Waves.
func rangesOverData(p *tparse.PipeNode) bool {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return false
	}
	var ident []string
	switch a := p.Cmds[0].Args[0].(type) {
	case *tparse.FieldNode:
		ident = a.Ident
	case *tparse.VariableNode:
		if len(a.Ident) == 0 || a.Ident[0] != "$" {
			return false
		}
		ident = a.Ident[1:]
	default:
		return false
	}
	return len(ident) == 1 && slices.Contains(ranged, ident[0])
}

// Sample is an alert of the given severity, for checking templates and
// for the README.
func Sample(severity string) Alert {
	a := Alert{Kind: "rollout_succeeded", Severity: SeverityInfo, Service: "web", RolloutID: "000007", FromVersion: "v1", ToVersion: "v2", Change: "v1 → v2",
		State: "SUCCEEDED", At: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
		Waves: []AlertWave{{Index: 0, State: "WAVE_STATE_DONE", Hosts: 1}, {Index: 1, State: "WAVE_STATE_DONE", Hosts: 4}}}
	if severity == SeverityError {
		a.Kind, a.Severity, a.State, a.Frozen = "rollout_failed", SeverityError, "FAILED", true
		a.Reason = `wave 0 (canary): 1 host(s) failed, budget 0: host-1: check http: status 500 "upstream error"`
		a.Hosts = []AlertHost{{Host: "host-1", Reason: `check http: status 500 "upstream error"`}}
		a.Action = "hosts that moved are going back to v1; after a look run: fleetwave service unfreeze web"
		a.Waves = []AlertWave{{Index: 0, State: "WAVE_STATE_FAILED", Hosts: 1, Failures: 1}, {Index: 1, State: "WAVE_STATE_PENDING", Hosts: 4}}
	}
	return a
}

// Render writes the body of alert a in format (and template) and its
// Content-Type. It fails past MaxBody, or when the template fails (Check
// ran it at apply, so only on data it could not foresee).
func Render(format, tmpl, contentType string, a Alert) ([]byte, string, error) {
	var body []byte
	var err error
	ct := "application/json"
	switch format {
	case "", FormatJSON:
		body, err = marshal(a)
	case FormatSlack:
		body, err = marshal(map[string]string{"text": slackText(a)})
	case FormatTemplate:
		var t *template.Template
		ct = orDefault(contentType, DefaultContentType)
		if t, err = parse(tmpl); err == nil {
			body, err = execute(t, a)
		}
		if err == nil {
			err = validJSON(ct, body)
		}
	default:
		err = fmt.Errorf("alerts.format %q is not %s, %s or %s", format, FormatJSON, FormatSlack, FormatTemplate)
	}
	if err != nil {
		return nil, "", err
	}
	if len(body) > MaxBody {
		return nil, "", fmt.Errorf("the %s body is %d bytes, more than %d", orDefault(format, FormatJSON), len(body), MaxBody)
	}
	return body, ct, nil
}

// validJSON refuses a body that is not JSON when its Content-Type says it
// is (application/json or */*+json): a template that writes a value
// unquoted ("{{.Reason}}" where the reason holds a quote) would otherwise
// send a body the webhook refuses, 8 times.
func validJSON(contentType string, body []byte) error {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) || json.Valid(body) {
		return nil
	}
	return fmt.Errorf("the body is not valid JSON, which its content type %s says it is (write values with json: {{json .Reason}}): %s", mt, clip(string(body), 80))
}

// marshal is JSON without HTML escaping: reasons say "> max", not
// "\u003e max".
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return buf.Bytes(), err
}

// errTooBig stops a template writing past MaxBody.
var errTooBig = fmt.Errorf("the body is more than %d bytes", MaxBody)

type capped struct{ bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if c.Len()+len(p) > MaxBody {
		return 0, errTooBig
	}
	return c.Buffer.Write(p)
}

func execute(t *template.Template, a Alert) ([]byte, error) {
	var c capped
	if err := t.Execute(&c, a); err != nil {
		return nil, err
	}
	return c.Bytes(), nil
}

// slackText is the message of format slack: Slack's mrkdwn, with &, < and
// > escaped as Slack asks, and bounded.
func slackText(a Alert) string {
	var b strings.Builder
	icon, what := ":white_check_mark:", "succeeded"
	switch a.State {
	case "FAILED":
		icon, what = ":red_circle:", "FAILED"
	case "SUPERSEDED":
		icon, what = ":arrow_right:", "superseded"
	}
	fmt.Fprintf(&b, "%s *%s*: rollout %s (%s) %s", icon, slackEscape(a.Service), slackEscape(a.RolloutID), slackEscape(clip(a.Change, 200)), what)
	if a.Reason != "" {
		b.WriteString(": " + slackEscape(clip(a.Reason, maxSlackReason)))
	}
	if len(a.Hosts) > 0 {
		b.WriteString("\n*Failed hosts:*")
		for i, h := range a.Hosts {
			if i == maxSlackHosts {
				fmt.Fprintf(&b, "\n• and %d more", len(a.Hosts)-maxSlackHosts)
				break
			}
			fmt.Fprintf(&b, "\n• `%s`: %s", slackEscape(h.Host), slackEscape(clip(h.Reason, 200)))
		}
	}
	if a.Action != "" {
		b.WriteString("\n" + slackEscape(a.Action))
	}
	return b.String()
}

func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
