package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// MaxSpecSize is the largest spec file Parse accepts.
const MaxSpecSize = 1 << 20

// ErrSyntax marks a spec that is not well-formed YAML, has unknown fields or
// values of the wrong type (test with errors.Is). Validation problems are not
// ErrSyntax.
var ErrSyntax = errors.New("invalid spec syntax")

// syntaxError carries ErrSyntax without repeating it in the message, so
// that every line of Error() is one problem ("field: what is wrong").
type syntaxError struct{ err error }

func (e *syntaxError) Error() string   { return e.err.Error() }
func (e *syntaxError) Unwrap() []error { return []error{ErrSyntax, e.err} }

func syntaxErr(format string, args ...any) error {
	return &syntaxError{err: fmt.Errorf(format, args...)}
}

// Parse decodes a YAML (or JSON) service spec. Field names may be written in
// snake_case (as in the .proto) or lowerCamelCase; durations may be written
// as Go durations ("500ms", "5m", "1h30m"). Unknown fields, a field given
// twice, more than one of a oneof and scalars of the wrong type are errors
// naming the field path. Parse does not validate values: call Validate.
func Parse(data []byte) (*v1.ServiceSpec, error) {
	if len(data) > MaxSpecSize {
		return nil, syntaxErr("spec is %d bytes, more than %d", len(data), MaxSpecSize)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, &syntaxError{err: err}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, &syntaxError{err: err}
	}
	if doc == nil {
		return nil, syntaxErr("empty spec")
	}
	if _, ok := doc.(map[string]any); !ok {
		return nil, syntaxErr("want a mapping of fields at the top level, got %s", jsonKind(doc))
	}
	s := &v1.ServiceSpec{}
	var errs []error
	doc = normalize(s.ProtoReflect().Descriptor(), doc, "", &errs)
	if len(errs) > 0 {
		return nil, &syntaxError{err: errors.Join(errs...)}
	}
	norm, err := json.Marshal(doc)
	if err != nil {
		return nil, syntaxErr("re-encode: %w", err)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(norm, s); err != nil {
		return nil, &syntaxError{err: err}
	}
	return s, nil
}

// normalize walks a decoded JSON value along the message descriptor md. It
// reports unknown fields, fields set twice, several members of a oneof and
// wrongly typed scalars with their paths, and rewrites Go-style duration
// strings into protojson's "<seconds>.<fraction>s" form.
func normalize(md protoreflect.MessageDescriptor, v any, path string, errs *[]error) any {
	obj, ok := v.(map[string]any)
	if !ok {
		*errs = append(*errs, fmt.Errorf("%s: want a mapping of fields, got %s", orTop(path), jsonKind(v)))
		return v
	}
	fields := md.Fields()
	seen := map[protoreflect.FieldNumber]string{}
	oneofs := map[protoreflect.FullName]string{}
	out := make(map[string]any, len(obj))
	for _, key := range sortedKeys(obj) {
		val := obj[key]
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil {
			*errs = append(*errs, fmt.Errorf("%s: unknown field", join(path, key)))
			continue
		}
		fpath := join(path, string(fd.Name()))
		if prev, dup := seen[fd.Number()]; dup {
			*errs = append(*errs, fmt.Errorf("%s: set twice (as %q and %q)", fpath, prev, key))
			continue
		}
		seen[fd.Number()] = key
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && val != nil {
			if other, dup := oneofs[od.FullName()]; dup {
				*errs = append(*errs, fmt.Errorf("%s: exactly one of %s must be set, got %s and %s",
					orTop(path), oneofNames(od), other, fd.Name()))
				continue
			}
			oneofs[od.FullName()] = string(fd.Name())
		}
		out[string(fd.Name())] = normalizeField(fd, val, fpath, errs)
	}
	return out
}

func normalizeField(fd protoreflect.FieldDescriptor, v any, path string, errs *[]error) any {
	if v == nil {
		return nil
	}
	switch {
	case fd.IsMap():
		m, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fmt.Errorf("%s: want a mapping, got %s", path, jsonKind(v)))
			return v
		}
		out := make(map[string]any, len(m))
		for _, k := range sortedKeys(m) {
			out[k] = normalizeSingular(fd.MapValue(), m[k], fmt.Sprintf("%s[%s]", path, k), errs)
		}
		return out
	case fd.IsList():
		l, ok := v.([]any)
		if !ok {
			*errs = append(*errs, fmt.Errorf("%s: want a list, got %s", path, jsonKind(v)))
			return v
		}
		out := make([]any, len(l))
		for i, e := range l {
			out[i] = normalizeSingular(fd, e, fmt.Sprintf("%s[%d]", path, i), errs)
		}
		return out
	default:
		return normalizeSingular(fd, v, path, errs)
	}
}

