// Package spans owns the bytes of lazily served layers: one Manager per
// layer moves each span (a range of the compressed blob that inflates on its
// own) through checked states, fetches it exactly once however many clients
// want it, verifies it, keeps it on disk compressed and inflated, and serves
// reads from it; one Scheduler per daemon gives every fetch its turn on the
// link by priority (a container's read before read-ahead before prefetch
// before verification) within one budget of concurrent requests and
// background bandwidth.
//
// # States of a span
//
//	missing --claim--> fetching --verified--> fetched --inflate--> inflated
//	   ^                   |                     |                    |
//	   +---- error --------+                     +--- evicted --------+
//	fetching --digest mismatch twice--> bad (the whole layer)
//
// "fetched" means the verified compressed bytes are on disk (or in memory
// while they are being written), "inflated" that the span's uncompressed
// bytes are. Presence on disk is the diskcache's to say (eviction may take
// either form at any time); the Manager keeps in memory only what is in
// flight: the fetch job of a span, its inflation, and bytes not yet
// committed to disk. Every transition happens under the Manager's lock, in
// one place each (claim, land, inflate), and is checked there.
//
// # Ownership and cancellation
//
// A fetch or an inflation is owned by the Manager, never by the client that
// caused it: it runs on a goroutine of the Manager with the Manager's
// context, so an interrupted reader cancels only its own wait, and the
// others, and the cache, still get the span. Close cancels and waits for
// all of them. A background fetch preempted by the Scheduler (a container
// needs the link) ends with ErrPreempted and its spans go back to missing.
package spans
