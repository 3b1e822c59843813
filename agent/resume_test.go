package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fleetwave/fleetwave/agent/install"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// artifactServer serves one artifact over HTTP and records what it was
// asked and what it sent.
type artifactServer struct {
	art  []byte
	mode func(n int, w http.ResponseWriter, r *http.Request) bool // true: handled

	mu     sync.Mutex
	ranges []string // Range header of each request ("" for none)
	sent   atomic.Int64
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

// Write counts p before writing it: a client that has read the bytes
// sees them counted (counted after, the last write's count could still
// be on its way when the fetch returned).
func (c countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n - len(p)))
	return n, err
}

func (s *artifactServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	n := len(s.ranges)
	s.mu.Unlock()
	cw := countingWriter{ResponseWriter: w, n: &s.sent}
	if s.mode != nil && s.mode(n, cw, r) {
		return
	}
	http.ServeContent(cw, r, "artifact.tar.gz", time.Time{}, bytes.NewReader(s.art))
}

func (s *artifactServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

// breakAfter answers the first request with a full Content-Length and
// only the first n bytes: the connection ends early.
func breakAfter(art []byte, n int) func(int, http.ResponseWriter, *http.Request) bool {
	return func(req int, w http.ResponseWriter, _ *http.Request) bool {
		if req != 1 {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(art)))
		w.WriteHeader(http.StatusOK)
		w.Write(art[:n])
		return true
	}
}

