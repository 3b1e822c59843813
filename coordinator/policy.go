package coordinator

// Rollout policy for operations (issue 18): deploy windows (spec
// rollout.windows), coordinator-wide blackouts (fleetwave freeze, stored
// under /fleetwave/v1/blackouts/ and mirrored), service order (spec
// rollout.after), an admin's override of all three, and the plan preview.
// The engine decides (rollout.Holding, Gated, StepHeld, Preview); this file
// reads its inputs from the mirror and serves the calls.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Limits of blackouts.
const (
	// MaxBlackouts is how many blackouts are stored at most (ended ones
	// are pruned by the leader).
	MaxBlackouts = 100
	// MaxBlackoutLength is the longest blackout.
	MaxBlackoutLength = 90 * 24 * time.Hour
	// maxBlackoutReason bounds a blackout's reason.
	maxBlackoutReason = 256
)

// gates are the engine's inputs for svc's holds, from the mirror.
func (c *Coordinator) gates(svc *v1.Service) rollout.Gates {
	g := rollout.Gates{Blackouts: c.mirror.Blackouts()}
	g.Windows, g.WindowsErr = c.windows.parsed(svc)
	after := svc.GetSpec().GetRollout().GetAfter()
	if len(after) == 0 {
		return g
	}
	g.Upstream = map[string]*v1.Rollout{}
	waits := false
	for _, name := range after {
		vs, ok := c.mirror.Service(name)
		if !ok || vs.Val.GetStatus().GetRemoved() {
			waits = true
			continue
		}
		r := c.newestDeciding(name, vs.Val)
		g.Upstream[name] = r
		waits = waits || r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.GetRollback()
	}
	// Every service on a cycle waits for the next: look for one (a walk of
	// every service's after) only when this one waits.
	if waits {
		g.Cycle = rollout.AfterCycle(svc.GetSpec().GetName(), after, c.afterGraph())
	}
	return g
}

// windowCache holds each service's rollout.windows parsed (spec.ParseWindows
// resolves their time zones with time.LoadLocation, which reads the
// machine's zoneinfo files): parsed again only when a service's windows
// change, so the engine (rollout.Holding) evaluates them without I/O and
// the leader does not read zoneinfo on every step. One entry per service
// name with windows, at most maxCachedWindows (past it the cache starts
// again empty: services come and go). The zero value is ready.
type windowCache struct {
	mu sync.Mutex
	m  map[string]parsedWindows
}

// maxCachedWindows bounds windowCache's entries.
const maxCachedWindows = 4096

type parsedWindows struct {
	src []*v1.DeployWindow
	ws  []spec.Window
	err error
}

// parsed is svc's windows parsed, and the parse error.
func (wc *windowCache) parsed(svc *v1.Service) ([]spec.Window, error) {
	src := svc.GetSpec().GetRollout().GetWindows()
	if len(src) == 0 {
		return nil, nil
	}
	name := svc.GetSpec().GetName()
	wc.mu.Lock()
	defer wc.mu.Unlock()
	if p, ok := wc.m[name]; ok && sameWindows(p.src, src) {
		return p.ws, p.err
	}
	ws, err := spec.ParseWindows(src)
	if _, ok := wc.m[name]; wc.m == nil || (!ok && len(wc.m) >= maxCachedWindows) {
		wc.m = map[string]parsedWindows{}
	}
	wc.m[name] = parsedWindows{src: src, ws: ws, err: err}
	return ws, err
}

func sameWindows(a, b []*v1.DeployWindow) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// newestDeciding is the service's newest rollout that names a release
// (rollout.Deciding), nil if none.
func (c *Coordinator) newestDeciding(name string, svc *v1.Service) *v1.Rollout {
	vr, ok := c.mirror.Rollout(name, svc.GetStatus().GetLastRolloutId())
	for ok && !rollout.Deciding(vr.Val) {
		id := rollout.PrevID(vr.Val)
		if id == "" {
			return nil
		}
		vr, ok = c.mirror.Rollout(name, id)
	}
	if !ok {
		return nil
	}
	return vr.Val
}

