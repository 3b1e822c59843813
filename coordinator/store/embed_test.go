package store

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// A client port taken between its choice and etcd's bind is replaced by
// another, instead of failing the coordinator's start.
func TestStartEmbeddedRetriesATakenPort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })
	emb, err := StartEmbedded(t.TempDir(), "", zerolog.Nop())
	if err != nil {
		t.Fatalf("start with the first port taken: %v", err)
	}
	defer emb.Close()
	if calls != 2 {
		t.Errorf("picked %d ports, want 2", calls)
	}
	if strings.Contains(emb.Endpoints[0], ":"+strconv.Itoa(taken)) {
		t.Errorf("endpoint %s uses the taken port", emb.Endpoints[0])
	}
}
