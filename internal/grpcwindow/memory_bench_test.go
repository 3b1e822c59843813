package grpcwindow_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
)

// Knobs of BenchmarkIdleStreamMemory (environment variables).
const (
	// idleConnsEnv: connections per sub-benchmark (default 1000).
	idleConnsEnv = "FLEETWAVE_IDLE_STREAM_CONNS"
	// idleSettleEnv: how long all streams stay idle before the measurement
	// (a Go duration, default 6s: longer than the clients' 5 s keepalive,
	// so every connection has answered a PING, as an agent's does).
	idleSettleEnv = "FLEETWAVE_IDLE_STREAM_SETTLE"
)

// The client process's parameters (set by the benchmark for
// TestIdleStreamClients, which does nothing without them).
const (
	idleHelperEnv = "FLEETWAVE_IDLE_STREAM_HELPER" // the server's address
	idleNEnv      = "FLEETWAVE_IDLE_STREAM_N"
	idlePKIEnv    = "FLEETWAVE_IDLE_STREAM_PKI" // the directory of tlsutil.Init's files; unset: plaintext
)

// idleReady is the line the client process prints once all its streams
// have had their answer.
const idleReady = "IDLE-STREAMS-READY"

const idleMethod = "/fleetwave.bench.Idle/Connect"

// BenchmarkIdleStreamMemory measures what an idle bidi stream costs a gRPC
// server, by itself: one connection per stream, as agents connect to a
// coordinator, with the coordinator's kind of server (TLS 1.3 with client
// certificates over loopback, ReadBufferSize(0), grpcwindow's windows, its
// keepalive enforcement and limits), but none of Fleetwave's code on the
// server side. The clients (grpc-go, as agents dial: grpcwindow's options,
// 5 s keepalive) run in a separate process, a re-execution of this test
// binary (TestIdleStreamClients), so that only the server's goroutines,
// stacks, heap and RSS are counted. Each stream carries one small message
// each way, then idles.
//
// After all streams have idled for the settle time, the server forces
// collections and reports, per connection, the difference from its own
// figures before the clients connected: goroutines, goroutine stack memory
// (stack-B: the stacks allocated, /memory/classes/heap/stacks; stackused-B:
// the part of them in use at the last collection, /gc/scan/stack), live
// heap (/gc/heap/live), heap in use (spans, as MemStats.HeapInuse) and RSS
// (/proc/self/status VmRSS). stackstart-B is the size the runtime starts
// new goroutines' stacks at when the measurement is taken (an average of the
// stacks it scans, GODEBUG=adaptivestackstart): a goroutine started at 4 KiB
// that never needed more stays at 4 KiB where one started at 2 KiB stays at
// 2 KiB, so it moves stack-B by a few hundred bytes from run to run.
//
// Sub-benchmarks:
//   - recv: the handler blocks in RecvMsg, as the coordinator's does;
//   - parked: the handler, after the first message, waits on a channel
//     without calling RecvMsg (the difference from recv is the stack that
//     the receive call chain takes);
//   - plaintext-recv: recv without TLS (the difference from recv is TLS's
//     share: the reader's stack, the conn's buffers).
//
// A run uses a fixed number of connections (1,000; FLEETWAVE_IDLE_STREAM_CONNS)
// and takes about 10 s per sub-benchmark; b.N repeats the whole measurement
// (the figures are the mean), so -benchtime 1x is the sensible setting:
//
//	go test -run '^$' -bench BenchmarkIdleStreamMemory -benchtime 1x ./internal/grpcwindow
func BenchmarkIdleStreamMemory(b *testing.B) {
	n := 1000
	if v := os.Getenv(idleConnsEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive number", idleConnsEnv, v)
		}
	}
	settle := 6 * time.Second
	if v := os.Getenv(idleSettleEnv); v != "" {
		var err error
		if settle, err = time.ParseDuration(v); err != nil {
			b.Fatalf("%s=%q: %v", idleSettleEnv, v, err)
		}
	}
	pki := b.TempDir()
	if err := tlsutil.Init(pki, tlsutil.InitOptions{Coordinators: map[string][]string{"c1": nil}, Agents: []string{"h1"}}); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tls    bool
		parked bool
	}{
		{"recv", true, false},
		{"parked", true, true},
		{"plaintext-recv", false, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var sum idleFigures
			for range b.N {
				sum = sum.add(measureIdleStreams(b, n, settle, tc.tls, tc.parked, pki))
			}
			b.StopTimer()
			per := float64(b.N) * float64(n)
			b.ReportMetric(sum.goroutines/per, "goroutines/conn")
			b.ReportMetric(sum.stack/per, "stack-B/conn")
			b.ReportMetric(sum.stackUsed/per, "stackused-B/conn")
			b.ReportMetric(sum.heapLive/per, "heaplive-B/conn")
			b.ReportMetric(sum.heapInuse/per, "heapinuse-B/conn")
			b.ReportMetric(sum.rss/per, "rss-B/conn")
			b.ReportMetric(sum.stackStart/float64(b.N), "stackstart-B")
		})
	}
}

