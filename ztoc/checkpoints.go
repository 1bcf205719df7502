package ztoc

// This file reads and writes the checkpoint blob of gzip zTOCs and the
// TarZinfo flatbuffer of uncompressed ones (CompressionInfo.Checkpoints).
//
// Gzip checkpoint blob, little-endian and packed:
//
//	header (12 bytes):        int32 number of checkpoints, int64 span size
//	per checkpoint (32785 B): int64 in, int64 out, uint8 bits, [32768]byte window
//
// Version 2 stores every checkpoint. Version 1 omitted checkpoint 0, which
// is then taken as in=10, out=0, bits=0 with an all-zero window. The two are
// told apart only by the blob's length.
//
// TarZinfo is a flatbuffer table {version: int32 (slot 0, value 2),
// span_size: int64 (slot 1), size: int64 (slot 2)}; its spans are the fixed
// slices [i*span_size, (i+1)*span_size) of the tar stream.

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	flatbuffers "github.com/google/flatbuffers/go"
	digest "github.com/opencontainers/go-digest"
)

const (
	checkpointHeaderSize = 4 + 8
	checkpointPosSize    = 8 + 8 + 1
	checkpointRecordSize = checkpointPosSize + WindowSize

	// v1CheckpointIn is the compressed offset assumed for the checkpoint 0
	// that version-1 blobs omit (just after a 10-byte gzip header).
	v1CheckpointIn = 10

	// tarZinfoVersion is the only TarZinfo version SOCI writes.
	tarZinfoVersion = 2
	// maxTarZinfoSize bounds an encoded TarZinfo (SOCI's are 40 bytes).
	maxTarZinfoSize = 4096
)

// Checkpoint is a point where inflation of a gzip layer can resume: the
// boundary between two deflate blocks.
type Checkpoint struct {
	// In is the compressed offset of the first full byte after the block
	// boundary.
	In int64
	// Out is the uncompressed offset of the boundary.
	Out int64
	// Bits is the number of bits (0..7) of byte In-1 that belong to the next
	// block: resume by priming the bit buffer with byte[In-1] >> (8-Bits).
	Bits uint8
}

// CheckpointTable is a parsed gzip checkpoint blob. The positions of all
// checkpoints are held in memory; the 32 KiB windows stay in the reader and
// are read by Window.
//
// Span i starts at checkpoint i and ends at checkpoint i+1 (the last span
// at the end of the layer).
type CheckpointTable struct {
	// SpanSize is the span size the blob was built with (informational: the
	// spans are defined by Points).
	SpanSize int64
	// Points holds every checkpoint, including v1's implicit checkpoint 0.
	Points []Checkpoint
	// Version is 1 or 2 (SOCI's blobs), or 3 (a native table, whose
	// windows are in a blob of their own: see native.go).
	Version int

	r io.ReaderAt // the blob (v1, v2) or the windows blob (native; may be nil)
	// windowsDigest and windowsSize name the windows blob of a native
	// table.
	windowsDigest digest.Digest
	windowsSize   int64
	windowDigests [][sha256.Size]byte
}

