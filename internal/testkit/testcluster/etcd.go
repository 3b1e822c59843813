package testcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// errPortTaken marks a start that failed because a chosen port was taken
// between choosing it and binding it; StartEtcd retries with new ports.
var errPortTaken = errors.New("port taken")

// ErrMemberExited means an etcd member's process exited without being asked
// to (Kill and Stop are asking).
var ErrMemberExited = errors.New("etcd member exited")

// EtcdCluster is an etcd cluster whose members are separate etcdnode
// processes on loopback. Members are indexed from 0 (member i is named
// "n<i+1>"). Its methods are safe for concurrent use.
type EtcdCluster struct {
	t       testing.TB
	bin     string
	dir     string
	members []*member
	cli     *clientv3.Client // the helpers' own client, for health checks
	extra   []string         // more etcdnode flags, for every member
}

type member struct {
	name, dataDir, clientURL, peerURL string
	logPath, outPath                  string
	cluster                           string // --initial-cluster
	extra                             []string

	mu   sync.Mutex
	proc *proc
	down bool // taken down on purpose (Kill or Stop)
}

// StartEtcd starts an n-member cluster as separate processes on free
// loopback ports, each member's data and logs under a test temp directory,
// and waits until every member agrees on a leader and a quorum read
// succeeds. Cleanup stops every member (SIGTERM, then SIGKILL) and, when the
// test failed, prints the tail of each member's logs.
func StartEtcd(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	return StartEtcdArgs(t, n)
}

// StartEtcdArgs is StartEtcd with more etcdnode flags for every member
// (e.g. "--max-txn-ops", "1024").
func StartEtcdArgs(t testing.TB, n int, extra ...string) *EtcdCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartEtcd: n = %d, want at least 1", n)
	}
	bin := BuildEtcdNode(t)
	c := &EtcdCluster{t: t, bin: bin, dir: t.TempDir(), extra: extra}
	t.Cleanup(c.cleanup)
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		began := time.Now()
		if err = c.start(n, attempt); err == nil {
			t.Logf("etcd: %d members healthy in %s (logs in %s)", n, time.Since(began).Round(time.Millisecond), c.base(attempt))
			return c
		}
		c.stopAll(true, -1)
		if !errors.Is(err, errPortTaken) {
			break
		}
		t.Logf("etcd: attempt %d: %v; retrying with other ports", attempt, err)
	}
	t.Fatalf("start %d-member etcd cluster: %v", n, err)
	return nil
}

func (c *EtcdCluster) base(attempt int) string {
	if attempt == 1 {
		return c.dir
	}
	return filepath.Join(c.dir, fmt.Sprintf("retry%d", attempt))
}

func (c *EtcdCluster) start(n, attempt int) error {
	base := c.base(attempt)
	ports, err := freePorts(2 * n)
	if err != nil {
		return err
	}
	c.members = make([]*member, n)
	peers := make([]string, n)
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		m := &member{
			name:      name,
			dataDir:   filepath.Join(base, name, "data"),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			logPath:   filepath.Join(base, name, "etcd.log"),
			outPath:   filepath.Join(base, name, "etcdnode.out"),
		}
		if err := os.MkdirAll(filepath.Join(base, name), 0o755); err != nil {
			return fmt.Errorf("member dir: %w", err)
		}
		c.members[i] = m
		peers[i] = name + "=" + m.peerURL
	}
	cluster := strings.Join(peers, ",")
	for _, m := range c.members {
		m.cluster = cluster
		m.extra = c.extra
	}
	for _, m := range c.members {
		if err := m.launch(c.bin, "new"); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// The client is made once every member listens, so its connections do
	// not start in gRPC's reconnect backoff.
	for _, m := range c.members {
		if err := m.waitListening(ctx); err != nil {
			return err
		}
	}
	if c.cli != nil {
		c.cli.Close()
	}
	c.cli, err = newClient(c.Endpoints())
	if err != nil {
		return err
	}
	return c.WaitHealthy(ctx)
}

func newClient(endpoints []string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// launch starts the member's process. The caller holds no lock.
func (m *member) launch(bin, state string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil && !m.proc.exited() {
		return fmt.Errorf("member %s is running", m.name)
	}
	args := []string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client", m.clientURL,
		"--listen-peer", m.peerURL,
		"--initial-cluster", m.cluster,
		"--initial-cluster-state", state,
		"--log-file", m.logPath,
	}
	args = append(args, m.extra...)
	p, err := startProc(bin, args, m.outPath)
	if err != nil {
		return fmt.Errorf("member %s: %w", m.name, err)
	}
	m.proc, m.down = p, false
	return nil
}

