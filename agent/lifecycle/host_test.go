package lifecycle

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestHostTraces replays testdata/host/*.txt: decisions about the host
// (host.go). Times are offsets from a fixed now. Commands:
//
//	expire retention=D                   ExpiredLogs of the services' logs given as
//	  SERVICE age=D [files=N] [runs]     input lines: last written D ago, the host runs it
//	watchdog last=D stale=D [unarmed] [hold]
//	                                     WatchdogDue, the loop's last turn D ago
//
// Rewrite after a deliberate change with
//
//	go test ./agent/lifecycle -run TestHostTraces -rewrite
func TestHostTraces(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "host", "*.txt"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no traces in testdata/host: %v", err)
	}
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
				args := map[string]string{}
				for _, a := range d.CmdArgs {
					if len(a.Vals) == 0 {
						args[a.Key] = ""
						continue
					}
					args[a.Key] = a.Vals[0]
				}
				dur := func(key string) time.Duration {
					s, ok := args[key]
					if !ok {
						d.Fatalf(t, "%s: %s= missing", d.Cmd, key)
					}
					v, err := parseDays(s)
					if err != nil {
						d.Fatalf(t, "%s=%q: %v", key, s, err)
					}
					return v
				}
				switch d.Cmd {
				case "expire":
					var logs []ServiceLogs
					for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
						f := strings.Fields(line)
						if len(f) < 2 {
							d.Fatalf(t, "log line %q: want SERVICE age=D [files=N] [runs]", line)
						}
						l := ServiceLogs{Service: f[0]}
						n := 1
						for _, kv := range f[1:] {
							k, v, _ := strings.Cut(kv, "=")
							switch k {
							case "age":
								age, err := parseDays(v)
								if err != nil {
									d.Fatalf(t, "%q: %v", kv, err)
								}
								l.LastWrite = now.Add(-age)
							case "files":
								if _, err := fmt.Sscan(v, &n); err != nil {
									d.Fatalf(t, "%q: %v", kv, err)
								}
							case "runs":
								l.Runs = true
							default:
								d.Fatalf(t, "log line %q: unknown %q", line, kv)
							}
						}
						for i := range n {
							l.Files = append(l.Files, fmt.Sprintf("%s.log.%d", l.Service, i))
						}
						logs = append(logs, l)
					}
					out := ExpiredLogs(logs, now, dur("retention"))
					if len(out) == 0 {
						return "delete: none\n"
					}
					var b strings.Builder
					for _, l := range out {
						fmt.Fprintf(&b, "delete: %s (%d files, last written %s ago)\n", l.Service, len(l.Files), now.Sub(l.LastWrite))
					}
					return b.String()
				case "watchdog":
					_, unarmed := args["unarmed"]
					_, hold := args["hold"]
					return fmt.Sprintf("due: %v\n", WatchdogDue(!unarmed, hold, now.Add(-dur("last")), now, dur("stale")))
				}
				d.Fatalf(t, "unknown command %q", d.Cmd)
				return ""
			})
		})
	}
}

// parseDays is time.ParseDuration with a "d" unit (24 h) too.
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		if _, err := fmt.Sscanf(n, "%d", &days); err != nil {
			return 0, err
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
