package supervise

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Cgroup modes (Cgroups.Mode).
const (
	CgroupV1   = "v1"
	CgroupV2   = "v2"
	CgroupNone = "none"
)

// DefaultCgroupParent is the cgroup, relative to the root of each
// hierarchy, below which the agent puts its services
// (<parent>/<service>/<instance>).
const DefaultCgroupParent = "fleetwave"

const (
	cgroupRoot = "/sys/fs/cgroup"
	// cgroupEmptyWait bounds the wait for a killed cgroup's processes to be
	// gone before it is removed (SIGKILL has been sent to every one).
	cgroupEmptyWait = 10 * time.Second
)

// v1Controllers are the cgroup v1 controllers the agent needs: the three
// limits and the freezer, which makes killing every process of a cgroup
// race-free (nothing forks while frozen).
var v1Controllers = []cgroup1.Name{cgroup1.Memory, cgroup1.Cpu, cgroup1.Pids, cgroup1.Freezer}

// v2Controllers are the cgroup v2 controllers the agent enables.
var v2Controllers = []string{"memory", "cpu", "pids"}

// Limits are a service's resource limits; zero fields are not limited.
type Limits struct {
	MemoryMax uint64 // bytes (memory.max; v1 memory.limit_in_bytes, and memsw when swap is accounted)
	CPUWeight uint32 // 1..10000 (cpu.weight; v1 cpu.shares = weight*1024/100, as systemd maps it)
	TasksMax  uint32 // pids.max
}

// Zero reports whether no limit is set.
func (l Limits) Zero() bool { return l == Limits{} }

// CPUShares is the cgroup v1 cpu.shares for a cgroup v2 cpu.weight, as
// systemd converts it (weight 100, the default, is 1024 shares), within
// the kernel's 2..262144.
func CPUShares(weight uint32) uint64 {
	return min(max(uint64(weight)*1024/100, 2), 262144)
}

// Cgroups is the part of the cgroup hierarchy the agent owns: every
// service process (each instance: two run side by side during a handover)
// gets its own cgroup <parent>/<service>/<instance>, created with its
// limits before the process runs any of the service's code, and emptied
// and removed when it stops. It is usable when the agent runs as root on
// a cgroup v2 hierarchy with the memory, cpu and pids controllers, or on
// cgroup v1 (or hybrid: its controllers are v1) with memory, cpu, pids and
// freezer mounted; otherwise Mode is CgroupNone, Reason says why, and the
// supervisor uses process groups alone. Its methods are safe for
// concurrent use; a nil *Cgroups is unusable.
type Cgroups struct {
	mode   string
	reason string
	parent string // "/fleetwave"
	root   string // v2: the unified mount point

	mu sync.Mutex // creating and removing directories of the hierarchy
}

// OpenCgroups finds out whether the agent can use cgroups below parent (a
// relative path such as DefaultCgroupParent) and creates parent. It never
// fails: an unusable hierarchy gives Mode CgroupNone and the Reason.
func OpenCgroups(parent string) *Cgroups {
	c := &Cgroups{mode: CgroupNone}
	if err := CheckCgroupParent(parent); err != nil {
		c.reason = err.Error()
		return c
	}
	c.parent = path.Clean("/" + parent)
	if os.Geteuid() != 0 {
		c.reason = "the agent does not run as root"
		return c
	}
	switch cgroups.Mode() {
	case cgroups.Unified:
		c.root = cgroupRoot
		c.reason = c.openV2()
	case cgroups.Legacy, cgroups.Hybrid:
		c.reason = c.openV1()
	default:
		c.reason = "no cgroup hierarchy is mounted at " + cgroupRoot
	}
	return c
}

// MaxCgroupParent bounds a cgroup parent's length (bytes).
const MaxCgroupParent = 256

