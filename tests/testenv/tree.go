package testenv

import (
	"testing"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// Tree describes a file tree: see package fstree.
type Tree = fstree.Tree

// Snapshot describes the directory root (see fstree.Snapshot).
func Snapshot(root string) (Tree, error) { return fstree.Snapshot(root) }

// Diff lists the differences between want and got (see fstree.Diff).
func Diff(want, got Tree, opts ...fstree.DiffOption) []string {
	return fstree.Diff(want, got, opts...)
}

// maxReported bounds the differences CheckTree prints.
const maxReported = 40

// CheckTree snapshots root and reports every difference from want as a test
// error (the first 40 in full, then their number). It returns whether the
// trees agree.
func CheckTree(t testing.TB, want Tree, root string, opts ...fstree.DiffOption) bool {
	t.Helper()
	got, err := Snapshot(root)
	if err != nil {
		t.Errorf("Snapshot(%s): %v", root, err)
		return false
	}
	diffs := Diff(want, got, opts...)
	for i, d := range diffs {
		if i == maxReported {
			t.Errorf("... and %d more differences", len(diffs)-maxReported)
			break
		}
		t.Errorf("tree %s: %s", root, d)
	}
	return len(diffs) == 0
}
