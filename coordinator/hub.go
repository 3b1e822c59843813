package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/judge"
	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/streamend"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// hub serves the agents' Connect streams: it records hellos, connections and
// reports in etcd and pushes each connected host its full set of
// assignments whenever what it should run changes.
type hub struct {
	v1.UnimplementedAgentServiceServer
	c *Coordinator

	mu     sync.Mutex
	conns  map[string]*agentConn
	cached *desiredTable
	// building serialises rebuilds of cached: every stream's report
	// calls table(), and without it each caller that saw a new epoch
	// rebuilt the table itself, all at once.
	building sync.Mutex
	// reports batches report writes from every stream.
	reports *reportWriter
	// arrivals numbers streams in the order their handlers start
	// (agentConn.seq).
	arrivals atomic.Uint64
	// revDelta caches the revocations sent to agents (revdelta.go).
	revDelta revDelta
	// replans counts the tables made stale because a host a stage plan
	// counted on disconnected, or one it left out reconnected
	// (stageStale); added to the mirror's desired
	// epoch it keys the cached table (tableEpoch). Under mu.
	replans uint64
	// pacedSeen is the mirror's paced epoch (store.Mirror.Epochs) as of
	// the push loop's last pass: changes the hub paces (hosts' records,
	// reports' staging fields) make the cached table stale only when the
	// push loop passes for them, not at every stream's next queue (a storm
	// of connecting hosts, each writing its record, rebuilt the table at
	// every connect). Under mu.
	pacedSeen uint64
	// sharedLimit is how many encoded sets a table shares
	// (maxSharedSets; tests set less).
	sharedLimit int
}

type agentConn struct {
	host   string
	labels map[string]string
	stream v1.AgentService_ConnectServer
	// cancel ends the stream's work (its etcd calls, its sends) with a
	// cause; ts ends the stream itself with a status, which ends the
	// handler's Recv: the stream has no goroutine of its own waiting for
	// its end.
	cancel context.CancelCauseFunc
	ts     streamend.Ender
	// pending is the newest assignment set not yet sent (a newer set
	// replaces an unsent older one: level-triggered); sending says a
	// sender goroutine is at work (at most one per stream, started by queue
	// and ending when nothing is pending); done that the handler is
	// returning, so no sender starts. Guarded by hub.mu.
	pending *queuedSet
	sending bool
	done    bool
	senders sync.WaitGroup
	// lastSum is the hash of the encoding of the last set queued, to skip
	// repeats (zero: none, send the next one), and epoch the desired-state
	// epoch it was computed at: an older computation finishing late must
	// not replace a newer set.
	lastSum [sha256.Size]byte
	// greeted says its connect's set (queue with force) was queued: a
	// push pass between the stream's registration and that set skips it,
	// else the agent got its first set twice (the pass's, then the
	// forced one), and a replaced stream read the second before its end.
	greeted bool
	epoch   uint64
	// seq is the stream's arrival number (hub.arrivals): a stream that
	// arrived before the host's registered one does not replace it.
	seq uint64
	// token identifies this stream's connection record, so a replaced
	// stream's clean-up cannot delete its successor's record.
	token string
	// reports are the last reports this stream queued for writing, per
	// service.
	reports map[string]*v1.ServiceReport
	// seen is the last report this stream received per service (written
	// or not), guarded by hub.mu: what the host has of each service, for
	// its assignments (rollout.Desired).
	seen map[string]*v1.ServiceReport
	// revocations says the agent keeps revocations (its hello had
	// revocations_revision): it gets them (revdelta.go). revSent is the
	// revision it holds them up to (only the sender touches it after the
	// hello); revPending that new ones wait for a revocation-only message
	// (guarded by hub.mu).
	revocations bool
	revSent     int64
	revPending  bool
	// stored is told the outcome of each report this stream queued after
	// its hello (hub.reportStored).
	stored *reportDone
}

// errStreamEnded is why a stream ended from outside ends: replaced by a
// newer stream of its host, or the coordinator stopping or without an etcd
// session.
var errStreamEnded = errors.New("connection replaced or coordinator stopping")

// errOlderStream is why a stream whose hello took longer than a newer
// stream's of the same host ends instead of replacing it.
var errOlderStream = errors.New("a newer stream of this host was accepted while this one said hello")

// reportNotStored is why a stream whose report could not be written ends
// (Unavailable): its agent reconnects and its hello carries its full
// status, so the coordinator never goes on with a report it lost.
type reportNotStored struct{ err error }

func (e reportNotStored) Error() string              { return "report not stored: " + e.err.Error() }
func (e reportNotStored) Unwrap() error              { return e.err }
func (e reportNotStored) GRPCStatus() *status.Status { return status.New(codes.Unavailable, e.Error()) }

