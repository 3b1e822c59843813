package install

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
)

// ErrUnsafeEntry is returned (wrapped, naming the entry) for an archive entry
// that would leave the release directory or is of a forbidden kind.
var ErrUnsafeEntry = errors.New("unsafe archive entry")

// ErrLimit is returned (wrapped) when an archive exceeds a size or count limit.
var ErrLimit = errors.New("archive limit exceeded")

// Limits on the shape of an archive, whatever its Limits say. Each bounds
// the work one entry can cause, so that the work of an archive grows with
// its size and never faster (a 153-byte archive of one entry "d/" repeated
// 4,000 times used to take 104 s: every implicit directory was made by a
// mkdir that walked the whole path).
const (
	// maxPathBytes is the longest entry name (PATH_MAX); longer names are
	// refused before they are looked at.
	maxPathBytes = 4096
	// maxPathDepth is the most components a (cleaned) entry name may have.
	// Release trees are far shallower; deeper names are refused.
	maxPathDepth = 64
	// maxNameComponent is the longest file name component (NAME_MAX): a
	// longer component can name nothing in the tree, so an entry with one is
	// refused and a symlink target's is never looked up.
	maxNameComponent = 255
	// maxLinkTarget is the longest symlink target (PATH_MAX).
	maxLinkTarget = 4096
	// maxLinkBytes bounds the names and targets of an archive's symlinks,
	// which are kept in memory until the tree is complete and every link is
	// checked.
	maxLinkBytes = 16 << 20
	// maxPathWalk bounds the path components the kernel resolves for one
	// archive through the os.Root (each openat, mkdirat, symlinkat counts
	// the components of the name it is given). Directories are opened once
	// and kept open along the current path, so an archive in the usual
	// order (a directory's entries together) costs about one component per
	// entry and two per directory; the bound is reached only by archives
	// that jump between deep directories on every entry.
	maxPathWalk = 1 << 22
	// maxLinkHops bounds symlink resolution while checking one link.
	maxLinkHops = 40
	// maxLinkComponents bounds the path components processed while checking
	// all the links of one archive, so a small archive of long chained links
	// cannot keep Stage busy for minutes.
	maxLinkComponents = 1 << 20
)

// fsyncUnpacked makes UnpackTar fsync what it writes; only the fuzz test
// turns it off, for speed.
var fsyncUnpacked = true

// UnpackGzip unpacks a .tar.gz stream into dir (see UnpackTar).
func UnpackGzip(ctx context.Context, r io.Reader, dir string, lim Limits) error {
	return unpackGzip(ctx, r, dir, lim, nil)
}

// unpackGzip is UnpackGzip, stopped by guard (nil: none) before the
// filesystem's free space goes under its floor (Installer.Stage).
func unpackGzip(ctx context.Context, r io.Reader, dir string, lim Limits, guard *spaceGuard) error {
	zr, err := gzip.NewReader(ctxReader{ctx, r})
	if err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	defer zr.Close()
	if _, err := unpackTarGuarded(ctx, zr, dir, lim, guard); err != nil {
		return err
	}
	// Drain the gzip trailer so its checksum is verified.
	if _, err := io.Copy(io.Discard, io.LimitReader(zr, 1<<20)); err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	return nil
}

// UnpackTar unpacks a tar stream into dir, which must exist and be empty.
// All writes go through an os.Root opened on dir. It refuses absolute
// paths, ".." components, symlinks whose target leaves dir (checked by
// resolving every link once the tree is complete), entries below a
// symlink, hard links, device, fifo and other special entries, duplicate
// entries, and entries over the limits: lim's, where every directory an
// entry implies (a/b/ for a/b/c) counts as an entry too, and the constants
// above (name length and depth, symlink bytes, path components walked).
// Files get at most mode 0755, and are fsynced. Cancelling ctx stops it
// between two reads, entries or directories, with ctx's error. On error dir
// may hold a partial tree without symlinks; the caller removes it.
func UnpackTar(ctx context.Context, r io.Reader, dir string, lim Limits) error {
	_, err := unpackTar(ctx, r, dir, lim)
	return err
}

