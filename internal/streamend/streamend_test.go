package streamend_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/fleetwave/fleetwave/internal/streamend"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// TestEndFromOutside: a server stream whose handler waits in Recv is ended
// from another goroutine through From(ctx); the client gets that status at
// once and the handler's Recv returns. If a gRPC upgrade stops offering
// WriteStatus on its transport stream, From returns nil and this fails.
func TestEndFromOutside(t *testing.T) {
	enders := make(chan streamend.Ender, 1)
	handlerDone := make(chan error, 1)
	desc := grpc.ServiceDesc{
		ServiceName: "fleetwave.test.End",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName: "Wait", ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, s grpc.ServerStream) error {
				if err := s.RecvMsg(new(emptypb.Empty)); err != nil { // the client's one message
					return err
				}
				enders <- streamend.From(s.Context())
				err := s.RecvMsg(new(emptypb.Empty)) // nothing more comes
				handlerDone <- err
				return err
			},
		}},
	}
	l, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	srv.RegisterService(&desc, nil)
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	cc, err := grpc.NewClient("passthrough:///"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := cc.NewStream(ctx, &desc.Streams[0], "/fleetwave.test.End/Wait")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(new(emptypb.Empty)); err != nil { // opens the stream
		t.Fatal(err)
	}
	var e streamend.Ender
	select {
	case e = <-enders:
	case <-ctx.Done():
		t.Fatal("the handler never started")
	}
	if e == nil {
		t.Fatal("From: gRPC's transport stream offers no WriteStatus")
	}
	// The handler took the message; it waits in its second Recv (or is
	// about to: the status ends that Recv either way).
	if err := e.WriteStatus(status.New(codes.Aborted, "ended from outside")); err != nil {
		t.Fatal(err)
	}
	err = s.RecvMsg(new(emptypb.Empty))
	if status.Code(err) != codes.Aborted || status.Convert(err).Message() != "ended from outside" {
		t.Fatalf("the client saw %v, want Aborted: ended from outside (DeadlineExceeded: never ended)", err)
	}
	select {
	case <-handlerDone:
	case <-ctx.Done():
		t.Fatal("the handler's Recv did not return after the stream ended")
	}
}

// TestFromWithoutGRPC: a context that is not a gRPC server stream's gives nil.
func TestFromWithoutGRPC(t *testing.T) {
	if e := streamend.From(t.Context()); e != nil {
		t.Fatalf("From(a plain context) = %T, want nil", e)
	}
}
