package testcluster

// Link is a network path a test can cut and restore: a NetNS (veth pair
// into a network namespace) or a Proxy (a TCP proxy in the test process).
// Cut and Restore are idempotent and safe to call from any goroutine.
type Link interface {
	// Cut stops traffic on the link.
	Cut() error
	// Restore lets traffic through again.
	Restore() error
}

var (
	_ Link = (*NetNS)(nil)
	_ Link = (*Proxy)(nil)
)
