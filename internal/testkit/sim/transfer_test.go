package sim

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// randomArtifact uploads n random bytes to the coordinator as the
// operator's artifact for the next releases.
func (o *operator) randomArtifact(ctx context.Context, t testing.TB, n int) {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	art, err := upload(ctx, o.cc, b)
	if err != nil {
		t.Fatal(err)
	}
	o.art = art
}

// Installs move the artifact's bytes: every host fetches the release's
// artifact from the coordinator (no peer-to-peer), verified, before it
// reports the release; a release of an artifact a host holds moves none.
func TestFetchFromCoordinator(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n, size = 20, 100 << 10
	cfg := Config{Hosts: n, Seed: 1, ReconnectBase: 50 * time.Millisecond, Fetch: true}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{50, 100}, n))
	o.randomArtifact(ctx, t, size)
	deploy(t, ctx, f, o, "v1")
	if got := f.Holding(o.art.GetSha256()); got != n {
		t.Fatalf("%d hosts hold the artifact, want %d", got, n)
	}
	s := f.Stats()
	if s.CoordinatorBytes != n*size || s.PeerBytes != 0 || s.Fetches != n {
		t.Fatalf("coordinator bytes %d, peer bytes %d, fetches %d; want %d, 0, %d", s.CoordinatorBytes, s.PeerBytes, s.Fetches, n*size, n)
	}
	for i := range n {
		tr, err := f.Transfer(i)
		if err != nil {
			t.Fatal(err)
		}
		if tr.FromCoordinator != size || tr.FromPeers != 0 || tr.Served != 0 {
			t.Fatalf("host %d moved %+v, want %d bytes from the coordinator only", i, tr, size)
		}
	}
	// v2 has the same artifact: held, nothing moves.
	deploy(t, ctx, f, o, "v2")
	if s2 := f.Stats(); s2.CoordinatorBytes != s.CoordinatorBytes || s2.Fetches != s.Fetches {
		t.Fatalf("v2 of a held artifact moved bytes: %+v", s2)
	}
}

// With peer-to-peer, hosts advertise a peer address, the coordinator names
// hosts that are done as sources, and later waves fetch from them.
func TestFetchFromPeers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n, size = 30, 100 << 10
	cfg := Config{Hosts: n, Seed: 1, ReconnectBase: 50 * time.Millisecond, Fetch: true, P2P: true, PeerMaxUploads: 2}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{10, 100}, n))
	o.randomArtifact(ctx, t, size)
	deploy(t, ctx, f, o, "v1")
	s := f.Stats()
	if got := f.Holding(o.art.GetSha256()); got != n {
		t.Fatalf("%d hosts hold the artifact, want %d", got, n)
	}
	if s.CoordinatorBytes+s.PeerBytes != n*size {
		t.Fatalf("coordinator %d + peer %d bytes, want %d in all", s.CoordinatorBytes, s.PeerBytes, n*size)
	}
	if s.PeerBytes == 0 || s.CoordinatorBytes < size {
		t.Fatalf("coordinator %d, peers %d bytes: want the canary from the coordinator and some from peers", s.CoordinatorBytes, s.PeerBytes)
	}
	if s.MaxConcurrentUploads > 2 {
		t.Fatalf("a host served %d uploads at once, over its limit of 2", s.MaxConcurrentUploads)
	}
	var served, got int64
	for i := range n {
		tr, _ := f.Transfer(i)
		served += tr.Served
		got += tr.FromPeers
	}
	if served != s.PeerBytes || got != s.PeerBytes {
		t.Fatalf("per host: served %d, got from peers %d; fleet: %d", served, got, s.PeerBytes)
	}
	hosts, err := o.op.ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts.GetHosts() {
		if h.GetPeerAddress() != peerAddress(h.GetId()) {
			t.Fatalf("host %s: peer address %q, want %q", h.GetId(), h.GetPeerAddress(), peerAddress(h.GetId()))
		}
	}
}

func TestConfigBandwidthLimits(t *testing.T) {
	c := Config{Coordinator: "127.0.0.1:1", P2P: true, DownloadRate: -1, UploadRate: MaxRate + 1, CoordinatorRate: -2,
		PeerMaxUploads: MaxPeerMaxUploads + 1, ByteScale: MaxByteScale + 1}
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"p2p: needs fetch", "download-rate: -1 bytes/s", "upload-rate: 1000000000001 bytes/s", "coordinator-rate: -2 bytes/s",
		"peer-max-uploads: 1025", "byte-scale: 1000001"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	ok := Config{Coordinator: "127.0.0.1:1", Fetch: true, P2P: true, DownloadRate: MaxRate, UploadRate: 1, CoordinatorRate: MaxRate,
		PeerMaxUploads: MaxPeerMaxUploads, ByteScale: MaxByteScale}
	if err := ok.Validate(); err != nil {
		t.Fatalf("limits themselves: %v", err)
	}
}
