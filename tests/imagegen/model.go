package imagegen

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// entryKind says what a layer entry does.
type entryKind uint8

const (
	entNormal   entryKind = iota // adds or replaces the path
	entHardlink                  // adds a hard link to link, an earlier path of the same layer
	entWhiteout                  // deletes the path from the layers below (tar name dir/.wh.base)
	entOpaque                    // hides the lower contents of the directory path (dir/.wh..wh..opq)
)

// OpaqueMarker is the name of the entry that makes its directory opaque.
const OpaqueMarker = ".wh..wh..opq"

// WhiteoutPrefix starts the name of an entry that deletes the rest of its
// name from the layers below.
const WhiteoutPrefix = ".wh."

// entry is one tar entry of a layer together with what it means.
type entry struct {
	path  string // slash-separated, relative, no trailing slash
	kind  entryKind
	node  fstree.Node // metadata; SHA256 of files is filled in when written
	link  string      // entHardlink: the path linked to
	data  content     // regular files
	uname string
	gname string
	pax   bool // force the PAX format (sub-second mtime)
}

// tarName is the name the entry has in the tar stream.
func (e *entry) tarName() string {
	switch e.kind {
	case entWhiteout:
		dir, base := path.Split(e.path)
		return dir + WhiteoutPrefix + base
	case entOpaque:
		return e.path + "/" + OpaqueMarker
	}
	if e.node.Type == fstree.TypeDir {
		return e.path + "/"
	}
	return e.path
}

// sortKey orders entries like a depth-first walk with names sorted in each
// directory, the opaque marker of a directory right after the directory.
func (e *entry) sortKey() []string {
	parts := strings.Split(e.path, "/")
	switch e.kind {
	case entOpaque:
		parts = append(parts, "") // before every real name
	case entWhiteout:
		parts[len(parts)-1] = WhiteoutPrefix + parts[len(parts)-1]
	}
	return parts
}

// comparePaths orders slash-separated paths component by component.
func comparePaths(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// sortEntries puts entries in tar order.
func sortEntries(entries []*entry) {
	slices.SortFunc(entries, func(a, b *entry) int {
		return slices.Compare(a.sortKey(), b.sortKey())
	})
}

// model is the merged tree of the layers applied so far, with overlay
// semantics, plus the identity of each non-directory's inode (for hard-link
// groups).
type model struct {
	tree fstree.Tree
	ids  map[string]string
}

func newModel() *model {
	return &model{tree: make(fstree.Tree), ids: make(map[string]string)}
}

// remove deletes p and everything below it.
func (m *model) remove(p string) {
	delete(m.tree, p)
	delete(m.ids, p)
	m.removeBelow(p)
}

// removeBelow deletes everything below directory p.
func (m *model) removeBelow(p string) {
	prefix := p + "/"
	for q := range m.tree {
		if strings.HasPrefix(q, prefix) {
			delete(m.tree, q)
			delete(m.ids, q)
		}
	}
}

// apply lays the entries of layer number layer over the tree, as an overlay
// mount (and containers/storage) does: opaque directories and whiteouts hide
// the layers below first; then every entry replaces what was at its path,
// except that a directory over a directory only replaces the metadata and
// keeps the contents.
func (m *model) apply(layer int, entries []*entry) error {
	for _, e := range entries {
		switch e.kind {
		case entOpaque:
			m.removeBelow(e.path)
		case entWhiteout:
			m.remove(e.path)
		}
	}
	for _, e := range entries {
		if e.kind == entOpaque || e.kind == entWhiteout {
			continue
		}
		if old, ok := m.tree[e.path]; !ok || old.Type != fstree.TypeDir || e.node.Type != fstree.TypeDir {
			m.remove(e.path)
		}
		parent := path.Dir(e.path)
		if parent != "." && m.tree[parent].Type != fstree.TypeDir {
			return fmt.Errorf("imagegen: layer %d: %s has no parent directory", layer, e.path)
		}
		n := e.node
		n.LinkGroup = ""
		id := fmt.Sprintf("%d:%s", layer, e.path)
		if e.kind == entHardlink {
			target, ok := m.tree[e.link]
			if !ok || target.Type != fstree.TypeFile {
				return fmt.Errorf("imagegen: layer %d: hard link %s to missing file %s", layer, e.path, e.link)
			}
			n = target
			id = m.ids[e.link]
		}
		if n.Type == fstree.TypeSymlink {
			n.Mode = 0o777 // Linux ignores a symlink's mode
		}
		if n.Type == fstree.TypeDir {
			delete(m.ids, e.path)
		} else {
			m.ids[e.path] = id
		}
		m.tree[e.path] = n
	}
	return nil
}

// result returns the merged tree with hard-link groups assigned.
func (m *model) result() fstree.Tree {
	t := m.tree.Clone()
	fstree.AssignLinkGroups(t, m.ids)
	return t
}
