package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func (a *app) serviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Apply, list and show services",
	}
	var file string
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update a service from a YAML spec (checked locally first)",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			s, err := a.loadSpec(cmd, file)
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, "apply service "+s.GetName(), func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ApplyServiceResponse, error) {
				return c.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: s})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			svc := resp.GetService()
			rev := rollout.SpecName(svc.GetSpecRevision())
			switch {
			case resp.GetCreated():
				fmt.Fprintf(a.stdout, "service %s created (%s)\n", s.GetName(), rev)
				return nil
			case resp.GetUnchanged():
				fmt.Fprintf(a.stdout, "service %s unchanged (%s)\n", s.GetName(), rev)
				return nil
			}
			fmt.Fprintf(a.stdout, "service %s updated: %s\n", s.GetName(), rev)
			if r := resp.GetRollout(); r != nil {
				what := "rollout"
				switch {
				case r.GetRemove():
					what = "removal"
				case rollout.IsConfig(r):
					what = "config rollout"
				}
				fmt.Fprintf(a.stdout, "%s %s started: %s%s, %s; follow it with: fleetwave rollout watch %s\n",
					what, r.GetId(), rollout.Describe(r), changesNote(r.GetSpecChanges()),
					strings.ToLower(rolloutState(r.GetState())), s.GetName())
			}
			if n := resp.GetNote(); n != "" {
				fmt.Fprintln(a.stdout, n)
			}
			return nil
		}),
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "service spec file (YAML or JSON; - for stdin)")
	_ = apply.MarkFlagRequired("file")

	list := &cobra.Command{
		Use:   "list",
		Short: "List services",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "list services", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListServicesResponse, error) {
				return c.ListServices(ctx, &v1.ListServicesRequest{})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "NAME", "MODE", "STABLE", "SPEC", "FROZEN", "STATE", "LAST ROLLOUT", "SELECTOR")
			for _, s := range resp.GetServices() {
				st := s.GetStatus()
				row(tw, s.GetSpec().GetName(), mode(s.GetSpec()), orDash(st.GetStableVersion()), specColumn(s),
					yesNo(st.GetFrozen()), serviceState(s), orDash(st.GetLastRolloutId()), fmtLabels(s.GetSpec().GetSelector()))
			}
			return tw.Flush()
		}),
	}

	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a service: its status and spec",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "get service "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.GetServiceResponse, error) {
				return c.GetService(ctx, &v1.GetServiceRequest{Name: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp.GetService())
			}
			return printService(a.stdout, resp.GetService())
		}),
	}
	unfreeze := &cobra.Command{
		Use:   "unfreeze NAME",
		Short: "Let automatic rollouts start again after a failed rollout froze the service",
		Long: "Unfreeze clears the freeze a failed rollout put on a service. The release that failed is\n" +
			"not retried; the next release created rolls out (in auto mode at once).",
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "unfreeze service "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.UnfreezeServiceResponse, error) {
				return c.UnfreezeService(ctx, &v1.UnfreezeServiceRequest{Name: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp.GetService())
			}
			fmt.Fprintf(a.stdout, "service %s unfrozen: stable %s; the next release rolls out\n",
				args[0], orDash(resp.GetService().GetStatus().GetStableVersion()))
			return nil
		}),
	}
	var force bool
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove a service from its hosts in waves, then delete it (admin; its history stays)",
		Long: "Delete stops the service on its hosts wave by wave (drained as any stop: pre_stop and\n" +
			"shutdown_delay), removes its releases and PID files there (logs are kept), and then deletes the\n" +
			"service. Its rollouts, releases and events stay readable; service apply creates the name anew.\n" +
			"Refused while a rollout runs unless --force (the rollout is superseded). Follow it with\n" +
			"fleetwave rollout watch NAME.",
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "delete service "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.DeleteServiceResponse, error) {
				return c.DeleteService(ctx, &v1.DeleteServiceRequest{Name: args[0], Force: force})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			r := resp.GetRollout()
			fmt.Fprintf(a.stdout, "service %s: removal %s, %s, %s; follow it with: fleetwave rollout watch %s\n",
				args[0], r.GetId(), plural(rollout.RolloutHosts(r), "host"), strings.ToLower(rolloutState(r.GetState())), args[0])
			return nil
		}),
	}
	del.Flags().BoolVar(&force, "force", false, "supersede a rollout in flight instead of refusing")
	cmd.AddCommand(apply, list, get, unfreeze, del)
	return cmd
}

