package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Versioned is a decoded value with its etcd mod and create revisions.
type Versioned[T any] struct {
	Val     T
	Rev     int64
	Created int64
}

// Mirror is an in-memory copy of the whole keyspace kept current by an etcd
// watch. Values handed out are shared and must not be mutated: clone before
// changing. It is safe for concurrent use. Subscribers are told (never
// blocked) when anything changed.
type Mirror struct {
	s   *Store
	log zerolog.Logger

	mu       sync.RWMutex
	rev      int64
	ready    bool
	services map[string]Versioned[*v1.Service]
	releases map[string]map[string]Versioned[*v1.Release]
	// rollouts in either layout (split ones assembled from splits).
	rollouts map[string]map[string]Versioned[*v1.Rollout]
	// splits are the rollouts in the split layout as stored, by service
	// and id; dirty names those to assemble again once a batch of changes
	// is applied (a write's head and parts arrive together).
	splits  map[string]map[string]*splitRecord
	dirty   map[[2]string]struct{}
	hosts   map[string]*v1.Host
	conns   map[string]string
	reports map[string]hostReports
	coords  map[string]*v1.CoordinatorInfo
	// connSince is when this mirror saw each connection record appear.
	connSince map[string]time.Time
	tokens    map[string]Versioned[*v1.Token]
	// tokenIDs finds a token by the sha256 of its secret (every bearer
	// token check, anonymous callers' too: a scan of every token was 0.66
	// ms at 10,000 tokens).
	tokenIDs map[string]string
	// revocations by key below RevocationsPrefix ("serial/<hex>",
	// "identity/<kind>/<name>").
	revocations map[string]Versioned[*v1.Revocation]
	// blackouts by id (fleetwave freeze).
	blackouts map[string]*v1.Blackout
	// revocationEpoch counts changes to the revocations.
	revocationEpoch uint64
	subs            map[chan struct{}]struct{}
	revCond         *sync.Cond
	// desiredEpoch counts changes to what hosts should run (services,
	// releases, rollouts, host records, and reports whose staging fields
	// changed), so assignment pushes can skip other report-only changes.
	desiredEpoch uint64
	// pacedEpoch counts the changes of desiredEpoch that only the hosts'
	// sources and stage plans read, so the hub paces the pushes they cause
	// (pushPacer): reports' staging fields (staged_sha256,
	// stage_failed_sha256) and host records (a host's peer address and
	// zone: which hosts are offered as sources). A host's own assignments
	// take its labels from its stream, not from its record, so a storm of
	// connecting hosts (each writes its record) is not a pass over every
	// connected host per record (issue 16: 10,000 connecting hosts caused
	// about 700 passes, 6.3 s of the 15.3 s they took to connect).
	pacedEpoch uint64
	// disconnects counts deleted connection records (an agent stream
	// ended on some coordinator, or its lease expired): the hub replans
	// staging when one of them was a host its plan counts on.
	disconnects uint64
	// connects counts new connection records (an agent stream began on
	// some coordinator): the hub replans staging when one of them is a
	// host its plan left out (StagePlan.Found).
	connects uint64
}

// NewMirror makes a mirror; Run fills and follows it.
func NewMirror(s *Store, log zerolog.Logger) *Mirror {
	m := &Mirror{s: s, log: log, subs: map[chan struct{}]struct{}{}}
	m.revCond = sync.NewCond(&m.mu)
	m.reset()
	return m
}

func (m *Mirror) reset() {
	m.services = map[string]Versioned[*v1.Service]{}
	m.releases = map[string]map[string]Versioned[*v1.Release]{}
	m.rollouts = map[string]map[string]Versioned[*v1.Rollout]{}
	m.splits = map[string]map[string]*splitRecord{}
	m.dirty = map[[2]string]struct{}{}
	m.hosts = map[string]*v1.Host{}
	m.conns = map[string]string{}
	m.reports = map[string]hostReports{}
	m.coords = map[string]*v1.CoordinatorInfo{}
	m.connSince = map[string]time.Time{}
	m.tokens = map[string]Versioned[*v1.Token]{}
	m.tokenIDs = map[string]string{}
	m.revocations = map[string]Versioned[*v1.Revocation]{}
	m.blackouts = map[string]*v1.Blackout{}
	m.revocationEpoch++
	m.disconnects++ // a reload may drop connections without a delete
}

