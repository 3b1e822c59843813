package lifecycle

import (
	"fmt"
	"strings"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	testMinHealthy = 10 * time.Second
	testDeadline   = 60 * time.Second
)

// asg builds a valid assignment of service "web" with one check.
func asg(version string, gen int64) *v1.Assignment {
	return asgChecks(version, gen, 1)
}

// asgChecks builds a valid assignment with nChecks exec checks named c0,
// c1, ...
func asgChecks(version string, gen int64, nChecks int) *v1.Assignment {
	a := &v1.Assignment{
		Service:    "web",
		Generation: gen,
		Release: &v1.Release{Service: "web", Version: version, Artifact: &v1.Artifact{
			Sha256: strings.Repeat("a", 64), Size: 10,
		}},
		Spec: &v1.ServiceSpec{
			Name:            "web",
			Run:             &v1.RunSpec{Command: []string{"./run"}},
			MinHealthyTime:  durationpb.New(testMinHealthy),
			HealthyDeadline: durationpb.New(testDeadline),
		},
	}
	for i := 0; i < nChecks; i++ {
		a.Spec.Checks = append(a.Spec.Checks, &v1.Check{Name: fmt.Sprintf("c%d", i),
			Kind: &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"true"}}}})
	}
	return a
}