// decide is what rollout.Decide says of svc now (holds not applied), from
// the mirror, as the leader's reconcile asks it.
func (c *Coordinator) decide(name string, svc *v1.Service) rollout.Decision {
	dr := c.newestDeciding(name, svc)
	var created int64
	if dr != nil {
		if vr, ok := c.mirror.Rollout(name, dr.GetId()); ok {
			created = vr.Created
		}
	}
	rels := c.mirror.Releases(name)
	releases := make([]rollout.Release, len(rels))
	for i, r := range rels {
		releases[i] = rollout.Release{Version: r.Val.GetVersion(), Created: r.Created}
	}
	return rollout.Decide(svc, dr, created, releases)
}

// waiting says why svc's newest release or spec does not roll out now
// ("" when nothing waits), for rollout status and release create.
func (c *Coordinator) waiting(name string, svc *v1.Service, now time.Time) string {
	d := c.decide(name, svc)
	d = rollout.Gated(d, c.holding(svc, d.Version, now))
	if d.Action != rollout.ActionWait {
		return ""
	}
	what := d.Version
	if d.Config {
		what = rollout.SpecName(svc.GetSpecRevision())
	}
	if what == "" {
		return d.Reason
	}
	return what + " waits: " + d.Reason
}

// holding is what holds svc's rollouts to version at now.
func (c *Coordinator) holding(svc *v1.Service, version string, now time.Time) rollout.Hold {
	return rollout.Holding(svc, c.gates(svc), version, now)
}

// afterGraph is the rollout.after of every service in the mirror that is
// not removed (a removed one holds nothing: gates), by name.
func (c *Coordinator) afterGraph() map[string][]string {
	g := map[string][]string{}
	for _, vs := range c.mirror.Services() {
		if a := vs.Val.GetSpec().GetRollout().GetAfter(); len(a) > 0 && !vs.Val.GetStatus().GetRemoved() {
			g[vs.Val.GetSpec().GetName()] = a
		}
	}
	return g
}

// afterCycle refuses a spec whose rollout.after closes a cycle with the
// services stored, naming it. The caller syncs the mirror first.
func (c *Coordinator) afterCycle(sp *v1.ServiceSpec) error {
	after := sp.GetRollout().GetAfter()
	if len(after) == 0 {
		return nil
	}
	if cyc := rollout.AfterCycle(sp.GetName(), after, c.afterGraph()); cyc != nil {
		return fmt.Errorf("rollout.after: %v closes a cycle: %s (each would wait for the other forever)", after, strings.Join(cyc, " → "))
	}
	return nil
}

