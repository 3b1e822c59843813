package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Metadata keys of a call one coordinator forwards to the leader.
const (
	mdForwardedBy = "fleetwave-forwarded-by"
	mdActor       = "fleetwave-actor"
)

// leaderMethods are the operator calls only the rollout leader serves, with
// their response types. A coordinator that does not lead forwards them.
var leaderMethods = map[string]func() proto.Message{
	v1.OperatorService_CreateRelease_FullMethodName:   func() proto.Message { return new(v1.CreateReleaseResponse) },
	v1.OperatorService_ApproveRollout_FullMethodName:  func() proto.Message { return new(v1.ApproveRolloutResponse) },
	v1.OperatorService_UnfreezeService_FullMethodName: func() proto.Message { return new(v1.UnfreezeServiceResponse) },
	v1.OperatorService_PauseRollout_FullMethodName:    func() proto.Message { return new(v1.PauseRolloutResponse) },
	v1.OperatorService_ResumeRollout_FullMethodName:   func() proto.Message { return new(v1.ResumeRolloutResponse) },
	v1.OperatorService_AbortRollout_FullMethodName:    func() proto.Message { return new(v1.AbortRolloutResponse) },
	v1.OperatorService_Rollback_FullMethodName:        func() proto.Message { return new(v1.RollbackResponse) },
	v1.OperatorService_DeleteService_FullMethodName:   func() proto.Message { return new(v1.DeleteServiceResponse) },
	v1.OperatorService_UpgradeAgents_FullMethodName:   func() proto.Message { return new(v1.UpgradeAgentsResponse) },
	v1.OperatorService_OverrideHold_FullMethodName:    func() proto.Message { return new(v1.OverrideHoldResponse) },
}

// forwarder sends leader-only operator calls to the leader, and keeps the
// connections to peer coordinators (also used to fetch artifacts).
type forwarder struct {
	c     *Coordinator
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newForwarder(c *Coordinator) *forwarder {
	return &forwarder{c: c, conns: map[string]*grpc.ClientConn{}}
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, cc := range f.conns {
		_ = cc.Close()
	}
	f.conns = map[string]*grpc.ClientConn{}
}

// conn returns a (shared) client connection to a peer coordinator.
func (f *forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cc, ok := f.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(f.c.peerCreds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, fmt.Errorf("dial coordinator %s: %w", addr, err)
	}
	f.conns[addr] = cc
	return cc, nil
}

// leaderName returns the name of the elected rollout leader ("" = none).
func (c *Coordinator) leaderName(ctx context.Context) (string, error) {
	e := concurrency.NewElection(c.session(), store.ElectionPrefix)
	resp, err := e.Leader(ctx)
	if errors.Is(err, concurrency.ErrElectionNoLeader) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("find the rollout leader: %w", err)
	}
	return string(resp.Kvs[0].Value), nil
}

// unary is a server interceptor: on a coordinator that does not lead, a
// leader-only call goes to the leader (once: a forwarded call is never
// forwarded again), so any coordinator serves every operator call.
func (f *forwarder) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	mk, ok := leaderMethods[info.FullMethod]
	p, _ := principalFrom(ctx)
	if !ok || f.c.leader.leading.Load() || p.kind == "forwarded" {
		return handler(ctx, req)
	}
	var name string
	var err error
	// Right after a leader dies there may be none for a lease TTL: wait a
	// little for the next one rather than fail the call.
	deadline := time.Now().Add(f.c.cfg.LeaseTTL + 5*time.Second)
	for {
		name, err = f.c.leaderName(ctx)
		if err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		if name != "" || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if name == "" || name == f.c.cfg.Name {
		return handler(ctx, req)
	}
	peer, ok := f.c.mirror.Coordinator(name)
	if !ok || peer.GetAddress() == "" {
		return nil, status.Errorf(codes.Unavailable, "rollout leader %s is not registered (yet); retry", name)
	}
	cc, err := f.conn(peer.GetAddress())
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	out := metadata.AppendToOutgoingContext(ctx, mdForwardedBy, f.c.cfg.Name, mdActor, caller(ctx), mdRole, p.role)
	resp := mk()
	if err := cc.Invoke(out, info.FullMethod, req, resp); err != nil {
		f.c.log.Debug().Err(err).Str("method", info.FullMethod).Str("leader", name).Msg("forwarded call failed")
		return nil, err
	}
	return resp, nil
}
