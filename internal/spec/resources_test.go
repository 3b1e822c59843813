package spec

import (
	"strings"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestParseResources(t *testing.T) {
	s, err := Parse([]byte(`name: web
run: {command: ["./app"]}
resources: {memory_max: 256Mi, cpu_weight: 200, tasks_max: 64}
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := Validate(s); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	r := s.GetResources()
	if MemoryMax(r) != 256<<20 || r.GetCpuWeight() != 200 || r.GetTasksMax() != 64 {
		t.Fatalf("resources = %v (memory_max %d bytes)", r, MemoryMax(r))
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{
		"0": 0, "1048576": 1 << 20, "512Ki": 512 << 10, "256Mi": 256 << 20, "2Gi": 2 << 30, "1Ti": 1 << 40, "1Pi": 1 << 50,
		"16383Pi": 16383 << 50,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "Mi", "1M", "1G", "1.5Gi", "-1", " 1Mi", "1 Mi", "1mi", "1MiB", "0x10", "16384Pi", "99999999999999999999"} {
		if got, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, got)
		}
	}
}

// TestValidateResources: every limit is checked, each problem names the
// field and the value.
func TestValidateResources(t *testing.T) {
	for _, tc := range []struct {
		r    *v1.Resources
		want string // "" = valid
	}{
		{&v1.Resources{}, ""},
		{&v1.Resources{MemoryMax: "1Mi", CpuWeight: 1, TasksMax: 1}, ""},
		{&v1.Resources{MemoryMax: "1Pi", CpuWeight: 10000, TasksMax: MaxTasksMax}, ""},
		{&v1.Resources{MemoryMax: "1023Ki"}, `resources.memory_max: "1023Ki" is 1047552 bytes, less than the minimum 1Mi`},
		{&v1.Resources{MemoryMax: "1025Ti"}, `resources.memory_max: "1025Ti" is more than the maximum 1Pi`},
		{&v1.Resources{MemoryMax: "256MB"}, `resources.memory_max: "256MB": want a whole number of bytes`},
		{&v1.Resources{CpuWeight: 10001}, "resources.cpu_weight: 10001 is outside 1..10000"},
		{&v1.Resources{TasksMax: MaxTasksMax + 1}, "resources.tasks_max: 4194305 is more than the maximum 4194304"},
	} {
		s := valid()
		s.Resources = tc.r
		err := Validate(s)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.r, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want %q", tc.r, err, tc.want)
		}
	}
}

// TestValidateResourcesMessageBounded: a memory_max of 100000 characters
// (leading zeros pass the parser; nines overflow it) is named in the
// problem truncated, as other values are, not copied whole (twice).
func TestValidateResourcesMessageBounded(t *testing.T) {
	for _, v := range []string{
		strings.Repeat("9", 100000),           // does not fit in 64 bits
		strings.Repeat("0", 100000) + "1",     // below the minimum
		strings.Repeat("0", 100000) + "2Pi",   // above the maximum
		strings.Repeat("0", 100000) + "1.5Gi", // malformed
	} {
		s := valid()
		s.Resources = &v1.Resources{MemoryMax: v}
		err := Validate(s)
		if err == nil || !strings.Contains(err.Error(), "resources.memory_max") {
			t.Fatalf("memory_max of %d bytes: error %v, want one naming resources.memory_max", len(v), err)
		}
		if n := len(err.Error()); n > 1000 {
			t.Errorf("memory_max of %d bytes: error of %d bytes: %.200s...", len(v), n, err)
		}
	}
}
