package sim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// startCoordinator runs a real coordinator with an embedded etcd in this
// process and returns its address.
func startCoordinator(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg := coordinator.Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), LeaseTTL: 2 * time.Second,
		Ready: func(a string) { addrc <- a }}
	go func() { done <- coordinator.Run(ctx, cfg, zerolog.Nop()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("coordinator: %v", err)
		}
	})
	select {
	case addr := <-addrc:
		return addr
	case err := <-done:
		t.Fatalf("coordinator exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("coordinator not serving after 60s")
	}
	return ""
}

// operator is an operator's connection to a coordinator.
type operator struct {
	cc  *grpc.ClientConn
	op  v1.OperatorServiceClient
	art *v1.Artifact
}

func dialOperator(ctx context.Context, addr string) (*operator, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	o := &operator{cc: cc, op: v1.NewOperatorServiceClient(cc)}
	if o.art, err = upload(ctx, cc, []byte("simulated release")); err != nil {
		cc.Close()
		return nil, err
	}
	return o, nil
}

func upload(ctx context.Context, cc *grpc.ClientConn, data []byte) (*v1.Artifact, error) {
	us, err := v1.NewArtifactServiceClient(cc).Upload(ctx)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	if err := us.Send(&v1.UploadRequest{Chunk: data}); err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	ur, err := us.CloseAndRecv()
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	return &v1.Artifact{Sha256: ur.GetSha256(), Size: ur.GetSize()}, nil
}

// simSpec is a service for every host with the given waves, no bake.
func simSpec(name string, canary uint32, waves []uint32, maxParallel uint32) *v1.ServiceSpec {
	return &v1.ServiceSpec{Name: name, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: canary, Waves: waves, MaxParallel: maxParallel, Bake: durationpb.New(0)}}
}

func (o *operator) apply(ctx context.Context, spec *v1.ServiceSpec) error {
	if _, err := o.op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		return fmt.Errorf("apply %s: %w", spec.GetName(), err)
	}
	return nil
}

func (o *operator) release(ctx context.Context, service, version string) (*v1.CreateReleaseResponse, error) {
	resp, err := o.op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: service, Version: version, Artifact: o.art}})
	if err != nil {
		return nil, fmt.Errorf("release %s %s: %w", service, version, err)
	}
	return resp, nil
}

// waitRollout polls the service's newest rollout until cond holds.
func (o *operator) waitRollout(ctx context.Context, service string, cond func(*v1.Rollout) bool) (*v1.Rollout, error) {
	var last *v1.Rollout
	for {
		resp, err := o.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: service})
		if err == nil {
			last = resp.GetRollout()
			if cond(last) {
				return last, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rollout of %s: condition not met (last %v %s): %w", service, last.GetState(), last.GetReason(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitStable polls the service (a small record) until its stable release
// is version, then returns its newest rollout. Polling the rollout itself
// (hundreds of KB at 10,000 hosts, assembled from its parts) every 20 ms
// loaded the coordinator it timed; a rollout that ends otherwise is
// noticed by a poll of it once a second.
func (o *operator) waitStable(ctx context.Context, service, version string) (*v1.Rollout, error) {
	for i := 1; ; i++ {
		s, err := o.op.GetService(ctx, &v1.GetServiceRequest{Name: service})
		if err == nil && s.GetService().GetStatus().GetStableVersion() == version {
			break
		}
		if i%50 == 0 {
			if r, err := o.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: service}); err == nil && ended(version)(r.GetRollout()) {
				return r.GetRollout(), nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: stable release not %s: %w", service, version, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	r, err := o.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: service})
	if err != nil {
		return nil, fmt.Errorf("%s: newest rollout: %w", service, err)
	}
	return r.GetRollout(), nil
}

func ended(to string) func(*v1.Rollout) bool {
	return func(r *v1.Rollout) bool {
		return r.GetToVersion() == to && rollout.Terminal(r)
	}
}
