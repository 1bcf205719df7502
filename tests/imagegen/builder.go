package imagegen

import (
	"fmt"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// baseTime is the modification time of layer 1's entries; layer N is N-1
// days later.
var baseTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// layerBuilder collects the entries of one layer.
type layerBuilder struct {
	index   int // 0-based
	spec    LayerSpec
	dir     string
	rng     *rand.Rand
	seed    uint64
	below   *model // the layers underneath; read only
	busybox []byte
	mtime   int64 // default mtime of the layer's entries, ns

	entries  map[string]*entry // entNormal and entHardlink by path
	removed  map[string]bool   // whiteout paths
	opaque   map[string]bool   // opaque directories
	nextSeed uint64
}

func newLayerBuilder(o *Options, index int, below *model, busybox []byte) *layerBuilder {
	spec := o.Layers[index]
	return &layerBuilder{
		index:   index,
		spec:    spec,
		dir:     spec.dir(index),
		rng:     rand.New(rand.NewPCG(o.Seed, uint64(index)+1)),
		seed:    o.Seed<<20 ^ uint64(index+1)<<48,
		below:   below,
		busybox: busybox,
		mtime:   baseTime.Add(time.Duration(index) * 24 * time.Hour).UnixNano(),
		entries: make(map[string]*entry),
		removed: make(map[string]bool),
		opaque:  make(map[string]bool),
	}
}

// build fills the layer as its spec says and returns its entries in tar order.
func (b *layerBuilder) build() ([]*entry, error) {
	s := b.spec
	// Whiteouts, opaque directories and replacements pick from the layers
	// below, before this layer adds anything.
	if err := b.addWhiteouts(s.Whiteouts); err != nil {
		return nil, err
	}
	if err := b.addOpaque(s.Opaque); err != nil {
		return nil, err
	}
	if err := b.addReplacements(s.Replacements); err != nil {
		return nil, err
	}
	if s.Busybox {
		b.addBusybox()
	}
	b.dirNode(b.dir)
	if s.Zoo {
		b.addZoo(b.dir + "/zoo")
	}
	b.addSmallFiles(b.dir+"/files", s.SmallFiles)
	for i, size := range s.Random {
		b.file(fmt.Sprintf("%s/blobs/random-%02d.bin", b.dir, i), 0o644, content{kind: kindRandom, seed: b.newSeed(), size: size})
	}
	for i, size := range s.Compressible {
		if i%2 == 0 {
			b.file(fmt.Sprintf("%s/blobs/lib%s-%02d.so.1", b.dir, vocabulary[i], i), 0o755, content{kind: kindELF, seed: b.newSeed(), size: size})
		} else {
			b.file(fmt.Sprintf("%s/blobs/%s-%02d.log", b.dir, vocabulary[i], i), 0o644, content{kind: kindText, seed: b.newSeed(), size: size})
		}
	}
	for i, size := range s.Zeros {
		b.file(fmt.Sprintf("%s/blobs/zeros-%02d.img", b.dir, i), 0o644, content{kind: kindZeros, size: size})
	}

	var all []*entry
	for _, e := range b.entries {
		all = append(all, e)
	}
	for p := range b.removed {
		all = append(all, &entry{path: p, kind: entWhiteout,
			node: fstree.Node{Type: fstree.TypeFile, MtimeNs: b.mtime}})
	}
	for p := range b.opaque {
		all = append(all, &entry{path: p, kind: entOpaque,
			node: fstree.Node{Type: fstree.TypeFile, MtimeNs: b.mtime}})
	}
	sortEntries(all)
	return all, nil
}

func (b *layerBuilder) newSeed() uint64 {
	b.nextSeed++
	return b.seed + b.nextSeed
}

// add records e and the directories above it.
func (b *layerBuilder) add(e *entry) *entry {
	b.parents(e.path)
	if e.node.MtimeNs == 0 {
		e.node.MtimeNs = b.mtime
	}
	if e.uname == "" && e.gname == "" && e.node.UID == 0 && e.node.GID == 0 {
		e.uname, e.gname = "root", "root"
	}
	b.entries[e.path] = e
	return e
}

// parents adds the directories above p that the layer has not added yet,
// with the metadata the layers below gave them (a new directory: 0755 root).
func (b *layerBuilder) parents(p string) {
	for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
		if _, ok := b.entries[dir]; ok {
			continue
		}
		b.dirNode(dir)
	}
}

// dirNode adds directory p (and its parents) unless the layer has it,
// keeping the metadata of a directory the layers below have at p.
func (b *layerBuilder) dirNode(p string) *entry {
	if e, ok := b.entries[p]; ok {
		return e
	}
	n := fstree.Node{Type: fstree.TypeDir, Mode: 0o755, MtimeNs: b.mtime}
	if old, ok := b.below.tree[p]; ok && old.Type == fstree.TypeDir {
		n = old
	}
	return b.add(&entry{path: p, node: n})
}