func normalizeSingular(fd protoreflect.FieldDescriptor, v any, path string, errs *[]error) any {
	if v == nil {
		return nil
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		md := fd.Message()
		if md.FullName() == "google.protobuf.Duration" {
			return normalizeDuration(v, path, errs)
		}
		if md.FullName().Parent() == "google.protobuf" {
			return v // other well-known types: protojson's own format
		}
		return normalize(md, v, path, errs)
	case protoreflect.StringKind:
		switch v := v.(type) {
		case string:
		case json.Number:
			if path == "rollout.max_unavailable_per_zone" {
				// A count or a percentage: `2` as well as "2" and "25%".
				return string(v)
			}
			*errs = append(*errs, fmt.Errorf("%s: want a string, got %s %s (quote it)", path, jsonKind(v), compact(v)))
		case bool:
			*errs = append(*errs, fmt.Errorf("%s: want a string, got %s %s (quote it)", path, jsonKind(v), compact(v)))
		default:
			*errs = append(*errs, fmt.Errorf("%s: want a string, got %s", path, jsonKind(v)))
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			*errs = append(*errs, fmt.Errorf("%s: want true or false, got %s %s", path, jsonKind(v), compact(v)))
		}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		checkInt(v, path, 32, errs)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		checkInt(v, path, 64, errs)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		checkUint(v, path, 32, errs)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		checkUint(v, path, 64, errs)
	}
	return v
}

func checkInt(v any, path string, bits int, errs *[]error) {
	n, ok := v.(json.Number)
	if !ok {
		*errs = append(*errs, fmt.Errorf("%s: want a whole number, got %s %s", path, jsonKind(v), compact(v)))
		return
	}
	if _, err := strconv.ParseInt(string(n), 10, bits); err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %s is not a whole number in %d..%d", path, n, -1<<(bits-1), 1<<(bits-1)-1))
	}
}

func checkUint(v any, path string, bits int, errs *[]error) {
	n, ok := v.(json.Number)
	if !ok {
		*errs = append(*errs, fmt.Errorf("%s: want a whole number, got %s %s", path, jsonKind(v), compact(v)))
		return
	}
	if _, err := strconv.ParseUint(string(n), 10, bits); err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %s is not a whole number in 0..%d", path, n, uint64(1)<<bits-1))
	}
}

func normalizeDuration(v any, path string, errs *[]error) any {
	str, ok := v.(string)
	if !ok {
		*errs = append(*errs, fmt.Errorf("%s: want a duration such as \"10s\" or \"500ms\", got %s %s", path, jsonKind(v), compact(v)))
		return v
	}
	d, err := time.ParseDuration(str)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: invalid duration %q (want e.g. \"10s\", \"500ms\", \"5m\")", path, str))
		return v
	}
	return protoDuration(d)
}

// protoDuration formats d the way protojson reads a google.protobuf.Duration.
func protoDuration(d time.Duration) string {
	sign := ""
	u := uint64(d)
	if d < 0 {
		sign = "-"
		u = uint64(-d) // for math.MinInt64 this is still 1<<63, the right magnitude
	}
	secs, nanos := u/1e9, u%1e9
	if nanos == 0 {
		return fmt.Sprintf("%s%ds", sign, secs)
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, secs, nanos), "0") + "s"
}

func oneofNames(od protoreflect.OneofDescriptor) string {
	var names []string
	for i := range od.Fields().Len() {
		names = append(names, string(od.Fields().Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "string"
	case json.Number, float64:
		return "number"
	case bool:
		return "boolean"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// compact renders a scalar for an error message, truncated.
func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 64 {
		return string(b[:61]) + "..."
	}
	return string(b)
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func orTop(path string) string {
	if path == "" {
		return "spec"
	}
	return path
}
