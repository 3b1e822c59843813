package rollout

import (
	"fmt"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func peerIDs(ps []Peer) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

func TestPeersOfTakesDoneHostsWithAnAddress(t *testing.T) {
	done, upd := v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE, v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	r := &v1.Rollout{Waves: []*v1.Wave{
		{Hosts: []*v1.HostProgress{{HostId: "c", State: done}}},
		{Hosts: []*v1.HostProgress{{HostId: "a", State: done}, {HostId: "b", State: upd}, {HostId: "noaddr", State: done}, {HostId: "unknown", State: done}}},
	}}
	hosts := map[string]PeerHost{
		"a":      {Address: "a:1", Labels: map[string]string{ZoneLabel: "z1"}},
		"b":      {Address: "b:1"},
		"c":      {Address: "c:1", Labels: map[string]string{ZoneLabel: "z2"}},
		"noaddr": {},
	}
	got := PeersOf(r, hosts)
	want := []Peer{{ID: "c", Address: "c:1", Zone: "z2", Wave: 0}, {ID: "a", Address: "a:1", Zone: "z1", Wave: 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("PeersOf = %v, want %v", got, want)
	}
	if PeersOf(nil, hosts) != nil {
		t.Fatal("PeersOf(nil) is not empty")
	}
}

func TestPickEdgeCases(t *testing.T) {
	var nilSet *PeerSet
	if got := nilSet.Pick("h", "z", 3); got != nil {
		t.Fatalf("nil set: %v", got)
	}
	s := NewPeerSet([]Peer{{ID: "a", Address: "a:1"}, {ID: "a", Address: "a:2"}, {ID: "", Address: "x:1"}, {ID: "noaddr"}})
	if s.Len() != 1 || !s.Has("a") || s.Has("noaddr") || nilSet.Has("a") {
		t.Fatalf("Len = %d, want 1 (duplicates, empty ids and addresses dropped)", s.Len())
	}
	if got := s.Pick("a", "", 3); len(got) != 0 {
		t.Fatalf("a host is never its own source: %v", got)
	}
	for _, n := range []int{0, -1} {
		if got := s.Pick("b", "", n); len(got) != 0 {
			t.Fatalf("n=%d: %v", n, got)
		}
	}
	var many []Peer
	for i := range 40 {
		many = append(many, Peer{ID: fmt.Sprintf("p%02d", i), Address: "x:1"})
	}
	if got := NewPeerSet(many).Pick("h", "", 1000); len(got) != MaxSources {
		t.Fatalf("n=1000 gave %d sources, want the cap %d", len(got), MaxSources)
	}
}

func TestPickSameZoneFirstThenOthersEarlierWavesFirst(t *testing.T) {
	s := NewPeerSet([]Peer{
		{ID: "a1", Address: "x:1", Zone: "a", Wave: 2},
		{ID: "a0", Address: "x:1", Zone: "a", Wave: 0},
		{ID: "b0", Address: "x:1", Zone: "b", Wave: 0},
		{ID: "b1", Address: "x:1", Zone: "b", Wave: 1},
		{ID: "c1", Address: "x:1", Zone: "c", Wave: 1},
	})
	for _, host := range []string{"h1", "h2", "h3", "h4", "h5", "h6"} {
		got := s.Pick(host, "a", 4)
		if len(got) != 4 {
			t.Fatalf("%s: %v", host, peerIDs(got))
		}
		if got[0].ID != "a0" || got[1].ID != "a1" {
			t.Fatalf("%s: same zone, earlier wave first: %v", host, peerIDs(got))
		}
		if got[2].Zone == "a" || got[3].Zone == "a" || got[2].Wave > got[3].Wave {
			t.Fatalf("%s: then other zones, earlier wave first: %v", host, peerIDs(got))
		}
		if again := s.Pick(host, "a", 4); fmt.Sprint(again) != fmt.Sprint(got) {
			t.Fatalf("%s: not deterministic: %v then %v", host, got, again)
		}
	}
	// A zone nobody is in: every source comes from the others.
	if got := s.Pick("h", "zz", 3); len(got) != 3 {
		t.Fatalf("other zone: %v", peerIDs(got))
	}
}

// TestPickSpreadsLoad: 1,000 hosts asking for 3 sources among 30 candidates
// in their zone: each candidate is named about 100 times, and no candidate
// is anybody's first choice much more often than the others.
func TestPickSpreadsLoad(t *testing.T) {
	var peers []Peer
	for i := range 30 {
		peers = append(peers, Peer{ID: fmt.Sprintf("done-%02d", i), Address: "x:1", Zone: "a", Wave: i / 10})
	}
	s := NewPeerSet(peers)
	named, first := map[string]int{}, map[string]int{}
	for i := range 1000 {
		got := s.Pick(fmt.Sprintf("host-%04d", i), "a", 3)
		if len(got) != 3 {
			t.Fatalf("host-%04d: %v", i, peerIDs(got))
		}
		first[got[0].ID]++
		for _, p := range got {
			named[p.ID]++
		}
	}
	for _, p := range peers {
		if n := named[p.ID]; n < 50 || n > 200 {
			t.Errorf("%s named %d times, want about 100", p.ID, n)
		}
		if n := first[p.ID]; n > 150 {
			t.Errorf("%s is the first source of %d hosts, want about 33", p.ID, n)
		}
	}
}

func TestSourcesOf(t *testing.T) {
	got := SourcesOf([]Peer{{ID: "a", Address: "a:1"}})
	if len(got) != 1 || got[0].GetHostId() != "a" || got[0].GetAddress() != "a:1" {
		t.Fatalf("SourcesOf = %v", got)
	}
}

// TestBadPeersNeedsAQuorum: one agent naming every host as its bad source
// (one per service it reports) gets none of them excluded; a host named
// by two distinct hosts is.
func TestBadPeersNeedsAQuorum(t *testing.T) {
	var liar []string
	for i := range 100 {
		liar = append(liar, fmt.Sprintf("h%d", i))
	}
	if got := BadPeers(map[string][]string{"mallory": liar}); len(got) != 0 {
		t.Fatalf("one reporter excluded %d hosts: %v", len(got), got)
	}
	got := BadPeers(map[string][]string{
		"mallory": liar,
		"a":       {"bad", "bad"},   // twice from one reporter: one vote
		"b":       {"bad", "", "b"}, // empty and itself: no vote
		"c":       {"h7"},           // with mallory's: two reporters
	})
	if len(got) != 2 || !got["bad"] || !got["h7"] {
		t.Fatalf("BadPeers = %v, want bad and h7", got)
	}
	if got := BadPeers(map[string][]string{"a": {"x"}, "b": {"b"}}); len(got) != 0 {
		t.Fatalf("a host naming itself counts: %v", got)
	}
}
