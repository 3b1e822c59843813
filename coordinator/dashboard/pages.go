package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/hostlist"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// statsDays is the window of the services page's figures and chart.
const statsDays = 30

// dayStats are one day's ended rollouts of a service, for the chart.
type dayStats struct {
	Succeeded, Failed uint32
}

// statsView is a service's DORA figures over statsDays and its chart.
type statsView struct {
	Rollouts, Succeeded, Failed      uint32
	DeploysPerDay, ChangeFailureRate string
	LeadTime, Restore, Band          string
	Bars                             []barView
	// Max is the tallest day, for the chart's scale.
	Max uint32
}

// barView is one day of the chart, as SVG coordinates (the page's CSP
// allows no inline style: sizes are attributes, colours classes).
type barView struct {
	X, OKY, OKH, BadY, BadH int
	Title                   string
}

func fmtDuration(d *v1.DurationStats) string {
	if d.GetCount() == 0 {
		return "—"
	}
	m := d.GetMedian().AsDuration()
	if m < time.Second {
		return m.Round(time.Millisecond).String()
	}
	return m.Round(time.Second).String()
}

// servicesStats reads the DORA figures over statsDays and, for the chart,
// the rollouts ended on each day, in one GetStats (daily). (It took one
// call per day, each over every kept rollout: 30 × 43–110 ms for a page:
// a review.)
func servicesStats(ctx context.Context, api v1.OperatorServiceClient) (map[string]*statsView, error) {
	resp, err := api.GetStats(ctx, &v1.GetStatsRequest{Since: durationpb.New(statsDays * 24 * time.Hour), Daily: true})
	if err != nil {
		return nil, err
	}
	out := map[string]*statsView{}
	for _, s := range resp.GetServices() {
		v := &statsView{Rollouts: s.GetRollouts(), Succeeded: s.GetSucceeded(), Failed: s.GetFailed() + s.GetRolledBack(),
			DeploysPerDay: fmt.Sprintf("%.2f", s.GetDeploysPerDay()), ChangeFailureRate: fmt.Sprintf("%.0f%%", 100*s.GetChangeFailureRate()),
			LeadTime: fmtDuration(s.GetLeadTime()), Restore: fmtDuration(s.GetTimeToRestore()), Band: s.GetOverallBand()}
		days := make([]dayStats, statsDays)
		for k, d := range s.GetDays() {
			if k == statsDays {
				break
			}
			days[k] = dayStats{Succeeded: d.GetSucceeded(), Failed: d.GetFailed()}
			v.Max = max(v.Max, days[k].Succeeded+days[k].Failed)
		}
		v.Bars = bars(days, v.Max)
		out[s.GetService()] = v
	}
	return out, nil
}

// chartHeight and barWidth size the chart (SVG user units).
const chartHeight, barWidth = 30, 4

// bars lays out the days, oldest left: days[0] is today.
func bars(days []dayStats, most uint32) []barView {
	out := make([]barView, 0, len(days))
	for i := len(days) - 1; i >= 0; i-- {
		d := days[i]
		b := barView{X: (len(days) - 1 - i) * (barWidth + 1), Title: fmt.Sprintf("%d day(s) ago: %d succeeded, %d failed", i, d.Succeeded, d.Failed)}
		if most > 0 {
			b.OKH = int(d.Succeeded) * chartHeight / int(most)
			b.BadH = int(d.Failed) * chartHeight / int(most)
		}
		b.OKY = chartHeight - b.OKH
		b.BadY = b.OKY - b.BadH
		out = append(out, b)
	}
	return out
}

// hostView is one row of the hosts page.
type hostView struct {
	ID, Coordinator, Gossip, Agent, Labels string
	Connected                              bool
	Services                               []hostServiceView
}

type hostServiceView struct {
	Service, Phase, Version, Reason string
	Bad                             bool
}

