package agent

// Revocations (internal/revocation): the coordinators send the agent the
// revocations written since the revision it holds (ConnectResponse.
// revocations); it keeps them in DataDir/revocations.pb and checks against
// them, in the TLS handshake, the certificate of every peer fetching from
// its peer listener and of every coordinator it connects to. A coordinator
// whose certificate is revoked is left for the next in the list. Entries
// are only ever added or widened, and go when what they cover has expired.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/internal/revocation"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// MaxMaxRevocations bounds Config.MaxRevocations.
const MaxMaxRevocations = 100000

// revocationsFile is where the agent keeps its revocations, in DataDir.
const revocationsFile = "revocations.pb"

// Limits of Config.RevocationsSaveInterval: the file is written at most
// once per interval (and at a clean shutdown), so a flood of revocation
// messages costs one write of the set per interval, not one per message.
const (
	DefaultRevocationsSaveInterval = time.Second
	MinRevocationsSaveInterval     = 10 * time.Millisecond
	MaxRevocationsSaveInterval     = time.Hour
)

// Results of a save (the label "result" of
// fleetwave_agent_revocation_saves_total).
const (
	saveSaved  = "saved"
	saveFailed = "failed"
)

// Sides of a refused handshake (the label "side" of
// fleetwave_agent_revoked_refused_total).
const (
	sidePeer        = "peer"        // another agent: a client of the peer listener, or one fetched from
	sideCoordinator = "coordinator" // a coordinator this agent connected to
)

// revocations is the agent's set and what goes with it.
//
// The set in memory is what the agent enforces, from the moment a message
// is merged. The file follows at most once per interval (the saver,
// saveRevocationsLoop; and at a clean shutdown, flushRevocations): a crash
// loses at most the revocations of the last interval, and the Hello says
// the revision of the file (saved), not of the set, so after a crash and
// before it alike the coordinator sends again whatever is not in the file.
type revocations struct {
	set      *revocation.Set
	file     string
	interval time.Duration
	// dirty (capacity 1) holds a token while the set has changes the file
	// does not.
	dirty chan struct{}
	// saveMu serialises saves, and a save with forgetting the revision.
	saveMu sync.Mutex
	// saved is the revision of the file (loaded, or written last): the
	// Hello's. Written under saveMu.
	saved   atomic.Int64
	failing bool                   // under saveMu: the last save failed (logged once per streak)
	saves   *prometheus.CounterVec // result
	refused *prometheus.CounterVec // side
	// peerLog rate-limits the log lines of refused peers (every refusal
	// is counted): a revoked host calling in a loop wrote one line per
	// call, thousands a second (an attack review).
	peerLog *rate.Limiter
}

// Refused peers are logged at most peerRefusedLogRate a second, in bursts
// of peerRefusedLogBurst.
const (
	peerRefusedLogRate  = 5
	peerRefusedLogBurst = 20
)