// CheckCgroupParent checks a cgroup parent: a relative path below the root
// of the hierarchy ("fleetwave", "ops/fleetwave"), without "." or ".."
// components, at most MaxCgroupParent bytes.
func CheckCgroupParent(parent string) error {
	bad := func(why string) error { return fmt.Errorf("cgroup parent %q: %s", truncate(parent, 64), why) }
	switch {
	case parent == "":
		return bad("empty")
	case len(parent) > MaxCgroupParent:
		return bad(fmt.Sprintf("%d bytes, over %d", len(parent), MaxCgroupParent))
	case strings.HasPrefix(parent, "/"):
		return bad("want a relative path below the root of the hierarchy")
	}
	for _, part := range strings.Split(parent, "/") {
		if part == "" || part == "." || part == ".." || strings.ContainsAny(part, "\x00\n") {
			return bad("want a relative path below the root of the hierarchy (no empty, . or .. parts)")
		}
	}
	return nil
}

func (c *Cgroups) openV2() string {
	data, err := os.ReadFile(filepath.Join(c.root, "cgroup.controllers"))
	if err != nil {
		return fmt.Sprintf("cgroup v2: %v", err)
	}
	have := strings.Fields(string(data))
	for _, want := range v2Controllers {
		if !slices.Contains(have, want) {
			return fmt.Sprintf("cgroup v2: controller %s is not available (cgroup.controllers: %q)", want, strings.TrimSpace(string(data)))
		}
	}
	m, err := cgroup2.NewManager(c.root, c.parent, &cgroup2.Resources{})
	if err == nil {
		err = m.ToggleControllers(v2Controllers, cgroup2.Enable)
	}
	if err != nil {
		return fmt.Sprintf("cgroup v2: creating %s: %v", c.parent, err)
	}
	// And below the parent: the kernel refuses it (EBUSY) while the parent
	// holds processes of its own (cgroup v2's no-internal-process rule,
	// e.g. a parent that is the agent's own systemd unit), and then no
	// instance could get a limit. Said now, not at each start.
	if err := writeCgroupFile(filepath.Join(c.root, c.parent), "cgroup.subtree_control", "+"+strings.Join(v2Controllers, " +")); err != nil {
		return fmt.Sprintf("cgroup v2: enabling the controllers below %s (a parent must hold no processes of its own): %v", c.parent, err)
	}
	c.mode = CgroupV2
	return ""
}

func (c *Cgroups) openV1() string {
	subs, err := v1Hierarchy()
	if err != nil {
		return fmt.Sprintf("cgroup v1: %v", err)
	}
	for _, want := range v1Controllers {
		if !slices.ContainsFunc(subs, func(s cgroup1.Subsystem) bool { return s.Name() == want }) {
			return fmt.Sprintf("cgroup v1: controller %s is not mounted", want)
		}
	}
	if _, err := cgroup1.New(cgroup1.StaticPath(c.parent), &specs.LinuxResources{}, cgroup1.WithHierarchy(v1Hierarchy)); err != nil {
		return fmt.Sprintf("cgroup v1: creating %s: %v", c.parent, err)
	}
	c.mode = CgroupV1
	return ""
}

// v1Hierarchy is the v1 subsystems the agent uses, of those mounted.
func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		if slices.Contains(v1Controllers, s.Name()) {
			out = append(out, s)
		}
	}
	return out, nil
}

// Mode is CgroupV1, CgroupV2 or CgroupNone.
func (c *Cgroups) Mode() string {
	if c == nil {
		return CgroupNone
	}
	return c.mode
}

// Usable reports whether services get their own cgroups.
func (c *Cgroups) Usable() bool { return c.Mode() != CgroupNone }

// Reason says why cgroups are not usable ("" when they are).
func (c *Cgroups) Reason() string {
	if c == nil {
		return "no cgroups configured"
	}
	return c.reason
}

// String is what the host reports (Hello.cgroups): "v1 /fleetwave",
// "v2 /fleetwave" or "none: <reason>", at most MaxCgroupsReport bytes.
func (c *Cgroups) String() string {
	if c.Usable() {
		return c.Mode() + " " + c.Parent()
	}
	s := CgroupNone + ": " + c.Reason()
	if len(s) > MaxCgroupsReport {
		s = s[:MaxCgroupsReport-3] + "..."
	}
	return s
}

// MaxCgroupsReport bounds Cgroups.String (and the coordinator's Hello.cgroups).
const MaxCgroupsReport = 512

// Parent is the agent's cgroup, from the root of the hierarchy ("/fleetwave").
func (c *Cgroups) Parent() string {
	if c == nil {
		return ""
	}
	return c.parent
}