// Run loads the keyspace and follows it until ctx ends. It reloads after a
// compaction or a broken watch.
func (m *Mirror) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		rev, err := m.load(ctx)
		if err != nil {
			m.log.Warn().Err(err).Msg("mirror load failed; retrying")
			if !sleepCtx(ctx, retryDelay) {
				break
			}
			continue
		}
		err = m.follow(ctx, rev)
		if ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("mirror watch ended; reloading")
		}
	}
	return nil
}

func (m *Mirror) load(ctx context.Context) (int64, error) {
	// Every mirrored prefix at one revision (the first page's), in pages
	// (scan): one Get of a prefix fails for good once the prefix is over
	// what the client takes (RecvMsgBytes; kept rollouts, reports and
	// releases grow with the fleet). The history (events, audit), which
	// only grows, is not loaded.
	var rev int64
	var kvs []*mvccpb.KeyValue
	for _, p := range mirroredPrefixes {
		at, err := m.s.scan(ctx, p, rev, mirrorScan, func(kv *mvccpb.KeyValue) error {
			kvs = append(kvs, kv)
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("load %s: %w", p, err)
		}
		rev = at
	}
	m.mu.Lock()
	m.reset()
	for _, kv := range kvs {
		m.applyLocked(mvccpb.PUT, kv)
	}
	m.assembleLocked()
	m.rev = rev
	m.ready = true
	m.revCond.Broadcast()
	m.mu.Unlock()
	m.notify()
	return rev, nil
}

// mirrorScan is how load pages: by bytes (scanBytes), the first page of 64
// records (a kept rollout of 10,000 hosts is about 530 KB).
var mirrorScan = scanOpts{first: 64}

// mirroredPrefixes are the parts of the keyspace the mirror holds.
// Blackouts were followed but not loaded (a coordinator started, or a
// mirror reloaded, after a freeze was created did not see it).
var mirroredPrefixes = []string{ServicesPrefix, ReleasesPrefix, RolloutsPrefix, SplitRolloutsPrefix, HostsPrefix, ConnsPrefix, ReportsPrefix, TokensPrefix, CoordinatorsPrefix, RevocationsPrefix, BlackoutsPrefix}

func (m *Mirror) follow(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := m.s.c.Watch(wctx, Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for resp := range wc {
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("watch from %d: %w", rev+1, err)
			}
			return fmt.Errorf("watch: %w", err)
		}
		m.mu.Lock()
		for _, ev := range resp.Events {
			m.applyLocked(ev.Type, ev.Kv)
		}
		m.assembleLocked()
		if resp.Header.Revision > m.rev {
			m.rev = resp.Header.Revision
		}
		m.revCond.Broadcast()
		m.mu.Unlock()
		if len(resp.Events) > 0 {
			m.notify()
		}
	}
	return errors.New("watch channel closed")
}

// onlyPruneMarks reports whether releases a and b differ in nothing but
// their artifact's prune and restore marks.
func onlyPruneMarks(a, b *v1.Release) bool {
	a, b = proto.Clone(a).(*v1.Release), proto.Clone(b).(*v1.Release)
	a.ArtifactPrunedAt, a.ArtifactRestoredAt = nil, nil
	b.ArtifactPrunedAt, b.ArtifactRestoredAt = nil, nil
	return proto.Equal(a, b)
}

