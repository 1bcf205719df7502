// Package spancache is the on-disk cache of compressed layer spans: one file
// per span under <root_dir>/spans/<layer>/, written atomically (temporary file
// and rename) so a daemon killed mid-write leaves no partial entry, verified
// by the caller on every load (a bad entry is dropped), and bounded in size
// with least-recently-used eviction that never touches spans of layers in use.
package spancache