// openRevocations loads the agent's revocations (nil with insecure: there
// are no certificates to check). Every entry expires at the latest with
// the CAs of Config.TLSCA.
//
// A file holding more than Config.MaxRevocations (saved before the flag
// was lowered) is loaded whole, up to MaxMaxRevocations: the agent starts
// and enforces every revocation it saved (it never drops one: it fails
// closed), refuses new ones until pruning brings the set under the
// maximum, and says so in a warning naming the flag, its value, the file,
// the count and what to do. An agent that would not start is an outage of
// its host; the limit is only there to bound memory, and the file bounds
// it still (MaxMaxRevocations).
func openRevocations(cfg Config, now time.Time, log zerolog.Logger) (*revocations, error) {
	if cfg.Insecure {
		return nil, nil
	}
	cas, err := tlsutil.ReadCerts(cfg.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("tls_ca: %w", err)
	}
	var caEnd time.Time
	for _, c := range cas {
		if c.NotAfter.After(caEnd) {
			caEnd = c.NotAfter
		}
	}
	interval := cfg.RevocationsSaveInterval
	if interval == 0 {
		interval = DefaultRevocationsSaveInterval
	}
	r := &revocations{
		set:      revocation.NewSet(cfg.MaxRevocations, caEnd),
		file:     filepath.Join(cfg.DataDir, revocationsFile),
		interval: interval,
		dirty:    make(chan struct{}, 1),
		peerLog:  rate.NewLimiter(peerRefusedLogRate, peerRefusedLogBurst),
		saves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetwave_agent_revocation_saves_total",
			Help: "Writes of DATA_DIR/revocations.pb: result saved or failed (retried after --revocations-save-interval). At most one per interval, whatever the revocation messages received, and one at a clean shutdown.",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetwave_agent_revoked_refused_total",
			Help: "TLS handshakes this agent refused because the other end's certificate is revoked: side peer (another agent: a client of its peer listener, or a peer it fetches from), coordinator (a coordinator it connects to).",
		}, []string{"side"}),
	}
	if err := r.set.Load(r.file, now, MaxMaxRevocations); err != nil {
		return nil, fmt.Errorf("data_dir: %w (remove the file to start without revocations: the coordinators send them again)", err)
	}
	if n := r.set.Len(); n > r.set.Max() {
		log.Warn().Str("path", r.file).Int("held", n).Int("max_revocations", r.set.Max()).
			Msgf("revocations file holds %d revocations, over --max-revocations %d: all %d are enforced, new ones are refused until expired ones are pruned below %d; raise --max-revocations to at least %d to take new ones now",
				n, r.set.Max(), n, r.set.Max(), n)
	}
	r.saved.Store(r.set.Revision())
	return r, nil
}

// register adds the metrics to reg.
func (r *revocations) register(reg *prometheus.Registry) {
	if r == nil || reg == nil {
		return
	}
	reg.MustRegister(r.refused, r.saves, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "fleetwave_agent_revocations",
		Help: "Revocations this agent holds (received from the coordinators, kept in DATA_DIR/revocations.pb).",
	}, func() float64 { return float64(r.set.Len()) }))
}

// revision is what the Hello says the agent holds (nil: it keeps none):
// the revision of the file, so what is not saved yet comes again (it is
// held already: merging it again changes nothing).
func (r *revocations) revision() *int64 {
	if r == nil {
		return nil
	}
	return proto.Int64(r.saved.Load())
}

// resume is called as a stream starts, with its Hello: the set takes
// revisions again after a merge on the last stream refused new entries at
// the maximum (revocation.Set.Resume). The Hello says a revision from
// before them, so this stream sends them again.
func (r *revocations) resume() {
	if r != nil {
		r.set.Resume()
	}
}

// checkRevoked refuses a chain a revocation covers on side, counted and
// logged; addr is the coordinator's address (side coordinator; "" for a
// peer). A refused coordinator is logged as an error: the agent fails
// closed, and with every coordinator refused it stays disconnected until
// an operator acts (docs/SECURITY.md). It is logged once per attempt, and
// attempts are spaced by the reconnect backoff (reset only by a
// coordinator that answered): with every coordinator refused, at most one
// line per attempt every 15 to 30 s once the backoff reached its cap. A
// refused peer is logged at most peerRefusedLogRate lines a second.
func (a *agent) checkRevoked(side, addr string, chain []*x509.Certificate) error {
	r := a.revs
	if r == nil {
		return nil
	}
	ref := r.set.Check(chain)
	if ref == nil {
		return nil
	}
	r.refused.WithLabelValues(side).Inc()
	if side == sidePeer && !r.peerLog.Allow() {
		return fmt.Errorf("%s certificate revoked: %w", side, ref)
	}
	ev := a.log.Warn()
	if side == sideCoordinator {
		ev = a.log.Error()
		if addr != "" { // "" while joining: the join's error names it
			ev = ev.Str("coordinator", addr)
		}
	}
	ev.Str("side", side).Str("certificate", ref.Subject).Str("serial", ref.Serial).Str("reason", ref.Error()).
		Msg("TLS handshake refused: revoked certificate")
	return fmt.Errorf("%s certificate revoked: %w", side, ref)
}