func (m *Mirror) applyLocked(t mvccpb.Event_EventType, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	del := t == mvccpb.DELETE
	if strings.HasPrefix(key, ServicesPrefix) || strings.HasPrefix(key, ReleasesPrefix) || strings.HasPrefix(key, RolloutsPrefix) || strings.HasPrefix(key, SplitRolloutsPrefix) || strings.HasPrefix(key, HostsPrefix) {
		m.desiredEpoch++
		if strings.HasPrefix(key, HostsPrefix) {
			m.pacedEpoch++
		}
	}
	decode := func(msg proto.Message) bool {
		if err := proto.Unmarshal(kv.Value, msg); err != nil {
			m.log.Error().Err(err).Str("key", key).Msg("undecodable value ignored")
			return false
		}
		return true
	}
	switch {
	case strings.HasPrefix(key, ServicesPrefix):
		name := strings.TrimPrefix(key, ServicesPrefix)
		if del {
			delete(m.services, name)
			return
		}
		v := &v1.Service{}
		if decode(v) {
			m.services[name] = Versioned[*v1.Service]{v, kv.ModRevision, kv.CreateRevision}
		}
	case strings.HasPrefix(key, ReleasesPrefix):
		p := SplitKey(key, ReleasesPrefix)
		if len(p) != 2 {
			return
		}
		if del {
			delete(m.releases[p[0]], p[1])
			return
		}
		v := &v1.Release{}
		if decode(v) {
			if old, ok := m.releases[p[0]][p[1]]; ok && onlyPruneMarks(old.Val, v) {
				// An artifact marked pruned or restored: no host's
				// assignment names such a release (rollout.RetainArtifacts
				// keeps what hosts run or move to), so the pass it causes
				// changes nothing; the hub paces it (a first pruning over a
				// long history marks 100 releases a minute, each its own
				// write: each was a pass over every connected host).
				m.pacedEpoch++
			}
			if m.releases[p[0]] == nil {
				m.releases[p[0]] = map[string]Versioned[*v1.Release]{}
			}
			m.releases[p[0]][p[1]] = Versioned[*v1.Release]{v, kv.ModRevision, kv.CreateRevision}
		}
	case strings.HasPrefix(key, RolloutsPrefix):
		p := SplitKey(key, RolloutsPrefix)
		if len(p) != 2 {
			return
		}
		if del {
			delete(m.rollouts[p[0]], p[1])
			return
		}
		v := &v1.Rollout{}
		if decode(v) {
			if m.rollouts[p[0]] == nil {
				m.rollouts[p[0]] = map[string]Versioned[*v1.Rollout]{}
			}
			m.rollouts[p[0]][p[1]] = Versioned[*v1.Rollout]{v, kv.ModRevision, kv.CreateRevision}
		}
	case strings.HasPrefix(key, SplitRolloutsPrefix):
		m.applySplitLocked(del, key, kv, decode)
	case strings.HasPrefix(key, HostsPrefix):
		id := strings.TrimPrefix(key, HostsPrefix)
		if del {
			delete(m.hosts, id)
			return
		}
		v := &v1.Host{}
		if decode(v) {
			m.hosts[id] = v
		}
	case strings.HasPrefix(key, ConnsPrefix):
		id := strings.TrimPrefix(key, ConnsPrefix)
		if del {
			if _, ok := m.conns[id]; ok {
				m.disconnects++
			}
			delete(m.conns, id)
			delete(m.connSince, id)
			return
		}
		if m.conns[id] != string(kv.Value) {
			m.connSince[id] = time.Now()
			m.connects++
		}
		m.conns[id] = string(kv.Value)
	case strings.HasPrefix(key, TokensPrefix):
		id := strings.TrimPrefix(key, TokensPrefix)
		v := &v1.Token{}
		if !del && !decode(v) {
			return
		}
		if old, ok := m.tokens[id]; ok && m.tokenIDs[old.Val.GetSecretSha256()] == id {
			delete(m.tokenIDs, old.Val.GetSecretSha256())
		}
		if del {
			delete(m.tokens, id)
			return
		}
		m.tokens[id] = Versioned[*v1.Token]{v, kv.ModRevision, kv.CreateRevision}
		m.tokenIDs[v.GetSecretSha256()] = id
	case strings.HasPrefix(key, RevocationsPrefix):
		id := strings.TrimPrefix(key, RevocationsPrefix)
		m.revocationEpoch++
		if del {
			delete(m.revocations, id)
			return
		}
		v := &v1.Revocation{}
		if decode(v) {
			m.revocations[id] = Versioned[*v1.Revocation]{v, kv.ModRevision, kv.CreateRevision}
		}
	case strings.HasPrefix(key, BlackoutsPrefix):
		id := strings.TrimPrefix(key, BlackoutsPrefix)
		if del {
			delete(m.blackouts, id)
			return
		}
		v := &v1.Blackout{}
		if decode(v) {
			m.blackouts[id] = v
		}
	case strings.HasPrefix(key, CoordinatorsPrefix):
		name := strings.TrimPrefix(key, CoordinatorsPrefix)
		if del {
			delete(m.coords, name)
			return
		}
		v := &v1.CoordinatorInfo{}
		if decode(v) {
			m.coords[name] = v
		}
	case strings.HasPrefix(key, ReportsPrefix):
		p := SplitKey(key, ReportsPrefix)
		if len(p) != 2 {
			return
		}
		if del {
			if m.reports[p[0]].get(p[1]).GetStagedSha256() != "" {
				m.desiredEpoch++ // a holder of a staged artifact is gone
				m.pacedEpoch++
			}
			m.reports[p[0]] = m.reports[p[0]].remove(p[1])
			if len(m.reports[p[0]]) == 0 {
				delete(m.reports, p[0])
			}
			return
		}
		v := &v1.ServiceReport{}
		if decode(v) {
			if old := m.reports[p[0]].get(p[1]); v.GetStagedSha256() != old.GetStagedSha256() ||
				v.GetStageFailedSha256() != old.GetStageFailedSha256() {
				// Who holds a staged artifact, and whose staging failed,
				// decides which hosts stage and from whom
				// (rollout.PlanStage).
				m.desiredEpoch++
				m.pacedEpoch++
			}
			svc := v.GetService() // shares the report's string, not the key's
			if svc != p[1] {
				svc = strings.Clone(p[1])
			}
			m.reports[p[0]] = m.reports[p[0]].put(svc, v)
		}
	}
}

