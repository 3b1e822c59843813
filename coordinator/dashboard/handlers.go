package dashboard

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// cookieName is the session cookie: over HTTPS a __Host- cookie, which
// only this origin can set (a sibling origin, another port of the host or
// a subdomain, could otherwise set its own session's id for this one).
func cookieName(r *http.Request) string {
	if r.TLS != nil {
		return "__Host-fleetwave_session"
	}
	return "fleetwave_session"
}

// ctxFor is a call context carrying the session's operator token.
func (s *session) ctxFor(ctx context.Context) context.Context {
	if s.token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token)
}

func (s *session) api() v1.OperatorServiceClient { return v1.NewOperatorServiceClient(s.conn) }

// can says whether the session's role includes want (viewer < deployer < admin).
func (s *session) can(want string) bool { return tlsutil.RoleIncludes(s.role, want) }

type sessionHandler func(w http.ResponseWriter, r *http.Request, s *session)

// withSession finds the request's session; without one, pages redirect to
// the login and everything else is refused.
func (s *Server) withSession(h sessionHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var sess *session
		if c, err := r.Cookie(cookieName(r)); err == nil {
			sess, _ = s.sessions.get(c.Value, s.now())
		}
		if sess == nil {
			if r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, "/live") {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
				return
			}
			s.fail(w, r, nil, http.StatusUnauthorized, "not logged in (or the session expired): log in again")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, s.cfg.Limits.MaxBodyBytes)
			if err := r.ParseForm(); err != nil {
				s.fail(w, r, sess, http.StatusRequestEntityTooLarge, fmt.Sprintf("form: %v (http-max-body-bytes %d)", err, s.cfg.Limits.MaxBodyBytes))
				return
			}
			if !sameOrigin(r) || !sess.csrfOK(r.PostForm.Get("csrf")) {
				s.log.Warn().Str("identity", sess.identity).Str("path", r.URL.Path).Str("origin", r.Header.Get("Origin")).Msg("dashboard: POST refused: missing or wrong CSRF token or origin")
				s.fail(w, r, sess, http.StatusForbidden, "refused: the form's CSRF token or origin is missing or wrong (reload the page)")
				return
			}
		}
		h(w, r, sess)
	}
}

// sameOrigin: a POST that names its origin must come from this host.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true // the CSRF token decides
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "login", pageData{Title: "Log in", Insecure: s.cfg.Insecure, Next: safeNext(r.URL.Query().Get("next"))})
}

// safeNext keeps a redirect after login on this dashboard: one leading
// "/", no backslash and no control character (browsers drop tabs and
// newlines from a URL, so "/\t/evil.example" would be "//evil.example").
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsRune(next, '\\') ||
		strings.IndexFunc(next, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return "/"
	}
	return next
}

