// Package store owns Fleetwave's etcd keyspace (/fleetwave/v1/...): its
// layout (keys.go), every read and write of a Fleetwave value, the fenced
// transactions of the rollout leader and the watch mirror. Other packages
// see typed protobuf values, never keys. Writes the rollout leader makes are
// fenced: they compare the leader's election key, so a deposed leader's
// writes fail with ErrNotLeader. It also dials etcd and starts the embedded
// single-node etcd server.
//
// It is not the only importer of the etcd client. Package coordinator holds
// the client it dials here and uses it for its session lease, the leader
// election (etcd's concurrency package writes the key under ElectionPrefix;
// the coordinator campaigns, resigns and looks the leader up to forward
// calls) and etcd member status; internal/testkit/testcluster runs etcd members for
// fault tests; and some tests read or watch the keyspace to observe it.
// None of them writes any other key of the keyspace.
//
// Files: keys.go (the layout), services.go (services and releases),
// rollouts.go, events.go, tokens.go, revocations.go, audit.go, hosts.go (hosts,
// connections, reports, coordinator registrations), kv.go (the instrumented
// KV), mirror.go, embed.go.
//
// It must not import the rollout engine, gRPC services or the agent.
package store

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

var (
	// ErrNotFound is returned when a key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when a create finds the key already there.
	ErrExists = errors.New("already exists")
	// ErrNotLeader is returned when a fenced write finds that the caller is
	// no longer the leader, and (wrapped) by calls that need the rollout
	// leader on a coordinator that does not lead. Test with errors.Is.
	ErrNotLeader = errors.New("not the leader")
	// ErrHistoryShort is returned (with the revision) when a decision was
	// committed but some of its events could not be recorded.
	ErrHistoryShort = errors.New("history incomplete")
	// ErrTombstoned is returned when a release would reuse the version of
	// a deleted release (ReleaseTombstone).
	ErrTombstoned = errors.New("version of a deleted release")
	// ErrConflict is returned when a compare-and-swap lost a race.
	ErrConflict = errors.New("concurrent update")
	// ErrBeingDeleted: the service is being deleted (`service delete`): its
	// spec cannot change until the removal has ended.
	ErrBeingDeleted = errors.New("service is being deleted")
)

// Store is a typed view of the keyspace over an etcd client.
type Store struct {
	c *clientv3.Client
	// txnOps is how many operations one transaction may carry: etcd's
	// --max-txn-ops as the operator says it is (SetMaxTxnOps), 128 (etcd's
	// default) unless told. It sizes the batches of reports and of a
	// decision's further events (Batch).
	txnOps int
	// eventLayout is the layout of events written (SetEventLayout).
	eventLayout func() EventLayout
	// writer is this store's random id in event keys, eventWrites its
	// count of event writes (eventWrite).
	writer      string
	eventWrites atomic.Uint64
	// keysPage, when set (tests), replaces eventKeysPage.
	keysPage int
	// undecodable counts the event records listings and watches skipped
	// (UndecodableEvents); log says which (SetLogger).
	undecodable atomic.Uint64
	log         zerolog.Logger
	// scanBytes is about how many bytes of keys and values a page of scan
	// asks for (scanPageBytes; tests make it smaller with a client that
	// takes less).
	scanBytes int
}

// New wraps an etcd client.
func New(c *clientv3.Client) *Store {
	var id [4]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails (Go 1.24)
	return &Store{c: c, txnOps: DefaultMaxTxnOps, writer: hex.EncodeToString(id[:]), log: zerolog.Nop(), scanBytes: scanPageBytes}
}

// SetLogger sets the logger the store reports skipped records to (a
// no-op logger unless set). Call it before the store is used.
func (s *Store) SetLogger(log zerolog.Logger) { s.log = log }

// DefaultMaxTxnOps is etcd's default limit of operations in one
// transaction (--max-txn-ops); EmbeddedMaxTxnOps is the coordinator's
// default with its embedded etcd (StartEmbedded allows MaxMaxTxnOps), and
// MaxMaxTxnOps the most SetMaxTxnOps takes. Typical reports and events
// are about 150 bytes an operation, but the largest ones are not (a
// report validateReport takes up to about 320 KB, an event the 4 KB
// reason of a failed host): batches are bounded by MaxTxnBytes as well.
const (
	DefaultMaxTxnOps  = 128
	EmbeddedMaxTxnOps = 1024
	MaxMaxTxnOps      = 4096
)