// splitRecord is a rollout in the split layout as the mirror holds it: its
// head and its parts by number.
type splitRecord struct {
	head  Versioned[*v1.Rollout]
	parts map[int]*v1.Rollout
}

func (m *Mirror) applySplitLocked(del bool, key string, kv *mvccpb.KeyValue, decode func(proto.Message) bool) {
	p := SplitKey(key, SplitRolloutsPrefix)
	if len(p) != 2 && len(p) != 3 {
		return
	}
	service, id := p[0], p[1]
	rec := m.splits[service][id]
	if rec == nil {
		if del {
			return
		}
		rec = &splitRecord{parts: map[int]*v1.Rollout{}}
		if m.splits[service] == nil {
			m.splits[service] = map[string]*splitRecord{}
		}
		m.splits[service][id] = rec
	}
	m.dirty[[2]string{service, id}] = struct{}{}
	if len(p) == 2 {
		if del {
			delete(m.splits[service], id)
			// Gone, unless rewritten in one key by the same write
			// (UnsplitRollout), whichever event comes first.
			if vr, ok := m.rollouts[service][id]; ok && vr.Rev < kv.ModRevision {
				delete(m.rollouts[service], id)
			}
			return
		}
		v := &v1.Rollout{}
		if decode(v) {
			rec.head = Versioned[*v1.Rollout]{v, kv.ModRevision, kv.CreateRevision}
		}
		return
	}
	n, err := strconv.Atoi(p[2])
	if err != nil || n < 0 {
		m.log.Error().Str("key", key).Msg("rollout part with a bad number ignored")
		return
	}
	if del {
		delete(rec.parts, n)
		return
	}
	v := &v1.Rollout{}
	if decode(v) {
		rec.parts[n] = v
	}
}

