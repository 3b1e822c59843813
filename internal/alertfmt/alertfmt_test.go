package alertfmt

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		name                          string
		format, tmpl, ct, minSeverity string
		want                          string // "" = valid
	}{
		{"defaults", "", "", "", "", ""},
		{"json info", FormatJSON, "", "", SeverityInfo, ""},
		{"slack", FormatSlack, "", "", SeverityError, ""},
		{"template", FormatTemplate, `{"msg": {{json .Reason}}, "hosts": {{len .Hosts}}}`, "", "", ""},
		{"template text", FormatTemplate, `{{.Service}} {{.Change}}{{range .Hosts}} {{.Host}}{{end}}`, "text/plain; charset=utf-8", "", ""},
		{"bad format", "teams", "", "", "", `alerts.format: "teams" is not json, slack or template`},
		{"bad severity", "", "", "", "warning", `alerts.min_severity: "warning" is not error or info`},
		{"template without format", "", "{{.Service}}", "", "", `alerts.template: set, but alerts.format is "json", not template`},
		{"content type without template", FormatSlack, "", "text/plain", "", `alerts.content_type: "text/plain" is set, but alerts.format is "slack", not template`},
		{"no template", FormatTemplate, "", "", "", "alerts.template: must be set with format template"},
		{"template too big", FormatTemplate, strings.Repeat("x", MaxTemplate+1), "", "", "alerts.template: 16385 bytes, more than 16384"},
		{"does not parse", FormatTemplate, "{{.Service", "", "", "alerts.template: template: alerts.template:1: unclosed action"},
		{"unknown field", FormatTemplate, "{{.Nope}}", "", "", "alerts.template: on a sample rollout_failed alert: template: alerts.template:1:2: executing \"alerts.template\" at <.Nope>: can't evaluate field Nope"},
		{"unknown function", FormatTemplate, "{{env \"HOME\"}}", "", "", `alerts.template: template: alerts.template:1: function "env" not defined`},
		{"fails on info only", FormatTemplate, "{{json (index .Hosts 0)}}", "", "", "alerts.template: on a sample rollout_succeeded alert"},
		{"too big output", FormatTemplate, `{{printf "%70000s" .Reason}}`, "", "", "the body is more than 65536 bytes"},
		// Templates that would run without end (or for 2^30 steps) with no
		// output, so the body cap never stops them: before, Check (at
		// apply) and every alert hung on a coordinator core.
		{"range over a number", FormatTemplate, "{{range 2000000000}}{{end}}", "", "", "alerts.template: {{range 2000000000}}: only .Hosts and .Waves may be ranged over"},
		{"range over a method", FormatTemplate, "{{range .At.UnixNano}}{{end}}", "", "", "{{range .At.UnixNano}}: only .Hosts and .Waves"},
		{"range over a variable", FormatTemplate, "{{$n := 2000000000}}{{range $n}}{{end}}", "", "", "{{range $n}}: only .Hosts and .Waves"},
		{"range over a function", FormatTemplate, `{{range slice .Hosts 0}}{{end}}`, "", "", "only .Hosts and .Waves"},
		{"recursion", FormatTemplate, `{{define "a"}}{{if .}}{{template "a" slice . 1}}{{template "a" slice . 1}}{{end}}{{end}}{{template "a" "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}`, "", "", `alerts.template: {{template "a"}}: not allowed`},
		{"block", FormatTemplate, `{{block "b" .}}{{.Service}}{{end}}`, "", "", `{{template "b"}}: not allowed`},
		{"nested range", FormatTemplate, "{{range .Waves}}{{if true}}{{range $.Waves}}{{end}}{{end}}{{end}}", "", "", "{{range $.Waves}}: a range inside a range is not allowed"},
		{"too many ranges", FormatTemplate, strings.Repeat("{{range .Hosts}}{{end}}", maxRanges+1), "", "", "more than 16 ranges"},
		{"ranges allowed", FormatTemplate, `{{range $i, $h := .Hosts}}{{$i}} {{$h.Host}}{{end}}{{with .Waves}}{{range $.Waves}}{{.State}}{{else}}none{{end}}{{end}}` + strings.Repeat("{{range .Hosts}}{{end}}", maxRanges-2), "text/plain", "", ""},
		// A JSON content type (the default) needs a JSON body: before, an
		// unquoted value was sent as is and refused by the webhook 8 times.
		{"not JSON", FormatTemplate, `{"text": "{{.Reason}}"}`, "", "", `alerts.template: on a sample rollout_failed alert: the body is not valid JSON, which its content type application/json says it is (write values with json: {{json .Reason}}): {"text": "wave 0`},
		{"not JSON +json", FormatTemplate, `{{.Service}}`, "application/vnd.example+json; charset=utf-8", "", "not valid JSON, which its content type application/vnd.example+json says it is"},
		{"text need not be JSON", FormatTemplate, `"{{.Reason}}`, "text/plain", "", ""},
		{"bad content type", FormatTemplate, "{{.Service}}", "json", "", `alerts.content_type: "json" is not a media type`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			errs := Check(tt.format, tt.tmpl, tt.ct, tt.minSeverity)
			if tt.want == "" {
				if len(errs) > 0 {
					t.Fatalf("Check = %v", errs)
				}
				return
			}
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tt.want) {
				t.Errorf("Check = %v, want one error with %q", errs, tt.want)
			}
		})
	}
}

