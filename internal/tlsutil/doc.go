// Package tlsutil owns Fleetwave's transport trust: the identities carried in
// certificates (one fleetwave:// URI SAN naming a coordinator, an agent's host
// id or an operator with a role), a small certificate authority (issue
// certificates, sign agents' CSRs), the TLS 1.3 server and client
// configurations used by every gRPC connection (with certificate files re-read
// when they are renewed), and `tls init` for a small fleet.
//
// It decides who a peer is, never what the peer may do: authorisation belongs
// to the coordinator and agent. It may import only the standard library and
// grpc's credentials and peer packages; it must not import etcd, coordinator
// or agent packages, so that the agent binary stays lean.
package tlsutil