// ErrCgroupsUnusable is returned for limits on a host without usable
// cgroups.
var ErrCgroupsUnusable = errors.New("cgroups are not usable on this host")

// cgroup is one instance's cgroup.
type cgroup struct {
	c      *Cgroups
	path   string // "/fleetwave/<service>/<instance>"
	limits Limits
	v1     cgroup1.Cgroup
	v2     *cgroup2.Manager
}

// serviceCgroupRE and instanceCgroupRE are the names of the agent's
// cgroups below its parent: a service's (spec.CheckName's), then an
// instance's (12 hex digits, create's).
var (
	serviceCgroupRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	instanceCgroupRE = regexp.MustCompile(`^[0-9a-f]{12}$`)
)

// create makes a new instance cgroup for service with limits l.
func (c *Cgroups) create(service string, l Limits) (*cgroup, error) {
	if !c.Usable() {
		return nil, fmt.Errorf("cgroup for %s: %w: %s", service, ErrCgroupsUnusable, c.Reason())
	}
	if !serviceCgroupRE.MatchString(service) {
		// A path element of the agent's own, never "..", "a/b" or "".
		return nil, fmt.Errorf("cgroup for service %q: not a service name", truncate(service, 64))
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	g := &cgroup{c: c, path: path.Join(c.parent, service, hex.EncodeToString(id[:])), limits: l}
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	// Another agent on the host may remove the service's cgroup, empty,
	// between its creation and the instance's: then again.
	for range 3 {
		if err = g.make(); !errors.Is(err, os.ErrNotExist) {
			break
		}
	}
	if err != nil {
		g.removeDirs() // whatever a failed creation made (v1: one directory per controller)
		return nil, fmt.Errorf("create cgroup %s: %w", g.path, err)
	}
	return g, nil
}

// removeDirs removes the cgroup's directories, which must be empty, then
// the service's when it is empty too (rmdir fails on a cgroup with
// children, e.g. the other instance of a handover). The caller holds c.mu.
func (g *cgroup) removeDirs() {
	for _, p := range []string{g.path, path.Dir(g.path)} {
		if g.c.mode == CgroupV2 {
			_ = os.Remove(filepath.Join(g.c.root, p))
			continue
		}
		for _, name := range v1Controllers {
			_ = os.Remove(filepath.Join(cgroupRoot, string(name), p))
		}
	}
}

// make creates the instance's cgroup and writes its limits the way a
// resize in place does (update): one writer of the limit files.
func (g *cgroup) make() error {
	c := g.c
	var err error
	if c.mode == CgroupV2 {
		if g.v2, err = cgroup2.NewManager(c.root, g.path, &cgroup2.Resources{}); err == nil {
			err = g.updateV2(g.limits)
		}
	} else {
		if g.v1, err = cgroup1.New(cgroup1.StaticPath(g.path), &specs.LinuxResources{}, cgroup1.WithHierarchy(v1Hierarchy)); err == nil {
			err = g.updateV1(g.limits)
		}
	}
	return err
}

// update writes limits l to the cgroup of a running instance, every one of
// them (an unset one as no limit, cpu weight 100: the default), so that
// the cgroup ends with l whatever it had: a resize in place. Lowering
// memory_max below what the processes use makes the kernel reclaim, and
// kill one when it cannot (v2; v1 refuses the write, EBUSY).
func (g *cgroup) update(l Limits) error {
	var err error
	if g.c.mode == CgroupV2 {
		err = g.updateV2(l)
	} else {
		err = g.updateV1(l)
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", g.path, err)
	}
	g.limits = l
	return nil
}

func (g *cgroup) updateV2(l Limits) error {
	// Every controller is enabled down to the instance (its service's
	// cgroup.subtree_control too: the instance has memory.max, cpu.weight
	// and pids.max only so), whichever limits are set: each is written.
	// Again at each update: an instance an agent from before this made,
	// adopted since, may lack the files of the limits it started without.
	if err := g.v2.ToggleControllers(v2Controllers, cgroup2.Enable); err != nil {
		return fmt.Errorf("enable %s: %w", strings.Join(v2Controllers, ", "), err)
	}
	dir := filepath.Join(g.c.root, g.path)
	mem, swap := "max", "max"
	if l.MemoryMax > 0 {
		mem, swap = strconv.FormatUint(l.MemoryMax, 10), "0" // the limit is on memory, not memory plus swap
	}
	if err := writeCgroupFile(dir, "memory.max", mem); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
		if err := writeCgroupFile(dir, "memory.swap.max", swap); err != nil {
			return err
		}
	}
	weight := uint32(100)
	if l.CPUWeight > 0 {
		weight = l.CPUWeight
	}
	if err := writeCgroupFile(dir, "cpu.weight", strconv.FormatUint(uint64(weight), 10)); err != nil {
		return err
	}
	tasks := "max"
	if l.TasksMax > 0 {
		tasks = strconv.FormatUint(uint64(l.TasksMax), 10)
	}
	return writeCgroupFile(dir, "pids.max", tasks)
}

