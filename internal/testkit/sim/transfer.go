package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/time/rate"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The bandwidth model (Config.Fetch).
//
// Every host has a download and an upload token bucket; the coordinator's
// NIC is one bucket shared by every byte it serves. A transfer moves real
// bytes, piece by piece, each piece taken from the sending side's bucket
// (the coordinator's, or the serving host's upload bucket) and then from
// the receiving host's download bucket, so a transfer runs at the rate of
// the slower end, and concurrent transfers share a bucket in the order
// they asked (rate.Limiter's reservations).
//
// With Config.ByteScale S, artifacts are S times smaller than the modeled
// ones and every bucket is S times slower: a transfer takes the modeled
// time while moving 1/S of the bytes. That holds while what does not scale
// (a gRPC stream's setup, a timer's resolution, the scheduler on a loaded
// machine: milliseconds) stays small against a transfer's duration.
//
// A host fetches the artifact of an assignment's release it does not hold:
// first from the assignment's sources, in order (a peer transfer is done
// in process: the serving host must hold the artifact, verified, and have
// one of its PeerMaxUploads slots free, else the asking host takes its next
// source), then from the coordinator's real ArtifactService.Download,
// checking size and sha256 as an agent does. The sim does not run the
// agents' mutual TLS between peers; the coordinator names sources to
// insecure agents as to others (only the real agent refuses to use them
// without TLS).

// piece is the real bytes taken from a bucket at once (and its burst).
const piece = 8 << 10

// fetchRetries bounds the attempts at the coordinator of one fetch; the
// pause between them starts at fetchRetryWait and doubles up to
// fetchRetryMax (about 3 minutes in all: a fetch rides out a coordinator
// that drops its connections for a while, as when it loses its etcd
// session on a loaded machine, rather than failing the install).
const (
	fetchRetries   = 20
	fetchRetryWait = time.Second
	fetchRetryMax  = 10 * time.Second
)

// Source kinds of a fetch.
const (
	sourceCoordinator = "coordinator"
	sourcePeer        = "peer"
)

// errRefused is a peer refusing a download: all its upload slots are taken.
var errRefused = errors.New("peer serving its maximum of uploads")

// bucket is a token bucket of real bytes per second.
type bucket struct{ lim *rate.Limiter }

// newBucket returns a bucket of modeled bytes per second under scale.
func newBucket(modeled, scale int64) *bucket {
	return &bucket{lim: rate.NewLimiter(rate.Limit(float64(modeled)/float64(scale)), piece)}
}

