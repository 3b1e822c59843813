package agent

// Revocations (internal/revocation): the coordinators send the agent the
// revocations written since the revision it holds (ConnectResponse.
// revocations); it keeps them in DataDir/revocations.pb and checks against
// them, in the TLS handshake, the certificate of every peer fetching from
// its peer listener and of every coordinator it connects to. A coordinator
// whose certificate is revoked is left for the next in the list. Entries
// are only ever added or widened, and go when what they cover has expired.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// Sides of a refused handshake (the label "side" of
// fleetwave_agent_revoked_refused_total).
const (
	sidePeer        = "peer"        // another agent: a client of the peer listener, or one fetched from
	sideCoordinator = "coordinator" // a coordinator this agent connected to
)

// revocations is the agent's set and what goes with it.
type revocations struct {
	set  *revocation.Set
	file string
	// saveMu serialises saves (the stream's receiver saves; a new stream's
	// receiver may start while the old one's last save runs).
	saveMu  sync.Mutex
	refused *prometheus.CounterVec // side
}

// openRevocations loads the agent's revocations (nil with insecure: there
// are no certificates to check). Every entry expires at the latest with
// the CAs of Config.TLSCA.
func openRevocations(cfg Config, now time.Time) (*revocations, error) {
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
	r := &revocations{
		set:  revocation.NewSet(cfg.MaxRevocations, caEnd),
		file: filepath.Join(cfg.DataDir, revocationsFile),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetwave_agent_revoked_refused_total",
			Help: "TLS handshakes this agent refused because the other end's certificate is revoked: side peer (another agent: a client of its peer listener, or a peer it fetches from), coordinator (a coordinator it connects to).",
		}, []string{"side"}),
	}
	if err := r.set.Load(r.file, now); err != nil {
		return nil, fmt.Errorf("data_dir: %w (remove the file to start without revocations: the coordinators send them again)", err)
	}
	return r, nil
}

// register adds the metrics to reg.
func (r *revocations) register(reg *prometheus.Registry) {
	if r == nil || reg == nil {
		return
	}
	reg.MustRegister(r.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "fleetwave_agent_revocations",
		Help: "Revocations this agent holds (received from the coordinators, kept in DATA_DIR/revocations.pb).",
	}, func() float64 { return float64(r.set.Len()) }))
}

// revision is what the Hello says the agent holds (nil: it keeps none).
func (r *revocations) revision() *int64 {
	if r == nil {
		return nil
	}
	return proto.Int64(r.set.Revision())
}

// checkRevoked refuses a chain a revocation covers on side, counted and
// logged; addr is the coordinator's address (side coordinator; "" for a
// peer). A refused coordinator is logged as an error: the agent fails
// closed, and with every coordinator refused it stays disconnected until
// an operator acts (docs/SECURITY.md). It is logged once per attempt, and
// attempts are spaced by the reconnect backoff (reset only by a
// coordinator that answered): with every coordinator refused, at most one
// line per attempt every 15 to 30 s once the backoff reached its cap.
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
// room), saves the set when it changed, and says whether it did.
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
		return false
	}
	a.saveRevocations()
	a.log.Info().Int("added", added).Int("pruned", pruned).Int("held", r.set.Len()).Int64("revision", in.GetRevision()).Msg("revocations received")
	return added > 0
}

// saveRevocations writes the set to its file. A failure is logged: the
// set is held in memory and enforced, and saved with the next change.
func (a *agent) saveRevocations() {
	r := a.revs
	r.saveMu.Lock()
	err := r.set.Save(r.file)
	r.saveMu.Unlock()
	if err != nil {
		a.log.Error().Err(err).Msg("revocations not saved")
	}
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
		a.revs.set.ForgetRevision()
		a.saveRevocations()
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
