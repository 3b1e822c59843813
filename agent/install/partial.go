package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// Partial downloads (resume).
//
// A download is written to partial/<sha256>, named by the sha256 the
// assignment expects (what the bytes should become, never what they are),
// and left there when it breaks: the next attempt for the same sha256, in
// this process or after a restart, continues from the file's length with a
// range request, from whatever source it reads next. The bytes kept are
// never trusted: the whole file's sha256 and size are still compared with
// the assignment before use (Verify), and bytes on disk may be anything a
// source sent or a crash left.
//
// Bounded: at most MaxPartials files (opening one more removes the least
// recently written that no fetch holds); a file longer than the declared
// size is emptied when opened; a file is moved out when its download
// completes, removed by PrunePartials when no assignment or stage names
// its sha256 any more, and at start (New) when not written for
// PartialMaxAge. One fetch at a time holds a sha256's file; another fetch
// of it meanwhile (two services with one artifact) writes a temp file of
// its own from byte 0, as every fetch did before.

const (
	// MaxPartials bounds the partial downloads kept on disk.
	MaxPartials = 4
	// PartialMaxAge: a partial download not written for this long is
	// removed when the agent starts.
	PartialMaxAge = 24 * time.Hour
	// PartialGrace: a partial download written this recently stays when an
	// assignment set names its sha256 no longer (PrunePartials). A staging
	// host whose stream flapped may get a set without its stage until the
	// coordinator admits it again; its bytes wait for that.
	PartialGrace = 15 * time.Minute
)

const partialDirName = "partial"

func (in *Installer) partialDir() string { return filepath.Join(in.dataDir, partialDirName) }

// Partial is one download in progress: a kept partial/<sha256> (resumable)
// or, when that cannot be had, a temp file from byte 0. Not safe for
// concurrent use.
type Partial struct {
	in      *Installer
	want    Artifact
	f       *os.File
	h       hash.Hash
	off     int64
	resumed int64 // bytes on disk when opened
	kept    bool  // partial/<sha256>, held in in.busy
	done    bool
}

// OpenPartial opens the download of want: its kept partial file, created
// when there is none, with the bytes already there hashed (read once from
// disk), or a temp file when another fetch holds that file or every slot
// is held. Close it when done.
func (in *Installer) OpenPartial(want Artifact) (*Partial, error) {
	if err := in.checkArtifact(want); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	if !in.holdPartial(want.SHA256) {
		return in.tempPartial(want)
	}
	p := &Partial{in: in, want: want, h: sha256.New(), kept: true}
	path := filepath.Join(in.partialDir(), want.SHA256)
	// 0600, as a temp download (os.CreateTemp): the file becomes the
	// fetched artifact and, for peers, artifacts/<sha256> (a hard link);
	// an archive may hold files its entries mark private.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		in.releasePartial(want.SHA256)
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	p.f = f
	fi, err := f.Stat()
	if err == nil && fi.Size() > want.Size {
		in.log.Info().Str("sha256", want.SHA256).Int64("bytes", fi.Size()).Int64("size", want.Size).
			Msg("partial download longer than the declared size: discarded")
		err = f.Truncate(0)
	}
	if err == nil {
		p.off, err = io.Copy(p.h, f)
	}
	if err != nil {
		os.Remove(path) // while held: another fetch of sha cannot have made it anew
		p.Close()
		return nil, fmt.Errorf("fetch %s: partial download: %w", want.SHA256, err)
	}
	p.resumed = p.off
	return p, nil
}

// tempPartial is a download into a temp file from byte 0, removed at
// Close unless complete.
func (in *Installer) tempPartial(want Artifact) (*Partial, error) {
	f, err := os.CreateTemp(in.tmpDir(), "fetch-*")
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", want.SHA256, err)
	}
	return &Partial{in: in, want: want, h: sha256.New(), f: f}, nil
}