// assembleLocked puts together the split rollouts changed since the last
// call, into rollouts.
func (m *Mirror) assembleLocked() {
	for k := range m.dirty {
		delete(m.dirty, k)
		service, id := k[0], k[1]
		rec := m.splits[service][id]
		if rec == nil || rec.head.Val == nil {
			continue // a deleted head removed its rollout (applySplitLocked)
		}
		parts := make([]*v1.Rollout, len(rec.parts))
		complete := true
		for n, p := range rec.parts {
			if n >= len(parts) {
				complete = false
				break
			}
			parts[n] = p
		}
		if !complete {
			m.log.Error().Str("service", service).Str("rollout", id).Int("parts", len(rec.parts)).Msg("split rollout with a gap in its parts ignored")
			continue
		}
		r, err := assembleRollout(rec.head.Val, parts)
		if err != nil {
			m.log.Error().Err(err).Str("service", service).Str("rollout", id).Msg("split rollout ignored")
			continue
		}
		if m.rollouts[service] == nil {
			m.rollouts[service] = map[string]Versioned[*v1.Rollout]{}
		}
		m.rollouts[service][id] = Versioned[*v1.Rollout]{r, rec.head.Rev, rec.head.Created}
	}
}

// RolloutLayout returns how a rollout is stored (OneKey when the mirror
// does not have it).
func (m *Mirror) RolloutLayout(service, id string) RolloutLayout {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.splits[service][id] != nil {
		return Split
	}
	return OneKey
}

// hostReports are a host's last reports, sorted by service: a slice, not a
// map, as a host runs few services and the mirror holds one per host (a
// map costs about 250 bytes more per host).
type hostReports []hostReport

type hostReport struct {
	service string
	r       *v1.ServiceReport
}

func (hr hostReports) find(service string) (int, bool) {
	i := sort.Search(len(hr), func(i int) bool { return hr[i].service >= service })
	return i, i < len(hr) && hr[i].service == service
}

func (hr hostReports) get(service string) *v1.ServiceReport {
	if i, ok := hr.find(service); ok {
		return hr[i].r
	}
	return nil
}

func (hr hostReports) put(service string, r *v1.ServiceReport) hostReports {
	i, ok := hr.find(service)
	if ok {
		hr[i].r = r
		return hr
	}
	return slices.Insert(hr, i, hostReport{service: service, r: r})
}

func (hr hostReports) remove(service string) hostReports {
	if i, ok := hr.find(service); ok {
		return slices.Delete(hr, i, i+1)
	}
	return hr
}

// Subscribe returns a channel that receives a value (coalesced) after every
// change, and a function to unsubscribe.
func (m *Mirror) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.subs[ch] = struct{}{}
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, ch)
		m.mu.Unlock()
	}
}

func (m *Mirror) notify() {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// WaitRev blocks until the mirror has applied revision rev, or ctx ends.
func (m *Mirror) WaitRev(ctx context.Context, rev int64) error {
	stop := context.AfterFunc(ctx, func() {
		m.mu.Lock()
		m.revCond.Broadcast()
		m.mu.Unlock()
	})
	defer stop()
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.rev < rev || !m.ready {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for revision %d (at %d): %w", rev, m.rev, err)
		}
		m.revCond.Wait()
	}
	return nil
}

// DesiredEpoch changes whenever a service, release, rollout or host record
// changed, or a report's staged_sha256 (not on other report changes or
// connections).
func (m *Mirror) DesiredEpoch() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.desiredEpoch
}

// Epochs returns DesiredEpoch and, of its changes, how many the hub may
// pace: reports' staging fields and host records (read together; see
// pacedEpoch).
func (m *Mirror) Epochs() (desired, paced uint64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.desiredEpoch, m.pacedEpoch
}

// Disconnects counts the connection records deleted so far (not a
// desired-state change: what a host should run does not depend on it).
func (m *Mirror) Disconnects() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.disconnects
}

// Connects counts the connection records that appeared so far (a new
// stream of a host, on any coordinator; not a desired-state change
// either).
func (m *Mirror) Connects() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.connects
}

// Rev is the last revision applied.
func (m *Mirror) Rev() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.rev
}

