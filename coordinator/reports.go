package coordinator

import (
	"container/list"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// reportWriter batches the agents' report writes: a stream hands its report
// over and goes on reading (put does not wait), and writers put whatever
// has gathered (up to the store's Batch) in one etcd transaction, at
// most maxReportTxns transactions in flight. Under load thousands of
// streams share a few transactions a second instead of one put each; a
// lone report is written at once.
//
// Per host and service (a report key) at most one report is in a
// transaction and at most one is queued: a newer report replaces the queued
// one (coalescing: a host's FETCHING, CHECKING and HEALTHY sent while a
// transaction is slow cost two transactions, not three), and the queued one
// is taken only once the one in flight is written, so a host's reports are
// never reordered. Reports the leader acts on (reportOutcome) are taken
// before phase-only ones; a phase-only report queued for maxPhaseReportWait
// is taken before them, so none waits for ever.
//
// A stream learns whether its report was stored through the callback it
// passed to put: when a write fails it ends, so its agent resends its full
// status (hub.Connect).
type reportWriter struct {
	s         *store.Store
	now       func() time.Time
	txns      prometheus.Counter // transactions attempted
	written   prometheus.Counter // reports stored
	coalesced prometheus.Counter // reports replaced by a newer one before their transaction
	dropped   prometheus.Counter // reports of an older stream read after a newer stream's hello (putFrom)

	mu      sync.Mutex
	q       reportQueue
	stopped error // set once run returned: puts fail with it
	// storedRev is the newest revision of a report transaction that
	// ended, set before its keys stop being pending (see pending).
	storedRev int64
	// hellos is, per host, the newest stream that began its hello (until
	// it ends): at most one entry per connected host.
	hellos map[string]uint64
	kick   chan struct{}
}

func newReportWriter(s *store.Store, m *metrics) *reportWriter {
	return &reportWriter{s: s, now: time.Now, txns: m.reportTxns, written: m.reportsWritten, coalesced: m.reportsCoalesced, dropped: m.reportsDropped,
		hellos: map[string]uint64{}, q: newReportQueue(), kick: make(chan struct{}, 1)}
}

// put queues a report of host; done is called once, without the writer's
// lock, with nil when it was stored (or a newer report of the same host and
// service that replaced it was, or its host's record was removed meanwhile:
// nothing to store, store.PutReports), else with the error. put does not wait.
func (w *reportWriter) put(host string, r *v1.ServiceReport, done func(error)) {
	w.putFrom(host, 0, r, &reportDone{done})
}

// reportDone is a put callback with an identity: a report replacing a
// queued one with the same callback (a stream's, agentConn.stored) does
// not add it again, so a flood of one stream's reports keeps one callback,
// not one per report.
type reportDone struct{ f func(error) }

// putFrom is put for a report of host's stream seq (hub.arrivals): once a
// newer stream of host began its hello (helloBegins), the report is
// dropped (done(nil), as if replaced): it was sent before that hello, and
// written after the hello's reports it would leave an older status in
// etcd. seq 0: no stream. A dropped report is counted (dropped).
func (w *reportWriter) putFrom(host string, seq uint64, r *v1.ServiceReport, done *reportDone) {
	w.mu.Lock()
	if err := w.stopped; err != nil {
		w.mu.Unlock()
		done.f(err)
		return
	}
	if seq != 0 && w.hellos[host] > seq {
		w.mu.Unlock()
		w.dropped.Inc()
		done.f(nil)
		return
	}
	replaced := w.q.add(host, r, done, w.now())
	w.mu.Unlock()
	if replaced {
		w.coalesced.Inc()
		return // the queued report it replaced is already counted as pending
	}
	w.signal()
}

// helloBegins is told that host's stream seq is about to queue its hello's
// reports: from then on the reports of its older streams are dropped
// (putFrom). The returned func is called when that stream ended.
func (w *reportWriter) helloBegins(host string, seq uint64) (ended func()) {
	w.mu.Lock()
	if w.hellos[host] < seq {
		w.hellos[host] = seq
	}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.hellos[host] == seq {
			delete(w.hellos, host)
		}
		w.mu.Unlock()
	}
}