// MaxTxnBytes bounds the keys and values of one batch of reports, or of
// a decision's events (with the decision's own writes when they go
// together): under etcd's default --max-request-bytes (1.5 MiB), with
// room for the request's framing, whatever --etcd-max-txn-ops allows.
// One report or event over it still goes alone.
const MaxTxnBytes = 1 << 20

// opBytes is what an operation adds to a transaction's request, about.
func opBytes(op clientv3.Op) int { return len(op.KeyBytes()) + len(op.ValueBytes()) }

// fitOps is how many of ops, from the first, go in a transaction that has
// room for n operations and budget bytes; at least one (when n > 0) if
// one is true.
func fitOps(ops []clientv3.Op, n, budget int, one bool) int {
	k, size := 0, 0
	for k < len(ops) && k < n {
		size += opBytes(ops[k])
		if size > budget && (k > 0 || !one) {
			break
		}
		k++
	}
	return k
}

// txnHeadroom is what a batch leaves of a transaction's operations for the
// writes that go with it (a decision's rollout parts and service).
const txnHeadroom = 28

// SetMaxTxnOps tells the store how many operations etcd takes in one
// transaction (its --max-txn-ops), between DefaultMaxTxnOps and
// MaxMaxTxnOps; CheckMaxTxnOps checks that etcd agrees. Call it before the
// store is used.
func (s *Store) SetMaxTxnOps(n int) error {
	if n < DefaultMaxTxnOps || n > MaxMaxTxnOps {
		return fmt.Errorf("max txn ops %d: want %d to %d (etcd's --max-txn-ops, 128 by default)", n, DefaultMaxTxnOps, MaxMaxTxnOps)
	}
	s.txnOps = n
	return nil
}

// Batch is the most reports PutReports takes at once, and the size of the
// transactions that carry a decision's further events.
func (s *Store) Batch() int { return s.txnOps - txnHeadroom }

// txnProbeKey is read by CheckMaxTxnOps (it never exists).
const txnProbeKey = Prefix + "txn-ops-probe"

// CheckMaxTxnOps sends etcd a read-only transaction of as many operations
// as SetMaxTxnOps said it takes: an etcd whose --max-txn-ops is lower
// refuses it, and the error says so (otherwise every batch would fail).
func (s *Store) CheckMaxTxnOps(ctx context.Context) error {
	ops := make([]clientv3.Op, s.txnOps)
	for i := range ops {
		ops[i] = clientv3.OpGet(txnProbeKey)
	}
	if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			return fmt.Errorf("etcd refused a transaction of %d operations (its --max-txn-ops is lower): %w", s.txnOps, err)
		}
		return fmt.Errorf("etcd transaction of %d operations: %w", s.txnOps, err)
	}
	return nil
}

// Client returns the etcd client (for elections and sessions).
func (s *Store) Client() *clientv3.Client { return s.c }

// RecvMsgBytes is the largest response the etcd client Dial makes takes
// (a larger one fails with ResourceExhausted): reads that may be large go
// in pages (scan).
const RecvMsgBytes = 64 << 20

// Dial connects to etcd endpoints.
func Dial(endpoints []string) (*clientv3.Client, error) { return DialTLS(endpoints, nil) }

// DialTLS connects to etcd endpoints over TLS (nil: plain text).
func DialTLS(endpoints []string, tc *tls.Config) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		TLS:                tc,
		Endpoints:          endpoints,
		DialTimeout:        5 * time.Second,
		DialKeepAliveTime:  5 * time.Second,
		MaxCallSendMsgSize: 16 << 20,
		MaxCallRecvMsgSize: RecvMsgBytes,
		// The coordinator logs what matters itself; the client's own zap
		// logger only repeats retries and shutdown noise.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	return c, nil
}

// Fence is a condition every leader write carries: the election key still
// exists with the create revision the leader won it with.
type Fence struct {
	Key string
	Rev int64
}

func (f *Fence) cmps() []clientv3.Cmp {
	if f == nil {
		return nil
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)}
}

