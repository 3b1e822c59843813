package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Alert is the JSON body POSTed to a service's alerts.webhook_url when a
// rollout fails.
type Alert struct {
	Kind        string      `json:"kind"` // rollout.EventRolloutFailed
	Service     string      `json:"service"`
	RolloutID   string      `json:"rollout_id"`
	FromVersion string      `json:"from_version"`
	ToVersion   string      `json:"to_version"`
	Reason      string      `json:"reason"`
	Hosts       []AlertHost `json:"failed_hosts"`
	At          time.Time   `json:"at"`
	Frozen      bool        `json:"frozen"`
	Action      string      `json:"action"`
	Waves       []AlertWave `json:"waves"`
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

// alerter sends alerts in the background, retrying with backoff; every
// alert is also a log line at error level and an event in etcd.
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

func buildAlert(r *v1.Rollout) Alert {
	a := Alert{Kind: rollout.EventRolloutFailed, Service: r.GetService(), RolloutID: r.GetId(), FromVersion: r.GetFromVersion(),
		ToVersion: r.GetToVersion(), Reason: r.GetReason(), At: r.GetFinishedAt().AsTime(), Frozen: true,
		Action: fmt.Sprintf("hosts that moved are going back to %s; after a look run: fleetwave service unfreeze %s", orNone(r.GetFromVersion()), r.GetService())}
	for _, w := range r.GetWaves() {
		a.Waves = append(a.Waves, AlertWave{Index: w.GetIndex(), State: w.GetState().String(), Hosts: len(w.GetHosts()), Failures: w.GetFailures()})
		for _, h := range w.GetHosts() {
			if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED {
				a.Hosts = append(a.Hosts, AlertHost{Host: h.GetHostId(), Reason: h.GetReason()})
			}
		}
	}
	return a
}

// rolloutFailed logs the alert and, when the service names a webhook,
// delivers it in the background.
func (a *alerter) rolloutFailed(svc *v1.Service, r *v1.Rollout) {
	alert := buildAlert(r)
	url := svc.GetSpec().GetAlerts().GetWebhookUrl()
	a.log.Error().Str("alert", alert.Kind).Str("service", alert.Service).Str("rollout", alert.RolloutID).
		Str("version", alert.ToVersion).Str("reason", alert.Reason).Str("webhook", url).Msg("ALERT: rollout failed; service frozen; a person must look")
	if url == "" {
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // reasons say "> max", not "\u003e max"
	if err := enc.Encode(alert); err != nil {
		a.log.Error().Err(err).Msg("encode alert")
		return
	}
	body := buf.Bytes()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := a.deliver(url, body)
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
func (a *alerter) deliver(url string, body []byte) error {
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
		req.Header.Set("Content-Type", "application/json")
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
