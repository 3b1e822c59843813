package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fleetwave/fleetwave/coordinator/store"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestStreamGoroutinesReturnToBaseline: after agents' streams end in every
// way a stream ends (the agent goes away, a newer stream of its host
// replaces it, a host reconnecting in a tight loop, a message the hub
// refuses), the coordinator's goroutines return to what they were before
// (no handler, sender or AfterFunc left behind), and the last stream of the
// host that reconnected in a loop is the one left open.
func TestStreamGoroutinesReturnToBaseline(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 10 * time.Second,
		Limits: Limits{MaxStreamsPerCaller: 1000}})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// The connection is up (its goroutines belong to the baseline).
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()

	open := func(sctx context.Context, host string, wait bool) (v1.AgentService_ConnectClient, error) {
		s, err := v1.NewAgentServiceClient(cc).Connect(sctx)
		if err != nil {
			return nil, err
		}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: host}}}); err != nil {
			return nil, err
		}
		if wait {
			if _, err := s.Recv(); err != nil {
				return nil, fmt.Errorf("%s: first set: %w", host, err)
			}
		}
		return s, nil
	}
	const n = 30
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for i := range n {
		wg.Go(func() { // the agent goes away
			sctx, scancel := context.WithCancel(ctx)
			defer scancel()
			if _, err := open(sctx, fmt.Sprintf("gone-%d", i), true); err != nil {
				errs <- err
			}
		})
		wg.Go(func() { // replaced by a newer stream, then gone
			sctx, scancel := context.WithCancel(ctx)
			defer scancel()
			host := fmt.Sprintf("replaced-%d", i)
			old, err := open(sctx, host, true)
			if err != nil {
				errs <- err
				return
			}
			if _, err := open(sctx, host, true); err != nil {
				errs <- err
				return
			}
			for { // a set queued before it was replaced may come first
				if _, err := old.Recv(); err != nil {
					break
				}
			}
		})
		wg.Go(func() { // a second hello: refused
			sctx, scancel := context.WithCancel(ctx)
			defer scancel()
			s, err := open(sctx, fmt.Sprintf("refused-%d", i), true)
			if err != nil {
				errs <- err
				return
			}
			_ = s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "x"}}})
			for { // a set queued before the refusal may come first
				if _, err := s.Recv(); err != nil {
					break
				}
			}
		})
	}
	// One host reconnecting in a tight loop: each stream opened without
	// waiting for the one before to be served or to end. Exactly one stays
	// open (the one whose handler started last), every other ends.
	var loop []context.CancelFunc
	var ended atomic.Int32
	for range n {
		sctx, scancel := context.WithCancel(ctx)
		loop = append(loop, scancel)
		s, err := open(sctx, "looping", false)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for {
				if _, err := s.Recv(); err != nil {
					if sctx.Err() == nil {
						ended.Add(1)
					}
					return
				}
			}
		})
	}
	testkit.EventuallyErr(t, 30*time.Second, "every stream of the looping host but one ended", func() error {
		if got := ended.Load(); got != n-1 {
			return fmt.Errorf("%d of %d ended", got, n)
		}
		return nil
	})
	for _, c := range loop {
		c()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "goroutines back to the baseline", func() error {
		// Slack for the coordinator's own timers and etcd's client, not
		// for streams: a leak of one per stream is over 100.
		if got := runtime.NumGoroutine(); got > base+10 {
			return fmt.Errorf("%d goroutines, %d before %d streams", got, base, 4*n)
		}
		return nil
	})
}

