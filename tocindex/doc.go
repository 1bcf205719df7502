// Package tocindex is the random-access engine shared by layer formats that
// carry their own table of contents: eStargz (package estargz) and
// zstd:chunked (package zstdchunked). Such a blob is a concatenation of
// independently decompressible regions (gzip members, zstd frames) and its
// TOC says, for every chunk of every regular file, the compressed offset of
// the region the chunk's data starts in, where in that region's output it
// is, its length and its sha256.
//
// Build turns a format's parsed TOC (a file table in ztoc.FileMetadata form,
// the chunks, and the region boundaries the format knows of) into an Index:
//
//   - The layer's virtual uncompressed stream is the chunks' data in blob
//     order; every regular file's data is one contiguous range of it (the
//     file table's UncompressedOffset), so a file is read like a zTOC
//     layer's.
//   - Spans are runs of whole regions that tile the blob: spans without
//     chunk data (tar headers, the TOC, footers) have an empty uncompressed
//     range; they are fetched for the blob and for whole-layer verification.
//   - Index implements the span geometry, a cheap structural check of
//     fetched bytes (Verify) and Inflate, which checks every chunk's sha256
//     and fails with ErrCorrupt on a mismatch.
//   - VerifyLayer checks a whole blob: digest and size, the DiffID of what
//     it decompresses to, every tar header against the file table, and that
//     every chunk is where the tar stream has that file's data. It returns
//     the sha256 of every span's compressed bytes, which the Index then
//     checks on every later fetch (TrustSpans).
//
// Like ztoc, the package does no networking, logging or caching; everything
// from outside is bounded by ztoc.Limits.
package tocindex