// Ready reports whether the first load finished.
func (m *Mirror) Ready() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.ready
}

// Service returns a service and its revision.
func (m *Mirror) Service(name string) (Versioned[*v1.Service], bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	v, ok := m.services[name]
	return v, ok
}

// Services returns every service, sorted by name.
func (m *Mirror) Services() []Versioned[*v1.Service] {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]Versioned[*v1.Service], 0, len(m.services))
	for _, v := range m.services {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Val.GetSpec().GetName() < out[j].Val.GetSpec().GetName() })
	return out
}

// Releases returns a service's releases, oldest first (in the order etcd
// stored them, which no clock can disorder).
func (m *Mirror) Releases(service string) []Versioned[*v1.Release] {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]Versioned[*v1.Release], 0, len(m.releases[service]))
	for _, r := range m.releases[service] {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created < out[j].Created })
	return out
}

// AllReleases returns every service's releases, read at once (in no
// order).
func (m *Mirror) AllReleases() []*v1.Release {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*v1.Release
	for _, rs := range m.releases {
		for _, r := range rs {
			out = append(out, r.Val)
		}
	}
	return out
}

// Release returns one release.
func (m *Mirror) Release(service, version string) (*v1.Release, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.releases[service][version]
	return r.Val, ok
}

// Rollout returns one rollout.
func (m *Mirror) Rollout(service, id string) (Versioned[*v1.Rollout], bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.rollouts[service][id]
	return r, ok
}

// Rollouts returns a service's rollouts, oldest first.
func (m *Mirror) Rollouts(service string) []*v1.Rollout {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*v1.Rollout, 0, len(m.rollouts[service]))
	for _, r := range m.rollouts[service] {
		out = append(out, r.Val)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// Hosts returns every host record, sorted by id.
func (m *Mirror) Hosts() []*v1.Host {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*v1.Host, 0, len(m.hosts))
	for _, h := range m.hosts {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// Host returns one host record.
func (m *Mirror) Host(id string) (*v1.Host, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	h, ok := m.hosts[id]
	return h, ok
}

// Connected reports whether a host's agent stream is up on some coordinator.
func (m *Mirror) Connected(id string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.conns[id]
	return ok
}

// ConnectedVia returns the name of the coordinator holding a host's stream
// ("" = none). Connection records hold "<coordinator>/<token>".
func (m *Mirror) ConnectedVia(id string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	v, ok := m.conns[id]
	if !ok {
		return ""
	}
	if i := strings.LastIndex(v, "/"); i >= 0 {
		return v[:i]
	}
	return v
}

// ConnCounts returns how many agent streams each coordinator holds.
func (m *Mirror) ConnCounts() map[string]int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[string]int{}
	for _, v := range m.conns {
		if i := strings.LastIndex(v, "/"); i >= 0 {
			v = v[:i]
		}
		out[v]++
	}
	return out
}

// TokenBySecretHash finds a token by the hex sha256 of its secret.
func (m *Mirror) TokenBySecretHash(sum string) (Versioned[*v1.Token], bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if id, ok := m.tokenIDs[sum]; ok {
		return m.tokens[id], true
	}
	return Versioned[*v1.Token]{}, false
}

// Tokens returns every token, by id.
func (m *Mirror) Tokens() []*v1.Token {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*v1.Token, 0, len(m.tokens))
	for _, t := range m.tokens {
		out = append(out, t.Val)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// RevokedSerial returns the revocation of the certificate with this serial
// (hex, as RevocationKey has it).
func (m *Mirror) RevokedSerial(serial string) (*v1.Revocation, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.revocations["serial/"+serial]
	return r.Val, ok
}

// RevokedIdentity returns the revocation of an identity's certificates
// (kind and name) with the revision it was last written at.
func (m *Mirror) RevokedIdentity(kind, name string) (Versioned[*v1.Revocation], bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.revocations["identity/"+kind+"/"+name]
	return r, ok
}

// Revocations returns every revocation: identities, then serials, each by
// key.
func (m *Mirror) Revocations() []*v1.Revocation {
	m.mu.RLock()
	defer m.mu.RUnlock()
	keys := make([]string, 0, len(m.revocations))
	for k := range m.revocations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*v1.Revocation, 0, len(keys))
	for _, k := range keys {
		out = append(out, m.revocations[k].Val)
	}
	return out
}

// RevocationsSince returns the revocations written after revision since
// (all of them when since is 0 or ahead of the mirror: another etcd), in
// the order they were written (by revision, then key), and the mirror's
// revision they are complete up to (agents' deltas).
func (m *Mirror) RevocationsSince(since int64) (out []Versioned[*v1.Revocation], at int64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if since > m.rev {
		since = 0
	}
	keys := make([]string, 0, len(m.revocations))
	for k, r := range m.revocations {
		if r.Rev > since {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		ri, rj := m.revocations[keys[i]].Rev, m.revocations[keys[j]].Rev
		if ri != rj {
			return ri < rj
		}
		return keys[i] < keys[j]
	})
	out = make([]Versioned[*v1.Revocation], 0, len(keys))
	for _, k := range keys {
		out = append(out, m.revocations[k])
	}
	return out, m.rev
}

// RevocationEpoch changes whenever a revocation is written or deleted.
func (m *Mirror) RevocationEpoch() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.revocationEpoch
}

