package store

import (
	"context"
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

// SpendToken marks a one-time token used if it is still unused at revision
// rev (compare-and-swap): of two concurrent joins, one wins.
func (s *Store) SpendToken(ctx context.Context, t *v1.Token, rev int64) error {
	used := proto.Clone(t).(*v1.Token)
	used.Used = true
	val, err := marshal(used)
	if err != nil {
		return err
	}
	key := TokenKey(t.GetId())
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return fmt.Errorf("spend token %s: %w", t.GetId(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("token %s: %w", t.GetId(), ErrConflict)
	}
	return nil
}
