// Package store owns Fleetwave's etcd keyspace (/fleetwave/v1/...). It is the
// only package that imports the etcd client: every other package sees typed
// protobuf values. Writes the rollout leader makes are fenced: they compare
// the leader's election key, so a deposed leader's writes fail with
// ErrNotLeader. It also starts the embedded single-node etcd server.
//
// It must not import the rollout engine, gRPC services or the agent.
package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Prefix is the root of Fleetwave's keyspace.
const Prefix = "/fleetwave/v1/"

// Key prefixes, each followed by ids separated by "/".
const (
	ServicesPrefix = Prefix + "services/" // <service> -> Service
	ReleasesPrefix = Prefix + "releases/" // <service>/<version> -> Release
	RolloutsPrefix = Prefix + "rollouts/" // <service>/<id> -> Rollout
	HostsPrefix    = Prefix + "hosts/"    // <host> -> Host (labels; no liveness)
	ConnsPrefix    = Prefix + "conns/"    // <host> -> coordinator name, on that coordinator's lease
	ReportsPrefix  = Prefix + "reports/"  // <host>/<service> -> ServiceReport
	EventsPrefix   = Prefix + "events/"   // <service>/<rollout>/<time>-<n> -> Event (not mirrored)
	// CoordinatorsPrefix: <name> -> CoordinatorInfo, on that coordinator's
	// session lease (gone when it dies).
	CoordinatorsPrefix = Prefix + "coordinators/"
	// TokensPrefix: <id> -> Token (secret hashed).
	TokensPrefix = Prefix + "tokens/"
	// AuditPrefix: <unix nanos>-<n> -> AuditEntry (not mirrored).
	AuditPrefix    = Prefix + "audit/"
	ElectionPrefix = Prefix + "leader"
)

var (
	// ErrNotFound is returned when a key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when a create finds the key already there.
	ErrExists = errors.New("already exists")
	// ErrNotLeader is returned when a fenced write finds that the caller is
	// no longer the leader.
	ErrNotLeader = errors.New("not the leader")
	// ErrHistoryShort is returned (with the revision) when a decision was
	// committed but some of its events could not be recorded.
	ErrHistoryShort = errors.New("history incomplete")
	// ErrConflict is returned when a compare-and-swap lost a race.
	ErrConflict = errors.New("concurrent update")
)

// Store is a typed view of the keyspace over an etcd client.
type Store struct {
	c *clientv3.Client
}

// New wraps an etcd client.
func New(c *clientv3.Client) *Store { return &Store{c: c} }

// Client returns the etcd client (for elections and sessions).
func (s *Store) Client() *clientv3.Client { return s.c }

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
		MaxCallRecvMsgSize: 64 << 20,
		// The coordinator logs what matters itself; the client's own zap
		// logger only repeats retries and shutdown noise.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	return c, nil
}

// ServiceKey and the helpers below it make one object's key: its prefix
// above followed by its ids joined by "/".
func ServiceKey(name string) string         { return ServicesPrefix + name }
func ReleaseKey(service, ver string) string { return ReleasesPrefix + service + "/" + ver }
func RolloutKey(service, id string) string  { return RolloutsPrefix + service + "/" + id }
func HostKey(id string) string              { return HostsPrefix + id }
func ConnKey(id string) string              { return ConnsPrefix + id }
func ReportKey(host, service string) string {
	return ReportsPrefix + host + "/" + service
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

// GetService returns a service and its mod revision.
func (s *Store) GetService(ctx context.Context, name string) (*v1.Service, int64, error) {
	return get(ctx, s, ServiceKey(name), &v1.Service{})
}

// ListServices returns every service.
func (s *Store) ListServices(ctx context.Context) ([]*v1.Service, error) {
	return list(ctx, s, ServicesPrefix, func() *v1.Service { return &v1.Service{} })
}

// ApplySpec creates a service or replaces its spec, keeping its status. It
// retries on concurrent updates. created reports whether it was new.
func (s *Store) ApplySpec(ctx context.Context, spec *v1.ServiceSpec, now time.Time) (svc *v1.Service, created bool, err error) {
	key := ServiceKey(spec.GetName())
	for range 10 {
		cur, rev, err := s.GetService(ctx, spec.GetName())
		switch {
		case errors.Is(err, ErrNotFound):
			cur, rev, created = &v1.Service{Status: &v1.ServiceStatus{}}, 0, true
		case err != nil:
			return nil, false, err
		default:
			created = false
		}
		next := proto.Clone(cur).(*v1.Service)
		next.Spec = spec
		next.UpdatedAt = tsOf(now)
		val, err := marshal(next)
		if err != nil {
			return nil, false, err
		}
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, val)).Commit()
		if err != nil {
			return nil, false, fmt.Errorf("apply service %s: %w", spec.GetName(), err)
		}
		if resp.Succeeded {
			return next, created, nil
		}
	}
	return nil, false, fmt.Errorf("apply service %s: %w", spec.GetName(), ErrConflict)
}

