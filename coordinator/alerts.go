package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/alertfmt"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// alerter sends alerts in the background, retrying with backoff; a
// failure is also a log line at error level, and every delivery's outcome
// an event in etcd.
type alerter struct {
	ctx      context.Context
	log      zerolog.Logger
	store    *store.Store
	client   *http.Client
	attempts int
	backoff  time.Duration
	wg       sync.WaitGroup
}

func newAlerter(ctx context.Context, log zerolog.Logger, st *store.Store) *alerter {
	return &alerter{ctx: ctx, log: log, store: st, attempts: 8, backoff: 500 * time.Millisecond,
		client: &http.Client{Timeout: 5 * time.Second, CheckRedirect: sameOriginRedirects}}
}

// maxWebhookRedirects bounds the redirects an alert follows.
const maxWebhookRedirects = 3

// sameOriginRedirects lets an alert follow a redirect only to the same
// scheme, host and port as the webhook URL: a webhook must not be able to
// send the coordinator (and the alert) to another host, such as an
// internal address it could not name itself.
func sameOriginRedirects(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		return fmt.Errorf("redirected to %s://%s, another host than the webhook's %s://%s: not followed", req.URL.Scheme, req.URL.Host, first.Scheme, first.Host)
	}
	if len(via) > maxWebhookRedirects {
		return fmt.Errorf("more than %d redirects: not followed", maxWebhookRedirects)
	}
	return nil
}

// buildAlert is the alert about ended rollout r: severity error when it
// failed (the service is frozen), info when it succeeded or was
// superseded.
func buildAlert(r *v1.Rollout) alertfmt.Alert {
	a := alertfmt.Alert{Kind: rollout.EventRolloutSucceeded, Severity: alertfmt.SeverityInfo, Service: r.GetService(), RolloutID: r.GetId(),
		FromVersion: r.GetFromVersion(), ToVersion: r.GetToVersion(), Change: rollout.Describe(r),
		State: strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_"), Reason: r.GetReason(), At: r.GetFinishedAt().AsTime()}
	switch r.GetState() {
	case v1.RolloutState_ROLLOUT_STATE_FAILED:
		a.Kind, a.Severity, a.Frozen = rollout.EventRolloutFailed, alertfmt.SeverityError, true
		a.Action = fmt.Sprintf("hosts that moved are going back to %s; after a look run: fleetwave service unfreeze %s", orNone(r.GetFromVersion()), r.GetService())
	case v1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
		a.Kind = rollout.EventRolloutSuperseded
	}
	for _, w := range r.GetWaves() {
		a.Waves = append(a.Waves, alertfmt.AlertWave{Index: w.GetIndex(), State: w.GetState().String(), Hosts: len(w.GetHosts()), Failures: w.GetFailures()})
		for _, h := range w.GetHosts() {
			if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED {
				a.Hosts = append(a.Hosts, alertfmt.AlertHost{Host: h.GetHostId(), Reason: h.GetReason()})
			}
		}
	}
	return a
}

// rolloutEnded alerts about ended rollout r of svc: a failure is logged
// as an alert, and delivered when the service names a webhook; another
// end only when its alerts.min_severity is info. Delivery runs in the
// background, in the service's alerts.format.
func (a *alerter) rolloutEnded(svc *v1.Service, r *v1.Rollout) {
	alert := buildAlert(r)
	al := svc.GetSpec().GetAlerts()
	url := al.GetWebhookUrl()
	if alert.Severity == alertfmt.SeverityError {
		a.log.Error().Str("alert", alert.Kind).Str("service", alert.Service).Str("rollout", alert.RolloutID).
			Str("version", alert.ToVersion).Str("reason", alert.Reason).Str("webhook", url).Msg("ALERT: rollout failed; service frozen; a person must look")
	}
	if url == "" || !alertfmt.Wanted(al.GetMinSeverity(), alert.Severity) {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		body, ct, err := alertfmt.Render(al.GetFormat(), al.GetTemplate(), al.GetContentType(), alert)
		if err == nil {
			err = a.deliver(url, ct, body)
		}
		kind, msg := rollout.EventAlertSent, "alert delivered to "+url
		if err != nil {
			kind, msg = rollout.EventAlertFailed, fmt.Sprintf("alert to %s not delivered: %v", url, err)
			a.log.Error().Err(err).Str("service", alert.Service).Str("webhook", url).Msg("alert not delivered")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ev := &v1.Event{At: timestamppb.Now(), Service: alert.Service, RolloutId: alert.RolloutID, Kind: kind, Wave: -1, Message: msg}
		if err := a.store.PutEvents(ctx, ev); err != nil {
			a.log.Warn().Err(err).Msg("record alert event")
		}
	}()
}

// deliver POSTs body until a 2xx answer, with exponential backoff.
func (a *alerter) deliver(url, contentType string, body []byte) error {
	wait := a.backoff
	var last error
	for i := range a.attempts {
		if i > 0 {
			select {
			case <-a.ctx.Done():
				return fmt.Errorf("%w (after %d attempts; last: %v)", a.ctx.Err(), i, last)
			case <-time.After(wait):
			}
			wait = min(wait*2, 30*time.Second)
		}
		req, err := http.NewRequestWithContext(a.ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("webhook %s: %w", url, err)
		}
		req.Header.Set("Content-Type", contentType)
		resp, err := a.client.Do(req)
		if err != nil {
			last = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil
		}
		last = fmt.Errorf("status %d", resp.StatusCode)
	}
	return fmt.Errorf("%d attempts: %w", a.attempts, last)
}
