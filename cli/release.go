package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// UploadChunkSize is the size of each UploadRequest chunk.
const UploadChunkSize = 256 << 10

// DefaultSignatureExpiry is how long a signed release manifest is valid
// unless --expires says otherwise.
const DefaultSignatureExpiry = 30 * 24 * time.Hour

func (a *app) releaseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Create and list releases",
	}
	var f struct {
		version, artifact, url, sha, commit, commitTime string
		size                                            int64
		git                                             bool
		sign, specFile                                  string
		sequence                                        uint64
		expires                                         time.Duration
		trusted                                         []string
	}
	create := &cobra.Command{
		Use:   "create SERVICE --version V (--artifact FILE | --url URL --sha256 HEX --size N) [--commit SHA --commit-time RFC3339 | --git] [--sign KEY --spec FILE [--sequence N | --trusted-keys PUB,...] [--expires DURATION]]",
		Short: "Record a release (uploading its artifact); in auto mode its rollout starts",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			byURL := fl.Changed("url") || fl.Changed("sha256") || fl.Changed("size")
			switch {
			case f.artifact != "" && byURL:
				return usageErrorf("--artifact cannot be combined with --url, --sha256 or --size")
			case f.artifact == "" && !byURL:
				return usageErrorf("give --artifact FILE, or --url URL --sha256 HEX --size N")
			case byURL && (!fl.Changed("url") || !fl.Changed("sha256") || !fl.Changed("size")):
				return usageErrorf("--url, --sha256 and --size go together: give all three")
			}
			var signKey ed25519.PrivateKey
			var signSpec *v1.ServiceSpec
			if f.sign != "" {
				if f.expires <= 0 {
					return usageErrorf("invalid --expires %s: must be positive", f.expires)
				}
				if f.specFile == "" {
					return usageErrorf("--sign needs --spec FILE: the spec the release runs with is signed with it")
				}
				if fl.Changed("sequence") && f.sequence == 0 {
					return usageErrorf("invalid --sequence 0: sequences start at 1")
				}
				if fl.Changed("sequence") && fl.Changed("trusted-keys") {
					return usageErrorf("--trusted-keys counts releases to choose the sequence: not with --sequence")
				}
				k, err := signing.LoadPrivateKey(f.sign)
				if err != nil {
					return fmt.Errorf("--sign: %w", err)
				}
				signKey = k
				if signSpec, err = a.loadSpec(cmd, f.specFile); err != nil {
					return err
				}
				if signSpec.GetName() != args[0] {
					return usageErrorf("--spec: %s is the spec of service %q, not %q", f.specFile, signSpec.GetName(), args[0])
				}
			} else if fl.Changed("sign") {
				return usageErrorf("--sign: empty key file path")
			} else if fl.Changed("expires") || fl.Changed("spec") || fl.Changed("sequence") || fl.Changed("trusted-keys") {
				return usageErrorf("--expires, --spec, --sequence and --trusted-keys need --sign KEY")
			}
			if f.git {
				if fl.Changed("commit") || fl.Changed("commit-time") {
					return usageErrorf("--git reads the commit and its time: do not combine it with --commit or --commit-time")
				}
				sha, when, err := gitHead(cmd.Context(), ".")
				if err != nil {
					return err
				}
				f.commit, f.commitTime = sha, when
			}
			rel := &v1.Release{
				Service:   args[0],
				Version:   f.version,
				Commit:    f.commit,
				CreatedBy: a.createdBy(),
			}
			if f.commitTime != "" {
				t, err := time.Parse(time.RFC3339, f.commitTime)
				if err != nil {
					return usageErrorf("invalid --commit-time %q: want RFC 3339, e.g. 2024-05-01T12:00:00Z", f.commitTime)
				}
				rel.CommitTime = timestamppb.New(t)
			}
			ctx := cmd.Context()
			if signKey != nil && f.sequence == 0 {
				// One above the highest sequence signed for the service so
				// far by a key it trusts (--sign's, --trusted-keys): a
				// record whose signature does not verify counts for
				// nothing. CI may pass its own with --sequence.
				trusted, err := signingKeys(signKey, f.trusted)
				if err != nil {
					return err
				}
				seq, err := a.nextSequence(ctx, args[0], trusted)
				if err != nil {
					return err
				}
				f.sequence = seq
			}
			if f.artifact != "" {
				if err := a.uploadArtifact(ctx, rel, f.artifact); err != nil {
					return err
				}
			} else {
				rel.Artifact = &v1.Artifact{Url: f.url, Sha256: f.sha, Size: f.size}
				if err := releaseProblems(rel); err != nil {
					return err
				}
			}
			if signKey != nil {
				// Signed last: the manifest names the final digest and size.
				now := time.Now()
				sm, err := signing.Sign(signing.Manifest(rel, signSpec, f.sequence, now, now.Add(f.expires)), signKey)
				if err != nil {
					return fmt.Errorf("--sign: %w", err)
				}
				rel.Signed = sm
			}
			c, err := a.operator()
			if err != nil {
				return err
			}
			cctx, cancel := a.callCtx(ctx)
			defer cancel()
			resp, err := c.CreateRelease(cctx, &v1.CreateReleaseRequest{Release: rel})
			if err != nil {
				return a.rpcErr(fmt.Sprintf("create release %s %s", rel.GetService(), rel.GetVersion()), err)
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			printCreated(a.stdout, resp)
			return nil
		}),
	}
	fl := create.Flags()
	fl.StringVar(&f.version, "version", "", "release version ([A-Za-z0-9][A-Za-z0-9._+-]{0,63})")
	fl.StringVar(&f.artifact, "artifact", "", "artifact file to upload to the coordinator")
	fl.StringVar(&f.url, "url", "", "http(s) URL the agents fetch the artifact from (instead of --artifact)")
	fl.StringVar(&f.sha, "sha256", "", "with --url: the artifact's sha256 (64 lowercase hex digits)")
	fl.Int64Var(&f.size, "size", 0, "with --url: the artifact's size in bytes")
	fl.StringVar(&f.commit, "commit", "", "commit id the release was built from")
	fl.StringVar(&f.commitTime, "commit-time", "", "commit time, RFC 3339 (e.g. 2024-05-01T12:00:00Z)")
	fl.BoolVar(&f.git, "git", false, "take --commit and --commit-time from HEAD of the git repository in the current directory")
	fl.StringVar(&f.sign, "sign", "", "sign the release manifest with this ed25519 private key file (fleetwave keys generate)")
	fl.DurationVar(&f.expires, "expires", DefaultSignatureExpiry, "with --sign: how long agents accept the signed release")
	fl.StringSliceVar(&f.trusted, "trusted-keys", nil, trustedKeysHelp)
	fl.StringVar(&f.specFile, "spec", "", "with --sign: the service spec file the release runs with (its run, checks and analysis are signed)")
	fl.Uint64Var(&f.sequence, "sequence", 0, "with --sign: the release's sequence in the service's signed history (default: one above the highest so far)")
	_ = create.MarkFlagRequired("version")

	list := &cobra.Command{
		Use:   "list SERVICE",
		Short: "List a service's releases (ARTIFACT PRUNED: when the coordinators pruned the release's artifact; release create with the same artifact restores it)",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "list releases of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListReleasesResponse, error) {
				return c.ListReleases(ctx, &v1.ListReleasesRequest{Service: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "VERSION", "SHA256", "SIZE", "COMMIT", "COMMIT TIME", "CREATED", "CREATED BY", "ARTIFACT PRUNED")
			for _, r := range resp.GetReleases() {
				row(tw, r.GetVersion(), shortSHA(r.GetArtifact().GetSha256()), strconv.FormatInt(r.GetArtifact().GetSize(), 10),
					orDash(r.GetCommit()), fmtTime(r.GetCommitTime()), fmtTime(r.GetCreatedAt()), orDash(r.GetCreatedBy()), fmtTime(r.GetArtifactPrunedAt()))
			}
			return tw.Flush()
		}),
	}
	cmd.AddCommand(create, list)
	return cmd
}

