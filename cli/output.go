package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// jsonOpts is how -o json prints: protojson with the .proto field names
// (snake_case, as in spec files), one indented document.
var jsonOpts = protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// printJSONLine prints m as one line of JSON (for streams).
func printJSONLine(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func row(tw io.Writer, cols ...string) {
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
}

// enumName turns ROLLOUT_STATE_SUCCEEDED into "succeeded".
func enumName(s fmt.Stringer, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), prefix))
}

func rolloutState(s v1.RolloutState) string { return enumName(s, "ROLLOUT_STATE_") }
func waveState(s v1.WaveState) string       { return enumName(s, "WAVE_STATE_") }
func hostState(s v1.HostRolloutState) string {
	return enumName(s, "HOST_ROLLOUT_STATE_")
}
func phaseName(p v1.Phase) string {
	if p == v1.Phase_PHASE_UNSPECIFIED {
		return "-"
	}
	return enumName(p, "PHASE_")
}

// fmtTime prints a timestamp in UTC, RFC 3339, or "-" when unset.
func fmtTime(ts *timestamppb.Timestamp) string {
	if ts == nil || !ts.IsValid() {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// fmtLabels prints k=v pairs sorted by key, comma-separated.
func fmtLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return orDash(s)
}

func versionOrNone(v string) string {
	if v == "" {
		return "(none)"
	}
	return v
}

func waveLabel(w *v1.Wave) string {
	if w.GetCanary() {
		return fmt.Sprintf("wave %d (canary)", w.GetIndex())
	}
	return fmt.Sprintf("wave %d", w.GetIndex())
}

// waveDone says how many of wave w's hosts are done, of how many; once
// r's hosts were compacted (an old rollout) only how many it had.
func waveDone(r *v1.Rollout, w *v1.Wave) string {
	if r.GetHostsCompacted() {
		return plural(rollout.WaveHosts(r, w), "host") + " (detail pruned)"
	}
	return fmt.Sprintf("%d/%d hosts done", hostsDone(w), len(w.GetHosts()))
}

func hostsDone(w *v1.Wave) int {
	n := 0
	for _, h := range w.GetHosts() {
		if h.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
			n++
		}
	}
	return n
}

// hostList names at most 10 hosts of a wave.
func hostList(w *v1.Wave) string {
	const max = 10
	var ids []string
	for i, h := range w.GetHosts() {
		if i == max {
			ids = append(ids, fmt.Sprintf("... (%d more)", len(w.GetHosts())-max))
			break
		}
		ids = append(ids, h.GetHostId())
	}
	return strings.Join(ids, ", ")
}