// serviceState is "deleted", "removing", "frozen" or "ok".
func serviceState(s *v1.Service) string {
	st := s.GetStatus()
	switch {
	case st.GetRemoved():
		return "deleted"
	case st.GetRemoving():
		return "removing"
	case st.GetFrozen():
		return "frozen"
	}
	return "ok"
}

// loadSpec reads, parses and validates a spec file. Its errors name the
// file and, one per line, every field and value that is wrong.
func (a *app) loadSpec(cmd *cobra.Command, file string) (*v1.ServiceSpec, error) {
	var (
		data []byte
		err  error
	)
	name := file
	if file == "-" {
		name = "<stdin>"
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), spec.MaxSpecSize+1))
	} else {
		data, err = readFileLimited(file, spec.MaxSpecSize+1)
	}
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	s, err := spec.Parse(data)
	if err == nil {
		err = spec.Validate(s)
	}
	if err != nil {
		what := "invalid spec"
		if errors.Is(err, spec.ErrSyntax) {
			what = "cannot parse spec"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s:", what, name)
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(&b, "\n  %s: %s", name, line)
		}
		return nil, errors.New(b.String())
	}
	return s, nil
}

func readFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

func mode(s *v1.ServiceSpec) string {
	if m := s.GetRollout().GetMode(); m != "" {
		return m
	}
	return spec.ModeAuto
}

func frozen(st *v1.ServiceStatus) string {
	if !st.GetFrozen() {
		return "no"
	}
	if st.GetFrozenReason() == "" {
		return "yes"
	}
	return "yes: " + st.GetFrozenReason()
}

// specColumn is the spec revision, and the one hosts run when it differs:
// "5", "5 (hosts 4)".
func specColumn(s *v1.Service) string {
	rev, st := s.GetSpecRevision(), s.GetStatus()
	if rev == 0 {
		return "-"
	}
	if st.GetStableSpec() != nil && st.GetStableSpecRevision() != rev {
		return fmt.Sprintf("%d (hosts %d)", rev, st.GetStableSpecRevision())
	}
	return strconv.FormatInt(rev, 10)
}

// changesNote is " (changes run.env, checks)" or "".
func changesNote(changes []string) string {
	if len(changes) == 0 {
		return ""
	}
	return " (changes " + strings.Join(changes, ", ") + ")"
}

func printService(w io.Writer, s *v1.Service) error {
	st := s.GetStatus()
	tw := newTable(w)
	row(tw, "name:", s.GetSpec().GetName())
	row(tw, "mode:", mode(s.GetSpec()))
	stable := orDash(st.GetStableVersion())
	if st.GetStableVersion() != "" && st.GetStableSpec() != nil {
		stable += " with " + rollout.SpecName(st.GetStableSpecRevision())
	}
	row(tw, "stable version:", fmt.Sprintf("%s (generation %d)", stable, st.GetStableGeneration()))
	spec := rollout.SpecName(s.GetSpecRevision())
	if st.GetStableSpec() != nil && st.GetStableSpecRevision() != s.GetSpecRevision() {
		if ch := specdiff.HostChanges(st.GetStableSpec(), s.GetSpec()); len(ch) > 0 {
			spec += fmt.Sprintf(" (hosts run %s; it changes %s)", rollout.SpecName(st.GetStableSpecRevision()), strings.Join(ch, ", "))
		}
	}
	row(tw, "spec:", spec)
	row(tw, "frozen:", frozen(st))
	switch {
	case st.GetRemoved():
		row(tw, "deleted:", fmt.Sprintf("%s by %s (removal %s; service apply creates it anew)", fmtTime(st.GetRemovedAt()), orDash(st.GetRemovedBy()), st.GetLastRolloutId()))
	case st.GetRemoving():
		row(tw, "deleting:", fmt.Sprintf("asked by %s (removal %s: fleetwave rollout watch %s)", orDash(st.GetRemovedBy()), st.GetLastRolloutId(), s.GetSpec().GetName()))
	}
	row(tw, "last rollout:", orDash(st.GetLastRolloutId()))
	row(tw, "updated:", fmtTime(s.GetUpdatedAt()))
	if err := tw.Flush(); err != nil {
		return err
	}
	js, err := jsonOpts.Marshal(s.GetSpec())
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return fmt.Errorf("encode spec as YAML: %w", err)
	}
	fmt.Fprintln(w, "spec:")
	for _, line := range strings.Split(strings.TrimRight(string(y), "\n"), "\n") {
		fmt.Fprintf(w, "  %s\n", line)
	}
	return nil
}
