// Package zstdchunked reads zstd:chunked layers, the format containers/storage
// writes for `podman push --compression-format zstd:chunked`: a zstd stream
// in which every tar header run and every chunk of every regular file is a
// frame of its own, followed by skippable frames holding the zstd-compressed
// TOC (JSON), the compressed tar-split, and a 64-byte footer.
//
// Locate and LocateFooter find the metadata (the layer's
// io.github.containers.zstd-chunked.* annotations, or the footer); Open
// checks the TOC against the layer's TOC digest (the sha256 of its
// compressed frame) and the tar-split against the TOC's digest of it, and
// builds a tocindex.Index: the file table, the chunks' places, and the
// spans. NextFrame walks zstd frames without decompressing them; Codec
// decompresses regions with github.com/klauspost/compress/zstd.
//
// The package does no networking and no logging. README.md states the
// format facts it relies on and what is checked when.
package zstdchunked

// FormatName names the format in file tables, logs and status.
const FormatName = "zstd:chunked"
