package coordinator

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// TestSameReport: sameReport is proto.Equal but for the reports' times, and
// copies neither report.
func TestSameReport(t *testing.T) {
	base := func() *v1.ServiceReport {
		return &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v2", Generation: 3,
			Checks:  []*v1.CheckResult{{Name: "http", Ok: true}},
			Metrics: &v1.MetricSummary{}, At: timestamppb.New(timestamppb.Now().AsTime())}
	}
	variants := map[string]func(r *v1.ServiceReport){
		"same":              func(*v1.ServiceReport) {},
		"later at":          func(r *v1.ServiceReport) { r.At = timestamppb.New(r.At.AsTime().Add(1)) },
		"no at":             func(r *v1.ServiceReport) { r.At = nil },
		"phase":             func(r *v1.ServiceReport) { r.Phase = v1.Phase_PHASE_FAILED },
		"version":           func(r *v1.ServiceReport) { r.CurrentVersion = "v3" },
		"check":             func(r *v1.ServiceReport) { r.Checks[0].Ok = false },
		"another check":     func(r *v1.ServiceReport) { r.Checks = append(r.Checks, &v1.CheckResult{Name: "tcp"}) },
		"no checks":         func(r *v1.ServiceReport) { r.Checks = nil },
		"no metrics":        func(r *v1.ServiceReport) { r.Metrics = nil },
		"in place":          func(r *v1.ServiceReport) { r.InPlace = true },
		"unknown field":     func(r *v1.ServiceReport) { r.ProtoReflect().SetUnknown([]byte{0xf8, 0x3e, 0x01}) },
		"staged":            func(r *v1.ServiceReport) { r.StagedSha256 = "ab" },
		"empty":             func(r *v1.ServiceReport) { proto.Reset(r) },
		"empty with an at":  func(r *v1.ServiceReport) { at := r.At; proto.Reset(r); r.At = at },
		"bad source":        func(r *v1.ServiceReport) { r.BadSource = "h9" },
		"reason":            func(r *v1.ServiceReport) { r.Reason = "x" },
		"last good version": func(r *v1.ServiceReport) { r.LastGoodVersion = "v1" },
	}
	// The definition: equal once both times are cleared.
	want := func(a, b *v1.ServiceReport) bool {
		a2, b2 := proto.Clone(a).(*v1.ServiceReport), proto.Clone(b).(*v1.ServiceReport)
		a2.At, b2.At = nil, nil
		return proto.Equal(a2, b2)
	}
	for na, fa := range variants {
		for nb, fb := range variants {
			a, b := base(), base()
			fa(a)
			fb(b)
			a0, b0 := proto.Clone(a), proto.Clone(b)
			if got, w := sameReport(a, b), want(a, b); got != w {
				t.Errorf("sameReport(%s, %s) = %v, want %v", na, nb, got, w)
			}
			if !proto.Equal(a, a0) || !proto.Equal(b, b0) {
				t.Errorf("sameReport(%s, %s) changed a report", na, nb)
			}
		}
	}
	if !sameReport(base(), base()) || sameReport(base(), &v1.ServiceReport{}) {
		t.Fatal("the table's two ends are wrong")
	}
}

// TestLogEventsLevels: routine host events are logged at debug level, the
// rest at info.
func TestLogEventsLevels(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(&buf).Level(zerolog.InfoLevel)
	logEvents(log, "r1", []rollout.Event{
		{Kind: rollout.EventHostAssigned, Wave: 1, Host: "h1"},
		{Kind: rollout.EventHostDone, Wave: 1, Host: "h1"},
		{Kind: rollout.EventHostFailed, Wave: 1, Host: "h2", Message: "install failed"},
		{Kind: rollout.EventWaveDone, Wave: 1},
	})
	got := buf.String()
	for _, kind := range []string{rollout.EventHostFailed, rollout.EventWaveDone} {
		if !strings.Contains(got, `"event":"`+kind+`"`) {
			t.Errorf("%s not logged at info: %s", kind, got)
		}
	}
	for _, kind := range []string{rollout.EventHostAssigned, rollout.EventHostDone} {
		if strings.Contains(got, `"event":"`+kind+`"`) {
			t.Errorf("%s logged at info: %s", kind, got)
		}
	}
	buf.Reset()
	logEvents(log.Level(zerolog.DebugLevel), "r1", []rollout.Event{{Kind: rollout.EventHostDone, Wave: 1, Host: "h1"}})
	if !strings.Contains(buf.String(), `"level":"debug"`) {
		t.Errorf("host_done not logged at debug: %s", buf.String())
	}
	// A step's thousands of host events cost nothing at info level.
	hosts := make([]rollout.Event, 1000)
	for i := range hosts {
		hosts[i] = rollout.Event{Kind: rollout.EventHostDone, Wave: 1, Host: fmt.Sprintf("h%d", i)}
	}
	ctxLog := log.With().Str("service", "web").Logger()
	if n := testing.AllocsPerRun(10, func() { logEvents(ctxLog, "r1", hosts) }); n != 0 {
		t.Errorf("logging 1000 host events at info level: %.0f allocations, want 0", n)
	}
}
