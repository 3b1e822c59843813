package testkit

import (
	"context"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TxnCounter wraps an etcd KV and counts the transactions in flight at
// once and in all, for tests of limits on concurrent writes and of batch
// sizes: install it as the
// client's KV (cli.KV = &TxnCounter{KV: cli.KV}) before the code under test
// takes the client.
type TxnCounter struct {
	clientv3.KV
	now, most, total atomic.Int64
}

// Txns is how many transactions were committed (or tried) so far.
func (k *TxnCounter) Txns() int64 { return k.total.Load() }

// Most is the largest number of transactions seen in flight at once.
func (k *TxnCounter) Most() int64 { return k.most.Load() }

// Txn implements clientv3.KV.
func (k *TxnCounter) Txn(ctx context.Context) clientv3.Txn {
	return &countedTxn{Txn: k.KV.Txn(ctx), k: k}
}

type countedTxn struct {
	clientv3.Txn
	k *TxnCounter
}

func (t *countedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *countedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *countedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *countedTxn) Commit() (*clientv3.TxnResponse, error) {
	t.k.total.Add(1)
	n := t.k.now.Add(1)
	defer t.k.now.Add(-1)
	for {
		m := t.k.most.Load()
		if n <= m || t.k.most.CompareAndSwap(m, n) {
			break
		}
	}
	return t.Txn.Commit()
}