// CreateRelease stores a release and returns the revision of the write; a
// release is immutable, so an existing version is ErrExists.
func (s *Store) CreateRelease(ctx context.Context, r *v1.Release) (int64, error) {
	key := ReleaseKey(r.GetService(), r.GetVersion())
	val, err := marshal(r)
	if err != nil {
		return 0, err
	}
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return 0, fmt.Errorf("create release %s/%s: %w", r.GetService(), r.GetVersion(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("release %s/%s: %w", r.GetService(), r.GetVersion(), ErrExists)
	}
	return resp.Header.Revision, nil
}

// GetRelease returns one release.
func (s *Store) GetRelease(ctx context.Context, service, version string) (*v1.Release, error) {
	r, _, err := get(ctx, s, ReleaseKey(service, version), &v1.Release{})
	return r, err
}

// ListReleases returns the releases of a service.
func (s *Store) ListReleases(ctx context.Context, service string) ([]*v1.Release, error) {
	return list(ctx, s, ReleasesPrefix+service+"/", func() *v1.Release { return &v1.Release{} })
}

// GetRollout returns one rollout.
func (s *Store) GetRollout(ctx context.Context, service, id string) (*v1.Rollout, error) {
	r, _, err := get(ctx, s, RolloutKey(service, id), &v1.Rollout{})
	return r, err
}

// ListHosts returns every host record.
func (s *Store) ListHosts(ctx context.Context) ([]*v1.Host, error) {
	return list(ctx, s, HostsPrefix, func() *v1.Host { return &v1.Host{} })
}

// PutHost writes a host record (on connect, when its labels change).
func (s *Store) PutHost(ctx context.Context, h *v1.Host) error {
	val, err := marshal(h)
	if err != nil {
		return err
	}
	if _, err := s.c.Put(ctx, HostKey(h.GetId()), val); err != nil {
		return fmt.Errorf("put host %s: %w", h.GetId(), err)
	}
	return nil
}

// CoordinatorKey is where a coordinator registers itself.
func CoordinatorKey(name string) string { return CoordinatorsPrefix + name }

// PutCoordinator registers a running coordinator on its session lease.
func (s *Store) PutCoordinator(ctx context.Context, info *v1.CoordinatorInfo, lease clientv3.LeaseID) error {
	val, err := marshal(info)
	if err != nil {
		return err
	}
	if _, err := s.c.Put(ctx, CoordinatorKey(info.GetName()), val, clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("register coordinator %s: %w", info.GetName(), err)
	}
	return nil
}

// PutConn marks a host connected to coordinator `by`, on lease (0 = none).
func (s *Store) PutConn(ctx context.Context, host, by string, lease clientv3.LeaseID) error {
	if _, err := s.c.Put(ctx, ConnKey(host), by, clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("put conn %s: %w", host, err)
	}
	return nil
}

// DeleteConn marks a host disconnected, if `by` still holds its connection.
func (s *Store) DeleteConn(ctx context.Context, host, by string) error {
	key := ConnKey(host)
	_, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", by)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("delete conn %s: %w", host, err)
	}
	return nil
}

