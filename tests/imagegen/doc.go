// Package imagegen generates deterministic OCI test images: OCI image layout
// directories (index.json, oci-layout, blobs/sha256/...) whose layers hold
// realistic content (source-like text, ELF-like binaries, JSON, already
// compressed data, big compressible and incompressible files), every tar entry
// kind (directories, files, relative/absolute symlinks, hard links, devices,
// FIFOs, setuid/setgid/sticky modes, long PAX names, xattrs, sub-second
// mtimes), and layers that delete and replace what lies below them (whiteouts
// and opaque directories). Every image also records the file tree a container
// engine is expected to show for it (Image.ExpectedTree).
//
// # Determinism
//
// The same Options give a byte-identical layout on every run and machine
// provided the inputs that are not part of Options are the same: the Go
// module versions in go.mod (klauspost/compress and klauspost/pgzip define
// the compressed bytes), the busybox binary (its digest is part of the cache
// key) and the architecture (recorded in the image config). Nothing depends
// on time, the host's users, map order, GOMAXPROCS or goroutine scheduling:
// all choices come from math/rand/v2 PCG and ChaCha8 generators seeded from
// Options.Seed; entries are written in sorted order with fixed times;
// GzipParallel cuts blocks at fixed offsets (Options.GzipBlockSize) and each
// block's output depends only on its input and the previous block's last
// 32 KiB; GzipMultiMember members cover fixed ranges of the tar stream and are
// written in order; gzip headers carry MTIME 0; zstd runs on one goroutine.
// GeneratorVersion changes whenever the output for the same Options changes.
//
// # Presets
//
// Small (about 3 MB, for unit tests), E2E (about 355 MB compressed, thousands
// of files, layers above and below 10 MiB) and Bench1G (about 1 GB
// compressed) return Options that callers may adjust, for example to switch a
// layer to Zstd or Uncompressed, or to use Docker media types. Cached keeps
// generated images under CacheDir() and regenerates them only when the key
// changes.
package imagegen
