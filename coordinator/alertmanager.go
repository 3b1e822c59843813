package coordinator

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The Alertmanager receiver (rollout.abort_on_alerts): Prometheus
// Alertmanager's webhook_config posts its notifications (payload version
// 4) here; a firing alert that a rollout's policy names aborts the
// rollout, like CodeDeploy's alarm-based stop. The decision is the pure
// engine's (rollout.AlertAbort), taken again by the leader on the rollout
// it holds; the abort is an event (rollout_aborted, actor "alertmanager")
// and an audit entry. It is served on the dashboard's listener (TLS unless
// insecure), outside the dashboard's login, and bounded: a bearer token
// (compared in constant time), a body of at most AlertmanagerMaxBody, at
// most AlertmanagerMaxAlerts alerts read, AlertmanagerRate posts a second.
// Posts with the token and posts without it draw on separate buckets, so
// whoever reaches the port without the token cannot crowd out
// Alertmanager's notifications.

const (
	// AlertmanagerPath is where the receiver listens.
	AlertmanagerPath = "/api/v1/alertmanager"
	// AlertmanagerMaxBody bounds a notification's body (Alertmanager's
	// max_alerts bounds it at the sender's end).
	AlertmanagerMaxBody = 1 << 20
	// AlertmanagerMaxAlerts bounds the alerts of one notification that are
	// read; the rest are ignored (and the answer says how many).
	AlertmanagerMaxAlerts = 1000
	// AlertmanagerRate and AlertmanagerBurst bound the posts the receiver
	// takes with the token (all callers together), and, in a bucket of
	// their own, the posts refused for no or a wrong token; more are
	// answered 429.
	AlertmanagerRate  = 5
	AlertmanagerBurst = 20
	// AlertmanagerMaxLabel bounds each label's name and value as the
	// receiver passes them on (firingAlerts): a longer one is cut and
	// marked "…", so it never equals an alert name (at most 128 bytes,
	// spec rollout.abort_on_alerts) or a service name.
	AlertmanagerMaxLabel = 128
	// Token file bounds: a token shorter than alertmanagerMinToken is
	// refused at start.
	alertmanagerMinToken = 16
	alertmanagerMaxToken = 4096
	// alertmanagerActor is the actor of its events and audit entries.
	alertmanagerActor = "alertmanager"
)

// amNotification is Alertmanager's webhook payload (version 4), the part
// read here.
type amNotification struct {
	Version string    `json:"version"`
	Status  string    `json:"status"`
	Alerts  []amAlert `json:"alerts"`
}

type amAlert struct {
	Status string            `json:"status"`
	Labels map[string]string `json:"labels"`
}

// AlertmanagerAnswer is the receiver's JSON answer.
type AlertmanagerAnswer struct {
	// Firing is how many alerts of the notification were firing (of those
	// read).
	Firing int `json:"firing"`
	// Ignored is how many alerts were past AlertmanagerMaxAlerts.
	Ignored int                 `json:"ignored,omitempty"`
	Aborted []AlertmanagerAbort `json:"aborted"`
	Error   string              `json:"error,omitempty"`
}

// AlertmanagerAbort is one rollout the notification aborted.
type AlertmanagerAbort struct {
	Service   string `json:"service"`
	RolloutID string `json:"rollout_id"`
	Reason    string `json:"reason"`
}

type alertReceiver struct {
	c     *Coordinator
	token []byte
	// rate bounds the posts with the token, refused those without it.
	rate    *bucket
	refused *bucket
	now     func() time.Time
}

// newAlertReceiver reads the token file; a missing, short or long token
// stops the coordinator from starting.
func (c *Coordinator) newAlertReceiver(path string) (*alertReceiver, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("alertmanager-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case len(tok) < alertmanagerMinToken:
		return nil, fmt.Errorf("alertmanager-token-file: %s: the token is %d bytes, want at least %d (e.g. openssl rand -hex 32)", path, len(tok), alertmanagerMinToken)
	case len(tok) > alertmanagerMaxToken:
		return nil, fmt.Errorf("alertmanager-token-file: %s: the token is %d bytes, more than %d", path, len(tok), alertmanagerMaxToken)
	case strings.ContainsAny(tok, " \t\r\n"):
		return nil, fmt.Errorf("alertmanager-token-file: %s: the token holds white space", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		c.log.Warn().Str("path", path).Msgf("alertmanager token file is readable by others (mode %v)", fi.Mode().Perm())
	}
	c.log.Info().Str("path", AlertmanagerPath).Msg("alertmanager receiver on the dashboard's listener")
	return &alertReceiver{c: c, token: []byte(tok), rate: &bucket{rate: AlertmanagerRate, burst: AlertmanagerBurst},
		refused: &bucket{rate: AlertmanagerRate, burst: AlertmanagerBurst}, now: time.Now}, nil
}

func (a *alertReceiver) answer(w http.ResponseWriter, code int, ans AlertmanagerAnswer) {
	if ans.Aborted == nil {
		ans.Aborted = []AlertmanagerAbort{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(ans)
}

// authorized reports whether r carries the bearer token.
func (a *alertReceiver) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), a.token) == 1
}