// login checks an operator token with WhoAmI and starts a session.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.Limits.MaxBodyBytes)
	data := pageData{Title: "Log in", Insecure: s.cfg.Insecure, Next: "/"}
	if err := r.ParseForm(); err != nil {
		data.Error = fmt.Sprintf("form: %v (http-max-body-bytes %d)", err, s.cfg.Limits.MaxBodyBytes)
		s.render(w, http.StatusRequestEntityTooLarge, "login", data)
		return
	}
	data.Next = safeNext(r.PostForm.Get("next"))
	if !sameOrigin(r) {
		data.Error = "refused: the login form was posted from another origin"
		s.render(w, http.StatusForbidden, "login", data)
		return
	}
	from, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		from = r.RemoteAddr
	}
	if !s.failures.Take(from, s.now()) {
		data.Error = fmt.Sprintf("too many failed logins from %s: try again in %s", from, loginFailureEvery)
		s.render(w, http.StatusTooManyRequests, "login", data)
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	if token == "" && !s.cfg.Insecure {
		data.Error = "token: required (an operator token from fleetwave token create)"
		s.render(w, http.StatusUnauthorized, "login", data)
		return
	}
	if len(token) > 1024 {
		data.Error = fmt.Sprintf("token: %d bytes, longer than any operator token", len(token))
		s.render(w, http.StatusUnauthorized, "login", data)
		return
	}
	cc, err := s.dial()
	if err != nil {
		data.Error = err.Error()
		s.render(w, http.StatusBadGateway, "login", data)
		return
	}
	sess := &session{token: token, conn: cc}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	who, err := sess.api().WhoAmI(sess.ctxFor(ctx), &v1.WhoAmIRequest{})
	if err == nil && who.GetRole() == "" {
		err = status.Errorf(codes.PermissionDenied, "%s is not an operator", who.GetIdentity())
	}
	if err != nil {
		_ = cc.Close()
		st, _ := status.FromError(err)
		data.Error = "login refused: " + st.Message()
		s.log.Warn().Str("remote", r.RemoteAddr).Str("error", st.Message()).Msg("dashboard: login refused")
		s.render(w, httpStatus(st.Code()), "login", data)
		return
	}
	s.failures.Succeeded(from, s.now())
	sess.identity, sess.role = who.GetIdentity(), who.GetRole()
	if err := s.sessions.add(sess, s.now()); err != nil {
		_ = cc.Close()
		data.Error = err.Error()
		s.render(w, http.StatusServiceUnavailable, "login", data)
		return
	}
	s.log.Info().Str("identity", sess.identity).Str("role", sess.role).Str("remote", r.RemoteAddr).Msg("dashboard: logged in")
	http.SetCookie(w, &http.Cookie{Name: cookieName(r), Value: sess.id, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.cfg.Limits.SessionTTL.Seconds())})
	http.Redirect(w, r, data.Next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, sess *session) {
	s.sessions.remove(sess.id)
	http.SetCookie(w, &http.Cookie{Name: cookieName(r), Value: "", Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (s *Server) servicesPage(w http.ResponseWriter, r *http.Request, sess *session) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	resp, err := sess.api().ListServices(sess.ctxFor(ctx), &v1.ListServicesRequest{})
	if err != nil {
		s.grpcFail(w, r, sess, "list services", err)
		return
	}
	stats, err := servicesStats(sess.ctxFor(ctx), sess.api())
	if err != nil {
		s.grpcFail(w, r, sess, "deployment figures", err)
		return
	}
	data := s.pageFor(sess, "Services")
	data.Services = servicesView(resp.GetServices())
	for i := range data.Services {
		data.Services[i].Stats = stats[data.Services[i].Name]
	}
	s.render(w, http.StatusOK, "services", data)
}

// requestTimeout bounds each gRPC call a page makes.
const requestTimeout = 15 * time.Second

func (s *Server) rolloutPage(w http.ResponseWriter, r *http.Request, sess *session) {
	svc := r.PathValue("service")
	if err := spec.CheckName("service", svc); err != nil {
		s.fail(w, r, sess, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	b, err := s.board(sess.ctxFor(ctx), sess, svc, nil)
	if err != nil {
		s.grpcFail(w, r, sess, "service "+svc, err)
		return
	}
	data := s.pageFor(sess, svc)
	data.Board = b
	data.Live = "/services/" + svc + "/live"
	s.render(w, http.StatusOK, "rollout", data)
}

// actions the rollout page posts, with what each calls.
var actions = map[string]func(ctx context.Context, api v1.OperatorServiceClient, svc string, form url.Values) error{
	"approve": func(ctx context.Context, api v1.OperatorServiceClient, svc string, form url.Values) error {
		wave, err := strconv.ParseUint(form.Get("wave"), 10, 32)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "wave: %q is not a wave number", form.Get("wave"))
		}
		_, err = api.ApproveRollout(ctx, &v1.ApproveRolloutRequest{Service: svc, Wave: uint32(wave)})
		return err
	},
	"pause": func(ctx context.Context, api v1.OperatorServiceClient, svc string, _ url.Values) error {
		_, err := api.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: svc})
		return err
	},
	"resume": func(ctx context.Context, api v1.OperatorServiceClient, svc string, _ url.Values) error {
		_, err := api.ResumeRollout(ctx, &v1.ResumeRolloutRequest{Service: svc})
		return err
	},
	"abort": func(ctx context.Context, api v1.OperatorServiceClient, svc string, form url.Values) error {
		reason := strings.TrimSpace(form.Get("reason"))
		if reason == "" {
			reason = "aborted from the dashboard"
		}
		_, err := api.AbortRollout(ctx, &v1.AbortRolloutRequest{Service: svc, Reason: reason})
		return err
	},
	"rollback": func(ctx context.Context, api v1.OperatorServiceClient, svc string, _ url.Values) error {
		_, err := api.Rollback(ctx, &v1.RollbackRequest{Service: svc})
		return err
	},
	"unfreeze": func(ctx context.Context, api v1.OperatorServiceClient, svc string, _ url.Values) error {
		_, err := api.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: svc})
		return err
	},
}