func marshal(m proto.Message) (string, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("marshal %T: %w", m, err)
	}
	return string(b), nil
}

func get[T proto.Message](ctx context.Context, s *Store, key string, m T) (T, int64, error) {
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return m, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return m, 0, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err := proto.Unmarshal(resp.Kvs[0].Value, m); err != nil {
		return m, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return m, resp.Kvs[0].ModRevision, nil
}

// scanPageBytes is what a page of scan aims at: an eighth of what the
// client takes in one response (RecvMsgBytes), so a page whose records
// are several times larger than the last page's still fits. A record
// larger than it (etcd's --max-request-bytes allows 16 MiB with the
// embedded etcd, 1.5 MiB by default) is a page alone.
const scanPageBytes = RecvMsgBytes / 8

// scanOpts say how scan pages: keysOnly reads keys and revisions without
// values; first is the first page's number of keys, maxKeys the most a
// page has (0: as many as scanBytes allows).
type scanOpts struct {
	keysOnly       bool
	first, maxKeys int
}

// scan calls fn with every key under prefix, in key order, read in pages
// at revision at (0: the first page's revision), and returns the revision
// read at: a watch from it + 1 misses nothing. A page aims at s.scanBytes
// bytes of keys and values, from the average size of the last page's
// records, with at most twice its keys; a page the client refuses as too
// large (ResourceExhausted: larger records after smaller ones; etcd's
// "too many requests" is one too, where smaller pages do no harm) is
// asked again with an eighth of the keys, down to one record (at most
// etcd's --max-request-bytes, under RecvMsgBytes).
//
// Pages are read in ascending key order, the only order in which etcd
// stops at the limit. etcd (3.7) also counts the rest of the range for
// every Get with a limit (its Range always asks for the total), so the
// number of pages multiplies a pass over the range's index: 1,000,000
// reports (120 MB) took 95 to 130 s in pages of 1,024 keys, 11 s in pages
// of 1 MiB, 4 to 6 s in pages of 8 MiB. The client's GetStream (etcd
// 3.7's RangeStream) does not count, but was no faster (3.4 to 6.6 s),
// sizes its chunks to the server's --max-request-bytes rather than to
// what this client takes, is missing from an external etcd before 3.7,
// and bypasses InstrumentKV.
func (s *Store) scan(ctx context.Context, prefix string, at int64, o scanOpts, fn func(*mvccpb.KeyValue) error) (int64, error) {
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	limit := max(1, o.first)
	if o.maxKeys > 0 {
		limit = min(limit, o.maxKeys)
	}
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(limit))}
		if o.keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		if at != 0 {
			opts = append(opts, clientv3.WithRev(at))
		}
		resp, err := s.c.Get(ctx, key, opts...)
		if err != nil {
			if limit > 1 && status.Code(err) == codes.ResourceExhausted && ctx.Err() == nil {
				limit = max(1, limit/8)
				continue
			}
			return 0, fmt.Errorf("list %s from %q (%d keys) at revision %d: %w", prefix, key, limit, at, err)
		}
		if at == 0 {
			at = resp.Header.Revision
		}
		size := 0
		for _, kv := range resp.Kvs {
			size += len(kv.Key) + len(kv.Value)
			if err := fn(kv); err != nil {
				return 0, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return at, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		avg := max(1, size/len(resp.Kvs))
		limit = max(1, min(s.scanBytes/avg, 2*len(resp.Kvs)))
		if o.maxKeys > 0 {
			limit = min(limit, o.maxKeys)
		}
	}
}

func list[T proto.Message](ctx context.Context, s *Store, prefix string, mk func() T) ([]T, error) {
	resp, err := s.c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m := mk()
		if err := proto.Unmarshal(kv.Value, m); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// fenceErr tells a lost fence from a lost compare-and-swap after a failed
// transaction whose Else branch read the fence key.
func fenceErr(f *Fence, resp *clientv3.TxnResponse) error {
	if f != nil && len(resp.Responses) > 0 {
		if rr := resp.Responses[0].GetResponseRange(); rr == nil || len(rr.Kvs) == 0 || rr.Kvs[0].CreateRevision != f.Rev {
			return ErrNotLeader
		}
	}
	return ErrConflict
}