// uploadArtifact checks rel (all but the digest) and uploads the file as
// its artifact, setting rel.Artifact.
func (a *app) uploadArtifact(ctx context.Context, rel *v1.Release, path string) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("artifact %s: not a regular file", path)
	}
	if fi.Size() == 0 {
		return fmt.Errorf("artifact %s: empty file", path)
	}
	// Check everything but the digest before uploading.
	rel.Artifact = &v1.Artifact{Sha256: strings.Repeat("0", 64), Size: fi.Size()}
	if err := releaseProblems(rel); err != nil {
		return err
	}
	sum, size, err := a.upload(ctx, file)
	if err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	rel.Artifact = &v1.Artifact{Sha256: sum, Size: size}
	return nil
}

// trustedKeysHelp is the --trusted-keys flag's help where the CLI signs.
const trustedKeysHelp = "with --sign: public key files (comma-separated) whose signed releases count, besides --sign's own, when the sequence is chosen: the agents' --trusted-keys"

// signingKeys is the set of keys whose signed releases count when the CLI
// chooses a sequence or a rollback statement's max_floor: priv's public
// key and the public key files given.
func signingKeys(priv ed25519.PrivateKey, files []string) (map[string]ed25519.PublicKey, error) {
	keys, err := signing.LoadPublicKeys(files)
	if err != nil {
		return nil, fmt.Errorf("--trusted-keys: %w", err)
	}
	if keys == nil {
		keys = map[string]ed25519.PublicKey{}
	}
	pub, _ := priv.Public().(ed25519.PublicKey)
	keys[signing.KeyID(pub)] = pub
	return keys, nil
}

