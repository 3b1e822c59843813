package testcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBuilds()
	os.Exit(code)
}

func TestEtcdClusterQuorumLossAndRestart(t *testing.T) {
	c := StartEtcd(t, 3)
	if got := len(c.Endpoints()); got != 3 {
		t.Fatalf("Endpoints: %d, want 3", got)
	}
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	put := func(key, val string, d time.Duration) error {
		pctx, pcancel := context.WithTimeout(ctx, d)
		defer pcancel()
		_, err := cli.Put(pctx, key, val)
		return err
	}
	get := func(key string) string {
		t.Helper()
		gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
		defer gcancel()
		resp, err := cli.Get(gctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if len(resp.Kvs) != 1 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}

	if err := put("/t/before", "v1", 5*time.Second); err != nil {
		t.Fatalf("put with a healthy cluster: %v", err)
	}
	if got := get("/t/before"); got != "v1" {
		t.Fatalf("read back %q, want v1", got)
	}

	// A graceful stop of one member keeps quorum, and the member exits 0.
	began := time.Now()
	if err := c.Stop(0); err != nil {
		t.Fatalf("stop member 0: %v", err)
	}
	t.Logf("member 0 stopped (SIGTERM) in %s", time.Since(began).Round(time.Millisecond))
	if c.Running(0) {
		t.Fatal("member 0 still running after Stop")
	}
	if err := c.members[0].proc.waitErr(); err != nil {
		t.Fatalf("member 0 exit after SIGTERM: %v, want status 0", err)
	}
	if err := put("/t/two-of-three", "v2", 5*time.Second); err != nil {
		t.Fatalf("put with 2 of 3 members: %v", err)
	}
	began = time.Now()
	if err := c.Restart(0); err != nil {
		t.Fatalf("restart member 0: %v", err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("after restarting member 0: %v", err)
	}
	t.Logf("one stopped member restarted, cluster healthy in %s", time.Since(began).Round(time.Millisecond))

	// Kill 2 of 3: no quorum, so a write cannot commit.
	for _, i := range []int{1, 2} {
		if err := c.Kill(i); err != nil {
			t.Fatalf("kill member %d: %v", i, err)
		}
		if c.Running(i) {
			t.Fatalf("member %d still running after Kill", i)
		}
	}
	if err := put("/t/no-quorum", "lost", 1500*time.Millisecond); err == nil {
		t.Fatal("put succeeded with 1 of 3 members running")
	}
	if hasQuorum(ctx, c) {
		t.Fatal("HasQuorum with 1 of 3 members running")
	}

	began = time.Now()
	for _, i := range []int{1, 2} {
		if err := c.Restart(i); err != nil {
			t.Fatalf("restart member %d: %v", i, err)
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("after restarting 2 killed members: %v", err)
	}
	t.Logf("two killed members restarted, cluster healthy in %s", time.Since(began).Round(time.Millisecond))
	if !c.HasQuorum(ctx) {
		t.Fatal("no quorum after WaitHealthy")
	}
	if err := put("/t/after", "v3", 5*time.Second); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	for key, want := range map[string]string{"/t/before": "v1", "/t/two-of-three": "v2", "/t/after": "v3"} {
		if got := get(key); got != want {
			t.Errorf("%s = %q after restarts, want %q", key, got, want)
		}
	}
	if err := c.Restart(1); err == nil {
		t.Error("Restart of a running member succeeded")
	}
	if err := c.Kill(7); err == nil {
		t.Error("Kill(7) of a 3-member cluster succeeded")
	}

	// Every member dies; Restart returns for each although the first ones
	// back have no quorum to serve with.
	for i := range 3 {
		if err := c.Kill(i); err != nil {
			t.Fatalf("kill member %d: %v", i, err)
		}
	}
	if err := c.Restart(0); err != nil {
		t.Fatalf("restart member 0 alone: %v", err)
	}
	if hasQuorum(ctx, c) {
		t.Fatal("HasQuorum with 1 of 3 members running")
	}
	began = time.Now()
	for _, i := range []int{1, 2} {
		if err := c.Restart(i); err != nil {
			t.Fatalf("restart member %d: %v", i, err)
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("after restarting every member: %v", err)
	}
	t.Logf("whole cluster restarted, healthy in %s", time.Since(began).Round(time.Millisecond))
	if got := get("/t/after"); got != "v3" {
		t.Errorf("/t/after = %q after a full restart, want v3", got)
	}
}

// hasQuorum is HasQuorum with a 1 s probe, to keep the test short.
func hasQuorum(ctx context.Context, c *EtcdCluster) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return c.HasQuorum(ctx)
}

func TestEtcdNodeBadFlags(t *testing.T) {
	bin := BuildEtcdNode(t)
	if again := BuildEtcdNode(t); again != bin {
		t.Fatalf("BuildEtcdNode built twice: %s, %s", bin, again)
	}
	dir := t.TempDir()
	good := map[string]string{
		"--name":            "n1",
		"--data-dir":        dir,
		"--listen-client":   "http://127.0.0.1:1",
		"--listen-peer":     "http://127.0.0.1:2",
		"--initial-cluster": "n1=http://127.0.0.1:2",
	}
	with := func(k, v string) []string {
		var args []string
		for gk, gv := range good {
			if gk == k {
				if v == "<unset>" {
					continue
				}
				gv = v
			}
			args = append(args, gk+"="+gv)
		}
		if _, ok := good[k]; !ok {
			args = append(args, k+"="+v)
		}
		return args
	}
	cases := []struct {
		flag, value, want string
	}{
		{"--name", "<unset>", "--name"},
		{"--data-dir", "<unset>", "--data-dir"},
		{"--listen-client", "127.0.0.1:1", "--listen-client"},
		{"--listen-client", "http://[::1", "--listen-client"},
		{"--listen-peer", "http://127.0.0.1", "--listen-peer"},
		{"--initial-cluster", "n2=http://127.0.0.1:2", "--initial-cluster"},
		{"--initial-cluster", "n1", "--initial-cluster"},
		{"--initial-cluster", "n1=http://127.0.0.1:9", "--initial-cluster"},
		{"--initial-cluster-state", "maybe", "--initial-cluster-state"},
		{"--heartbeat", "0s", "--heartbeat"},
		{"--heartbeat", "soon", "heartbeat"},
		{"--election", "100ms", "--election"},
		{"--log-level", "loud", "--log-level"},
		{"--max-txn-ops", "0", "--max-txn-ops"},
		{"--max-txn-ops", "1048577", "--max-txn-ops"},
		{"--max-request-bytes", "0", "--max-request-bytes"},
		{"--max-request-bytes", "67108865", "--max-request-bytes"},
	}
	for _, tc := range cases {
		t.Run(strings.TrimPrefix(tc.flag, "--")+"="+tc.value, func(t *testing.T) {
			out, err := exec.Command(bin, with(tc.flag, tc.value)...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "goroutine ") {
				t.Fatalf("output does not name %s (or shows a panic):\n%s", tc.want, out)
			}
		})
	}
}

func TestEtcdNodeExitsWhenServerFails(t *testing.T) {
	bin := BuildEtcdNode(t)
	// The client port is held by this test, so the server cannot start.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--name", "n1", "--data-dir", t.TempDir(),
		"--listen-client", "http://"+ln.Addr().String(), "--listen-peer", peer,
		"--initial-cluster", "n1="+peer).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "address already in use") {
		t.Fatalf("output does not say why:\n%s", out)
	}
}

// echoServer echoes every connection; it counts the connections it accepted.
func echoServer(t *testing.T, addr string) (net.Listener, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln, &accepted
}

func roundTrip(c net.Conn, msg string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

func TestProxyCutAndRestore(t *testing.T) {
	target, accepted := echoServer(t, "127.0.0.1:0")
	var link Link = NewProxy(t, target.Addr().String())
	p := link.(*Proxy)

	live, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if got, err := roundTrip(live, "hello"); err != nil || got != "hello" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	testkit.Eventually(t, 20*time.Second, "bytes counted both ways", func() bool {
		return p.BytesUp() == 6 && p.BytesDown() == 6 && p.Conns() == 1
	})

	if err := link.Cut(); err != nil {
		t.Fatal(err)
	}
	// The live connection is broken...
	if got, err := roundTrip(live, "after cut"); err == nil {
		t.Fatalf("live connection still works after Cut: %q", got)
	}
	// ...and new ones are refused before reaching the target.
	before := accepted.Load()
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		got, err := roundTrip(c, "new while cut")
		c.Close()
		if err == nil {
			t.Fatalf("new connection works while cut: %q", got)
		}
	}
	if p.Refused() < 1 {
		t.Fatalf("Refused = %d, want at least 1", p.Refused())
	}
	if n := accepted.Load(); n != before {
		t.Fatalf("target accepted %d connections while cut", n-before)
	}
	if p.BytesUp() != 6 {
		t.Fatalf("BytesUp = %d after cut, want 6 (nothing forwarded)", p.BytesUp())
	}

	if err := link.Restore(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("dial after Restore: %v", err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "back"); err != nil || got != "back" {
		t.Fatalf("after Restore: %q, %v", got, err)
	}
	testkit.Eventually(t, 20*time.Second, "bytes counted after restore", func() bool {
		return p.BytesUp() == 11 && p.BytesDown() == 11
	})
}

func TestNetNSCutAndRestore(t *testing.T) {
	ns, err := NewNetNS(t)
	if errors.Is(err, ErrNoNetNS) {
		t.Skipf("no network namespaces here (%v); the Proxy fallback is tested instead", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var link Link = ns
	ln, accepted := echoServer(t, net.JoinHostPort(ns.HostAddr(), "0"))
	port := ln.Addr().(*net.TCPAddr).Port
	script := fmt.Sprintf("exec 3<>/dev/tcp/%s/%d; echo hi >&3; read -t 3 line <&3; test \"$line\" = hi", ns.HostAddr(), port)
	reach := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := ns.CommandContext(ctx, "bash", "-c", script).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}

	if err := reach(5 * time.Second); err != nil {
		t.Fatalf("namespace cannot reach %s:%d: %v", ns.HostAddr(), port, err)
	}
	if accepted.Load() != 1 {
		t.Fatalf("host accepted %d connections, want 1", accepted.Load())
	}
	// Inside the namespace the host's loopback is not reachable.
	if out, err := ns.Command("bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d", port)).CombinedOutput(); err == nil {
		t.Fatalf("namespace reached its own 127.0.0.1:%d (%s): not isolated", port, out)
	}

	if err := link.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := reach(1500 * time.Millisecond); err == nil {
		t.Fatal("namespace reached the host after Cut")
	}
	if accepted.Load() != 1 {
		t.Fatalf("host accepted %d connections after Cut, want still 1", accepted.Load())
	}

	if err := link.Restore(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "namespace reaches the host after Restore", func() bool {
		return reach(2*time.Second) == nil
	})
	if accepted.Load() < 2 {
		t.Fatalf("host accepted %d connections, want at least 2", accepted.Load())
	}
}
