package dashboard

import (
	"bufio"
	"context"
	"fmt"
	"html"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fakeAPI is an OperatorService on a real loopback listener: tokens
// "viewer-secret" and "deployer-secret", a service "web" whose rollout
// waits for approval of wave 1.
type fakeAPI struct {
	v1.UnimplementedOperatorServiceServer
	approvals atomic.Int32
	mu        sync.Mutex
	calls     []string
	// watching counts open WatchRollout streams.
	watching atomic.Int32
	// whoami counts WhoAmI calls (logins checked).
	whoami atomic.Int32
	// watchRollout, when set, serves WatchRollout (after the credentials
	// check) instead of testRollout's one state.
	watchRollout func(*v1.WatchRolloutRequest, v1.OperatorService_WatchRolloutServer) error
	// statsCalls counts GetStats calls.
	statsCalls atomic.Int32
	// listHosts counts ListHosts calls (one per board).
	listHosts atomic.Int32
	// watchEvents, when set, serves WatchEvents (after the credentials
	// check) instead of the one recorded event.
	watchEvents func(*v1.WatchEventsRequest, v1.OperatorService_WatchEventsServer) error
	// eventsLimit is the limit of the last ListEvents; with olderEvents
	// set, ListEvents says older events were left out.
	eventsLimit atomic.Uint32
	olderEvents atomic.Bool
	// bigEvents, when set, makes ListEvents answer as many events as
	// asked, each with a 4.5 KB message (a rollout of many failed hosts).
	bigEvents atomic.Bool
}

// viewerRevoked makes the viewer's token unknown (revoked).
var viewerRevoked atomic.Bool

func tokenRole(ctx context.Context) (string, string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := strings.Join(md.Get("authorization"), "")
	if auth == "Bearer viewer-secret" && viewerRevoked.Load() {
		auth = ""
	}
	switch auth {
	case "Bearer viewer-secret":
		return "token:vera", "viewer", nil
	case "Bearer deployer-secret":
		return "token:dep", "deployer", nil
	case "Bearer admin-secret":
		return "token:ada", "admin", nil
	}
	return "", "", status.Error(codes.Unauthenticated, "token: unknown or revoked")
}

func need(ctx context.Context, role string) error {
	id, r, err := tokenRole(ctx)
	if err != nil {
		return err
	}
	rank := map[string]int{"viewer": 1, "deployer": 2, "admin": 3}
	if rank[r] < rank[role] {
		return status.Errorf(codes.PermissionDenied, "needs role %s; %s has role %s", role, id, r)
	}
	return nil
}

// called records the actions that reached the API.
func (f *fakeAPI) called(ctx context.Context, role, what string) error {
	if err := need(ctx, role); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, what)
	return nil
}

func (f *fakeAPI) PauseRollout(ctx context.Context, req *v1.PauseRolloutRequest) (*v1.PauseRolloutResponse, error) {
	return &v1.PauseRolloutResponse{}, f.called(ctx, "deployer", "pause "+req.GetService())
}

func (f *fakeAPI) ResumeRollout(ctx context.Context, req *v1.ResumeRolloutRequest) (*v1.ResumeRolloutResponse, error) {
	return &v1.ResumeRolloutResponse{}, f.called(ctx, "deployer", "resume "+req.GetService())
}

func (f *fakeAPI) AbortRollout(ctx context.Context, req *v1.AbortRolloutRequest) (*v1.AbortRolloutResponse, error) {
	return &v1.AbortRolloutResponse{}, f.called(ctx, "deployer", "abort "+req.GetService()+": "+req.GetReason())
}

func (f *fakeAPI) Rollback(ctx context.Context, req *v1.RollbackRequest) (*v1.RollbackResponse, error) {
	return &v1.RollbackResponse{}, f.called(ctx, "deployer", "rollback "+req.GetService())
}

func (f *fakeAPI) UnfreezeService(ctx context.Context, req *v1.UnfreezeServiceRequest) (*v1.UnfreezeServiceResponse, error) {
	return &v1.UnfreezeServiceResponse{}, f.called(ctx, "admin", "unfreeze "+req.GetName())
}

// GetStats: web had one successful rollout 2 days ago and one failed today.
func (f *fakeAPI) GetStats(ctx context.Context, req *v1.GetStatsRequest) (*v1.GetStatsResponse, error) {
	if err := need(ctx, "viewer"); err != nil {
		return nil, err
	}
	f.statsCalls.Add(1)
	days := req.GetSince().AsDuration() / (24 * time.Hour)
	s := &v1.DeployStats{Service: "web", Failed: 1, Rollouts: 1, ChangeFailureRate: 1}
	if days >= 3 {
		s.Succeeded, s.Rollouts, s.ChangeFailureRate, s.LeadTime = 1, 2, 0.5, &v1.DurationStats{Count: 1, Median: durationpb.New(90 * time.Second)}
	}
	if req.GetDaily() { // the failure today, the success two days ago
		for i := range days {
			d := &v1.DayCount{}
			switch i {
			case 0:
				d.Failed = 1
			case 2:
				d.Succeeded = 1
			}
			s.Days = append(s.Days, d)
		}
	}
	return &v1.GetStatsResponse{Services: []*v1.DeployStats{s}}, nil
}

func (f *fakeAPI) ListEvents(ctx context.Context, req *v1.ListEventsRequest) (*v1.ListEventsResponse, error) {
	if err := need(ctx, "viewer"); err != nil {
		return nil, err
	}
	evs := []*v1.Event{
		{At: timestamppb.New(time.Unix(1000, 0)), Service: "web", RolloutId: "r1", Kind: "rollout_created", Wave: -1, Message: "v1 -> v2"},
		{At: timestamppb.New(time.Unix(1001, 0)), Service: "web", RolloutId: "r1", Kind: "host_failed", Wave: 1, Host: "h2", Message: "check http failed"},
		{At: timestamppb.New(time.Unix(1002, 0)), Service: "web", RolloutId: "r1", Kind: "rollout_approved", Wave: 1, Actor: "token:dep"},
	}
	var out []*v1.Event
	for _, e := range evs {
		if req.GetRolloutId() == "" || e.GetRolloutId() == req.GetRolloutId() {
			out = append(out, e)
		}
	}
	f.eventsLimit.Store(req.GetLimit())
	if f.bigEvents.Load() {
		out = nil
		for i := range int(req.GetLimit()) {
			out = append(out, &v1.Event{At: timestamppb.New(time.Unix(2000, 0)), Service: "web", RolloutId: "r2", Kind: "host_failed", Wave: 1,
				Host: fmt.Sprintf("h%04d", i), Message: "check http failed: " + strings.Repeat("x", 4500)})
		}
	}
	return &v1.ListEventsResponse{Events: out, Truncated: f.olderEvents.Load()}, nil
}