// reportStored is c's report callback (reportWriter.put): a report that
// was not stored ends the stream.
func (h *hub) reportStored(c *agentConn) func(error) {
	return func(err error) {
		if err == nil {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if !c.done {
			c.end(reportNotStored{err})
		}
	}
}

// end ends the stream from outside with cause: its work stops and its
// status (cause's gRPC status, else Canceled with cause's message) goes to
// the agent at once, which ends the handler's Recv.
func (c *agentConn) end(cause error) {
	c.cancel(cause)
	st, ok := status.FromError(cause)
	if !ok {
		st = status.New(codes.Canceled, cause.Error())
	}
	if c.ts != nil {
		_ = c.ts.WriteStatus(st) // nil when the stream has ended already
	}
}

func newHub(c *Coordinator) *hub {
	return &hub{c: c, conns: map[string]*agentConn{}, reports: newReportWriter(c.store, c.metrics), sharedLimit: maxSharedSets}
}

// maxHelloCgroups bounds Hello.cgroups (the agent sends at most
// supervise.MaxCgroupsReport bytes; the coordinator does not import the agent).
const maxHelloCgroups = 512

func validateReport(r *v1.ServiceReport) error {
	if r == nil {
		return errors.New("report: missing")
	}
	if err := spec.CheckName("report.service", r.GetService()); err != nil {
		return err
	}
	for _, f := range []struct{ field, v string }{
		{"report.current_version", r.GetCurrentVersion()},
		{"report.target_version", r.GetTargetVersion()},
		{"report.last_good_version", r.GetLastGoodVersion()},
	} {
		if f.v != "" {
			if err := spec.CheckVersion(f.field, f.v); err != nil {
				return err
			}
		}
	}
	if r.GetGeneration() < 0 {
		return fmt.Errorf("report.generation: %d is negative", r.GetGeneration())
	}
	if b := r.GetBadSource(); b != "" {
		if err := spec.CheckHostID("report.bad_source", b); err != nil {
			return err
		}
	}
	// Staging digests (rollout.stage_ahead): each change of one recomputes
	// the stage plan, so only a sha256 (or none) is taken.
	for _, f := range []struct{ field, v string }{
		{"report.staged_sha256", r.GetStagedSha256()},
		{"report.stage_failed_sha256", r.GetStageFailedSha256()},
	} {
		if len(f.v) > 64 {
			return fmt.Errorf("%s: %d bytes, over 64 (a sha256 in hex)", f.field, len(f.v))
		}
		if f.v != "" {
			if err := spec.CheckSHA256(f.field, f.v); err != nil {
				return err
			}
		}
	}
	if len(r.GetReason()) > 4096 {
		return fmt.Errorf("report.reason: %d bytes, over 4096", len(r.GetReason()))
	}
	if len(r.GetChecks()) > 64 {
		return fmt.Errorf("report.checks: %d entries, over 64", len(r.GetChecks()))
	}
	for i, c := range r.GetChecks() {
		if len(c.GetName()) > maxField || len(c.GetDetail()) > maxField {
			return fmt.Errorf("report.checks[%d]: name or detail over %d bytes", i, maxField)
		}
	}
	return validateMetricSummary(r.GetMetrics())
}

// validateMetricSummary bounds a report's metric summary (analysis.compare):
// its size only; the judge checks that its counts make sense.
func validateMetricSummary(m *v1.MetricSummary) error {
	if m == nil {
		return nil
	}
	if v := m.GetVersion(); v != "" {
		if err := spec.CheckVersion("report.metrics.version", v); err != nil {
			return err
		}
	}
	if len(m.GetRules()) > judge.MaxRules {
		return fmt.Errorf("report.metrics.rules: %d entries, over %d", len(m.GetRules()), judge.MaxRules)
	}
	for i, rc := range m.GetRules() {
		if len(rc.GetRule()) > maxField {
			return fmt.Errorf("report.metrics.rules[%d].rule: over %d bytes", i, maxField)
		}
		if len(rc.GetBuckets()) > judge.MaxBuckets {
			return fmt.Errorf("report.metrics.rules[%d].buckets: %d entries, over %d", i, len(rc.GetBuckets()), judge.MaxBuckets)
		}
	}
	return nil
}

// maxField bounds free-text fields agents send (check names and details,
// agent version), so one report stays far below etcd's request limit.
const maxField = 1024

func validateHello(h *v1.Hello) error {
	if h == nil {
		return errors.New("hello: the first message must be a hello")
	}
	if err := spec.CheckHostID("hello.host_id", h.GetHostId()); err != nil {
		return err
	}
	if err := spec.CheckLabels("hello.labels", h.GetLabels()); err != nil {
		return err
	}
	if len(h.GetLabels()) > spec.MaxHostLabels {
		return fmt.Errorf("hello.labels: %d labels, over %d", len(h.GetLabels()), spec.MaxHostLabels)
	}
	if len(h.GetAgentVersion()) > 128 {
		return fmt.Errorf("hello.agent_version: %d bytes, over 128", len(h.GetAgentVersion()))
	}
	if a := h.GetPeerAddress(); a != "" {
		if len(a) > spec.MaxPeerAddressLen {
			return fmt.Errorf("hello.peer_address: %d bytes, over %d", len(a), spec.MaxPeerAddressLen)
		}
		if err := spec.CheckHostPort("hello.peer_address", a); err != nil {
			return err
		}
	}
	if len(h.GetCgroups()) > maxHelloCgroups {
		return fmt.Errorf("hello.cgroups: %d bytes, over %d", len(h.GetCgroups()), maxHelloCgroups)
	}
	if len(h.GetServices()) > spec.MaxServicesPerHost {
		return fmt.Errorf("hello.services: %d entries, over %d", len(h.GetServices()), spec.MaxServicesPerHost)
	}
	for i, r := range h.GetServices() {
		if err := validateReport(r); err != nil {
			return fmt.Errorf("hello.services[%d]: %w", i, err)
		}
	}
	return nil
}

// Connect implements AgentService.Connect.
func (h *hub) Connect(stream v1.AgentService_ConnectServer) (retErr error) {
	seq := h.arrivals.Add(1)
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if err := validateHello(hello); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	id := hello.GetHostId()
	if err := checkAgentVersion("hello.agent_version", hello.GetAgentVersion()); err != nil {
		h.c.log.Warn().Str("host", id).Str("agent_version", hello.GetAgentVersion()).Msg("agent older than the minimum refused")
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	// A host certificate opens only its own host's stream: it receives only
	// its assignments and reports only for itself.
	if p, ok := principalFrom(ctx); ok && p.kind == tlsutil.KindAgent && p.name != id {
		h.c.log.Warn().Str("host", id).Str("actor", p.ident).Msg("agent stream for another host refused")
		return status.Errorf(codes.PermissionDenied, "hello.host_id: %q, but the certificate is for host %q", id, p.name)
	}
	// The stream lives no longer than the certificate that opened it: the
	// agent reconnects with its renewed one.
	if cert, ok := tlsutil.PeerCertificate(ctx); ok {
		var cancelCert context.CancelFunc
		ctx, cancelCert = context.WithDeadline(ctx, cert.NotAfter)
		defer cancelCert()
	}
	// No logger of the stream's own (With: a buffer kept per stream, about
	// 450 bytes per agent): the host field is added per line.
	log := &h.c.log
	from := ""
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}

	// Record the host (labels) when new or changed; never on a heartbeat.
	if old, ok := h.c.mirror.Host(id); !ok || !equalLabels(old.GetLabels(), hello.GetLabels()) || old.GetAgentVersion() != hello.GetAgentVersion() ||
		old.GetCgroups() != hello.GetCgroups() || old.GetPeerAddress() != hello.GetPeerAddress() {
		rec := &v1.Host{Id: id, Labels: hello.GetLabels(), AgentVersion: hello.GetAgentVersion(), Cgroups: hello.GetCgroups(),
			PeerAddress: hello.GetPeerAddress(), LastSeen: timestamppb.Now()}
		if err := h.c.store.PutHost(ctx, rec); err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if ok && !equalLabels(old.GetLabels(), hello.GetLabels()) {
			h.c.hostMoved(ctx, id, old.GetLabels(), hello.GetLabels()) // remove.go
		}
	}
	conn := &agentConn{host: id, seq: seq, labels: hello.GetLabels(), stream: stream, cancel: cancel,
		token: h.c.cfg.Name + "/" + randToken(), reports: map[string]*v1.ServiceReport{}, seen: map[string]*v1.ServiceReport{}}
	conn.ts = streamend.From(ctx)
	if hello.RevocationsRevision != nil {
		conn.revocations, conn.revSent = true, hello.GetRevocationsRevision()
	}
	conn.stored = &reportDone{h.reportStored(conn)}
	// A stream's context ends by itself (plain context.Canceled: the stream
	// or its connection ended) or with a cause: its certificate's deadline,
	// a revocation (streamAuth: its status is the revocation), end. Those
	// must end Recv too. AfterFunc starts no goroutine until then.
	defer context.AfterFunc(ctx, func() {
		if cause := context.Cause(ctx); cause != context.Canceled {
			conn.end(cause)
		}
	})()
	// From now on reports of this host's older streams are dropped (sent
	// before this hello, they must not land after its reports).
	defer h.reports.helloBegins(id, seq)()
	// The hello's reports are stored before the stream counts as connected
	// (written together, in as few transactions as they fill).
	stored := make(chan error, len(hello.GetServices()))
	queued := 0
	for _, r := range hello.GetServices() {
		if h.saveReport(conn, r, &reportDone{func(err error) { stored <- err }}) {
			queued++
		}
		h.saw(conn, r)
	}
	for range queued {
		select {
		case err := <-stored:
			if err != nil {
				return status.Error(codes.Unavailable, err.Error())
			}
		case <-ctx.Done():
			return status.Error(codes.Unavailable, context.Cause(ctx).Error())
		}
	}
	h.mu.Lock()
	if old := h.conns[id]; old != nil {
		if old.seq > seq {
			// The host opened a newer stream while this one's hello was
			// handled (an agent reconnecting, this stream's etcd writes
			// slow): the newer one stays.
			h.mu.Unlock()
			return status.Error(codes.Canceled, errOlderStream.Error())
		}
		old.end(errStreamEnded)
	}
	h.conns[id] = conn
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		if h.conns[id] == conn {
			delete(h.conns, id)
		}
		conn.done = true
		busy := conn.sending
		h.mu.Unlock()
		if busy && stream.Context().Err() == nil {
			// A send waiting for the agent to read (flow control) returns
			// only when the stream ends; gRPC forbids sending after the
			// handler returned, so it ends first, with the handler's status.
			cause := retErr
			if cause == nil {
				cause = errStreamEnded
			}
			conn.end(cause)
		}
		conn.senders.Wait()
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		if err := h.c.store.DeleteConn(dctx, id, conn.token); err != nil {
			log.Warn().Str("host", id).Err(err).Msg("record disconnect failed")
		}
		log.Info().Str("host", id).Msg("agent disconnected")
	}()
	lease, err := h.c.liveLease(ctx)
	if err != nil {
		return status.Error(codes.Unavailable, "waiting for an etcd session: "+err.Error())
	}
	if err := h.c.store.PutConn(ctx, id, conn.token, lease); err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	log.Info().Str("host", id).Str("from", from).Int("services", len(hello.GetServices())).Msg("agent connected")
	h.queue(conn, true, time.Now())

	// The handler receives; sets are sent by a goroutine queue starts when
	// one is pending, which ends when none is (sendLoop): one goroutine per
	// stream between deliveries, besides gRPC's per connection.
	for {
		m, err := stream.Recv()
		if err != nil {
			cause := context.Cause(ctx)
			if errors.Is(cause, errStreamEnded) || errors.Is(cause, context.DeadlineExceeded) {
				return status.Error(codes.Canceled, cause.Error())
			}
			if rns := (reportNotStored{}); errors.As(cause, &rns) {
				return rns.GRPCStatus().Err()
			}
			return err // a revocation's status is streamAuth's
		}
		r := m.GetReport()
		if r == nil {
			return status.Error(codes.InvalidArgument, "message: want a report after the hello")
		}
		if err := validateReport(r); err != nil {
			log.Warn().Str("host", id).Err(err).Msg("invalid report ignored")
			continue
		}
		// Queued, not waited for: the stream reads on while it is written
		// (a failed write ends the stream: reportStored).
		h.saveReport(conn, r, conn.stored)
		if h.saw(conn, r) {
			// What the host has changed: its assignments may (a removal
			// done, or to be made above its new generation). A host that
			// removed a service gets its set again even if it is the
			// same: it refused what came while it was removing.
			if r.GetPhase() == v1.Phase_PHASE_REMOVED {
				h.mu.Lock()
				conn.lastSum = [sha256.Size]byte{}
				h.mu.Unlock()
			}
			h.queue(conn, false, time.Now())
		}
	}
}

