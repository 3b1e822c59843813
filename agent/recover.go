package agent

import (
	"sync"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/state"
)

// recover rebuilds every persisted service after a restart: it kills what an
// earlier agent left running and lets lifecycle.Restore put the last
// verified release back and re-check it.
func (a *agent) recover(saved []*state.Service) {
	a.killStale(saved)
	now := time.Now()
	for _, st := range saved {
		log := a.log.With().Str("service", st.Service).Logger()
		snap := lifecycle.Snapshot{
			Service:    st.Service,
			Phase:      st.Phase,
			Generation: st.Generation,
			Reason:     st.Reason,
			Current:    st.Assignment(st.Current),
			LastGood:   st.Assignment(st.LastGood),
			Target:     st.Assignment(st.Target),
			WatchUntil: st.WatchUntil,
			Previous:   st.Assignment(st.Previous),
		}
		m, acts := lifecycle.Restore(snap, now)
		s := &service{name: st.Service, m: m}
		a.services[st.Service] = s
		log.Info().Str("phase", st.Phase.String()).Str("version", st.LastGood).Int64("generation", st.Generation).
			Msg("recovering service")
		a.syncAnalysis(s)
		a.exec(s, acts)
	}
}

// killStale kills what an earlier agent left running, for all services at
// once (each may wait out its stop grace).
func (a *agent) killStale(saved []*state.Service) {
	var wg sync.WaitGroup
	for _, st := range saved {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := a.log.With().Str("service", st.Service).Logger()
			grace := stopGrace(st.Assignment(st.Current))
			if err := a.opts.killStale(a.pidFile(st.Service), grace, log); err != nil {
				log.Error().Err(err).Str("path", a.pidFile(st.Service)).Msg("killing leftover process")
			}
		}()
	}
	wg.Wait()
}