// PutReport records what a host reported for a service.
func (s *Store) PutReport(ctx context.Context, host string, r *v1.ServiceReport) error {
	val, err := marshal(r)
	if err != nil {
		return err
	}
	if _, err := s.c.Put(ctx, ReportKey(host, r.GetService()), val); err != nil {
		return fmt.Errorf("put report %s/%s: %w", host, r.GetService(), err)
	}
	return nil
}

// WriteRollout writes a rollout and, when svc is not nil, its service (for
// example the status naming a new rollout, or the status after a rollout
// ended) in one fenced transaction. It compares the mod revisions the caller
// read: rolloutRev 0 means the rollout must not exist yet. It returns the
// revision of the write.
func (s *Store) WriteRollout(ctx context.Context, f *Fence, r *v1.Rollout, rolloutRev int64, svc *v1.Service, serviceRev int64, events ...*v1.Event) (int64, error) {
	rkey := RolloutKey(r.GetService(), r.GetId())
	rval, err := marshal(r)
	if err != nil {
		return 0, err
	}
	cmps := f.cmps()
	if rolloutRev == 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(rkey), "=", 0))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(rkey), "=", rolloutRev))
	}
	ops := []clientv3.Op{clientv3.OpPut(rkey, rval)}
	evOps, err := eventOps(events)
	if err != nil {
		return 0, err
	}
	// etcd bounds the operations in one transaction (--max-txn-ops, 128 by
	// default): the decision and the first events go together, the rest
	// follow in batches once the decision is committed.
	var later []clientv3.Op
	if len(evOps) > maxEventOpsInTxn {
		evOps, later = evOps[:maxEventOpsInTxn], evOps[maxEventOpsInTxn:]
	}
	ops = append(ops, evOps...)
	if svc != nil {
		skey := ServiceKey(svc.GetSpec().GetName())
		sval, err := marshal(svc)
		if err != nil {
			return 0, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(skey), "=", serviceRev))
		ops = append(ops, clientv3.OpPut(skey, sval))
	}
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("write rollout %s/%s: %w", r.GetService(), r.GetId(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("write rollout %s/%s: %w", r.GetService(), r.GetId(), fenceErr(f, resp))
	}
	rev := resp.Header.Revision
	for len(later) > 0 {
		n := min(len(later), maxEventOpsInTxn)
		er, err := s.c.Txn(ctx).Then(later[:n]...).Commit()
		if err != nil {
			// The decision stands; only history is short.
			return rev, fmt.Errorf("write rollout %s/%s: %d events not recorded: %w (%w)", r.GetService(), r.GetId(), len(later), ErrHistoryShort, err)
		}
		rev, later = er.Header.Revision, later[n:]
	}
	return rev, nil
}

// maxEventOpsInTxn keeps a transaction under etcd's default limit of 128
// operations, with room for the rollout and service writes.
const maxEventOpsInTxn = 100

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

// PutService replaces a service (fenced, compare-and-swap on serviceRev),
// e.g. to unfreeze it, with the events that record why. It returns the
// revision of the write.
func (s *Store) PutService(ctx context.Context, f *Fence, svc *v1.Service, serviceRev int64, events ...*v1.Event) (int64, error) {
	skey := ServiceKey(svc.GetSpec().GetName())
	sval, err := marshal(svc)
	if err != nil {
		return 0, err
	}
	cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(skey), "=", serviceRev))
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	evOps, err := eventOps(events)
	if err != nil {
		return 0, err
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(append([]clientv3.Op{clientv3.OpPut(skey, sval)}, evOps...)...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("put service %s: %w", svc.GetSpec().GetName(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("put service %s: %w", svc.GetSpec().GetName(), fenceErr(f, resp))
	}
	return resp.Header.Revision, nil
}

// SplitKey returns the parts of key after prefix.
func SplitKey(key, prefix string) []string {
	return strings.Split(strings.TrimPrefix(key, prefix), "/")
}

// EventKey orders a service's events by rollout, then time, then index.
func EventKey(e *v1.Event, n int) string {
	rid := e.GetRolloutId()
	if rid == "" {
		rid = "000000"
	}
	return fmt.Sprintf("%s%s/%s/%020d-%04d", EventsPrefix, e.GetService(), rid, e.GetAt().AsTime().UnixNano(), n)
}

func eventOps(events []*v1.Event) ([]clientv3.Op, error) {
	ops := make([]clientv3.Op, 0, len(events))
	for i, e := range events {
		val, err := marshal(e)
		if err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpPut(EventKey(e, i), val))
	}
	return ops, nil
}

// PutEvents records events outside a rollout write (e.g. an alert sent).
func (s *Store) PutEvents(ctx context.Context, events ...*v1.Event) error {
	ops, err := eventOps(events)
	if err != nil {
		return err
	}
	if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("put events: %w", err)
	}
	return nil
}

