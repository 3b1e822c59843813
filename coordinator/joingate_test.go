package coordinator

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Join is anonymous and each unknown token costs an etcd quorum read (the
// mirror's Sync): guesses are limited per address, joinFailureBurst and
// then refused (ResourceExhausted) before the token is looked up, even a
// right one, which is then not spent. Joins with a real token that fail
// (bound to another host) are not guesses and do not count; another
// address keeps its own allowance. (Before: every guess was answered.)
func TestJoinsWithUnknownTokensLimitedPerAddress(t *testing.T) {
	f := startTLSCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := v1.NewOperatorServiceClient(f.dial(t, "operator-alice", ""))
	key, _, err := tlsutil.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := tlsutil.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	from := func(local string) v1.AgentServiceClient {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		return v1.NewAgentServiceClient(f.dialWith(t, "", grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		})))
	}
	a, b := from("127.0.0.1"), from("127.0.0.2")

	bound, err := admin.CreateToken(ctx, &v1.CreateTokenRequest{Name: "for-h5", Role: "join", HostId: "h5"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 * joinFailureBurst {
		_, err := a.Join(ctx, &v1.JoinRequest{Token: bound.GetSecret(), HostId: "h6", Csr: csr})
		wantCode(t, "a real token for another host", err, codes.PermissionDenied, "is for host h5")
		if t.Failed() {
			t.Fatalf("after %d joins with a real token", i)
		}
	}
	for i := range joinFailureBurst {
		_, err := a.Join(ctx, &v1.JoinRequest{Token: "guess", HostId: "h6", Csr: csr})
		wantCode(t, "an unknown token", err, codes.Unauthenticated, "not a valid join token")
		if t.Failed() {
			t.Fatalf("after %d guesses", i)
		}
	}
	_, err = a.Join(ctx, &v1.JoinRequest{Token: "guess", HostId: "h6", Csr: csr})
	wantCode(t, "a guess past the burst", err, codes.ResourceExhausted, "too many joins with unknown tokens from 127.0.0.1")
	_, err = a.Join(ctx, &v1.JoinRequest{Token: bound.GetSecret(), HostId: "h5", Csr: csr})
	wantCode(t, "a right token from the limited address", err, codes.ResourceExhausted, "too many joins with unknown tokens")
	if n := f.refusals(t, limitJoinFailures); n < 2 {
		t.Errorf("refusals of %s: %v, want at least 2", limitJoinFailures, n)
	}
	// The right token was not spent; another address joins with it.
	if _, err := b.Join(ctx, &v1.JoinRequest{Token: bound.GetSecret(), HostId: "h5", Csr: csr}); err != nil {
		t.Errorf("the right token from another address: %v", err)
	}
}