// running reports whether the member's process is alive.
func (m *member) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc != nil && !m.proc.exited()
}

// crashed returns an error when the member exited without being asked to.
func (m *member) crashed() error {
	m.mu.Lock()
	p, down := m.proc, m.down
	m.mu.Unlock()
	if p == nil || down || !p.exited() {
		return nil
	}
	out := tailFile(m.outPath, 2000) + tailFile(m.logPath, 2000)
	err := fmt.Errorf("%w: %s: %v\n%s", ErrMemberExited, m.name, p.waitErr(), tailFile(m.outPath, 2000))
	if strings.Contains(out, "address already in use") {
		return fmt.Errorf("%w: %w", errPortTaken, err)
	}
	return err
}

func (m *member) takeDown(kill bool) error {
	m.mu.Lock()
	p := m.proc
	m.down = true
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	if kill {
		p.kill()
		return nil
	}
	if err := p.stop(stopGrace); err != nil {
		return fmt.Errorf("stop member %s: %w", m.name, err)
	}
	return nil
}

func (c *EtcdCluster) member(i int) (*member, error) {
	if i < 0 || i >= len(c.members) {
		return nil, fmt.Errorf("etcd member index %d out of range [0,%d)", i, len(c.members))
	}
	return c.members[i], nil
}

// Len is the number of members.
func (c *EtcdCluster) Len() int { return len(c.members) }