// take waits until n bytes may pass.
func (b *bucket) take(ctx context.Context, n int) error {
	for n > 0 {
		k := min(n, piece)
		if err := b.lim.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// pace passes p through the sender's bucket then the receiver's, piece by
// piece.
func pace(ctx context.Context, from, to *bucket, p int) error {
	for p > 0 {
		k := min(p, piece)
		if err := from.take(ctx, k); err != nil {
			return err
		}
		if err := to.take(ctx, k); err != nil {
			return err
		}
		p -= k
	}
	return nil
}

// fetchResult is the end of a host's fetch of one artifact.
type fetchResult struct {
	sha    string
	source string // kind of the source that delivered it
	err    error
}

// holds reports whether the host holds the artifact sha, verified.
func (h *host) holds(sha string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held[sha]
}

// startFetch fetches art in the background (once per artifact at a time);
// the result arrives on fetchc.
func (h *host) startFetch(art *v1.Artifact, sources []*v1.ArtifactSource) {
	sha := art.GetSha256()
	if h.inflight[sha] {
		return
	}
	h.inflight[sha] = true
	h.f.fetches.Add(1)
	size := art.GetSize()
	srcs := make([]string, 0, len(sources))
	for _, s := range sources {
		srcs = append(srcs, s.GetAddress())
	}
	h.f.wg.Go(func() { // Close waits for it
		start := time.Now()
		kind, err := h.fetch(h.f.ctx, sha, size, srcs)
		if err == nil {
			h.f.recordFetch(time.Since(start))
		}
		select {
		case h.fetchc <- fetchResult{sha: sha, source: kind, err: err}:
		case <-h.f.ctx.Done():
		}
	})
}

// fetch gets the artifact from the first source that serves it.
func (h *host) fetch(ctx context.Context, sha string, size int64, sources []string) (string, error) {
	for _, addr := range sources {
		from := h.f.byPeerAddr[addr]
		if from == nil || from == h {
			continue
		}
		err := from.serve(ctx, h, sha, size)
		if err == nil {
			h.setHeld(sha)
			return sourcePeer, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		h.f.log.Debug().Str("host", h.id).Str("source", from.id).Err(err).Msg("peer source failed, trying the next")
	}
	var err error
	wait := fetchRetryWait
	for i := range fetchRetries {
		if i > 0 {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(wait):
			}
			wait = min(2*wait, fetchRetryMax)
		}
		if err = h.fromCoordinator(ctx, sha, size); err == nil {
			h.setHeld(sha)
			return sourceCoordinator, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
	}
	return "", fmt.Errorf("fetch %s from the coordinator, %d attempts: %w", sha, fetchRetries, err)
}

func (h *host) setHeld(sha string) {
	h.mu.Lock()
	first := !h.held[sha]
	h.held[sha] = true
	h.mu.Unlock()
	if first {
		h.f.addHolder(sha)
	}
}

// serve sends the artifact sha to host to through this host's upload
// bucket and to's download bucket (in process), if this host holds it and
// has an upload slot free.
func (h *host) serve(ctx context.Context, to *host, sha string, size int64) error {
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		h.f.peerRefused.Add(1)
		return fmt.Errorf("host %s: %w", h.id, errRefused)
	}
	h.f.storeMax(&h.f.maxConcurrentUploads, int64(len(h.slots)))
	if !h.holds(sha) {
		return fmt.Errorf("host %s: artifact %s not held here", h.id, sha)
	}
	blob := h.f.blob(sha)
	if blob == nil {
		return fmt.Errorf("host %s: artifact %s has no bytes in the fleet", h.id, sha)
	}
	buf := make([]byte, 0, len(blob))
	for off := 0; off < len(blob); off += piece {
		p := blob[off:min(off+piece, len(blob))]
		if err := pace(ctx, h.up, to.down, len(p)); err != nil {
			return err
		}
		buf = append(buf, p...)
	}
	if err := verify(buf, sha, size); err != nil {
		return fmt.Errorf("from host %s: %w", h.id, err)
	}
	n := int64(len(buf)) * h.f.cfg.ByteScale
	h.f.peerBytes.Add(n)
	h.served.Add(n)
	h.f.storeMax(&h.f.maxUploads, h.uploads.Add(1))
	to.fromPeers.Add(n)
	return nil
}

// fromCoordinator downloads the artifact over the coordinator's real
// ArtifactService, through the coordinator's bucket and this host's.
func (h *host) fromCoordinator(ctx context.Context, sha string, size int64) error {
	cc := h.f.downloadConn(h.idx)
	stream, err := v1.NewArtifactServiceClient(cc).Download(ctx, &v1.DownloadRequest{Sha256: sha})
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	buf := make([]byte, 0, max(size, 0))
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		c := m.GetChunk()
		if int64(len(buf)+len(c)) > size {
			return fmt.Errorf("download: over the artifact's %d bytes", size)
		}
		if err := pace(ctx, h.f.coord, h.down, len(c)); err != nil {
			return err
		}
		buf = append(buf, c...)
	}
	if err := verify(buf, sha, size); err != nil {
		return fmt.Errorf("from the coordinator: %w", err)
	}
	n := int64(len(buf)) * h.f.cfg.ByteScale
	h.f.coordBytes.Add(n)
	h.fromCoord.Add(n)
	h.f.keepBlob(sha, buf)
	return nil
}

// verify checks an artifact's size and sha256, as an agent does.
func verify(b []byte, sha string, size int64) error {
	if int64(len(b)) != size {
		return fmt.Errorf("artifact %s: %d bytes, want %d", sha, len(b), size)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != sha {
		return fmt.Errorf("artifact: sha256 %s, want %s", got, sha)
	}
	return nil
}

// peerAddress is the peer address host id advertises (resolved in
// process through Fleet.byPeerAddr; nothing listens on it).
func peerAddress(id string) string { return id + ".sim:7071" }
