package dashboard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// parseTemplates parses each page with the layout, and the fragments the
// event stream sends (the board, an event line).
func parseTemplates() (map[string]*template.Template, *template.Template, error) {
	funcs := template.FuncMap{
		"eventTime": func(ev *v1.Event) string { return ev.GetAt().AsTime().UTC().Format("15:04:05") },
		"join":      strings.Join,
		"auditTime": func(e *v1.AuditEntry) string { return e.GetAt().AsTime().UTC().Format("2006-01-02 15:04:05") },
	}
	pages := map[string]*template.Template{}
	names, err := fs.Glob(assetsFS, "assets/templates/page_*.html")
	if err != nil {
		return nil, nil, err
	}
	for _, n := range names {
		t, err := template.New("").Funcs(funcs).ParseFS(assetsFS, "assets/templates/layout.html", "assets/templates/fragments.html", n)
		if err != nil {
			return nil, nil, err
		}
		name := strings.TrimSuffix(strings.TrimPrefix(n, "assets/templates/page_"), ".html")
		pages[name] = t
	}
	frag, err := template.New("").Funcs(funcs).ParseFS(assetsFS, "assets/templates/fragments.html")
	if err != nil {
		return nil, nil, err
	}
	return pages, frag, nil
}

// sseMessage is one server-sent event.
type sseMessage struct {
	event, id string
	data      []byte
}

// writeSSE writes m; data lines each get their own "data:" field. CRLF,
// a lone CR and LF all end a line in an event stream: each is a line
// break here, so data (reasons, messages) cannot add fields or end the
// event.
func writeSSE(w io.Writer, m sseMessage) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "event: %s\n", m.event)
	if m.id != "" {
		fmt.Fprintf(&b, "id: %s\n", m.id)
	}
	data := bytes.ReplaceAll(bytes.ReplaceAll(m.data, []byte("\r\n"), []byte("\n")), []byte("\r"), []byte("\n"))
	for _, line := range bytes.Split(data, []byte("\n")) {
		b.WriteString("data: ")
		b.Write(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

// parseEventID reads an event's SSE id: "revision.count", the count of the
// revision's events up to this one, or (from before the count) "revision",
// all of its events.
func parseEventID(id string) (rev int64, seen int, err error) {
	r, n, counted := strings.Cut(id, ".")
	if rev, err = strconv.ParseInt(r, 10, 64); err != nil || rev < 0 {
		return 0, 0, fmt.Errorf("revision %q: want a number, 0 or more", r)
	}
	if counted {
		if seen, err = strconv.Atoi(n); err != nil || seen < 1 || rev < 1 {
			return 0, 0, fmt.Errorf("count %q: want a number, 1 or more, after a revision of 1 or more", n)
		}
	}
	return rev, seen, nil
}

// retryAfterError is how long the live page waits before watching again
// after a watch failed for another reason than the rollout ending.
const retryAfterError = 2 * time.Second

// live is the rollout page's event stream: the board, rendered again on
// every change of the rollout the coordinator's WatchRollout pushes, and
// each event of the shown rollout from WatchEvents. Nothing polls: when a
// rollout ends its watch ends, and the next event of the service (a new
// rollout's creation) starts the watch of the newest one.
func (s *Server) live(w http.ResponseWriter, r *http.Request, sess *session) {
	svc := r.PathValue("service")
	if err := spec.CheckName("service", svc); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	release, err := s.sessions.openStream(sess.identity)
	if err != nil {
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return
	}
	defer release()
	// The events resume after the last one sent: since is its revision and
	// seen how many of that revision's events were sent (0: all of them). A
	// write's events share one revision (a step's thousands, in batches),
	// and a stream can break after some of them: the watch resumes from
	// the revision before and skips those seen.
	var since int64
	var seen int
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		if since, seen, err = parseEventID(id); err != nil {
			http.Error(w, fmt.Sprintf("Last-Event-ID: %q is not an event id (revision.count): %v", id, err), http.StatusBadRequest)
			return
		}
	}
	// The page ends with its session: at its expiry, and (checked before
	// every retry) when it was logged out or removed.
	ctx, cancel := context.WithTimeout(r.Context(), sess.expires.Sub(s.now()))
	defer cancel()
	cctx := sess.ctxFor(ctx)
	ended := func() bool { _, ok := s.sessions.get(sess.id, s.now()); return !ok }
	errEnded := status.Error(codes.Unauthenticated, "the session ended: log in again")
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	out := make(chan sseMessage, 16)
	send := func(m sseMessage) bool {
		select {
		case out <- m:
			return true
		case <-ctx.Done():
			return false
		}
	}
	// shown is the rollout the board shows: events of it and of later
	// rollouts are sent.
	var shownMu sync.Mutex
	var shownID string
	var shownAt time.Time
	// refresh wakes the board's watcher when an event arrives.
	refresh := make(chan struct{}, 1)
	// boardShown is closed once the first board went out: events are
	// filtered by the rollout it shows.
	boardShown := make(chan struct{})
	var shownOnce sync.Once
	fatal := func(err error) {
		st, _ := status.FromError(err)
		if st.Code() == codes.Unauthenticated {
			s.sessions.remove(sess.id)
		}
		// The writer ends the stream once this is written.
		send(sseMessage{event: "fatal", data: []byte(template.HTMLEscapeString(st.Message()))})
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		for ctx.Err() == nil {
			err := s.watchBoard(cctx, sess, svc, func(b *boardView, r *v1.Rollout) bool {
				shownMu.Lock()
				if r != nil {
					shownID, shownAt = r.GetId(), r.GetCreatedAt().AsTime()
				}
				shownMu.Unlock()
				var buf bytes.Buffer
				if err := s.fragment.ExecuteTemplate(&buf, "board", b); err != nil {
					s.log.Error().Err(err).Msg("dashboard: render board")
					return false
				}
				ok := send(sseMessage{event: "board", data: buf.Bytes()})
				shownOnce.Do(func() { close(boardShown) })
				return ok
			})
			if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied || c == codes.ResourceExhausted {
				fatal(err)
				return
			}
			if ctx.Err() == nil && ended() {
				fatal(errEnded)
				return
			}
			wait := (<-chan time.Time)(nil)
			if err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Str("service", svc).Msg("dashboard: rollout watch ended")
				wait = time.After(retryAfterError)
			}
			select {
			case <-ctx.Done():
				return
			case <-refresh:
			case <-wait:
			}
		}
	})
	wg.Go(func() {
		select {
		case <-boardShown:
		case <-ctx.Done():
			return
		}
		for ctx.Err() == nil {
			req, skip := &v1.WatchEventsRequest{Service: svc, Follow: true, SinceRevision: since}, 0
			if seen > 0 {
				req.SinceRevision, skip = since-1, seen
			}
			stream, err := sess.api().WatchEvents(cctx, req)
			for err == nil {
				var ev *v1.WatchEventsResponse
				if ev, err = stream.Recv(); err != nil {
					break
				}
				if ev.GetRevision() == since && skip > 0 {
					skip--
					continue
				}
				skip = 0
				if ev.GetRevision() == since {
					seen++
				} else {
					since, seen = ev.GetRevision(), 1
				}
				select {
				case refresh <- struct{}{}:
				default:
				}
				shownMu.Lock()
				show := (ev.GetEvent().GetRolloutId() == shownID || !ev.GetEvent().GetAt().AsTime().Before(shownAt))
				shownMu.Unlock()
				if !show {
					continue
				}
				var buf bytes.Buffer
				if rerr := s.fragment.ExecuteTemplate(&buf, "event", ev.GetEvent()); rerr != nil {
					s.log.Error().Err(rerr).Msg("dashboard: render event")
					continue
				}
				if !send(sseMessage{event: "event", id: strconv.FormatInt(since, 10) + "." + strconv.Itoa(seen), data: buf.Bytes()}) {
					return
				}
			}
			if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied || c == codes.ResourceExhausted {
				fatal(err)
				return
			}
			if ctx.Err() != nil {
				return
			}
			if ended() {
				fatal(errEnded)
				return
			}
			s.log.Warn().Err(err).Str("service", svc).Msg("dashboard: event watch ended")
			select {
			case <-ctx.Done():
				return
			case <-time.After(retryAfterError):
			}
		}
	})
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-out:
			_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if err := writeSSE(w, m); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			if m.event == "fatal" {
				return
			}
		}
	}
}

