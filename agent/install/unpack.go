package install

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// ErrUnsafeEntry is returned (wrapped, naming the entry) for an archive entry
// that would leave the release directory or is of a forbidden kind.
var ErrUnsafeEntry = errors.New("unsafe archive entry")

// ErrLimit is returned (wrapped) when an archive exceeds a size or count limit.
var ErrLimit = errors.New("archive limit exceeded")

// maxLinkHops bounds symlink resolution while checking one link.
const maxLinkHops = 40

// maxLinkComponents bounds the path components processed while checking all
// the links of one archive, so a small archive of long chained links cannot
// keep Stage busy for minutes.
const maxLinkComponents = 1 << 20

// maxNameComponent is the longest file name component (NAME_MAX): a longer
// component can name nothing in the tree, so it is never looked up.
const maxNameComponent = 255

// fsyncUnpacked makes UnpackTar fsync what it writes; only the fuzz test
// turns it off, for speed.
var fsyncUnpacked = true

// UnpackGzip unpacks a .tar.gz stream into dir (see UnpackTar).
func UnpackGzip(r io.Reader, dir string, lim Limits) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	defer zr.Close()
	if err := UnpackTar(zr, dir, lim); err != nil {
		return err
	}
	// Drain the gzip trailer so its checksum is verified.
	if _, err := io.Copy(io.Discard, io.LimitReader(zr, 1<<20)); err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	return nil
}

// UnpackTar unpacks a tar stream into dir, which must exist (it should be
// empty). All writes go through an os.Root opened on dir. It refuses
// absolute paths, ".." components, symlinks whose target leaves dir (checked
// by resolving every link once the tree is complete), entries below a
// symlink, hard links, device, fifo and other special entries, duplicate
// entries, and entries over the limits. Files get at most mode 0755, and are
// fsynced. On error dir may hold a partial tree without symlinks; the caller
// removes it.
func UnpackTar(r io.Reader, dir string, lim Limits) error {
	lim = lim.withDefaults()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open root %s: %w", dir, err)
	}
	defer root.Close()
	u := &unpacker{root: root, lim: lim, links: map[string]string{}, dirs: map[string]bool{".": true}}
	if err := u.unpack(tar.NewReader(r)); err != nil {
		// Leave no link behind that was not checked: a partial tree must not
		// point outside the root either.
		for name := range u.links {
			root.Remove(name)
		}
		return err
	}
	return nil
}

