package store

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// footprintRollout is an ended rollout of one service as the engine leaves
// it: a canary wave and waves of the rest, every host done and healthy
// with its start and end times and its zone.
func footprintRollout(n, hosts int, t0 time.Time) *v1.Rollout {
	r := &v1.Rollout{Id: fmt.Sprintf("%06d", n), Service: "web", FromVersion: fmt.Sprintf("v%d", n-1), ToVersion: fmt.Sprintf("v%d", n),
		Generation: int64(n), State: v1.RolloutState_ROLLOUT_STATE_SUCCEEDED, CreatedAt: timestamppb.New(t0), StartedAt: timestamppb.New(t0),
		FinishedAt: timestamppb.New(t0.Add(time.Hour)), Policy: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{10, 50, 100}}}
	sizes := []int{1, hosts / 10, hosts / 2}
	sizes = append(sizes, hosts-sizes[0]-sizes[1]-sizes[2])
	h := 0
	for i, size := range sizes {
		w := &v1.Wave{Index: uint32(i), State: v1.WaveState_WAVE_STATE_DONE, Canary: i == 0, StartedAt: timestamppb.New(t0), DoneAt: timestamppb.New(t0.Add(time.Hour))}
		for range size {
			w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: fmt.Sprintf("web-%05d", h), State: v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE,
				StartedAt: timestamppb.New(t0.Add(time.Duration(h) * time.Second)), DoneAt: timestamppb.New(t0.Add(time.Duration(h)*time.Second + 40*time.Second)),
				Phase: v1.Phase_PHASE_HEALTHY, Zone: fmt.Sprintf("zone-%c", 'a'+h%3)})
			h++
		}
		r.Waves = append(r.Waves, w)
	}
	return r
}

// footprint is what a service's rollouts cost: their keys' bytes in etcd,
// etcd's database after its history is compacted and defragmented, and a
// mirror's heap (a mirror loaded from scratch, after a collection).
type footprint struct {
	keyBytes, dbBytes, heapBytes int64
}

func measureFootprint(t *testing.T, ctx context.Context, s *Store) footprint {
	t.Helper()
	var f footprint
	for _, p := range []string{RolloutsPrefix, SplitRolloutsPrefix} {
		resp, err := s.c.Get(ctx, p, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			f.keyBytes += int64(len(kv.Key) + len(kv.Value))
		}
	}
	resp, err := s.c.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	ep := s.c.Endpoints()[0]
	if _, err := s.c.Defragment(ctx, ep); err != nil {
		t.Fatal(err)
	}
	st, err := s.c.Status(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	f.dbBytes = st.DbSize

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	mctx, cancel := context.WithCancel(ctx)
	m := NewMirror(s, s.log)
	done := make(chan struct{})
	go func() { _ = m.Run(mctx); close(done) }()
	if err := m.WaitRev(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	f.heapBytes = int64(ms.HeapAlloc) - int64(before)
	if n := len(m.Rollouts("web")); n == 0 {
		t.Fatal("the mirror holds no rollout")
	}
	cancel()
	<-done
	return f
}

// TestRolloutFootprintCompacted measures a service's ended rollouts in
// etcd and in a mirror before and after their hosts are compacted, and
// checks that compaction takes at least nine tenths of each. The size is
// FLEETWAVE_FOOTPRINT (rollouts x hosts, e.g. 1000x1000: docs/BENCHMARKS.md);
// 40x1000 by default.
func TestRolloutFootprintCompacted(t *testing.T) {
	rollouts, hosts := 40, 1000
	if v := os.Getenv("FLEETWAVE_FOOTPRINT"); v != "" {
		if _, err := fmt.Sscanf(v, "%dx%d", &rollouts, &hosts); err != nil || rollouts < 1 || hosts < 10 {
			t.Fatalf("FLEETWAVE_FOOTPRINT=%q: want ROLLOUTSxHOSTS, hosts at least 10", v)
		}
	}
	s := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// parallel writes the rollouts 8 at a time.
	parallel := func(fn func(n int) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, rollouts)
		slots := make(chan struct{}, 8)
		for n := 1; n <= rollouts; n++ {
			slots <- struct{}{}
			wg.Go(func() {
				defer func() { <-slots }()
				if err := fn(n); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	revs := make([]int64, rollouts+1)
	parallel(func(n int) error {
		rev, _, err := s.WriteRollout(ctx, nil, footprintRollout(n, hosts, t0.Add(time.Duration(n)*time.Hour)), RolloutBase{Layout: Split}, nil, 0)
		revs[n] = rev
		return err
	})
	full := measureFootprint(t, ctx, s)
	parallel(func(n int) error {
		r := footprintRollout(n, hosts, t0.Add(time.Duration(n)*time.Hour))
		c := proto.Clone(r).(*v1.Rollout)
		c.HostsCompacted = true
		for _, w := range c.GetWaves() {
			w.HostCount, w.LastHostDoneAt, w.Hosts = uint32(len(w.GetHosts())), w.GetHosts()[len(w.GetHosts())-1].GetDoneAt(), nil
		}
		_, err := s.CompactRollout(ctx, nil, c, RolloutBase{Rollout: r, Rev: revs[n], Layout: Split})
		return err
	})
	small := measureFootprint(t, ctx, s)
	mib := func(b int64) string {
		if b < 1<<20 {
			return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
		}
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	t.Logf("%d rollouts x %d hosts: etcd keys %s -> %s (%.0f -> %.0f bytes a rollout); etcd database (compacted, defragmented) %s -> %s; mirror heap %s -> %s (%.0f -> %.0f bytes a rollout)",
		rollouts, hosts, mib(full.keyBytes), mib(small.keyBytes), float64(full.keyBytes)/float64(rollouts), float64(small.keyBytes)/float64(rollouts),
		mib(full.dbBytes), mib(small.dbBytes), mib(full.heapBytes), mib(small.heapBytes), float64(full.heapBytes)/float64(rollouts), float64(small.heapBytes)/float64(rollouts))
	if small.keyBytes*10 > full.keyBytes || small.heapBytes*10 > full.heapBytes {
		t.Errorf("compaction keeps more than a tenth: keys %d of %d bytes, heap %d of %d", small.keyBytes, full.keyBytes, small.heapBytes, full.heapBytes)
	}
}