// minBoardGap and boardGapFactor space the boards of one live page: after
// a board, the next waits at least minBoardGap, and boardGapFactor times
// what the last one took to build (a board of a 10,000-host rollout reads
// every host and renders megabytes: ~0.6 s of the coordinator's CPU, and
// a rollout changes every 500 ms: a review). States arriving meanwhile
// are coalesced into the newest; the last state is always shown.
const (
	minBoardGap    = 500 * time.Millisecond
	boardGapFactor = 4
)

// watchBoard sends the board for the states of the service's newest
// rollout (the newest one each time a board may go: minBoardGap) until
// that rollout ends (nil error) or the watch fails.
func (s *Server) watchBoard(ctx context.Context, sess *session, svc string, send func(*boardView, *v1.Rollout) bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := sess.api().WatchRollout(ctx, &v1.WatchRolloutRequest{Service: svc})
	if err != nil {
		return err
	}
	// The stream is read apart: newest holds the newest rollout not shown
	// yet and, once the stream ended, its error; wake says either changed.
	var mu sync.Mutex
	var newest *v1.Rollout
	var ended error
	wake := make(chan struct{}, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			mu.Lock()
			if err != nil {
				ended = err
			} else {
				newest = resp.GetRollout()
			}
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	sent := false
	var gap <-chan time.Time
	for {
		if gap != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-gap:
				gap = nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
		mu.Lock()
		r, err := newest, ended
		newest = nil
		mu.Unlock()
		if r != nil {
			start := time.Now()
			b, berr := s.board(ctx, sess, svc, r)
			if berr != nil {
				return berr
			}
			if !send(b, r) {
				return ctx.Err()
			}
			sent = true
			gap = time.After(max(minBoardGap, boardGapFactor*time.Since(start)))
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		case status.Code(err) == codes.NotFound && !sent:
			// No rollout yet: show the service; the first event wakes us.
			b, berr := s.board(ctx, sess, svc, nil)
			if berr != nil {
				return berr
			}
			send(b, nil)
			return nil
		default:
			return err
		}
	}
}