func (f *fakeAPI) ListAudit(ctx context.Context, _ *v1.ListAuditRequest) (*v1.ListAuditResponse, error) {
	if err := need(ctx, "admin"); err != nil {
		return nil, err
	}
	return &v1.ListAuditResponse{Entries: []*v1.AuditEntry{
		{At: timestamppb.New(time.Unix(1000, 0)), Actor: "token:dep", Role: "deployer", Method: "/fleetwave.v1.OperatorService/ApproveRollout", Target: "web", Result: "OK"},
		{At: timestamppb.New(time.Unix(1001, 0)), Actor: "token:vera", Role: "viewer", Method: "/fleetwave.v1.OperatorService/Rollback", Target: "web", Result: "PermissionDenied"},
	}}, nil
}

func (f *fakeAPI) WhoAmI(ctx context.Context, _ *v1.WhoAmIRequest) (*v1.WhoAmIResponse, error) {
	f.whoami.Add(1)
	id, role, err := tokenRole(ctx)
	if err != nil {
		return nil, err
	}
	return &v1.WhoAmIResponse{Identity: id, Role: role, Method: "token"}, nil
}

func testRollout() *v1.Rollout {
	return &v1.Rollout{Id: "r1", Service: "web", FromVersion: "v1", ToVersion: "v2", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		CreatedAt: timestamppb.New(time.Unix(1000, 0)),
		Waves: []*v1.Wave{
			{Index: 0, Canary: true, State: v1.WaveState_WAVE_STATE_DONE, Hosts: []*v1.HostProgress{{HostId: "h1", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, Phase: v1.Phase_PHASE_HEALTHY}}},
			{Index: 1, WaitingApproval: true, State: v1.WaveState_WAVE_STATE_PENDING, Hosts: []*v1.HostProgress{{HostId: "h2", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED, Reason: "check http: <script>alert(1)</script>"}}},
		}}
}

func (f *fakeAPI) ListServices(ctx context.Context, _ *v1.ListServicesRequest) (*v1.ListServicesResponse, error) {
	if err := need(ctx, "viewer"); err != nil {
		return nil, err
	}
	return &v1.ListServicesResponse{Services: []*v1.Service{{Spec: &v1.ServiceSpec{Name: "web"}, Status: &v1.ServiceStatus{StableVersion: "v1", LastRolloutId: "r1"}}}}, nil
}

func (f *fakeAPI) GetService(ctx context.Context, req *v1.GetServiceRequest) (*v1.GetServiceResponse, error) {
	if err := need(ctx, "viewer"); err != nil {
		return nil, err
	}
	if req.GetName() != "web" {
		return nil, status.Errorf(codes.NotFound, "service %s not found", req.GetName())
	}
	return &v1.GetServiceResponse{Service: &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}, Status: &v1.ServiceStatus{StableVersion: "v1"}}}, nil
}

func (f *fakeAPI) GetRollout(ctx context.Context, _ *v1.GetRolloutRequest) (*v1.GetRolloutResponse, error) {
	if err := need(ctx, "viewer"); err != nil {
		return nil, err
	}
	return &v1.GetRolloutResponse{Rollout: testRollout()}, nil
}

func (f *fakeAPI) ListHosts(ctx context.Context, _ *v1.ListHostsRequest) (*v1.ListHostsResponse, error) {
	if err := need(ctx, "viewer"); err != nil {
		return nil, err
	}
	f.listHosts.Add(1)
	return &v1.ListHostsResponse{Hosts: []*v1.Host{{Id: "h1", Connected: true, Services: []*v1.ServiceReport{{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v2", TargetVersion: "v2",
		Checks: []*v1.CheckResult{{Name: "analysis:errors", Ok: true, Detail: "error ratio 0.010 <= max 0.050"}}}}}}}, nil
}

func (f *fakeAPI) ApproveRollout(ctx context.Context, _ *v1.ApproveRolloutRequest) (*v1.ApproveRolloutResponse, error) {
	if err := need(ctx, "deployer"); err != nil {
		return nil, err
	}
	f.approvals.Add(1)
	return &v1.ApproveRolloutResponse{}, nil
}