// sendLoop sends c's pending sets until none is left, then ends. Only one
// runs per stream (agentConn.sending), so sends are never concurrent.
func (h *hub) sendLoop(c *agentConn) {
	defer c.senders.Done()
	for {
		h.mu.Lock()
		q := c.pending
		c.pending = nil
		revOnly := c.revPending
		c.revPending = false
		if (q == nil && !revOnly) || c.done {
			c.sending = false
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		// sent_at measures delivery. A set goes out as the bytes prepare
		// encoded (shared: never modified), followed by this message's:
		// the agent decodes one ConnectResponse with the fields of both.
		m := &v1.ConnectResponse{SentAt: timestamppb.Now(), RevocationsOnly: q == nil}
		revAt := h.attachRevocations(c, m)
		if q == nil && m.Revocations == nil {
			continue // nothing new for this agent
		}
		msg, err := withSet(q, m)
		if err == nil {
			err = c.stream.SendMsg(msg)
		}
		if err != nil {
			h.mu.Lock()
			c.sending = false
			h.mu.Unlock()
			h.c.log.Debug().Err(err).Str("host", c.host).Msg("send assignments failed: ending the stream")
			c.end(fmt.Errorf("send assignments: %w", err)) // the handler's Recv returns
			return
		}
		if m.Revocations != nil {
			c.revSent = revAt
		}
		if q != nil {
			h.c.metrics.delivered(*q)
		}
	}
}

// withSet is what sendLoop sends: m, after q's set if there is one (the
// set's bytes, then m's: preEncoded).
func withSet(q *queuedSet, m *v1.ConnectResponse) (any, error) {
	if q == nil {
		return m, nil
	}
	tail, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode sent_at and revocations: %w", err)
	}
	return &preEncoded{set: q.set.b, tail: tail}, nil
}