// warnUnverified says on stderr when a listed release claims a sequence
// above seq, the highest that verifies: its record is not counted (it may
// be made up), but if it is genuine (another operator key, or the key
// before a rotation) agents that accepted it refuse what is signed now
// (what: the release, the rollback).
func (a *app) warnUnverified(rels []*v1.Release, seq uint64, what string) {
	if r, claimed := signing.Unverified(rels, seq); r != nil {
		fmt.Fprintf(a.stderr, "fleetwave: warning: release %s claims sequence %d (key %s), above the highest that verifies under the keys given (%d): not counted; if it is genuine (another key, or one rotated out), agents that accepted it refuse %s: pass its public key with --trusted-keys\n",
			r.GetVersion(), claimed, r.GetSigned().GetKeyId(), seq, what)
	}
}

// nextSequence is one above the highest sequence of the service's
// releases signed by a trusted key (1 for the first).
func (a *app) nextSequence(ctx context.Context, service string, trusted map[string]ed25519.PublicKey) (uint64, error) {
	c, err := a.operator()
	if err != nil {
		return 0, err
	}
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	resp, err := c.ListReleases(cctx, &v1.ListReleasesRequest{Service: service})
	if err != nil {
		return 0, a.rpcErr("list releases of "+service+" (for --sequence)", err)
	}
	top, seq := signing.Highest(resp.GetReleases(), trusted, time.Now())
	a.warnUnverified(resp.GetReleases(), seq, "this release (or give --sequence)")
	if seq == math.MaxUint64 {
		return 0, fmt.Errorf("service %s: release %s was signed with sequence %d, the largest there is: no sequence is left above it", service, top.GetVersion(), seq)
	}
	return seq + 1, nil
}

// releaseProblems validates a release locally, naming the flags.
func releaseProblems(r *v1.Release) error {
	err := spec.ValidateRelease(r)
	if err == nil {
		return nil
	}
	flags := map[string]string{
		"service": "SERVICE", "version": "--version", "artifact.sha256": "--sha256",
		"artifact.size": "--size", "artifact.url": "--url", "commit": "--commit", "commit_time": "--commit-time",
	}
	var b strings.Builder
	b.WriteString("invalid release:")
	for _, line := range strings.Split(err.Error(), "\n") {
		if field, msg, ok := strings.Cut(line, ": "); ok && flags[field] != "" {
			line = flags[field] + ": " + msg
		}
		b.WriteString("\n  " + line)
	}
	return errors.New(b.String())
}