func TestRender(t *testing.T) {
	a := Sample(SeverityError)
	body, ct, err := Render("", "", "", a)
	var back Alert
	if err != nil || ct != "application/json" || json.Unmarshal(body, &back) != nil || back.Reason != a.Reason || back.Severity != SeverityError {
		t.Fatalf("json: %v %q %s", err, ct, body)
	}
	if strings.Contains(string(body), `\u003e`) {
		t.Errorf("json escapes HTML: %s", body)
	}

	a.Reason = "p99 > 0.2s & <rising>"
	a.Hosts = nil
	for _, h := range []string{"h1", "h2", "h3", "h4", "h5", "h6", "h7"} {
		a.Hosts = append(a.Hosts, AlertHost{Host: h, Reason: strings.Repeat("r", 300)})
	}
	body, ct, err = Render(FormatSlack, "", "", a)
	var msg map[string]string
	if err != nil || ct != "application/json" || json.Unmarshal(body, &msg) != nil || len(msg) != 1 {
		t.Fatalf("slack: %v %q %s", err, ct, body)
	}
	text := msg["text"]
	for _, want := range []string{":red_circle: *web*: rollout 000007 (v1 → v2) FAILED: p99 &gt; 0.2s &amp; &lt;rising&gt;", "\n• `h5`: ", "\n• and 2 more", "fleetwave service unfreeze web"} {
		if !strings.Contains(text, want) {
			t.Errorf("slack text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "h6") || strings.Contains(text, strings.Repeat("r", 201)) {
		t.Errorf("slack text not bounded:\n%s", text)
	}
	a.Reason = strings.Repeat("x", 10000)
	if body, _, _ := Render(FormatSlack, "", "", a); len(body) > 4000 {
		t.Errorf("slack body %d bytes for a 10000-byte reason", len(body))
	}
	info := Sample(SeverityInfo)
	if body, _, _ := Render(FormatSlack, "", "", info); !strings.Contains(string(body), ":white_check_mark: *web*: rollout 000007 (v1 → v2) succeeded") {
		t.Errorf("slack info: %s", body)
	}

	body, ct, err = Render(FormatTemplate, `{"text": {{json .Reason}}, "sev": "{{.Severity}}"}`, "", Sample(SeverityError))
	if err != nil || ct != DefaultContentType || !json.Valid(body) || !strings.Contains(string(body), `"sev": "error"`) {
		t.Fatalf("template: %v %q %s", err, ct, body)
	}
	// Data Check could not foresee: a service name is safe, a reason with
	// a quote is not; the alert is not sent (alert_failed says why).
	quoted := Sample(SeverityInfo)
	quoted.Reason = `superseded by "v3"`
	if _, _, err := Render(FormatTemplate, `{"text": "{{.Service}} {{.Reason}}"}`, "", quoted); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Errorf("template writing invalid JSON: %v", err)
	}
	if _, ct, _ := Render(FormatTemplate, "{{.Service}}", "text/plain", info); ct != "text/plain" {
		t.Errorf("template content type %q", ct)
	}
	// The JSON body is bounded too: a reason larger than MaxBody.
	big := Sample(SeverityError)
	big.Reason = strings.Repeat("x", MaxBody+1)
	if _, _, err := Render(FormatJSON, "", "", big); err == nil || !strings.Contains(err.Error(), "more than 65536") {
		t.Errorf("json over MaxBody: %v", err)
	}
	if _, _, err := Render(FormatTemplate, "{{.Reason}}", "", big); err == nil || !strings.Contains(err.Error(), "more than 65536") {
		t.Errorf("template over MaxBody: %v", err)
	}
}

func TestWanted(t *testing.T) {
	for _, tt := range []struct {
		min, sev string
		want     bool
	}{
		{"", SeverityError, true}, {"", SeverityInfo, false}, {SeverityError, SeverityInfo, false}, {SeverityInfo, SeverityInfo, true}, {SeverityInfo, SeverityError, true},
	} {
		if got := Wanted(tt.min, tt.sev); got != tt.want {
			t.Errorf("Wanted(%q, %q) = %v", tt.min, tt.sev, got)
		}
	}
}
