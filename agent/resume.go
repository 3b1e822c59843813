package agent

import (
	"io"
	"strconv"
	"strings"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Resumed downloads (install/partial.go).
//
// Every fetch writes the artifact to the data dir's partial/<sha256> (the
// sha256 expected) and leaves what it got there when it breaks: the next
// attempt, of the same fetch, of a staging or install of the same artifact,
// or of the agent after a restart, asks its source for the rest: a peer or
// the coordinator with the Download offset, the release's URL with an HTTP
// Range request ("bytes=N-"). A URL that answers 200 sends the whole file:
// the kept bytes are dropped and the body written from byte 0; a 206 whose
// Content-Range does not start at N, or a 416, drops them and fails the
// attempt (the next starts at 0). The bytes kept are not trusted: the whole
// file is verified as any download (size, sha256; the release's signature
// covers the sha256). When a resumed download fails verification its file
// is gone (Verify removes it) and the download starts again at byte 0,
// once: from peers, without those that sent bytes of the bad attempt (they
// become suspects, blamed only when their bytes differ from the good copy,
// blameSuspects); from the URL or the coordinator, from them again (there
// is no other). fleetwave_agent_artifact_resumed_bytes_total counts the
// bytes each resumed attempt did not fetch again.
//
// Every full assignment set removes the partial downloads whose sha256
// names no release, stage or agent upgrade of it (prunePartials), unless
// a fetch holds one or it was written within install.PartialGrace (a
// staging host whose stream flapped gets sets without its stage until it
// is admitted again); install.MaxPartials and install.PartialMaxAge bound
// the rest.

// prunePartials removes the partial downloads no assignment of the set,
// stage or agent upgrade (agent) names.
func (a *agent) prunePartials(list []*v1.Assignment, agent *v1.Assignment) {
	keep := map[string]bool{}
	for _, asg := range append(list, agent) {
		if sha := asg.GetRelease().GetArtifact().GetSha256(); sha != "" {
			keep[sha] = true
		}
		if sha := asg.GetStage().GetArtifact().GetSha256(); sha != "" {
			keep[sha] = true
		}
	}
	a.inst.PrunePartials(keep, time.Now())
}

// eofReader has nothing to read: a partial download that holds every
// byte asks no source for more.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// contentRangeStart is the first byte of a Content-Range header
// ("bytes START-END/TOTAL"); false when it is not one.
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
