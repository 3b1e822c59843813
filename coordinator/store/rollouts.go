package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// RolloutLayout is how a rollout's record is stored in etcd.
type RolloutLayout int

const (
	// OneKey is the whole rollout under RolloutKey, rewritten on every
	// step (448 KB at 10,000 hosts); every coordinator version reads it.
	OneKey RolloutLayout = iota
	// Split is a head under RolloutHeadKey (the rollout without its waves'
	// hosts: identity, state, wave summaries) and parts under
	// RolloutPartKey, each a run of up to rolloutPartHosts hosts in wave
	// order. A write puts the head and only the parts that changed, in one
	// fenced transaction. Coordinators from before it do not read it.
	Split
)

func (l RolloutLayout) String() string {
	if l == Split {
		return "split"
	}
	return "one key"
}

// RolloutBase is what a rollout write replaces: the rollout as read (nil
// for a new one), the revision it was read at (0: it must not exist yet)
// and its layout (for a new rollout, the layout to write it in; a rollout
// keeps the layout it was created in).
type RolloutBase struct {
	Rollout *v1.Rollout
	Rev     int64
	Layout  RolloutLayout
}

// A split rollout's parts hold rolloutPartHosts hosts each, more when the
// rollout has over maxRolloutParts times as many, so that writing every
// part (a new rollout) stays within etcd's default operations per
// transaction (DefaultMaxTxnOps), whatever the store was told.
const (
	rolloutPartHosts = 500
	maxRolloutParts  = 64
)

// GetRollout returns one rollout, in either layout.
func (s *Store) GetRollout(ctx context.Context, service, id string) (*v1.Rollout, error) {
	r, _, err := s.GetRolloutAt(ctx, service, id, 0)
	return r, err
}

