package agent

import (
	"sync"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
)

// recover rebuilds every persisted service after a restart: it kills what an
// earlier agent left running and lets lifecycle.Restore put the last
// verified release back and re-check it.
func (a *agent) recover(saved []*lifecycle.Snapshot) {
	a.killStale(saved)
	now := time.Now()
	for _, snap := range saved {
		log := a.log.With().Str("service", snap.Service).Logger()
		m, acts := lifecycle.Restore(*snap, nil, now)
		s := &service{name: snap.Service, m: m}
		a.services[snap.Service] = s
		log.Info().Str("phase", snap.Phase.String()).Str("version", lifecycle.Version(snap.LastGood)).Int64("generation", snap.Generation).
			Msg("recovering service")
		a.syncAnalysis(s)
		a.exec(s, acts)
	}
}

// killStale kills what an earlier agent left running, for all services at
// once (each may wait out its stop grace).
func (a *agent) killStale(saved []*lifecycle.Snapshot) {
	var wg sync.WaitGroup
	for _, snap := range saved {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := a.log.With().Str("service", snap.Service).Logger()
			grace := stopGrace(snap.Current)
			if err := a.opts.killStale(a.pidFile(snap.Service), grace, log); err != nil {
				log.Error().Err(err).Str("path", a.pidFile(snap.Service)).Msg("killing leftover process")
			}
		}()
	}
	wg.Wait()
}
