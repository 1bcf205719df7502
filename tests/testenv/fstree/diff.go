package fstree

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"time"
)

// DiffOption adjusts what Diff compares. Without options every field of every
// path is compared.
type DiffOption func(*diffConfig)

type diffConfig struct {
	ignorePaths  []string
	ignoreXattrs []string
	ignoreMtime  map[Type]bool
	ignoreLinks  bool
}

// IgnorePaths leaves out each listed path and everything below it (paths as
// in Tree, without a leading slash).
func IgnorePaths(paths ...string) DiffOption {
	return func(c *diffConfig) { c.ignorePaths = append(c.ignorePaths, paths...) }
}

// IgnoreXattrs leaves out every extended attribute whose name starts with one
// of the prefixes (for example "trusted.overlay." or "security.selinux").
func IgnoreXattrs(prefixes ...string) DiffOption {
	return func(c *diffConfig) { c.ignoreXattrs = append(c.ignoreXattrs, prefixes...) }
}

// IgnoreMtimes leaves out the modification times of nodes of the listed types.
func IgnoreMtimes(types ...Type) DiffOption {
	return func(c *diffConfig) {
		if c.ignoreMtime == nil {
			c.ignoreMtime = make(map[Type]bool)
		}
		for _, t := range types {
			c.ignoreMtime[t] = true
		}
	}
}

// IgnoreLinkGroups leaves out hard-link groups.
func IgnoreLinkGroups() DiffOption {
	return func(c *diffConfig) { c.ignoreLinks = true }
}

// Diff lists the differences between the trees want and got, one
// human-readable line per difference ("usr/bin/x: mode got 0644, want 0755"),
// ordered by path. It returns nil when the trees agree.
func Diff(want, got Tree, opts ...DiffOption) []string {
	var c diffConfig
	for _, o := range opts {
		o(&c)
	}
	sorted := unionKeys(want, got, c.ignoredPath)

	var diffs []string
	for _, p := range sorted {
		w, inWant := want[p]
		g, inGot := got[p]
		switch {
		case !inGot:
			diffs = append(diffs, fmt.Sprintf("%s: missing (want %s)", p, w))
		case !inWant:
			diffs = append(diffs, fmt.Sprintf("%s: unexpected (got %s)", p, g))
		default:
			for _, d := range c.diffNode(w, g) {
				diffs = append(diffs, p+": "+d)
			}
		}
	}
	return diffs
}

func (c *diffConfig) ignoredPath(p string) bool {
	for _, ip := range c.ignorePaths {
		ip = strings.Trim(ip, "/")
		if p == ip || strings.HasPrefix(p, ip+"/") {
			return true
		}
	}
	return false
}

func (c *diffConfig) ignoredXattr(name string) bool {
	for _, prefix := range c.ignoreXattrs {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// diffNode compares two nodes of the same path field by field.
func (c *diffConfig) diffNode(w, g Node) []string {
	if w.Type != g.Type {
		return []string{fmt.Sprintf("type got %s, want %s", g.Type, w.Type)}
	}
	var d []string
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }
	if w.Mode != g.Mode {
		add("mode got %04o, want %04o", g.Mode, w.Mode)
	}
	if w.UID != g.UID || w.GID != g.GID {
		add("owner got %d:%d, want %d:%d", g.UID, g.GID, w.UID, w.GID)
	}
	if w.Size != g.Size {
		add("size got %d, want %d", g.Size, w.Size)
	}
	if w.SHA256 != g.SHA256 {
		add("sha256 got %s, want %s", g.SHA256, w.SHA256)
	}
	if !c.ignoreMtime[w.Type] && w.MtimeNs != g.MtimeNs {
		add("mtime got %s, want %s", fmtTime(g.MtimeNs), fmtTime(w.MtimeNs))
	}
	if w.Target != g.Target {
		add("symlink target got %q, want %q", g.Target, w.Target)
	}
	if w.DevMajor != g.DevMajor || w.DevMinor != g.DevMinor {
		add("device got %d:%d, want %d:%d", g.DevMajor, g.DevMinor, w.DevMajor, w.DevMinor)
	}
	if !c.ignoreLinks && w.LinkGroup != g.LinkGroup {
		add("hard-link group got %q, want %q", g.LinkGroup, w.LinkGroup)
	}
	d = append(d, c.diffXattrs(w.Xattrs, g.Xattrs)...)
	return d
}

func (c *diffConfig) diffXattrs(w, g map[string][]byte) []string {
	sorted := unionKeys(w, g, c.ignoredXattr)
	var d []string
	for _, k := range sorted {
		wv, inW := w[k]
		gv, inG := g[k]
		switch {
		case !inG:
			d = append(d, fmt.Sprintf("xattr %s missing (want %q)", k, wv))
		case !inW:
			d = append(d, fmt.Sprintf("xattr %s unexpected (got %q)", k, gv))
		case !bytes.Equal(wv, gv):
			d = append(d, fmt.Sprintf("xattr %s got %q, want %q", k, gv, wv))
		}
	}
	return d
}

func fmtTime(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

// unionKeys returns the keys of a and b, sorted, without those ignored.
func unionKeys[V any](a, b map[string]V, ignored func(string) bool) []string {
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		if !ignored(k) {
			keys = append(keys, k)
		}
	}
	for k := range b {
		if _, inA := a[k]; !inA && !ignored(k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