// createdBy is $USER@hostname.
func (a *app) createdBy() string {
	user := a.getenv("USER")
	if user == "" {
		user = "unknown"
	}
	host, err := a.hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return user + "@" + host
}

// upload streams r to ArtifactService.Upload in UploadChunkSize chunks and
// returns the digest and size, after checking that the coordinator computed
// the same ones.
func (a *app) upload(ctx context.Context, r io.Reader) (string, int64, error) {
	c, err := a.artifacts()
	if err != nil {
		return "", 0, err
	}
	ctx, cancel := a.callCtx(ctx)
	defer cancel()
	stream, err := c.Upload(ctx)
	if err != nil {
		return "", 0, a.rpcErr("start upload", err)
	}
	h := sha256.New()
	var size int64
	buf := make([]byte, UploadChunkSize)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			size += int64(n)
			if err := stream.Send(&v1.UploadRequest{Chunk: buf[:n]}); err != nil {
				if errors.Is(err, io.EOF) { // the server ended the stream: its status says why
					_, err = stream.CloseAndRecv()
				}
				return "", 0, a.rpcErr("upload", err)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return "", 0, fmt.Errorf("read: %w", rerr)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return "", 0, a.rpcErr("upload", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if resp.GetSha256() != sum || resp.GetSize() != size {
		return "", 0, fmt.Errorf("coordinator stored sha256 %s, %d bytes; sent sha256 %s, %d bytes",
			orDash(resp.GetSha256()), resp.GetSize(), sum, size)
	}
	return sum, size, nil
}

func printCreated(w io.Writer, resp *v1.CreateReleaseResponse) {
	r := resp.GetRelease()
	fmt.Fprintf(w, "release %s %s created: sha256 %s, %d bytes", r.GetService(), r.GetVersion(), r.GetArtifact().GetSha256(), r.GetArtifact().GetSize())
	if r.GetCommit() != "" {
		fmt.Fprintf(w, ", commit %s", r.GetCommit())
	}
	if s := r.GetSigned(); s != nil {
		fmt.Fprintf(w, ", signed by key %s", s.GetKeyId())
		if m := signing.ParseManifest(r); m != nil {
			fmt.Fprintf(w, " (sequence %d, spec sha256 %s)", m.GetSequence(), shortSHA(m.GetSpecSha256()))
		}
	}
	fmt.Fprintln(w)
	ro := resp.GetRollout()
	if ro == nil {
		note := resp.GetNote()
		if note == "" {
			note = "no rollout started"
		}
		fmt.Fprintln(w, note)
		return
	}
	switch ro.GetState() {
	case v1.RolloutState_ROLLOUT_STATE_WAITING_APPROVAL:
		fmt.Fprintf(w, "rollout %s: %s → %s waits for approval: fleetwave rollout approve %s\n",
			ro.GetId(), versionOrNone(ro.GetFromVersion()), ro.GetToVersion(), ro.GetService())
	default:
		fmt.Fprintf(w, "rollout %s started: %s → %s (%s)\n", ro.GetId(), versionOrNone(ro.GetFromVersion()), ro.GetToVersion(), rolloutState(ro.GetState()))
	}
	for _, wv := range ro.GetWaves() {
		fmt.Fprintf(w, "  %s: %s: %s\n", waveLabel(wv), plural(len(wv.GetHosts()), "host"), hostList(wv))
	}
}

// gitHead returns HEAD's commit id and committer time (RFC 3339) of the git
// repository at dir.
func gitHead(ctx context.Context, dir string) (sha, when string, err error) {
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "log", "-1", "--format=%H%n%cI")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("--git: git log in %s: %v: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		return "", "", fmt.Errorf("--git: unexpected git log output %q", out)
	}
	return lines[0], lines[1], nil
}
