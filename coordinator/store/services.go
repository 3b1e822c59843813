package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// GetService returns a service and its mod revision.
func (s *Store) GetService(ctx context.Context, name string) (*v1.Service, int64, error) {
	return get(ctx, s, ServiceKey(name), &v1.Service{})
}

// ListServices returns every service.
func (s *Store) ListServices(ctx context.Context) ([]*v1.Service, error) {
	return list(ctx, s, ServicesPrefix, func() *v1.Service { return &v1.Service{} })
}

// Applied is what ApplySpec did.
type Applied struct {
	Service *v1.Service
	// Created: the service was new. Unchanged: the spec was the one stored
	// (nothing was written).
	Created, Unchanged bool
	// Rev is the etcd revision of the write (0 when unchanged).
	Rev int64
}

// ApplySpec creates a service or replaces its spec, keeping its status. A
// spec that differs from the stored one gets the next spec revision (the
// first is 1); the same spec again changes nothing. A service being
// deleted is refused (ErrBeingDeleted); a deleted one is created anew with
// the status recreate makes of the deleted one's (Created; its spec
// revisions go on). It retries on concurrent updates.
func (s *Store) ApplySpec(ctx context.Context, spec *v1.ServiceSpec, now time.Time, recreate func(*v1.ServiceStatus) *v1.ServiceStatus) (Applied, error) {
	key := ServiceKey(spec.GetName())
	for range 10 {
		var out Applied
		cur, rev, err := s.GetService(ctx, spec.GetName())
		switch {
		case errors.Is(err, ErrNotFound):
			cur, rev, out.Created = &v1.Service{Status: &v1.ServiceStatus{}}, 0, true
		case err != nil:
			return Applied{}, err
		}
		st := cur.GetStatus()
		switch {
		case st.GetRemoving() && !st.GetRemoved():
			return Applied{}, fmt.Errorf("apply service %s: %w (rollout %s): wait for the removal to end", spec.GetName(), ErrBeingDeleted, st.GetLastRolloutId())
		case st.GetRemoved():
			out.Created = true
		case !out.Created && proto.Equal(cur.GetSpec(), spec):
			return Applied{Service: cur, Unchanged: true}, nil
		}
		next := proto.Clone(cur).(*v1.Service)
		if st.GetRemoved() {
			next.Status = recreate(st)
		}
		next.Spec = spec
		next.SpecRevision = cur.GetSpecRevision() + 1
		next.UpdatedAt = tsOf(now)
		val, err := marshal(next)
		if err != nil {
			return Applied{}, err
		}
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, val)).Commit()
		if err != nil {
			return Applied{}, fmt.Errorf("apply service %s: %w", spec.GetName(), err)
		}
		if resp.Succeeded {
			out.Service, out.Rev = next, resp.Header.Revision
			return out, nil
		}
	}
	return Applied{}, fmt.Errorf("apply service %s: %w", spec.GetName(), ErrConflict)
}

// CreateRelease stores a release and returns the revision of the write; a
// release is immutable, so an existing version is ErrExists, and the
// version of a deleted release (its ReleaseTombstone) is never created
// again: ErrTombstoned (tombstoneErr), decided in the same transaction as
// the write.
func (s *Store) CreateRelease(ctx context.Context, r *v1.Release) (int64, error) {
	key, tkey := ReleaseKey(r.GetService(), r.GetVersion()), ReleaseTombstoneKey(r.GetService(), r.GetVersion())
	val, err := marshal(r)
	if err != nil {
		return 0, err
	}
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0), clientv3.Compare(clientv3.CreateRevision(tkey), "=", 0)).
		Then(clientv3.OpPut(key, val)).Else(clientv3.OpGet(key, clientv3.WithCountOnly()), clientv3.OpGet(tkey)).Commit()
	if err != nil {
		return 0, fmt.Errorf("create release %s/%s: %w", r.GetService(), r.GetVersion(), err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if resp.Responses[0].GetResponseRange().GetCount() > 0 {
		return 0, fmt.Errorf("release %s/%s: %w", r.GetService(), r.GetVersion(), ErrExists)
	}
	t := &v1.ReleaseTombstone{}
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
		if err := proto.Unmarshal(kvs[0].Value, t); err != nil {
			return 0, fmt.Errorf("release %s/%s: tombstone: %w", r.GetService(), r.GetVersion(), err)
		}
	}
	return 0, tombstoneErr(r, t)
}

// CheckReleaseTombstone refuses (ErrTombstoned, tombstoneErr) the version
// of a deleted release; store.CreateRelease checks again in its
// transaction.
func (s *Store) CheckReleaseTombstone(ctx context.Context, r *v1.Release) error {
	t, _, err := get(ctx, s, ReleaseTombstoneKey(r.GetService(), r.GetVersion()), &v1.ReleaseTombstone{})
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("release %s/%s: %w", r.GetService(), r.GetVersion(), err)
	}
	return tombstoneErr(r, t)
}

