package gossip

import (
	"flag"
	"strings"
)

// AddFlags registers the gossip flags shared by the agent and the
// coordinator (--gossip-listen, --gossip-advertise, --gossip-join,
// --gossip-key-file, --gossip-label, --gossip-insecure) and returns a
// function that, after parsing, gives the Config they describe. Gossip is
// off when --gossip-listen is empty.
func AddFlags(fs *flag.FlagSet) func() Config {
	var c Config
	var join string
	fs.StringVar(&c.Bind, "gossip-listen", "", "gossip (memberlist) address ip:port, TCP and UDP; empty turns gossip off")
	fs.StringVar(&c.Advertise, "gossip-advertise", "", "gossip address others reach this node at (default: the listen address)")
	fs.StringVar(&join, "gossip-join", "", "comma-separated gossip addresses of nodes to join (coordinators or agents)")
	fs.StringVar(&c.KeyFile, "gossip-key-file", "", "file with the shared gossip key (base64 of 32 bytes, from: fleetwave gossip keygen)")
	fs.StringVar(&c.Label, "gossip-label", "fleetwave", "cluster label: nodes with another label are not joined")
	fs.BoolVar(&c.Insecure, "gossip-insecure", false, "allow plaintext gossip without a key (testing only)")
	return func() Config {
		out := c
		for _, s := range strings.Split(join, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out.Join = append(out.Join, s)
			}
		}
		return out
	}
}

// Enabled reports whether the config turns gossip on.
func (c Config) Enabled() bool { return c.Bind != "" }