// ListEvents returns a service's events (of one rollout if rolloutID is
// set), oldest first.
func (s *Store) ListEvents(ctx context.Context, service, rolloutID string) ([]*v1.Event, error) {
	prefix := EventsPrefix + service + "/"
	if rolloutID != "" {
		prefix += rolloutID + "/"
	}
	return list(ctx, s, prefix, func() *v1.Event { return &v1.Event{} })
}

// RevEvent is an event with the etcd revision it was written at.
type RevEvent struct {
	Event *v1.Event
	Rev   int64
}

// EventsPrefixFor is the key prefix of a service's events (every service
// when service is ""; one rollout's when rolloutID is set too).
func EventsPrefixFor(service, rolloutID string) string {
	p := EventsPrefix
	if service != "" {
		p += service + "/"
		if rolloutID != "" {
			p += rolloutID + "/"
		}
	}
	return p
}

// maxEventBatch bounds one page of a listing of events.
const maxEventBatch = 1000

// EventsSince returns the events under prefix written after revision
// since (0 = all kept), ordered by revision then key (the order they were
// written in), and the store revision the listing was taken at; a watch from
// that revision + 1 misses nothing. Values that do not decode are skipped.
func (s *Store) EventsSince(ctx context.Context, prefix string, since int64) ([]RevEvent, int64, error) {
	var out []RevEvent
	var at int64
	key, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(maxEventBatch)}
		if at != 0 {
			opts = append(opts, clientv3.WithRev(at))
		}
		if since > 0 {
			opts = append(opts, clientv3.WithMinModRev(since+1))
		}
		resp, err := s.c.Get(ctx, key, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list events under %s: %w", prefix, err)
		}
		if at == 0 {
			at = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			e := &v1.Event{}
			if proto.Unmarshal(kv.Value, e) == nil {
				out = append(out, RevEvent{Event: e, Rev: kv.ModRevision})
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Rev < out[j].Rev })
	return out, at, nil
}

// WatchEvents calls fn with every event written under prefix from revision
// from on, in order, until ctx ends or fn fails. It fails with an error
// naming the revision when etcd compacted it away.
func (s *Store) WatchEvents(ctx context.Context, prefix string, from int64, fn func(RevEvent) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			if wr.CompactRevision != 0 {
				return fmt.Errorf("events from revision %d were compacted (oldest kept: %d): %w", from, wr.CompactRevision, err)
			}
			return fmt.Errorf("watch events under %s: %w", prefix, err)
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			e := &v1.Event{}
			if proto.Unmarshal(ev.Kv.Value, e) != nil {
				continue
			}
			if err := fn(RevEvent{Event: e, Rev: ev.Kv.ModRevision}); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("event watch ended (etcd unavailable or no leader)")
}

// InstrumentKV wraps an etcd KV so that every request through it reports its
// latency and error to observe, with op one of "get", "put", "delete",
// "txn", "compact" (a transaction is timed at Commit). Install it the way
// etcd's namespace package is installed, before the client is shared:
//
//	cli.KV = store.InstrumentKV(cli.KV, observe)
//
// Everything that goes through the client's KV is observed: the Store, the
// Mirror's reads and the election's transactions (watches and leases are
// not; nor is GetStream, unused here). observe must be safe for concurrent
// use and must not block.
func InstrumentKV(kv clientv3.KV, observe func(op string, d time.Duration, err error)) clientv3.KV {
	return &observedKV{KV: kv, observe: observe}
}

