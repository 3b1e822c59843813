package coordinator

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The audit log (etcd, /fleetwave/v1/audit/): every mutating call, and
// every refused one (Unauthenticated, PermissionDenied), reads included.
// It is bounded three ways, so that no caller can fill etcd through it
// (issue 13: a host certificate sending refused calls wrote 8,634 entries
// in 5 s):
//
//   - failed and refused calls are coalesced (failureLog): the first of a
//     kind (caller, method, result) in Config.AuditFailureInterval is
//     written at once, the rest are counted and written as one entry with
//     their count when the interval ends;
//   - the leader keeps the newest Config.AuditMaxEntries entries;
//   - and drops those older than Config.AuditRetention.

// auditSeq orders audit entries written in the same nanosecond.
var auditSeq atomic.Int64

// refusal says whether a call's result is a refusal (authentication or
// authorisation): those are audited for every method.
func refusal(code codes.Code) bool {
	return code == codes.Unauthenticated || code == codes.PermissionDenied
}

// audit records a call. A call forwarded to the leader is recorded by
// both: the coordinator the caller reached, and the leader (naming the
// coordinator it came through). Every field is bounded.
func (c *Coordinator) audit(ctx context.Context, p principal, method, target string, err error) {
	st, _ := status.FromError(err)
	if readOnly(method) && !refusal(st.Code()) {
		return
	}
	from := ""
	if pr, ok := peer.FromContext(ctx); ok {
		from = pr.Addr.String()
	}
	e := &v1.AuditEntry{At: timestamppb.Now(), Actor: clip(p.ident, 256), Role: clip(p.role, 32), Method: clip(method, 128), Target: clip(target, 256),
		Peer: from, Result: st.Code().String(), Message: clip(st.Message(), 512), Coordinator: c.cfg.Name}
	if err != nil && !c.failures.admit(e, time.Now()) {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	c.putAudit(actx, e)
}

func (c *Coordinator) putAudit(ctx context.Context, e *v1.AuditEntry) {
	if werr := c.store.PutAudit(ctx, e, int(auditSeq.Add(1)%(store.MaxAuditSeq+1))); werr != nil {
		c.log.Error().Err(werr).Str("method", e.GetMethod()).Str("actor", e.GetActor()).Msg("audit entry not written")
	}
}

// auditFailuresLoop writes the counts of coalesced failures as their
// intervals end, and what is left when the coordinator stops.
func (c *Coordinator) auditFailuresLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.AuditFailureInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Everything is due; 5 s for all of it.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			for _, e := range c.failures.due(time.Now().Add(c.cfg.AuditFailureInterval)) {
				c.putAudit(fctx, e)
			}
			return
		case now := <-t.C:
			for _, e := range c.failures.due(now) {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				c.putAudit(wctx, e)
				cancel()
			}
		}
	}
}

// maxFailureKinds bounds the kinds (caller, method, result) of failed calls
// tracked at once; failures of further kinds are counted together.
const maxFailureKinds = 10000

// failureLog coalesces audit entries of failed calls per kind.
type failureLog struct {
	interval time.Duration
	max      int
	mu       sync.Mutex
	kinds    map[failureKind]*failureWindow
	// overflow counts failures of kinds beyond max, in its own window.
	overflow *failureWindow
}

type failureKind struct{ actor, method, result string }

type failureWindow struct {
	start time.Time
	// more is how many failures came after the first, not written yet.
	more int
	last *v1.AuditEntry
}

func newFailureLog(interval time.Duration, max int) *failureLog {
	return &failureLog{interval: interval, max: max, kinds: map[failureKind]*failureWindow{}}
}

// admit says whether e, a failed call's entry, is written now: the first
// of its kind in an interval is, the others are counted.
func (f *failureLog) admit(e *v1.AuditEntry, now time.Time) bool {
	method := e.GetMethod()
	if _, ok := methodAccess[method]; !ok {
		method = "(unknown method)" // callers choose the names of those
	}
	k := failureKind{e.GetActor(), method, e.GetResult()}
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.kinds[k]
	switch {
	case w != nil:
		w.more++
		w.last = e
		return false
	case len(f.kinds) >= f.max:
		if f.overflow == nil {
			f.overflow = &failureWindow{start: now}
		}
		f.overflow.more++
		f.overflow.last = e
		return false
	}
	f.kinds[k] = &failureWindow{start: now, last: e}
	return true
}

// due returns the entries that sum up the windows ended by now, and
// forgets those windows.
func (f *failureLog) due(now time.Time) []*v1.AuditEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*v1.AuditEntry
	for k, w := range f.kinds {
		if now.Sub(w.start) < f.interval {
			continue
		}
		delete(f.kinds, k)
		if w.more > 0 {
			out = append(out, f.summary(w, now, fmt.Sprintf("%d more like this", w.more)))
		}
	}
	if w := f.overflow; w != nil && now.Sub(w.start) >= f.interval {
		f.overflow = nil
		e := f.summary(w, now, fmt.Sprintf("%d failed or refused calls by more than %d kinds of caller, method and result at once, not recorded one by one", w.more, f.max))
		e.Actor, e.Role, e.Method, e.Target, e.Result = "(many)", "", "(many)", "", "(many)"
		out = append(out, e)
	}
	return out
}

func (f *failureLog) summary(w *failureWindow, now time.Time, what string) *v1.AuditEntry {
	e := &v1.AuditEntry{At: timestamppb.New(now), Actor: w.last.GetActor(), Role: w.last.GetRole(), Method: w.last.GetMethod(),
		Target: w.last.GetTarget(), Peer: w.last.GetPeer(), Result: w.last.GetResult(), Coordinator: w.last.GetCoordinator()}
	e.Message = clip(fmt.Sprintf("%s between %s and %s (failed and refused calls are recorded once per caller, method and result each %s, then counted); the last: %s",
		what, w.start.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), f.interval, w.last.GetMessage()), 1024)
	return e
}
