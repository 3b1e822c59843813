package coordinator

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/fleetwave/fleetwave/coordinator/store"
)

// run campaigns for leadership on the coordinator's etcd session and, once
// elected, runs the rollout loop (lead) under the election key's fence; it
// campaigns again whenever leadership or the session is lost.
func (l *leader) run(ctx context.Context) {
	log := l.c.log
	for ctx.Err() == nil {
		sess := l.c.session()
		select {
		case <-sess.Done():
			// Lost; wait for the session loop to replace it.
			select {
			case <-ctx.Done():
			case <-l.c.sessionChanged():
			}
			continue
		default:
		}
		e := concurrency.NewElection(sess, store.ElectionPrefix)
		// A campaign on a session that is lost meanwhile must not return as
		// won: it ends with the session.
		cctx, ccancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
				ccancel()
			case <-cctx.Done():
			}
		}()
		err := e.Campaign(cctx, l.c.cfg.Name)
		ccancel()
		if err == nil {
			select {
			case <-sess.Done():
				err = errors.New("etcd session lost while campaigning")
			default:
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("campaign failed; retrying")
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		fence := &store.Fence{Key: e.Key(), Rev: e.Rev()}
		log.Info().Str("key", fence.Key).Int64("rev", fence.Rev).Msg("became rollout leader")
		err = l.lead(ctx, sess, fence)
		log.Warn().Err(err).Msg("stopped leading")
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = e.Resign(rctx)
		cancel()
	}
}
