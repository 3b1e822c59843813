package coordinator

import (
	"context"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/stats"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// ClusterStatus shows the registered coordinators (each on its etcd session
// lease, so a dead one drops out within a lease TTL), the rollout leader,
// and every etcd member with its health as seen from this coordinator.
func (o *operator) ClusterStatus(ctx context.Context, _ *v1.ClusterStatusRequest) (*v1.ClusterStatusResponse, error) {
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	resp := &v1.ClusterStatusResponse{AnsweredBy: o.c.cfg.Name}
	leader, err := o.c.leaderName(ctx)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp.Leader = leader
	counts := o.c.mirror.ConnCounts()
	for _, ci := range o.c.mirror.Coordinators() {
		ci = proto.Clone(ci).(*v1.CoordinatorInfo)
		ci.Leader = ci.GetName() == leader
		ci.Agents = uint32(counts[ci.GetName()])
		resp.Coordinators = append(resp.Coordinators, ci)
	}
	resp.EtcdMembers = o.c.etcdMembers(ctx)
	return resp, nil
}

// etcdMembers lists the etcd cluster's members and asks each for its
// status (with a short deadline: a dead member must not hold the answer).
func (c *Coordinator) etcdMembers(ctx context.Context) []*v1.EtcdMember {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ml, err := c.cli.MemberList(lctx)
	if err != nil {
		return []*v1.EtcdMember{{Name: "?", Error: "member list: " + err.Error()}}
	}
	out := make([]*v1.EtcdMember, len(ml.Members))
	var wg sync.WaitGroup
	for i, m := range ml.Members {
		em := &v1.EtcdMember{Id: m.GetID(), Name: m.GetName(), ClientUrls: m.GetClientURLs(), PeerUrls: m.GetPeerURLs(), Learner: m.GetIsLearner()}
		out[i] = em
		if len(m.GetClientURLs()) == 0 {
			em.Error = "not started (no client URL)"
			continue
		}
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			st, err := c.cli.Status(sctx, m.GetClientURLs()[0])
			if err != nil {
				em.Error = err.Error()
				return
			}
			em.Healthy = len(st.Errors) == 0
			if !em.Healthy {
				em.Error = st.Errors[0]
			}
			em.Leader = st.Leader == m.GetID()
			em.DbSizeBytes = st.DbSize
			em.RaftTerm = st.RaftTerm
			em.RaftIndex = st.RaftIndex
		})
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// GetStats computes lead time and the DORA figures from the releases and
// rollouts in etcd (via the mirror), so every coordinator gives the same
// answer and the figures survive restarts and leader changes.
func (o *operator) GetStats(ctx context.Context, req *v1.GetStatsRequest) (*v1.GetStatsResponse, error) {
	if n := req.GetService(); n != "" {
		if err := spec.CheckName("service", n); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if s := req.GetSince(); s != nil && (s.CheckValid() != nil || s.AsDuration() < 0) {
		return nil, status.Errorf(codes.InvalidArgument, "since: %v is not a positive duration", s)
	}
	if req.GetDaily() && req.GetSince().AsDuration() > stats.MaxDailySince {
		// A count per day per service: bounded.
		return nil, status.Errorf(codes.InvalidArgument, "since: %v with daily, at most %v (%d days)", req.GetSince().AsDuration(), stats.MaxDailySince, stats.MaxDailySince/(24*time.Hour))
	}
	if err := o.sync(ctx); err != nil {
		return nil, grpcErr(err)
	}
	var hist []stats.ServiceHistory
	for _, vs := range o.c.mirror.Services() {
		name := vs.Val.GetSpec().GetName()
		if req.GetService() != "" && name != req.GetService() {
			continue
		}
		h := stats.ServiceHistory{Service: name, Rollouts: o.c.mirror.Rollouts(name)}
		for _, vr := range o.c.mirror.Releases(name) {
			h.Releases = append(h.Releases, vr.Val)
		}
		hist = append(hist, h)
	}
	if req.GetService() != "" && len(hist) == 0 {
		return nil, status.Errorf(codes.NotFound, "service: %q not found", req.GetService())
	}
	return stats.Compute(hist, time.Now(), req.GetSince().AsDuration(), req.GetDaily()), nil
}