// holdPartial marks sha's partial file held, making room for it (at most
// MaxPartials files) by removing the least recently written files no fetch
// holds; false when it is held already or no room can be made.
func (in *Installer) holdPartial(sha string) bool {
	in.partialMu.Lock()
	defer in.partialMu.Unlock()
	if in.busy[sha] {
		return false
	}
	if err := os.MkdirAll(in.partialDir(), 0o755); err != nil {
		in.log.Warn().Err(err).Msg("partial downloads: cannot create their directory")
		return false
	}
	files, err := in.partials()
	if err != nil {
		in.log.Warn().Err(err).Msg("partial downloads: cannot list them")
		return false
	}
	others, onDisk := 0, map[string]bool{}
	for _, pf := range files {
		onDisk[pf.sha] = true
		if pf.sha != sha {
			others++
		}
	}
	for b := range in.busy {
		if !onDisk[b] {
			others++ // held, its file not created yet (OpenPartial)
		}
	}
	for _, pf := range files { // oldest first
		if others < MaxPartials {
			break
		}
		if pf.sha == sha || in.busy[pf.sha] {
			continue
		}
		in.log.Info().Str("sha256", pf.sha).Int64("bytes", pf.size).Int("max", MaxPartials).
			Msg("partial download removed to keep at most the maximum")
		os.Remove(filepath.Join(in.partialDir(), pf.sha))
		others--
	}
	if others >= MaxPartials {
		return false
	}
	if in.busy == nil {
		in.busy = map[string]bool{}
	}
	in.busy[sha] = true
	return true
}

func (in *Installer) releasePartial(sha string) {
	in.partialMu.Lock()
	defer in.partialMu.Unlock()
	delete(in.busy, sha)
}

// partialFile is one file under partial/.
type partialFile struct {
	sha     string // its name; not a sha256 for a stray file
	size    int64
	written time.Time
}

// partials lists partial/, least recently written first.
func (in *Installer) partials() ([]partialFile, error) {
	ents, err := os.ReadDir(in.partialDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", in.partialDir(), err)
	}
	var out []partialFile
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, partialFile{sha: e.Name(), size: fi.Size(), written: fi.ModTime()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].written.Before(out[j].written) })
	return out, nil
}

// cleanPartials removes, at start, the partial files not written since
// before now-PartialMaxAge and anything there not named by a sha256.
func (in *Installer) cleanPartials(now time.Time) error {
	files, err := in.partials()
	if err != nil {
		return err
	}
	for _, pf := range files {
		stray := spec.CheckSHA256("sha256", pf.sha) != nil
		if !stray && !pf.written.Before(now.Add(-PartialMaxAge)) {
			continue
		}
		in.log.Info().Str("sha256", pf.sha).Int64("bytes", pf.size).Time("written", pf.written).Bool("stray", stray).
			Msg("removing a stale partial download")
		if err := os.RemoveAll(filepath.Join(in.partialDir(), pf.sha)); err != nil {
			return fmt.Errorf("remove stale partial download %s: %w", pf.sha, err)
		}
	}
	return nil
}

// PrunePartials removes the partial downloads whose sha256 keep does not
// name, no fetch holds, and that were not written within PartialGrace of
// now.
func (in *Installer) PrunePartials(keep map[string]bool, now time.Time) {
	in.partialMu.Lock()
	defer in.partialMu.Unlock()
	files, err := in.partials()
	if err != nil {
		in.log.Warn().Err(err).Msg("partial downloads: cannot list them")
		return
	}
	for _, pf := range files {
		// Written within the grace; a time further ahead of the clock is
		// not (the clock was stepped back since: it would stay for as long).
		recent := pf.written.After(now.Add(-PartialGrace)) && !pf.written.After(now.Add(PartialGrace))
		if keep[pf.sha] || in.busy[pf.sha] || recent {
			continue
		}
		in.log.Info().Str("sha256", pf.sha).Int64("bytes", pf.size).Msg("partial download no assignment names any more: removed")
		os.Remove(filepath.Join(in.partialDir(), pf.sha))
	}
}