// TestBlockedSenderEndsWithItsStream: agents that never read while sets
// larger than the flow-control window are sent to them (their sender
// goroutine blocked in Send) go away or are replaced by a newer stream:
// every handler and sender ends, and the coordinator's goroutines return to
// what they were.
func TestBlockedSenderEndsWithItsStream(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 10 * time.Second})
	// Fixed 64 KiB windows: with gRPC's dynamic ones (BDP estimation) the
	// client's windows grow to megabytes while it reads nothing, the
	// sets all go through, and no sender blocks.
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	// A set of about 300 KiB: over the 64 KiB a reader that reads nothing
	// lets through.
	big := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"},
		Run:     &v1.RunSpec{Command: []string{"./app"}, Env: map[string]string{"BIG": strings.Repeat("x", 300<<10)}},
		Rollout: &v1.RolloutPolicy{NoCanary: true, Waves: []uint32{100}, MaxParallel: 100}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: big}); err != nil {
		t.Fatal(err)
	}
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	const n = 10
	var cancels []context.CancelFunc
	for i := range n {
		sctx, scancel := context.WithCancel(ctx)
		cancels = append(cancels, scancel)
		s, err := v1.NewAgentServiceClient(cc).Connect(sctx)
		if err != nil {
			t.Fatal(err)
		}
		hello := &v1.Hello{HostId: fmt.Sprintf("h%d", i), Labels: map[string]string{"role": "web"}}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
			t.Fatal(err)
		}
		// It never reads.
	}
	testkit.EventuallyErr(t, 30*time.Second, "every agent connected", func() error {
		resp, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return err
		}
		c := 0
		for _, h := range resp.GetHosts() {
			if h.GetConnected() {
				c++
			}
		}
		if c != n {
			return fmt.Errorf("%d of %d connected", c, n)
		}
		return nil
	})
	// A release: every host is to install it, with the big spec.
	art := upload(t, ctx, cc, []byte("artifact v1"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, ctx, op, "every host updating", func(r *v1.Rollout) bool {
		updating, _ := countUpdating(r)
		return updating == n
	})
	// A newer release: each stream's next set waits behind the first,
	// which its reader never let through (gRPC takes one message over
	// the stream's write quota; the next blocks in Send).
	art2 := upload(t, ctx, cc, []byte("artifact v2"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v2", Artifact: art2}}); err != nil {
		t.Fatal(err)
	}
	// A sender blocked in Send per stream (counted by its stack: the
	// process's total against the baseline was off by one when a
	// goroutine of the baseline, etcd's or gRPC's, ended meanwhile, and
	// counted the client's goroutines as senders).
	testkit.EventuallyErr(t, 30*time.Second, "a sender per stream blocked", func() error {
		if got := goroutinesIn("coordinator.(*hub).sendLoop"); got < n {
			return fmt.Errorf("%d senders for %d streams", got, n)
		}
		return nil
	})
	// Half go away; the other half are replaced by a stream that reads.
	for i := range n {
		if i%2 == 0 {
			cancels[i]()
			continue
		}
		sctx, scancel := context.WithCancel(ctx)
		s, err := v1.NewAgentServiceClient(cc).Connect(sctx)
		if err != nil {
			t.Fatal(err)
		}
		hello := &v1.Hello{HostId: fmt.Sprintf("h%d", i), Labels: map[string]string{"role": "web"}}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
			t.Fatal(err)
		}
		m, err := s.Recv()
		if err != nil || len(m.GetAssignments()) != 1 || m.GetAssignments()[0].GetRelease().GetVersion() != "v2" {
			t.Fatalf("the newer stream of h%d: %v, assignments %d", i, err, len(m.GetAssignments()))
		}
		scancel()
		cancels[i]()
	}
	testkit.EventuallyErr(t, 30*time.Second, "goroutines back to the baseline", func() error {
		if got := runtime.NumGoroutine(); got > base+10 {
			return fmt.Errorf("%d goroutines, %d before", got, base)
		}
		if s, h := goroutinesIn("coordinator.(*hub).sendLoop"), goroutinesIn("coordinator.(*hub).Connect"); s != 0 || h != 0 {
			return fmt.Errorf("%d senders and %d handlers left", s, h)
		}
		return nil
	})
}

// goroutinesIn counts this process's goroutines with fn on their stack.
func goroutinesIn(fn string) int {
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 2); err != nil {
		return 0
	}
	n := 0
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, fn+"(") {
			n++
		}
	}
	return n
}