// ParseCheckpoints reads a checkpoint blob of size bytes from r: the header
// and each checkpoint's position, with small ReadAt calls. Windows are read
// on demand by Window, so r must stay readable while the table is used.
//
// The blob is rejected (ErrMalformed) unless its length is exactly that of
// a v1 or v2 blob with the declared count, the count is in [1,
// Limits.MaxSpans] (and the blob within Limits.MaxZtocSize; opts select the
// limits, default DefaultLimits),
// the span size is positive, and the checkpoints are valid: checkpoint 0 is
// at Out 0, In and Out strictly increase (two checkpoints at the same
// uncompressed offset would make an empty span; SOCI only adds a checkpoint
// after more than span-size bytes of output), Bits <= 7 and In >= 1 when
// Bits > 0.
func ParseCheckpoints(r io.ReaderAt, size int64, opts ...Option) (*CheckpointTable, error) {
	lim := applyOptions(opts)
	if size > lim.MaxZtocSize {
		return nil, overLimit(true, "checkpoints: blob of %d bytes exceeds the %d-byte limit", size, lim.MaxZtocSize)
	}
	if size < checkpointHeaderSize {
		return nil, malformed("checkpoints: blob of %d bytes is shorter than its header", size)
	}
	var hdr [checkpointHeaderSize]byte
	if err := readFull(r, hdr[:], 0); err != nil {
		return nil, fmt.Errorf("checkpoints: read header: %w", err)
	}
	count := int64(int32(binary.LittleEndian.Uint32(hdr[:4])))
	t := &CheckpointTable{SpanSize: int64(binary.LittleEndian.Uint64(hdr[4:])), r: r}
	if count < 1 {
		return nil, malformed("checkpoints: count %d", count)
	}
	if count > int64(lim.MaxSpans) {
		return nil, overLimit(true, "checkpoints: %d checkpoints exceed the limit of %d", count, lim.MaxSpans)
	}
	if t.SpanSize <= 0 {
		return nil, malformed("checkpoints: span size %d not positive", t.SpanSize)
	}
	switch size {
	case checkpointHeaderSize + count*checkpointRecordSize:
		t.Version = 2
	case checkpointHeaderSize + (count-1)*checkpointRecordSize:
		t.Version = 1
	default:
		return nil, malformed("checkpoints: %d bytes fit neither v1 nor v2 with %d checkpoints", size, count)
	}
	t.Points = make([]Checkpoint, 0, min(count, 1<<12))
	if t.Version == 1 {
		t.Points = append(t.Points, Checkpoint{In: v1CheckpointIn})
	}
	var rec [checkpointPosSize]byte
	for off := int64(checkpointHeaderSize); off < size; off += checkpointRecordSize {
		if err := readFull(r, rec[:], off); err != nil {
			return nil, fmt.Errorf("checkpoints: read checkpoint %d: %w", len(t.Points), err)
		}
		t.Points = append(t.Points, Checkpoint{
			In:   int64(binary.LittleEndian.Uint64(rec[0:])),
			Out:  int64(binary.LittleEndian.Uint64(rec[8:])),
			Bits: rec[16],
		})
	}
	if err := validatePoints(t.Points, lim.MaxSpans); err != nil {
		return nil, err
	}
	return t, nil
}

// validatePoints checks the rules documented on ParseCheckpoints.
func validatePoints(points []Checkpoint, maxSpans int) error {
	if len(points) < 1 || len(points) > maxSpans {
		return malformed("checkpoints: count %d outside [1, %d]", len(points), maxSpans)
	}
	if points[0].Out != 0 {
		return malformed("checkpoints: checkpoint 0 at uncompressed offset %d, want 0", points[0].Out)
	}
	for i, p := range points {
		if p.In < 0 || p.Out < 0 {
			return malformed("checkpoints: checkpoint %d has negative offsets (in %d, out %d)", i, p.In, p.Out)
		}
		if p.Bits > 7 {
			return malformed("checkpoints: checkpoint %d has %d bits", i, p.Bits)
		}
		if p.Bits > 0 && p.In < 1 {
			return malformed("checkpoints: checkpoint %d has %d bits at offset 0", i, p.Bits)
		}
		if i > 0 && (p.In <= points[i-1].In || p.Out <= points[i-1].Out) {
			return malformed("checkpoints: checkpoint %d (in %d, out %d) not after checkpoint %d (in %d, out %d)",
				i, p.In, p.Out, i-1, points[i-1].In, points[i-1].Out)
		}
	}
	return nil
}

// NumSpans returns the number of spans (= checkpoints).
func (t *CheckpointTable) NumSpans() int { return len(t.Points) }

