package dashboard

import (
	"context"
	"sort"
	"strconv"
	"strings"

	"github.com/fleetwave/fleetwave/coordinator/rollout"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/hostlist"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// pageData is what every page template gets.
type pageData struct {
	Title, Identity, Role, CSRF, Coordinator string
	Insecure                                 bool
	Error                                    string
	Code                                     int
	Next                                     string
	Services                                 []serviceView
	Board                                    *boardView
	Hosts                                    []hostView
	History                                  *historyView
	Audit                                    *auditView
	// Admin: the navigation shows the audit log.
	Admin bool
	// Live is the rollout page's event stream.
	Live string
}

type serviceView struct {
	Name, Stable, Rollout string
	Frozen, Removing      bool
	Stats                 *statsView
}

func servicesView(svcs []*v1.Service) []serviceView {
	out := make([]serviceView, 0, len(svcs))
	for _, s := range svcs {
		st := s.GetStatus()
		out = append(out, serviceView{Name: s.GetSpec().GetName(), Stable: st.GetStableVersion(), Rollout: st.GetLastRolloutId(),
			Frozen: st.GetFrozen(), Removing: st.GetRemoving()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// boardView is the rollout board: the part of the rollout page the event
// stream replaces on every change.
type boardView struct {
	Service, ID, State, Reason string
	// What the rollout changes, named as everywhere else
	// (rollout.Describe): "v1 → v2", "v2 with spec 3 → spec 4", ...
	What string
	// InPlace says a config rollout is applied in place (judging only, or resources)
	// (rollout.InPlaceNote; "" for any other).
	InPlace string
	// Compacted says the rollout's host detail was pruned and how many
	// hosts it had (rollout.CompactedNote; "" while it keeps its hosts:
	// the board shows a service's newest rollout, which always does).
	Compacted                        string
	Stable                           string
	Paused, Rollback, Frozen, Config bool
	// None: the service has had no rollout yet.
	None bool
	// Next says what to do now (or that nothing is needed).
	Next    string
	Waves   []waveView
	Actions []actionView
	CSRF    string
}

type waveView struct {
	Index    uint32
	Title    string
	State    string
	Waiting  bool
	Approved bool
	Failures uint32
	Hosts    []cellView
}

// cellView is one host of a wave. State is what the cell's colour says:
// pending, updating, healthy, failed (unknown when its stream is down).
type cellView struct {
	Host, State, Phase, Reason, Version string
	Unknown                             bool
	InPlace                             bool // its report said: applied in place (no restart)
	Checks                              []checkView
}

// Status is the cell's second line: phase, release, stream.
func (c cellView) Status() []string {
	var out []string
	if c.Phase != "" {
		out = append(out, c.Phase)
	}
	if c.InPlace {
		out = append(out, "in place")
	}
	if c.Version != "" {
		out = append(out, "runs "+c.Version)
	}
	if c.Unknown {
		out = append(out, "stream down")
	}
	return out
}

type checkView struct {
	Name, Detail string
	OK           bool
}

type actionView struct {
	Name, Label string
	// Wave for approve (0: the rollout's start or whatever waits).
	Wave uint32
	// Reason: the action takes a reason (abort).
	Reason bool
	Danger bool
}

// lower turns an enum name into the word shown: ROLLOUT_STATE_WAITING_APPROVAL -> waiting approval.
func lower(enum, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(enum, prefix)), "_", " ")
}

func cellState(h *v1.HostProgress) string {
	switch h.GetState() {
	case v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE:
		return "healthy"
	case v1.HostRolloutState_HOST_ROLLOUT_STATE_FAILED:
		return "failed"
	case v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING:
		return "updating"
	}
	return "pending"
}

func terminal(r *v1.Rollout) bool {
	switch r.GetState() {
	case v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, v1.RolloutState_ROLLOUT_STATE_FAILED, v1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
		return true
	}
	return false
}

// board reads the service, its newest rollout (or r, when the caller has
// it from a watch) and the hosts' reports, and builds the board.
func (s *Server) board(ctx context.Context, sess *session, svc string, r *v1.Rollout) (*boardView, error) {
	api := sess.api()
	gs, err := api.GetService(ctx, &v1.GetServiceRequest{Name: svc})
	if err != nil {
		return nil, err
	}
	if r == nil {
		gr, err := api.GetRollout(ctx, &v1.GetRolloutRequest{Service: svc})
		switch status.Code(err) {
		case codes.OK:
			r = gr.GetRollout()
		case codes.NotFound:
		default:
			return nil, err
		}
	}
	hosts, err := hostlist.All(ctx, api, svc) // this service's reports only
	if err != nil {
		return nil, err
	}
	return buildBoard(sess, gs.GetService(), r, hosts), nil
}

// buildBoard is the board of service svc with rollout r (nil: none yet).
func buildBoard(sess *session, svc *v1.Service, r *v1.Rollout, hosts []*v1.Host) *boardView {
	st := svc.GetStatus()
	b := &boardView{Service: svc.GetSpec().GetName(), Stable: st.GetStableVersion(), Frozen: st.GetFrozen(), CSRF: sess.csrf}
	deployer, admin := sess.can(tlsutil.RoleDeployer), sess.can(tlsutil.RoleAdmin)
	if admin && b.Frozen {
		b.Actions = append(b.Actions, actionView{Name: "unfreeze", Label: "Unfreeze"})
	}
	if r == nil {
		b.None = true
		return b
	}
	reports := map[string]*v1.ServiceReport{}
	for _, h := range hosts {
		for _, rep := range h.GetServices() {
			if rep.GetService() == b.Service {
				reports[h.GetId()] = rep
			}
		}
	}
	b.ID, b.What, b.Reason = r.GetId(), rollout.Describe(r), r.GetReason()
	b.InPlace = rollout.InPlaceNote(r)
	b.Compacted = rollout.CompactedNote(r)
	b.State = lower(r.GetState().String(), "ROLLOUT_STATE_")
	b.Paused, b.Rollback = r.GetPaused(), r.GetRollback()
	b.Config = rollout.IsConfig(r)
	waiting := int64(-1)
	if r.GetState() == v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL {
		waiting = 0
	}
	for _, w := range r.GetWaves() {
		wv := waveView{Index: w.GetIndex(), State: lower(w.GetState().String(), "WAVE_STATE_"), Waiting: w.GetWaitingApproval(), Approved: w.GetApproved(), Failures: w.GetFailures()}
		wv.Title = "wave " + itoa(int64(w.GetIndex()))
		if w.GetCanary() {
			wv.Title = "canary"
		}
		if w.GetWaitingApproval() && !terminal(r) {
			waiting = int64(w.GetIndex())
		}
		for _, h := range w.GetHosts() {
			c := cellView{Host: h.GetHostId(), State: cellState(h), Phase: lower(h.GetPhase().String(), "PHASE_"), Reason: h.GetReason(), Unknown: h.GetUnknown(), InPlace: h.GetInPlace()}
			if rep := reports[h.GetHostId()]; rep != nil {
				c.Version = rep.GetCurrentVersion()
				if c.Reason == "" && c.State == "failed" {
					c.Reason = rep.GetReason()
				}
				// The checks and analysis of the target; a failed host's
				// reason says why, and its checks are last good's again.
				if rep.GetTargetVersion() == r.GetToVersion() && c.State != "failed" {
					for _, ck := range rep.GetChecks() {
						c.Checks = append(c.Checks, checkView{Name: ck.GetName(), Detail: ck.GetDetail(), OK: ck.GetOk()})
					}
				}
			}
			if c.Phase == "unspecified" {
				c.Phase = ""
			}
			wv.Hosts = append(wv.Hosts, c)
		}
		b.Waves = append(b.Waves, wv)
	}
	b.Next = nextStep(r, b.Frozen, waiting)
	if deployer {
		if waiting >= 0 {
			b.Actions = append(b.Actions, actionView{Name: "approve", Label: approveLabel(waiting), Wave: uint32(waiting)})
		}
		if !terminal(r) {
			if r.GetPaused() {
				b.Actions = append(b.Actions, actionView{Name: "resume", Label: "Resume"})
			} else if r.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
				b.Actions = append(b.Actions, actionView{Name: "pause", Label: "Pause"})
			}
			b.Actions = append(b.Actions, actionView{Name: "abort", Label: "Abort", Reason: true, Danger: true})
		}
		b.Actions = append(b.Actions, actionView{Name: "rollback", Label: "Roll back", Danger: true})
	}
	return b
}

// nextStep is the answer to "what do I do now?" for rollout r.
func nextStep(r *v1.Rollout, frozen bool, waiting int64) string {
	switch {
	case waiting == 0:
		return "The rollout waits for approval to start: approve it, or release a newer version to replace it."
	case waiting > 0:
		return "Wave " + itoa(waiting) + " waits for approval: check the hosts already on " + r.GetToVersion() + ", then approve the wave (or abort)."
	case r.GetPaused() && !terminal(r):
		return "Paused: hosts already moving finish, nothing new starts. Resume, or abort."
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_PROGRESSING:
		return "Progressing: nothing to do; a failure stops it and takes the hosts that moved back."
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED && frozen:
		return "Failed, and the service is frozen: every host that moved went back to the last good release. Read the reasons below, fix the release, then an admin unfreezes the service and a new release rolls out."
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED:
		return "Failed: the hosts that moved went back to the last good release. Read the reasons below."
	case r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
		return "Done: every host runs " + r.GetToVersion() + "."
	}
	return ""
}

func approveLabel(wave int64) string {
	if wave == 0 {
		return "Approve"
	}
	return "Approve wave " + itoa(wave)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
