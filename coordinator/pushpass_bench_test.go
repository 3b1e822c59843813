package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// pushFleet is a hub over a real etcd (embedded) and its mirror, with a
// rollout of service web from v1 to v2 in flight over n hosts (canary
// done, the second wave half done and half updating, the third pending)
// and n connected hosts (agentConns without streams: they are marked done,
// so a pass queues their sets but starts no sender). Without p2p (as in
// TestScale) no host's set names sources; with it every host advertises a
// peer address and the updating hosts' sets name 2 sources each.
func pushFleet(tb testing.TB, n int, p2p bool) (*hub, []*agentConn) {
	tb.Helper()
	emb, err := store.StartEmbedded(tb.TempDir(), zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(emb.Close)
	cli, err := emb.Dial()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	st := store.New(cli)
	mirror := store.NewMirror(st, zerolog.Nop())
	go func() { _ = mirror.Run(ctx) }()

	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"},
		Run:     &v1.RunSpec{Command: []string{"./app", "--port", "8080"}, Env: map[string]string{"MODE": "production", "LOG": "info"}},
		Checks:  []*v1.Check{{Name: "http", Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1:8080/healthz", ExpectStatus: 200}}}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}, MaxParallel: uint32(n)}}
	applied, err := st.ApplySpec(ctx, spec, time.Now(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, v := range []string{"v1", "v2"} {
		rel := &v1.Release{Service: "web", Version: v, Artifact: &v1.Artifact{Url: "http://coordinator/artifacts/" + v,
			Sha256: fmt.Sprintf("%064x", len(v)), Size: 12 << 20}}
		if _, err := st.CreateRelease(ctx, rel); err != nil {
			tb.Fatal(err)
		}
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("host-%05d", i)
	}
	hp := func(id string, s v1.HostRolloutState) *v1.HostProgress { return &v1.HostProgress{HostId: id, State: s} }
	canary := &v1.Wave{Index: 0, Canary: true, State: v1.WaveState_WAVE_STATE_DONE, Hosts: []*v1.HostProgress{hp(ids[0], v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE)}}
	second := &v1.Wave{Index: 1, State: v1.WaveState_WAVE_STATE_PROGRESSING}
	third := &v1.Wave{Index: 2, State: v1.WaveState_WAVE_STATE_PENDING}
	half := 1 + (n-1)/2
	for i, id := range ids[1:] {
		switch {
		case 1+i >= half:
			third.Hosts = append(third.Hosts, hp(id, v1.HostRolloutState_HOST_ROLLOUT_STATE_PENDING))
		case i%2 == 0:
			second.Hosts = append(second.Hosts, hp(id, v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE))
		default:
			second.Hosts = append(second.Hosts, hp(id, v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING))
		}
	}
	r := &v1.Rollout{Id: "r2", Service: "web", FromVersion: "v1", ToVersion: "v2", Generation: 2, State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Policy: spec.GetRollout(), Waves: []*v1.Wave{canary, second, third}, Spec: spec, SpecRevision: 1}
	svc := applied.Service
	svc.Status = &v1.ServiceStatus{StableVersion: "v1", StableGeneration: 1, StableSpec: spec, StableSpecRevision: 1, LastRolloutId: "r2"}
	if _, _, err := st.WriteRollout(ctx, nil, r, store.RolloutBase{Layout: store.Split}, svc, applied.Rev); err != nil {
		tb.Fatal(err)
	}
	sources := -1
	if p2p {
		sources = 2
		for _, id := range ids {
			if err := st.PutHost(ctx, &v1.Host{Id: id, Labels: map[string]string{"role": "web"}, PeerAddress: id + ":7000"}); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := mirror.Sync(ctx); err != nil {
		tb.Fatal(err)
	}
	c := &Coordinator{cfg: Config{ArtifactSources: sources}, log: zerolog.Nop(), store: st, mirror: mirror, metrics: newMetrics()}
	h := &hub{c: c, conns: map[string]*agentConn{}, sharedLimit: maxSharedSets}
	conns := make([]*agentConn, n)
	for i, id := range ids {
		ver := "v1"
		if i < half && (i == 0 || (i-1)%2 == 0) {
			ver = "v2"
		}
		rep := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: ver, TargetVersion: ver, LastGoodVersion: ver, Generation: 1}
		conns[i] = &agentConn{host: id, labels: map[string]string{"role": "web", "zone": []string{"a", "b", "c"}[i%3]},
			seen: map[string]*v1.ServiceReport{"web": rep}, greeted: true, done: true}
		h.conns[id] = conns[i]
	}
	return h, conns
}

// BenchmarkPushPass measures a push pass (hub.pushLoop's loop over every
// connected host: hub.prepare) over 10,000 hosts of one service with a
// rollout in flight: "unchanged" is a pass after which no host's set
// changed (most passes, for most hosts), "changed" one where every host's
// set is queued again (its last sum forgotten before the pass).
func BenchmarkPushPass(b *testing.B) {
	const n = 10000
	h, conns := pushFleet(b, n, false)
	now := time.Now()
	for _, c := range conns { // the first sets
		h.prepare(c, false, now)
	}
	for _, mode := range []string{"unchanged", "changed"} {
		b.Run(fmt.Sprintf("hosts=%d/%s", n, mode), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, c := range conns {
					if mode == "changed" {
						h.mu.Lock()
						c.lastSum = [32]byte{}
						h.mu.Unlock()
					}
					h.prepare(c, false, now)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/host")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkSendEncode measures what gRPC encodes per set sent (sendLoop):
// "proto" the whole ConnectResponse through gRPC's proto codec, as every
// send did before; "preEncoded" the encoding of sent_at alone and the set's
// bytes through serverCodec, as now. The set is a host's of pushFleet.
func BenchmarkSendEncode(b *testing.B) {
	h, conns := pushFleet(b, 4, false)
	set, err := h.encodedFor(h.table(), conns[0])
	if err != nil {
		b.Fatal(err)
	}
	full := h.assignments(h.table(), conns[0])
	codec, protoCodec := newServerCodec(), encoding.GetCodecV2(encproto.Name)
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m := &v1.ConnectResponse{SentAt: timestamppb.Now(), Assignments: full.GetAssignments(), Agent: full.GetAgent()}
			data, err := protoCodec.Marshal(m)
			if err != nil {
				b.Fatal(err)
			}
			data.Free()
		}
		b.ReportMetric(float64(len(set.b)), "set-bytes")
	})
	b.Run("preEncoded", func(b *testing.B) {
		q := &queuedSet{set: set}
		b.ReportAllocs()
		for b.Loop() {
			msg, err := withSet(q, &v1.ConnectResponse{SentAt: timestamppb.Now()})
			if err != nil {
				b.Fatal(err)
			}
			data, err := codec.Marshal(msg)
			if err != nil {
				b.Fatal(err)
			}
			data.Free()
		}
		b.ReportMetric(float64(len(set.b)), "set-bytes")
	})
}
