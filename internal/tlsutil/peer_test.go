package tlsutil

import (
	"errors"
	"testing"
)

// TestPeerTLS: an agent's peer listener serves agents only, and a fetching
// agent accepts only the agent it asked for.
func TestPeerTLS(t *testing.T) {
	f := newFixture(t)
	host2Cert, host2Key := writePair(t, f.ca, f.dir, "agent-host-2", Identity{Kind: KindAgent, Name: "host-2"}, nil)
	srvCfg, err := PeerServerConfig(f.agentCert, f.agentKey, f.caFile) // host-1 serves
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, srvCfg)
	peerClient := func(cert, key, want string) error {
		cfg, err := PeerClientConfig(cert, key, f.caFile, want)
		if err != nil {
			t.Fatal(err)
		}
		_, err = check(t, addr, cfg)
		return err
	}
	// host-2 fetching from host-1: accepted both ways.
	if err := peerClient(host2Cert, host2Key, "host-1"); err != nil {
		t.Fatalf("agent to agent: %v", err)
	}
	// host-2 expecting host-3 at that address: refused by the client.
	cfg, err := PeerClientConfig(host2Cert, host2Key, f.caFile, "host-3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(addr, cfg); !errors.Is(err, ErrNotAgent) {
		t.Fatalf("handshake with the wrong agent: %v, want ErrNotAgent", err)
	}
	// An operator or a coordinator certificate cannot fetch from a peer,
	// nor a client without a certificate.
	for _, pair := range [][2]string{{f.operatorCert, f.operatorKey}, {f.coordCert, f.coordKey}} {
		if err := peerClient(pair[0], pair[1], "host-1"); err == nil {
			t.Fatalf("%s fetched from a peer", pair[0])
		}
	}
	if _, err := PeerClientConfig("", "", f.caFile, "host-1"); err == nil {
		t.Fatal("a peer client config without a certificate was made")
	}
	if _, err := check(t, addr, f.client(t, "", "")); err == nil {
		t.Fatal("a client without a certificate reached the peer listener")
	}
	// A coordinator certificate serving as a peer is refused by the client.
	coordAsPeer, err := PeerServerConfig(f.coordCert, f.coordKey, f.caFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = PeerClientConfig(host2Cert, host2Key, f.caFile, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(startServer(t, coordAsPeer), cfg); !errors.Is(err, ErrNotAgent) {
		t.Fatalf("handshake with a coordinator as peer: %v, want ErrNotAgent", err)
	}
}
