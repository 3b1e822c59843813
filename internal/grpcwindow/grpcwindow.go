// Package grpcwindow fixes the HTTP/2 flow-control windows of the
// connections between agents and coordinators.
//
// grpc-go sizes windows dynamically by default ("BDP estimation"): on a
// connection with nothing in flight, every DATA frame received makes the
// receiver send a connection WINDOW_UPDATE and a PING, and the sender read
// them and answer the PING. An agent's stream carries one small message at a
// time (a report one way, a set of assignments the other), so every message
// cost two more frames each way, two more write and read system calls on
// each side, and two more wake-ups of the goroutines for that connection:
// per round trip on an idle stream the server made 2.07–2.12 writes, with
// fixed windows 1.00 (BenchmarkRoundTrip, docs/BENCHMARKS.md). Fixed
// windows send no such PING.
//
// The windows are large enough for artifact transfers over the same
// connection: Stream per stream and Conn per connection allow 80 MB/s per
// stream at 50 ms of round trip (half of what grpc-go's dynamic windows,
// which grow to 16 MiB, allow on a long fat link: an artifact download or a
// CLI upload at 200 ms of round trip is capped near 20 MB/s).
//
// A window allocates nothing by itself, but it is what a peer may make the
// receiver buffer on a stream whose handler does not read for a while (an
// agent's Connect while its handler waits, an Upload behind a slow disk; a
// server-streaming call is read to its end, a second message refused, so it
// holds no more than the message limit): up to Stream per stream, so up to
// --max-streams-per-conn × Stream (128 × 4 MiB) per connection. Conn does not
// bound that: grpc-go returns connection window as DATA arrives, not as it is
// read. This is no more than a call could already hold (grpc-go widens a
// stream's window to a request's declared length, up to the 4 MiB message
// limit, and keeps what came until the rest does; docs/SECURITY.md), nor
// than a peer could reach before by pacing its answers to grpc-go's BDP
// PINGs (16 MiB per stream).
package grpcwindow

import "google.golang.org/grpc"

const (
	// Stream is the flow-control window of each stream, in bytes.
	Stream = 4 << 20
	// Conn is the flow-control window of each connection, in bytes.
	Conn = 16 << 20
)

// ServerOptions are the coordinator's options for its gRPC server.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StaticStreamWindowSize(Stream), grpc.StaticConnWindowSize(Conn)}
}

// DialOptions are an agent's options for its connection to a coordinator.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithStaticStreamWindowSize(Stream), grpc.WithStaticConnWindowSize(Conn)}
}