// unpackTar is UnpackTar; it returns the unpacker for the tests to check
// the work it did.
func unpackTar(ctx context.Context, r io.Reader, dir string, lim Limits) (*unpacker, error) {
	return unpackTarGuarded(ctx, r, dir, lim, nil)
}

// unpackTarGuarded is unpackTar, which checks guard (nil: none) before it
// writes anything and as it writes files.
func unpackTarGuarded(ctx context.Context, r io.Reader, dir string, lim Limits, guard *spaceGuard) (*unpacker, error) {
	lim = lim.withDefaults()
	if guard != nil {
		if err := guard.check(); err != nil {
			return nil, err
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", dir, err)
	}
	defer root.Close()
	u := &unpacker{ctx: ctx, root: root, lim: lim, links: map[string]string{}, guard: guard,
		nodes: []node{{kind: nodeDir, explicit: true}}, children: map[childKey]int32{}}
	u.stack = []openDir{{id: 0, r: root}}
	defer u.closeStack(1)
	if err := u.unpack(tar.NewReader(ctxReader{ctx, r})); err != nil {
		// Leave no link behind that was not checked: a partial tree must not
		// point outside the root either.
		for name := range u.links {
			root.Remove(name)
		}
		return u, err
	}
	return u, nil
}

func (u *unpacker) unpack(tr *tar.Reader) error {
	for {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	if err := u.checkLinks(); err != nil {
		return err
	}
	u.closeStack(1)
	if !fsyncUnpacked {
		return nil
	}
	return u.syncDirs()
}

// Kinds of node.
const (
	nodeDir = iota + 1
	nodeFile
	nodeLink
)

// node is a name in the unpacked tree (nodes[0] is the root). The tree is
// the whole of what the archive made, as the directory started empty.
type node struct {
	parent   int32
	kind     uint8
	explicit bool   // a directory named by an entry (a second one is a duplicate)
	name     string // the last component
	child    int32  // directories: first child directory (0: none)
	sibling  int32  // directories: next directory of the same parent (0: none)
}

type childKey struct {
	parent int32
	name   string
}

// openDir is a directory of the tree held open.
type openDir struct {
	id int32
	r  *os.Root
}

type unpacker struct {
	ctx       context.Context
	root      *os.Root
	lim       Limits
	entries   int               // tar entries plus the directories they implied
	headers   int               // tar entries
	dirs      int               // directories made (explicit or implied), the root not counted
	total     int64             // bytes of files written
	walk      int               // path components resolved through the os.Root
	linkBytes int               // names and targets of symlinks
	linkSteps int               // path components processed checking symlinks
	links     map[string]string // symlink name -> target
	guard     *spaceGuard       // stops the writes before the disk fills (nil: none)
	nodes     []node
	children  map[childKey]int32
	// stack holds the directories open along the path of the latest entry,
	// the root first: going down one level costs one openat, going up none.
	stack []openDir
	chain []int32 // scratch for dirAt
}

// clip renders a name from the archive for a message: at most 200 bytes.
func clip(name string) string {
	if len(name) <= 200 {
		return name
	}
	return name[:200] + "..."
}

func unsafeEntry(name, format string, args ...any) error {
	return fmt.Errorf("entry %q: %s: %w", clip(name), fmt.Sprintf(format, args...), ErrUnsafeEntry)
}

func limitErr(name, format string, args ...any) error {
	return fmt.Errorf("entry %q: %s: %w", clip(name), fmt.Sprintf(format, args...), ErrLimit)
}

// cleanName validates an entry name and returns it cleaned ("." for the
// root) and split into components (none for the root).
func cleanName(name string) (string, []string, error) {
	if name == "" {
		return "", nil, unsafeEntry(name, "empty name")
	}
	if len(name) > maxPathBytes {
		return "", nil, limitErr(name, "name of %d bytes, over the limit of %d", len(name), maxPathBytes)
	}
	if strings.ContainsRune(name, 0) {
		return "", nil, unsafeEntry(name, "NUL in name")
	}
	if strings.HasPrefix(name, "/") {
		return "", nil, unsafeEntry(name, "absolute path")
	}
	if strings.Contains(name, `\`) {
		return "", nil, unsafeEntry(name, "backslash in name")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", nil, unsafeEntry(name, `".." in path`)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return clean, nil, nil
	}
	comps := strings.Split(clean, "/")
	if len(comps) > maxPathDepth {
		return "", nil, limitErr(name, "%d path components, over the limit of %d", len(comps), maxPathDepth)
	}
	for _, c := range comps {
		if len(c) > maxNameComponent {
			return "", nil, limitErr(name, "a name component of %d bytes, over the limit of %d", len(c), maxNameComponent)
		}
	}
	return clean, comps, nil
}

// checkType refuses the kinds of entry never unpacked, and checks what can
// be checked of the others before anything is made for them.
func (u *unpacker) checkType(hdr *tar.Header, name string) error {
	switch hdr.Typeflag {
	case tar.TypeDir:
		return nil
	case tar.TypeReg: // tar.Reader reports old-style '\x00' entries as TypeReg (or TypeDir)
		if hdr.Size < 0 {
			return unsafeEntry(hdr.Name, "negative size")
		}
		if hdr.Size > u.lim.MaxFileBytes {
			return limitErr(hdr.Name, "size %d over the per-file limit %d", hdr.Size, u.lim.MaxFileBytes)
		}
		if u.total+hdr.Size > u.lim.MaxTotalBytes {
			return limitErr(hdr.Name, "total size over the limit %d", u.lim.MaxTotalBytes)
		}
		return nil
	case tar.TypeSymlink:
		target := hdr.Linkname
		switch {
		case target == "":
			return unsafeEntry(hdr.Name, "empty symlink target")
		case strings.HasPrefix(target, "/"):
			return unsafeEntry(hdr.Name, "symlink to absolute path %q", clip(target))
		case strings.ContainsRune(target, 0) || strings.Contains(target, `\`):
			return unsafeEntry(hdr.Name, "bad symlink target %q", clip(target))
		case len(target) > maxLinkTarget:
			return unsafeEntry(hdr.Name, "symlink target too long")
		}
		if u.linkBytes+len(name)+len(target) > maxLinkBytes {
			return limitErr(hdr.Name, "symlink names and targets over %d bytes", maxLinkBytes)
		}
		// A quick lexical check now; checkLinks resolves all links at the end.
		if !withinRoot(path.Dir(name), target) {
			return unsafeEntry(hdr.Name, "symlink target %q leaves the release directory", clip(target))
		}
		return nil
	case tar.TypeLink:
		return unsafeEntry(hdr.Name, "hard link to %q not allowed", clip(hdr.Linkname))
	case tar.TypeChar, tar.TypeBlock:
		return unsafeEntry(hdr.Name, "device file not allowed")
	case tar.TypeFifo:
		return unsafeEntry(hdr.Name, "fifo not allowed")
	default:
		return unsafeEntry(hdr.Name, "entry type %q not allowed", string(hdr.Typeflag))
	}
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // pax global header: metadata only
	}
	u.headers++
	u.entries++
	if u.entries > u.lim.MaxEntries {
		return limitErr(hdr.Name, "more than %d entries", u.lim.MaxEntries)
	}
	if u.guard != nil {
		// With the directories it implies: at most MaxEntries in all, a
		// look at least every unpackCheckEveryEntries of them.
		if err := u.guard.entries(1); err != nil {
			return err
		}
	}
	name, comps, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return nil
		}
		return unsafeEntry(hdr.Name, "names the release directory itself")
	}
	if err := u.checkType(hdr, name); err != nil {
		return err
	}
	// Find the parent in the tree; what is missing of it is made below.
	parent, i := int32(0), 0
	for ; i < len(comps)-1; i++ {
		ch, ok := u.children[childKey{parent, comps[i]}]
		if !ok {
			break
		}
		switch u.nodes[ch].kind {
		case nodeLink:
			// No entry may sit below a symlink: what the link points at
			// would decide where it lands.
			return unsafeEntry(hdr.Name, "parent %q is a symlink", strings.Join(comps[:i+1], "/"))
		case nodeFile:
			return unsafeEntry(hdr.Name, "%q exists and is not a directory", strings.Join(comps[:i+1], "/"))
		}
		parent = ch
	}
	last := comps[len(comps)-1]
	if i == len(comps)-1 {
		if ch, ok := u.children[childKey{parent, last}]; ok {
			n := &u.nodes[ch]
			switch {
			case n.kind == nodeDir && hdr.Typeflag == tar.TypeDir && !n.explicit:
				n.explicit = true // made for an earlier entry below it
				return nil
			case n.kind == nodeDir && hdr.Typeflag != tar.TypeDir && !n.explicit:
				return unsafeEntry(hdr.Name, "already exists as a directory")
			default:
				return unsafeEntry(hdr.Name, "duplicate entry")
			}
		}
	}
	if implied := len(comps) - 1 - i; implied > 0 {
		u.entries += implied
		if u.entries > u.lim.MaxEntries {
			return limitErr(hdr.Name, "more than %d entries (counting the %d directories it implies)", u.lim.MaxEntries, implied)
		}
		if u.guard != nil {
			if err := u.guard.entries(implied); err != nil {
				return err
			}
		}
		for ; i < len(comps)-1; i++ {
			if parent, err = u.mkdir(hdr.Name, parent, comps[i], false); err != nil {
				return err
			}
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		_, err = u.mkdir(hdr.Name, parent, last, true)
		return err
	case tar.TypeReg:
		return u.file(hdr, parent, last, r)
	default: // tar.TypeSymlink: checkType refused the others
		return u.symlink(hdr, name, parent, last)
	}
}

// step counts one path component resolved through the root; it reports
// whether that is over the limit (see walkErr).
func (u *unpacker) step() bool {
	u.walk++
	return u.walk > pathWalkLimit
}

// pathWalkLimit is maxPathWalk; tests lower it.
var pathWalkLimit = maxPathWalk

func walkErr(name string) error {
	return limitErr(name, "unpacking took over %d path lookups", pathWalkLimit)
}

// dirAt returns the directory of node id opened: the stack of open
// directories is cut back to the deepest ancestor of id it holds, and id's
// path below that is opened one component at a time.
func (u *unpacker) dirAt(orig string, id int32) (*os.Root, error) {
	top := u.stack[len(u.stack)-1]
	if top.id == id {
		return top.r, nil
	}
	chain := u.chain[:0]
	for n := id; n != 0; n = u.nodes[n].parent {
		chain = append(chain, n)
	}
	u.chain = chain
	// chain is id's path from id up, the root left out; the stack is a
	// path from the root down.
	k := 1
	for k < len(u.stack) && len(chain)-k >= 0 && u.stack[k].id == chain[len(chain)-k] {
		k++
	}
	u.closeStack(k)
	for j := len(chain) - k; j >= 0; j-- {
		n := chain[j]
		if u.step() {
			return nil, walkErr(orig)
		}
		r, err := u.stack[len(u.stack)-1].r.OpenRoot(u.nodes[n].name)
		if err != nil {
			return nil, fmt.Errorf("entry %q: open directory: %w", clip(orig), err)
		}
		u.stack = append(u.stack, openDir{id: n, r: r})
	}
	return u.stack[len(u.stack)-1].r, nil
}

// closeStack closes the open directories from stack[k] on.
func (u *unpacker) closeStack(k int) {
	for len(u.stack) > k {
		u.stack[len(u.stack)-1].r.Close()
		u.stack = u.stack[:len(u.stack)-1]
	}
}

// add records a new node below parent.
func (u *unpacker) add(parent int32, name string, kind uint8, explicit bool) int32 {
	id := int32(len(u.nodes))
	n := node{parent: parent, kind: kind, explicit: explicit, name: name}
	if kind == nodeDir {
		n.sibling = u.nodes[parent].child
		u.nodes[parent].child = id
		u.dirs++
	}
	u.nodes = append(u.nodes, n)
	u.children[childKey{parent, name}] = id
	return id
}

// mkdir makes directory name in parent's directory and returns its node.
func (u *unpacker) mkdir(orig string, parent int32, name string, explicit bool) (int32, error) {
	d, err := u.dirAt(orig, parent)
	if err != nil {
		return 0, err
	}
	if u.step() {
		return 0, walkErr(orig)
	}
	if err := d.Mkdir(name, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return 0, unsafeEntry(orig, "%q already exists", name)
		}
		return 0, fmt.Errorf("entry %q: mkdir: %w", clip(orig), err)
	}
	return u.add(parent, name, nodeDir, explicit), nil
}

func (u *unpacker) file(hdr *tar.Header, parent int32, name string, r io.Reader) error {
	d, err := u.dirAt(hdr.Name, parent)
	if err != nil {
		return err
	}
	if u.step() {
		return walkErr(hdr.Name)
	}
	f, err := d.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(hdr.Mode)&0o755|0o400)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return unsafeEntry(hdr.Name, "already exists")
		}
		return fmt.Errorf("entry %q: create: %w", clip(hdr.Name), err)
	}
	u.add(parent, name, nodeFile, true)
	var w io.Writer = f
	if u.guard != nil {
		w = guardedWriter{u.guard, f}
	}
	n, err := io.Copy(w, io.LimitReader(r, hdr.Size+1))
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("got %d bytes, header says %d", n, hdr.Size)
	}
	if err == nil && fsyncUnpacked {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	u.total += n
	if err != nil {
		return fmt.Errorf("entry %q: write: %w", clip(hdr.Name), err)
	}
	return nil
}

func (u *unpacker) symlink(hdr *tar.Header, full string, parent int32, name string) error {
	d, err := u.dirAt(hdr.Name, parent)
	if err != nil {
		return err
	}
	if u.step() {
		return walkErr(hdr.Name)
	}
	if err := d.Symlink(hdr.Linkname, name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return unsafeEntry(hdr.Name, "already exists")
		}
		return fmt.Errorf("entry %q: symlink: %w", clip(hdr.Name), err)
	}
	u.add(parent, name, nodeLink, true)
	u.links[full] = hdr.Linkname
	u.linkBytes += len(full) + len(hdr.Linkname)
	return nil
}

// withinRoot reports whether joining rel onto dir (both relative to the
// root, dir clean) stays inside the root lexically.
func withinRoot(dir, rel string) bool {
	depth := 0
	if dir != "." {
		depth = strings.Count(dir, "/") + 1
	}
	for _, c := range strings.Split(rel, "/") {
		switch c {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return false
			}
		default:
			depth++
		}
	}
	return true
}

// linkNode is a node of the tree of symlink paths: a symlink, or a
// directory with a symlink somewhere below it. Paths with no symlink below
// them are not in the tree.
type linkNode struct {
	parent   int32            // index of the parent node (the root is its own parent)
	children map[string]int32 // name -> node
	link     string           // archive name of the symlink ("" for a directory)
	target   []string         // components of the symlink's target
}

// linkTree indexes the symlinks of an archive for resolution.
type linkTree struct {
	nodes []linkNode // nodes[0] is the root
}

func newLinkTree(links map[string]string) *linkTree {
	lt := &linkTree{nodes: []linkNode{{}}}
	for name, target := range links {
		n := int32(0)
		for _, c := range strings.Split(name, "/") {
			ch, ok := lt.nodes[n].children[c]
			if !ok {
				ch = int32(len(lt.nodes))
				lt.nodes = append(lt.nodes, linkNode{parent: n})
				if lt.nodes[n].children == nil {
					lt.nodes[n].children = map[string]int32{}
				}
				lt.nodes[n].children[c] = ch
			}
			n = ch
		}
		lt.nodes[n].link = name
		lt.nodes[n].target = strings.Split(target, "/")
	}
	return lt
}

// checkLinks resolves every symlink the way the kernel would, using the
// final tree (which is exactly the archive's entries: the directory started
// empty), and refuses any whose resolution leaves the root at any point. The
// work is bounded: at most maxLinkHops links followed per symlink, and at
// most maxLinkComponents path components processed for the whole archive.
func (u *unpacker) checkLinks() error {
	if len(u.links) == 0 {
		return nil
	}
	names := make([]string, 0, len(u.links))
	for n := range u.links {
		names = append(names, n)
	}
	sort.Strings(names)
	lt := newLinkTree(u.links)
	budget := maxLinkComponents
	index := map[string]int32{}
	for i := range lt.nodes {
		if lt.nodes[i].link != "" {
			index[lt.nodes[i].link] = int32(i)
		}
	}
	defer func() { u.linkSteps = maxLinkComponents - budget }()
	for _, n := range names {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		if err := lt.resolve(index[n], &budget); err != nil {
			return err
		}
	}
	return nil
}

// resolve follows the symlink at node id from its directory. The position is
// a tree node plus how many components it lies below that node outside the
// tree (where no symlink can be), so every component costs O(1) besides one
// map lookup, whatever the depth.
func (lt *linkTree) resolve(id int32, budget *int) error {
	link := lt.nodes[id].link
	escape := func() error {
		return unsafeEntry(link, "symlink target %q leaves the release directory", clip(strings.Join(lt.nodes[id].target, "/")))
	}
	type frame struct {
		comps []string
		i     int
	}
	node, extra := lt.nodes[id].parent, 0
	todo := []frame{{comps: lt.nodes[id].target}}
	hops := 0
	for len(todo) > 0 {
		top := &todo[len(todo)-1]
		if top.i == len(top.comps) {
			todo = todo[:len(todo)-1]
			continue
		}
		c := top.comps[top.i]
		top.i++
		*budget--
		if *budget < 0 {
			return limitErr(link, "checking symlinks took over %d path components", maxLinkComponents)
		}
		switch {
		case c == "" || c == ".":
		case c == "..":
			switch {
			case extra > 0:
				extra--
			case node == 0:
				return escape()
			default:
				node = lt.nodes[node].parent
			}
		case extra > 0 || len(c) > maxNameComponent:
			extra++
		default:
			ch, ok := lt.nodes[node].children[c]
			switch {
			case !ok:
				extra = 1
			case lt.nodes[ch].link != "":
				hops++
				if hops > maxLinkHops {
					return unsafeEntry(link, "too many levels of symlinks")
				}
				// The component is replaced by the link's target, resolved
				// from the link's directory (where we are).
				todo = append(todo, frame{comps: lt.nodes[ch].target})
			default:
				node = ch
			}
		}
	}
	return nil
}

// syncDirs fsyncs every directory made, the root first, walking the tree
// with each directory opened from its parent (two path components each).
func (u *unpacker) syncDirs() error {
	return u.syncDir(u.root, 0)
}

func (u *unpacker) syncDir(d *os.Root, id int32) error {
	if err := u.ctx.Err(); err != nil {
		return err
	}
	if u.step() {
		return walkErr(u.pathOf(id))
	}
	f, err := d.Open(".")
	if err != nil {
		return fmt.Errorf("sync dir %q: %w", clip(u.pathOf(id)), err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync dir %q: %w", clip(u.pathOf(id)), err)
	}
	for ch := u.nodes[id].child; ch != 0; ch = u.nodes[ch].sibling {
		if u.step() {
			return walkErr(u.pathOf(ch))
		}
		cd, err := d.OpenRoot(u.nodes[ch].name)
		if err != nil {
			return fmt.Errorf("sync dir %q: %w", clip(u.pathOf(ch)), err)
		}
		err = u.syncDir(cd, ch)
		cd.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// pathOf is the name of node id in the tree ("." for the root).
func (u *unpacker) pathOf(id int32) string {
	var comps []string
	for ; id != 0; id = u.nodes[id].parent {
		comps = append(comps, u.nodes[id].name)
	}
	if len(comps) == 0 {
		return "."
	}
	slices.Reverse(comps)
	return strings.Join(comps, "/")
}
