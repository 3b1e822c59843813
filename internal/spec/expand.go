// Package spec parses, defaults and validates service specs and the names in
// them (services, versions, host ids), and expands ${host.*} placeholders.
// It is shared by the CLI, the coordinator and the agent, so it imports
// nothing but the generated protobuf types, google.golang.org/protobuf,
// sigs.k8s.io/yaml (for Parse) and the standard library: never grpc, etcd
// or any fleetwave package besides proto/fleetwave/v1.
package spec

import (
	"fmt"
	"strings"
)

// Expand replaces ${host.id} and ${host.label.KEY} in s. An unknown
// placeholder or a label the host does not have is an error naming it.
func Expand(s, hostID string, labels map[string]string) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("unterminated placeholder in %q", s)
		}
		name := s[i+2 : i+j]
		switch {
		case name == "host.id":
			b.WriteString(hostID)
		case strings.HasPrefix(name, "host.label."):
			key := strings.TrimPrefix(name, "host.label.")
			v, ok := labels[key]
			if !ok {
				return "", fmt.Errorf("placeholder ${%s}: host has no label %q", name, key)
			}
			b.WriteString(v)
		default:
			return "", fmt.Errorf("unknown placeholder ${%s} (want ${host.id} or ${host.label.KEY})", name)
		}
		s = s[i+j+1:]
	}
}
