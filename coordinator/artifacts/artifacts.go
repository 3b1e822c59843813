// Package artifacts is the coordinator's content-addressed artifact store:
// files named by their sha256 under a directory, served over the
// ArtifactService gRPC API in chunks. It must not import etcd or the agent.
package artifacts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// ChunkSize is the size of each streamed chunk.
const ChunkSize = 256 << 10

// ErrTooLarge is returned when an upload exceeds the size cap.
var ErrTooLarge = errors.New("artifact too large")

// ErrDiskSpace is returned when an upload would leave the store's
// filesystem with less than its minimum free space.
var ErrDiskSpace = errors.New("not enough free space")

// DefaultMinFreeBytes is the free space uploads leave on the store's
// filesystem when New is given 0: the coordinator's data dir holds the
// embedded etcd too, which stops every write of the control plane on a
// full disk.
const DefaultMinFreeBytes int64 = 2 << 30

// freeCheckEvery is how many bytes an upload writes between two checks of
// the free space (each a statfs): uploads at once each stop at the bound.
const freeCheckEvery = 4 << 20

// statfs is syscall.Statfs; tests replace it.
var statfs = syscall.Statfs

// Store keeps artifacts in dir/sha256/<hex>.
type Store struct {
	dir      string
	maxBytes int64
	minFree  int64
	log      zerolog.Logger
	// fetch, if set, brings a missing artifact into the store (from a peer
	// coordinator); see SetFetcher.
	fetch atomic.Pointer[Fetcher]
	// sent counts the artifact bytes Download has sent (egress).
	sent atomic.Int64
	// pruned, if set, says why a digest this store lacks is not fetched
	// (its releases' artifacts were pruned); see SetPruned.
	pruned atomic.Pointer[PrunedFunc]
	// mu orders Put's rename into sha256/ with RemoveIf's check and
	// removal: a file written again is never removed on what was known of
	// the one before.
	mu sync.Mutex
	// removed counts the files RemoveIf removed.
	removed atomic.Int64
	v1.UnimplementedArtifactServiceServer
}

// New opens (creating) a store under dir; uploads over maxBytes are
// refused, and so is an upload (or a copy from another coordinator) while
// writing it would leave less than minFree bytes free on dir's filesystem
// (0: DefaultMinFreeBytes).
func New(dir string, maxBytes, minFree int64, log zerolog.Logger) (*Store, error) {
	if minFree == 0 {
		minFree = DefaultMinFreeBytes
	}
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("artifact store %s: %w", dir, err)
	}
	// Uploads a crash interrupted are never resumed.
	if err := os.RemoveAll(filepath.Join(dir, "tmp")); err != nil {
		return nil, fmt.Errorf("artifact store %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("artifact store %s: %w", dir, err)
	}
	return &Store{dir: dir, maxBytes: maxBytes, minFree: minFree, log: log}, nil
}

func (s *Store) path(digest string) string { return filepath.Join(s.dir, "sha256", digest) }

// Fetcher brings the artifact with a digest into the store (with Put), or
// fails.
type Fetcher func(ctx context.Context, digest string) error

// SetFetcher sets how Ensure and Download fetch an artifact this store does
// not have (several coordinators each keep a copy of every artifact).
func (s *Store) SetFetcher(f Fetcher) { s.fetch.Store(&f) }

// PrunedFunc says why an artifact is not kept ("" when it is wanted):
// every release naming digest had its artifact pruned.
type PrunedFunc func(digest string) string

// SetPruned sets how Ensure and Download tell an artifact that was pruned
// from one that is missing.
func (s *Store) SetPruned(f PrunedFunc) { s.pruned.Store(&f) }

// prunedNote is why digest was pruned ("" when it was not, or no
// PrunedFunc is set).
func (s *Store) prunedNote(digest string) string {
	if f := s.pruned.Load(); f != nil {
		return (*f)(digest)
	}
	return ""
}