func (f *fakeAPI) WatchRollout(req *v1.WatchRolloutRequest, stream v1.OperatorService_WatchRolloutServer) error {
	if err := need(stream.Context(), "viewer"); err != nil {
		return err
	}
	f.watching.Add(1)
	defer f.watching.Add(-1)
	if f.watchRollout != nil {
		return f.watchRollout(req, stream)
	}
	if err := stream.Send(&v1.WatchRolloutResponse{Rollout: testRollout()}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (f *fakeAPI) WatchEvents(req *v1.WatchEventsRequest, stream v1.OperatorService_WatchEventsServer) error {
	if err := need(stream.Context(), "viewer"); err != nil {
		return err
	}
	if f.watchEvents != nil {
		return f.watchEvents(req, stream)
	}
	ev := &v1.Event{At: timestamppb.New(time.Unix(1001, 0)), Service: "web", RolloutId: "r1", Kind: "wave_waiting_approval", Wave: 1, Message: "wave 1 waits"}
	if err := stream.Send(&v1.WatchEventsResponse{Event: ev, Revision: 42}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

type testDash struct {
	t    *testing.T
	api  *fakeAPI
	srv  *Server
	http *httptest.Server
	now  atomic.Pointer[time.Time]
}

// newTestDash serves the dashboard over TLS (httptest) in front of a fake
// gRPC API on a real loopback listener.
func newTestDash(t *testing.T, lim Limits) *testDash {
	t.Helper()
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	api := &fakeAPI{}
	gs := grpc.NewServer()
	v1.RegisterOperatorServiceServer(gs, api)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	s, err := New(Config{GRPCTarget: lis.Addr().String(), GRPCCreds: insecure.NewCredentials(), Limits: lim, Name: "c1"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	d := &testDash{t: t, api: api, srv: s}
	start := time.Unix(1_000_000, 0)
	d.now.Store(&start)
	s.now = func() time.Time { return *d.now.Load() }
	d.http = httptest.NewTLSServer(s.Handler())
	t.Cleanup(func() { d.http.Close(); s.sessions.closeAll() })
	return d
}

func (d *testDash) advance(by time.Duration) {
	n := d.now.Load().Add(by)
	d.now.Store(&n)
}

// client is a browser-like client: a cookie jar, no redirects followed.
func (d *testDash) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	c := d.http.Client()
	return &http.Client{Transport: c.Transport, Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (d *testDash) login(c *http.Client, token string) *http.Response {
	d.t.Helper()
	resp, err := c.PostForm(d.http.URL+"/login", url.Values{"token": {token}})
	if err != nil {
		d.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func (d *testDash) get(c *http.Client, path string) (int, string) {
	d.t.Helper()
	resp, err := c.Get(d.http.URL + path)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (d *testDash) post(c *http.Client, path string, form url.Values, hdr map[string]string) int {
	d.t.Helper()
	req, err := http.NewRequest(http.MethodPost, d.http.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// csrf logs c in and reads its CSRF token from a page.
func (d *testDash) csrf(c *http.Client) string {
	d.t.Helper()
	_, body := d.get(c, "/")
	_, rest, ok := strings.Cut(body, `name="csrf" value="`)
	if !ok {
		d.t.Fatalf("no CSRF token in the page:\n%s", body)
	}
	tok, _, _ := strings.Cut(rest, `"`)
	return tok
}

func TestLoginSetsHttpOnlySecureStrictCookie(t *testing.T) {
	d := newTestDash(t, Limits{})
	resp := d.login(d.client(), "deployer-secret")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: status %d, want 303", resp.StatusCode)
	}
	cs := resp.Cookies()
	if len(cs) != 1 || cs[0].Name != "__Host-fleetwave_session" || !cs[0].HttpOnly || !cs[0].Secure || cs[0].SameSite != http.SameSiteStrictMode || cs[0].Path != "/" {
		t.Fatalf("session cookie: %+v, want HttpOnly, Secure, SameSite=Strict, Path=/", cs)
	}
	if strings.Contains(cs[0].Value, "deployer-secret") {
		t.Fatal("the cookie carries the operator token")
	}
}

func TestLoginRefusesUnknownTokenAndEmptyToken(t *testing.T) {
	d := newTestDash(t, Limits{})
	for _, tok := range []string{"wrong", ""} {
		resp := d.login(d.client(), tok)
		if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
			t.Errorf("login with %q: status %d cookies %v, want 401 and none", tok, resp.StatusCode, resp.Cookies())
		}
	}
	if n := d.srv.sessions.count(); n != 0 {
		t.Errorf("%d sessions after refused logins", n)
	}
}

func TestPagesWithoutSessionGoToLogin(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	resp, err := c.Get(d.http.URL + "/services/web")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login?next=%2Fservices%2Fweb" {
		t.Errorf("GET without session: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if code := d.post(c, "/services/web/approve", url.Values{"wave": {"1"}}, nil); code != http.StatusUnauthorized {
		t.Errorf("POST without session: status %d, want 401", code)
	}
	if n := d.api.approvals.Load(); n != 0 {
		t.Errorf("%d approvals reached the API", n)
	}
}

func TestDeployerSeesActionsAndApproves(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "deployer-secret")
	code, body := d.get(c, "/services/web")
	if code != 200 {
		t.Fatalf("rollout page: %d\n%s", code, body)
	}
	for _, want := range []string{`id="action-approve"`, `name="wave" value="1"`, "Wave 1 waits for approval: check the hosts already on v2", `id="action-pause"`, `id="action-abort"`, `data-state="healthy"`, `data-state="failed"`,
		"analysis:errors", "error ratio 0.010 &lt;= max 0.050", "&lt;script&gt;alert(1)&lt;/script&gt;"} {
		if !strings.Contains(body, want) {
			t.Errorf("rollout page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>alert(1)") {
		t.Error("a host's reason is not escaped")
	}
	if strings.Contains(body, `id="action-unfreeze"`) {
		t.Error("a deployer is offered unfreeze (admin only)")
	}
	if code := d.post(c, "/services/web/approve", url.Values{"csrf": {d.csrf(c)}, "wave": {"1"}}, nil); code != http.StatusSeeOther {
		t.Fatalf("approve: status %d, want 303", code)
	}
	if n := d.api.approvals.Load(); n != 1 {
		t.Fatalf("%d approvals reached the API, want 1", n)
	}
}

func TestViewerSeesNoButtonsAndForgedPostsAreRefused(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	_, body := d.get(c, "/services/web")
	if strings.Contains(body, "action-") {
		t.Errorf("a viewer's rollout page has action buttons:\n%s", body)
	}
	csrf := d.csrf(c)
	for _, tc := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no CSRF token", url.Values{"wave": {"1"}}, nil},
		{"wrong CSRF token", url.Values{"csrf": {"forged"}, "wave": {"1"}}, nil},
		{"another origin", url.Values{"csrf": {csrf}, "wave": {"1"}}, map[string]string{"Origin": "https://evil.example"}},
		// The page offers no button, and the gRPC API refuses the role.
		{"viewer with its CSRF token", url.Values{"csrf": {csrf}, "wave": {"1"}}, nil},
	} {
		if code := d.post(c, "/services/web/approve", tc.form, tc.hdr); code != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", tc.name, code)
		}
	}
	if n := d.api.approvals.Load(); n != 0 {
		t.Errorf("%d approvals reached the API", n)
	}
}

func TestBadActionAndServiceNamed(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "deployer-secret")
	csrf := d.csrf(c)
	if code := d.post(c, "/services/web/explode", url.Values{"csrf": {csrf}}, nil); code != http.StatusNotFound {
		t.Errorf("unknown action: status %d, want 404", code)
	}
	if code := d.post(c, "/services/web/approve", url.Values{"csrf": {csrf}, "wave": {"x"}}, nil); code != http.StatusBadRequest {
		t.Errorf("wave x: status %d, want 400", code)
	}
	code, body := d.get(c, "/services/Not_A_Name")
	if code != http.StatusBadRequest || !strings.Contains(body, "Not_A_Name") {
		t.Errorf("bad service name: %d\n%s", code, body)
	}
}

func TestMaxBodyBytes(t *testing.T) {
	d := newTestDash(t, Limits{MaxBodyBytes: 1024})
	c := d.client()
	d.login(c, "deployer-secret")
	form := url.Values{"csrf": {d.csrf(c)}, "wave": {"1"}, "reason": {strings.Repeat("x", 2000)}}
	if code := d.post(c, "/services/web/abort", form, nil); code != http.StatusRequestEntityTooLarge {
		t.Errorf("2 KB form with http-max-body-bytes 1024: status %d, want 413", code)
	}
	if code := d.post(d.client(), "/login", url.Values{"token": {strings.Repeat("x", 2000)}}, nil); code != http.StatusRequestEntityTooLarge {
		t.Errorf("2 KB login form: status %d, want 413", code)
	}
}

func TestMaxSessionsAndExpiry(t *testing.T) {
	d := newTestDash(t, Limits{MaxSessions: 2, SessionTTL: time.Hour})
	a, b, c := d.client(), d.client(), d.client()
	for _, cl := range []*http.Client{a, b} {
		if resp := d.login(cl, "viewer-secret"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("login: %d", resp.StatusCode)
		}
	}
	if resp := d.login(c, "viewer-secret"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third login with http-max-sessions 2: status %d, want 503", resp.StatusCode)
	}
	d.advance(time.Hour)
	// Expired: the page sends the browser to the login, and a new login
	// takes an expired session's place.
	if code, _ := d.get(a, "/"); code != http.StatusSeeOther {
		t.Errorf("page after the session's TTL: status %d, want 303 to the login", code)
	}
	if resp := d.login(c, "viewer-secret"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login after the others expired: status %d", resp.StatusCode)
	}
	if n := d.srv.sessions.count(); n != 1 {
		t.Errorf("%d sessions stored, want 1 (expired ones dropped)", n)
	}
}

func TestLogoutEndsSession(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	if code := d.post(c, "/logout", url.Values{"csrf": {d.csrf(c)}}, nil); code != http.StatusSeeOther {
		t.Fatalf("logout: %d", code)
	}
	if n := d.srv.sessions.count(); n != 0 {
		t.Errorf("%d sessions after logout", n)
	}
}

// sseReader reads server-sent events from a live page.
type sseReader struct {
	resp *http.Response
	r    *bufio.Reader
}

func (d *testDash) openLive(c *http.Client) (*sseReader, int) {
	d.t.Helper()
	resp, err := c.Get(d.http.URL + "/services/web/live")
	if err != nil {
		d.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	d.t.Cleanup(func() { resp.Body.Close() })
	return &sseReader{resp: resp, r: bufio.NewReader(resp.Body)}, 200
}

// next returns the next event's name and data.
func (s *sseReader) next() (string, string, error) {
	var name string
	var data []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "", "", err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && name != "":
			return name, strings.Join(data, "\n"), nil
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
}

func TestLivePagePushesBoardAndEvents(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	live, code := d.openLive(c)
	if code != 200 {
		t.Fatalf("live: status %d", code)
	}
	if ct := live.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	got := map[string]string{}
	for len(got) < 2 {
		name, data, err := live.next()
		if err != nil {
			t.Fatalf("reading the stream: %v (so far %v)", err, got)
		}
		got[name] = data
	}
	if b := got["board"]; !strings.Contains(b, `data-host="h1" data-state="healthy"`) || strings.Contains(b, "action-") {
		t.Errorf("board event (viewer):\n%s", b)
	}
	if e := got["event"]; !strings.Contains(e, "wave_waiting_approval") || !strings.Contains(e, "wave 1 waits") {
		t.Errorf("event:\n%s", e)
	}
}

// TestLiveBoardsCoalesced: a rollout whose state changes faster than boards
// are built (at 10,000 hosts a board reads every host and renders
// megabytes: ~0.6 s of the coordinator's CPU, and the state changes every
// 500 ms: a review) gets boards of its newest state, spaced, not one per
// change; the last state is shown.
func TestLiveBoardsCoalesced(t *testing.T) {
	d := newTestDash(t, Limits{})
	const states = 40
	var first atomic.Bool
	d.api.watchRollout = func(_ *v1.WatchRolloutRequest, stream v1.OperatorService_WatchRolloutServer) error {
		if !first.CompareAndSwap(false, true) {
			// A later watch shows nothing: the last state must come from
			// the first one.
			<-stream.Context().Done()
			return nil
		}
		for i := 0; i < states; i++ {
			r := testRollout()
			r.Reason = fmt.Sprintf("state %d", i)
			if i == states-1 {
				r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
			}
			if err := stream.Send(&v1.WatchRolloutResponse{Rollout: r}); err != nil {
				return err
			}
		}
		return nil
	}
	c := d.client()
	d.login(c, "viewer-secret")
	live, code := d.openLive(c)
	if code != 200 {
		t.Fatalf("live: status %d", code)
	}
	boards := 0
	for {
		name, data, err := live.next()
		if err != nil {
			t.Fatalf("reading the stream: %v (after %d boards)", err, boards)
		}
		if name != "board" {
			continue
		}
		boards++
		if strings.Contains(data, fmt.Sprintf("state %d", states-1)) {
			break
		}
	}
	if boards >= states/2 {
		t.Fatalf("%d boards for %d states sent back to back, want them coalesced", boards, states)
	}
	if n := d.api.listHosts.Load(); int(n) > boards+1 {
		t.Fatalf("%d host listings for %d boards", n, boards)
	}
}

func TestLivePagesPerIdentityLimited(t *testing.T) {
	d := newTestDash(t, Limits{MaxStreamsPerIdentity: 1})
	a, b := d.client(), d.client()
	d.login(a, "viewer-secret")
	d.login(b, "viewer-secret") // the same identity in another session
	first, code := d.openLive(a)
	if code != 200 {
		t.Fatalf("first live page: %d", code)
	}
	if _, code := d.openLive(b); code != http.StatusTooManyRequests {
		t.Fatalf("second live page of one identity with http-max-streams-per-identity 1: status %d, want 429", code)
	}
	first.resp.Body.Close()
	// The slot is given back when the first page's handler ends.
	testkit.Eventually(t, 10*time.Second, "a live page opens after the first closed", func() bool {
		live, code := d.openLive(b)
		if code == 200 {
			live.resp.Body.Close()
		}
		return code == 200
	})
}

func TestLimitsValidateNamesFlag(t *testing.T) {
	for _, tc := range []struct {
		l    Limits
		want string
	}{
		{Limits{MaxSessions: -1}, "http-max-sessions: -1"},
		{Limits{SessionTTL: time.Second}, "http-session-ttl: 1s"},
		{Limits{MaxStreamsPerIdentity: -2}, "http-max-streams-per-identity: -2"},
		{Limits{MaxBodyBytes: 10}, "http-max-body-bytes: 10"},
		{Limits{MaxConnections: -1}, "http-max-connections: -1"},
	} {
		err := tc.l.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.l, err, tc.want)
		}
	}
	if err := DefaultLimits.Validate(); err != nil {
		t.Error(err)
	}
}

func TestSecurityHeadersAndNoExternalRequests(t *testing.T) {
	d := newTestDash(t, Limits{})
	for _, path := range []string{"/login", "/static/app.js", "/static/style.css"} {
		resp, err := d.client().Get(d.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Security-Policy") != contentSecurityPolicy || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: status %d, headers %v", path, resp.StatusCode, resp.Header)
		}
	}
	if code, _ := d.get(d.client(), "/static/nope.js"); code != http.StatusNotFound {
		t.Errorf("unknown asset: status %d, want 404", code)
	}
	// Every asset is embedded: none names another origin.
	err := fs.WalkDir(assetsFS, "assets", func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := assetsFS.ReadFile(p)
		if err != nil {
			return err
		}
		for _, bad := range []string{"http://", "https://", "//cdn", "@import", "<style", "style=", " on"} {
			if bad == " on" {
				// inline event handlers: onclick=, onload=, ...
				for _, h := range []string{" onclick=", " onload=", " onerror=", " onsubmit="} {
					if strings.Contains(string(b), h) {
						return fmt.Errorf("%s: inline handler %q", p, h)
					}
				}
				continue
			}
			if strings.Contains(string(b), bad) {
				return fmt.Errorf("%s contains %q", p, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{"/services/web": "/services/web", "//evil.example/x": "/", "https://evil.example": "/", "": "/", "/\\evil": "/"} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWriteSSEMultiline(t *testing.T) {
	var b strings.Builder
	if err := writeSSE(&b, sseMessage{event: "board", id: "7", data: []byte("a\nb\r\nc")}); err != nil {
		t.Fatal(err)
	}
	if want := "event: board\nid: 7\ndata: a\ndata: b\ndata: c\n\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// Serve ends when its context does, and closes the sessions' connections.
func TestServeStopsWithContext(t *testing.T) {
	d := newTestDash(t, Limits{})
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = d.srv.Serve(ctx, lis) })
	resp, err := http.Get("http://" + lis.Addr().String() + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	wg.Wait()
	if serveErr != nil {
		t.Fatal(serveErr)
	}
	if _, err := http.Get("http://" + lis.Addr().String() + "/login"); err == nil {
		t.Fatal("still serving after its context ended")
	}
}

func TestEveryActionReachesTheAPIWithTheCallersToken(t *testing.T) {
	d := newTestDash(t, Limits{})
	dep, adm := d.client(), d.client()
	d.login(dep, "deployer-secret")
	d.login(adm, "admin-secret")
	for _, tc := range []struct {
		c      *http.Client
		action string
		form   url.Values
		want   string
	}{
		{dep, "pause", nil, "pause web"},
		{dep, "resume", nil, "resume web"},
		{dep, "abort", url.Values{"reason": {"bad smell"}}, "abort web: bad smell"},
		{dep, "abort", nil, "abort web: aborted from the dashboard"},
		{dep, "rollback", nil, "rollback web"},
		{adm, "unfreeze", nil, "unfreeze web"},
	} {
		form := url.Values{"csrf": {d.csrf(tc.c)}}
		for k, v := range tc.form {
			form[k] = v
		}
		if code := d.post(tc.c, "/services/web/"+tc.action, form, nil); code != http.StatusSeeOther {
			t.Errorf("%s: status %d, want 303", tc.action, code)
			continue
		}
		d.api.mu.Lock()
		last := d.api.calls[len(d.api.calls)-1]
		d.api.mu.Unlock()
		if last != tc.want {
			t.Errorf("%s reached the API as %q, want %q", tc.action, last, tc.want)
		}
	}
	// A deployer cannot unfreeze: the API refuses, the page says why.
	if code := d.post(dep, "/services/web/unfreeze", url.Values{"csrf": {d.csrf(dep)}}, nil); code != http.StatusForbidden {
		t.Errorf("deployer unfreeze: status %d, want 403", code)
	}
}

func TestServicesPageShowsFiguresAndChart(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	code, body := d.get(c, "/")
	if code != 200 {
		t.Fatalf("services page: %d\n%s", code, body)
	}
	for _, want := range []string{`href="/services/web"`, "2 (1 ok, 1 failed)", "50%", "1m30s", `class="chart"`,
		"0 day(s) ago: 0 succeeded, 1 failed", "2 day(s) ago: 1 succeeded, 0 failed", "29 day(s) ago: 0 succeeded, 0 failed"} {
		if !strings.Contains(body, want) {
			t.Errorf("services page lacks %q", want)
		}
	}
	if strings.Contains(body, `href="/audit"`) {
		t.Error("a viewer's navigation links the audit log")
	}
	// One GetStats for the page (it was one per day of the chart, each
	// over every kept rollout: 30).
	if n := d.api.statsCalls.Load(); n != 1 {
		t.Errorf("%d GetStats calls for the page, want 1", n)
	}
}

func TestBarsScaleToTallestDay(t *testing.T) {
	b := bars([]dayStats{{Succeeded: 2}, {Failed: 1}, {}}, 2)
	if len(b) != 3 || b[2].OKH != chartHeight || b[2].OKY != 0 || b[1].BadH != chartHeight/2 || b[1].BadY != chartHeight/2 || b[0].OKH+b[0].BadH != 0 {
		t.Errorf("bars: %+v", b)
	}
	if b := bars([]dayStats{{}, {}}, 0); b[0].OKH != 0 || b[0].OKY != chartHeight {
		t.Errorf("bars of an empty month: %+v", b)
	}
}

func TestHostsPage(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	code, body := d.get(c, "/hosts")
	if code != 200 || !strings.Contains(body, `data-host="h1"`) || !strings.Contains(body, "connected") || !strings.Contains(body, "healthy v2") {
		t.Errorf("hosts page: %d\n%s", code, body)
	}
}

func TestHistoryFilters(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	for _, tc := range []struct {
		query string
		want  []string
		not   []string
	}{
		{"", []string{"rollout_created", "host_failed", "rollout_approved"}, nil},
		{"?kind=host_failed", []string{"host_failed"}, []string{"rollout_created", "rollout_approved"}},
		{"?text=TOKEN:DEP", []string{"rollout_approved"}, []string{"host_failed"}},
		{"?rollout=r9", nil, []string{"host_failed"}},
	} {
		code, body := d.get(c, "/services/web/history"+tc.query)
		if code != 200 {
			t.Fatalf("history%s: %d\n%s", tc.query, code, body)
		}
		for _, w := range tc.want {
			if !strings.Contains(body, `data-kind="`+w+`"`) {
				t.Errorf("history%s lacks %s", tc.query, w)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(body, `data-kind="`+w+`"`) {
				t.Errorf("history%s shows %s", tc.query, w)
			}
		}
	}
	if code, body := d.get(c, "/services/web/history?text="+strings.Repeat("x", 201)); code != http.StatusBadRequest || !strings.Contains(body, "text: 201 bytes, at most 200") {
		t.Errorf("a 201-byte filter: %d\n%s", code, body)
	}
	// The page reads the newest historyLimit events and says when older
	// ones were left out, and where to find them.
	if got := d.api.eventsLimit.Load(); got != historyLimit {
		t.Errorf("history asked for %d events, want %d", got, historyLimit)
	}
	if _, body := d.get(c, "/services/web/history"); strings.Contains(body, "older events") {
		t.Errorf("history without older events says there are:\n%s", body)
	}
	d.api.olderEvents.Store(true)
	if _, body := d.get(c, "/services/web/history"); !strings.Contains(body, "3 of the newest 3 events") || !strings.Contains(body, "fleetwave events web") {
		t.Errorf("history with older events left out does not say so:\n%s", body)
	}
	// 1,000 events of 4.5 KB messages: over gRPC's default 4 MiB answer.
	// (Failed before the dashboard's client took answers of 64 MiB.)
	d.api.bigEvents.Store(true)
	if code, body := d.get(c, "/services/web/history"); code != http.StatusOK || !strings.Contains(body, fmt.Sprintf("%d of the newest %d events", historyLimit, historyLimit)) {
		t.Errorf("history of %d failed hosts: %d\n%.300s", historyLimit, code, body)
	}
}

func TestAuditPageAdminOnlyWithFilters(t *testing.T) {
	d := newTestDash(t, Limits{})
	v, a := d.client(), d.client()
	d.login(v, "viewer-secret")
	d.login(a, "admin-secret")
	if code, _ := d.get(v, "/audit"); code != http.StatusForbidden {
		t.Errorf("viewer's audit page: status %d, want 403 (the API refuses)", code)
	}
	code, body := d.get(a, "/audit?result=PermissionDenied")
	if code != 200 || !strings.Contains(body, "token:vera") || strings.Contains(body, "token:dep") {
		t.Errorf("audit filtered by result: %d\n%s", code, body)
	}
	if _, body := d.get(a, "/"); !strings.Contains(body, `href="/audit"`) {
		t.Error("an admin's navigation does not link the audit log")
	}
}

func TestNextStepSaysWhatToDo(t *testing.T) {
	failed := &v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_FAILED}
	for _, tc := range []struct {
		r       *v1.Rollout
		frozen  bool
		waiting int64
		want    string
	}{
		{&v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL}, false, 0, "waits for approval to start"},
		{&v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING, ToVersion: "v2"}, false, 2, "Wave 2 waits for approval: check the hosts already on v2"},
		{&v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING, Paused: true}, false, -1, "Paused"},
		{&v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING}, false, -1, "nothing to do"},
		{failed, true, -1, "an admin unfreezes the service"},
		{failed, false, -1, "Failed: the hosts that moved went back"},
		{&v1.Rollout{State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, ToVersion: "v3"}, false, -1, "every host runs v3"},
	} {
		if got := nextStep(tc.r, tc.frozen, tc.waiting); !strings.Contains(got, tc.want) {
			t.Errorf("%v frozen=%v waiting=%d: %q, want %q", tc.r.GetState(), tc.frozen, tc.waiting, got, tc.want)
		}
	}
}

// A token revoked after login ends the session at its next call, and the
// live page is told why and stops.
func TestRevokedTokenEndsSession(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	viewerRevoked.Store(true)
	t.Cleanup(func() { viewerRevoked.Store(false) })
	live, code := d.openLive(c)
	if code != 200 {
		t.Fatalf("live: %d", code)
	}
	name, data, err := live.next()
	if err != nil || name != "fatal" || !strings.Contains(data, "unknown or revoked") {
		t.Fatalf("live page of a revoked token: %q %q %v, want a fatal event", name, data, err)
	}
	if code, _ := d.get(c, "/"); code != http.StatusSeeOther {
		t.Errorf("page after the revocation: status %d, want 303 to the login", code)
	}
	if n := d.srv.sessions.count(); n != 0 {
		t.Errorf("%d sessions after the token was revoked", n)
	}
}

// A browser drops tabs (and CR, LF) from a URL before it resolves it, so a
// Location of "/\t/evil.example" is "//evil.example": another host.
func TestLoginNextWithControlCharactersStaysHere(t *testing.T) {
	d := newTestDash(t, Limits{})
	for _, next := range []string{"/\t/evil.example", "/\x0b/evil.example", "\t//evil.example", "/\x00/evil.example", "/\x7f"} {
		req, _ := http.NewRequest(http.MethodPost, d.http.URL+"/login", strings.NewReader(url.Values{"token": {"viewer-secret"}, "next": {next}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		// The transport: Go's client refuses such a Location, browsers do not.
		resp, err := d.client().Transport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); loc != "/" {
			t.Errorf("login with next %q: Location %q, want /", next, loc)
		}
	}
}

// A lone CR ends a line in an event stream as LF does: a reason or event
// message (written by an agent or an operator) with CRs must stay data and
// not add fields (id, event) or end the event early.
func TestWriteSSELoneCarriageReturn(t *testing.T) {
	var b strings.Builder
	msg := "check failed\rid: 999999999\r\revent: board\rdata: all hosts healthy\r"
	if err := writeSSE(&b, sseMessage{event: "event", id: "7", data: []byte(msg)}); err != nil {
		t.Fatal(err)
	}
	// Split as a browser does (CRLF, CR or LF end a line).
	lines := strings.Split(strings.ReplaceAll(strings.ReplaceAll(b.String(), "\r\n", "\n"), "\r", "\n"), "\n")
	var fields []string
	for _, l := range lines[:len(lines)-2] { // the last two: the event's blank line, then nothing
		if l == "" {
			t.Fatalf("blank line inside the event (it would be dispatched early): %q", b.String())
		}
		name, _, _ := strings.Cut(l, ":")
		fields = append(fields, name)
	}
	want := []string{"event", "id", "data", "data", "data", "data", "data", "data"}
	if strings.Join(fields, ",") != strings.Join(want, ",") {
		t.Errorf("fields %v, want %v (output %q)", fields, want, b.String())
	}
}

// A viewer's token logging in again and again must not take every session
// (http-max-sessions) and keep everyone else out until they expire: one
// identity holds maxSessionsPerIdentity, its oldest dropped for a new one.
func TestOneIdentityCannotTakeEverySession(t *testing.T) {
	d := newTestDash(t, Limits{MaxSessions: maxSessionsPerIdentity + 2})
	var first *http.Client
	for i := 0; i < maxSessionsPerIdentity+2; i++ {
		c := d.client()
		if i == 0 {
			first = c
		}
		if resp := d.login(c, "viewer-secret"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("viewer's login %d: status %d", i+1, resp.StatusCode)
		}
	}
	if resp := d.login(d.client(), "deployer-secret"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("deployer's login after the viewer's %d: status %d, want 303", maxSessionsPerIdentity+2, resp.StatusCode)
	}
	if code, _ := d.get(first, "/"); code != http.StatusSeeOther {
		t.Errorf("the viewer's oldest session: status %d, want 303 to the login (dropped)", code)
	}
	if n := d.srv.sessions.count(); n != maxSessionsPerIdentity+1 {
		t.Errorf("%d sessions, want %d", n, maxSessionsPerIdentity+1)
	}
}

// A live page ends when its session does (logout here; expiry and a
// removal alike): it does not stay open, retrying on the session's closed
// connection and holding the identity's live-page slot.
func TestLivePageEndsWithItsSession(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	d.login(c, "viewer-secret")
	live, code := d.openLive(c)
	if code != 200 {
		t.Fatalf("live: %d", code)
	}
	for seen := map[string]bool{}; !seen["board"] || !seen["event"]; {
		name, _, err := live.next()
		if err != nil {
			t.Fatal(err)
		}
		seen[name] = true
	}
	if code := d.post(c, "/logout", url.Values{"csrf": {d.csrf(c)}}, nil); code != http.StatusSeeOther {
		t.Fatalf("logout: %d", code)
	}
	ended := make(chan string, 1)
	go func() {
		for {
			name, data, err := live.next()
			if err != nil {
				ended <- "end of stream: " + err.Error()
				return
			}
			if name == "fatal" {
				ended <- "fatal: " + data
				return
			}
		}
	}()
	select {
	case how := <-ended:
		t.Log(how)
	case <-time.After(10 * time.Second):
		t.Fatal("the live page of a logged-out session is still open after 10 s")
	}
	testkit.Eventually(t, 5*time.Second, "the identity's live-page slot is given back", func() bool {
		d.srv.sessions.mu.Lock()
		defer d.srv.sessions.mu.Unlock()
		return d.srv.sessions.streams["token:vera"] == 0
	})
}

// DNS rebinding: a page of evil.example whose name then resolves to
// 127.0.0.1 is same-origin with an insecure dashboard there (plain HTTP,
// every browser an admin, no token): its script could log in, read the
// CSRF token and act. An insecure dashboard answers only requests for an
// IP address or localhost.
func TestInsecureDashboardRefusesOtherHostNames(t *testing.T) {
	s, err := New(Config{GRPCTarget: "127.0.0.1:1", GRPCCreds: insecure.NewCredentials(), Insecure: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for host, want := range map[string]int{
		"evil.example:" + port: http.StatusMisdirectedRequest, "evil.example": http.StatusMisdirectedRequest,
		"127.0.0.1:" + port: http.StatusOK, "localhost:" + port: http.StatusOK, "[::1]:" + port: http.StatusOK,
	} {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			req, _ := http.NewRequest(m, srv.URL+"/login", strings.NewReader(""))
			req.Host = host
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if m == http.MethodGet && resp.StatusCode != want || m == http.MethodPost && want != http.StatusOK && resp.StatusCode != want {
				t.Errorf("%s /login with Host %q: status %d, want %d", m, host, resp.StatusCode, want)
			}
		}
	}
}

// Anyone who reaches the dashboard's port can open connections: without a
// cap they take file descriptors the whole coordinator shares (its gRPC
// listener, etcd). Past http-max-connections a new one is closed at once.
func TestConnectionsCapped(t *testing.T) {
	d := newTestDash(t, Limits{MaxConnections: 2})
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = d.srv.Serve(ctx, lis) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	dial := func() net.Conn {
		c, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closed: the server closed c (EOF; a failure deadline, not an
	// expected time).
	closed := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	// serves: c is answered (so it was accepted and admitted).
	serves := func(c net.Conn) bool {
		if _, err := c.Write([]byte("GET /login HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			return false
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	a, b := dial(), dial()
	if !serves(a) || !serves(b) {
		t.Fatal("the first two connections were not served")
	}
	if !closed(dial()) {
		t.Fatal("a third connection with http-max-connections 2 was kept open")
	}
	if !serves(b) {
		t.Fatal("an admitted connection was closed")
	}
	a.Close()
	testkit.Eventually(t, 5*time.Second, "a connection is admitted once one closed", func() bool {
		c := dial()
		if _, err := c.Write([]byte("GET /login HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			return false
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && strings.HasPrefix(line, "HTTP/1.1 200")
	})
}

// Failed logins are limited per address: each dials the gRPC API and
// writes a log line, and nothing else stops guessing.
func TestFailedLoginsLimitedPerAddress(t *testing.T) {
	d := newTestDash(t, Limits{})
	c := d.client()
	for i := 0; i < loginFailureBurst; i++ {
		if resp := d.login(c, fmt.Sprintf("guess-%d", i)); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failed login %d: status %d, want 401", i+1, resp.StatusCode)
		}
	}
	before := d.api.whoami.Load()
	if resp := d.login(c, "guess-again"); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("login after %d failures: status %d, want 429", loginFailureBurst, resp.StatusCode)
	}
	if resp := d.login(c, "viewer-secret"); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a right token while the address is limited: status %d, want 429 (else guessing goes on)", resp.StatusCode)
	}
	if d.api.whoami.Load() != before {
		t.Error("a limited login reached the API")
	}
	d.advance(loginFailureEvery)
	if resp := d.login(c, "viewer-secret"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("login %s later: status %d, want 303", loginFailureEvery, resp.StatusCode)
	}
}

// Cookies are not kept apart by port, and a sibling origin (a service on
// another port of the same host, or a subdomain) can set one named like
// the session, with a longer Path so the browser sends it first: the
// victim then works in the attacker's session. Over HTTPS the session is a
// __Host- cookie, which only this origin can set (Secure, Path=/, no Domain).
func TestSessionCookieCannotBeTossedBySiblingOrigin(t *testing.T) {
	d := newTestDash(t, Limits{})
	attacker := d.login(d.client(), "deployer-secret")
	cs := attacker.Cookies()
	if len(cs) != 1 || !strings.HasPrefix(cs[0].Name, "__Host-") {
		t.Fatalf("session cookie over HTTPS: %+v, want a __Host- name", cs)
	}
	req, _ := http.NewRequest(http.MethodGet, d.http.URL+"/", nil)
	req.Header.Set("Cookie", "fleetwave_session="+cs[0].Value)
	resp, err := d.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a session id in a cookie without the __Host- prefix: status %d, want 303 to the login", resp.StatusCode)
	}
}

// stuckWriter is a client that reads nothing: a write with a deadline set
// fails (the deadline passes, as it would); one without a deadline would
// wait for good, so it is recorded and failed at once instead.
type stuckWriter struct {
	h                   http.Header
	deadline            time.Time
	writes, undeadlined int
}

func (w *stuckWriter) Header() http.Header { return w.h }
func (w *stuckWriter) WriteHeader(int)     {}
func (w *stuckWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.deadline.IsZero() {
		w.undeadlined++
		return 0, io.ErrClosedPipe
	}
	return 0, fmt.Errorf("write: %w", context.DeadlineExceeded)
}
func (w *stuckWriter) SetWriteDeadline(t time.Time) error { w.deadline = t; return nil }
func (w *stuckWriter) FlushError() error                  { return nil }

// A logged-in client that requests pages and reads none of them must not
// hold a handler (and the page) for good: pages are written within a
// deadline (the server has no WriteTimeout: live pages last).
func TestPageToClientThatDoesNotReadHasDeadline(t *testing.T) {
	d := newTestDash(t, Limits{})
	w := &stuckWriter{h: http.Header{}}
	d.srv.render(w, http.StatusOK, "login", pageData{Title: "Log in"})
	if w.writes == 0 || w.undeadlined != 0 {
		t.Errorf("%d writes, %d of them without a write deadline: a client that reads nothing would hold the handler for good", w.writes, w.undeadlined)
	}
}

// The board names a rollout as the CLI, events and logs do
// (rollout.Describe): a config rollout by its spec revisions, an agent
// upgrade as the agent's.
func TestBoardNamesTheRolloutAsEverywhere(t *testing.T) {
	_, frag, err := parseTemplates()
	if err != nil {
		t.Fatal(err)
	}
	svc := &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}}
	for _, tc := range []struct {
		r      *v1.Rollout
		want   string
		config bool
	}{
		{&v1.Rollout{Id: "000002", Service: "web", FromVersion: "v1", ToVersion: "v2", SpecRevision: 3, FromSpecRevision: 3}, "v1 → v2", false},
		{&v1.Rollout{Id: "000003", Service: "web", FromVersion: "v2", ToVersion: "v2", SpecRevision: 4, FromSpecRevision: 3}, "v2 with spec 3 → spec 4", true},
		{&v1.Rollout{Id: "000004", Service: "web", FromVersion: "v2", Remove: true}, "remove (was v2)", false},
		{&v1.Rollout{Id: "000001", Service: "fleetwave-agent", ToVersion: "v0.2.0"}, "agent (none) → v0.2.0", false},
	} {
		b := buildBoard(&session{}, svc, tc.r, nil)
		if b.What != tc.want || b.Config != tc.config {
			t.Errorf("%v: board says %q (config %v), want %q (config %v)", tc.r, b.What, b.Config, tc.want, tc.config)
		}
		var out strings.Builder
		if err := frag.ExecuteTemplate(&out, "board", b); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), html.EscapeString(tc.want)) {
			t.Errorf("the rendered board does not name %q:\n%s", tc.want, out.String())
		}
	}
}

// The board of a judging-only config rollout says it is applied in place,
// and each host whose report said so (HostProgress.in_place); others not.
func TestBoardSaysInPlace(t *testing.T) {
	_, frag, err := parseTemplates()
	if err != nil {
		t.Fatal(err)
	}
	svc := &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}}
	r := &v1.Rollout{Id: "000003", Service: "web", FromVersion: "v2", ToVersion: "v2", SpecRevision: 4, FromSpecRevision: 3, InPlace: true,
		Waves: []*v1.Wave{{Index: 0, State: v1.WaveState_WAVE_STATE_PROGRESSING, Hosts: []*v1.HostProgress{
			{HostId: "h1", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, Phase: v1.Phase_PHASE_HEALTHY, InPlace: true},
			{HostId: "h2", State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, Phase: v1.Phase_PHASE_HEALTHY}}}}}
	b := buildBoard(&session{}, svc, r, nil)
	var out strings.Builder
	if err := frag.ExecuteTemplate(&out, "board", b); err != nil {
		t.Fatal(err)
	}
	page := out.String()
	if want := html.EscapeString(rollout.InPlaceNote(r)); want == "" || !strings.Contains(page, want) {
		t.Errorf("the board does not say the rollout is applied in place (%q):\n%s", want, page)
	}
	if got := b.Waves[0].Hosts[0].Status(); !slices.Contains(got, "in place") {
		t.Errorf("h1 (in place): %q", got)
	}
	if got := b.Waves[0].Hosts[1].Status(); slices.Contains(got, "in place") {
		t.Errorf("h2 (restarted): %q", got)
	}
	r.InPlace = false
	if b := buildBoard(&session{}, svc, r, nil); b.InPlace != "" {
		t.Errorf("a rollout that is not in place: board says %q", b.InPlace)
	}
}

// A write's events share one etcd revision (a step's thousands of events
// in batches): a live page whose event watch broke after some of a
// revision's events resumes with the rest of that revision, none twice,
// and so does a browser that reconnects with the Last-Event-ID it got.
func TestLivePageResumesEventsInsideARevision(t *testing.T) {
	d := newTestDash(t, Limits{})
	type revEv struct {
		rev  int64
		host string
	}
	recorded := []revEv{{42, "h1"}, {42, "h2"}, {42, "h3"}, {43, "h4"}}
	var calls atomic.Int32
	d.api.watchEvents = func(req *v1.WatchEventsRequest, stream v1.OperatorService_WatchEventsServer) error {
		first := calls.Add(1) == 1
		sent := 0
		for _, r := range recorded {
			if r.rev <= req.GetSinceRevision() {
				continue
			}
			if first && sent == 2 { // the stream breaks inside revision 42
				return status.Error(codes.Unavailable, "connection reset")
			}
			ev := &v1.Event{At: timestamppb.New(time.Unix(1001, 0)), Service: "web", RolloutId: "r1", Kind: "host_done", Wave: 1, Host: r.host}
			if err := stream.Send(&v1.WatchEventsResponse{Event: ev, Revision: r.rev}); err != nil {
				return err
			}
			sent++
		}
		<-stream.Context().Done()
		return nil
	}
	c := d.client()
	d.login(c, "viewer-secret")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // a failure deadline
	defer cancel()
	open := func(lastID string) *sseReader {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "GET", d.http.URL+"/services/web/live", nil)
		if err != nil {
			t.Fatal(err)
		}
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.StatusCode != 200 {
			t.Fatalf("live (Last-Event-ID %q): status %d", lastID, resp.StatusCode)
		}
		return &sseReader{resp: resp, r: bufio.NewReader(resp.Body)}
	}
	read := func(live *sseReader, n int) []string {
		t.Helper()
		var hosts []string
		for len(hosts) < n && (len(hosts) == 0 || hosts[len(hosts)-1] != "h4") {
			name, data, err := live.next()
			if err != nil {
				t.Fatalf("reading the stream: %v (so far %v)", err, hosts)
			}
			if name != "event" {
				continue
			}
			for _, r := range recorded {
				if strings.Contains(data, r.host+"<") || strings.Contains(data, r.host+" ") || strings.Contains(data, r.host+"\"") {
					hosts = append(hosts, r.host)
				}
			}
		}
		return hosts
	}
	live := open("")
	if got, want := strings.Join(read(live, 4), " "), "h1 h2 h3 h4"; got != want {
		t.Errorf("events across a broken watch: %s, want %s", got, want)
	}
	live.resp.Body.Close()

	// A browser that got h1 (the first event of revision 42) reconnects.
	var lastID string
	d.api.watchEvents = func(req *v1.WatchEventsRequest, stream v1.OperatorService_WatchEventsServer) error {
		for _, r := range recorded {
			if r.rev <= req.GetSinceRevision() {
				continue
			}
			ev := &v1.Event{At: timestamppb.New(time.Unix(1001, 0)), Service: "web", RolloutId: "r1", Kind: "host_done", Wave: 1, Host: r.host}
			if err := stream.Send(&v1.WatchEventsResponse{Event: ev, Revision: r.rev}); err != nil {
				return err
			}
		}
		<-stream.Context().Done()
		return nil
	}
	live = open("")
	lastID = live.firstEventID(t)
	live.resp.Body.Close()
	if got, want := strings.Join(read(open(lastID), 3), " "), "h2 h3 h4"; got != want {
		t.Errorf("events after Last-Event-ID %q: %s, want %s", lastID, got, want)
	}
}

// firstEventID returns the id of the stream's first "event" event.
func (s *sseReader) firstEventID(t *testing.T) string {
	t.Helper()
	var name, id string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if name == "event" {
				return id
			}
			name, id = "", ""
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		}
	}
}