// saveReport queues a report for writing (reportWriter.put, which calls
// done with the outcome) when it differs from the last one this stream
// queued (or, for the hello, from the stored one), ignoring its timestamp,
// so etcd load follows state changes, not chatter; it says whether it
// queued it. Reports for services the coordinator does not know are
// dropped: agents cannot create keys at will. Only the stream's own
// goroutine calls it.
func (h *hub) saveReport(c *agentConn, r *v1.ServiceReport, done *reportDone) bool {
	if _, ok := h.c.mirror.Service(r.GetService()); !ok {
		h.c.log.Debug().Str("host", c.host).Str("service", r.GetService()).Msg("report for an unknown service dropped")
		return false
	}
	old := c.reports[r.GetService()]
	if old == nil {
		// A report of an earlier stream still to be written: this one
		// must follow it even if it equals the stored one. Nor is the
		// mirror trusted while it has not applied every report this
		// writer stored: it may still hold one older than the last
		// written, and a hello equal to that older one, skipped, would
		// leave the newer (stale) one in etcd for good.
		if pending, rev := h.reports.pending(c.host, r.GetService()); !pending && h.c.mirror.Rev() >= rev {
			old = h.c.mirror.Report(c.host, r.GetService())
		}
	}
	if old != nil && sameReport(old, r) {
		return false
	}
	// Counted as written now: if the write fails, the stream ends.
	c.reports[r.GetService()] = r
	h.reports.putFrom(c.host, c.seq, r, done)
	return true
}

func randToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// reportAt is ServiceReport.at, the one field sameReport ignores.
var reportAt = (&v1.ServiceReport{}).ProtoReflect().Descriptor().Fields().ByName("at")