// Ensure returns the size of a stored artifact, fetching it first when it
// is missing and a fetcher is set. An artifact that was pruned is fetched
// too (a peer may hold it uploaded again, to restore its release); when
// that fails the error says it was pruned.
func (s *Store) Ensure(ctx context.Context, digest string) (int64, error) {
	size, err := s.Stat(digest)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return size, err
	}
	f := s.fetch.Load()
	if f == nil {
		return 0, s.withPrunedNote(digest, err)
	}
	if ferr := (*f)(ctx, digest); ferr != nil {
		return 0, fmt.Errorf("%w; fetch from peers: %v", s.withPrunedNote(digest, err), ferr)
	}
	return s.Stat(digest)
}

// withPrunedNote adds to err, which says digest is missing, why when it
// was pruned (looked up only then: it reads every release).
func (s *Store) withPrunedNote(digest string, err error) error {
	if note := s.prunedNote(digest); note != "" {
		return fmt.Errorf("%w (%s)", err, note)
	}
	return err
}

// File is one artifact file of the store.
type File struct {
	SHA256  string
	Size    int64
	ModTime time.Time
}

// Files lists the artifact files the store holds (files whose names are
// not sha256 digests, if any, are left out; uploads in progress live
// elsewhere, in tmp/).
func (s *Store) Files() ([]File, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "sha256"))
	if err != nil {
		return nil, fmt.Errorf("artifact store %s: %w", s.dir, err)
	}
	out := make([]File, 0, len(ents))
	for _, e := range ents {
		if !e.Type().IsRegular() || spec.CheckSHA256("sha256", e.Name()) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, File{SHA256: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return out, nil
}

// RemoveIf removes the artifact file of digest when remove, given its
// modification time read under the lock Put renames under, says so: a
// file written again meanwhile is judged by its new time. It reports
// whether it removed the file.
func (s *Store) RemoveIf(digest string, remove func(modTime time.Time) bool) (bool, error) {
	if err := spec.CheckSHA256("sha256", digest); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.path(digest))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("artifact %s: %w", digest, err)
	}
	if !remove(fi.ModTime()) {
		return false, nil
	}
	if err := os.Remove(s.path(digest)); err != nil {
		return false, fmt.Errorf("artifact %s: %w", digest, err)
	}
	s.removed.Add(1)
	return true, syncDir(filepath.Join(s.dir, "sha256"))
}

// Touch sets the modification time of a stored artifact to now (a
// release create that names it again): RemoveIf's callers judge a file
// written after a release's artifact was pruned as new.
func (s *Store) Touch(digest string) error {
	if err := spec.CheckSHA256("sha256", digest); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if err := os.Chtimes(s.path(digest), now, now); err != nil {
		return fmt.Errorf("artifact %s: %w", digest, err)
	}
	return nil
}

// Removed is how many artifact files RemoveIf removed since the store was
// opened.
func (s *Store) Removed() int64 { return s.removed.Load() }

// Stat returns the size of a stored artifact.
func (s *Store) Stat(digest string) (int64, error) {
	if err := spec.CheckSHA256("sha256", digest); err != nil {
		return 0, err
	}
	fi, err := os.Stat(s.path(digest))
	if err != nil {
		return 0, fmt.Errorf("artifact %s: %w", digest, err)
	}
	return fi.Size(), nil
}

