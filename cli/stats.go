package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

const statsDay = 24 * time.Hour

// newStatsCmd is `fleetwave stats [SERVICE] [--since 30d]`: one GetStats
// call, printed per service and for the fleet.
func newStatsCmd(a *app) *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "stats [SERVICE] [--since 30d]",
		Short: "Lead time and the DORA figures per service and for the fleet",
		Long: `Lead time for changes and the other DORA figures, computed by the coordinator
from the history it keeps, over the window ending now (--since, default 30d).

  deployment frequency   rollouts that reached every host, per day (rollbacks excluded)
  lead time              commit -> every host live, for releases with a commit time,
                         broken down into CI (commit -> release created), queue and
                         approval (release -> rollout start) and the rollout itself
                         (start -> every host live), of which bake
  change failure rate    (failed + rolled back) / (succeeded + failed + rolled back)
  time to restore        failure detected -> every host on a good release

VALUE is the median for durations; P90 is the 90th percentile (nearest rank);
N is the sample size. Each figure is placed in a DORA band (elite, high,
medium, low; "-" without data) and the overall band is the worst of them.`,
		Args: cobra.MaximumNArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			d, err := parseStatsSince(since)
			if err != nil {
				return usageErrorf("invalid --since %q: %v", since, err)
			}
			service, what := "", "stats"
			if len(args) == 1 {
				service, what = args[0], "stats of "+args[0]
			}
			resp, err := call(a, cmd, what, func(ctx context.Context, c v1.OperatorServiceClient) (*v1.GetStatsResponse, error) {
				return c.GetStats(ctx, &v1.GetStatsRequest{Service: service, Since: durationpb.New(d)})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			return printStats(a.stdout, resp)
		}),
	}
	cmd.Flags().StringVar(&since, "since", "30d", "the window, ending now: a Go duration (36h, 90m) or days (30d, 1.5d, 1d12h)")
	return cmd
}