func (a *alertReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := a.now()
	ok := a.authorized(r)
	b := a.rate
	if !ok {
		b = a.refused
	}
	if !b.allow(now) {
		w.Header().Set("Retry-After", "1")
		a.answer(w, http.StatusTooManyRequests, AlertmanagerAnswer{Error: fmt.Sprintf("more than %d notifications a second", AlertmanagerRate)})
		return
	}
	if !ok {
		e := &v1.AuditEntry{At: timestamppb.New(now), Actor: alertmanagerActor, Method: "POST " + AlertmanagerPath, Peer: clip(r.RemoteAddr, 64),
			Result: "Unauthenticated", Message: "no or wrong bearer token", Coordinator: a.c.cfg.Name}
		if a.c.failures.admit(e, now) {
			a.putAudit(r.Context(), e)
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="fleetwave alertmanager receiver"`)
		a.answer(w, http.StatusUnauthorized, AlertmanagerAnswer{Error: "no or wrong bearer token (webhook_config http_config.authorization)"})
		return
	}
	var n amNotification
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, AlertmanagerMaxBody))
	if err := dec.Decode(&n); err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			code = http.StatusRequestEntityTooLarge
			err = fmt.Errorf("body over %d bytes", AlertmanagerMaxBody)
		}
		a.answer(w, code, AlertmanagerAnswer{Error: "not an Alertmanager notification: " + err.Error()})
		return
	}
	if n.Version != "4" {
		a.answer(w, http.StatusBadRequest, AlertmanagerAnswer{Error: fmt.Sprintf("version: %q is not 4, the webhook payload version this receiver reads", clip(n.Version, 32))})
		return
	}
	var ans AlertmanagerAnswer
	alerts := n.Alerts
	if len(alerts) > AlertmanagerMaxAlerts {
		ans.Ignored = len(alerts) - AlertmanagerMaxAlerts
		alerts = alerts[:AlertmanagerMaxAlerts]
	}
	firing := firingAlerts(alerts)
	ans.Firing = len(firing)
	if len(firing) == 0 {
		a.answer(w, http.StatusOK, ans)
		return
	}
	aborted, err := a.abort(r.Context(), firing)
	ans.Aborted = aborted
	// Every abort is audited, those before a failure too (a retry of the
	// notification finds them ended and does not audit them again).
	for _, ab := range aborted {
		a.putAudit(r.Context(), &v1.AuditEntry{At: timestamppb.New(now), Actor: alertmanagerActor, Method: "POST " + AlertmanagerPath,
			Target: ab.Service, Peer: clip(r.RemoteAddr, 64), Result: "OK", Message: clip("rollout "+ab.RolloutID+" "+ab.Reason, 512), Coordinator: a.c.cfg.Name})
	}
	if err != nil {
		ans.Error = err.Error()
		// Alertmanager retries a notification answered 5xx.
		a.answer(w, http.StatusServiceUnavailable, ans)
		return
	}
	a.answer(w, http.StatusOK, ans)
}

// firingAlerts are the alerts firing with an alertname, with their labels
// made safe to print: labels come from whoever holds the token, and the
// engine puts them in the rollout's reason, which events, the audit log
// and the CLI print. Each label's name and value is valid UTF-8 with each
// control or other unprintable character (a newline, an ANSI escape) and
// each run of invalid UTF-8 replaced by "?", then cut to
// AlertmanagerMaxLabel bytes. Names that come out the same keep the value
// of the first in byte order.
func firingAlerts(alerts []amAlert) []rollout.FiringAlert {
	var out []rollout.FiringAlert
	for _, al := range alerts {
		if al.Status != "firing" || al.Labels[rollout.AlertLabelName] == "" {
			continue
		}
		keys := make([]string, 0, len(al.Labels))
		for k := range al.Labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		labels := make(map[string]string, len(keys))
		for _, k := range keys {
			sk := printableLabel(k)
			if _, dup := labels[sk]; !dup {
				labels[sk] = printableLabel(al.Labels[k])
			}
		}
		out = append(out, rollout.FiringAlert{Labels: labels})
	}
	return out
}

// printableLabel is s with unprintable characters and invalid UTF-8
// replaced by "?", cut to AlertmanagerMaxLabel bytes (firingAlerts).
func printableLabel(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, strings.ToValidUTF8(s, "?"))
	return clip(s, AlertmanagerMaxLabel)
}

func (a *alertReceiver) putAudit(ctx context.Context, e *v1.AuditEntry) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	a.c.putAudit(actx, e)
}

// abort asks the leader to abort every rollout in flight the alerts name.
// This coordinator must lead: another answers 503 (Alertmanager retries;
// list every coordinator in the receiver's webhook_configs).
func (a *alertReceiver) abort(ctx context.Context, firing []rollout.FiringAlert) ([]AlertmanagerAbort, error) {
	var out []AlertmanagerAbort
	svcs := a.c.mirror.Services()
	slices.SortFunc(svcs, func(x, y store.Versioned[*v1.Service]) int {
		return strings.Compare(x.Val.GetSpec().GetName(), y.Val.GetSpec().GetName())
	})
	for _, vs := range svcs {
		name := vs.Val.GetSpec().GetName()
		vr, ok := a.c.mirror.Rollout(name, vs.Val.GetStatus().GetLastRolloutId())
		if !ok {
			continue
		}
		if _, abort := rollout.AlertAbort(vr.Val, firing); !abort {
			continue
		}
		r, _, err := a.c.leader.call(ctx, leaderReq{service: name, op: opAlerts, actor: alertmanagerActor, alerts: firing})
		if err != nil {
			return out, fmt.Errorf("abort rollout %s of %s: %w", vr.Val.GetId(), name, err)
		}
		if r == nil {
			continue // ended meanwhile
		}
		a.c.log.Warn().Str("service", name).Str("rollout", r.GetId()).Str("reason", r.GetReason()).Msg("rollout aborted by an alert")
		out = append(out, AlertmanagerAbort{Service: name, RolloutID: r.GetId(), Reason: r.GetReason()})
	}
	return out, nil
}
