// Package layerstore is the Additional Layer Store daemon behind
// `lazypull serve`: a FUSE filesystem (alsfs) that containers/storage
// consults for the layers of images being pulled, serving each layer's
// files lazily from the registry through its index: a zTOC for gzip and tar
// layers, the TOC the layer carries for eStargz and zstd:chunked.
//
// # Who owns what
//
//   - Store (store.go) owns the daemon's state: the loaded layers, the
//     resolved images, the disk caches (diskcache: spans; artifact.Local:
//     zTOCs and SOCI indexes), the registry client, the fetch Scheduler
//     and the background filler. Run (run.go) assembles the daemon: checks,
//     memory limit, credentials, Serve (serve.go: mount, control socket,
//     metrics).
//   - layer (layer.go) is one served layer: its identity, its index
//     (layerIndex, index.go: ztocIndex, or tocIndex for a layer with its
//     own TOC, opened by tocload.go through packages estargz and
//     zstdchunked), the references and directories using it, and its
//     spans.Manager, which owns the layer's bytes. A layer knows nothing of
//     the Store; the Store gives it callbacks (onBad, verifyNow).
//   - filler (prefetch.go) completes layers in the background: prefetch in
//     batches near what containers read, then whole-layer verification
//     (verify.go), both as clients of the span manager at background
//     priorities.
//
// # The data path of a read
//
//  1. The kernel sends FUSE READ for a file of a layer directory;
//     alsfs.fileNode.Read calls LayerContent.ReadFile with the regular
//     file's entry (alsfs resolved hard links when it built the tree).
//  2. layer.ReadFile checks, once per entry, the tar header run in front
//     of the file's data against a zTOC (layer.checkEntry: the header's
//     spans and the read's are fetched in one request; a layer with its own
//     TOC has nothing to check here), then asks the span manager for the
//     bytes of the uncompressed stream (for a layer with its own TOC, the
//     stream of its files' data: package tocindex).
//  3. spans.Manager.ReadAt claims the missing spans of the range (one job
//     per read, one range per run), raises jobs already in flight to
//     Demand, and waits for them: each job runs on the manager's goroutine
//     after the Scheduler granted it, reads the ranges from the layer's
//     registry sources (remote.Blob.ReadRanges), verifies every span's
//     digest, and commits the compressed spans to the span cache.
//  4. Each span is then read from its inflated copy on disk (a pread), or
//     inflated once (ztoc's inflater from the span's checkpoint) on the
//     manager's goroutine, served from memory and committed to disk.
//
// So a cached read costs the FUSE round trip, a header-check lookup (an
// atomic load), the manager's lock for the span's state, and a pread of
// the page cache; no inflation and no allocation of span buffers.
//
// # Lock order
//
// Store.mu (layers, images, registry answers) may be held while taking
// layer.mu; neither is held while calling the span manager, the FUSE tree
// or the registry. spans.Manager.mu guards span states only and is held for
// short state transitions (it takes diskcache's lock, never the other way
// round); spans.Scheduler.mu is taken under Manager.mu (Ticket, Raise) and
// never calls out. filler.mu guards background state and is not held while
// fetching. alsfs's filesystem.mu guards its views and is not held while
// calling the Resolver; the FUSE tree is never notified from inside a FUSE
// request (markBad evicts on a store goroutine).
//
// # Layers with their own TOC (eStargz, zstd:chunked)
//
// containers/storage >= 1.54 (podman >= 5.1) asks for these by TOC digest
// (the layer directory is named by it; `info` then carries toc-digest and
// the expected-layer-diffid flag, no other digest: identityTOC), older ones
// by compressed digest like any layer. The TOC is read from the blob's end
// at lookup (one request), checked against the digest the image's manifest
// gives, and seeded into the span cache. Spans are runs of whole gzip
// members or zstd frames; their fetched bytes get a cheap structural check
// (Layout.Verify) and every chunk's sha256 is checked on inflation (a
// mismatch is spans.ErrSpanCorrupt: fetched again, twice makes the layer
// bad). The TOC is the image's own statement, so such a layer serves every
// image that names the same blob and TOC digest (key: blob digest and
// tocScope). Whole-layer verification checks digest, DiffID, every tar
// header against the TOC and every chunk's place in the tar stream; the
// file `blob`, whose bytes no TOC digest covers, is served only after it
// (a read of `blob` runs it at Demand priority), and from then on every
// span's compressed sha256 is checked on each fetch.
//
// # Trust
//
// A zTOC built here from the layer (digest and DiffID checked while
// streaming) or verified here in full (ztoc.Verify) is trusted: it is
// mapped to the layer for every image and may be shared. A zTOC found in an
// image's registry or in the shared store serves the repository it was
// found through only (artifact.ScopedLayerKey, layerKey.scope); before its
// tree is served every hard link's own tar header is checked, every file's
// header run is checked before its first byte, and the layer is verified
// in full in the background ([verification]), which promotes the index.
// The bytes of such a gzip zTOC (header runs included) are served only
// from checkpoints that the layer's verification run has already proven
// (proof.go: one run per layer, shared by the filler, waiting readers and
// start-up profiles; a reader raises it to Demand up to its span).
//
// # Limits
//
// Everything from outside is bounded: zTOCs by ztoc.Limits (the [index]
// limits), on-demand indexing by the same limits while it streams, SOCI
// indexes and manifests by their size; the shared repository by
// artifact.Breaker (a deadline per lookup, then skipped for a while after
// failures); a panicking FUSE request is logged by alsfs and fails with
// EIO, and the span manager completes every flight it starts.
//
// # Exposure
//
// root_dir and the mount point are private to the daemon's user (created
// 0700, refused at start when open to group or others: privateDir), the
// mount has no allow_other by default, and the directories alsfs makes up
// are 0500/0400 of the daemon's user. Every lookup of an image's layer
// directory proves access: a new one resolves the image with the
// credentials as they are now (resolveImage), one already served is
// re-authorized (Reauthorize: the credential's ID, authbridge's
// CredentialID, must be the one that last proved access, else access is
// proved again with the registry); credentials withdrawn through the
// handover evict the image's directories at once (Store.Handover).
package layerstore