// Window reads checkpoint i's 32 KiB window into dst[:WindowSize] and
// returns that slice. The window holds the last WindowSize bytes of output
// before the checkpoint, zero-padded (or, in SOCI's blobs, filled with
// unspecified bytes) in front when fewer were produced. For the implicit
// checkpoint 0 of a v1 blob it is all zeros.
func (t *CheckpointTable) Window(i int, dst []byte) ([]byte, error) {
	if i < 0 || i >= len(t.Points) {
		return nil, fmt.Errorf("ztoc: checkpoint %d out of range [0, %d)", i, len(t.Points))
	}
	if len(dst) < WindowSize {
		return nil, fmt.Errorf("ztoc: window buffer of %d bytes, need %d", len(dst), WindowSize)
	}
	dst = dst[:WindowSize]
	if t.Version == nativeTableVersion {
		if t.r == nil {
			return nil, fmt.Errorf("%w: checkpoint %d", ErrNoWindows, i)
		}
		if err := readFull(t.r, dst, int64(i)*WindowSize); err != nil {
			return nil, fmt.Errorf("ztoc: read window of checkpoint %d: %w", i, err)
		}
		if sha256.Sum256(dst) != t.windowDigests[i] {
			return nil, fmt.Errorf("%w: the window of checkpoint %d does not match its digest", ErrSpanDigest, i)
		}
		return dst, nil
	}
	stored := i
	if t.Version == 1 {
		if i == 0 {
			clear(dst)
			return dst, nil
		}
		stored = i - 1
	}
	off := checkpointHeaderSize + int64(stored)*checkpointRecordSize + checkpointPosSize
	if err := readFull(t.r, dst, off); err != nil {
		return nil, fmt.Errorf("ztoc: read window of checkpoint %d: %w", i, err)
	}
	return dst, nil
}

// SpanRanges returns the byte ranges of span i: compressed [c0, c1) and
// uncompressed [u0, u1). The compressed range starts one byte early when the
// checkpoint has Bits (that byte is shared with the previous span) and the
// last span ends at compressedSize / uncompressedSize. If uncompressedSize
// is before the last checkpoint (SOCI counts the uncompressed size only up
// to the tar end-of-archive marker, so a checkpoint may fall in trailing
// padding), the last span's uncompressed range is empty.
func (t *CheckpointTable) SpanRanges(i SpanID, compressedSize, uncompressedSize int64) (c0, c1, u0, u1 int64, err error) {
	if i < 0 || int(i) >= len(t.Points) {
		return 0, 0, 0, 0, fmt.Errorf("ztoc: span %d out of range [0, %d)", i, len(t.Points))
	}
	p := t.Points[i]
	c0, u0 = p.In, p.Out
	if p.Bits != 0 {
		c0--
	}
	if int(i)+1 < len(t.Points) {
		next := t.Points[i+1]
		return c0, next.In, u0, next.Out, nil
	}
	if compressedSize < p.In {
		return 0, 0, 0, 0, malformed("ztoc: last checkpoint at %d past the %d-byte layer", p.In, compressedSize)
	}
	return c0, compressedSize, u0, max(u0, uncompressedSize), nil
}

// SpanOf returns the span holding uncompressed offset off: the last
// checkpoint at or before it (span 0 for negative offsets).
func (t *CheckpointTable) SpanOf(off int64) SpanID {
	i := sort.Search(len(t.Points), func(i int) bool { return t.Points[i].Out > off })
	return SpanID(max(i-1, 0))
}

