package testcluster

import "errors"

// ErrNoNetNS means this machine or user cannot make network namespaces
// (not root, no `ip`, or `ip netns add` fails); tests fall back to a Proxy
// or skip.
var ErrNoNetNS = errors.New("network namespaces unavailable")