func (b *layerBuilder) file(p string, mode uint32, c content) *entry {
	return b.add(&entry{path: p, data: c,
		node: fstree.Node{Type: fstree.TypeFile, Mode: mode, Size: c.size}})
}

func (b *layerBuilder) symlink(p, target string) *entry {
	return b.add(&entry{path: p, node: fstree.Node{Type: fstree.TypeSymlink, Mode: 0o777, Target: target}})
}

// hardlink adds p as a hard link to the file target of this layer.
func (b *layerBuilder) hardlink(p, target string) *entry {
	t := b.entries[target]
	return b.add(&entry{path: p, kind: entHardlink, link: target, node: t.node, uname: t.uname, gname: t.gname, pax: t.pax})
}

// addBusybox adds a static busybox with applet links and the skeleton a
// container needs.
func (b *layerBuilder) addBusybox() {
	b.add(&entry{path: "bin/busybox", data: content{kind: kindLiteral, size: int64(len(b.busybox)), data: b.busybox},
		node: fstree.Node{Type: fstree.TypeFile, Mode: 0o755, Size: int64(len(b.busybox))}})
	for _, app := range BusyboxApplets {
		b.symlink("bin/"+app, "busybox")
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group := "root:x:0:\nnogroup:x:65534:\n"
	b.file("etc/passwd", 0o644, content{kind: kindLiteral, size: int64(len(passwd)), data: []byte(passwd)})
	b.file("etc/group", 0o644, content{kind: kindLiteral, size: int64(len(group)), data: []byte(group)})
	for _, d := range []string{"dev", "proc", "sys", "root", "run", "var/tmp"} {
		b.dirNode(d)
	}
	b.add(&entry{path: "tmp", node: fstree.Node{Type: fstree.TypeDir, Mode: 0o1777}})
	b.entries["root"].node.Mode = 0o700
}

// smallFileKinds are the kinds of small files with their weights, extensions
// and modes.
var smallFileKinds = []struct {
	weight int
	kind   contentKind
	exts   []string
	mode   uint32
}{
	{40, kindSource, []string{".go", ".c", ".h", ".py", ".rs", ".js"}, 0o644},
	{15, kindText, []string{".txt", ".md", ".conf", ".log", ""}, 0o644},
	{15, kindJSON, []string{".json"}, 0o644},
	{15, kindELF, []string{".so", "", ".o"}, 0o755},
	{10, kindPacked, []string{".gz", ".png", ".jar", ".zst"}, 0o644},
	{5, kindRandom, []string{".bin", ".key"}, 0o600},
}

// addSmallFiles spreads n small files over a directory tree under root.
func (b *layerBuilder) addSmallFiles(root string, n int) {
	if n == 0 {
		return
	}
	dirs := []string{root}
	b.dirNode(root)
	for len(dirs) < 1+n/12 {
		parent := dirs[b.rng.IntN(len(dirs))]
		if strings.Count(parent, "/")-strings.Count(root, "/") >= 5 {
			continue
		}
		d := b.uniqueName(parent, vocabulary[b.rng.IntN(len(vocabulary))], "")
		b.dirNode(d)
		dirs = append(dirs, d)
	}
	total := 0
	for _, k := range smallFileKinds {
		total += k.weight
	}
	for range n {
		r := b.rng.IntN(total)
		k := smallFileKinds[0]
		for _, c := range smallFileKinds {
			if r < c.weight {
				k = c
				break
			}
			r -= c.weight
		}
		// Log-uniform sizes from 64 B to 64 KiB; one file in 20 up to
		// 320 KiB, one in 200 up to 1 MiB; one in 50 tiny.
		var size int64
		switch x := b.rng.IntN(200); {
		case x < 4:
			size = int64(b.rng.IntN(64))
		case x < 5:
			size = 320*kib + b.rng.Int64N(704*kib)
		case x < 15:
			size = 64*kib + b.rng.Int64N(256*kib)
		default:
			size = int64(64 << b.rng.IntN(10))
			size += b.rng.Int64N(size)
		}
		name := vocabulary[b.rng.IntN(len(vocabulary))]
		if b.rng.IntN(3) == 0 {
			name += "_" + vocabulary[b.rng.IntN(len(vocabulary))]
		}
		p := b.uniqueName(dirs[b.rng.IntN(len(dirs))], name, k.exts[b.rng.IntN(len(k.exts))])
		e := b.file(p, k.mode, content{kind: k.kind, seed: b.newSeed(), size: size})
		e.node.MtimeNs = b.mtime + int64(b.rng.IntN(86400))*int64(time.Second)
		if b.rng.IntN(10) == 0 {
			e.node.UID, e.node.GID, e.uname, e.gname = 1000, 1000, "user", "users"
		}
	}
}

// uniqueName returns dir/name+ext, with a counter added when the layer
// already has that path.
func (b *layerBuilder) uniqueName(dir, name, ext string) string {
	p := dir + "/" + name + ext
	for i := 2; ; i++ {
		if _, ok := b.entries[p]; !ok {
			return p
		}
		p = fmt.Sprintf("%s/%s-%d%s", dir, name, i, ext)
	}
}

// candidates lists the paths of the layers below that this layer may delete
// or replace, in byte order: everything except busybox's files and the
// directories above the layers' content directories.
func (b *layerBuilder) candidates(typ fstree.Type) []string {
	var out []string
	for p, n := range b.below.tree {
		if typ != "" && n.Type != typ {
			continue
		}
		if !strings.Contains(p, "/files/") && !strings.Contains(p, "/zoo/") {
			continue // keep busybox, the skeleton and the big files
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// touched reports whether p, a path above it or below it is already deleted,
// opaque or replaced by this layer.
func (b *layerBuilder) touched(p string) bool {
	for q := range b.removed {
		if related(p, q) {
			return true
		}
	}
	for q := range b.opaque {
		if related(p, q) {
			return true
		}
	}
	for q, e := range b.entries {
		if e.node.Type != fstree.TypeDir && related(p, q) {
			return true
		}
	}
	return false
}

func related(a, b string) bool {
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}

// pick returns up to n distinct untouched paths of cands chosen at random.
func (b *layerBuilder) pick(cands []string, n int) []string {
	var out []string
	for tries := 0; len(out) < n && tries < 20*n+len(cands); tries++ {
		if len(cands) == 0 {
			break
		}
		p := cands[b.rng.IntN(len(cands))]
		if b.touched(p) || slices.ContainsFunc(out, func(q string) bool { return related(p, q) }) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// addWhiteouts deletes n paths of the layers below: a quarter of them whole
// directories, some fixed zoo entries (a hard-link member, a device, a
// symlink) when the layers below have a zoo, the rest random paths.
func (b *layerBuilder) addWhiteouts(n int) error {
	if n == 0 {
		return nil
	}
	var chosen []string
	for _, p := range b.candidates("") {
		if len(chosen) < n && (strings.HasSuffix(p, "/zoo/hard-b") || strings.HasSuffix(p, "/zoo/dev/tty") ||
			strings.HasSuffix(p, "/zoo/rel-link")) {
			chosen = append(chosen, p)
		}
	}
	for _, p := range chosen {
		b.removed[p] = true
	}
	for _, p := range b.pick(b.candidates(fstree.TypeDir), (n-len(chosen))/4) {
		b.removed[p] = true
		chosen = append(chosen, p)
	}
	for _, p := range b.pick(b.candidates(""), n-len(chosen)) {
		b.removed[p] = true
		chosen = append(chosen, p)
	}
	if len(chosen) < n {
		return fmt.Errorf("imagegen: layer %d: only %d of %d whiteouts possible", b.index+1, len(chosen), n)
	}
	for _, p := range chosen {
		b.parents(p)
	}
	return nil
}

// addOpaque makes n non-empty directories of the layers below opaque and puts
// two new files in each.
func (b *layerBuilder) addOpaque(n int) error {
	var dirs []string
	for _, d := range b.candidates(fstree.TypeDir) {
		if b.hasChildren(d) {
			dirs = append(dirs, d)
		}
	}
	chosen := b.pick(dirs, n)
	if len(chosen) < n {
		return fmt.Errorf("imagegen: layer %d: only %d of %d opaque directories possible", b.index+1, len(chosen), n)
	}
	for _, d := range chosen {
		b.opaque[d] = true
		b.dirNode(d).node.MtimeNs = b.mtime
		for i := range 2 {
			b.file(fmt.Sprintf("%s/opaque-new-%d.txt", d, i), 0o644, content{kind: kindText, seed: b.newSeed(), size: 700 + int64(i)*300})
		}
	}
	return nil
}

func (b *layerBuilder) hasChildren(dir string) bool {
	for p := range b.below.tree {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

// addReplacements replaces n paths of the layers below without whiteouts:
// files get new content, become directories or symlinks; one directory
// becomes a file.
func (b *layerBuilder) addReplacements(n int) error {
	if n == 0 {
		return nil
	}
	replaced := 0
	if dirs := b.pick(b.candidates(fstree.TypeDir), 1); len(dirs) == 1 {
		b.file(dirs[0], 0o644, content{kind: kindText, seed: b.newSeed(), size: 1234})
		replaced++
	}
	for i, p := range b.pick(b.candidates(fstree.TypeFile), n-replaced) {
		switch i % 3 {
		case 0:
			b.file(p, 0o640, content{kind: kindSource, seed: b.newSeed(), size: 2000 + int64(i)})
		case 1:
			b.dirNode(p).node.Mode = 0o750
			b.file(p+"/now-a-directory", 0o644, content{kind: kindJSON, seed: b.newSeed(), size: 300})
		case 2:
			b.symlink(p, "/etc/passwd")
		}
		replaced++
	}
	if replaced < n {
		return fmt.Errorf("imagegen: layer %d: only %d of %d replacements possible", b.index+1, replaced, n)
	}
	return nil
}