func (o *operator) PlanRollout(ctx context.Context, req *v1.PlanRolloutRequest) (*v1.PlanRolloutResponse, error) {
	name := req.GetService()
	if err := spec.CheckName("service", name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if v := req.GetVersion(); v != "" {
		if err := spec.CheckVersion("version", v); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	vs, ok := o.c.mirror.Service(name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "service: no service %q", name)
	}
	svc := proto.Clone(vs.Val).(*v1.Service)
	if sp := req.GetSpec(); sp != nil {
		if sp.GetName() != name {
			return nil, status.Errorf(codes.InvalidArgument, "spec.name: %q is not the service %q", sp.GetName(), name)
		}
		if err := spec.Validate(sp); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if err := o.c.afterCycle(sp); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		// As if applied: a newer spec revision, unless it is the live spec.
		if !proto.Equal(sp, svc.GetSpec()) {
			svc.Spec = sp
			svc.SpecRevision++
		}
	}
	now := time.Now()
	d := o.c.decide(name, svc)
	version := req.GetVersion()
	switch {
	case version != "":
		if _, ok := o.c.mirror.Release(name, version); !ok {
			return nil, status.Errorf(codes.NotFound, "version: service %s has no release %q (create it first; plan previews releases that exist)", name, version)
		}
	case d.Version != "":
		version = d.Version
	case svc.GetStatus().GetStableVersion() != "":
		version = svc.GetStatus().GetStableVersion()
	default:
		return nil, status.Errorf(codes.FailedPrecondition, "version: service %s has no release to plan", name)
	}
	h := o.c.holding(svc, version, now)
	d = rollout.Gated(d, h)
	var hosts []rollout.Host
	for _, host := range o.c.mirror.Hosts() {
		hosts = append(hosts, rollout.Host{ID: host.GetId(), Labels: host.GetLabels()})
	}
	obs := func(host string) rollout.Observation {
		return o.c.observation(host, "") // no report: a preview plans, it does not step
	}
	p := rollout.Preview(svc, version, hosts, obs, d, h, now)
	held := h.Reason()
	if st := svc.GetStatus(); st.GetFrozen() {
		held = strings.TrimPrefix(held+"; ", "; ") + fmt.Sprintf("service is frozen after a failed rollout (%s): fleetwave service unfreeze %s", st.GetFrozenReason(), name)
	}
	return &v1.PlanRolloutResponse{Rollout: p.Rollout, UnknownHosts: p.Unknown, Decision: p.Decision.String(), Held: held, SpecChanges: p.Rollout.GetSpecChanges()}, nil
}

func (o *operator) CreateBlackout(ctx context.Context, req *v1.CreateBlackoutRequest) (*v1.CreateBlackoutResponse, error) {
	now := time.Now()
	if req.GetFrom() == nil || req.GetTo() == nil {
		return nil, status.Error(codes.InvalidArgument, "from, to: both must be set")
	}
	if err := req.GetFrom().CheckValid(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "from: %v", err)
	}
	if err := req.GetTo().CheckValid(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "to: %v", err)
	}
	from, to := req.GetFrom().AsTime(), req.GetTo().AsTime()
	switch {
	case !to.After(from):
		return nil, status.Errorf(codes.InvalidArgument, "to: %s is not after from %s", to.UTC().Format(time.RFC3339), from.UTC().Format(time.RFC3339))
	case !to.After(now):
		return nil, status.Errorf(codes.InvalidArgument, "to: %s has passed", to.UTC().Format(time.RFC3339))
	case to.Sub(from) > MaxBlackoutLength:
		return nil, status.Errorf(codes.InvalidArgument, "to: the blackout lasts %s, more than %s", to.Sub(from), MaxBlackoutLength)
	case strings.TrimSpace(req.GetReason()) == "":
		return nil, status.Error(codes.InvalidArgument, "reason: must be set (it is shown wherever the blackout holds a rollout)")
	case len(req.GetReason()) > maxBlackoutReason:
		return nil, status.Errorf(codes.InvalidArgument, "reason: %d bytes, more than %d", len(req.GetReason()), maxBlackoutReason)
	}
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, status.Errorf(codes.Internal, "blackout id: %v", err)
	}
	b := &v1.Blackout{Id: "bo-" + hex.EncodeToString(id[:]), From: req.GetFrom(), To: req.GetTo(), Reason: req.GetReason(),
		CreatedBy: caller(ctx), CreatedAt: timestamppb.New(now)}
	rev, err := o.c.store.PutBlackout(ctx, b, MaxBlackouts)
	if err != nil {
		if errors.Is(err, store.ErrLimit) {
			return nil, status.Error(codes.ResourceExhausted, err.Error())
		}
		return nil, grpcErr(err)
	}
	if err := o.c.mirror.WaitRev(ctx, rev); err != nil {
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("blackout", b.GetId()).Time("from", from).Time("to", to).Str("by", b.GetCreatedBy()).Str("reason", b.GetReason()).Msg("blackout created")
	return &v1.CreateBlackoutResponse{Blackout: b}, nil
}

