package ztoc

// This file holds the semantic validation of a decoded zTOC, shared by
// Marshal, Unmarshal, Decode, NewLayerIndex and Build: the format's rules
// and Limits.

import (
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
)

// validate checks the decoded z against the format's rules and lim; blob
// is the checkpoint blob (of blobSize bytes).
func validate(z *Ztoc, blob io.ReaderAt, blobSize int64, lim *Limits) error {
	_, err := checkZtoc(z, blob, blobSize, lim, nil)
	return err
}

// geometry is the span layout of a validated zTOC.
type geometry struct {
	cps         *CheckpointTable // gzip layers
	tarSpanSize int64            // uncompressed layers: fixed spans
	nspans      int
}

// checkZtoc validates z (see validate) and returns its span layout. Beyond
// the wire rules it enforces lim: entry count, names, PAX records and
// metadata memory, span count, the compressed and uncompressed length of
// every span, and the inflate ratio of every span and of the layer.
//
// A native zTOC (Version NativeVersion, gzip only) has the native
// checkpoint table in blob; windows reads its windows blob (nil: Window
// fails with ErrNoWindows).
func checkZtoc(z *Ztoc, blob io.ReaderAt, blobSize int64, lim *Limits, windows io.ReaderAt) (geometry, error) {
	var g geometry
	native := z.Version == NativeVersion && z.CompressionInfo.Algorithm == Gzip
	if z.Version != Version && !native {
		return g, malformed("ztoc: unknown version %q (want %q)", z.Version, Version)
	}
	if z.CompressedArchiveSize < 0 || z.UncompressedArchiveSize < 0 {
		return g, malformed("ztoc: negative archive size (compressed %d, uncompressed %d)",
			z.CompressedArchiveSize, z.UncompressedArchiveSize)
	}
	if len(z.TOC.FileMetadata) > lim.MaxEntries {
		return g, overLimit(true, "ztoc: %d entries exceed the limit of %d", len(z.TOC.FileMetadata), lim.MaxEntries)
	}
	if err := validateEntries(z.TOC.FileMetadata, z.UncompressedArchiveSize, lim); err != nil {
		return g, err
	}
	ci := &z.CompressionInfo
	if len(ci.SpanDigests) > lim.MaxSpans {
		return g, overLimit(true, "ztoc: %d spans exceed the limit of %d", len(ci.SpanDigests), lim.MaxSpans)
	}
	if int64(ci.MaxSpanID) != int64(len(ci.SpanDigests))-1 {
		return g, malformed("ztoc: max span id %d does not match %d span digests", ci.MaxSpanID, len(ci.SpanDigests))
	}
	for i, d := range ci.SpanDigests {
		if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
			return g, malformed("ztoc: span digest %d %q is not a sha256 digest", i, d)
		}
	}
	// A layer cannot inflate to more than MaxRatio times its size.
	if z.UncompressedArchiveSize/lim.MaxRatio > z.CompressedArchiveSize {
		return g, overLimit(true, "ztoc: %d uncompressed bytes from a %d-byte layer exceed the inflate ratio limit of %d",
			z.UncompressedArchiveSize, z.CompressedArchiveSize, lim.MaxRatio)
	}
	switch ci.Algorithm {
	case Gzip:
		var t *CheckpointTable
		var err error
		if native {
			t, err = parseCompact(blob, blobSize, windows, *lim)
		} else {
			t, err = ParseCheckpoints(blob, blobSize, WithLimits(*lim))
		}
		if err != nil {
			return g, fmt.Errorf("ztoc: %w", err)
		}
		if len(t.Points) != len(ci.SpanDigests) {
			return g, malformed("ztoc: %d checkpoints for %d spans", len(t.Points), len(ci.SpanDigests))
		}
		if last := t.Points[len(t.Points)-1]; last.In > z.CompressedArchiveSize {
			return g, malformed("ztoc: checkpoint at compressed offset %d past the %d-byte layer", last.In, z.CompressedArchiveSize)
		}
		for i := range t.Points {
			c0, c1, u0, u1, err := t.SpanRanges(SpanID(i), z.CompressedArchiveSize, z.UncompressedArchiveSize)
			if err != nil {
				return g, err
			}
			if err := checkSpan(i, c1-c0, u1-u0, lim); err != nil {
				return g, err
			}
		}
		g.cps, g.nspans = t, len(t.Points)
	case Uncompressed:
		if blobSize > maxTarZinfoSize {
			return g, malformed("ztoc: tar zinfo of %d bytes", blobSize)
		}
		p := make([]byte, blobSize)
		if err := readFull(blob, p, 0); err != nil {
			return g, fmt.Errorf("ztoc: read tar zinfo: %w", err)
		}
		spanSize, size, err := ParseTarZinfo(p)
		if err != nil {
			return g, fmt.Errorf("ztoc: %w", err)
		}
		if spanSize > lim.MaxSpanSize {
			return g, overLimit(true, "ztoc: tar span size %d exceeds the %d-byte limit", spanSize, lim.MaxSpanSize)
		}
		if want := tarMaxSpanID(spanSize, size); int64(ci.MaxSpanID) != want {
			return g, malformed("ztoc: max span id %d, tar zinfo (span size %d, size %d) has %d", ci.MaxSpanID, spanSize, size, want)
		}
		// The spans cover the whole blob; SOCI's uncompressed archive size
		// stops at the tar end-of-archive marker, so it is smaller when
		// zero records follow (GNU tar pads to 10 KiB records).
		if size != z.CompressedArchiveSize || z.UncompressedArchiveSize > size {
			return g, malformed("ztoc: tar zinfo (span %d, size %d) does not match the archive (%d bytes, %d up to the end of the tar)",
				spanSize, size, z.CompressedArchiveSize, z.UncompressedArchiveSize)
		}
		g.tarSpanSize, g.nspans = spanSize, len(ci.SpanDigests)
	default:
		return g, malformed("ztoc: unknown compression algorithm %d", ci.Algorithm)
	}
	return g, nil
}