// GetRolloutAt returns one rollout, in either layout, as it was at
// revision rev (0: now), with the revision that created it.
func (s *Store) GetRolloutAt(ctx context.Context, service, id string, rev int64) (*v1.Rollout, int64, error) {
	head := RolloutHeadKey(service, id)
	var at []clientv3.OpOption
	if rev != 0 {
		at = append(at, clientv3.WithRev(rev))
	}
	// The head and its parts ("<head>/<n>"; "0" follows "/"), and the
	// one-key record, at one revision.
	resp, err := s.c.Txn(ctx).Then(
		clientv3.OpGet(head, append(at, clientv3.WithRange(head+"0"))...),
		clientv3.OpGet(RolloutKey(service, id), at...),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("get rollout %s/%s: %w", service, id, err)
	}
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
		r := &v1.Rollout{}
		if err := proto.Unmarshal(kvs[0].Value, r); err != nil {
			return nil, 0, fmt.Errorf("decode %s: %w", kvs[0].Key, err)
		}
		return r, kvs[0].CreateRevision, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 || string(kvs[0].Key) != head {
		return nil, 0, fmt.Errorf("get rollout %s/%s: %w", service, id, ErrNotFound)
	}
	var h *v1.Rollout
	var parts []*v1.Rollout
	for i, kv := range kvs {
		m := &v1.Rollout{}
		if err := proto.Unmarshal(kv.Value, m); err != nil {
			return nil, 0, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		if i == 0 {
			h = m
			continue
		}
		if want := RolloutPartKey(service, id, i-1); string(kv.Key) != want {
			// Never written so (a write puts every part it changed with
			// the head): the record was damaged; no rollout with hosts
			// missing or out of place.
			return nil, 0, fmt.Errorf("get rollout %s/%s: part %d missing (found %s)", service, id, i-1, kv.Key)
		}
		parts = append(parts, m)
	}
	r, err := assembleRollout(h, parts)
	return r, kvs[0].CreateRevision, err
}

// assembleRollout puts a split rollout together: a copy of the head with
// each part's hosts appended to their waves, parts in order. The hosts are
// the parts' (shared, not copied).
func assembleRollout(head *v1.Rollout, parts []*v1.Rollout) (*v1.Rollout, error) {
	if head.SplitParts != nil && int(head.GetSplitParts()) != len(parts) {
		// A write puts the head with every part it changed and deletes the
		// parts past the last: fewer parts than the head counts is a
		// damaged record, never a shorter rollout.
		return nil, fmt.Errorf("rollout %s/%s: %d parts found, the head says %d", head.GetService(), head.GetId(), len(parts), head.GetSplitParts())
	}
	r := proto.Clone(head).(*v1.Rollout)
	r.SplitParts = nil
	for n, p := range parts {
		for _, w := range p.GetWaves() {
			i := int(w.GetIndex())
			if i >= len(r.GetWaves()) {
				return nil, fmt.Errorf("rollout %s/%s part %d: wave index %d, the head has %d waves", head.GetService(), head.GetId(), n, i, len(r.GetWaves()))
			}
			r.Waves[i].Hosts = append(r.Waves[i].Hosts, w.GetHosts()...)
		}
	}
	return r, nil
}

// splitRollout returns r's head (r without its waves' hosts; it shares the
// rest of r) and its parts: runs of its hosts in wave order, each part's
// waves holding only their index and hosts.
func splitRollout(r *v1.Rollout) (*v1.Rollout, []*v1.Rollout) {
	head := without(r, "waves").(*v1.Rollout)
	total := 0
	for _, w := range r.GetWaves() {
		head.Waves = append(head.Waves, without(w, "hosts").(*v1.Wave))
		total += len(w.GetHosts())
	}
	size := max(rolloutPartHosts, (total+maxRolloutParts-1)/maxRolloutParts)
	var parts []*v1.Rollout
	var cur *v1.Rollout
	n := 0
	for i, w := range r.GetWaves() {
		hosts := w.GetHosts()
		for len(hosts) > 0 {
			if cur == nil || n == size {
				cur, n = &v1.Rollout{}, 0
				parts = append(parts, cur)
			}
			k := min(len(hosts), size-n)
			cur.Waves = append(cur.Waves, &v1.Wave{Index: uint32(i), Hosts: hosts[:k:k]})
			hosts, n = hosts[k:], n+k
		}
	}
	head.SplitParts = proto.Uint32(uint32(len(parts)))
	return head, parts
}

// without returns a shallow copy of m without one field (for marshalling:
// the copy shares m's lists and messages).
func without(m proto.Message, field protoreflect.Name) proto.Message {
	src := m.ProtoReflect()
	dst := src.New()
	skip := src.Descriptor().Fields().ByName(field)
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd != skip {
			dst.Set(fd, v)
		}
		return true
	})
	return dst.Interface()
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// rolloutOps are the compares and operations that write r over base.
func rolloutOps(r *v1.Rollout, base RolloutBase) ([]clientv3.Cmp, []clientv3.Op, error) {
	service, id := r.GetService(), r.GetId()
	if base.Layout != Split {
		rkey := RolloutKey(service, id)
		rval, err := marshal(r)
		if err != nil {
			return nil, nil, err
		}
		cmp := clientv3.Compare(clientv3.ModRevision(rkey), "=", base.Rev)
		if base.Rev == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(rkey), "=", 0)
		}
		return []clientv3.Cmp{cmp, clientv3.Compare(clientv3.CreateRevision(RolloutHeadKey(service, id)), "=", 0)}, []clientv3.Op{clientv3.OpPut(rkey, rval)}, nil
	}
	hkey := RolloutHeadKey(service, id)
	var cmps []clientv3.Cmp
	if base.Rev == 0 {
		cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(hkey), "=", 0), clientv3.Compare(clientv3.CreateRevision(RolloutKey(service, id)), "=", 0)}
	} else {
		cmps = []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(hkey), "=", base.Rev)}
	}
	head, parts := splitRollout(r)
	var before [][]byte
	if base.Rollout != nil {
		_, prev := splitRollout(base.Rollout)
		for _, p := range prev {
			b, err := deterministic.Marshal(p)
			if err != nil {
				return nil, nil, fmt.Errorf("encode rollout %s/%s: %w", service, id, err)
			}
			before = append(before, b)
		}
	}
	// The head in every write: its revision is the rollout's, which the
	// next write compares.
	hval, err := deterministic.Marshal(head)
	if err != nil {
		return nil, nil, fmt.Errorf("encode rollout %s/%s: %w", service, id, err)
	}
	ops := []clientv3.Op{clientv3.OpPut(hkey, string(hval))}
	for n, p := range parts {
		b, err := deterministic.Marshal(p)
		if err != nil {
			return nil, nil, fmt.Errorf("encode rollout %s/%s: %w", service, id, err)
		}
		if n < len(before) && bytes.Equal(b, before[n]) {
			continue
		}
		ops = append(ops, clientv3.OpPut(RolloutPartKey(service, id, n), string(b)))
	}
	if len(before) > len(parts) {
		ops = append(ops, clientv3.OpDelete(RolloutPartKey(service, id, len(parts)), clientv3.WithRange(hkey+"0")))
	}
	return cmps, ops, nil
}

