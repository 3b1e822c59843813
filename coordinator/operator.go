package coordinator

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// operator implements OperatorService over the store and the leader loop.
type operator struct {
	v1.UnimplementedOperatorServiceServer
	c *Coordinator
}

func grpcErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, store.ErrNotLeader):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrArtifactPruned), errors.Is(err, store.ErrTombstoned):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

// sync: see Coordinator.syncMirror.
func (o *operator) sync(ctx context.Context) error { return o.c.syncMirror(ctx) }

func (o *operator) ApplyService(ctx context.Context, req *v1.ApplyServiceRequest) (*v1.ApplyServiceResponse, error) {
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "spec: missing")
	}
	if err := spec.Validate(req.GetSpec()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// The cycle check reads the mirror: sync it, or a spec applied just
	// before through another coordinator is not seen.
	if len(req.GetSpec().GetRollout().GetAfter()) > 0 {
		if err := o.sync(ctx); err != nil {
			return nil, grpcErr(err)
		}
	}
	if err := o.c.afterCycle(req.GetSpec()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var oldSelector map[string]string
	if vs, ok := o.c.mirror.Service(req.GetSpec().GetName()); ok {
		oldSelector = vs.Val.GetSpec().GetSelector()
	}
	ap, err := o.c.store.ApplySpec(ctx, req.GetSpec(), time.Now(), rollout.Recreate)
	if errors.Is(err, store.ErrBeingDeleted) {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	if !ap.Created && !ap.Unchanged {
		o.c.selectorMoved(ctx, ap.Service, oldSelector, caller(ctx)) // remove.go
	}
	name, svc := req.GetSpec().GetName(), ap.Service
	o.c.log.Info().Str("service", name).Bool("created", ap.Created).Bool("unchanged", ap.Unchanged).
		Int64("spec_revision", svc.GetSpecRevision()).Msg("service applied")
	resp := &v1.ApplyServiceResponse{Service: svc, Created: ap.Created, Unchanged: ap.Unchanged}
	if ap.Created || ap.Unchanged {
		return resp, nil
	}
	// The leader decides what the spec does (a config rollout, recorded,
	// waits): let it see the spec, then ask, as CreateRelease does. The spec
	// is stored either way, so from here on errors are only logged.
	if err := o.c.mirror.WaitRev(ctx, ap.Rev); err != nil {
		o.c.log.Warn().Err(err).Str("service", name).Msg("spec stored; the rollout leader acts on it")
		resp.Note = "spec stored; the rollout leader acts on it"
		return resp, nil
	}
	r, after, err := o.c.leader.call(ctx, leaderReq{service: name, op: opReconcile})
	if err != nil {
		o.c.log.Warn().Err(err).Str("service", name).Msg("spec stored; the rollout leader acts on it")
		resp.Note = "spec stored; the rollout leader acts on it"
		return resp, nil
	}
	resp.Service = after
	resp.Rollout, resp.Note = specOutcome(after, r, svc.GetSpecRevision())
	return resp, nil
}

// specOutcome says what spec revision rev of svc did, after the leader
// reconciled: the rollout that carries it, or a note.
func specOutcome(svc *v1.Service, r *v1.Rollout, rev int64) (*v1.Rollout, string) {
	st := svc.GetStatus()
	spec := rollout.SpecName(rev)
	switch {
	case svc.GetSpecRevision() != rev:
		return nil, fmt.Sprintf("%s stored; %s was applied since", spec, rollout.SpecName(svc.GetSpecRevision()))
	case r != nil && !rollout.Terminal(r) && r.GetSpecRevision() == rev:
		return r, ""
	case r.GetLeft() && !rollout.Terminal(r):
		return r, fmt.Sprintf("%s: removal %s stops and removes the service in waves on the %d host(s) the selector leaves out; the others keep running (what else the spec changes rolls out after it)",
			spec, r.GetId(), rollout.RolloutHosts(r))
	case r != nil && r.GetSpecRevision() == rev && !r.GetRemove():
		// Its rollout ended already (a canary that failed at once), before
		// this answer: that rollout, not what the end left (a freeze).
		return r, fmt.Sprintf("%s: rollout %s already ended %s", spec, r.GetId(),
			strings.ToLower(strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_")))
	case st.GetStableSpecRevision() == rev:
		return nil, fmt.Sprintf("%s recorded without a rollout: it changes nothing hosts run", spec)
	case st.GetStableVersion() == "":
		return nil, fmt.Sprintf("%s stored; the first release rolls out with it", spec)
	case st.GetFrozen():
		return nil, fmt.Sprintf("%s waits: service %s is frozen after a failed rollout (%s); after a look, run: fleetwave service unfreeze %s",
			spec, svc.GetSpec().GetName(), st.GetFrozenReason(), svc.GetSpec().GetName())
	case r != nil && !rollout.Terminal(r):
		return nil, fmt.Sprintf("%s waits for rollout %s (%s, %s) to end", spec, r.GetId(), rollout.Describe(r),
			strings.ToLower(strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_")))
	}
	return nil, spec + " stored"
}

func (o *operator) ListServices(ctx context.Context, _ *v1.ListServicesRequest) (*v1.ListServicesResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	resp := &v1.ListServicesResponse{}
	for _, vs := range o.c.mirror.Services() {
		resp.Services = append(resp.Services, vs.Val)
	}
	return resp, nil
}

func (o *operator) GetService(ctx context.Context, req *v1.GetServiceRequest) (*v1.GetServiceResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	vs, ok := o.c.mirror.Service(req.GetName())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "service %q not found", req.GetName())
	}
	return &v1.GetServiceResponse{Service: vs.Val}, nil
}

func (o *operator) CreateRelease(ctx context.Context, req *v1.CreateReleaseRequest) (*v1.CreateReleaseResponse, error) {
	rel := proto.Clone(req.GetRelease()).(*v1.Release)
	if rel == nil {
		return nil, status.Error(codes.InvalidArgument, "release: missing")
	}
	if err := spec.ValidateRelease(rel); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if rel.GetService() == spec.AgentService {
		return nil, status.Errorf(codes.InvalidArgument, "release.service: %q is reserved for agent binaries: use fleetwave agent upgrade", rel.GetService())
	}
	return o.createRelease(ctx, rel)
}

// createRelease stores a valid release and asks the leader to start its
// rollout (CreateRelease, UpgradeAgents).
func (o *operator) createRelease(ctx context.Context, rel *v1.Release) (*v1.CreateReleaseResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	if vs, ok := o.c.mirror.Service(rel.GetService()); !ok {
		return nil, status.Errorf(codes.NotFound, "release.service: service %q not found (apply its spec first)", rel.GetService())
	} else if st := vs.Val.GetStatus(); st.GetRemoved() {
		return nil, status.Errorf(codes.NotFound, "release.service: service %q is deleted (service apply creates it anew)", rel.GetService())
	} else if st.GetRemoving() {
		return nil, status.Errorf(codes.FailedPrecondition, "release.service: service %q is being deleted (rollout %s)", rel.GetService(), st.GetLastRolloutId())
	}
	// An existing version is refused before its artifact is looked at
	// (fetched from the other coordinators, its file's time set, which
	// would keep any upload from pruning), unless this restores it.
	old, restore := o.prunedTwin(rel)
	_, exists := o.c.mirror.Release(rel.GetService(), rel.GetVersion())
	if exists && !restore {
		return nil, grpcErr(fmt.Errorf("release %s/%s: %w", rel.GetService(), rel.GetVersion(), store.ErrExists))
	}
	// So is the version of a deleted release (store.CreateRelease checks
	// again, in its transaction).
	if !exists {
		if err := o.c.store.CheckReleaseTombstone(ctx, rel); err != nil {
			return nil, grpcErr(err)
		}
	}
	if rel.GetArtifact().GetUrl() == "" {
		size, err := o.c.arts.Ensure(ctx, rel.GetArtifact().GetSha256())
		if err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "release.artifact.sha256: %s is not in the artifact store (upload it first): %v", rel.GetArtifact().GetSha256(), err)
		}
		if size != rel.GetArtifact().GetSize() {
			return nil, status.Errorf(codes.InvalidArgument, "release.artifact.size: %d, but the stored artifact has %d bytes", rel.GetArtifact().GetSize(), size)
		}
		// The file's time to now: pruneArtifactFiles, which judges files
		// by their age, does not delete it on what it knew before this
		// release named it (an upload no release named, or a pruned
		// release's file, kept ArtifactUploadGrace from now).
		if err := o.c.arts.Touch(rel.GetArtifact().GetSha256()); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "release.artifact.sha256: %s left the artifact store meanwhile (upload it again): %v", rel.GetArtifact().GetSha256(), err)
		}
	}
	if restore {
		return o.restoreRelease(ctx, old)
	}
	rel.CreatedAt = timestamppb.Now()
	rel.ArtifactPrunedAt, rel.ArtifactRestoredAt = nil, nil // the coordinators' to set
	// Who created a release is who the coordinator authenticated, never
	// what the request says (the CLI sends $USER@host: logged as claimed).
	claimed := rel.GetCreatedBy()
	rel.CreatedBy = caller(ctx)
	rev, err := o.c.store.CreateRelease(ctx, rel)
	if err != nil {
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("service", rel.GetService()).Str("version", rel.GetVersion()).Str("sha256", rel.GetArtifact().GetSha256()).Str("by", rel.GetCreatedBy()).Str("claimed_by", claimed).Msg("release created")
	resp := &v1.CreateReleaseResponse{Release: rel}
	// The leader decides from its mirror: let it see the release first. The
	// release is stored either way, so from here on errors are only logged.
	if err := o.c.mirror.WaitRev(ctx, rev); err != nil {
		o.c.log.Warn().Err(err).Str("service", rel.GetService()).Msg("release stored; rollout will start on the leader")
		resp.Note = "release stored; the rollout leader starts its rollout"
		return resp, nil
	}
	r, svc, err := o.c.leader.call(ctx, leaderReq{service: rel.GetService(), op: opReconcile})
	var held string // a deploy window, a blackout or after (policy.go)
	if err == nil {
		held = o.c.holding(svc, rel.GetVersion(), time.Now()).Reason()
	}
	switch {
	case err != nil:
		o.c.log.Warn().Err(err).Str("service", rel.GetService()).Msg("release stored; rollout will start on the leader")
		resp.Note = "release stored; the rollout leader starts its rollout"
	case r != nil && r.GetToVersion() == rel.GetVersion():
		resp.Rollout = r
	case svc.GetStatus().GetFrozen():
		resp.Note = fmt.Sprintf("no rollout started: service %s is frozen after a failed rollout (%s); after a look, run: fleetwave service unfreeze %s",
			rel.GetService(), svc.GetStatus().GetFrozenReason(), rel.GetService())
	case held != "":
		resp.Note = "no rollout started: " + held
	case r != nil && !rollout.Terminal(r):
		resp.Note = fmt.Sprintf("queued: rollout %s to %s is %s; when it ends the newest release rolls out",
			r.GetId(), r.GetToVersion(), strings.ToLower(strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_")))
	default:
		resp.Note = "no rollout started"
	}
	return resp, nil
}

// prunedTwin is the stored release rel restores: the same service and
// version, its artifact marked pruned, and rel the same release (artifact
// sha256, size and URL, commit and commit time; its signature, if any,
// the one stored). Anything else about an existing version is answered
// as before (store.ErrExists).
func (o *operator) prunedTwin(rel *v1.Release) (store.Versioned[*v1.Release], bool) {
	for _, vr := range o.c.mirror.Releases(rel.GetService()) {
		old := vr.Val
		if old.GetVersion() != rel.GetVersion() {
			continue
		}
		same := proto.Equal(old.GetArtifact(), rel.GetArtifact()) && old.GetCommit() == rel.GetCommit() &&
			proto.Equal(old.GetCommitTime(), rel.GetCommitTime()) && (rel.GetSigned() == nil || proto.Equal(old.GetSigned(), rel.GetSigned()))
		return vr, old.GetArtifactPrunedAt() != nil && same
	}
	return store.Versioned[*v1.Release]{}, false
}

// restoreRelease clears the prune mark of a release whose artifact is in
// this coordinator's store again (createRelease checked it and set its
// time to now, so that no coordinator deletes it on the mark it may still
// see): the record is kept as it was (its creation, its signature over
// the same manifest), artifact_restored_at set, the other coordinators
// copy the file again (replicateLoop), and rollouts and rollbacks to it
// are allowed again.
func (o *operator) restoreRelease(ctx context.Context, old store.Versioned[*v1.Release]) (*v1.CreateReleaseResponse, error) {
	d := old.Val.GetArtifact().GetSha256()
	restored := proto.Clone(old.Val).(*v1.Release)
	was := fmtPruned(restored)
	restored.ArtifactPrunedAt, restored.ArtifactRestoredAt = nil, timestamppb.Now()
	rev, err := o.c.store.UpdateRelease(ctx, nil, restored, old.Rev)
	if err != nil {
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("service", restored.GetService()).Str("version", restored.GetVersion()).Str("sha256", d).Str("by", caller(ctx)).
		Str("pruned_at", was).Msg("release artifact restored")
	if err := o.c.mirror.WaitRev(ctx, rev); err != nil {
		return nil, grpcErr(err)
	}
	return &v1.CreateReleaseResponse{Release: restored, Note: fmt.Sprintf("restored: the artifact of %s %s, pruned at %s, is stored again (the release record is unchanged); no rollout started (fleetwave rollback %s --to %s rolls back to it)",
		restored.GetService(), restored.GetVersion(), was, restored.GetService(), restored.GetVersion())}, nil
}

// caller names who made a call, for events and the audit log: the
// principal the auth interceptor established.
func caller(ctx context.Context) string {
	if p, ok := principalFrom(ctx); ok {
		return p.ident
	}
	if pr, ok := peer.FromContext(ctx); ok {
		return "peer:" + pr.Addr.String()
	}
	return "unknown"
}

func (o *operator) ListReleases(ctx context.Context, req *v1.ListReleasesRequest) (*v1.ListReleasesResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	if _, ok := o.c.mirror.Service(req.GetService()); !ok {
		return nil, status.Errorf(codes.NotFound, "service %q not found", req.GetService())
	}
	resp := &v1.ListReleasesResponse{}
	for _, r := range o.c.mirror.Releases(req.GetService()) {
		resp.Releases = append(resp.Releases, r.Val)
	}
	return resp, nil
}

func (o *operator) rollout(service, id string) (*v1.Rollout, error) {
	vs, ok := o.c.mirror.Service(service)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "service %q not found", service)
	}
	if id == "" {
		id = vs.Val.GetStatus().GetLastRolloutId()
		if id == "" {
			return nil, status.Errorf(codes.NotFound, "service %q has no rollout yet", service)
		}
	}
	vr, ok := o.c.mirror.Rollout(service, id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "rollout %s of service %q not found", id, service)
	}
	return vr.Val, nil
}

func (o *operator) GetRollout(ctx context.Context, req *v1.GetRolloutRequest) (*v1.GetRolloutResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	var waiting string
	if vs, ok := o.c.mirror.Service(req.GetService()); ok && req.GetId() == "" {
		waiting = o.c.waiting(req.GetService(), vs.Val, time.Now())
	}
	r, err := o.rollout(req.GetService(), req.GetId())
	if err != nil {
		if waiting != "" && status.Code(err) == codes.NotFound {
			return &v1.GetRolloutResponse{Waiting: waiting}, nil
		}
		return nil, err
	}
	return &v1.GetRolloutResponse{Rollout: r, Waiting: waiting}, nil
}

func (o *operator) WatchRollout(req *v1.WatchRolloutRequest, stream v1.OperatorService_WatchRolloutServer) error {
	ctx := stream.Context()
	ch, unsub := o.c.mirror.Subscribe()
	defer unsub()
	if err := o.sync(ctx); err != nil {
		return grpcErr(err)
	}
	id := req.GetId()
	var last *v1.Rollout
	for {
		r, err := o.rollout(req.GetService(), id)
		if err != nil {
			return err
		}
		id = r.GetId() // follow the rollout we started with
		// The mirror replaces a rollout's value whenever it changes (values
		// are shared, never changed in place): the same pointer is the same
		// rollout. (A comparison of contents cost 7.5 ms per change and
		// stream at 10,000 hosts: a review.)
		if last == nil || last != r {
			if err := stream.Send(&v1.WatchRolloutResponse{Rollout: r}); err != nil {
				return err
			}
			last = r
		}
		if rollout.Terminal(r) {
			return nil
		}
		select {
		case <-ctx.Done():
			return grpcErr(ctx.Err())
		case <-ch:
		}
	}
}

func (o *operator) ApproveRollout(ctx context.Context, req *v1.ApproveRolloutRequest) (*v1.ApproveRolloutResponse, error) {
	if err := spec.CheckName("service", req.GetService()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	r, _, err := o.c.leader.call(ctx, leaderReq{service: req.GetService(), op: opApprove, actor: caller(ctx), wave: req.GetWave()})
	if err != nil {
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNotLeader) {
			return nil, grpcErr(err)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	o.c.log.Info().Str("service", req.GetService()).Str("rollout", r.GetId()).Str("by", caller(ctx)).Msg("rollout approved")
	return &v1.ApproveRolloutResponse{Rollout: r}, nil
}

// MaxListHosts is the most hosts one ListHosts answers (its limit): at
// 10,000 hosts with ten services each the whole fleet was 14.3 MiB, and
// with more services or long failure reasons over the 64 MiB a client
// takes; the CLI and the dashboard read it in pages (listHostsPage).
const MaxListHosts = 10000

func (o *operator) ListHosts(ctx context.Context, req *v1.ListHostsRequest) (*v1.ListHostsResponse, error) {
	if svc := req.GetService(); svc != "" {
		if err := spec.CheckName("service", svc); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if a := req.GetAfter(); a != "" {
		if err := spec.CheckHostID("after", a); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if req.GetLimit() > MaxListHosts {
		return nil, status.Errorf(codes.InvalidArgument, "limit: %d, at most %d", req.GetLimit(), MaxListHosts)
	}
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	resp := &v1.ListHostsResponse{}
	for _, h := range o.c.mirror.Hosts() {
		if req.GetAfter() != "" && h.GetId() <= req.GetAfter() {
			continue
		}
		if req.GetLimit() > 0 && len(resp.Hosts) == int(req.GetLimit()) {
			resp.Next = resp.Hosts[len(resp.Hosts)-1].GetId()
			break
		}
		h2 := proto.Clone(h).(*v1.Host)
		h2.Connected = o.c.mirror.Connected(h.GetId())
		h2.Coordinator = o.c.mirror.ConnectedVia(h.GetId())
		if o.c.gossip != nil {
			h2.Gossip = o.c.gossip.State(h.GetId())
		}
		// A service removed from the host is no longer one of its services.
		for _, r := range o.c.mirror.Reports(h.GetId()) {
			if r.GetPhase() != v1.Phase_PHASE_REMOVED && (req.GetService() == "" || r.GetService() == req.GetService()) {
				h2.Services = append(h2.Services, r)
			}
		}
		resp.Hosts = append(resp.Hosts, h2)
	}
	return resp, nil
}

func (o *operator) UnfreezeService(ctx context.Context, req *v1.UnfreezeServiceRequest) (*v1.UnfreezeServiceResponse, error) {
	if err := spec.CheckName("name", req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	_, svc, err := o.c.leader.call(ctx, leaderReq{service: req.GetName(), op: opUnfreeze, actor: caller(ctx)})
	if err != nil {
		return nil, grpcErr(err)
	}
	o.c.log.Info().Str("service", req.GetName()).Str("by", caller(ctx)).Msg("service unfrozen")
	return &v1.UnfreezeServiceResponse{Service: svc}, nil
}

// rolloutOp runs an operator decision about a service's rollout on the
// leader; errors that are the caller's (wrong state, bad target) are
// FailedPrecondition.
func (o *operator) rolloutOp(ctx context.Context, service string, req leaderReq) (*v1.Rollout, error) {
	if err := spec.CheckName("service", service); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	req.service, req.actor = service, caller(ctx)
	r, _, err := o.c.leader.call(ctx, req)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNotLeader) ||
			errors.Is(err, store.ErrConflict) || ctx.Err() != nil {
			return nil, grpcErr(err)
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return r, nil
}

func (o *operator) PauseRollout(ctx context.Context, req *v1.PauseRolloutRequest) (*v1.PauseRolloutResponse, error) {
	r, err := o.rolloutOp(ctx, req.GetService(), leaderReq{op: opPause})
	if err != nil {
		return nil, err
	}
	return &v1.PauseRolloutResponse{Rollout: r}, nil
}

func (o *operator) ResumeRollout(ctx context.Context, req *v1.ResumeRolloutRequest) (*v1.ResumeRolloutResponse, error) {
	r, err := o.rolloutOp(ctx, req.GetService(), leaderReq{op: opResume})
	if err != nil {
		return nil, err
	}
	return &v1.ResumeRolloutResponse{Rollout: r}, nil
}

func (o *operator) AbortRollout(ctx context.Context, req *v1.AbortRolloutRequest) (*v1.AbortRolloutResponse, error) {
	if len(req.GetReason()) > 1024 {
		return nil, status.Errorf(codes.InvalidArgument, "reason: %d bytes, over 1024", len(req.GetReason()))
	}
	r, err := o.rolloutOp(ctx, req.GetService(), leaderReq{op: opAbort, reason: req.GetReason()})
	if err != nil {
		return nil, err
	}
	return &v1.AbortRolloutResponse{Rollout: r}, nil
}

func (o *operator) Rollback(ctx context.Context, req *v1.RollbackRequest) (*v1.RollbackResponse, error) {
	if v := req.GetToVersion(); v != "" {
		if err := spec.CheckVersion("to_version", v); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if sr := req.GetSigned(); sr != nil {
		// Checked here for what it names (the agents verify its signature).
		if req.GetToVersion() == "" {
			return nil, status.Error(codes.InvalidArgument, "signed: a signed rollback needs to_version, the release its statement names")
		}
		st, err := signing.ParseRollback(sr)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "signed: %v", err)
		}
		if st.GetService() != req.GetService() || st.GetToVersion() != req.GetToVersion() {
			return nil, status.Errorf(codes.InvalidArgument, "signed: the statement is for %q %q, not %q %q",
				st.GetService(), st.GetToVersion(), req.GetService(), req.GetToVersion())
		}
	}
	r, err := o.rolloutOp(ctx, req.GetService(), leaderReq{op: opRollback, version: req.GetToVersion(), signed: req.GetSigned()})
	if err != nil {
		return nil, err
	}
	return &v1.RollbackResponse{Rollout: r}, nil
}

func (o *operator) ListEvents(ctx context.Context, req *v1.ListEventsRequest) (*v1.ListEventsResponse, error) {
	if err := spec.CheckName("service", req.GetService()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if id := req.GetRolloutId(); id != "" && !rolloutIDRE.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "rollout_id: %q is not a rollout id (six digits, e.g. 000001)", id)
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = defaultListEvents
	}
	if limit > store.MaxListEvents {
		return nil, status.Errorf(codes.InvalidArgument, "limit: %d, at most %d (WatchEvents streams any number)", limit, store.MaxListEvents)
	}
	evs, truncated, err := o.c.store.ListEvents(ctx, req.GetService(), req.GetRolloutId(), limit)
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1.ListEventsResponse{Events: evs, Truncated: truncated}, nil
}

// defaultListEvents is how many events ListEvents returns unless asked
// for another number.
const defaultListEvents = 1000

var (
	rolloutIDRE = regexp.MustCompile(`^[0-9]{6,}$`)
	tokenIDRE   = regexp.MustCompile(`^[0-9a-f]{12}$`)
)

// WatchEvents sends the recorded events (after since_revision), oldest
// first, then with follow every new one as it is written, until the client
// goes. Each carries its etcd revision. A write's events share one revision
// (a step's thousands, in batches) and come in the same order from the
// listing and the watch: a client that reconnects after the last event of
// a revision passes that revision; one whose stream broke inside a
// revision passes the revision before and skips the events of it it saw
// (the dashboard's live page does).
func (o *operator) WatchEvents(req *v1.WatchEventsRequest, stream v1.OperatorService_WatchEventsServer) error {
	if n := req.GetService(); n != "" {
		if err := spec.CheckName("service", n); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if id := req.GetRolloutId(); id != "" {
		if req.GetService() == "" {
			return status.Error(codes.InvalidArgument, "rollout_id: needs service")
		}
		if !rolloutIDRE.MatchString(id) {
			return status.Errorf(codes.InvalidArgument, "rollout_id: %q is not a rollout id (six digits, e.g. 000001)", id)
		}
	}
	if req.GetSinceRevision() < 0 {
		return status.Errorf(codes.InvalidArgument, "since_revision: %d is negative", req.GetSinceRevision())
	}
	// The header now, before any event: the client knows its stream was
	// accepted (the CLI resumes only a followed stream that was) even
	// while no event comes.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	ctx := stream.Context()
	prefix := store.EventsPrefixFor(req.GetService(), req.GetRolloutId())
	errSend := errors.New("send")
	var sendErr error
	at, err := o.c.store.EventsSince(ctx, prefix, req.GetSinceRevision(), func(e store.RevEvent) error {
		if sendErr = stream.Send(&v1.WatchEventsResponse{Event: e.Event, Revision: e.Rev}); sendErr != nil {
			return errSend
		}
		return nil
	})
	if errors.Is(err, errSend) {
		return sendErr
	}
	if err != nil {
		return grpcErr(err)
	}
	if !req.GetFollow() {
		return nil
	}
	return o.followEvents(ctx, stream, prefix, at+1)
}

// errSlowReader ends an event watch whose reader fell too far behind.
var errSlowReader = errors.New("slow reader")

// followEvents sends the events written under prefix from revision from on.
// The etcd watch runs ahead of the sends through a queue of
// Limits.StreamSendBuffer events: a reader that falls further behind loses
// its connection (limits.go) instead of the coordinator buffering for it
// (etcd's client would buffer without bound). The bound is checked when a
// revision begins: a revision's events (one transaction's, at most what
// etcd takes in one request; a write's batches make thousands of events
// one revision) are queued whole, so a reader that keeps up is not cut off
// for a large write, and the queue holds at most StreamSendBuffer events
// and one revision's.
func (o *operator) followEvents(ctx context.Context, stream v1.OperatorService_WatchEventsServer, prefix string, from int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lim := o.c.cfg.Limits.StreamSendBuffer
	var (
		mu      sync.Mutex
		pending []store.RevEvent
		lastRev int64 // of the last event queued
	)
	ready := make(chan struct{}, 1)
	werr := make(chan error, 1)
	go func() {
		werr <- o.c.store.WatchEvents(wctx, prefix, from, func(e store.RevEvent) error {
			mu.Lock()
			if len(pending) < lim || e.Rev == lastRev {
				pending = append(pending, e)
				lastRev = e.Rev
				mu.Unlock()
				select {
				case ready <- struct{}{}:
				default:
				}
				return nil
			}
			mu.Unlock()
			p, _ := principalFrom(ctx)
			o.c.limits.dropSlowReader(ctx, limitSendBuffer, opSvc+"WatchEvents", p, fmt.Sprintf("%d events waiting to be sent", lim))
			return errSlowReader
		})
	}()
	done := func(err error) error {
		switch {
		case errors.Is(err, errSlowReader):
			return status.Errorf(codes.ResourceExhausted, "WatchEvents: %d events waiting to be sent, the limit (--%s %d); connection closed", lim, limitSendBuffer, lim)
		case ctx.Err() != nil:
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Error(codes.Unavailable, err.Error())
	}
	for {
		select {
		case err := <-werr:
			return done(err)
		default:
		}
		mu.Lock()
		var e store.RevEvent
		ok := len(pending) > 0
		if ok {
			e = pending[0]
			pending[0] = store.RevEvent{}
			pending = pending[1:]
		}
		mu.Unlock()
		if ok {
			if err := stream.Send(&v1.WatchEventsResponse{Event: e.Event, Revision: e.Rev}); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ready:
		case err := <-werr:
			return done(err)
		}
	}
}
