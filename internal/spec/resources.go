package spec

import (
	"errors"
	"math"
	"strconv"
	"strings"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Limits of the resources block (README, "Service spec reference").
const (
	// MinMemoryMax is the smallest resources.memory_max: below it no
	// process starts at all, which is a typo rather than a limit.
	MinMemoryMax = 1 << 20
	// MaxMemoryMax is the largest resources.memory_max (1Pi).
	MaxMemoryMax = 1 << 50
	// MinCPUWeight and MaxCPUWeight bound resources.cpu_weight (cgroup
	// v2's cpu.weight range).
	MinCPUWeight = 1
	MaxCPUWeight = 10000
	// MaxTasksMax bounds resources.tasks_max (the kernel's pid_max limit).
	MaxTasksMax = 1 << 22
)

// binaryUnits are the suffixes resources.memory_max accepts.
var binaryUnits = []struct {
	suffix string
	shift  uint
}{{"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}, {"Pi", 50}}

// errBytes is ParseBytes' reason for a malformed value.
var errBytes = errors.New(`want a whole number of bytes with an optional binary unit (Ki, Mi, Gi, Ti, Pi), e.g. "256Mi"`)

// ParseBytes parses a size in bytes written as digits with an optional
// binary unit: "268435456", "512Ki", "256Mi", "1Gi". Decimal units (M, G),
// fractions, signs and spaces are refused.
func ParseBytes(s string) (uint64, error) {
	digits, shift := s, uint(0)
	for _, u := range binaryUnits {
		if d, ok := strings.CutSuffix(s, u.suffix); ok {
			digits, shift = d, u.shift
			break
		}
	}
	if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, errBytes
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n > math.MaxUint64>>shift {
		return 0, errors.New("does not fit in 64 bits")
	}
	return n << shift, nil
}

// MemoryMax is resources.memory_max in bytes (0: unset or invalid; Validate
// reports the latter).
func MemoryMax(r *v1.Resources) uint64 {
	n, err := ParseBytes(r.GetMemoryMax())
	if err != nil {
		return 0
	}
	return n
}

func validateResources(p *problems, r *v1.Resources) {
	if r == nil {
		return
	}
	if s := r.GetMemoryMax(); s != "" {
		n, err := ParseBytes(s)
		q := truncate(s, 64) // leading zeros parse: any length
		switch {
		case err != nil:
			p.add("resources.memory_max", "%q: %v", q, err)
		case n < MinMemoryMax:
			p.add("resources.memory_max", "%q is %d bytes, less than the minimum 1Mi", q, n)
		case n > MaxMemoryMax:
			p.add("resources.memory_max", "%q is more than the maximum 1Pi", q)
		}
	}
	if w := r.GetCpuWeight(); w != 0 && (w < MinCPUWeight || w > MaxCPUWeight) {
		p.add("resources.cpu_weight", "%d is outside %d..%d", w, MinCPUWeight, MaxCPUWeight)
	}
	if t := r.GetTasksMax(); t > MaxTasksMax {
		p.add("resources.tasks_max", "%d is more than the maximum %d", t, MaxTasksMax)
	}
}
