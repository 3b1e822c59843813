package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Agent upgrades (`fleetwave agent upgrade`). The agent binary is the
// reserved service spec.AgentService: its spec selects every host and
// carries the upgrade's rollout policy, its releases are agent binaries,
// and its rollouts are planned, stepped, failed and recorded by the same
// engine as any service's (canary, waves, failure budget, progress
// deadline, history, watch). What differs is on the way to the hosts and
// back:
//
//   - The hub sends a host its agent assignment apart from the service
//     assignments (ConnectResponse.agent), so an agent that does not know
//     it never takes the agent for a service; a removal of it is never
//     sent (an agent is not removed).
//   - The agent reports its upgrade as the service spec.AgentService: HEALTHY
//     with current_version the version it runs once the new agent is back
//     and accepted (DONE in the rollout), FAILED with the reason when the
//     new agent did not come back and the old one took over again.
//   - A failed agent rollout concludes as any: the service is frozen and
//     the hosts it moved are assigned the stable agent release; the first
//     agent rollout has none, so its hosts keep the agent they run (the
//     rollout halts). One agent rollout runs at a time.

// UpgradeAgents implements OperatorService.UpgradeAgents (admin,
// leader-only).
func (o *operator) UpgradeAgents(ctx context.Context, req *v1.UpgradeAgentsRequest) (*v1.UpgradeAgentsResponse, error) {
	if req.GetRelease() == nil {
		return nil, status.Error(codes.InvalidArgument, "release: missing")
	}
	rel := proto.Clone(req.GetRelease()).(*v1.Release)
	if rel.GetService() != "" && rel.GetService() != spec.AgentService {
		return nil, status.Errorf(codes.InvalidArgument, "release.service: %q, want %q or nothing", rel.GetService(), spec.AgentService)
	}
	rel.Service = spec.AgentService
	if err := spec.ValidateRelease(rel); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkAgentVersion("release.version", rel.GetVersion()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	pol, err := agentPolicy(req.GetPolicy())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	if vs, ok := o.c.mirror.Service(spec.AgentService); ok {
		if id := vs.Val.GetStatus().GetLastRolloutId(); id != "" {
			if r, ok := o.c.mirror.Rollout(spec.AgentService, id); ok && !rollout.Terminal(r.Val) {
				return nil, status.Errorf(codes.FailedPrecondition, "agent rollout %s (%s) is %s: one agent rollout at a time; wait for it (fleetwave rollout watch %s) or abort it (fleetwave rollout abort %s)",
					id, rollout.Describe(r.Val), strings.ToLower(strings.TrimPrefix(r.Val.GetState().String(), "ROLLOUT_STATE_")), spec.AgentService, spec.AgentService)
			}
		}
	}
	// The policy first (the spec of the reserved service), then the
	// release, whose rollout the leader plans with it.
	ap, err := o.c.store.ApplySpec(ctx, spec.AgentSpec(pol), time.Now(), rollout.Recreate)
	if errors.Is(err, store.ErrBeingDeleted) {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := o.c.mirror.WaitRev(ctx, ap.Rev); err != nil {
		return nil, grpcErr(err)
	}
	cr, err := o.createRelease(ctx, rel)
	if err != nil {
		return nil, err
	}
	resp := &v1.UpgradeAgentsResponse{Release: cr.GetRelease(), Rollout: cr.GetRollout(), Note: cr.GetNote()}
	o.c.log.Info().Str("version", rel.GetVersion()).Str("rollout", cr.GetRollout().GetId()).Str("by", caller(ctx)).Msg("agent upgrade")
	return resp, nil
}

// agentPolicy checks an agent rollout's policy: a service's, but it starts
// at once (no manual mode, no approval of each wave) and never queues (one
// agent rollout at a time is checked before).
func agentPolicy(p *v1.RolloutPolicy) (*v1.RolloutPolicy, error) {
	if p == nil {
		p = &v1.RolloutPolicy{}
	}
	if err := spec.ValidateRolloutPolicy(p); err != nil {
		return nil, err
	}
	switch {
	case p.GetMode() != "" && p.GetMode() != spec.ModeAuto:
		return nil, fmt.Errorf("policy.mode: %q: an agent rollout starts at once (%s)", p.GetMode(), spec.ModeAuto)
	case p.GetApproveEachWave():
		return nil, errors.New("policy.approve_each_wave: true: an agent rollout does not wait for approvals")
	case p.GetOnNewRelease() != "":
		return nil, fmt.Errorf("policy.on_new_release: %q: one agent rollout runs at a time", p.GetOnNewRelease())
	}
	out := proto.Clone(p).(*v1.RolloutPolicy)
	out.Mode = spec.ModeAuto
	return out, nil
}