// idleFigures are a process's figures, or differences of them.
type idleFigures struct {
	goroutines, stack, stackUsed, heapLive, heapInuse, rss float64
	// stackStart is the size new goroutines' stacks start at (the
	// runtime's average of the stacks it scanned: GODEBUG
	// adaptivestackstart), not a difference.
	stackStart float64
}

func (f idleFigures) add(g idleFigures) idleFigures {
	return idleFigures{f.goroutines + g.goroutines, f.stack + g.stack, f.stackUsed + g.stackUsed,
		f.heapLive + g.heapLive, f.heapInuse + g.heapInuse, f.rss + g.rss, f.stackStart + g.stackStart}
}

func (f idleFigures) sub(g idleFigures) idleFigures {
	return idleFigures{f.goroutines - g.goroutines, f.stack - g.stack, f.stackUsed - g.stackUsed,
		f.heapLive - g.heapLive, f.heapInuse - g.heapInuse, f.rss - g.rss, f.stackStart}
}

// serverFigures collects garbage until the figures hold still and reads
// them.
func serverFigures(b *testing.B) idleFigures {
	for range 3 {
		runtime.GC()
	}
	debug.FreeOSMemory() // a collection too, and returns free pages to the OS
	s := []metrics.Sample{
		{Name: "/sched/goroutines:goroutines"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/gc/stack/starting-size:bytes"},
	}
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			b.Fatalf("runtime/metrics: %s not supported", x.Name)
		}
	}
	u := func(i int) float64 { return float64(s[i].Value.Uint64()) }
	return idleFigures{goroutines: u(0), stack: u(1), stackUsed: u(2), heapLive: u(3), heapInuse: u(4) + u(5), rss: float64(vmRSS(b)), stackStart: u(6)}
}