// sameReport says whether two reports are equal but for their time (at).
// Neither is copied (one is the mirror's, shared): a copy of each of
// 10,000 reports per wave was most of what storing them cost.
func sameReport(a, b *v1.ServiceReport) bool {
	ra, rb := a.ProtoReflect(), b.ProtoReflect()
	if ra.IsValid() != rb.IsValid() {
		return false
	}
	same, n := true, 0
	ra.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd == reportAt {
			return true
		}
		n++
		same = rb.Has(fd) && v.Equal(rb.Get(fd))
		return same
	})
	if !same {
		return false
	}
	rb.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if fd != reportAt {
			n--
		}
		return true
	})
	return n == 0 && bytes.Equal(ra.GetUnknown(), rb.GetUnknown())
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// desiredTable answers "what should this host run" for every service, built
// once per change of the desired state (indexing each rollout's plan).
type desiredTable struct {
	epoch    uint64
	services []desiredEntry
	// shared are the encoded sets hosts share, by wantsKey (at most
	// hub.sharedLimit: encodedFor). Everything else a set is made of is
	// the table's or changes the table's epoch (releases).
	sharedMu    sync.Mutex
	shared      map[string]*encodedSet
	sharedBytes int // of the sets in shared (at most maxSharedBytes)
}

type desiredEntry struct {
	svc     *v1.Service
	latest  *v1.Rollout
	desired func(host string, labels map[string]string, rep *v1.ServiceReport) (rollout.Want, bool)
	// peers are the hosts that hold the artifact of latest's target, for
	// the sources of its assignments (nil: none, or peer-to-peer is off).
	peers *rollout.PeerSet
	// stage says which hosts waiting for their wave stage latest's target
	// now, and from whom (rollout.stage_ahead; nil: none).
	stage *rollout.StagePlan
}

// tableEpoch keys the cached table: the mirror's desired epoch without its
// paced changes, plus those as of the push loop's last pass (pacedSeen),
// plus the hub's stage replans (each only grows).
func (h *hub) tableEpoch() uint64 {
	d, p := h.c.mirror.Epochs()
	h.mu.Lock()
	defer h.mu.Unlock()
	return d - p + h.pacedSeen + h.replans
}

func (h *hub) table() *desiredTable {
	if t := h.cachedAt(h.tableEpoch()); t != nil {
		return t
	}
	h.building.Lock()
	defer h.building.Unlock()
	// Another caller may have built it meanwhile (epochs only grow).
	epoch := h.tableEpoch()
	if t := h.cachedAt(epoch); t != nil {
		return t
	}
	t := &desiredTable{epoch: epoch}
	var peerHosts map[string]rollout.PeerHost // read once, when a rollout needs it
	for _, vs := range h.c.mirror.Services() {
		svc := vs.Val
		var latest *v1.Rollout
		if id := svc.GetStatus().GetLastRolloutId(); id != "" {
			if r, ok := h.c.mirror.Rollout(svc.GetSpec().GetName(), id); ok {
				latest = r.Val
			}
		}
		e := desiredEntry{svc: svc, latest: latest, desired: rollout.DesiredFunc(svc, latest)}
		if (latest.GetToVersion() != "" && h.c.cfg.ArtifactSources > 0) || rollout.Stages(latest) {
			if peerHosts == nil {
				peerHosts = h.peerHosts()
			}
		}
		holders := h.stagePlan(&e, peerHosts)
		if latest.GetToVersion() != "" && h.c.cfg.ArtifactSources > 0 {
			if ps := rollout.NewPeerSet(append(rollout.PeersOf(latest, peerHosts), holders...)); ps.Len() > 0 {
				e.peers = ps
			}
		}
		t.services = append(t.services, e)
	}
	h.mu.Lock()
	h.cached = t
	h.mu.Unlock()
	return t
}

// cachedAt is the cached table if it was built at epoch (else nil).
func (h *hub) cachedAt(epoch uint64) *desiredTable {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.cached; t != nil && t.epoch == epoch {
		return t
	}
	return nil
}

// stagePlan sets e.stage when e's rollout stages its target ahead
// (rollout.PlanStage), from the reports that say the target's artifact is
// staged, and returns the hosts that hold it staged (sources for installs
// too).
func (h *hub) stagePlan(e *desiredEntry, peerHosts map[string]rollout.PeerHost) []rollout.Peer {
	r := e.latest
	if !rollout.Stages(r) || e.svc.GetSpec().GetName() == spec.AgentService {
		return nil // agent upgrades stage their binary their own way (agentupgrade.go)
	}
	rel, ok := h.c.mirror.Release(r.GetService(), r.GetToVersion())
	sha := rel.GetArtifact().GetSha256()
	if !ok || sha == "" {
		return nil
	}
	// out: hosts that would hold an admission slot without filling it
	// (not connected, or their staging of sha failed), or serve nobody
	// (cannotStage).
	staged, out := map[string]bool{}, map[string]bool{}
	for _, w := range r.GetWaves() {
		for _, hp := range w.GetHosts() {
			id := hp.GetHostId()
			rep := h.c.mirror.Report(id, r.GetService())
			if rep.GetStagedSha256() == sha {
				staged[id] = true
			}
			if h.cannotStage(r.GetService(), sha, id, hp.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE) {
				out[id] = true
			}
		}
	}
	e.stage = rollout.PlanStage(r, sha, peerHosts, staged, out, h.c.cfg.ArtifactSources)
	return e.stage.StagedHolders()
}