// Blackouts returns the stored blackouts by start, then id.
func (m *Mirror) Blackouts() []*v1.Blackout {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*v1.Blackout, 0, len(m.blackouts))
	for _, b := range m.blackouts {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].GetFrom().AsTime(), out[j].GetFrom().AsTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].GetId() < out[j].GetId()
	})
	return out
}

// Coordinators returns the registered (live) coordinators by name.
func (m *Mirror) Coordinators() []*v1.CoordinatorInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*v1.CoordinatorInfo, 0, len(m.coords))
	for _, c := range m.coords {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// Coordinator returns one registered coordinator.
func (m *Mirror) Coordinator(name string) (*v1.CoordinatorInfo, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c, ok := m.coords[name]
	return c, ok
}

// Observe is what the rollout engine observes of a host, read at once:
// whether its agent stream is up (Connected), since when this mirror saw
// its current connection record (zero if none) and its last report for
// service (Report). A step asks it for every host of a rollout: one read
// lock per host instead of one per question (two, four with gossip).
func (m *Mirror) Observe(host, service string) (connected bool, since time.Time, r *v1.ServiceReport) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, connected = m.conns[host]
	return connected, m.connSince[host], m.reports[host].get(service)
}

// Report returns a host's last report for a service.
func (m *Mirror) Report(host, service string) *v1.ServiceReport {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.reports[host].get(service)
}

// ServiceReports returns every host's last report for a service (in no
// order).
func (m *Mirror) ServiceReports(service string) []*v1.ServiceReport {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*v1.ServiceReport
	for _, hr := range m.reports {
		if r := hr.get(service); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// Reports returns a host's last reports, sorted by service.
func (m *Mirror) Reports(host string) []*v1.ServiceReport {
	m.mu.RLock()
	defer m.mu.RUnlock()
	hr := m.reports[host]
	out := make([]*v1.ServiceReport, len(hr))
	for i, e := range hr {
		out[i] = e.r // sorted by service already
	}
	return out
}

// Sync waits until the mirror has applied every write committed before the
// call, so reads through it see the caller's earlier writes. The watch only
// covers Fleetwave's prefix, so on a shared etcd the current revision may
// belong to another tenant's key: Sync asks etcd for a progress
// notification, which carries the current revision to the watch.
func (m *Mirror) Sync(ctx context.Context) error {
	resp, err := m.s.c.Get(ctx, ElectionPrefix, clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("read etcd revision: %w", err)
	}
	rev := resp.Header.Revision
	for {
		// Same metadata as the watch's context: the request must reach the
		// watch stream the mirror listens on.
		_ = m.s.c.RequestProgress(clientv3.WithRequireLeader(ctx))
		wctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		err := m.WaitRev(wctx, rev)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
	}
}
