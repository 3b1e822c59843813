package store

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// ListHosts returns every host record.
func (s *Store) ListHosts(ctx context.Context) ([]*v1.Host, error) {
	return list(ctx, s, HostsPrefix, func() *v1.Host { return &v1.Host{} })
}

// PutHost writes a host record (on connect, when its labels change).
func (s *Store) PutHost(ctx context.Context, h *v1.Host) error {
	val, err := marshal(h)
	if err != nil {
		return err
	}
	if _, err := s.c.Put(ctx, HostKey(h.GetId()), val); err != nil {
		return fmt.Errorf("put host %s: %w", h.GetId(), err)
	}
	return nil
}

// PutCoordinator registers a running coordinator on its session lease.
func (s *Store) PutCoordinator(ctx context.Context, info *v1.CoordinatorInfo, lease clientv3.LeaseID) error {
	val, err := marshal(info)
	if err != nil {
		return err
	}
	if _, err := s.c.Put(ctx, CoordinatorKey(info.GetName()), val, clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("register coordinator %s: %w", info.GetName(), err)
	}
	return nil
}

// PutConn marks a host connected to coordinator `by`, on lease (0 = none).
func (s *Store) PutConn(ctx context.Context, host, by string, lease clientv3.LeaseID) error {
	if _, err := s.c.Put(ctx, ConnKey(host), by, clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("put conn %s: %w", host, err)
	}
	return nil
}

// DeleteConn marks a host disconnected, if `by` still holds its connection.
func (s *Store) DeleteConn(ctx context.Context, host, by string) error {
	key := ConnKey(host)
	_, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", by)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("delete conn %s: %w", host, err)
	}
	return nil
}

// PutReport records what a host reported for a service.
func (s *Store) PutReport(ctx context.Context, host string, r *v1.ServiceReport) error {
	val, err := marshal(r)
	if err != nil {
		return err
	}
	if _, err := s.c.Put(ctx, ReportKey(host, r.GetService()), val); err != nil {
		return fmt.Errorf("put report %s/%s: %w", host, r.GetService(), err)
	}
	return nil
}

// HostReport is one host's report for PutReports.
type HostReport struct {
	Host   string
	Report *v1.ServiceReport
}

// ReportBytes is about what a report adds to a PutReports transaction's
// request; a batch's reports add up to at most MaxTxnBytes, unless it is
// one report.
func ReportBytes(host string, r *v1.ServiceReport) int {
	return proto.Size(r) + len(ReportKey(host, r.GetService())) + len(HostKey(host))
}

// ReportsPut is what PutReports did: how many reports it wrote, in how
// many transactions (one, or two when a host's record was gone), and the
// revision of the one that wrote them.
type ReportsPut struct {
	Written, Txns int
	Rev           int64
}

// PutReports writes reports in one transaction (at most Batch, and
// MaxTxnBytes of them unless one: ReportBytes).
// A report is written only while its host's record exists, so a report
// still queued when its host was removed (DeleteHost) does not bring back
// report keys of a deleted host. The transaction guards the batch as a
// whole (every host's record exists: the reports are written); only if a
// host's record is gone is the batch written again with a guard per
// report (a nested transaction each, which costs the client and etcd
// more than half as many allocations again: BenchmarkPutReports).
func (s *Store) PutReports(ctx context.Context, reps []HostReport) (ReportsPut, error) {
	if len(reps) > s.Batch() {
		return ReportsPut{}, fmt.Errorf("put reports: %d in one batch, at most %d", len(reps), s.Batch())
	}
	cmps := make([]clientv3.Cmp, 0, len(reps))
	puts := make([]clientv3.Op, 0, len(reps))
	size := 0
	for _, hr := range reps {
		val, err := marshal(hr.Report)
		if err != nil {
			return ReportsPut{}, err
		}
		key, host := ReportKey(hr.Host, hr.Report.GetService()), HostKey(hr.Host)
		if size += len(val) + len(key) + len(host); size > MaxTxnBytes && len(reps) > 1 {
			return ReportsPut{}, fmt.Errorf("put reports: %d in one batch, over %d bytes (etcd's --max-request-bytes is 1.5 MiB by default)", len(reps), MaxTxnBytes)
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(host), ">", 0))
		puts = append(puts, clientv3.OpPut(key, val))
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(puts...).Commit()
	if err != nil {
		return ReportsPut{Txns: 1}, fmt.Errorf("put %d reports: %w", len(reps), err)
	}
	if resp.Succeeded {
		return ReportsPut{Written: len(reps), Txns: 1, Rev: resp.Header.GetRevision()}, nil
	}
	guarded := make([]clientv3.Op, len(puts))
	for i := range puts {
		guarded[i] = clientv3.OpTxn(cmps[i:i+1], puts[i:i+1], nil)
	}
	resp, err = s.c.Txn(ctx).Then(guarded...).Commit()
	if err != nil {
		return ReportsPut{Txns: 2}, fmt.Errorf("put %d reports, a guard each: %w", len(reps), err)
	}
	put := ReportsPut{Txns: 2, Rev: resp.Header.GetRevision()}
	for _, r := range resp.Responses {
		if r.GetResponseTxn().GetSucceeded() {
			put.Written++
		}
	}
	return put, nil
}

// ErrConnected is returned when a host to remove is connected.
var ErrConnected = errors.New("host is connected")

// DeleteHost removes a host's record and reports if it is not connected
// (no connection record), in one transaction.
func (s *Store) DeleteHost(ctx context.Context, id string) error {
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(ConnKey(id)), "=", 0), clientv3.Compare(clientv3.CreateRevision(HostKey(id)), ">", 0)).
		Then(clientv3.OpDelete(HostKey(id)), clientv3.OpDelete(ReportsPrefix+id+"/", clientv3.WithPrefix())).
		Else(clientv3.OpGet(ConnKey(id))).
		Commit()
	if err != nil {
		return fmt.Errorf("remove host %s: %w", id, err)
	}
	if !resp.Succeeded {
		if len(resp.Responses) > 0 && len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
			return fmt.Errorf("remove host %s: %w (stop its agent first)", id, ErrConnected)
		}
		return fmt.Errorf("host %s: %w", id, ErrNotFound)
	}
	return nil
}
