package coordinator

import (
	"context"
	"sync"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// reportWriter batches the agents' report writes: every stream hands its
// report over and waits for the transaction that carries it, and one writer
// puts whatever has gathered (up to store.MaxReportBatch) in one etcd
// transaction. Under load thousands of streams share a few transactions a
// second instead of one put each; a lone report is written at once. A
// stream still learns whether its report was stored (and ends, so its agent
// resends its full status, when it was not).
type reportWriter struct {
	s *store.Store

	mu      sync.Mutex
	pending []*pendingReport
	kick    chan struct{}
}

type pendingReport struct {
	hr   store.HostReport
	done chan error // buffered: receives the result once
}

func newReportWriter(s *store.Store) *reportWriter {
	return &reportWriter{s: s, kick: make(chan struct{}, 1)}
}

// put queues a report and waits until it is stored or ctx ends.
func (w *reportWriter) put(ctx context.Context, host string, r *v1.ServiceReport) error {
	p := &pendingReport{hr: store.HostReport{Host: host, Report: r}, done: make(chan error, 1)}
	w.mu.Lock()
	w.pending = append(w.pending, p)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// maxReportTxns is how many report transactions are in flight at once.
// etcd commits concurrent transactions in one raft batch (one fsync), so
// with a disk that takes tens of milliseconds per fsync the writers keep up
// with thousands of reports a second where one writer queued them. A
// stream has at most one report in flight (it waits for its transaction
// before reading the next message), so one host's reports are never
// reordered.
const maxReportTxns = 8

// run writes batches, maxReportTxns transactions at once, until ctx ends;
// queued reports then fail.
func (w *reportWriter) run(ctx context.Context) {
	var wg sync.WaitGroup
	for range maxReportTxns {
		wg.Go(func() { w.write(ctx) })
	}
	wg.Wait()
	w.mu.Lock()
	for _, p := range w.pending {
		p.done <- ctx.Err()
	}
	w.pending = nil
	w.mu.Unlock()
}

// write is one of run's writers: it takes whatever has gathered (up to
// store.MaxReportBatch) and writes it, until ctx ends.
func (w *reportWriter) write(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		}
		for {
			w.mu.Lock()
			n := min(len(w.pending), store.MaxReportBatch)
			batch := w.pending[:n:n]
			w.pending = w.pending[n:]
			more := len(w.pending) > 0
			w.mu.Unlock()
			if n == 0 {
				break
			}
			if more {
				// Another writer takes the rest meanwhile.
				select {
				case w.kick <- struct{}{}:
				default:
				}
			}
			reps := make([]store.HostReport, n)
			for i, p := range batch {
				reps[i] = p.hr
			}
			err := w.s.PutReports(ctx, reps)
			for _, p := range batch {
				p.done <- err
			}
		}
	}
}
