package judge

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestScenarios replays the scenarios in testdata/scenarios/*.txt: a comparison's
// config, then its windows one at a time, each printing the judgement over
// every window so far. `go test ./coordinator/judge -run TestScenarios
// -rewrite` rewrites the expected output (read the diff before committing).
//
// Commands:
//
//	config [windows=N] [alpha=A]     a new comparison (default 1 window)
//	errors [name=N] [max-increase=F] [min=N]
//	latency [name=N] quantile=Q [max-increase=F] [min=N] bounds=(B,...)
//	    a rule; a latency rule's bounds are the hosts' finite bucket bounds
//	    (+Inf is added)
//	window [t=D]
//	    one host per input line: "ID [canary] [RULE=ERRORS/REQUESTS]
//	    [bounds=(B,...)] [RULE=(N,N,...)]", the latter a latency rule's
//	    observations per bucket, at the rule's bounds or at the bounds=
//	    given before it on the line (a host with another bucket layout);
//	    the window ends at t (default: one minute after the last)
//
// Each window prints the overall verdict and every result's reason.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/scenarios", func(t *testing.T, path string) {
		var c Config
		bounds := map[string][]float64{}
		var windows []Window
		end := t0
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("%s: %s", td.Pos, fmt.Sprintf(format, args...))
			}
			num := func(key string, def float64) float64 {
				s := arg(td, key)
				if s == "" {
					return def
				}
				v, err := strconv.ParseFloat(s, 64)
				if err != nil {
					fail("%s=%s: %v", key, s, err)
				}
				return v
			}
			switch td.Cmd {
			case "config":
				c = Config{Windows: int(num("windows", 1)), Alpha: num("alpha", 0)}
				windows, end, bounds = nil, t0, map[string][]float64{}
				return ""
			case "errors", "latency":
				r := Rule{Name: arg(td, "name"), Kind: KindErrorRatio, MaxIncrease: num("max-increase", 0), MinCount: uint64(num("min", 0))}
				if r.Name == "" {
					r.Name = td.Cmd
				}
				if td.Cmd == "latency" {
					r.Kind, r.Quantile = KindLatency, num("quantile", 0)
					for _, s := range strings.Split(arg(td, "bounds"), ",") {
						v, err := strconv.ParseFloat(s, 64)
						if err != nil {
							fail("bounds: %v", err)
						}
						bounds[r.Name] = append(bounds[r.Name], v)
					}
					bounds[r.Name] = append(bounds[r.Name], math.Inf(1))
				}
				c.Rules = append(c.Rules, r)
				return ""
			case "window":
				start := end
				end = end.Add(time.Minute)
				if s := arg(td, "t"); s != "" {
					d, err := time.ParseDuration(s)
					if err != nil {
						fail("t=%s: %v", s, err)
					}
					end = t0.Add(d)
				}
				w := Window{Start: start, End: end}
				for _, line := range strings.Split(strings.TrimSpace(td.Input), "\n") {
					f := strings.Fields(line)
					if len(f) == 0 {
						continue
					}
					h := HostSummary{Host: f[0]}
					var own []float64
					for _, kv := range f[1:] {
						if kv == "canary" {
							h.Canary = true
							continue
						}
						name, val, _ := strings.Cut(kv, "=")
						if name == "bounds" {
							own = nil
							for _, s := range strings.Split(strings.Trim(val, "()"), ",") {
								v, err := strconv.ParseFloat(s, 64)
								if err != nil {
									fail("%s: %v", kv, err)
								}
								own = append(own, v)
							}
							own = append(own, math.Inf(1))
							continue
						}
						if strings.HasPrefix(val, "(") {
							var per []uint64
							for _, s := range strings.Split(strings.Trim(val, "()"), ",") {
								n, err := strconv.ParseUint(s, 10, 64)
								if err != nil {
									fail("%s: %v", kv, err)
								}
								per = append(per, n)
							}
							b := bounds[name]
							if own != nil {
								b = own
							}
							h.Counts = append(h.Counts, Counts{Rule: name, Buckets: hist(b, per...)})
							continue
						}
						e, n, _ := strings.Cut(val, "/")
						ev, err1 := strconv.ParseUint(e, 10, 64)
						nv, err2 := strconv.ParseUint(n, 10, 64)
						if err1 != nil || err2 != nil {
							fail("%s: want RULE=ERRORS/REQUESTS", kv)
						}
						h.Counts = append(h.Counts, Counts{Rule: name, Requests: nv, Errors: ev})
					}
					w.Hosts = append(w.Hosts, h)
				}
				windows = append(windows, w)
				j, err := Judge(c, windows)
				if err != nil {
					return "error: " + err.Error()
				}
				var b strings.Builder
				fmt.Fprintf(&b, "verdict: %s\n", j.Verdict)
				for _, r := range j.Results {
					fmt.Fprintf(&b, "%s: %s\n", r.Verdict, r.Reason)
				}
				return b.String()
			}
			fail("unknown command %q", td.Cmd)
			return ""
		})
	})
}

func arg(td *datadriven.TestData, key string) string {
	a, ok := td.Arg(key)
	if !ok {
		return ""
	}
	return strings.Join(a.Vals, ",")
}
