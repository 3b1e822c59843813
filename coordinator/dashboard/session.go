package dashboard

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// session is one browser's login: the operator token it logged in with
// (kept on the server, never sent back to the browser), who that token is
// to the gRPC API, and the session's own CSRF token.
type session struct {
	id       string
	csrf     string
	token    string // "" in insecure mode
	identity string
	role     string
	expires  time.Time
	seq      uint64 // order of login, for dropping an identity's oldest
	// conn is the session's own connection to the gRPC API: calls without
	// a client certificate are limited per connection on the listener
	// (--max-calls-per-conn-without-cert), so sessions do not share one.
	conn *grpc.ClientConn
}

// errTooManySessions refuses a login while Limits.MaxSessions live.
var errTooManySessions = errors.New("too many dashboard sessions")

// errTooManyStreams refuses a live page past Limits.MaxStreamsPerIdentity.
var errTooManyStreams = errors.New("too many live pages open for this identity")

// sessions holds the live sessions and the live-page count per identity.
type sessions struct {
	lim Limits

	mu      sync.Mutex
	byID    map[string]*session
	seq     uint64
	streams map[string]int // identity -> open live pages
}

func newSessions(lim Limits) *sessions {
	return &sessions{lim: lim, byID: map[string]*session{}, streams: map[string]int{}}
}

// randomToken is 32 random bytes, URL-safe base64.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// maxSessionsPerIdentity is how many sessions one identity (token) holds:
// a new login past it ends that identity's oldest session, so one token
// logging in again and again cannot take every session.
const maxSessionsPerIdentity = 8

// add stores a new session; expired ones are dropped first, and the
// identity's oldest past maxSessionsPerIdentity. At Limits.MaxSessions it
// is refused and s.conn is left to the caller.
func (ss *sessions) add(s *session, now time.Time) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.pruneLocked(now)
	var mine []*session
	for _, o := range ss.byID {
		if o.identity == s.identity {
			mine = append(mine, o)
		}
	}
	if len(mine) >= maxSessionsPerIdentity {
		sort.Slice(mine, func(i, j int) bool { return mine[i].seq < mine[j].seq })
		for _, o := range mine[:len(mine)-maxSessionsPerIdentity+1] {
			delete(ss.byID, o.id)
			closeConn(o)
		}
	}
	if len(ss.byID) >= ss.lim.MaxSessions {
		return fmt.Errorf("%w: %d live (max-sessions %d); log out elsewhere or wait until one expires", errTooManySessions, len(ss.byID), ss.lim.MaxSessions)
	}
	s.id, s.csrf = randomToken(), randomToken()
	s.expires = now.Add(ss.lim.SessionTTL)
	ss.seq++
	s.seq = ss.seq
	ss.byID[s.id] = s
	return nil
}

// pruneLocked closes and drops expired sessions.
func (ss *sessions) pruneLocked(now time.Time) {
	for id, s := range ss.byID {
		if !now.Before(s.expires) {
			delete(ss.byID, id)
			closeConn(s)
		}
	}
}

func closeConn(s *session) {
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

// get returns the live session with this id.
func (ss *sessions) get(id string, now time.Time) (*session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	if !ok {
		return nil, false
	}
	if !now.Before(s.expires) {
		delete(ss.byID, id)
		closeConn(s)
		return nil, false
	}
	return s, true
}

// remove ends a session (logout, or its token no longer works).
func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s, ok := ss.byID[id]; ok {
		delete(ss.byID, id)
		closeConn(s)
	}
}

// closeAll ends every session (shutdown).
func (ss *sessions) closeAll() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id, s := range ss.byID {
		delete(ss.byID, id)
		closeConn(s)
	}
}

// count is the number of sessions stored (expired ones included until pruned).
func (ss *sessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.byID)
}

// openStream counts a live page for identity; release it with the returned func.
func (ss *sessions) openStream(identity string) (func(), error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if n := ss.streams[identity]; n >= ss.lim.MaxStreamsPerIdentity {
		return nil, fmt.Errorf("%w: %s has %d (max-streams-per-identity %d)", errTooManyStreams, identity, n, ss.lim.MaxStreamsPerIdentity)
	}
	ss.streams[identity]++
	var once sync.Once
	return func() {
		once.Do(func() {
			ss.mu.Lock()
			defer ss.mu.Unlock()
			if ss.streams[identity]--; ss.streams[identity] <= 0 {
				delete(ss.streams, identity)
			}
		})
	}, nil
}

// csrfOK compares a form's CSRF token with the session's in constant time.
func (s *session) csrfOK(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) == 1
}

// Failed logins are limited per address: loginFailureBurst, then one
// every loginFailureEvery. A login from a limited address is refused
// before its token is checked, right or wrong.
const (
	loginFailureBurst = 10
	loginFailureEvery = 6 * time.Second
	// maxLoginAddresses bounds the addresses tracked; past it, new ones
	// share one allowance.
	maxLoginAddresses = 4096
)