// checkSpan checks the compressed (c) and uncompressed (u) length of span i
// against lim.
func checkSpan(i int, c, u int64, lim *Limits) error {
	switch {
	case c > lim.MaxSpanSize || u > lim.MaxSpanSize:
		return overLimit(true, "ztoc: span %d of %d compressed and %d uncompressed bytes exceeds the %d-byte span limit", i, c, u, lim.MaxSpanSize)
	case c <= 0 && u > 0, c > 0 && u/c > lim.MaxRatio:
		return overLimit(true, "ztoc: span %d inflates %d bytes to %d, beyond the ratio limit of %d", i, c, u, lim.MaxRatio)
	}
	return nil
}

// dataLen returns how many bytes of data follow m's tar header in the
// stream: its size for a regular file, nothing for the other types (which
// archive/tar, and so SOCI, treat as header-only whatever their size field
// says).
func dataLen(m *FileMetadata) int64 {
	if m.Type == TypeReg {
		return m.UncompressedSize
	}
	return 0
}

// validateEntries checks each entry against lim and the tar stream's
// layout: entries are in stream order and each entry's data starts no
// earlier than the previous entry's data ends (rounded up to 512), as in
// SOCI's decoder, so the header run in front of every entry is well defined
// (see LayerIndex.HeaderRange). A run too short to hold a header is left to
// the header check (ErrHeaderMismatch) rather than refused here.
func validateEntries(entries []FileMetadata, uncompressedSize int64, lim *Limits) error {
	var metadata int64
	var nextHeader int64
	for i := range entries {
		m := &entries[i]
		switch m.Type {
		case TypeReg, TypeDir, TypeSymlink, TypeHardlink, TypeChar, TypeBlock, TypeFifo:
		default:
			return invalidEntry(i, "unknown type %.100q", m.Type)
		}
		if err := lim.checkEntry(m); err != nil {
			return overLimit(true, "ztoc: toc entry %d (%.100q): %v", i, m.Name, err)
		}
		if metadata += entryCost(m); metadata > lim.MaxMetadataBytes {
			return overLimit(true, "ztoc: toc entries up to %d exceed the %d-byte metadata limit", i, lim.MaxMetadataBytes)
		}
		if m.UncompressedOffset < 0 || m.UncompressedSize < 0 ||
			m.UncompressedOffset > uncompressedSize || dataLen(m) > uncompressedSize-m.UncompressedOffset {
			return invalidEntry(i, "data [%d, +%d) outside the %d-byte tar stream", m.UncompressedOffset, m.UncompressedSize, uncompressedSize)
		}
		if m.UncompressedOffset < nextHeader {
			return invalidEntry(i, "data at %d overlaps the previous entry (ends at %d), or entries are not in stream order", m.UncompressedOffset, nextHeader)
		}
		if run := m.UncompressedOffset - nextHeader; run > lim.maxHeaderRun() {
			return overLimit(true, "ztoc: toc entry %d (%.100q): %d bytes of tar headers in front of its data, more than the %d its limits allow",
				i, m.Name, run, lim.maxHeaderRun())
		}
		nextHeader = alignTarBlock(m.UncompressedOffset + dataLen(m))
	}
	return nil
}

// alignTarBlock rounds n up to a multiple of the 512-byte tar block.
func alignTarBlock(n int64) int64 {
	return (n + 511) &^ 511
}