// leavePartial leaves prefix as want's partial download on a's disk (a
// download that broke there).
func leavePartial(t *testing.T, a *agent, want install.Artifact, prefix []byte) {
	t.Helper()
	p, err := a.inst.OpenPartial(want)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Fetch(context.Background(), io.MultiReader(bytes.NewReader(prefix), errReader{})); err == nil {
		t.Fatal("a broken fetch succeeded")
	}
	if n := a.inst.PartialBytes(want.SHA256); n != int64(len(prefix)) {
		t.Fatalf("left %d bytes, want %d", n, len(prefix))
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func urlAssignment(art []byte, addr string) *v1.Assignment {
	asg := assignmentFrom(art)
	asg.Release.Artifact.Url = "http://" + addr + "/artifact.tar.gz"
	return asg
}

func resumedBytes(a *agent) float64 { return testutil.ToFloat64(a.metrics.resumedBytes) }

// TestURLFetchResumesWithRange: a URL download that breaks keeps its bytes;
// the next attempt asks for the rest with a Range request, so the server
// sends the artifact's size in all, and the file verifies.
func TestURLFetchResumesWithRange(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 300<<10)
	cut := len(art) * 2 / 5
	srv := &artifactServer{art: art, mode: breakAfter(art, cut)}
	addr := serve(t, srv)
	a := newPeerAgent(t, pki, "fetcher", false)
	asg := urlAssignment(art, addr)
	want := artifactOf(asg)

	if _, err := a.fetchOnce(context.Background(), asg, want); err == nil {
		t.Fatal("a broken download succeeded")
	}
	if n := a.inst.PartialBytes(want.SHA256); n != int64(cut) {
		t.Fatalf("kept %d bytes, want %d", n, cut)
	}
	f, err := a.fetchOnce(context.Background(), asg, want)
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if got, want := srv.requests(), []string{"", "bytes=" + strconv.Itoa(cut) + "-"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("requests with Range %q, want %q", got, want)
	}
	if n := srv.sent.Load(); n != int64(len(art)) {
		t.Fatalf("the server sent %d bytes, want the artifact's %d", n, len(art))
	}
	if n := resumedBytes(a); n != float64(cut) {
		t.Fatalf("resumed bytes %v, want %d", n, cut)
	}
	if n := a.inst.PartialBytes(want.SHA256); n != 0 {
		t.Fatalf("%d bytes left in partial/ after the download completed", n)
	}
}

// TestURLFetchRangeNotHonoured: a server that ignores the range (200, the
// whole file) is read from byte 0 over the kept bytes; one that answers
// 206 from another offset, or 416, fails the attempt and drops the kept
// bytes, and the next attempt fetches from 0. Each ends verified.
func TestURLFetchRangeNotHonoured(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 100<<10)
	cut := len(art) / 2
	cases := []struct {
		name      string
		mode      func(int, http.ResponseWriter, *http.Request) bool
		attempts  int
		wantError string
	}{
		{"200 ignores the range", func(_ int, w http.ResponseWriter, _ *http.Request) bool {
			w.Write(art)
			return true
		}, 1, ""},
		{"206 from another offset", func(n int, w http.ResponseWriter, _ *http.Request) bool {
			if n != 1 {
				return false
			}
			w.Header().Set("Content-Range", "bytes 0-"+strconv.Itoa(len(art)-1)+"/"+strconv.Itoa(len(art)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(art)
			return true
		}, 2, "not from byte " + strconv.Itoa(cut)},
		{"416", func(n int, w http.ResponseWriter, _ *http.Request) bool {
			if n != 1 {
				return false
			}
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return true
		}, 2, "416"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := &artifactServer{art: art, mode: c.mode}
			a := newPeerAgent(t, pki, "fetcher", false)
			asg := urlAssignment(art, serve(t, srv))
			want := artifactOf(asg)
			leavePartial(t, a, want, art[:cut])
			var f *install.Fetched
			var err error
			for i := range c.attempts {
				f, err = a.fetchOnce(context.Background(), asg, want)
				if i == 0 && c.wantError != "" {
					if err == nil || !strings.Contains(err.Error(), c.wantError) {
						t.Fatalf("first attempt: %v, want an error naming %q", err, c.wantError)
					}
					if n := a.inst.PartialBytes(want.SHA256); n != 0 {
						t.Fatalf("%d kept bytes stay after the source refused the range", n)
					}
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.inst.Discard(f)
			if _, err := a.inst.Verify(f, want); err != nil {
				t.Fatal(err)
			}
			if n := resumedBytes(a); n != 0 {
				t.Fatalf("resumed bytes %v from a source that did not resume", n)
			}
			if rs := srv.requests(); rs[0] != "bytes="+strconv.Itoa(cut)+"-" || rs[len(rs)-1] != "" && c.attempts > 1 {
				t.Fatalf("Range headers %q", rs)
			}
		})
	}
}

// TestResumedBadBytesFetchedAgain: kept bytes that are not the artifact's
// (a crash, or a source that lied earlier) make the resumed file fail
// verification; it is deleted and fetched from byte 0, once, in the same
// fetch: from the URL, and, with peers, without the peer that completed
// it (a suspect, not blamed: its bytes were good).
func TestResumedBadBytesFetchedAgain(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 200<<10)
	cut := len(art) / 4
	garbage := make([]byte, cut)
	if _, err := rand.Read(garbage); err != nil {
		t.Fatal(err)
	}

	t.Run("url", func(t *testing.T) {
		srv := &artifactServer{art: art}
		a := newPeerAgent(t, pki, "fetcher", false)
		asg := urlAssignment(art, serve(t, srv))
		want := artifactOf(asg)
		leavePartial(t, a, want, garbage)
		f, err := a.fetchOnce(context.Background(), asg, want)
		if err != nil {
			t.Fatal(err)
		}
		defer a.inst.Discard(f)
		if !bytes.Equal(readFetched(t, f), art) {
			t.Fatal("fetched bytes differ")
		}
		if got := srv.requests(); len(got) != 2 || got[0] != "bytes="+strconv.Itoa(cut)+"-" || got[1] != "" {
			t.Fatalf("requests with Range %q, want a resume then one from byte 0", got)
		}
	})

	t.Run("url, bad again", func(t *testing.T) {
		// The URL serves bad bytes: one fetch from 0, not more.
		bad := append([]byte(nil), art...)
		bad[len(bad)-1] ^= 0xff
		srv := &artifactServer{art: bad}
		a := newPeerAgent(t, pki, "fetcher", false)
		asg := urlAssignment(art, serve(t, srv))
		want := artifactOf(asg)
		leavePartial(t, a, want, art[:cut])
		f, err := a.fetchOnce(context.Background(), asg, want)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.inst.Verify(f, want); !errors.Is(err, install.ErrDigestMismatch) {
			t.Fatalf("bad bytes verified: %v", err)
		}
		if got := srv.requests(); len(got) != 2 {
			t.Fatalf("%d requests (%q), want 2: the resume and one from byte 0", len(got), got)
		}
	})

	t.Run("peer", func(t *testing.T) {
		good := newPeerAgent(t, pki, "good", true)
		good.holds(t, art)
		a := newPeerAgent(t, pki, "fetcher", false)
		store := &countingStore{art: art}
		useCoordinator(t, a, store)
		asg := assignmentFrom(art, good)
		want := artifactOf(asg)
		leavePartial(t, a, want, garbage)
		f, err := a.fetchOnce(context.Background(), asg, want)
		if err != nil {
			t.Fatal(err)
		}
		defer a.inst.Discard(f)
		if !bytes.Equal(readFetched(t, f), art) {
			t.Fatal("fetched bytes differ")
		}
		if n := testutil.ToFloat64(good.metrics.peerUploaded); n != float64(len(art)-cut) {
			t.Fatalf("the peer sent %v bytes, want the %d after the kept ones", n, len(art)-cut)
		}
		if n := store.sent.Load(); n != int64(len(art)) {
			t.Fatalf("the coordinator sent %d bytes, want the whole %d", n, len(art))
		}
		if a.dropped.has("good") || testutil.ToFloat64(a.metrics.peersRejected) != 0 {
			t.Fatal("the peer whose bytes were good was blamed for the kept bytes")
		}
	})
}

// countingStore is a coordinator's ArtifactService over one artifact that
// counts the bytes it sends and the offsets asked.
type countingStore struct {
	v1.UnimplementedArtifactServiceServer
	art     []byte
	sent    atomic.Int64
	offsets sync.Map // offset -> true
}

func (m *countingStore) Download(req *v1.DownloadRequest, stream v1.ArtifactService_DownloadServer) error {
	m.offsets.Store(req.GetOffset(), true)
	b := m.art[req.GetOffset():]
	m.sent.Add(int64(len(b)))
	return stream.Send(&v1.DownloadResponse{Chunk: b})
}

// TestCoordinatorFetchResumes: kept bytes (an earlier attempt, or an agent
// restart) make the coordinator's Download start at their length; a
// partial download that holds every byte asks no source.
func TestCoordinatorFetchResumes(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 200<<10)
	cut := len(art) / 3
	store := &countingStore{art: art}
	a := newPeerAgent(t, pki, "fetcher", false)
	useCoordinator(t, a, store)
	asg := assignmentFrom(art)
	want := artifactOf(asg)
	leavePartial(t, a, want, art[:cut])
	f, err := a.fetchOnce(context.Background(), asg, want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	a.inst.Discard(f)
	if n := store.sent.Load(); n != int64(len(art)-cut) {
		t.Fatalf("the coordinator sent %d bytes, want the %d after the kept ones", n, len(art)-cut)
	}
	if _, ok := store.offsets.Load(int64(cut)); !ok {
		t.Fatalf("no Download at offset %d", cut)
	}
	if n := resumedBytes(a); n != float64(cut) {
		t.Fatalf("resumed bytes %v, want %d", n, cut)
	}

	// Every byte kept (the connection broke after the last one): no
	// source is asked.
	leavePartial(t, a, want, art)
	sentBefore := store.sent.Load()
	f, err = a.fetchOnce(context.Background(), asg, want)
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if n := store.sent.Load() - sentBefore; n != 0 {
		t.Fatalf("the coordinator sent %d bytes for a complete partial download", n)
	}
}

// TestPartialsPrunedByAssignments: a full assignment set removes the
// partial downloads no release, stage or agent upgrade of it names.
func TestPartialsPrunedByAssignments(t *testing.T) {
	pki := newPeerPKI(t)
	a := newPeerAgent(t, pki, "fetcher", false)
	arts := make([][]byte, 4)
	age := func(old time.Time) {
		t.Helper()
		for i := range arts {
			p := filepath.Join(a.cfg.DataDir, "partial", sum(arts[i]))
			if err := os.Chtimes(p, old, old); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
	}
	for i := range arts {
		arts[i] = bigArtifact(t, 4<<10)
		leavePartial(t, a, artifactOf(assignmentFrom(arts[i])), arts[i][:1024])
	}
	age(time.Now().Add(-install.PartialGrace - time.Minute))
	withStage := assignmentFrom(arts[0])
	withStage.Stage = assignmentFrom(arts[1]).GetRelease()
	up := assignmentFrom(arts[2])
	a.prunePartials([]*v1.Assignment{withStage}, up)
	for i, want := range []int64{1024, 1024, 1024, 0} {
		if n := a.inst.PartialBytes(sum(arts[i])); n != want {
			t.Errorf("artifact %d: %d bytes kept, want %d", i, n, want)
		}
	}
	// Written within install.PartialGrace: kept though no assignment names
	// it (a staging host that lost its admission for a while).
	leavePartial(t, a, artifactOf(assignmentFrom(arts[3])), arts[3][:1024])
	a.prunePartials(nil, nil)
	for i, want := range []int64{0, 0, 0, 1024} {
		if n := a.inst.PartialBytes(sum(arts[i])); n != want {
			t.Errorf("artifact %d with no assignment: %d bytes kept, want %d", i, n, want)
		}
	}
}

// TestResumedPeerBytesBlamed: a peer that sent bad bytes and then failed
// leaves them in the partial download; the URL continues from there, the
// whole fails verification and is fetched again from byte 0. The peer's
// bytes kept are then compared with the good copy: it is blamed (it was
// not, and every fetch it served cost a second download from the URL).
func TestResumedPeerBytesBlamed(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 400<<10)
	corrupt := bytes.Clone(art)
	corrupt[10] ^= 0xff
	liar := servePeerTLS(t, pki, "liar", halfServer{art: corrupt})
	srv := &artifactServer{art: art}
	a := newPeerAgent(t, pki, "fetcher", false)
	a.rep.put(&v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FETCHING})
	asg := urlAssignment(art, serve(t, srv))
	asg.Sources = []*v1.ArtifactSource{{HostId: "liar", Address: liar}}
	want := artifactOf(asg)
	f, err := a.fetchOnce(context.Background(), asg, want)
	if err != nil {
		t.Fatal(err)
	}
	defer a.inst.Discard(f)
	if !bytes.Equal(readFetched(t, f), art) {
		t.Fatal("fetched bytes differ")
	}
	if got := srv.requests(); len(got) != 2 || got[0] != "bytes="+strconv.Itoa(len(art)/2)+"-" || got[1] != "" {
		t.Fatalf("requests with Range %q, want a resume then one from byte 0", got)
	}
	if !a.dropped.has("liar") {
		t.Fatal("the peer whose kept bytes were bad was not blamed")
	}
	if got := a.rep.take(); len(got) != 1 || got[0].GetBadSource() != "liar" {
		t.Fatalf("report: %v, want bad_source liar", got)
	}
}

// TestCompletePartialNeedsNoCoordinator: a partial download that holds
// every byte (the stream broke after the last one) is verified and used
// with no coordinator to connect to: no source is needed, so none is
// waited for (the fetch waited 30 s for a connection and failed).
func TestCompletePartialNeedsNoCoordinator(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 64<<10)
	synctest.Test(t, func(t *testing.T) {
		a := newPeerAgent(t, pki, "fetcher", false) // no coordinator connection
		asg := assignmentFrom(art)
		want := artifactOf(asg)
		leavePartial(t, a, want, art)
		f, err := a.fetchOnce(context.Background(), asg, want)
		if err != nil {
			t.Fatal(err)
		}
		defer a.inst.Discard(f)
		if !bytes.Equal(readFetched(t, f), art) {
			t.Fatal("fetched bytes differ")
		}
	})
}

