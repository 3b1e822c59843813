package coordinator

import (
	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// preEncoded is a message sent as bytes encoded already: set is a
// ConnectResponse's assignment set as the hub encoded it to compare its sum
// (encodedSet.b, shared between streams, never modified) and tail another
// ConnectResponse's encoding with what each send adds (sent_at,
// revocations). Protobuf encodings concatenate: set followed by tail is the
// encoding of the message with the fields of both (they set different
// fields), so the set is not encoded again for every send (issue 16).
// Only serverCodec knows it.
type preEncoded struct {
	set, tail []byte
}

// serverCodec is the coordinator's gRPC codec (grpc.ForceServerCodecV2):
// gRPC's own proto codec for everything, except that a preEncoded message
// is sent as its bytes, without a copy. gRPC applies the server's
// MaxSendMsgSize, compression and stream wrappers (limitedStream) to it as
// to any message: they see it only through SendMsg and the encoded length.
type serverCodec struct {
	proto encoding.CodecV2
}

func newServerCodec() serverCodec {
	return serverCodec{proto: encoding.GetCodecV2(encproto.Name)}
}

func (c serverCodec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preEncoded); ok {
		out := make(mem.BufferSlice, 0, 2)
		for _, b := range [][]byte{p.set, p.tail} {
			if len(b) > 0 {
				out = append(out, mem.SliceBuffer(b))
			}
		}
		return out, nil
	}
	return c.proto.Marshal(v)
}

func (c serverCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// Name is the proto codec's: the content-subtype agents and clients use.
func (c serverCodec) Name() string { return c.proto.Name() }