// cannotStage says whether a host of a rollout that stages sha is out of
// its stage plan (rollout.PlanStage's out): not connected, or its staging
// of sha failed, unless it is DONE (installed since: its reports keep
// stage_failed_sha256 until a staging starts again, and it serves sha).
func (h *hub) cannotStage(service, sha, id string, done bool) bool {
	return !h.c.mirror.Connected(id) || (!done && h.c.mirror.Report(id, service).GetStageFailedSha256() == sha)
}

// peerHosts are the hosts that advertise a peer address, with their
// labels. An agent whose identity is revoked is never named a source, nor
// one that the reports of rollout.BadSourceQuorum other hosts name as their
// bad_source (it served bytes that failed verification), while those
// reports stand.
func (h *hub) peerHosts() map[string]rollout.PeerHost {
	out := map[string]rollout.PeerHost{}
	hosts := h.c.mirror.Hosts()
	named := map[string][]string{}
	for _, host := range hosts {
		for _, r := range h.c.mirror.Reports(host.GetId()) {
			if b := r.GetBadSource(); b != "" {
				named[host.GetId()] = append(named[host.GetId()], b)
			}
		}
	}
	bad := rollout.BadPeers(named)
	for _, host := range hosts {
		if host.GetPeerAddress() == "" || bad[host.GetId()] {
			continue
		}
		if _, revoked := h.c.mirror.RevokedIdentity(tlsutil.KindAgent, host.GetId()); revoked {
			continue
		}
		out[host.GetId()] = rollout.PeerHost{Labels: host.GetLabels(), Address: host.GetPeerAddress()}
	}
	return out
}

// saw records the report a stream received and says whether what the host
// has of the service changed (phase or generation).
func (h *hub) saw(c *agentConn, r *v1.ServiceReport) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := c.seen[r.GetService()]
	c.seen[r.GetService()] = r
	return old.GetPhase() != r.GetPhase() || old.GetGeneration() != r.GetGeneration()
}

// hostWant is what a host should run of one service of a table
// (desiredEntry.desired), with what its set needs of the host itself.
type hostWant struct {
	want rollout.Want
	ok   bool // the host gets an assignment (or removal) of the service
	rep  *v1.ServiceReport
	// sources: its assignment names sources picked for this host
	// (PeerSet.Pick); stage: it stages the target, from stageSrc.
	sources, stage bool
	stageSrc       []rollout.Peer
}

// own says whether the assignment depends on the host itself, not only on
// the table and the want (its set is then not shared: encodedFor).
func (w hostWant) own() bool { return w.sources || w.stage }

// wants computes what a host should run of each of t's services, given
// what it reported of each (seen; else the stored report).
func (h *hub) wants(t *desiredTable, c *agentConn) []hostWant {
	host, labels := c.host, c.labels
	out := make([]hostWant, len(t.services))
	h.mu.Lock()
	for i, e := range t.services {
		out[i].rep = c.seen[e.svc.GetSpec().GetName()]
	}
	h.mu.Unlock()
	for i, e := range t.services {
		w := &out[i]
		if w.rep == nil {
			w.rep = h.c.mirror.Report(host, e.svc.GetSpec().GetName())
		}
		w.want, w.ok = e.desired(host, labels, w.rep)
		if !w.ok || w.want.Remove {
			continue
		}
		ver, target := w.want.Version, e.latest.GetToVersion()
		// A host that holds the artifact already gets no sources: its
		// assignment does not change as other hosts finish.
		w.sources = e.peers != nil && ver == target && !e.peers.Has(host)
		if e.stage != nil && ver != target && w.rep.GetCurrentVersion() == ver {
			// Waiting for its wave, running what it is assigned: it may
			// stage the target (rollout.PlanStage); sources then name
			// holders of the target's artifact.
			w.stage, w.stageSrc = e.stage.Stage(host)
		}
	}
	return out
}

// build makes a host's set from its wants (hub.wants).
func (h *hub) build(t *desiredTable, host string, labels map[string]string, wants []hostWant) *v1.ConnectResponse {
	resp := &v1.ConnectResponse{}
	for i, e := range t.services {
		w := wants[i]
		if !w.ok {
			continue
		}
		name := e.svc.GetSpec().GetName()
		agentBinary := name == spec.AgentService // agentupgrade.go
		if w.want.Remove {
			if !agentBinary { // an agent is never removed
				resp.Assignments = append(resp.Assignments, &v1.Assignment{Service: name, Generation: w.want.Generation, Remove: true, ReplacesGeneration: w.want.Replaces})
			}
			continue
		}
		ver, gen := w.want.Version, w.want.Generation
		rel, ok := h.c.mirror.Release(name, ver)
		if !ok {
			h.c.log.Error().Str("service", name).Str("version", ver).Msg("assigned release not found")
			continue
		}
		sp, rev := rollout.SpecFor(e.svc, e.latest, ver, gen)
		asg := &v1.Assignment{Service: name, Generation: gen, Release: rel, Spec: sp, SpecRevision: rev, ReplacesGeneration: w.want.Replaces}
		if w.sources && rel.GetArtifact().GetSha256() != "" {
			asg.Sources = rollout.SourcesOf(e.peers.Pick(host, labels[rollout.ZoneLabel], h.c.cfg.ArtifactSources))
		}
		if w.stage {
			if target, found := h.c.mirror.Release(name, e.latest.GetToVersion()); found {
				asg.Stage = target
				asg.Sources = rollout.SourcesOf(w.stageSrc)
			}
		}
		if sr := e.latest.GetSignedRollback(); sr != nil && ver == e.latest.GetToVersion() {
			asg.Rollback = sr // lets agents with trusted keys go back below their floor
		}
		if agentBinary {
			resp.Agent = asg
			continue
		}
		resp.Assignments = append(resp.Assignments, asg)
	}
	sort.Slice(resp.Assignments, func(i, j int) bool { return resp.Assignments[i].Service < resp.Assignments[j].Service })
	return resp
}

