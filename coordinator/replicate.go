package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// errForwardedFetch: a peer asked for an artifact this coordinator lacks
// too; it does not ask further (no fetch loops between coordinators).
// mdPeerFetch marks a download one coordinator makes from another.
const mdPeerFetch = "fleetwave-peer-fetch"

var errForwardedFetch = errors.New("artifact missing here too (asked by a peer)")

// flight is one fetch of a digest in progress; others wait for it.
type flight struct {
	done chan struct{}
	err  error
}

// flights are the artifact fetches from peers in progress, by digest.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

// fetchFromPeers copies an artifact from another coordinator into the local
// store (verified: the store names what it wrote by its sha256). One fetch
// per digest runs at a time; concurrent callers share it.
func (c *Coordinator) fetchFromPeers(ctx context.Context, digest string) error {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(mdPeerFetch)) > 0 {
		return errForwardedFetch
	}
	key := digest
	c.flights.mu.Lock()
	if c.flights.m == nil {
		c.flights.m = map[string]*flight{}
	}
	if f, ok := c.flights.m[key]; ok {
		c.flights.mu.Unlock()
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	c.flights.m[key] = f
	c.flights.mu.Unlock()
	// Shared by every waiter: not ended by the first caller going away.
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	f.err = c.fetchOnce(fctx, digest)
	fcancel()
	c.flights.mu.Lock()
	delete(c.flights.m, key)
	c.flights.mu.Unlock()
	close(f.done)
	return f.err
}

func (c *Coordinator) fetchOnce(ctx context.Context, digest string) error {
	var errs []error
	for _, peer := range c.mirror.Coordinators() {
		if peer.GetName() == c.cfg.Name || peer.GetAddress() == "" {
			continue
		}
		err := c.fetchFrom(ctx, peer, digest)
		if err == nil {
			c.log.Info().Str("sha256", digest).Str("peer", peer.GetName()).Msg("artifact copied from a peer coordinator")
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", peer.GetName(), err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return errors.New("no peer coordinator has it")
	}
	return errors.Join(errs...)
}

func (c *Coordinator) fetchFrom(ctx context.Context, peer *v1.CoordinatorInfo, digest string) error {
	cc, err := c.fwd.conn(peer.GetAddress())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, mdPeerFetch, c.cfg.Name)
	stream, err := v1.NewArtifactServiceClient(cc).Download(ctx, &v1.DownloadRequest{Sha256: digest})
	if err != nil {
		return err
	}
	got, _, err := c.arts.Put(&downloadReader{stream: stream})
	if err != nil {
		return err
	}
	if got != digest {
		// Stored under its own digest: harmless, but not what was asked.
		return fmt.Errorf("peer sent sha256 %s", got)
	}
	return nil
}

type downloadReader struct {
	stream grpc.ServerStreamingClient[v1.DownloadResponse]
	buf    []byte
}

func (d *downloadReader) Read(p []byte) (int, error) {
	for len(d.buf) == 0 {
		m, err := d.stream.Recv()
		if err != nil {
			return 0, err // io.EOF at the end
		}
		d.buf = m.GetChunk()
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

var _ io.Reader = (*downloadReader)(nil)

// replicateLoop keeps a copy of every release's artifact (those served by
// the coordinators, not by URL) in this coordinator's store, so any
// coordinator can serve any agent and an artifact survives the coordinator
// it was uploaded to; not those of releases marked pruned (their files go:
// pruneArtifactFiles). Failures are retried with a backoff per digest.
func (c *Coordinator) replicateLoop(ctx context.Context) {
	ch, unsub := c.mirror.Subscribe()
	defer unsub()
	retryAt := map[string]time.Time{}
	fails := map[string]int{}
	have := map[string]bool{}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	var seen uint64
	var deleted int64 // the store's deletions, as of the last scan
	scan := true
	for {
		if !scan {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				// Only releases matter: skip report-only changes.
				if e := c.mirror.DesiredEpoch(); e != seen {
					seen, scan = e, true
				}
				continue
			case <-tick.C:
				scan = len(retryAt) > 0 || c.arts.Removed() != deleted
				continue
			}
		}
		scan = false
		// Files were deleted since the last scan (pruneArtifactFiles): what
		// was held is looked at again (a release restored between the
		// two may want one back).
		if n := c.arts.Removed(); n != deleted {
			deleted = n
			clear(have)
		}
		now := time.Now()
		wanted := map[string]bool{}
		for _, vs := range c.mirror.Services() {
			for _, vr := range c.mirror.Releases(vs.Val.GetSpec().GetName()) {
				art := vr.Val.GetArtifact()
				d := art.GetSha256()
				if art.GetUrl() != "" || d == "" || vr.Val.GetArtifactPrunedAt() != nil {
					continue
				}
				wanted[d] = true
				if have[d] || now.Before(retryAt[d]) {
					continue
				}
				if _, err := c.arts.Stat(d); err == nil || !errors.Is(err, os.ErrNotExist) {
					have[d] = err == nil
					continue
				}
				if err := c.fetchFromPeers(ctx, d); err != nil {
					if ctx.Err() != nil {
						return
					}
					fails[d]++
					wait := min(time.Duration(fails[d])*2*time.Second, time.Minute)
					retryAt[d] = now.Add(wait)
					c.log.Warn().Err(err).Str("sha256", d).Str("service", vr.Val.GetService()).Str("version", vr.Val.GetVersion()).Dur("retry_in", wait).Msg("artifact replication failed")
					continue
				}
				delete(fails, d)
				delete(retryAt, d)
				have[d] = true
			}
		}
		// What no release wants any more is forgotten (the maps stay as
		// large as what releases want; a digest wanted again, restored, is
		// looked at again, as after any deletion, above).
		for d := range have {
			if !wanted[d] {
				delete(have, d)
			}
		}
		for d := range retryAt {
			if !wanted[d] {
				delete(retryAt, d)
				delete(fails, d)
			}
		}
	}
}
