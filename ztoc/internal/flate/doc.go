// Package flate is a pure-Go DEFLATE (RFC 1951) and gzip (RFC 1952) decoder
// that reports every deflate block boundary together with what is needed to
// resume decoding there, and that resumes from such a checkpoint given only
// the compressed bytes of a span and the 32 KiB of output before it.
//
// It exists because compress/flate can do neither, and a zTOC (SOCI's random
// access index of a gzip layer) is made of exactly such checkpoints: the
// builder inflates the layer once with an OnBoundary hook, and readers resume
// at the checkpoint that starts the span they need with ResumeGzip.
//
// The decoder was written from the RFCs. It owns its input buffering (the
// io.Reader is read in large chunks), keeps a 64-bit bit buffer, decodes with
// two-level lookup tables and writes into one linear output buffer that
// always holds the last 32 KiB of history, so match copies and the window
// handed to OnBoundary are contiguous.
//
// Errors are the sentinels ErrCorrupt, ErrChecksum, ErrTruncated and
// ErrCheckpoint, wrapped with context; errors of the io.Reader and of the
// OnBoundary callback are passed through, wrapped. This package cannot import
// its parent (import cycle); package ztoc maps the first three to its own
// ErrCorruptStream, ErrChecksum and ErrTruncated (and ErrCheckpoint, a bad
// checkpoint read from a zTOC, to ErrMalformed).
package flate