// pending says whether a report of host and service is queued or in a
// transaction; when none is, every report of theirs this writer stored is
// at or below rev (a mirror that reached rev holds the last of them).
func (w *reportWriter) pending(host, service string) (pending bool, rev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.q.slots[reportKey{host, service}] != nil, w.storedRev
}

func (w *reportWriter) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// maxReportTxns is how many report transactions are in flight at once.
// etcd commits concurrent transactions in one raft batch (one fsync), so
// with a disk that takes tens of milliseconds per fsync the writers keep up
// with thousands of reports a second where one writer queued them.
const maxReportTxns = 8

// run writes batches, maxReportTxns transactions at once, until ctx ends;
// queued reports then fail, and so do later puts.
func (w *reportWriter) run(ctx context.Context) {
	var wg sync.WaitGroup
	for range maxReportTxns {
		wg.Go(func() { w.write(ctx) })
	}
	wg.Wait()
	err := ctx.Err()
	if err == nil {
		err = errors.New("report writer stopped")
	}
	w.mu.Lock()
	w.stopped = err
	left := w.q.drain()
	w.mu.Unlock()
	for _, p := range left {
		p.notify(err)
	}
}

// write is one of run's writers: it takes what has gathered (up to
// the store's Batch) and writes it, until ctx ends.
func (w *reportWriter) write(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		}
		for ctx.Err() == nil {
			w.mu.Lock()
			batch := w.q.take(w.s.Batch(), w.now())
			more := w.q.takeable() > 0
			w.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			if more {
				w.signal() // another writer takes the rest meanwhile
			}
			reps := make([]store.HostReport, len(batch))
			for i, p := range batch {
				reps[i] = store.HostReport{Host: p.key.host, Report: p.r}
			}
			put, err := w.s.PutReports(ctx, reps)
			w.txns.Add(float64(put.Txns))
			w.written.Add(float64(put.Written))
			w.mu.Lock()
			w.storedRev = max(w.storedRev, put.Rev)
			w.q.finish(batch, w.now())
			more = w.q.takeable() > 0
			w.mu.Unlock()
			if more {
				w.signal() // reports queued behind this batch's
			}
			for _, p := range batch {
				p.notify(err)
			}
		}
	}
}

// maxPhaseReportWait is how long a phase-only report may wait in the queue
// while reports the leader acts on go first; older ones are taken before
// them.
const maxPhaseReportWait = time.Second

// reportOutcome says whether the leader acts on a report (rollout.Step: a
// host done, failed or reverted, removed; restore: settled back; the hub's
// stage plan: staged or failed staging), so it is written before the
// phase-only reports of hosts on their way (FETCHING, CHECKING...).
func reportOutcome(r *v1.ServiceReport) bool {
	switch r.GetPhase() {
	case v1.Phase_PHASE_HEALTHY, v1.Phase_PHASE_FAILED, v1.Phase_PHASE_REVERTED, v1.Phase_PHASE_REMOVED, v1.Phase_PHASE_IDLE:
		return true
	}
	return r.GetStagedSha256() != "" || r.GetStageFailedSha256() != ""
}

// reportKey is what a report is about: a report replaces the earlier one of
// the same key.
type reportKey struct{ host, service string }

// pendingReport is a report not yet written, with the callbacks of the
// reports it replaced.
type pendingReport struct {
	key     reportKey
	r       *v1.ServiceReport
	done    []*reportDone // each once
	outcome bool          // reportOutcome(r)
	since   time.Time     // when it became takeable
	elem    *list.Element // in reportQueue.outcomes or phases while takeable
}

func (p *pendingReport) notify(err error) {
	for _, d := range p.done {
		d.f(err)
	}
}

// reportSlot is one key's state in the queue.
type reportSlot struct {
	queued *pendingReport // the newest report not taken yet (nil: none)
	busy   bool           // a report of the key is in a transaction
}

