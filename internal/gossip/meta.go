package gossip

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// wireMeta is a node's meta on the wire: compact JSON, at most MetaMaxSize
// bytes. Unknown fields are ignored, so fields can be added.
type wireMeta struct {
	Role    string            `json:"r"`
	Meta    map[string]string `json:"m,omitempty"`
	Leaving bool              `json:"l,omitempty"`
}

// encodeMeta encodes role and meta; with leaving set it also serves as the
// size check (the largest form this node ever sends).
func encodeMeta(role string, meta map[string]string, leaving bool) ([]byte, error) {
	for k, v := range meta {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("meta: key %q: keys must be non-empty and keys and values valid UTF-8", k)
		}
	}
	b, err := json.Marshal(wireMeta{Role: role, Meta: meta, Leaving: leaving})
	if err != nil {
		return nil, fmt.Errorf("meta: encode: %w", err)
	}
	if len(b) > MetaMaxSize {
		return nil, fmt.Errorf("meta: encoded node meta is %d bytes, at most %d", len(b), MetaMaxSize)
	}
	return b, nil
}

// decodeMeta decodes a remote node's meta. It never fails: meta that is too
// large or malformed gives ok=false and an empty value.
func decodeMeta(b []byte) (w wireMeta, ok bool) {
	if len(b) == 0 || len(b) > MetaMaxSize {
		return wireMeta{}, false
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return wireMeta{}, false
	}
	return w, true
}