func (g *cgroup) updateV1(l Limits) error {
	memDir := filepath.Join(cgroupRoot, string(cgroup1.Memory), g.path)
	mem := "-1"
	if l.MemoryMax > 0 {
		mem = strconv.FormatUint(l.MemoryMax, 10)
	}
	if _, err := os.Stat(filepath.Join(memDir, "memory.memsw.limit_in_bytes")); err == nil {
		// memory+swap = memory (no swapping around the limit), and the kernel keeps
		// memsw >= memory at every write: lowering writes memory first,
		// raising memsw first. Which it is, the failed order says.
		if first := writeCgroupFile(memDir, "memory.limit_in_bytes", mem); first != nil {
			// Raising (memsw first), or lowering below what the cgroup
			// uses (the kernel cannot reclaim enough: EBUSY), which
			// the first error says.
			if err := writeCgroupFile(memDir, "memory.memsw.limit_in_bytes", mem); err != nil {
				return first
			}
			if err := writeCgroupFile(memDir, "memory.limit_in_bytes", mem); err != nil {
				return err
			}
		} else if err := writeCgroupFile(memDir, "memory.memsw.limit_in_bytes", mem); err != nil {
			return err
		}
	} else if err := writeCgroupFile(memDir, "memory.limit_in_bytes", mem); err != nil {
		return err
	}
	shares := uint64(1024)
	if l.CPUWeight > 0 {
		shares = CPUShares(l.CPUWeight)
	}
	if err := writeCgroupFile(filepath.Join(cgroupRoot, string(cgroup1.Cpu), g.path), "cpu.shares", strconv.FormatUint(shares, 10)); err != nil {
		return err
	}
	tasks := "max"
	if l.TasksMax > 0 {
		tasks = strconv.FormatUint(uint64(l.TasksMax), 10)
	}
	return writeCgroupFile(filepath.Join(cgroupRoot, string(cgroup1.Pids), g.path), "pids.max", tasks)
}

// writeCgroupFile writes value to the existing cgroup file dir/name.
func writeCgroupFile(dir, name, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s %s: %w", name, value, err)
	}
	return nil
}

// find returns the cgroup of pid if it is an instance cgroup below the
// agent's parent (a process an earlier agent started), nil otherwise.
func (c *Cgroups) find(pid int) *cgroup {
	if !c.Usable() {
		return nil
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	p := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if (c.mode == CgroupV2 && parts[0] == "0" && parts[1] == "") ||
			(c.mode == CgroupV1 && slices.Contains(strings.Split(parts[1], ","), string(cgroup1.Memory))) {
			p = parts[2]
		}
	}
	rel, ok := strings.CutPrefix(p, c.parent+"/")
	if !ok || strings.Count(rel, "/") != 1 {
		return nil
	}
	g := &cgroup{c: c, path: p}
	if c.mode == CgroupV2 {
		m, err := cgroup2.Load(p, cgroup2.WithMountpoint(c.root))
		if err != nil {
			return nil
		}
		g.v2 = m
	} else {
		cg, err := cgroup1.Load(cgroup1.StaticPath(p), cgroup1.WithHierarchy(v1Hierarchy))
		if err != nil {
			return nil
		}
		g.v1 = cg
	}
	return g
}

// add moves pid into the cgroup (every controller's, on v1).
func (g *cgroup) add(pid int) error {
	var err error
	if g.v2 != nil {
		err = g.v2.AddProc(uint64(pid))
	} else {
		err = g.v1.Add(cgroup1.Process{Pid: pid})
	}
	if err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, g.path, err)
	}
	return nil
}

