package store

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// CreateToken stores a new token; ErrExists if the id is taken.
func (s *Store) CreateToken(ctx context.Context, t *v1.Token) error {
	val, err := marshal(t)
	if err != nil {
		return err
	}
	key := TokenKey(t.GetId())
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return fmt.Errorf("create token %s: %w", t.GetId(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("token %s: %w", t.GetId(), ErrExists)
	}
	return nil
}

// DeleteToken removes a token; ErrNotFound if there is none.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	resp, err := s.c.Delete(ctx, TokenKey(id))
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	return nil
}

// ErrJoined is returned when a join token bound to no host names a host
// that joined before (or has a record): only a token bound to it may join
// it again.
var ErrJoined = errors.New("host joined before")

// SpendToken marks a one-time join token used for host if it is still
// unused at revision rev (compare-and-swap: of two concurrent joins, one
// wins), and records that host joined (JoinedKey). A token bound to no
// host is spent only on a host that never joined and has no record
// (ErrJoined otherwise), in the same transaction: a leaked unbound token
// cannot take over a host between its join and its first connection, nor
// a removed host whose certificate is still valid.
func (s *Store) SpendToken(ctx context.Context, t *v1.Token, rev int64, host string) error {
	used := proto.Clone(t).(*v1.Token)
	used.Used = true
	val, err := marshal(used)
	if err != nil {
		return err
	}
	key := TokenKey(t.GetId())
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
	if t.GetHostId() == "" {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(JoinedKey(host)), "=", 0), clientv3.Compare(clientv3.CreateRevision(HostKey(host)), "=", 0))
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, val), clientv3.OpPut(JoinedKey(host), t.GetId())).
		Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return fmt.Errorf("spend token %s: %w", t.GetId(), err)
	}
	if resp.Succeeded {
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && kvs[0].ModRevision == rev {
		return fmt.Errorf("host %s: %w", host, ErrJoined)
	}
	return fmt.Errorf("token %s: %w", t.GetId(), ErrConflict)
}
