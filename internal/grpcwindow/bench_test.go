package grpcwindow_test

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/fleetwave/fleetwave/internal/grpcwindow"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// echoDesc is a one-method bidi service that answers each message with one
// (a coordinator's stream: a set out, a report back).
var echoDesc = grpc.ServiceDesc{
	ServiceName: "fleetwave.bench.Echo",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName: "Echo", ServerStreams: true, ClientStreams: true,
		Handler: func(_ any, s grpc.ServerStream) error {
			m := new(emptypb.Empty)
			for {
				if err := s.RecvMsg(m); err != nil {
					return nil
				}
				if err := s.SendMsg(m); err != nil {
					return err
				}
			}
		},
	}},
}

// countingListener counts the writes of the connections it accepts (the
// server's system calls that send frames).
type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// cpuTime is the process's user+system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRoundTrip: one small message each way per op on one stream over
// loopback (client and server in this process), with grpc-go's dynamic
// windows and with grpcwindow's fixed ones; back to back, and with the
// stream idle for a millisecond between round trips, as an agent's stream
// is between a set and a report (then every message starts a BDP PING
// with dynamic windows). It reports the CPU time of both ends per round
// trip and the server's writes (system calls) per round trip.
//
//	go test -run '^$' -bench RoundTrip -count 5 ./internal/grpcwindow
func BenchmarkRoundTrip(b *testing.B) {
	for _, tc := range []struct {
		name string
		srv  []grpc.ServerOption
		dial []grpc.DialOption
		gap  time.Duration
	}{
		{"dynamic", nil, nil, 0},
		{"fixed", grpcwindow.ServerOptions(), grpcwindow.DialOptions(), 0},
		{"dynamic-idle", nil, nil, time.Millisecond},
		{"fixed-idle", grpcwindow.ServerOptions(), grpcwindow.DialOptions(), time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			l, err := net.Listen("tcp", ports.Addr(b))
			if err != nil {
				b.Fatal(err)
			}
			var writes atomic.Int64
			lis := countingListener{l, &writes}
			srv := grpc.NewServer(tc.srv...)
			srv.RegisterService(&echoDesc, nil)
			go func() { _ = srv.Serve(lis) }()
			defer srv.Stop()
			cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), append(tc.dial, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := cc.NewStream(ctx, &echoDesc.Streams[0], "/fleetwave.bench.Echo/Echo")
			if err != nil {
				b.Fatal(err)
			}
			m := new(emptypb.Empty)
			if err := s.SendMsg(m); err != nil { // connection and stream set up
				b.Fatal(err)
			}
			if err := s.RecvMsg(m); err != nil {
				b.Fatal(err)
			}
			w0, c0 := writes.Load(), cpuTime(b)
			b.ResetTimer()
			for range b.N {
				if tc.gap > 0 {
					time.Sleep(tc.gap) // the stream idles (a model of an agent's, not synchronisation)
				}
				if err := s.SendMsg(m); err != nil {
					b.Fatal(err)
				}
				if err := s.RecvMsg(m); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-c0)/1e3/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(writes.Load()-w0)/float64(b.N), "server-writes/op")
		})
	}
}
