package rollout

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// fill sets every field of m to a value that is not its zero value (one
// level deep: messages it holds are set empty, lists and maps hold one
// element), and an unknown field.
func fill(t *testing.T, m protoreflect.Message) {
	t.Helper()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(scalar(t, fd, l.NewElement()))
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(scalar(t, fd.MapKey(), protoreflect.Value{}).MapKey(), scalar(t, fd.MapValue(), mp.NewValue()))
		default:
			m.Set(fd, scalar(t, fd, m.NewField(fd)))
		}
	}
	m.SetUnknown(protoreflect.RawFields{0xf8, 0x3f, 0x01}) // field 1023, varint 1
}

// scalar is a value of fd's kind that is not zero (msg: a new message of
// it, as NewField or NewElement gave it).
func scalar(t *testing.T, fd protoreflect.FieldDescriptor, msg protoreflect.Value) protoreflect.Value {
	t.Helper()
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(7)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(7)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(7)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte("x"))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return msg
	}
	t.Fatalf("field %s: kind %v", fd.FullName(), fd.Kind())
	return protoreflect.Value{}
}

// copyHost copies every field of HostProgress: one added to the message
// and not to copyHost fails here.
func TestCopyHostCopiesEveryField(t *testing.T) {
	h := &v1.HostProgress{}
	fill(t, h.ProtoReflect())
	if c := copyHost(h); !proto.Equal(c, h) || c == h {
		t.Fatalf("copyHost(%v) = %v", h, c)
	}
}

// shallowCopy copies every field, shares the messages they hold, and
// gives the copy lists of its own.
func TestShallowCopy(t *testing.T) {
	for _, m := range []proto.Message{&v1.Rollout{}, &v1.Wave{}} {
		fill(t, m.ProtoReflect())
		c := shallowCopy(m, "")
		if !proto.Equal(c, m) {
			t.Fatalf("%T: shallowCopy(%v) = %v", m, m, c)
		}
	}
	r := &v1.Rollout{Waves: []*v1.Wave{{Index: 1}}, Policy: &v1.RolloutPolicy{MaxParallel: 3}}
	c := shallowCopy(r, "")
	if c.Policy != r.Policy || c.Waves[0] != r.Waves[0] {
		t.Error("the messages held are not shared")
	}
	c.Waves[0] = &v1.Wave{Index: 2}
	c.Waves = append(c.Waves, &v1.Wave{Index: 3})
	if len(r.Waves) != 1 || r.Waves[0].GetIndex() != 1 {
		t.Errorf("writing the copy's list wrote the original's: %v", r.Waves)
	}
	if s := shallowCopy(r, "waves"); len(s.Waves) != 0 || s.Policy != r.Policy {
		t.Errorf("skip waves: %v", s)
	}
}