// WriteRollout writes a rollout over base (in base's layout) and, when svc
// is not nil, its service (for example the status naming a new rollout, or
// the status after a rollout ended) in one fenced transaction. It compares
// the revisions the caller read: base.Rev 0 means the rollout must not
// exist yet (in either layout). It returns the revision of the decision
// (the rollout's revision, which the next write compares) and the highest
// revision of the write (its last events).
func (s *Store) WriteRollout(ctx context.Context, f *Fence, r *v1.Rollout, base RolloutBase, svc *v1.Service, serviceRev int64, events ...*v1.Event) (decision, last int64, err error) {
	rcmps, ops, err := rolloutOps(r, base)
	if err != nil {
		return 0, 0, err
	}
	cmps := append(f.cmps(), rcmps...)
	evOps, err := s.eventOps(events)
	if err != nil {
		return 0, 0, err
	}
	// etcd bounds the operations in one transaction (--max-txn-ops, 128 by
	// default, s.txnOps): the decision and the first events go together,
	// the rest follow in batches once the decision is committed.
	// etcd also bounds a request's bytes (--max-request-bytes, 1.5 MiB by
	// default): the events that go with the decision, and each batch of
	// the rest, are bounded by MaxTxnBytes too (a failed wave's events
	// carry reasons of up to 4 KB each).
	var svcOps []clientv3.Op
	if svc != nil {
		skey := ServiceKey(svc.GetSpec().GetName())
		sval, err := marshal(svc)
		if err != nil {
			return 0, 0, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(skey), "=", serviceRev))
		svcOps = []clientv3.Op{clientv3.OpPut(skey, sval)}
	}
	used := 0
	for _, op := range append(svcOps, ops...) {
		used += opBytes(op)
	}
	var later []clientv3.Op
	if n := fitOps(evOps, max(0, min(s.Batch(), s.txnOps-len(ops)-1)), MaxTxnBytes-used, false); len(evOps) > n {
		evOps, later = evOps[:n], evOps[n:]
	}
	ops = append(ops, evOps...)
	ops = append(ops, svcOps...)
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, 0, fmt.Errorf("write rollout %s/%s: %w", r.GetService(), r.GetId(), err)
	}
	if !resp.Succeeded {
		return 0, 0, fmt.Errorf("write rollout %s/%s: %w", r.GetService(), r.GetId(), fenceErr(f, resp))
	}
	decision = resp.Header.Revision
	rev := decision
	if len(later) == 0 {
		return decision, rev, nil
	}
	// The rest in further transactions, maxEventTxns at once: one after
	// the other they cost a disk sync each, which at thousands of hosts per
	// wave made the leader wait seconds per step. Their keys order them,
	// not their revisions.
	var (
		mu     sync.Mutex
		failed int
		errs   []error
		wg     sync.WaitGroup
		slots  = make(chan struct{}, maxEventTxns)
	)
	for len(later) > 0 {
		n := fitOps(later, s.Batch(), MaxTxnBytes, true)
		batch := later[:n]
		later = later[n:]
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			er, err := s.c.Txn(ctx).Then(batch...).Commit()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed += len(batch)
				errs = append(errs, err)
				return
			}
			rev = max(rev, er.Header.Revision)
		})
	}
	wg.Wait()
	if failed > 0 {
		// The decision stands; only history is short.
		return decision, rev, fmt.Errorf("write rollout %s/%s: %d events not recorded: %w (%w)", r.GetService(), r.GetId(), failed, ErrHistoryShort, errors.Join(errs...))
	}
	return decision, rev, nil
}