// observedKV embeds the KV it wraps so that methods it does not time (the
// streaming GetStream) pass through.
type observedKV struct {
	clientv3.KV
	observe func(op string, d time.Duration, err error)
}

func (o *observedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	start := time.Now()
	r, err := o.KV.Put(ctx, key, val, opts...)
	o.observe("put", time.Since(start), err)
	return r, err
}

func (o *observedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	start := time.Now()
	r, err := o.KV.Get(ctx, key, opts...)
	o.observe("get", time.Since(start), err)
	return r, err
}

func (o *observedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	start := time.Now()
	r, err := o.KV.Delete(ctx, key, opts...)
	o.observe("delete", time.Since(start), err)
	return r, err
}

func (o *observedKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	start := time.Now()
	r, err := o.KV.Compact(ctx, rev, opts...)
	o.observe("compact", time.Since(start), err)
	return r, err
}

func (o *observedKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	name := "txn"
	switch {
	case op.IsGet():
		name = "get"
	case op.IsPut():
		name = "put"
	case op.IsDelete():
		name = "delete"
	}
	start := time.Now()
	r, err := o.KV.Do(ctx, op)
	o.observe(name, time.Since(start), err)
	return r, err
}

func (o *observedKV) Txn(ctx context.Context) clientv3.Txn {
	return &observedTxn{t: o.KV.Txn(ctx), observe: o.observe}
}

// observedTxn times Commit; If, Then and Else return it so Commit stays ours.
type observedTxn struct {
	t       clientv3.Txn
	observe func(op string, d time.Duration, err error)
}

