package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/fleetwave/fleetwave/internal/gossip"
)

func (a *app) gossipCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gossip", Short: "Gossip (memberlist) helpers"}
	var out string
	cmd.AddCommand(&cobra.Command{
		Use:   "keygen [--out FILE]",
		Short: "Make a gossip encryption key (base64 of 32 random bytes) for --gossip-key-file",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			key, err := gossip.GenerateKey()
			if err != nil {
				return err
			}
			if out == "" {
				fmt.Fprintln(a.stdout, key)
				return nil
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("gossip key file: %w", err)
			}
			if _, err := fmt.Fprintln(f, key); err != nil {
				f.Close()
				return fmt.Errorf("gossip key file %s: %w", out, err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("gossip key file %s: %w", out, err)
			}
			fmt.Fprintf(a.stdout, "wrote %s (mode 0600); give every agent and coordinator the same file\n", out)
			return nil
		}),
	})
	cmd.PersistentFlags().StringVar(&out, "out", "", "write the key to this new file (mode 0600) instead of stdout")
	return cmd
}