// reportQueue is the reportWriter's queue (not safe for concurrent use: the
// writer's lock guards it). A key has at most one report queued and one
// taken (in a transaction); a queued report of a busy key is not takeable
// until finish.
type reportQueue struct {
	slots    map[reportKey]*reportSlot
	outcomes list.List // takeable reports the leader acts on, oldest first
	phases   list.List // takeable phase-only reports, oldest first
}

func newReportQueue() reportQueue {
	return reportQueue{slots: map[reportKey]*reportSlot{}}
}

// add queues r of host; it reports whether r replaced a queued report.
func (q *reportQueue) add(host string, r *v1.ServiceReport, done *reportDone, now time.Time) bool {
	k := reportKey{host, r.GetService()}
	s := q.slots[k]
	if s == nil {
		s = &reportSlot{}
		q.slots[k] = s
	}
	outcome := reportOutcome(r)
	if p := s.queued; p != nil {
		p.r = r
		if !slices.Contains(p.done, done) {
			p.done = append(p.done, done)
		}
		if p.elem != nil && p.outcome != outcome {
			q.list(p.outcome).Remove(p.elem)
			p.outcome = outcome
			q.push(p, now)
		}
		p.outcome = outcome
		return true
	}
	p := &pendingReport{key: k, r: r, done: []*reportDone{done}, outcome: outcome}
	s.queued = p
	if !s.busy {
		q.push(p, now)
	}
	return false
}

func (q *reportQueue) list(outcome bool) *list.List {
	if outcome {
		return &q.outcomes
	}
	return &q.phases
}

func (q *reportQueue) push(p *pendingReport, now time.Time) {
	p.since = now
	p.elem = q.list(p.outcome).PushBack(p)
}

// takeable is how many queued reports take may return.
func (q *reportQueue) takeable() int { return q.outcomes.Len() + q.phases.Len() }

// take removes up to n takeable reports for a transaction, of at most
// store.MaxTxnBytes (store.ReportBytes; etcd refuses a larger request, and
// validateReport takes reports of about 320 KB) unless one: phase-only
// reports that waited maxPhaseReportWait, then reports the leader acts on,
// then phase-only ones, each oldest first. Their keys are busy until finish.
func (q *reportQueue) take(n int, now time.Time) []*pendingReport {
	var batch []*pendingReport
	size, full := 0, false
	// pop takes l's first report unless the batch is full.
	pop := func(l *list.List) bool {
		p := l.Front().Value.(*pendingReport)
		b := store.ReportBytes(p.key.host, p.r)
		if full = len(batch) >= n || (len(batch) > 0 && size+b > store.MaxTxnBytes); full {
			return false
		}
		l.Remove(p.elem)
		p.elem = nil
		s := q.slots[p.key]
		s.queued, s.busy = nil, true
		batch = append(batch, p)
		size += b
		return true
	}
	for !full && q.phases.Len() > 0 && now.Sub(q.phases.Front().Value.(*pendingReport).since) >= maxPhaseReportWait && pop(&q.phases) {
	}
	for !full && q.outcomes.Len() > 0 && pop(&q.outcomes) {
	}
	for !full && q.phases.Len() > 0 && pop(&q.phases) {
	}
	return batch
}

// finish is told that batch's transaction ended: a report queued behind one
// of them becomes takeable.
func (q *reportQueue) finish(batch []*pendingReport, now time.Time) {
	for _, p := range batch {
		s := q.slots[p.key]
		s.busy = false
		if s.queued == nil {
			delete(q.slots, p.key)
			continue
		}
		q.push(s.queued, now)
	}
}

// drain removes and returns every queued report (the writer stopped).
func (q *reportQueue) drain() []*pendingReport {
	var left []*pendingReport
	for k, s := range q.slots {
		if s.queued != nil {
			left = append(left, s.queued)
		}
		delete(q.slots, k)
	}
	q.outcomes.Init()
	q.phases.Init()
	return left
}