// pids lists the processes in the cgroup (nil when it is gone).
func (g *cgroup) pids() []int {
	var out []int
	if g.v2 != nil {
		ps, err := g.v2.Procs(true)
		if err != nil {
			return nil
		}
		for _, p := range ps {
			out = append(out, int(p))
		}
		return out
	}
	ps, err := g.v1.Processes(cgroup1.Pids, true)
	if err != nil {
		return nil
	}
	for _, p := range ps {
		out = append(out, p.Pid)
	}
	return out
}

// alive reports whether a process in the cgroup is not a zombie.
func (g *cgroup) alive() bool {
	for _, pid := range g.pids() {
		if st, err := readProcStat(pid); err == nil && st.State != 'Z' && st.State != 'X' {
			return true
		}
	}
	return false
}

// holdsGroup reports whether a live process in the cgroup is in process
// group pgid: the group is then the one its processes formed (a group's
// number cannot be taken over while any process is in it), not one that
// took the number of an emptied group over.
func (g *cgroup) holdsGroup(pgid int) bool {
	for _, pid := range g.pids() {
		if st, err := readProcStat(pid); err == nil && st.PGrp == pgid && st.State != 'Z' && st.State != 'X' {
			return true
		}
	}
	return false
}

// signal sends sig to every process in the cgroup (one by one: a process
// forked meanwhile may be missed; killAll does not miss any).
func (g *cgroup) signal(sig syscall.Signal) {
	for _, pid := range g.pids() {
		if pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, sig)
		}
	}
}

// signalOutside sends sig to every process in the cgroup that is not in
// process group pgid (which the caller signals as a group).
func (g *cgroup) signalOutside(pgid int, sig syscall.Signal) {
	for _, pid := range g.pids() {
		if pg, err := syscall.Getpgid(pid); err == nil && pg != pgid && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, sig)
		}
	}
}

// killAll sends SIGKILL to every process in the cgroup, missing none: v2
// writes cgroup.kill (or freezes, kills and thaws on kernels before 5.14);
// v1 freezes the cgroup, kills every process and thaws it.
func (g *cgroup) killAll() error {
	if g.v2 != nil {
		if err := g.v2.Kill(); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", g.path, err)
		}
		return nil
	}
	if err := g.v1.Freeze(); err != nil {
		g.signal(syscall.SIGKILL)
		return fmt.Errorf("freeze cgroup %s: %w", g.path, err)
	}
	g.signal(syscall.SIGKILL)
	if err := g.v1.Thaw(); err != nil {
		return fmt.Errorf("thaw cgroup %s: %w", g.path, err)
	}
	return nil
}

// oomKills is how many processes of the cgroup the kernel's OOM killer
// killed (memory.events oom_kill on v2, memory.oom_control oom_kill on
// v1). On v2 oom_kill counts the host-wide killer's kills too: they count
// only when the cgroup reached its own limit (memory.events oom).
func (g *cgroup) oomKills() uint64 {
	if g.v2 != nil {
		ev := cgroupCounters(filepath.Join(g.c.root, g.path, "memory.events"))
		if ev["oom"] == 0 {
			return 0
		}
		return ev["oom_kill"]
	}
	return cgroupCounters(filepath.Join(cgroupRoot, "memory", g.path, "memory.oom_control"))["oom_kill"]
}

// cgroupCounters reads a cgroup file of "key value" lines (none when it
// cannot be read).
func cgroupCounters(file string) map[string]uint64 {
	out := map[string]uint64{}
	data, err := os.ReadFile(file)
	if err != nil {
		return out
	}
	for line := range strings.Lines(string(data)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			out[k], _ = strconv.ParseUint(v, 10, 64)
		}
	}
	return out
}

// remove ends every process left in the cgroup, waits for them to be gone
// (at most cgroupEmptyWait) and removes the cgroup, and the service's
// cgroup above it when that is empty too.
func (g *cgroup) remove() error {
	if g.alive() {
		if err := g.killAll(); err != nil {
			return err
		}
		waitGone(g.alive, time.Now().Add(cgroupEmptyWait))
	}
	g.c.mu.Lock()
	defer g.c.mu.Unlock()
	var err error
	if g.v2 != nil {
		err = g.v2.Delete()
	} else {
		err = g.v1.Delete()
	}
	if err != nil && !errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return fmt.Errorf("remove cgroup %s: %w", g.path, err)
	}
	g.removeDirs() // the service's cgroup, when empty
	return nil
}