// PartialBytes is the length of sha's kept partial download (0 when there
// is none).
func (in *Installer) PartialBytes(sha string) int64 {
	if spec.CheckSHA256("sha256", sha) != nil {
		return 0
	}
	fi, err := os.Stat(filepath.Join(in.partialDir(), sha))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Offset is the number of bytes written so far: where the next source is
// read from.
func (p *Partial) Offset() int64 { return p.off }

// Resumed is the number of bytes that were on disk when it was opened.
func (p *Partial) Resumed() int64 { return p.resumed }

// Restart empties the file: the source read next answers from byte 0 (an
// HTTP server that ignored the range).
func (p *Partial) Restart() error {
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("fetch %s: restart at byte 0: %w", p.want.SHA256, err)
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("fetch %s: restart at byte 0: %w", p.want.SHA256, err)
	}
	p.h.Reset()
	p.off = 0
	return nil
}

// Fetch appends r's bytes from Offset until the declared size. Complete,
// the file is moved to a temp file and returned with the sha256 and size
// of all its bytes (nothing is kept any more). Ended early, the bytes
// written stay for the next attempt (a temp file's are removed at Close).
// More bytes than declared remove the file (ErrTooLarge).
func (p *Partial) Fetch(ctx context.Context, r io.Reader) (*Fetched, error) {
	if p.done {
		return nil, fmt.Errorf("fetch %s: the download ended already", p.want.SHA256)
	}
	n, err := io.Copy(io.MultiWriter(p.f, p.h), io.LimitReader(ctxReader{ctx, r}, p.want.Size-p.off+1))
	p.off += n
	if p.off > p.want.Size {
		p.Remove()
		return nil, fmt.Errorf("fetch %s: more than the declared %d bytes: %w", p.want.SHA256, p.want.Size, ErrTooLarge)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", p.want.SHA256, err)
	}
	if p.off < p.want.Size {
		// Not how many came: the bytes are unverified.
		return nil, fmt.Errorf("fetch %s: truncated: fewer than the declared %d bytes", p.want.SHA256, p.want.Size)
	}
	name := p.f.Name()
	if err := p.f.Close(); err != nil {
		p.Remove()
		return nil, fmt.Errorf("fetch %s: %w", p.want.SHA256, err)
	}
	p.f = nil
	path := name
	if p.kept {
		t, err := os.CreateTemp(p.in.tmpDir(), "fetch-*")
		if err != nil {
			p.Remove()
			return nil, fmt.Errorf("fetch %s: %w", p.want.SHA256, err)
		}
		t.Close()
		path = t.Name()
		if err := os.Rename(name, path); err != nil {
			os.Remove(path)
			p.Remove()
			return nil, fmt.Errorf("fetch %s: %w", p.want.SHA256, err)
		}
	}
	p.done = true
	p.Close()
	return &Fetched{Path: path, Size: p.off, SHA256: hex.EncodeToString(p.h.Sum(nil))}, nil
}

// Remove deletes the file (its bytes are not to be resumed) and closes.
func (p *Partial) Remove() {
	if p.f != nil {
		os.Remove(p.f.Name())
	} else if p.kept && !p.done {
		os.Remove(filepath.Join(p.in.partialDir(), p.want.SHA256))
	}
	p.done = true
	p.Close()
}

// Close ends the download: a kept file stays for the next attempt (an
// empty one is removed), a temp file is removed. Nil and repeated calls
// are fine.
func (p *Partial) Close() {
	if p == nil {
		return
	}
	if p.f != nil {
		name := p.f.Name()
		p.f.Close()
		p.f = nil
		if !p.kept || p.off == 0 {
			os.Remove(name)
		}
	}
	if p.kept {
		p.kept = false
		p.in.releasePartial(p.want.SHA256)
	}
}
