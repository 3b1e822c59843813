package testfleet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Load is a load generator: clients sending GET / to every agent's
// service in a loop, each request on a new connection (so every request
// goes through the listening socket's queue, where a handover either
// keeps or drops it). It counts requests per step of a test or the demo.
type Load struct {
	mu    sync.Mutex
	steps []*LoadStep
	cur   *LoadStep
	last  map[string]time.Time // host → its last answered request
	stop  context.CancelFunc
	wg    sync.WaitGroup
}

// LoadStep is what the load saw during one step.
type LoadStep struct {
	Name     string
	Requests int
	// Failed counts requests without an HTTP answer: refused, reset,
	// timed out. These are what a handover must avoid.
	Failed int
	// ServerErrors counts 5xx answers: the service's own failures (a
	// bad release), not downtime.
	ServerErrors int
	// LongestGap is the longest time a host went without an answered
	// request during the step (at least the request interval).
	LongestGap time.Duration
	GapHost    string
	// FirstFailures holds the first few failures, for a test's message.
	FirstFailures []string
	start, end    time.Time
}

// Duration is how long the step lasted.
func (s *LoadStep) Duration() time.Duration { return s.end.Sub(s.start) }

func (s *LoadStep) String() string {
	gap := ""
	if s.LongestGap > 0 {
		gap = fmt.Sprintf(", longest gap %s (%s)", s.LongestGap.Round(time.Millisecond), s.GapHost)
	}
	return fmt.Sprintf("%s: %d requests, %d failed, %d answered 5xx%s", s.Name, s.Requests, s.Failed, s.ServerErrors, gap)
}

var loadTransport = &http.Transport{DisableKeepAlives: true}

// StartLoad starts clients per host, each sending a request every
// interval, until Stop. The first step is named first.
func (f *Fleet) StartLoad(ctx context.Context, first string, clients int, interval time.Duration) *Load {
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{stop: cancel, last: map[string]time.Time{}}
	l.Step(first)
	client := &http.Client{Transport: loadTransport, Timeout: 5 * time.Second}
	for _, id := range f.AgentIDs() {
		url := fmt.Sprintf("http://127.0.0.1:%d/", f.Agents[id].Port)
		for range max(clients, 1) {
			l.wg.Go(func() {
				t := time.NewTicker(interval)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
					req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
					if err != nil {
						return
					}
					resp, err := client.Do(req)
					if ctx.Err() != nil {
						return // stopped: a request cut short is not a failure
					}
					code := 0
					if err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						code = resp.StatusCode
					}
					l.record(id, code, err)
				}
			})
		}
	}
	return l
}

func (l *Load) record(host string, code int, err error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.cur
	s.Requests++
	switch {
	case err != nil:
		s.Failed++
		if len(s.FirstFailures) < 5 {
			s.FirstFailures = append(s.FirstFailures, fmt.Sprintf("%s %s: %v", now.Format("15:04:05.000"), host, err))
		}
		return
	case code >= 500:
		s.ServerErrors++
	}
	from := later(l.last[host], s.start)
	if g := now.Sub(from); g > s.LongestGap {
		s.LongestGap, s.GapHost = g, host
	}
	l.last[host] = now
}

// Step ends the current step and begins one named name.
func (l *Load) Step(name string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != nil {
		l.cur.end = now
		for host, last := range l.last { // a host still silent at the end
			from := later(last, l.cur.start)
			if g := now.Sub(from); g > l.cur.LongestGap {
				l.cur.LongestGap, l.cur.GapHost = g, host
			}
		}
	}
	l.cur = &LoadStep{Name: name, start: now}
	l.steps = append(l.steps, l.cur)
}

// Current returns a copy of the step under way.
func (l *Load) Current() LoadStep {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := *l.cur
	c.end = time.Now()
	return c
}

// Stop stops the clients and returns every step.
func (l *Load) Stop() []LoadStep {
	l.stop()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cur.end = time.Now()
	out := make([]LoadStep, len(l.steps))
	for i, s := range l.steps {
		out[i] = *s
	}
	return out
}

// Failures lists the steps with failed requests, one line each.
func Failures(steps []LoadStep) string {
	var b []string
	for _, s := range steps {
		if s.Failed > 0 {
			b = append(b, s.String()+": "+strings.Join(s.FirstFailures, "; "))
		}
	}
	sort.Strings(b)
	return strings.Join(b, "\n")
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