// take merges what a coordinator sent (prune first: expired entries make
// room), enforced from now on, has the saver save the set when it changed,
// and says whether it did.
func (a *agent) takeRevocations(in *v1.RevocationSet, now time.Time) bool {
	r := a.revs
	if r == nil || in == nil {
		return false
	}
	pruned := r.set.Prune(now)
	added, err := r.set.Merge(in, now)
	if err != nil {
		a.log.Warn().Err(err).Int("merged", added).Msg("revocations from the coordinator partly refused")
	}
	if added == 0 && pruned == 0 {
		if r.set.Revision() != r.saved.Load() {
			// Nothing new, but a later revision: saved too, else every
			// connection has the same delta sent again.
			r.markDirty()
		}
		return false
	}
	r.markDirty()
	a.log.Info().Int("added", added).Int("pruned", pruned).Int("held", r.set.Len()).Int64("revision", in.GetRevision()).Msg("revocations received")
	return added > 0
}

// markDirty tells the saver the set changed.
func (r *revocations) markDirty() {
	select {
	case r.dirty <- struct{}{}:
	default: // already told
	}
}

// saveRevocationsLoop is the saver: it saves the set when it changed, at
// most once per interval, until ctx ends (flushRevocations then saves
// what is left).
func (a *agent) saveRevocationsLoop(ctx context.Context) {
	r := a.revs
	if r == nil {
		return
	}
	t := time.NewTimer(r.interval)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
		}
		a.saveRevocations()
		t.Reset(r.interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// flushRevocations saves the set if it has unsaved changes: at a clean
// shutdown, once the saver and the streams have ended.
func (a *agent) flushRevocations() {
	if a.revs == nil {
		return
	}
	select {
	case <-a.revs.dirty:
		a.saveRevocations()
	default:
	}
}

// saveRevocations writes the set to its file and takes its revision for
// the Hello. A failure is logged (once until a save succeeds) and retried
// by the saver after the interval: the set is held in memory and enforced
// meanwhile.
func (a *agent) saveRevocations() {
	r := a.revs
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	rev, err := r.set.Save(r.file)
	if err != nil {
		r.saves.WithLabelValues(saveFailed).Inc()
		r.markDirty()
		ev := a.log.Debug()
		if !r.failing {
			ev = a.log.Error()
		}
		ev.Err(err).Dur("retry_in", r.interval).Msg("revocations not saved (enforced from memory; the Hello says the revision last saved)")
		r.failing = true
		return
	}
	r.saved.Store(rev)
	r.saves.WithLabelValues(saveSaved).Inc()
	if r.failing {
		a.log.Info().Int64("revision", rev).Msg("revocations saved again")
		r.failing = false
	}
}

// forgetRevision makes the Hello say revision 0, so the next coordinator
// sends every revocation, and saves it at once (not at the saver's pace:
// after a crash, too, the next coordinator must send them all).
func (a *agent) forgetRevision() {
	r := a.revs
	r.saveMu.Lock()
	r.set.ForgetRevision()
	r.saved.Store(0)
	r.saveMu.Unlock()
	a.saveRevocations()
}

// errCoordinatorRevoked ends a stream to a coordinator whose certificate a
// revocation received on it covers.
var errCoordinatorRevoked = errors.New("the coordinator's certificate is revoked")

// checkCoordinatorRevoked checks the certificate of the coordinator of an
// open stream (from its context) after new revocations: an error ends the
// stream, the agent forgets its revision (the coordinator may have
// withheld revocations: the next one sends all) and connects to the next.
func (a *agent) checkCoordinatorRevoked(addr string, p *peer.Peer) error {
	if a.revs == nil || p == nil {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	chain := info.State.PeerCertificates
	if len(info.State.VerifiedChains) > 0 {
		chain = info.State.VerifiedChains[0]
	}
	if err := a.checkRevoked(sideCoordinator, addr, chain); err != nil {
		a.forgetRevision()
		return fmt.Errorf("%w: %w", errCoordinatorRevoked, err)
	}
	return nil
}

// refuseRevoked makes cfg's handshakes refuse a certificate the agent's
// revocations cover (side names the other end).
func (a *agent) refuseRevoked(cfg *tls.Config, side string) {
	if a.revs == nil {
		return
	}
	tlsutil.CheckRevocation(cfg, func(chain []*x509.Certificate) error { return a.checkRevoked(side, "", chain) })
}
