package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fakeAgent answers every assignment at once with a healthy report, so a
// rollout's duration is the control plane's own overhead.
func fakeAgent(ctx context.Context, cc *grpc.ClientConn, id string, connected *sync.WaitGroup) error {
	s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		return err
	}
	hello := &v1.Hello{HostId: id, Labels: map[string]string{"role": "web", "zone": []string{"a", "b", "c"}[len(id)%3]}}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return err
	}
	first := true
	gens := map[string]int64{}
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		if first {
			connected.Done()
			first = false
		}
		for _, a := range m.GetAssignments() {
			if gens[a.GetService()] == a.GetGeneration() {
				continue
			}
			gens[a.GetService()] = a.GetGeneration()
			v := a.GetRelease().GetVersion()
			r := &v1.ServiceReport{Service: a.GetService(), Generation: a.GetGeneration(), Phase: v1.Phase_PHASE_HEALTHY,
				CurrentVersion: v, TargetVersion: v, LastGoodVersion: v}
			if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
				return err
			}
		}
	}
}

// BenchmarkRolloutOverhead measures, for a fleet of fake agents on real
// gRPC streams against a coordinator with a real etcd, the time from
// CreateRelease to the rollout succeeding: canary 1, waves 50% and 100%,
// max_parallel = fleet size, no bake, agents that are healthy at once.
func BenchmarkRolloutOverhead(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			cc := startCoordinator(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			op := v1.NewOperatorServiceClient(cc)
			spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
				Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: uint32(n), Bake: durationpb.New(0)}}
			if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
				b.Fatal(err)
			}
			var connected sync.WaitGroup
			connected.Add(n)
			for i := range n {
				go func() { _ = fakeAgent(ctx, cc, fmt.Sprintf("h%05d", i), &connected) }()
			}
			art := upload(b, ctx, cc, []byte("artifact"))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if i == 0 {
					connected.Wait()
				}
				rel := &v1.Release{Service: "web", Version: fmt.Sprintf("v%d", i), Artifact: art}
				if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: rel}); err != nil {
					b.Fatal(err)
				}
				w, err := op.WatchRollout(ctx, &v1.WatchRolloutRequest{Service: "web"})
				if err != nil {
					b.Fatal(err)
				}
				var last *v1.Rollout
				for {
					m, err := w.Recv()
					if err != nil {
						break
					}
					last = m.GetRollout()
				}
				if last.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || last.GetToVersion() != rel.GetVersion() {
					b.Fatalf("rollout %s: %v %s", rel.GetVersion(), last.GetState(), last.GetReason())
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/rollout")
		})
	}
}

// BenchmarkFailureReaction measures the time from a host's failing report
// reaching the coordinator (sent on its stream) to the rollout being FAILED
// (seen by an operator's WatchRollout): the target is under 1 s.
func BenchmarkFailureReaction(b *testing.B) {
	cc := startCoordinator(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	spec := &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./app"}}, Rollout: &v1.RolloutPolicy{Bake: durationpb.New(0)}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		b.Fatal(err)
	}
	s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1"}}}); err != nil {
		b.Fatal(err)
	}
	art := upload(b, ctx, cc, []byte("artifact"))
	var total time.Duration
	for i := 0; b.Loop(); i++ {
		v := fmt.Sprintf("v%d", i)
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: v, Artifact: art}}); err != nil {
			b.Fatal(err)
		}
		var gen int64
		for gen == 0 {
			m, err := s.Recv()
			if err != nil {
				b.Fatal(err)
			}
			for _, a := range m.GetAssignments() {
				if a.GetRelease().GetVersion() == v {
					gen = a.GetGeneration()
				}
			}
		}
		w, err := op.WatchRollout(ctx, &v1.WatchRolloutRequest{Service: "web"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Recv(); err != nil { // the rollout as it is now
			b.Fatal(err)
		}
		sent := time.Now()
		rep := &v1.ServiceReport{Service: "web", Generation: gen, Phase: v1.Phase_PHASE_REVERTED, TargetVersion: v, Reason: "bench"}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: rep}}); err != nil {
			b.Fatal(err)
		}
		for {
			m, err := w.Recv()
			if err != nil {
				b.Fatalf("watch ended before the rollout failed: %v", err)
			}
			if m.GetRollout().GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED {
				break
			}
		}
		total += time.Since(sent)
		if _, err := op.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: "web"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/reaction")
}