// vmRSS is the process's resident set size in bytes.
func vmRSS(b *testing.B) int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skipf("no RSS: %v", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatalf("VmRSS: %q: %v", v, err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// measureIdleStreams serves n idle streams from a client process and
// returns the server's figures with them less those without.
func measureIdleStreams(b *testing.B, n int, settle time.Duration, useTLS, parked bool, pki string) idleFigures {
	b.Helper()
	var idle atomic.Int64 // streams whose handler has answered
	park := make(chan struct{})
	desc := grpc.ServiceDesc{
		ServiceName: "fleetwave.bench.Idle",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName: "Connect", ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, s grpc.ServerStream) error {
				m := new(wrapperspb.BytesValue)
				if err := s.RecvMsg(m); err != nil {
					return err
				}
				if err := s.SendMsg(m); err != nil {
					return err
				}
				idle.Add(1)
				if parked {
					select {
					case <-park:
					case <-s.Context().Done():
					}
					return nil
				}
				for {
					if err := s.RecvMsg(m); err != nil {
						return nil
					}
				}
			},
		}},
	}
	creds := insecure.NewCredentials()
	if useTLS {
		// The coordinator's own server configuration.
		cfg, err := tlsutil.ServerConfig(filepath.Join(pki, "coordinator-c1.pem"), filepath.Join(pki, "coordinator-c1-key.pem"), filepath.Join(pki, tlsutil.CAFile))
		if err != nil {
			b.Fatal(err)
		}
		creds = credentials.NewTLS(cfg)
	}
	// The coordinator's options (coordinator.go, limits.go) without its
	// interceptors, tap handle and codec.
	srv := grpc.NewServer(append(grpcwindow.ServerOptions(),
		grpc.Creds(creds),
		grpc.MaxConcurrentStreams(128),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.MaxHeaderListSize(64<<10),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.MaxSendMsgSize(64<<20),
		grpc.ReadBufferSize(0),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 2 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 15 * time.Second, Timeout: 10 * time.Second, MaxConnectionIdle: 10 * time.Minute}),
	)...)
	srv.RegisterService(&desc, nil)
	lis, err := net.Listen("tcp", ports.Addr(b))
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = srv.Serve(lis); close(served) }()
	defer func() {
		close(park)
		srv.Stop()
		<-served
	}()

	b.StopTimer()
	before := serverFigures(b)
	b.StartTimer()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleStreamClients$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), idleHelperEnv+"="+lis.Addr().String(), idleNEnv+"="+strconv.Itoa(n))
	if useTLS {
		cmd.Env = append(cmd.Env, idlePKIEnv+"="+pki)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe() // closed: the clients close their connections and exit
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan struct{})
	var out bytes.Buffer
	var outMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == idleReady {
				close(ready)
				continue
			}
			outMu.Lock()
			out.WriteString(sc.Text() + "\n")
			outMu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	stopped := false
	stopClients := func() {
		if stopped {
			return
		}
		stopped = true
		_ = stdin.Close()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	defer stopClients()
	failed := func(what string) {
		_ = cmd.Process.Kill()
		stopClients()
		outMu.Lock()
		defer outMu.Unlock()
		b.Fatalf("%s\nclient process stdout:\n%s\nstderr:\n%s", what, out.String(), stderr.String())
	}
	select {
	case <-ready:
	case err := <-exited:
		exited <- err
		failed(fmt.Sprintf("client process exited before its streams were up: %v", err))
	case <-time.After(3 * time.Minute):
		failed("client process: streams not up after 3 minutes")
	}
	// Every client has its answer, so every handler is past SendMsg.
	for deadline := time.Now().Add(30 * time.Second); idle.Load() < int64(n); {
		if time.Now().After(deadline) {
			failed(fmt.Sprintf("%d of %d handlers idle after 30 s", idle.Load(), n))
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	time.Sleep(settle)
	after := serverFigures(b)
	b.StartTimer()
	return after.sub(before)
}

// TestIdleStreamClients is BenchmarkIdleStreamMemory's client process: it
// opens the streams, says so on stdout and holds them until its stdin
// closes. Run by itself it does nothing.
func TestIdleStreamClients(t *testing.T) {
	addr := os.Getenv(idleHelperEnv)
	if addr == "" {
		t.Skip("the client process of BenchmarkIdleStreamMemory")
	}
	n, err := strconv.Atoi(os.Getenv(idleNEnv))
	if err != nil {
		t.Fatal(err)
	}
	creds := insecure.NewCredentials()
	if pki := os.Getenv(idlePKIEnv); pki != "" {
		// An agent's own client configuration.
		cfg, err := tlsutil.ClientConfig(filepath.Join(pki, "agent-h1.pem"), filepath.Join(pki, "agent-h1-key.pem"), filepath.Join(pki, tlsutil.CAFile))
		if err != nil {
			t.Fatal(err)
		}
		creds = credentials.NewTLS(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := make([]*grpc.ClientConn, n)
	defer func() {
		for _, cc := range conns {
			if cc != nil {
				_ = cc.Close()
			}
		}
	}()
	// As agents dial (agent/conn.go).
	opts := append(grpcwindow.DialOptions(), grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}))
	desc := &grpc.StreamDesc{StreamName: "Connect", ServerStreams: true, ClientStreams: true}
	payload := bytes.Repeat([]byte{'x'}, 100) // about a hello
	var next atomic.Int64
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = cc
				s, err := cc.NewStream(ctx, desc, idleMethod)
				if err != nil {
					errs <- fmt.Errorf("stream %d: %w", i, err)
					return
				}
				m := &wrapperspb.BytesValue{Value: payload}
				if err := s.SendMsg(m); err != nil {
					errs <- fmt.Errorf("stream %d: send: %w", i, err)
					return
				}
				if err := s.RecvMsg(m); err != nil {
					errs <- fmt.Errorf("stream %d: receive: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fmt.Println(idleReady)
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark is done
}