// sinceDaysRE is a day count with an optional Go duration after it.
var sinceDaysRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)d(.*)$`)

// parseStatsSince reads --since: a Go duration, or days with a "d" suffix,
// optionally followed by a Go duration ("1d12h"). It must be positive.
func parseStatsSince(s string) (time.Duration, error) {
	const want = "want a positive duration such as 30d, 36h or 90m"
	s = strings.TrimSpace(s)
	var d time.Duration
	if m := sinceDaysRE.FindStringSubmatch(s); m != nil {
		days, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s", want)
		}
		f := days * float64(statsDay)
		if f >= math.MaxInt64/2 {
			return 0, fmt.Errorf("%g days is too long", days)
		}
		d = time.Duration(f)
		if m[2] != "" {
			rest, err := time.ParseDuration(m[2])
			if err != nil || rest < 0 {
				return 0, fmt.Errorf("%s", want)
			}
			d += rest
		}
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%s", want)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s", want)
	}
	return d, nil
}

// printStats prints a GetStats answer: the window, then a table per service
// and, when there is more than one service, one for the fleet.
func printStats(w io.Writer, resp *v1.GetStatsResponse) error {
	from, to := resp.GetFrom(), resp.GetTo()
	window := ""
	if from.IsValid() && to.IsValid() {
		window = " (" + statsDuration(to.AsTime().Sub(from.AsTime())) + ")"
	}
	if _, err := fmt.Fprintf(w, "DORA figures from %s to %s%s\n", fmtTime(from), fmtTime(to), window); err != nil {
		return err
	}
	svcs := resp.GetServices()
	if len(svcs) == 0 {
		_, err := fmt.Fprintln(w, "\nno services")
		return err
	}
	for _, s := range svcs {
		if err := printDeployStats(w, s.GetService(), s); err != nil {
			return err
		}
	}
	if len(svcs) > 1 {
		return printDeployStats(w, fmt.Sprintf("fleet (%s)", plural(len(svcs), "service")), resp.GetFleet())
	}
	return nil
}

func printDeployStats(w io.Writer, title string, s *v1.DeployStats) error {
	fmt.Fprintf(w, "\n%s: %s ended in the window", title, plural(int(s.GetRollouts()), "rollout"))
	if s.GetRollouts() > 0 {
		fmt.Fprintf(w, ": %d succeeded, %d failed, %d rolled back, %d superseded",
			s.GetSucceeded(), s.GetFailed(), s.GetRolledBack(), s.GetSuperseded())
		if n := s.GetConfigRollouts(); n > 0 {
			fmt.Fprintf(w, " (%s of a new spec)", plural(int(n), "config rollout"))
		}
	}
	fmt.Fprintln(w)

	var buf bytes.Buffer
	tw := newTable(&buf)
	row(tw, "  FIGURE", "VALUE", "P90", "N", "BAND")
	freq := "-"
	if s.GetDeployFrequencyBand() != "" {
		freq = statsFrequency(s.GetDeploysPerDay())
	}
	row(tw, "  deployment frequency", freq, "", "", orDash(s.GetDeployFrequencyBand()))
	durRow := func(name string, d *v1.DurationStats, n, band string) {
		med, p90 := "-", "-"
		if d.GetCount() > 0 {
			med, p90 = statsDuration(d.GetMedian().AsDuration()), statsDuration(d.GetP90().AsDuration())
		}
		if n == "" {
			n = strconv.Itoa(int(d.GetCount()))
		}
		row(tw, name, med, p90, n, band)
	}
	durRow("  lead time (commit → every host live)", s.GetLeadTime(), "", orDash(s.GetLeadTimeBand()))
	durRow("    CI (commit → release)", s.GetCommitToRelease(), "", "")
	durRow("    queue and approval (release → start)", s.GetReleaseToStart(), "", "")
	durRow("    rollout (start → every host live)", s.GetRollout(), "", "")
	durRow("      of which bake", s.GetBake(), "", "")

	bad := s.GetFailed() + s.GetRolledBack()
	cfr, cfrN := "-", ""
	if all := bad + s.GetSucceeded(); all > 0 {
		cfr = fmt.Sprintf("%.1f%%", 100*s.GetChangeFailureRate())
		cfrN = fmt.Sprintf("%d/%d", bad, all)
	}
	row(tw, "  change failure rate", cfr, "", cfrN, orDash(s.GetChangeFailureBand()))

	restored := s.GetTimeToRestore().GetCount()
	restoreN := ""
	if bad > restored {
		restoreN = fmt.Sprintf("%d (%d not restored)", restored, bad-restored)
	}
	durRow("  time to restore", s.GetTimeToRestore(), restoreN, orDash(s.GetRestoreBand()))
	row(tw, "  overall", "", "", "", orDash(s.GetOverallBand()))
	if err := tw.Flush(); err != nil {
		return err
	}
	// Rows whose last cells are empty would end in padding.
	for _, l := range strings.SplitAfter(buf.String(), "\n") {
		if l == "" {
			continue
		}
		if _, err := io.WriteString(w, strings.TrimRight(l, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// statsFrequency prints deployments per day in the unit that keeps the
// number readable: per day, else per week, else per month (30 days).
func statsFrequency(perDay float64) string {
	switch {
	case perDay <= 0:
		return "0/day"
	case perDay >= 1:
		return fmt.Sprintf("%.1f/day", perDay)
	case perDay*7 >= 1:
		return fmt.Sprintf("%.1f/week", perDay*7)
	default:
		return fmt.Sprintf("%.1f/month", perDay*30)
	}
}

// statsDuration prints a duration for people: 450ms, 42s, 4m12s, 3h05m,
// 2d4h (rounded to the last unit shown).
func statsDuration(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	if s := d.Round(time.Second); s < time.Minute {
		return fmt.Sprintf("%ds", int64(s/time.Second))
	} else if s < time.Hour {
		return fmt.Sprintf("%dm%02ds", int64(s/time.Minute), int64(s%time.Minute/time.Second))
	}
	if m := d.Round(time.Minute); m < statsDay {
		return fmt.Sprintf("%dh%02dm", int64(m/time.Hour), int64(m%time.Hour/time.Minute))
	}
	h := d.Round(time.Hour)
	days, hours := int64(h/statsDay), int64(h%statsDay/time.Hour)
	if hours == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, hours)
}
