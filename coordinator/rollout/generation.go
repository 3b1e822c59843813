package rollout

import (
	"fmt"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// MaxGenerationAhead is how far above the generation the leader assigns a
// host may report one of a service and still count as issued by a
// coordinator of the fleet: one the leader's records do not know
// (an etcd restored from a backup, or a coordinator that reached the host
// before its records did) but that the service's counter could have
// reached (2^20 rollouts). The agent refuses assignments below the
// generation it accepted as replays, so:
//   - a host a little above: the next rollout planned over it takes a
//     generation above the highest such report (planAbove); until
//     then it keeps running what it runs and reports the refusal;
//   - a host further above reports a generation no coordinator of the
//     fleet issued: a compromised one made it up (the generation is not
//     signed), up to 2^63-1, to keep the host from every later update.
//     The leader's assignments to it name that generation as the one they
//     replace (Want.Replaces, Assignment.replaces_generation), which the
//     agent takes while it still holds that generation.
const MaxGenerationAhead = 1 << 20

// maxGeneration is the highest generation (2^63-1): none is planned above it.
const maxGeneration = 1<<63 - 1

// madeUp says whether reported, a host's generation of a service, is one no
// coordinator of the fleet issued, given issued, the one the leader
// assigns it.
func madeUp(reported, issued int64) bool {
	return reported-issued > MaxGenerationAhead // both >= 0: no overflow
}

// replacing is w for a host whose report is rep: naming rep's generation
// as the one it replaces when it is above w's and no coordinator of the
// fleet issued it (madeUp). A host a rollout moved (planned: w is at the
// rollout's generation) is taken as made up whenever it is above: the
// rollout was planned above every generation within reach of the counter
// that its hosts reported (planAbove), so one above it now was made up (or
// reported since by a coordinator that was not the leader). A host whose
// service is REMOVED takes any assignment: nothing to replace.
func replacing(w Want, ok bool, rep *v1.ServiceReport, planned bool) (Want, bool) {
	g := rep.GetGeneration()
	removed := rep.GetPhase() == v1.Phase_PHASE_REMOVED // takes any assignment
	if ok && !removed && g > w.Generation && (planned || madeUp(g, w.Generation)) {
		w.Replaces = g
	}
	return w, ok
}

// planAbove raises r's generation (the service's counter + 1) above the
// highest generation its hosts report at or above it that a coordinator of
// the fleet could have issued (not madeUp against the counter): they take
// it then, whatever they accepted before; else they would refuse it as a
// replay and the rollout would fail. It returns the host whose report
// raised it ("" when none did).
func planAbove(r *v1.Rollout, obs func(hostID string) Observation) string {
	counter, by := r.GetGeneration()-1, ""
	if obs == nil {
		return by
	}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			g := obs(h.GetHostId()).Report.GetGeneration()
			if g >= r.GetGeneration() && g < maxGeneration && !madeUp(g, counter) {
				r.Generation, by = g+1, h.GetHostId()
			}
		}
	}
	return by
}

// aboveMessage says why r's generation is above the service's counter.
func aboveMessage(r *v1.Rollout, host string) string {
	return fmt.Sprintf("generation %d, above host %s's reported %d, which the service's records do not know", r.GetGeneration(), host, r.GetGeneration()-1)
}