func (o *operator) ListBlackouts(ctx context.Context, _ *v1.ListBlackoutsRequest) (*v1.ListBlackoutsResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	bs := o.c.mirror.Blackouts()
	sort.SliceStable(bs, func(i, j int) bool { return bs[i].GetFrom().AsTime().Before(bs[j].GetFrom().AsTime()) })
	return &v1.ListBlackoutsResponse{Blackouts: bs}, nil
}

func (o *operator) DeleteBlackout(ctx context.Context, req *v1.DeleteBlackoutRequest) (*v1.DeleteBlackoutResponse, error) {
	id := req.GetId()
	if id == "" || len(id) > 64 || strings.ContainsAny(id, "/ ") {
		return nil, status.Errorf(codes.InvalidArgument, "id: %q is not a blackout id (see fleetwave freeze list)", id)
	}
	rev, err := o.c.store.DeleteBlackout(ctx, id)
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := o.c.mirror.WaitRev(ctx, rev); err != nil {
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("blackout", id).Str("by", caller(ctx)).Msg("blackout deleted")
	return &v1.DeleteBlackoutResponse{}, nil
}

func (o *operator) OverrideHold(ctx context.Context, req *v1.OverrideHoldRequest) (*v1.OverrideHoldResponse, error) {
	if err := spec.CheckName("service", req.GetService()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	_, svc, err := o.c.leader.call(ctx, leaderReq{service: req.GetService(), op: opOverride, actor: caller(ctx), reason: req.GetReason()})
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1.OverrideHoldResponse{Service: svc}, nil
}

// override records an admin's override for the service's newest release,
// then reconciles so the release starts before the caller reads.
func (l *leader) override(ctx context.Context, fence *store.Fence, req leaderReq) (*v1.Service, error) {
	vs, ok := l.c.mirror.Service(req.service)
	if !ok {
		return nil, fmt.Errorf("service %q: %w", req.service, store.ErrNotFound)
	}
	var newest store.Versioned[*v1.Release]
	for _, r := range l.c.mirror.Releases(req.service) {
		if r.Created > newest.Created {
			newest = r
		}
	}
	now := time.Now()
	o, err := rollout.Override(vs.Val, newest.Val.GetVersion(), req.reason, req.actor, now)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	svc := proto.Clone(vs.Val).(*v1.Service)
	if svc.Status == nil {
		svc.Status = &v1.ServiceStatus{}
	}
	svc.Status.HoldOverride = o
	last, _ := l.c.mirror.Rollout(req.service, svc.GetStatus().GetLastRolloutId())
	ev := event(last.Val, req.service, rollout.EventHoldOverridden, req.actor, rollout.HoldOverridden(o), now)
	rev, err := l.c.store.PutService(ctx, fence, svc, vs.Rev, ev)
	if err != nil {
		return nil, err
	}
	if err := l.c.mirror.WaitRev(ctx, rev); err != nil {
		return nil, err
	}
	l.c.log.Info().Str("service", req.service).Str("version", o.GetVersion()).Str("by", req.actor).Str("reason", req.reason).Msg("hold overridden")
	if _, err := l.reconcile(ctx, fence, req.service); err != nil {
		return nil, err
	}
	after, _ := l.c.mirror.Service(req.service)
	return after.Val, nil
}

// pruneBlackouts drops the blackouts that have ended (the leader, with the
// audit log's pruning).
func (l *leader) pruneBlackouts(ctx context.Context, fence *store.Fence, now time.Time) {
	n, err := l.c.store.PruneBlackouts(ctx, fence, now)
	if err != nil {
		l.c.log.Warn().Err(err).Msg("pruning ended blackouts failed")
		return
	}
	if n > 0 {
		l.c.log.Info().Int("pruned", n).Msg("ended blackouts pruned")
	}
}