// Put stores what r yields and returns its digest and size.
func (s *Store) Put(r io.Reader) (string, int64, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "upload-*")
	if err != nil {
		return "", 0, fmt.Errorf("artifact upload: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(&freeGuard{s: s, w: f}, h), io.LimitReader(r, s.maxBytes+1))
	if err != nil {
		return "", 0, fmt.Errorf("artifact upload: %w", err)
	}
	if n > s.maxBytes {
		return "", 0, fmt.Errorf("artifact upload: %w: over %d bytes", ErrTooLarge, s.maxBytes)
	}
	if err := f.Sync(); err != nil {
		return "", 0, fmt.Errorf("artifact upload: %w", err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if err := s.place(f.Name(), digest); err != nil {
		return "", 0, err
	}
	return digest, n, nil
}

// place renames a written file to the artifact digest, durably (before a
// release can name it), under the lock RemoveIf checks and removes under.
func (s *Store) place(tmp, digest string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Rename(tmp, s.path(digest)); err != nil {
		return fmt.Errorf("artifact %s: %w", digest, err)
	}
	if err := syncDir(filepath.Join(s.dir, "sha256")); err != nil {
		return fmt.Errorf("artifact %s: %w", digest, err)
	}
	return nil
}

// freeGuard writes to w while the store's filesystem keeps its minimum
// free space, checked before the first write and every freeCheckEvery
// bytes: each upload under way stops at the bound, whatever the others do.
type freeGuard struct {
	s       *Store
	w       io.Writer
	n, next int64
}

func (g *freeGuard) Write(p []byte) (int, error) {
	if g.n >= g.next {
		var st syscall.Statfs_t
		if err := statfs(g.s.dir, &st); err != nil {
			return 0, fmt.Errorf("free space of %s: %w", g.s.dir, err)
		}
		// What it may still write before the next check must fit too.
		if free := int64(st.Bavail) * st.Bsize; free-freeCheckEvery < g.s.minFree {
			return 0, fmt.Errorf("%w on the filesystem of %s: %d bytes free, the coordinator keeps %d free (--artifact-min-free-bytes; its etcd shares the disk); refused after %d bytes",
				ErrDiskSpace, g.s.dir, free, g.s.minFree, g.n)
		}
		g.next = g.n + freeCheckEvery
	}
	n, err := g.w.Write(p)
	g.n += int64(n)
	return n, err
}

type uploadReader struct {
	stream v1.ArtifactService_UploadServer
	buf    []byte
}

func (u *uploadReader) Read(p []byte) (int, error) {
	for len(u.buf) == 0 {
		m, err := u.stream.Recv()
		if err != nil {
			return 0, err
		}
		u.buf = m.GetChunk()
	}
	n := copy(p, u.buf)
	u.buf = u.buf[n:]
	return n, nil
}

// Upload implements ArtifactService.Upload.
func (s *Store) Upload(stream v1.ArtifactService_UploadServer) error {
	digest, n, err := s.Put(&uploadReader{stream: stream})
	if errors.Is(err, ErrTooLarge) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if errors.Is(err, ErrDiskSpace) {
		s.log.Error().Err(err).Msg("artifact upload refused: the coordinator's disk is nearly full")
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	s.log.Info().Str("sha256", digest).Int64("size", n).Msg("artifact stored")
	return stream.SendAndClose(&v1.UploadResponse{Sha256: digest, Size: n})
}

// Download implements ArtifactService.Download.
func (s *Store) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	if err := spec.CheckSHA256("sha256", req.GetSha256()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if _, err := s.Stat(req.GetSha256()); errors.Is(err, os.ErrNotExist) {
		// Pruned: not fetched from peers (who pruned it too).
		if note := s.prunedNote(req.GetSha256()); note != "" {
			return status.Errorf(codes.NotFound, "artifact %s not found: %s", req.GetSha256(), note)
		}
	}
	if _, err := s.Ensure(stream.Context(), req.GetSha256()); err != nil && errors.Is(err, os.ErrNotExist) {
		return status.Errorf(codes.NotFound, "artifact %s not found", req.GetSha256())
	}
	f, err := os.Open(s.path(req.GetSha256()))
	if errors.Is(err, os.ErrNotExist) {
		return status.Errorf(codes.NotFound, "artifact %s not found", req.GetSha256())
	}
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	defer f.Close()
	if req.GetOffset() < 0 {
		return status.Errorf(codes.InvalidArgument, "offset: %d is negative", req.GetOffset())
	}
	if _, err := f.Seek(req.GetOffset(), io.SeekStart); err != nil {
		return status.Errorf(codes.InvalidArgument, "offset %d: %v", req.GetOffset(), err)
	}
	buf := make([]byte, ChunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if serr := stream.Send(&v1.DownloadResponse{Chunk: buf[:n]}); serr != nil {
				return serr
			}
			s.sent.Add(int64(n))
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return status.Errorf(codes.Internal, "read artifact %s: %v", req.GetSha256(), err)
		}
	}
}

// BytesSent is how many artifact bytes Download has sent since the store
// was opened (to agents and to other coordinators).
func (s *Store) BytesSent() int64 { return s.sent.Load() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
