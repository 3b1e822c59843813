package coordinator

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
)

// An alert follows a webhook's redirects only on the webhook's own host
// (scheme, host and port); a redirect elsewhere is not followed and the
// delivery fails, naming it.
func TestWebhookRedirectsStayOnItsHost(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
	}))
	defer other.Close()
	var got atomic.Value
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, other.URL+"/internal", http.StatusTemporaryRedirect)
		case "/moved":
			http.Redirect(w, r, "/here", http.StatusPermanentRedirect)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusTemporaryRedirect)
		case "/here":
			b, _ := io.ReadAll(r.Body)
			got.Store(string(b))
		}
	}))
	defer hook.Close()
	a := newAlerter(context.Background(), zerolog.Nop(), nil)
	a.attempts = 1

	err := a.deliver(hook.URL+"/away", "application/json", []byte(`{"kind":"rollout_failed"}`))
	if err == nil || !strings.Contains(err.Error(), "another host than the webhook's") {
		t.Errorf("redirect to another host: %v, want it refused", err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the other host got %d requests", n)
	}
	if err := a.deliver(hook.URL+"/moved", "application/json", []byte(`{"kind":"rollout_failed"}`)); err != nil {
		t.Errorf("redirect on the same host: %v", err)
	}
	if got.Load() != `{"kind":"rollout_failed"}` {
		t.Errorf("delivered %v after a same-host redirect", got.Load())
	}
	if err := a.deliver(hook.URL+"/loop", "application/json", nil); err == nil || !strings.Contains(err.Error(), "more than 3 redirects") {
		t.Errorf("a redirect loop: %v", err)
	}
}
