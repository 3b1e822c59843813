// Package fetch is the I/O around package analysis: it scrapes a service's
// metrics endpoint (Scrape) and runs PromQL instant queries against a
// Prometheus server (QueryPromQL), producing the inputs analysis evaluates.
// Evaluation itself stays in package analysis, which does no I/O.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/agent/analysis"
)

// Scrape GETs a Prometheus text exposition from rawURL and parses it
// (analysis.Parse) as a Sample taken at at. The caller bounds it with ctx
// (set a deadline of about the analysis interval). The body is capped at
// analysis.MaxScrapeBytes (analysis.ErrTooLarge) and a status other than 200
// is an error; every error names the URL, with any password redacted. A nil
// client means http.DefaultClient.
func Scrape(ctx context.Context, client *http.Client, rawURL string, at time.Time) (analysis.Sample, error) {
	name := redactURL(rawURL)
	body, err := get(ctx, client, rawURL, "text/plain;version=0.0.4;q=1,*/*;q=0.1")
	if err != nil {
		return analysis.Sample{}, fmt.Errorf("scrape %s: %w", name, err)
	}
	defer closeBody(body)
	s, err := analysis.Parse(body, at)
	if err != nil {
		return analysis.Sample{}, fmt.Errorf("scrape %s: %w", name, err)
	}
	return s, nil
}

// statusError is a non-200 answer with the start of its body.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string {
	if e.body == "" {
		return fmt.Sprintf("status %d %s", e.code, http.StatusText(e.code))
	}
	return fmt.Sprintf("status %d %s: %q", e.code, http.StatusText(e.code), truncate(e.body, 200))
}

// get sends a GET and returns the body of a 200 answer; the caller closes
// it with closeBody. Other statuses give a *statusError with the start of
// the body.
func get(ctx context.Context, client *http.Client, rawURL, accept string) (io.ReadCloser, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, unwrapURLError(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := client.Do(req)
	if err != nil {
		return nil, unwrapURLError(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer closeBody(resp.Body)
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return nil, &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	return resp.Body, nil
}

// closeBody drains a little of what is left (so the connection can be
// reused) and closes.
func closeBody(b io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(b, 64<<10))
	_ = b.Close()
}

// unwrapURLError drops the *url.Error wrapper, which repeats the URL
// unredacted.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// truncate shortens s to about n bytes for an error message.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// redactURL hides the password of a URL for error messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("%q", raw)
	}
	return u.Redacted()
}