func (u *unpacker) unpack(tr *tar.Reader) error {
	for {
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
	if !fsyncUnpacked {
		return nil
	}
	return u.syncDirs()
}

type unpacker struct {
	root    *os.Root
	lim     Limits
	entries int
	total   int64
	links   map[string]string // symlink name -> target
	dirs    map[string]bool   // directories created (cleaned names)
	seen    map[string]bool
}

func unsafeEntry(name, format string, args ...any) error {
	return fmt.Errorf("entry %q: %s: %w", name, fmt.Sprintf(format, args...), ErrUnsafeEntry)
}

func limitErr(name, format string, args ...any) error {
	return fmt.Errorf("entry %q: %s: %w", name, fmt.Sprintf(format, args...), ErrLimit)
}

// cleanName validates an entry name and returns it cleaned ("." for the root).
func cleanName(name string) (string, error) {
	if name == "" {
		return "", unsafeEntry(name, "empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", unsafeEntry(name, "NUL in name")
	}
	if strings.HasPrefix(name, "/") {
		return "", unsafeEntry(name, "absolute path")
	}
	if strings.Contains(name, `\`) {
		return "", unsafeEntry(name, "backslash in name")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", unsafeEntry(name, `".." in path`)
		}
	}
	return path.Clean(name), nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // pax global header: metadata only
	}
	u.entries++
	if u.entries > u.lim.MaxEntries {
		return limitErr(hdr.Name, "more than %d entries", u.lim.MaxEntries)
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return nil
		}
		return unsafeEntry(hdr.Name, "names the release directory itself")
	}
	if u.seen == nil {
		u.seen = map[string]bool{}
	}
	if u.seen[name] {
		return unsafeEntry(hdr.Name, "duplicate entry")
	}
	u.seen[name] = true
	// No entry may sit below a symlink: what the link points at would decide
	// where it lands.
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if _, ok := u.links[p]; ok {
			return unsafeEntry(hdr.Name, "parent %q is a symlink", p)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.mkdir(hdr.Name, name)
	case tar.TypeReg: // tar.Reader reports old-style '\x00' entries as TypeReg (or TypeDir)
		return u.file(hdr, name, r)
	case tar.TypeSymlink:
		return u.symlink(hdr, name)
	case tar.TypeLink:
		return unsafeEntry(hdr.Name, "hard link to %q not allowed", hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return unsafeEntry(hdr.Name, "device file not allowed")
	case tar.TypeFifo:
		return unsafeEntry(hdr.Name, "fifo not allowed")
	default:
		return unsafeEntry(hdr.Name, "entry type %q not allowed", string(hdr.Typeflag))
	}
}

// mkdirs creates the parents of name (already checked not to be symlinks).
func (u *unpacker) mkdirs(orig, dir string) error {
	if dir == "." || u.dirs[dir] {
		return nil
	}
	if err := u.mkdirs(orig, path.Dir(dir)); err != nil {
		return err
	}
	err := u.root.Mkdir(dir, 0o755)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("entry %q: mkdir %q: %w", orig, dir, err)
	}
	if err != nil {
		// It exists: it must be a directory we made (a file there is a conflict).
		fi, lerr := u.root.Lstat(dir)
		if lerr != nil || !fi.IsDir() {
			return unsafeEntry(orig, "%q exists and is not a directory", dir)
		}
	}
	u.dirs[dir] = true
	return nil
}

func (u *unpacker) mkdir(orig, name string) error {
	if err := u.mkdirs(orig, path.Dir(name)); err != nil {
		return err
	}
	if u.dirs[name] {
		return nil
	}
	if err := u.root.Mkdir(name, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return unsafeEntry(orig, "already exists")
		}
		return fmt.Errorf("entry %q: mkdir: %w", orig, err)
	}
	u.dirs[name] = true
	return nil
}

func (u *unpacker) file(hdr *tar.Header, name string, r io.Reader) error {
	if hdr.Size < 0 {
		return unsafeEntry(hdr.Name, "negative size")
	}
	if hdr.Size > u.lim.MaxFileBytes {
		return limitErr(hdr.Name, "size %d over the per-file limit %d", hdr.Size, u.lim.MaxFileBytes)
	}
	if u.total+hdr.Size > u.lim.MaxTotalBytes {
		return limitErr(hdr.Name, "total size over the limit %d", u.lim.MaxTotalBytes)
	}
	if u.dirs[name] {
		return unsafeEntry(hdr.Name, "already exists as a directory")
	}
	if err := u.mkdirs(hdr.Name, path.Dir(name)); err != nil {
		return err
	}
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(hdr.Mode)&0o755|0o400)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return unsafeEntry(hdr.Name, "already exists")
		}
		return fmt.Errorf("entry %q: create: %w", hdr.Name, err)
	}
	n, err := io.Copy(f, io.LimitReader(r, hdr.Size+1))
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("got %d bytes, header says %d", n, hdr.Size)
	}
	if err == nil && fsyncUnpacked {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("entry %q: write: %w", hdr.Name, err)
	}
	u.total += n
	return nil
}

func (u *unpacker) symlink(hdr *tar.Header, name string) error {
	target := hdr.Linkname
	switch {
	case target == "":
		return unsafeEntry(hdr.Name, "empty symlink target")
	case strings.HasPrefix(target, "/"):
		return unsafeEntry(hdr.Name, "symlink to absolute path %q", target)
	case strings.ContainsRune(target, 0) || strings.Contains(target, `\`):
		return unsafeEntry(hdr.Name, "bad symlink target %q", target)
	case len(target) > 4096:
		return unsafeEntry(hdr.Name, "symlink target too long")
	}
	// A quick lexical check now; checkLinks resolves all links at the end.
	if !withinRoot(path.Dir(name), target) {
		return unsafeEntry(hdr.Name, "symlink target %q leaves the release directory", target)
	}
	if u.dirs[name] {
		return unsafeEntry(hdr.Name, "already exists as a directory")
	}
	if err := u.mkdirs(hdr.Name, path.Dir(name)); err != nil {
		return err
	}
	if err := u.root.Symlink(target, name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return unsafeEntry(hdr.Name, "already exists")
		}
		return fmt.Errorf("entry %q: symlink: %w", hdr.Name, err)
	}
	u.links[name] = target
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
	for _, n := range names {
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
		return unsafeEntry(link, "symlink target %q leaves the release directory", strings.Join(lt.nodes[id].target, "/"))
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

func (u *unpacker) syncDirs() error {
	for d := range u.dirs {
		f, err := u.root.Open(d)
		if err != nil {
			return fmt.Errorf("sync dir %q: %w", d, err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync dir %q: %w", d, err)
		}
	}
	return nil
}
