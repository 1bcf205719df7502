package fstree

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Type is the kind of a file system object.
type Type string

// The kinds of file system objects a Node can describe.
const (
	TypeDir     Type = "dir"
	TypeFile    Type = "file"
	TypeSymlink Type = "symlink"
	TypeChar    Type = "char"
	TypeBlock   Type = "block"
	TypeFIFO    Type = "fifo"
	TypeSocket  Type = "socket"
)

// ModeMask selects the bits of Node.Mode: permissions plus setuid, setgid and
// sticky (the low twelve bits of st_mode).
const ModeMask = 0o7777

// Node describes one path of a tree. The zero value of a field that does not
// apply to the node's type is left zero (Size and SHA256 apply to regular files
// only, Target to symlinks, DevMajor and DevMinor to devices).
type Node struct {
	Type Type `json:"type"`
	// Mode holds the permission, setuid, setgid and sticky bits (ModeMask).
	Mode uint32 `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	// Size is the length of a regular file in bytes.
	Size int64 `json:"size,omitempty"`
	// MtimeNs is the modification time in nanoseconds since the Unix epoch.
	MtimeNs int64 `json:"mtime_ns"`
	// Xattrs maps every readable extended attribute name to its value.
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
	// Target is the content of a symlink.
	Target   string `json:"target,omitempty"`
	DevMajor uint32 `json:"dev_major,omitempty"`
	DevMinor uint32 `json:"dev_minor,omitempty"`
	// SHA256 is the lowercase hex sha256 of a regular file's content.
	SHA256 string `json:"sha256,omitempty"`
	// LinkGroup is the smallest path (in byte order) among the paths of the
	// tree that share this node's inode; empty when no other path of the tree
	// shares it. Only paths present in the tree count: a hard link whose other
	// names were deleted (or are hidden by an overlay) has no group.
	LinkGroup string `json:"link_group,omitempty"`
}

// Tree maps slash-separated paths relative to the tree's root ("bin/sh", no
// leading slash, no "./") to their nodes. The root directory itself is not
// part of the tree.
type Tree map[string]Node

// Paths returns the paths of t in byte order, which puts every directory
// before its contents.
func (t Tree) Paths() []string {
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return paths
}

// Clone returns a deep copy of t.
func (t Tree) Clone() Tree {
	c := make(Tree, len(t))
	for p, n := range t {
		if n.Xattrs != nil {
			x := make(map[string][]byte, len(n.Xattrs))
			for k, v := range n.Xattrs {
				x[k] = bytes.Clone(v)
			}
			n.Xattrs = x
		}
		c[p] = n
	}
	return c
}

// TotalFileBytes returns the sum of the sizes of the regular files of t,
// counting each hard-link group once.
func (t Tree) TotalFileBytes() int64 {
	var total int64
	for p, n := range t {
		if n.Type == TypeFile && (n.LinkGroup == "" || n.LinkGroup == p) {
			total += n.Size
		}
	}
	return total
}

// AssignLinkGroups sets LinkGroup of every node of t whose identity (ids[path],
// for example a device and inode number) is shared by at least one other path
// of t, and clears it on every other node. Paths missing from ids are never
// grouped.
func AssignLinkGroups(t Tree, ids map[string]string) {
	members := make(map[string][]string)
	for p := range t {
		if id, ok := ids[p]; ok {
			members[id] = append(members[id], p)
		}
	}
	for p, n := range t {
		n.LinkGroup = ""
		if id, ok := ids[p]; ok && len(members[id]) > 1 {
			n.LinkGroup = slices.Min(members[id])
		}
		t[p] = n
	}
}

// WriteFile stores t as JSON in the file name.
func (t Tree) WriteFile(name string) error {
	b, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("fstree: encode tree: %w", err)
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		return fmt.Errorf("fstree: write tree: %w", err)
	}
	return nil
}

// ReadFile loads a tree stored by WriteFile.
func ReadFile(name string) (Tree, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("fstree: read tree: %w", err)
	}
	var t Tree
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("fstree: decode tree %s: %w", name, err)
	}
	return t, nil
}

// String renders n on one line, for messages.
func (n Node) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %04o %d:%d", n.Type, n.Mode, n.UID, n.GID)
	switch n.Type {
	case TypeFile:
		fmt.Fprintf(&b, " size=%d sha256=%.12s", n.Size, n.SHA256)
	case TypeSymlink:
		fmt.Fprintf(&b, " -> %q", n.Target)
	case TypeChar, TypeBlock:
		fmt.Fprintf(&b, " %d:%d", n.DevMajor, n.DevMinor)
	}
	if n.LinkGroup != "" {
		fmt.Fprintf(&b, " link=%q", n.LinkGroup)
	}
	return b.String()
}