func hostsView(hosts []*v1.Host) []hostView {
	out := make([]hostView, 0, len(hosts))
	for _, h := range hosts {
		labels := make([]string, 0, len(h.GetLabels()))
		for k, v := range h.GetLabels() {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		hv := hostView{ID: h.GetId(), Coordinator: h.GetCoordinator(), Gossip: h.GetGossip(), Agent: h.GetAgentVersion(), Labels: strings.Join(labels, " "), Connected: h.GetConnected()}
		for _, r := range h.GetServices() {
			p := r.GetPhase()
			hv.Services = append(hv.Services, hostServiceView{Service: r.GetService(), Phase: lower(p.String(), "PHASE_"), Version: r.GetCurrentVersion(), Reason: r.GetReason(),
				Bad: p == v1.Phase_PHASE_FAILED || p == v1.Phase_PHASE_REVERTED || p == v1.Phase_PHASE_REVERTING})
		}
		sort.Slice(hv.Services, func(i, j int) bool { return hv.Services[i].Service < hv.Services[j].Service })
		out = append(out, hv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Server) hostsPage(w http.ResponseWriter, r *http.Request, sess *session) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	hosts, err := hostlist.All(sess.ctxFor(ctx), sess.api(), "")
	if err != nil {
		s.grpcFail(w, r, sess, "list hosts", err)
		return
	}
	data := s.pageFor(sess, "Hosts")
	data.Hosts = hostsView(hosts)
	s.render(w, http.StatusOK, "hosts", data)
}

// maxFilterLen bounds a filter field of the history and audit pages.
const maxFilterLen = 200

// filter reads a query parameter used as a substring filter.
func filter(r *http.Request, name string) (string, error) {
	v := strings.TrimSpace(r.URL.Query().Get(name))
	if len(v) > maxFilterLen {
		return "", fmt.Errorf("%s: %d bytes, at most %d", name, len(v), maxFilterLen)
	}
	return v, nil
}

// historyView is the events of one service, filtered.
type historyView struct {
	Service, Rollout, Kind, Text string
	Events                       []*v1.Event
	Total                        int
	// Older: events older than the Total read were left out (historyLimit).
	Older bool
}

// historyLimit is how many of the newest events the history page reads.
const historyLimit = 1000

func (s *Server) historyPage(w http.ResponseWriter, r *http.Request, sess *session) {
	svc := r.PathValue("service")
	if err := spec.CheckName("service", svc); err != nil {
		s.fail(w, r, sess, http.StatusBadRequest, err.Error())
		return
	}
	h := &historyView{Service: svc}
	var err error
	for _, f := range []struct {
		name string
		v    *string
	}{{"rollout", &h.Rollout}, {"kind", &h.Kind}, {"text", &h.Text}} {
		if *f.v, err = filter(r, f.name); err != nil {
			s.fail(w, r, sess, http.StatusBadRequest, err.Error())
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	resp, err := sess.api().ListEvents(sess.ctxFor(ctx), &v1.ListEventsRequest{Service: svc, RolloutId: h.Rollout, Limit: historyLimit})
	if err != nil {
		s.grpcFail(w, r, sess, "history of "+svc, err)
		return
	}
	h.Total, h.Older = len(resp.GetEvents()), resp.GetTruncated()
	for i := len(resp.GetEvents()) - 1; i >= 0; i-- { // newest first
		ev := resp.GetEvents()[i]
		if h.Kind != "" && ev.GetKind() != h.Kind {
			continue
		}
		if h.Text != "" && !strings.Contains(strings.ToLower(ev.GetMessage()+" "+ev.GetHost()+" "+ev.GetActor()), strings.ToLower(h.Text)) {
			continue
		}
		h.Events = append(h.Events, ev)
	}
	data := s.pageFor(sess, svc+" history")
	data.History = h
	s.render(w, http.StatusOK, "history", data)
}

// auditView is the newest audit entries, filtered.
type auditView struct {
	Actor, Method, Result string
	Entries               []*v1.AuditEntry
	Total                 int
}

// auditLimit is how many of the newest audit entries the page reads.
const auditLimit = 1000

func (s *Server) auditPage(w http.ResponseWriter, r *http.Request, sess *session) {
	a := &auditView{}
	var err error
	for _, f := range []struct {
		name string
		v    *string
	}{{"actor", &a.Actor}, {"method", &a.Method}, {"result", &a.Result}} {
		if *f.v, err = filter(r, f.name); err != nil {
			s.fail(w, r, sess, http.StatusBadRequest, err.Error())
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	resp, err := sess.api().ListAudit(sess.ctxFor(ctx), &v1.ListAuditRequest{Limit: auditLimit})
	if err != nil {
		s.grpcFail(w, r, sess, "audit log", err)
		return
	}
	a.Total = len(resp.GetEntries())
	for i := len(resp.GetEntries()) - 1; i >= 0; i-- { // newest first
		e := resp.GetEntries()[i]
		if !strings.Contains(e.GetActor(), a.Actor) || !strings.Contains(e.GetMethod(), a.Method) || (a.Result != "" && e.GetResult() != a.Result) {
			continue
		}
		a.Entries = append(a.Entries, e)
	}
	data := s.pageFor(sess, "Audit")
	data.Audit = a
	s.render(w, http.StatusOK, "audit", data)
}

// isAdmin is for the navigation: the audit log is an admin's.
func (s *session) isAdmin() bool { return s.can(tlsutil.RoleAdmin) }