// TestCompletePartialWrongBytesFetchedAgain: a partial download as long
// as the artifact but with other bytes asks no source, fails verification
// and is fetched again from byte 0, from the URL, the coordinator or a
// peer, which is not blamed.
func TestCompletePartialWrongBytesFetchedAgain(t *testing.T) {
	pki := newPeerPKI(t)
	art := bigArtifact(t, 100<<10)
	garbage := make([]byte, len(art))
	if _, err := rand.Read(garbage); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, a *agent, asg *v1.Assignment) {
		t.Helper()
		want := artifactOf(asg)
		leavePartial(t, a, want, garbage)
		f, err := a.fetchOnce(context.Background(), asg, want)
		if err != nil {
			t.Fatal(err)
		}
		defer a.inst.Discard(f)
		if !bytes.Equal(readFetched(t, f), art) {
			t.Fatal("fetched bytes differ")
		}
		if a.inst.PartialBytes(want.SHA256) != 0 {
			t.Fatal("a partial download stays")
		}
	}
	t.Run("url", func(t *testing.T) {
		srv := &artifactServer{art: art}
		a := newPeerAgent(t, pki, "fetcher", false)
		check(t, a, urlAssignment(art, serve(t, srv)))
		if got := srv.requests(); len(got) != 1 || got[0] != "" {
			t.Fatalf("requests with Range %q, want one from byte 0", got)
		}
	})
	t.Run("coordinator", func(t *testing.T) {
		store := &countingStore{art: art}
		a := newPeerAgent(t, pki, "fetcher", false)
		useCoordinator(t, a, store)
		check(t, a, assignmentFrom(art))
		if n := store.sent.Load(); n != int64(len(art)) {
			t.Fatalf("the coordinator sent %d bytes, want %d", n, len(art))
		}
	})
	t.Run("peer", func(t *testing.T) {
		good := newPeerAgent(t, pki, "good", true)
		good.holds(t, art)
		a := newPeerAgent(t, pki, "fetcher", false)
		check(t, a, assignmentFrom(art, good))
		if a.dropped.has("good") {
			t.Fatal("the peer was blamed for the kept bytes")
		}
	})
}
