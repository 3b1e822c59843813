package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/judge"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/spec"
	"github.com/fleetwave/fleetwave/internal/testkit/etcdtest"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// largestReport is a report as large as validateReport takes: the longest
// reason, every check with the longest name and detail, every metric rule
// with the longest name and every bucket (about 180 KB).
func largestReport(service string) *v1.ServiceReport {
	r := &v1.ServiceReport{Service: service, Phase: v1.Phase_PHASE_FAILED, Reason: strings.Repeat("r", 4096), Metrics: &v1.MetricSummary{}}
	for range 64 {
		r.Checks = append(r.Checks, &v1.CheckResult{Name: strings.Repeat("n", maxField), Detail: strings.Repeat("d", maxField)})
	}
	for range judge.MaxRules {
		rc := &v1.RuleCounts{Rule: strings.Repeat("x", maxField)}
		for i := range spec.MaxCompareBuckets {
			rc.Buckets = append(rc.Buckets, &v1.HistogramBucket{UpperBound: float64(i) + 0.5, Count: 1 << 40})
		}
		r.Metrics.Rules = append(r.Metrics.Rules, rc)
	}
	return r
}

// Reports as large as validateReport takes, from 100 hosts at once, on an
// etcd with its defaults (--max-request-bytes 1.5 MiB): batched by count
// only, the 100 went in one transaction of about 18 MB that etcd refused,
// every time, so every stream ended and each agent's hello (its full
// status again) failed the same way. They are all stored.
func TestLargestReportsWithinRequestBytes(t *testing.T) {
	if err := validateReport(largestReport("web")); err != nil {
		t.Fatalf("the largest report is not valid: %v", err)
	}
	t.Logf("largest report: %d bytes", proto.Size(largestReport("web")))
	cli, err := store.Dial([]string{etcdtest.Start(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	s := store.New(cli)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const hosts = 100
	for i := range hosts {
		if err := s.PutHost(ctx, &v1.Host{Id: fmt.Sprintf("h%03d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	w := newReportWriter(s, newMetrics())
	errs := make(chan error, hosts)
	for i := range hosts {
		host := fmt.Sprintf("h%03d", i)
		w.put(host, largestReport("web"), func(err error) {
			if err != nil {
				err = fmt.Errorf("%s: %w", host, err)
			}
			errs <- err
		})
	}
	done := make(chan struct{})
	go func() {
		w.run(ctx)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.After(60 * time.Second)
	for range hosts {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatalf("report not stored: %v", err)
			}
		case <-deadline:
			t.Fatal("reports not stored after 60s")
		}
	}
	resp, err := cli.Get(ctx, store.ReportsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != hosts {
		t.Fatalf("%d reports stored, want %d", resp.Count, hosts)
	}
}