// StaleCgroupAge is how old an empty instance cgroup must be for
// RemoveStale: an instance is populated within moments of its creation, so
// an older empty one is left over (its process ended while no agent
// watched it, or an agent died between making it and starting the
// process).
const StaleCgroupAge = time.Minute

// RemoveStale removes the empty instance cgroups below the parent that are
// older than age (and service cgroups left empty), as of now. It returns
// the instance cgroups removed. Cgroups with a process are never touched.
func (c *Cgroups) RemoveStale(age time.Duration, now time.Time) ([]string, error) {
	if !c.Usable() {
		return nil, nil
	}
	base := filepath.Join(cgroupRoot, string(cgroup1.Memory), c.parent)
	if c.mode == CgroupV2 {
		base = filepath.Join(c.root, c.parent)
	}
	services, err := os.ReadDir(base)
	if err != nil {
		return nil, fmt.Errorf("remove stale cgroups: %w", err)
	}
	var removed []string
	for _, svc := range services {
		// Only what is named as the agent names its cgroups: the parent
		// may be shared (systemd's units have a dot in their names).
		if !svc.IsDir() || !serviceCgroupRE.MatchString(svc.Name()) {
			continue
		}
		instances, err := os.ReadDir(filepath.Join(base, svc.Name()))
		if err != nil {
			continue
		}
		for _, inst := range instances {
			fi, err := inst.Info()
			if !inst.IsDir() || !instanceCgroupRE.MatchString(inst.Name()) || err != nil || now.Sub(fi.ModTime()) < age {
				continue
			}
			g := &cgroup{c: c, path: path.Join(c.parent, svc.Name(), inst.Name())}
			procs, err := os.ReadFile(filepath.Join(base, svc.Name(), inst.Name(), "cgroup.procs"))
			if err != nil || len(strings.TrimSpace(string(procs))) > 0 {
				continue
			}
			c.mu.Lock()
			g.removeDirs()
			c.mu.Unlock()
			removed = append(removed, g.path)
		}
	}
	return removed, nil
}

// OOMError is the Exit.Err of a process that the kernel's OOM killer ended
// because its service reached resources.memory_max.
type OOMError struct {
	MemoryMax uint64
	Err       error // how the process ended
}

func (e *OOMError) Error() string {
	return fmt.Sprintf("killed at its memory limit (resources.memory_max %d bytes, oom_kill): %v", e.MemoryMax, e.Err)
}

func (e *OOMError) Unwrap() error { return e.Err }

// testHookGateStarted, when set, is called by StartIn with the pid of the
// gate's shell once it is started.
var testHookGateStarted func(pid int)

// StartIn starts cmd (not started yet) in a new cgroup of its own below
// service's, <parent>/<service>/<id>, with limits l, gated as a service
// process is: nothing cmd runs, also what leaves its process group (a
// setsid'd daemon), is outside the cgroup. end, to be called once cmd has
// been waited for, kills whatever is left in the cgroup and removes it.
// The agent runs the service's exec checks this way: they run as the
// service's user, which can rewrite the release's files they name. The
// wait for the gate's shell ends with ctx (cmd is then killed).
func (c *Cgroups) StartIn(ctx context.Context, service string, l Limits, cmd *exec.Cmd) (end func(), err error) {
	cg, err := c.create(service, l)
	if err != nil {
		return nil, err
	}
	g, err := gate(cmd, cmd.Path)
	if err != nil {
		_ = cg.remove()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = g.open(false)
		_ = cg.remove()
		return nil, err
	}
	if testHookGateStarted != nil {
		testHookGateStarted(cmd.Process.Pid)
	}
	err = g.ready(ctx)
	if err == nil {
		err = cg.add(cmd.Process.Pid)
	}
	if err == nil {
		err = g.open(true)
	}
	if err != nil {
		_ = g.open(false)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = cg.remove()
		return nil, err
	}
	return func() { _ = cg.remove() }, nil
}