// EncodeCheckpoints writes a version-2 checkpoint blob. windows[i] is the
// output before points[i], at most WindowSize bytes; shorter windows (near
// the stream start) are zero-padded in front. points must satisfy the rules
// of ParseCheckpoints and spanSize must be positive.
func EncodeCheckpoints(w io.Writer, spanSize int64, points []Checkpoint, windows [][]byte) error {
	if spanSize <= 0 {
		return fmt.Errorf("ztoc: encode checkpoints: span size %d not positive", spanSize)
	}
	if len(windows) != len(points) {
		return fmt.Errorf("ztoc: encode checkpoints: %d windows for %d checkpoints", len(windows), len(points))
	}
	if err := validatePoints(points, maxSpansFormat); err != nil {
		return fmt.Errorf("ztoc: encode: %w", err)
	}
	var hdr [checkpointHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[:4], uint32(len(points)))
	binary.LittleEndian.PutUint64(hdr[4:], uint64(spanSize))
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("ztoc: encode checkpoints: %w", err)
	}
	rec := make([]byte, checkpointRecordSize)
	for i, p := range points {
		win := windows[i]
		if len(win) > WindowSize {
			return fmt.Errorf("ztoc: encode checkpoints: window %d has %d bytes, more than %d", i, len(win), WindowSize)
		}
		binary.LittleEndian.PutUint64(rec[0:], uint64(p.In))
		binary.LittleEndian.PutUint64(rec[8:], uint64(p.Out))
		rec[16] = p.Bits
		pad := WindowSize - len(win)
		clear(rec[checkpointPosSize : checkpointPosSize+pad])
		copy(rec[checkpointPosSize+pad:], win)
		if _, err := w.Write(rec); err != nil {
			return fmt.Errorf("ztoc: encode checkpoint %d: %w", i, err)
		}
	}
	return nil
}

// EncodeTarZinfo returns the TarZinfo flatbuffer (version 2) describing an
// uncompressed tar layer of size bytes cut into spans of spanSize bytes.
func EncodeTarZinfo(spanSize, size int64) ([]byte, error) {
	if spanSize <= 0 || size < 0 {
		return nil, fmt.Errorf("ztoc: encode tar zinfo: span size %d / size %d invalid", spanSize, size)
	}
	b := flatbuffers.NewBuilder(64)
	b.StartObject(3)
	b.PrependInt32Slot(0, tarZinfoVersion, 0)
	b.PrependInt64Slot(1, spanSize, 0)
	b.PrependInt64Slot(2, size, 0)
	b.Finish(b.EndObject())
	return b.FinishedBytes(), nil
}

// ParseTarZinfo decodes a TarZinfo flatbuffer. Only version 2 (the only one
// SOCI writes) is accepted; span size must be positive and size
// non-negative.
func ParseTarZinfo(b []byte) (spanSize, size int64, err error) {
	if len(b) > maxTarZinfoSize {
		return 0, 0, malformed("tar zinfo: %d bytes exceed the %d-byte limit", len(b), maxTarZinfoSize)
	}
	w := &wire{head: b, size: uint64(len(b))}
	t, err := w.root()
	if err != nil {
		return 0, 0, fmt.Errorf("tar zinfo: %w", err)
	}
	version, err := w.uint32Field(t, 0)
	if err == nil {
		spanSize, err = w.int64Field(t, 1)
	}
	if err == nil {
		size, err = w.int64Field(t, 2)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("tar zinfo: %w", err)
	}
	if int32(version) != tarZinfoVersion {
		return 0, 0, malformed("tar zinfo: version %d, want %d", int32(version), tarZinfoVersion)
	}
	if spanSize <= 0 || size < 0 {
		return 0, 0, malformed("tar zinfo: span size %d / size %d invalid", spanSize, size)
	}
	if tarMaxSpanID(spanSize, size)+1 > maxSpansFormat {
		return 0, 0, malformed("tar zinfo: more than %d spans", maxSpansFormat)
	}
	return spanSize, size, nil
}

// tarMaxSpanID returns SOCI's max span id of a tar layer: the number of
// fixed-size spans minus one (-1 for an empty layer).
func tarMaxSpanID(spanSize, size int64) int64 {
	n := size / spanSize
	if size%spanSize == 0 {
		n--
	}
	return n
}
