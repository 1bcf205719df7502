// Package fstree describes a file system tree as comparable data (type, mode,
// owner, size, mtime, xattrs, link target, device numbers, hard-link groups,
// content digest per path), takes such a description from a directory on disk
// (Snapshot) and lists the differences between two of them (Diff).
//
// It is the common language of the test tools: tests/imagegen records the tree
// an image is expected to produce, and tests compare it with a rootfs mounted
// by podman or extracted from an image layout.
package fstree