// encodedSet is a host's assignment set (a ConnectResponse with only
// assignments and agent) encoded deterministically, and the sha256 of the
// encoding. The sendLoop sends these bytes (preEncoded); it is shared
// between hosts and never modified.
type encodedSet struct {
	b   []byte
	sum [sha256.Size]byte
}

// maxSharedSets and maxSharedBytes bound the encoded sets a table keeps
// for the hosts that share them (desiredTable.shared), in number and in
// bytes (a set may be megabytes: many services with large specs); hosts
// whose sets are not among them get theirs encoded for themselves.
const (
	maxSharedSets  = 1024
	maxSharedBytes = 64 << 20
)

// encodedFor is host c's set, encoded. A set that depends on nothing of
// the host but its wants (no per-host sources, no staging) is encoded and
// hashed once per table and shared by every host with the same wants: a
// pass over 10,000 hosts of one rollout encodes a few distinct sets, not
// 10,000 (issue 16).
func (h *hub) encodedFor(t *desiredTable, c *agentConn) (*encodedSet, error) {
	wants := h.wants(t, c)
	var kb [128]byte
	key, shared := wantsKey(kb[:0], wants)
	if shared {
		if s := t.sharedSet(key); s != nil {
			return s, nil
		}
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(h.build(t, c.host, c.labels, wants))
	if err != nil {
		return nil, fmt.Errorf("encode assignments of host %s: %w", c.host, err)
	}
	s := &encodedSet{b: b[:len(b):len(b)], sum: sha256.Sum256(b)} // no room to append into: shared
	if shared {
		s = t.share(key, s, h.sharedLimit)
	}
	return s, nil
}

// wantsKey appends to b a key of wants that tells apart every two sets of
// one table (each service's index, whether it is assigned or removed, its
// version, generation and the generation it replaces), and says whether the set is shareable: none of
// its assignments depends on the host itself (hostWant.own).
func wantsKey(b []byte, wants []hostWant) ([]byte, bool) {
	for i, w := range wants {
		if !w.ok {
			continue
		}
		if w.own() {
			return b, false
		}
		b = binary.AppendUvarint(b, uint64(i))
		if w.want.Remove {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.AppendUvarint(b, uint64(len(w.want.Version)))
		b = append(b, w.want.Version...)
		b = binary.AppendVarint(b, w.want.Generation)
		b = binary.AppendVarint(b, w.want.Replaces)
	}
	return b, true
}

// sharedSet is the set shared under key, or nil.
func (t *desiredTable) sharedSet(key []byte) *encodedSet {
	t.sharedMu.Lock()
	defer t.sharedMu.Unlock()
	return t.shared[string(key)]
}

// share keeps s under key unless limit sets, or maxSharedBytes, are kept
// already (then s is the host's alone), and returns
// the set kept under key (s, or one another host's pass kept meanwhile).
func (t *desiredTable) share(key []byte, s *encodedSet, limit int) *encodedSet {
	t.sharedMu.Lock()
	defer t.sharedMu.Unlock()
	if kept, ok := t.shared[string(key)]; ok {
		return kept
	}
	if len(t.shared) >= limit || t.sharedBytes+len(s.b) > maxSharedBytes {
		return s
	}
	if t.shared == nil {
		t.shared = map[string]*encodedSet{}
	}
	t.shared[string(key)] = s
	t.sharedBytes += len(s.b)
	return s
}

// queue computes a host's assignments and queues them if they changed (or
// always when force: on connect); since is when the change was noticed.
func (h *hub) queue(c *agentConn, force bool, since time.Time) {
	if h.prepare(c, force, since) {
		go h.sendLoop(c)
	}
}

// prepare is queue but for starting the sender: when it returns true the
// caller must start h.sendLoop(c) (counted in c.senders already). The push
// loop prepares every host first and starts the senders after: started
// one by one, thousands of senders (and the reports their agents send
// back) took the CPU from the pass, which then needed over a second to reach the
// last hosts of a wave (issue 16).
func (h *hub) prepare(c *agentConn, force bool, since time.Time) (start bool) {
	t := h.table()
	set, err := h.encodedFor(t, c)
	if err != nil {
		h.c.log.Error().Err(err).Str("host", c.host).Msg("encode assignments")
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !force && !c.greeted {
		return // its connect's set comes (with force), computed after this
	}
	if t.epoch < c.epoch {
		return // a newer set was queued meanwhile
	}
	if !force && set.sum == c.lastSum {
		return
	}
	c.greeted = c.greeted || force
	c.lastSum, c.epoch = set.sum, t.epoch
	c.pending = &queuedSet{set: set, since: since, connect: force}
	if !c.sending && !c.done {
		c.sending = true
		c.senders.Add(1)
		return true
	}
	return false
}

// stageRepushInterval is the least time between two passes of the push
// loop that only paced changes caused (store.Mirror.Epochs): reports'
// staging fields (staged_sha256, stage_failed_sha256) and host records.
// While a rollout stages ahead every host's staged report changes the
// plan, and while hosts connect each writes its record; a pass
// re-evaluates every connected host (O(hosts)), so one pass per change
// would be O(hosts²). Paced, such changes (sources and stage plans) reach
// agents within this interval; any other change of the desired state
// passes at once.
const stageRepushInterval = time.Second

// pushPacer decides when the push loop passes (pure: the mirror's epochs
// and the time are inputs).
type pushPacer struct {
	interval time.Duration
	epoch    uint64    // DesiredEpoch at the last pass
	other    uint64    // its changes other than paced ones, at the last pass
	last     time.Time // when the last pass ran
}

// due says whether a pass runs now for the mirror's epochs (desired, and
// of its changes the paced ones) at now; when not but a change waits for
// the pacing, wait > 0 is when to ask again.
func (p *pushPacer) due(desired, paced uint64, now time.Time) (pass bool, wait time.Duration) {
	if desired == p.epoch {
		return false, 0
	}
	other := desired - paced
	if other == p.other {
		if d := p.interval - now.Sub(p.last); d > 0 {
			return false, d
		}
	}
	p.epoch, p.other, p.last = desired, other, now
	return true, 0
}

// stageStale reports whether the table's stage plans count on a host that
// is no longer connected (rollout.StagePlan.Lost), or left out a host that
// is connected again and can stage (StagePlan.Found). Lost: a staging host
// that disconnected would keep its admission slot, and a holder its
// children, until the next change of the desired state, which a
// disconnect of a host waiting for its wave is not (the rollout records
// only its hosts in flight as unknown). Found: a host that reconnects
// changes no desired state either, so it would stage nothing (a holder
// serve nobody) until another host's report replanned. A stale table is
// rebuilt first (the next pass needs it anyway), so a connection change
// during a rebuild is caught by the next check: the caller reads
// Mirror.Disconnects and Connects before.
func (h *hub) stageStale() bool {
	for _, e := range h.table().services {
		if e.stage == nil {
			continue
		}
		if e.stage.Lost(h.c.mirror.Connected) {
			return true
		}
		svc, sha := e.latest.GetService(), e.stage.Sha256
		done := map[string]bool{}
		for _, w := range e.latest.GetWaves() {
			for _, hp := range w.GetHosts() {
				if hp.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
					done[hp.GetHostId()] = true
				}
			}
		}
		if e.stage.Found(func(id string) bool { return !h.cannotStage(svc, sha, id, done[id]) }) {
			return true
		}
	}
	return false
}

// replan makes the cached table stale: the next table() replans staging.
func (h *hub) replan() {
	h.mu.Lock()
	h.replans++
	h.mu.Unlock()
}

// pushLoop re-evaluates every connected host's assignments whenever what
// hosts should run may have changed (staging and host-record changes
// paced: stageRepushInterval). A disconnect of a host a stage plan counts
// on, or a reconnect of one it left out, is a staging-only change: checked
// at most once per stageRepushInterval (stageStale scans the plans'
// admitted hosts, holders and left-out hosts).
func (h *hub) pushLoop(ctx context.Context) {
	ch, unsub := h.c.mirror.Subscribe()
	defer unsub()
	pace := pushPacer{interval: stageRepushInterval}
	// Disconnects and connects are paced like staging-only changes (every
	// one of them is): a storm of 10,000 is one check, and at most one
	// replan, per interval, with a trailing check for the last
	// (TestLostPacer, TestReconnectPacer).
	churnPace := pushPacer{interval: stageRepushInterval}
	var later <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-later:
			later = nil
		}
		now := time.Now()
		churn := h.c.mirror.Disconnects() + h.c.mirror.Connects()
		check, waitLost := churnPace.due(churn, churn, now)
		if check && h.stageStale() {
			h.replan()
		}
		h.mu.Lock()
		r := h.replans
		h.mu.Unlock()
		e, st := h.c.mirror.Epochs()
		pass, wait := pace.due(e+r, st+r, now)
		if waitLost > 0 && (wait == 0 || waitLost < wait) {
			wait = waitLost
		}
		if !pass {
			if wait > 0 && later == nil {
				later = time.After(wait)
			}
			continue
		}
		if waitLost > 0 && later == nil {
			later = time.After(waitLost)
		}
		seen := time.Now()
		h.mu.Lock()
		h.pacedSeen = max(h.pacedSeen, st)
		conns := make([]*agentConn, 0, len(h.conns))
		for _, c := range h.conns {
			conns = append(conns, c)
		}
		h.mu.Unlock()
		h.c.metrics.pushPasses.Inc()
		start := conns[:0]
		for _, c := range conns {
			if h.prepare(c, false, seen) {
				start = append(start, c)
			}
		}
		for _, c := range start {
			go h.sendLoop(c)
		}
	}
}

func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.end(errStreamEnded)
	}
}
