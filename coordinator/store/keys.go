package store

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/fleetwave/fleetwave/internal/revocation"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Prefix is the root of Fleetwave's keyspace.
const Prefix = "/fleetwave/v1/"

// Key prefixes, each followed by ids separated by "/".
const (
	ServicesPrefix = Prefix + "services/" // <service> -> Service
	ReleasesPrefix = Prefix + "releases/" // <service>/<version> -> Release
	RolloutsPrefix = Prefix + "rollouts/" // <service>/<id> -> Rollout
	HostsPrefix    = Prefix + "hosts/"    // <host> -> Host (labels; no liveness)
	ConnsPrefix    = Prefix + "conns/"    // <host> -> coordinator name, on that coordinator's lease
	ReportsPrefix  = Prefix + "reports/"  // <host>/<service> -> ServiceReport
	EventsPrefix   = Prefix + "events/"   // <service>/<rollout>/<time>-<write>-<n> -> Event or EventBatch (EventKey; not mirrored)
	// CoordinatorsPrefix: <name> -> CoordinatorInfo, on that coordinator's
	// session lease (gone when it dies).
	CoordinatorsPrefix = Prefix + "coordinators/"
	// TokensPrefix: <id> -> Token (secret hashed).
	TokensPrefix = Prefix + "tokens/"
	// RevocationsPrefix: serial/<hex serial> and identity/<kind>/<name> ->
	// Revocation.
	RevocationsPrefix = Prefix + "revocations/"
	// BlackoutsPrefix: <id> -> Blackout (fleetwave freeze).
	BlackoutsPrefix = Prefix + "blackouts/"
	// ReleaseTombstonesPrefix: <service>/<version> -> ReleaseTombstone,
	// what is kept of a deleted release (not mirrored; its name does not
	// start with ReleasesPrefix, so coordinators from before it ignore it).
	ReleaseTombstonesPrefix = Prefix + "releasetombstones/"
	// AuditPrefix: <unix nanos>-<n> -> AuditEntry (not mirrored).
	AuditPrefix = Prefix + "audit/"
	// JoinedPrefix: <host> -> the id of the join token that last joined
	// it (not mirrored; kept when the host is removed).
	JoinedPrefix   = Prefix + "joined/"
	ElectionPrefix = Prefix + "leader"
)

// ServiceKey and the helpers below it make one object's key: its prefix
// above followed by its ids joined by "/".
func ServiceKey(name string) string         { return ServicesPrefix + name }
func ReleaseKey(service, ver string) string { return ReleasesPrefix + service + "/" + ver }
func RolloutKey(service, id string) string  { return RolloutsPrefix + service + "/" + id }
func HostKey(id string) string              { return HostsPrefix + id }
func JoinedKey(host string) string          { return JoinedPrefix + host }
func ConnKey(id string) string              { return ConnsPrefix + id }
func ReportKey(host, service string) string {
	return ReportsPrefix + host + "/" + service
}

// ReleaseTombstoneKey is where what is kept of a deleted release is
// stored.
func ReleaseTombstoneKey(service, ver string) string {
	return ReleaseTombstonesPrefix + service + "/" + ver
}

// CoordinatorKey is where a coordinator registers itself.
func CoordinatorKey(name string) string { return CoordinatorsPrefix + name }

// SplitRolloutsPrefix holds rollouts in the split layout (rollouts.go):
// <service>/<id> -> the head (a Rollout whose waves have no hosts) and
// <service>/<id>/<part> -> a part (a Rollout holding only its waves' index
// and a run of their hosts). Coordinators from before the split layout
// ignore these keys (its name does not start with RolloutsPrefix).
const SplitRolloutsPrefix = Prefix + "rolloutsplit/"

// RolloutHeadKey is where a split rollout's head is stored.
func RolloutHeadKey(service, id string) string { return SplitRolloutsPrefix + service + "/" + id }

// RolloutPartKey is where a split rollout's part n (from 0) is stored.
func RolloutPartKey(service, id string, n int) string {
	return fmt.Sprintf("%s/%04d", RolloutHeadKey(service, id), n)
}

// SplitKey returns the parts of key after prefix.
func SplitKey(key, prefix string) []string {
	return strings.Split(strings.TrimPrefix(key, prefix), "/")
}

// EventKey is where one write's event (or batch) number n is stored:
//
//	<service>/<rollout>/<unix nanos, %020d>-<write>-<n, eventIndex>
//
// It orders a service's events by rollout, then time, then write, then
// position in the write. write (eventWrite) names the write: the writing
// store's random id and its count of event writes, so two writes never
// share a key (an event overwritten is an event lost), even two in one
// nanosecond (a coarse clock) or from two coordinators; one store's writes
// of one nanosecond sort in the order written. Keys of older versions,
// <time>-<n, %06d>, hold their values as before and list in time order
// among these (only values are decoded, never keys).
func EventKey(e *v1.Event, write string, n int) string {
	rid := e.GetRolloutId()
	if rid == "" {
		rid = "000000"
	}
	return fmt.Sprintf("%s%s/%s/%020d-%s-%s", EventsPrefix, e.GetService(), rid, e.GetAt().AsTime().UnixNano(), write, eventIndex(n))
}

// eventIndex spells n (0 or more) so that keys sort by number, whatever
// its digits: a letter for how many (a: 1 ... s: 19, an int's most), then
// the digits. Six fixed digits, before, put a write's 1,000,000th event
// before its 999,999th.
func eventIndex(n int) string {
	d := strconv.Itoa(n)
	return string(rune('a'+len(d)-1)) + d
}

// EventsPrefixFor is the key prefix of a service's events (every service
// when service is ""; one rollout's when rolloutID is set too).
func EventsPrefixFor(service, rolloutID string) string {
	p := EventsPrefix
	if service != "" {
		p += service + "/"
		if rolloutID != "" {
			p += rolloutID + "/"
		}
	}
	return p
}

// TokenKey is where a token is stored.
func TokenKey(id string) string { return TokensPrefix + id }

// RevocationKey is where a revocation is stored: by serial, or (serial
// "") by identity kind and name.
func RevocationKey(r *v1.Revocation) string {
	return RevocationsPrefix + revocation.Key(r)
}

// BlackoutKey is where a blackout is stored.
func BlackoutKey(id string) string { return BlackoutsPrefix + id }
