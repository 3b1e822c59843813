package coordinator

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// A signed rollback statement travels from the Rollback call to every
// assignment of the rollback's target (agents with trusted keys need it to
// go back below their floor); one for another release is refused.
func TestSignedRollbackReachesAssignments(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc := startCoordinator(t)
	op := v1.NewOperatorServiceClient(cc)
	sp := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: 2, Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
		t.Fatal(err)
	}
	// Two agents that answer healthy and keep what they were assigned.
	var mu sync.Mutex
	got := map[string]*v1.Assignment{}
	for _, id := range []string{"h1", "h2"} {
		s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: id, Labels: map[string]string{"role": "web"}}}}); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				m, err := s.Recv()
				if err != nil {
					return
				}
				for _, as := range m.GetAssignments() {
					mu.Lock()
					got[id] = as
					mu.Unlock()
					v := as.GetRelease().GetVersion()
					_ = s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: &v1.ServiceReport{Service: "web", Generation: as.GetGeneration(),
						Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: v, TargetVersion: v}}})
				}
			}
		}()
	}
	waitHosts(t, ctx, op, 2)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rels := map[string]*v1.Release{}
	for seq, v := range []string{"v1", "v2"} {
		rel := &v1.Release{Service: "web", Version: v, Artifact: upload(t, ctx, cc, []byte("artifact "+v))}
		if rel.Signed, err = signing.Sign(signing.Manifest(rel, sp, uint64(seq+1), now, now.Add(time.Hour)), priv); err != nil {
			t.Fatal(err)
		}
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: rel}); err != nil {
			t.Fatal(err)
		}
		rels[v] = rel
		waitRollout(t, ctx, op, v+" succeeded", func(r *v1.Rollout) bool {
			return r.GetToVersion() == v && r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		})
	}
	statement := func(rel *v1.Release) *v1.SignedRollback {
		sr, err := signing.SignRollback(signing.Rollback(rel, 2, "", now, now.Add(time.Hour)), priv)
		if err != nil {
			t.Fatal(err)
		}
		return sr
	}
	resigned := proto.Clone(rels["v1"]).(*v1.Release)
	if resigned.Signed, err = signing.Sign(signing.Manifest(resigned, sp, 9, now, now.Add(time.Hour)), priv); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		req  *v1.RollbackRequest
		code codes.Code
		want string
	}{
		"no target":              {&v1.RollbackRequest{Service: "web", Signed: statement(rels["v1"])}, codes.InvalidArgument, "needs to_version"},
		"statement for another":  {&v1.RollbackRequest{Service: "web", ToVersion: "v1", Signed: statement(rels["v2"])}, codes.InvalidArgument, `the statement is for "web" "v2"`},
		"another manifest of v1": {&v1.RollbackRequest{Service: "web", ToVersion: "v1", Signed: statement(resigned)}, codes.FailedPrecondition, "names manifest sha256"},
		"garbage":                {&v1.RollbackRequest{Service: "web", ToVersion: "v1", Signed: &v1.SignedRollback{Statement: []byte{0xff}}}, codes.InvalidArgument, "signed:"},
	} {
		if _, err := op.Rollback(ctx, tc.req); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s containing %q", name, err, tc.code, tc.want)
		}
	}
	sr := statement(rels["v1"])
	rb, err := op.Rollback(ctx, &v1.RollbackRequest{Service: "web", ToVersion: "v1", Signed: sr})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(rb.GetRollout().GetSignedRollback(), sr) {
		t.Fatalf("rollout carries %v", rb.GetRollout().GetSignedRollback())
	}
	testkit.Eventually(t, 30*time.Second, "both hosts assigned v1 with the statement", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range []string{"h1", "h2"} {
			if as := got[id]; as.GetRelease().GetVersion() != "v1" || !proto.Equal(as.GetRollback(), sr) {
				return false
			}
		}
		return true
	})
}