func (o *observedTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { o.t = o.t.If(cs...); return o }
func (o *observedTxn) Then(ops ...clientv3.Op) clientv3.Txn { o.t = o.t.Then(ops...); return o }
func (o *observedTxn) Else(ops ...clientv3.Op) clientv3.Txn { o.t = o.t.Else(ops...); return o }

func (o *observedTxn) Commit() (*clientv3.TxnResponse, error) {
	start := time.Now()
	r, err := o.t.Commit()
	o.observe("txn", time.Since(start), err)
	return r, err
}

// TokenKey is where a token is stored.
func TokenKey(id string) string { return TokensPrefix + id }

// CreateToken stores a new token; ErrExists if the id is taken.
func (s *Store) CreateToken(ctx context.Context, t *v1.Token) error {
	val, err := marshal(t)
	if err != nil {
		return err
	}
	key := TokenKey(t.GetId())
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return fmt.Errorf("create token %s: %w", t.GetId(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("token %s: %w", t.GetId(), ErrExists)
	}
	return nil
}

// DeleteToken removes a token; ErrNotFound if there is none.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	resp, err := s.c.Delete(ctx, TokenKey(id))
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	return nil
}

// SpendToken marks a one-time token used if it is still unused at revision
// rev (compare-and-swap): of two concurrent joins, one wins.
func (s *Store) SpendToken(ctx context.Context, t *v1.Token, rev int64) error {
	used := proto.Clone(t).(*v1.Token)
	used.Used = true
	val, err := marshal(used)
	if err != nil {
		return err
	}
	key := TokenKey(t.GetId())
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return fmt.Errorf("spend token %s: %w", t.GetId(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("token %s: %w", t.GetId(), ErrConflict)
	}
	return nil
}

// PutAudit appends an entry to the audit log.
func (s *Store) PutAudit(ctx context.Context, e *v1.AuditEntry, n int) error {
	val, err := marshal(e)
	if err != nil {
		return err
	}
	key := fmt.Sprintf("%s%020d-%06d", AuditPrefix, e.GetAt().AsTime().UnixNano(), n)
	if _, err := s.c.Put(ctx, key, val); err != nil {
		return fmt.Errorf("audit %s: %w", e.GetMethod(), err)
	}
	return nil
}

// ListAudit returns the newest limit audit entries, oldest first.
func (s *Store) ListAudit(ctx context.Context, limit int) ([]*v1.AuditEntry, error) {
	resp, err := s.c.Get(ctx, AuditPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	out := make([]*v1.AuditEntry, 0, len(resp.Kvs))
	for i := len(resp.Kvs) - 1; i >= 0; i-- {
		e := &v1.AuditEntry{}
		if proto.Unmarshal(resp.Kvs[i].Value, e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// HostReport is one host's report for PutReports.
type HostReport struct {
	Host   string
	Report *v1.ServiceReport
}

// PutReports writes reports in one transaction (at most maxEventOpsInTxn).
func (s *Store) PutReports(ctx context.Context, reps []HostReport) error {
	if len(reps) > maxEventOpsInTxn {
		return fmt.Errorf("put reports: %d in one batch, at most %d", len(reps), maxEventOpsInTxn)
	}
	ops := make([]clientv3.Op, 0, len(reps))
	for _, hr := range reps {
		val, err := marshal(hr.Report)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(ReportKey(hr.Host, hr.Report.GetService()), val))
	}
	if _, err := s.c.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("put %d reports: %w", len(reps), err)
	}
	return nil
}

// MaxReportBatch is the most reports PutReports takes at once.
const MaxReportBatch = maxEventOpsInTxn

// ErrConnected is returned when a host to remove is connected.
var ErrConnected = errors.New("host is connected")

// DeleteHost removes a host's record and reports if it is not connected
// (no connection record), in one transaction.
func (s *Store) DeleteHost(ctx context.Context, id string) error {
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(ConnKey(id)), "=", 0), clientv3.Compare(clientv3.CreateRevision(HostKey(id)), ">", 0)).
		Then(clientv3.OpDelete(HostKey(id)), clientv3.OpDelete(ReportsPrefix+id+"/", clientv3.WithPrefix())).
		Else(clientv3.OpGet(ConnKey(id))).
		Commit()
	if err != nil {
		return fmt.Errorf("remove host %s: %w", id, err)
	}
	if !resp.Succeeded {
		if len(resp.Responses) > 0 && len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
			return fmt.Errorf("remove host %s: %w (stop its agent first)", id, ErrConnected)
		}
		return fmt.Errorf("host %s: %w", id, ErrNotFound)
	}
	return nil
}

// PruneEvents deletes, fenced, the recorded events of a service's rollouts
// with ids before beforeRollout (zero-padded ids sort by number), and the
// service's events recorded outside any rollout. It returns how many keys
// went.
func (s *Store) PruneEvents(ctx context.Context, f *Fence, service, beforeRollout string) (int64, error) {
	if service == "" || strings.Contains(service, "/") || beforeRollout == "" {
		return 0, fmt.Errorf("prune events: service %q, before %q", service, beforeRollout)
	}
	from := EventsPrefix + service + "/"
	resp, err := s.c.Txn(ctx).If(f.cmps()...).Then(clientv3.OpDelete(from, clientv3.WithRange(from+beforeRollout))).Commit()
	if err != nil {
		return 0, fmt.Errorf("prune events of %s: %w", service, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("prune events of %s: %w", service, ErrNotLeader)
	}
	return resp.Responses[0].GetResponseDeleteRange().Deleted, nil
}

// PruneAudit deletes, fenced, audit entries recorded before t.
func (s *Store) PruneAudit(ctx context.Context, f *Fence, before time.Time) (int64, error) {
	end := fmt.Sprintf("%s%020d", AuditPrefix, before.UnixNano())
	resp, err := s.c.Txn(ctx).If(f.cmps()...).Then(clientv3.OpDelete(AuditPrefix, clientv3.WithRange(end))).Commit()
	if err != nil {
		return 0, fmt.Errorf("prune audit: %w", err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("prune audit: %w", ErrNotLeader)
	}
	return resp.Responses[0].GetResponseDeleteRange().Deleted, nil
}