// UnsplitRollout rewrites a split rollout in one key (base.Rollout, read
// at base.Rev: its head's revision): the one-key record is put and the head
// and parts deleted in one fenced transaction. The leader does it when a
// coordinator that does not read split rollouts registers while one is
// the service's current rollout (a late registration, a downgrade): such
// a coordinator would not see the rollout and would assign its hosts as if
// none ran. It returns the revision of the write.
func (s *Store) UnsplitRollout(ctx context.Context, f *Fence, base RolloutBase) (int64, error) {
	r := base.Rollout
	service, id := r.GetService(), r.GetId()
	if base.Layout != Split || base.Rev == 0 {
		return 0, fmt.Errorf("unsplit rollout %s/%s: layout %s at revision %d: want a stored split rollout", service, id, base.Layout, base.Rev)
	}
	rkey, hkey := RolloutKey(service, id), RolloutHeadKey(service, id)
	rval, err := marshal(r)
	if err != nil {
		return 0, err
	}
	cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(hkey), "=", base.Rev), clientv3.Compare(clientv3.CreateRevision(rkey), "=", 0))
	// The deletes first: a mirror applying the events in order ends with
	// the one-key record.
	ops := []clientv3.Op{clientv3.OpDelete(hkey), clientv3.OpDelete(hkey+"/", clientv3.WithPrefix()), clientv3.OpPut(rkey, rval)}
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("unsplit rollout %s/%s: %w", service, id, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("unsplit rollout %s/%s: %w", service, id, fenceErr(f, resp))
	}
	return resp.Header.Revision, nil
}

// maxEventTxns is how many transactions of a decision's further events are
// in flight at once.
const maxEventTxns = 8

// CompactRollout writes c, an ended rollout whose waves' hosts were
// replaced by their summaries (rollout.Compact: hosts_compacted set, no
// hosts), over base (the rollout as read, at base.Rev, in base.Layout: it
// keeps its layout), fenced. A split rollout's parts are deleted in the
// same transaction: its head is all that is left. It returns the revision
// of the write.
func (s *Store) CompactRollout(ctx context.Context, f *Fence, c *v1.Rollout, base RolloutBase) (int64, error) {
	if !c.GetHostsCompacted() || base.Rev == 0 || base.Rollout == nil {
		return 0, fmt.Errorf("compact rollout %s/%s: compacted %v, base revision %d: want a compacted rollout over a stored one", c.GetService(), c.GetId(), c.GetHostsCompacted(), base.Rev)
	}
	for _, w := range c.GetWaves() {
		if len(w.GetHosts()) > 0 {
			return 0, fmt.Errorf("compact rollout %s/%s: wave %d still holds %d hosts", c.GetService(), c.GetId(), w.GetIndex(), len(w.GetHosts()))
		}
	}
	rev, _, err := s.WriteRollout(ctx, f, c, base, nil, 0)
	if err != nil {
		return 0, fmt.Errorf("compact: %w", err)
	}
	return rev, nil
}

// DeleteRollout deletes a stored rollout (base.Rollout, read at base.Rev in
// base.Layout: its one key, or its head and parts) and its recorded events,
// fenced, and only if it is unchanged since. It returns the revision of the
// delete.
func (s *Store) DeleteRollout(ctx context.Context, f *Fence, base RolloutBase) (int64, error) {
	service, id := base.Rollout.GetService(), base.Rollout.GetId()
	if service == "" || id == "" || strings.Contains(service, "/") || strings.Contains(id, "/") || base.Rev == 0 {
		return 0, fmt.Errorf("delete rollout %q/%q at revision %d: want a stored rollout", service, id, base.Rev)
	}
	key := RolloutKey(service, id)
	ops := []clientv3.Op{clientv3.OpDelete(key)}
	if base.Layout == Split {
		key = RolloutHeadKey(service, id)
		ops = []clientv3.Op{clientv3.OpDelete(key+"/", clientv3.WithPrefix()), clientv3.OpDelete(key)}
	}
	ops = append(ops, clientv3.OpDelete(EventsPrefixFor(service, id), clientv3.WithPrefix()))
	cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(key), "=", base.Rev))
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("delete rollout %s/%s: %w", service, id, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("delete rollout %s/%s: %w", service, id, fenceErr(f, resp))
	}
	return resp.Header.Revision, nil
}