// tombstoneErr is the refusal of r, whose version was deleted (t): it
// names the version, when it was deleted, its artifact and r's, and what
// to do instead. The version is not created again with any artifact:
// agents key unpacked artifacts by version (one may hold the old one
// under it), and a version created again would be the newest release and
// roll out at once, to a release older than the rollout retention.
func tombstoneErr(r *v1.Release, t *v1.ReleaseTombstone) error {
	return fmt.Errorf("release %s/%s: %w: version %s was deleted at %s (artifact sha256 %s; this release's is %s) and is never created again; "+
		"to run that artifact again, create it under a new version",
		r.GetService(), r.GetVersion(), ErrTombstoned, r.GetVersion(), t.GetDeletedAt().AsTime().UTC().Format(time.RFC3339), t.GetSha256(), r.GetArtifact().GetSha256())
}

// GetReleaseTombstone returns what is kept of a deleted release
// (ErrNotFound: none).
func (s *Store) GetReleaseTombstone(ctx context.Context, service, version string) (*v1.ReleaseTombstone, error) {
	t, _, err := get(ctx, s, ReleaseTombstoneKey(service, version), &v1.ReleaseTombstone{})
	return t, err
}

// DeleteRelease deletes a stored release, compare-and-swap on rev (the
// mod revision it was read at), fenced, and writes its tombstone
// (ReleaseTombstone: service, version, artifact sha256, deletedAt) in the
// same transaction. It returns the revision of the write; a lost fence is
// ErrNotLeader, a lost race (or a release gone) ErrConflict.
func (s *Store) DeleteRelease(ctx context.Context, f *Fence, r *v1.Release, rev int64, deletedAt time.Time) (int64, error) {
	if r.GetService() == "" || r.GetVersion() == "" || rev == 0 {
		return 0, fmt.Errorf("delete release %q/%q at revision %d: want a stored release", r.GetService(), r.GetVersion(), rev)
	}
	key := ReleaseKey(r.GetService(), r.GetVersion())
	tomb, err := marshal(&v1.ReleaseTombstone{Service: r.GetService(), Version: r.GetVersion(), Sha256: r.GetArtifact().GetSha256(), DeletedAt: tsOf(deletedAt)})
	if err != nil {
		return 0, err
	}
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(key), "=", rev))
	resp, err := s.c.Txn(ctx).If(cmps...).
		Then(clientv3.OpDelete(key), clientv3.OpPut(ReleaseTombstoneKey(r.GetService(), r.GetVersion()), tomb)).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("delete release %s/%s: %w", r.GetService(), r.GetVersion(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("delete release %s/%s: %w", r.GetService(), r.GetVersion(), fenceErr(f, resp))
	}
	return resp.Header.Revision, nil
}

// UpdateRelease replaces a stored release, compare-and-swap on rev (the
// mod revision it was read at), fenced when f is set: the leader marking
// a release's artifact pruned (f set), or release create restoring one
// (nil). It returns the revision of the write; a lost fence is
// ErrNotLeader, a lost race (or a release gone) ErrConflict.
func (s *Store) UpdateRelease(ctx context.Context, f *Fence, r *v1.Release, rev int64) (int64, error) {
	key := ReleaseKey(r.GetService(), r.GetVersion())
	val, err := marshal(r)
	if err != nil {
		return 0, err
	}
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(key), "=", rev))
	resp, err := s.c.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, val)).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("update release %s/%s: %w", r.GetService(), r.GetVersion(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("update release %s/%s: %w", r.GetService(), r.GetVersion(), fenceErr(f, resp))
	}
	return resp.Header.Revision, nil
}

// GetRelease returns one release.
func (s *Store) GetRelease(ctx context.Context, service, version string) (*v1.Release, error) {
	r, _, err := get(ctx, s, ReleaseKey(service, version), &v1.Release{})
	return r, err
}

// ListReleases returns the releases of a service.
func (s *Store) ListReleases(ctx context.Context, service string) ([]*v1.Release, error) {
	return list(ctx, s, ReleasesPrefix+service+"/", func() *v1.Release { return &v1.Release{} })
}

// PutService replaces a service (fenced, compare-and-swap on serviceRev),
// e.g. to unfreeze it, with the events that record why. It returns the
// revision of the write.
func (s *Store) PutService(ctx context.Context, f *Fence, svc *v1.Service, serviceRev int64, events ...*v1.Event) (int64, error) {
	skey := ServiceKey(svc.GetSpec().GetName())
	sval, err := marshal(svc)
	if err != nil {
		return 0, err
	}
	cmps := append(f.cmps(), clientv3.Compare(clientv3.ModRevision(skey), "=", serviceRev))
	var fenceGet []clientv3.Op
	if f != nil {
		fenceGet = []clientv3.Op{clientv3.OpGet(f.Key)}
	}
	evOps, err := s.eventOps(events)
	if err != nil {
		return 0, err
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(append([]clientv3.Op{clientv3.OpPut(skey, sval)}, evOps...)...).Else(fenceGet...).Commit()
	if err != nil {
		return 0, fmt.Errorf("put service %s: %w", svc.GetSpec().GetName(), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("put service %s: %w", svc.GetSpec().GetName(), fenceErr(f, resp))
	}
	return resp.Header.Revision, nil
}
