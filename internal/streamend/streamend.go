// Package streamend ends a gRPC server stream from outside its handler.
//
// gRPC's transport stream (under a server stream's context:
// grpc.ServerTransportStreamFromContext) offers WriteStatus, which sends the
// stream's status to the client at once and ends it, also while the handler
// is blocked in Recv or in a Send the client does not take; the handler's own
// return then writes nothing more. The coordinator's hub ends a replaced or
// failed agent stream this way (no goroutine per stream waits for it), and
// an agent's peer listener ends a download whose fetcher stopped reading.
package streamend

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Ender is the part of gRPC's transport stream that ends it with a status.
type Ender interface {
	WriteStatus(*status.Status) error
}

// From returns the Ender of the server stream whose context is ctx, or nil
// when gRPC offers none (a stream not served by gRPC, as in tests that call
// a handler directly). TestEndFromOutside checks that gRPC still offers it.
func From(ctx context.Context) Ender {
	e, _ := grpc.ServerTransportStreamFromContext(ctx).(Ender)
	return e
}
