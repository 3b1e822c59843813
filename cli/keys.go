package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/fleetwave/fleetwave/internal/signing"
)

// keysCmd is `fleetwave keys`: release signing key pairs (local only, no
// coordinator call).
func (a *app) keysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Release signing keys (ed25519)"}
	var out string
	gen := &cobra.Command{
		Use:   "generate --out PREFIX",
		Short: "Make an ed25519 key pair: PREFIX.key (private, for release create --sign) and PREFIX.pub (for agents' --trusted-keys)",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageErrorf("--out must not be empty")
			}
			pubPath, keyPath := out+".pub", out+".key"
			for _, p := range []string{pubPath, keyPath} {
				if _, err := os.Lstat(p); err == nil {
					return fmt.Errorf("--out: %s exists: not overwriting it", p)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("--out: %w", err)
				}
			}
			pub, priv, err := signing.GenerateKey()
			if err != nil {
				return err
			}
			pk, err := signing.ParsePublicKey(pub)
			if err != nil {
				return err
			}
			if err := writeNew(keyPath, priv, 0o600); err != nil {
				return fmt.Errorf("--out: private key: %w", err)
			}
			if err := writeNew(pubPath, pub, 0o644); err != nil {
				os.Remove(keyPath) // no half pair
				return fmt.Errorf("--out: public key: %w", err)
			}
			fmt.Fprintf(a.stdout, "key id %s\n", signing.KeyID(pk))
			fmt.Fprintf(a.stdout, "wrote %s (private, mode 0600): sign with fleetwave release create --sign %s\n", keyPath, keyPath)
			fmt.Fprintf(a.stdout, "wrote %s (public): give it to agents with --trusted-keys %s\n", pubPath, pubPath)
			return nil
		}),
	}
	gen.Flags().StringVar(&out, "out", "", "path prefix of the two files to create")
	_ = gen.MarkFlagRequired("out")

	id := &cobra.Command{
		Use:   "id FILE.pub",
		Short: "Print the key id of a public key (as named in agents' refusals)",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			pk, err := signing.LoadPublicKey(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, signing.KeyID(pk))
			return nil
		}),
	}
	cmd.AddCommand(gen, id)
	return cmd
}

// writeNew creates path (never overwriting) with data and mode, durably.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil { // umask may have narrowed it
		f.Close()
		os.Remove(path)
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
