// Package diskcache is the daemon's one on-disk store, used for cached spans
// and for the local artifact store: files written atomically (temporary
// file, fsync, rename) through Commit/Abort writers, indexed in memory (the
// directory is walked once, by Open), evicted least recently used first
// under a byte cap, with pins that keep every entry of a group.
package diskcache