// action carries out a button of the rollout page. The buttons a role may
// not use are not shown, but the refusal is the gRPC API's: the call is
// made with the session's token whatever its role.
func (s *Server) action(w http.ResponseWriter, r *http.Request, sess *session) {
	svc, name := r.PathValue("service"), r.PathValue("action")
	if err := spec.CheckName("service", svc); err != nil {
		s.fail(w, r, sess, http.StatusBadRequest, err.Error())
		return
	}
	do, ok := actions[name]
	if !ok {
		s.fail(w, r, sess, http.StatusNotFound, fmt.Sprintf("action: %q: want approve, pause, resume, abort, rollback or unfreeze", name))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if err := do(sess.ctxFor(ctx), sess.api(), svc, r.PostForm); err != nil {
		s.grpcFail(w, r, sess, name+" "+svc, err)
		return
	}
	s.log.Info().Str("identity", sess.identity).Str("service", svc).Str("action", name).Msg("dashboard: action")
	http.Redirect(w, r, "/services/"+svc, http.StatusSeeOther)
}

// httpStatus maps a gRPC code to the page's HTTP status.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.FailedPrecondition, codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable, codes.DeadlineExceeded:
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// grpcFail shows a failed call; a token that no longer authenticates
// (revoked, expired) ends the session.
func (s *Server) grpcFail(w http.ResponseWriter, r *http.Request, sess *session, what string, err error) {
	st, _ := status.FromError(err)
	if st.Code() == codes.Unauthenticated {
		s.sessions.remove(sess.id)
		sess = nil
	}
	s.fail(w, r, sess, httpStatus(st.Code()), what+": "+st.Message())
}

func (s *Server) fail(w http.ResponseWriter, _ *http.Request, sess *session, code int, msg string) {
	data := pageData{Title: http.StatusText(code), Error: msg, Code: code}
	if sess != nil {
		data = s.pageFor(sess, http.StatusText(code))
		data.Error, data.Code = msg, code
	}
	s.render(w, code, "error", data)
}

func (s *Server) render(w http.ResponseWriter, code int, page string, data pageData) {
	var buf strings.Builder
	if err := s.pages[page].ExecuteTemplate(&buf, "layout", data); err != nil {
		s.log.Error().Err(err).Str("page", page).Msg("dashboard: render")
		http.Error(w, "render failed", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// With its length known, nothing (no last chunk) is left to write
	// after the flush below.
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	// The server has no WriteTimeout (live pages last): a client that
	// reads nothing would hold this handler and the page for good. The
	// page is written, and flushed, within pageWriteTimeout; the deadline
	// is then cleared for a next request on the connection.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(pageWriteTimeout))
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	w.WriteHeader(code)
	if _, err := w.Write([]byte(buf.String())); err == nil {
		_ = rc.Flush()
	}
}

// pageWriteTimeout bounds writing a page to the client.
const pageWriteTimeout = 30 * time.Second

func (s *Server) pageFor(sess *session, title string) pageData {
	return pageData{Title: title, Identity: sess.identity, Role: sess.role, CSRF: sess.csrf, Insecure: s.cfg.Insecure, Coordinator: s.cfg.Name, Admin: sess.isAdmin()}
}