// Endpoints returns every member's client URL, in member order.
func (c *EtcdCluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// Endpoint returns member i's client URL ("" when i is out of range).
func (c *EtcdCluster) Endpoint(i int) string {
	m, err := c.member(i)
	if err != nil {
		return ""
	}
	return m.clientURL
}

// Name returns member i's name ("" when i is out of range).
func (c *EtcdCluster) Name(i int) string {
	m, err := c.member(i)
	if err != nil {
		return ""
	}
	return m.name
}

// LogPath returns the path of member i's etcd log ("" when out of range).
func (c *EtcdCluster) LogPath(i int) string {
	m, err := c.member(i)
	if err != nil {
		return ""
	}
	return m.logPath
}

// Pid returns member i's process id (0 when out of range or not running).
func (c *EtcdCluster) Pid(i int) int {
	m, err := c.member(i)
	if err != nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || m.proc.exited() {
		return 0
	}
	return m.proc.cmd.Process.Pid
}

// Running reports whether member i's process is alive.
func (c *EtcdCluster) Running(i int) bool {
	m, err := c.member(i)
	return err == nil && m.running()
}

// Kill sends SIGKILL to member i and waits for the process to exit. Killing
// a member that is not running does nothing.
func (c *EtcdCluster) Kill(i int) error {
	m, err := c.member(i)
	if err != nil {
		return err
	}
	return m.takeDown(true)
}

// Stop sends SIGTERM to member i and waits for it to exit; after 10 s it is
// killed and Stop reports an error.
func (c *EtcdCluster) Stop(i int) error {
	m, err := c.member(i)
	if err != nil {
		return err
	}
	return m.takeDown(false)
}

// Restart starts member i again with the same data directory and ports
// (initial-cluster-state existing) and waits until it listens on its client
// port. It does not wait for the member to serve: etcd answers clients only
// once the member has rejoined a quorum, which may need other members back
// first. Use WaitHealthy for that.
func (c *EtcdCluster) Restart(i int) error {
	m, err := c.member(i)
	if err != nil {
		return err
	}
	if err := m.launch(c.bin, "existing"); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := m.waitListening(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// waitListening waits until the member accepts TCP connections on its
// client port (etcd binds its ports before it joins the cluster).
func (m *member) waitListening(ctx context.Context) error {
	u, err := url.Parse(m.clientURL)
	if err != nil {
		return fmt.Errorf("member %s: %w", m.name, err)
	}
	var d net.Dialer
	for {
		if err := m.crashed(); err != nil {
			return err
		}
		dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		conn, err := d.DialContext(dctx, "tcp", u.Host)
		dcancel()
		if err == nil {
			conn.Close()
			return nil
		}
		if perr := pause(ctx); perr != nil {
			return fmt.Errorf("member %s: not listening on %s: %w (last: %v)", m.name, u.Host, perr, err)
		}
	}
}

// Client returns a new client for every member, closed at the end of t.
func (c *EtcdCluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := newClient(c.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// healthy checks once that every member that should run answers Status,
// all of them name the same leader, and a linearizable read succeeds.
func (c *EtcdCluster) healthy(ctx context.Context) error {
	var leader uint64
	up := 0
	for _, m := range c.members {
		if err := m.crashed(); err != nil {
			return err
		}
		if !m.running() {
			continue
		}
		up++
		sctx, cancel := context.WithTimeout(ctx, checkTimeout)
		st, err := c.cli.Status(sctx, m.clientURL)
		cancel()
		switch {
		case err != nil:
			return fmt.Errorf("member %s: status: %w", m.name, err)
		case st.Leader == 0:
			return fmt.Errorf("member %s: no leader", m.name)
		case leader != 0 && st.Leader != leader:
			return fmt.Errorf("members disagree on the leader (%x, %x)", leader, st.Leader)
		}
		leader = st.Leader
	}
	if up == 0 {
		return errors.New("no member is running")
	}
	qctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if _, err := c.cli.Get(qctx, "/testcluster/health"); err != nil {
		return fmt.Errorf("quorum read: %w", err)
	}
	return nil
}

// WaitHealthy waits until every member that was not taken down answers,
// they agree on a leader and a quorum read succeeds. A member that exited
// by itself is an error at once.
func (c *EtcdCluster) WaitHealthy(ctx context.Context) error {
	for {
		err := c.healthy(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrMemberExited) {
			return err
		}
		if perr := pause(ctx); perr != nil {
			return fmt.Errorf("etcd cluster not healthy: %w (last: %v)", perr, err)
		}
	}
}

// HasQuorum reports whether a linearizable read succeeds now: within
// quorumProbe (2 s) or before ctx ends, whichever is first. It does not wait
// for an election to finish; WaitHealthy does.
func (c *EtcdCluster) HasQuorum(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, quorumProbe)
	defer cancel()
	_, err := c.cli.Get(ctx, "/testcluster/health")
	return err == nil
}

// stopAll takes every member but skip down at once.
func (c *EtcdCluster) stopAll(kill bool, skip int) []error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i, m := range c.members {
		if i == skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.takeDown(kill); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// cleanup stops every member: followers first, then the leader, so the
// leader finds no peer to hand leadership to and does not wait for one
// (stopping all at once costs the leader's request timeout, about 6 s).
func (c *EtcdCluster) cleanup() {
	began := time.Now()
	leader := c.leaderIndex()
	if c.cli != nil {
		c.cli.Close()
	}
	errs := c.stopAll(false, leader)
	if leader >= 0 {
		if err := c.members[leader].takeDown(false); err != nil {
			errs = append(errs, err)
		}
	}
	c.t.Logf("etcd: members stopped in %s", time.Since(began).Round(time.Millisecond))
	for _, err := range errs {
		c.t.Logf("etcd cleanup: %v", err)
	}
	if !c.t.Failed() {
		return
	}
	for _, m := range c.members {
		c.t.Logf("---- etcd member %s (%s) output:\n%s", m.name, m.clientURL, tailFile(m.outPath, 3000))
		c.t.Logf("---- etcd member %s log (%s), last lines:\n%s", m.name, m.logPath, tailFile(m.logPath, 6000))
	}
}

// leaderIndex asks the running members who leads; -1 if none answers.
func (c *EtcdCluster) leaderIndex() int {
	if c.cli == nil {
		return -1
	}
	for i, m := range c.members {
		if !m.running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		st, err := c.cli.Status(ctx, m.clientURL)
		cancel()
		if err != nil || st.Leader == 0 {
			continue
		}
		if st.Header.MemberId == st.Leader {
			return i
		}
		for j, o := range c.members {
			if j == i || !o.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			ost, err := c.cli.Status(ctx, o.clientURL)
			cancel()
			if err == nil && ost.Header.MemberId == st.Leader {
				return j
			}
		}
		return -1
	}
	return -1
}

// pause waits one poll interval or until ctx ends.
func pause(ctx context.Context) error {
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
