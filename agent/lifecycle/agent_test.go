package lifecycle

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestAgentTraces replays testdata/agent/*.txt: the agent's own upgrade
// decisions. Each subtest starts with no record; the record a decision
// returns is kept (as the agent persists it) and printed. Commands:
//
//	record STATE VERSION GEN FROM      set the record (STATE trying|done|failed)
//	start own=V [child]                AgentStart
//	assign own=V version=X gen=N       AgentAssign (version=none: no assignment)
//	prepared own=V version=X gen=N [err=TEXT]  (TEXT: words joined by _)
//	                                   AgentPrepared
//	handoff end=confirmed|exited|deadline|stopped|commit-failed [detail=TEXT] [deadline=D]
//	                                   AgentHandoff of the (trying) record
//
// Rewrite after a deliberate change with
//
//	go test ./agent/lifecycle -run TestAgentTraces -rewrite
func TestAgentTraces(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "agent", "*.txt"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no traces in testdata/agent: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			recs := map[string]**AgentUpgrade{}
			datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
				rec := recs[t.Name()]
				if rec == nil {
					rec = new(*AgentUpgrade)
					recs[t.Name()] = rec
				}
				return agentTrace(t, d, rec)
			})
		})
	}
}

func agentTrace(t *testing.T, d *datadriven.TestData, rec **AgentUpgrade) string {
	args := map[string]string{}
	var pos []string
	for _, a := range d.CmdArgs {
		if len(a.Vals) == 0 {
			pos = append(pos, a.Key)
			args[a.Key] = ""
			continue
		}
		args[a.Key] = strings.ReplaceAll(a.Vals[0], "_", " ") // texts: words joined by _
	}
	gen := func() int64 {
		n, err := strconv.ParseInt(args["gen"], 10, 64)
		if err != nil {
			d.Fatalf(t, "gen=%q: %v", args["gen"], err)
		}
		return n
	}
	asg := func() *v1.Assignment {
		if args["version"] == "none" {
			return nil
		}
		a := &v1.Assignment{Generation: gen(), Release: &v1.Release{Version: args["version"]}}
		if r, ok := args["replaces"]; ok {
			n, err := strconv.ParseInt(r, 10, 64)
			if err != nil {
				d.Fatalf(t, "replaces=%q: %v", r, err)
			}
			a.ReplacesGeneration = n
		}
		return a
	}
	var dec AgentDecision
	switch d.Cmd {
	case "record":
		if len(pos) != 4 {
			d.Fatalf(t, "record STATE VERSION GEN FROM")
		}
		g, err := strconv.ParseInt(pos[2], 10, 64)
		if err != nil {
			d.Fatalf(t, "gen %q: %v", pos[2], err)
		}
		*rec = &AgentUpgrade{State: AgentUpgradeState(pos[0]), Version: pos[1], Generation: g, From: pos[3]}
		return showRecord(*rec)
	case "start":
		_, child := args["child"]
		dec = AgentStart(*rec, args["own"], child)
	case "assign":
		dec = AgentAssign(*rec, args["own"], asg())
	case "prepared":
		var err error
		if e, ok := args["err"]; ok {
			err = errors.New(e)
		}
		dec = AgentPrepared(args["own"], asg(), err)
	case "handoff":
		if *rec == nil || (*rec).State != AgentTrying {
			d.Fatalf(t, "handoff needs a trying record, have %s", showRecord(*rec))
		}
		ends := map[string]HandoffEnd{"confirmed": HandoffConfirmed, "exited": HandoffExited, "deadline": HandoffDeadline,
			"stopped": HandoffStopped, "commit-failed": HandoffCommitFailed, "no-watchdog": HandoffNoWatchdog}
		end, ok := ends[args["end"]]
		if !ok {
			d.Fatalf(t, "end=%q", args["end"])
		}
		dl := time.Minute
		if s, ok := args["deadline"]; ok {
			var err error
			if dl, err = time.ParseDuration(s); err != nil {
				d.Fatalf(t, "deadline=%q: %v", s, err)
			}
		}
		r, commit := AgentHandoff(**rec, end, args["detail"], dl)
		*rec = &r
		return fmt.Sprintf("commit: %v\nrecord: %s\n", commit, showRecord(*rec))
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	var out strings.Builder
	if dec.Upgrade {
		out.WriteString("upgrade\n")
	}
	if dec.Record != nil {
		*rec = dec.Record
		fmt.Fprintf(&out, "persist: %s\n", showRecord(dec.Record))
	}
	if r := dec.Report; r != nil {
		fmt.Fprintf(&out, "report: gen %d %s current=%s target=%s last_good=%s", r.GetGeneration(),
			strings.ToLower(strings.TrimPrefix(r.GetPhase().String(), "PHASE_")), r.GetCurrentVersion(), r.GetTargetVersion(), r.GetLastGoodVersion())
		if r.GetReason() != "" {
			fmt.Fprintf(&out, " reason=%q", r.GetReason())
		}
		out.WriteString("\n")
	}
	if out.Len() == 0 {
		return "nothing\n"
	}
	return out.String()
}

func showRecord(r *AgentUpgrade) string {
	if r == nil {
		return "none"
	}
	s := fmt.Sprintf("%s %s gen %d from %s", r.State, r.Version, r.Generation, r.From)
	if r.Reason != "" {
		s += fmt.Sprintf(" (%s)", r.Reason)
	}
	return s
}
