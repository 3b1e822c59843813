package store

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// InstrumentKV wraps an etcd KV so that every request through it reports its
// latency and error to observe, with op one of "get", "put", "delete",
// "txn", "compact" (a transaction is timed at Commit). Install it the way
// etcd's namespace package is installed, before the client is shared:
//
//	cli.KV = store.InstrumentKV(cli.KV, observe)
//
// Everything that goes through the client's KV is observed: the Store, the
// Mirror's reads and the election's transactions (watches and leases are
// not; nor is GetStream, unused here). observe must be safe for concurrent
// use and must not block.
func InstrumentKV(kv clientv3.KV, observe func(op string, d time.Duration, err error)) clientv3.KV {
	return &observedKV{KV: kv, observe: observe}
}

// observedKV embeds the KV it wraps so that methods it does not time (the
// streaming GetStream) pass through.
type observedKV struct {
	clientv3.KV
	observe func(op string, d time.Duration, err error)
}

func (o *observedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	start := time.Now()
	r, err := o.KV.Put(ctx, key, val, opts...)
	o.observe("put", time.Since(start), err)
	return r, err
}

func (o *observedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	start := time.Now()
	r, err := o.KV.Get(ctx, key, opts...)
	o.observe("get", time.Since(start), err)
	return r, err
}

func (o *observedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	start := time.Now()
	r, err := o.KV.Delete(ctx, key, opts...)
	o.observe("delete", time.Since(start), err)
	return r, err
}

func (o *observedKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	start := time.Now()
	r, err := o.KV.Compact(ctx, rev, opts...)
	o.observe("compact", time.Since(start), err)
	return r, err
}

func (o *observedKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	name := "txn"
	switch {
	case op.IsGet():
		name = "get"
	case op.IsPut():
		name = "put"
	case op.IsDelete():
		name = "delete"
	}
	start := time.Now()
	r, err := o.KV.Do(ctx, op)
	o.observe(name, time.Since(start), err)
	return r, err
}

func (o *observedKV) Txn(ctx context.Context) clientv3.Txn {
	return &observedTxn{t: o.KV.Txn(ctx), observe: o.observe}
}

// observedTxn times Commit; If, Then and Else return it so Commit stays ours.
type observedTxn struct {
	t       clientv3.Txn
	observe func(op string, d time.Duration, err error)
}

func (o *observedTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { o.t = o.t.If(cs...); return o }
func (o *observedTxn) Then(ops ...clientv3.Op) clientv3.Txn { o.t = o.t.Then(ops...); return o }
func (o *observedTxn) Else(ops ...clientv3.Op) clientv3.Txn { o.t = o.t.Else(ops...); return o }

func (o *observedTxn) Commit() (*clientv3.TxnResponse, error) {
	start := time.Now()
	r, err := o.t.Commit()
	o.observe("txn", time.Since(start), err)
	return r, err
}
