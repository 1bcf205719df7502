package ztoc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sort"
	"sync"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc/internal/flate"
)

// LayerIndex is a zTOC loaded for random access: the file table with a path
// lookup, the span geometry and the digests in memory, the 32 KiB checkpoint
// windows left where they are (read from the serialized zTOC when a span is
// inflated), so memory does not grow with the spans read. Safe for
// concurrent use.
//
// Opening checks the zTOC against Limits, so every span of an open
// LayerIndex has a bounded length and inflate ratio: InflateSpan never
// allocates more than Limits.MaxSpanSize, whatever the zTOC claims.
type LayerIndex struct {
	z   *Ztoc
	lim Limits

	// gzip layers
	cps *CheckpointTable
	// uncompressed layers: fixed spans
	tarSpanSize int64

	nspans int
	byPath map[string]int32 // CleanName(name) -> entry (the last one wins, as in extraction)
	// dups lists, for names that occur more than once, every entry with
	// that name in stream order (hard links resolve to the one before them).
	dups map[string][]int32

	windows sync.Pool // *[WindowSize]byte scratch for inflating
}

// OpenLayerIndex decodes a serialized zTOC from r (size bytes) for random
// access, within the limits opts select (default DefaultLimits). r must stay
// readable for the life of the LayerIndex: checkpoint windows are read from
// it on demand.
func OpenLayerIndex(r io.ReaderAt, size int64, opts ...Option) (*LayerIndex, error) {
	z, cpSection, err := Decode(r, size, opts...)
	if err != nil {
		return nil, err
	}
	return NewLayerIndex(z, cpSection, cpSection.Size(), opts...)
}

// NewLayerIndex validates z (see Decode; the limits opts select, default
// DefaultLimits) and prepares it for random access. For gzip layers,
// checkpoints is the checkpoint blob (z.CompressionInfo.Checkpoints when it
// is in memory; then checkpoints may be nil).
func NewLayerIndex(z *Ztoc, checkpoints io.ReaderAt, size int64, opts ...Option) (*LayerIndex, error) {
	o := allOptions(opts)
	lim := o.limits
	if z == nil {
		return nil, malformed("ztoc: nil zTOC")
	}
	ci := &z.CompressionInfo
	if checkpoints == nil {
		checkpoints, size = bytes.NewReader(ci.Checkpoints), int64(len(ci.Checkpoints))
	}
	g, err := checkZtoc(z, checkpoints, size, &lim, o.windows)
	if err != nil {
		return nil, err
	}
	if z.CompressedArchiveSize <= 0 || g.nspans < 1 {
		return nil, malformed("ztoc: empty layer (%d bytes, %d spans)", z.CompressedArchiveSize, g.nspans)
	}
	x := &LayerIndex{
		z: z, lim: lim, cps: g.cps, tarSpanSize: g.tarSpanSize, nspans: g.nspans,
		byPath: make(map[string]int32, len(z.TOC.FileMetadata)),
	}
	for i := range z.TOC.FileMetadata {
		name := CleanName(z.TOC.FileMetadata[i].Name)
		if prev, ok := x.byPath[name]; ok {
			if x.dups == nil {
				x.dups = make(map[string][]int32)
			}
			if len(x.dups[name]) == 0 {
				x.dups[name] = append(x.dups[name], prev)
			}
			x.dups[name] = append(x.dups[name], int32(i))
		}
		x.byPath[name] = int32(i)
	}
	x.windows.New = func() any { return new([WindowSize]byte) }
	return x, nil
}

// Limits returns the limits the index was opened with (defaults filled in).
func (x *LayerIndex) Limits() Limits { return x.lim }

// Ztoc returns the decoded zTOC (without the checkpoint blob when the index
// was opened with OpenLayerIndex). Callers must not modify it.
func (x *LayerIndex) Ztoc() *Ztoc { return x.z }

// Entries returns the file table in stream order. Callers must not modify it.
func (x *LayerIndex) Entries() []FileMetadata { return x.z.TOC.FileMetadata }

// NumSpans returns the number of spans.
func (x *LayerIndex) NumSpans() int { return x.nspans }

// SpanCompressedRange returns the byte range [start, end) of span id in the
// compressed layer. Adjacent spans may share one byte.
func (x *LayerIndex) SpanCompressedRange(id SpanID) (start, end int64) {
	start, end, _, _ = x.spanRanges(id)
	return start, end
}

// SpanUncompressedRange returns the range [start, end) of the uncompressed
// tar stream that span id inflates to.
func (x *LayerIndex) SpanUncompressedRange(id SpanID) (start, end int64) {
	_, _, start, end = x.spanRanges(id)
	return start, end
}

// spanRanges returns both ranges of span id (which callers keep in
// [0, NumSpans)).
func (x *LayerIndex) spanRanges(id SpanID) (c0, c1, u0, u1 int64) {
	if x.cps == nil {
		// Fixed slices of the blob; only the part before the uncompressed
		// archive size is served.
		c0 = int64(id) * x.tarSpanSize
		c1 = min(c0+x.tarSpanSize, x.z.CompressedArchiveSize)
		size := x.z.UncompressedArchiveSize
		return c0, c1, min(c0, size), min(c1, size)
	}
	c0, c1, u0, u1, _ = x.cps.SpanRanges(id, x.z.CompressedArchiveSize, x.z.UncompressedArchiveSize)
	return c0, c1, u0, u1
}

// SpanOf returns the span holding uncompressed offset off (clamped to the
// first and last span).
func (x *LayerIndex) SpanOf(off int64) SpanID {
	if x.cps == nil {
		return SpanID(min(off/x.tarSpanSize, int64(x.nspans-1)))
	}
	p := x.cps.Points
	i := sort.Search(len(p), func(i int) bool { return p[i].Out > off }) - 1
	return SpanID(max(i, 0))
}

// CompressedSpanOf returns the span holding compressed offset off (clamped
// to the first and last span). Where two spans share a byte, the later one.
func (x *LayerIndex) CompressedSpanOf(off int64) SpanID {
	if x.cps == nil {
		return x.SpanOf(off)
	}
	p := x.cps.Points
	i := sort.Search(len(p), func(i int) bool {
		s, _ := x.SpanCompressedRange(SpanID(i))
		return s > off
	}) - 1
	return SpanID(max(i, 0))
}

// SpanDigest returns the digest of span id's compressed bytes ("" for an id
// outside [0, NumSpans)).
func (x *LayerIndex) SpanDigest(id SpanID) digest.Digest {
	if id < 0 || int(id) >= x.nspans {
		return ""
	}
	return x.z.CompressionInfo.SpanDigests[id]
}

// VerifySpan checks compressed against span id's length and digest.
func (x *LayerIndex) VerifySpan(id SpanID, compressed []byte) error {
	if int(id) < 0 || int(id) >= x.nspans {
		return fmt.Errorf("%w: span %d of %d", ErrMalformed, id, x.nspans)
	}
	start, end := x.SpanCompressedRange(id)
	if int64(len(compressed)) != end-start {
		return fmt.Errorf("%w: span %d has %d bytes, want %d", ErrSpanDigest, id, len(compressed), end-start)
	}
	sum := sha256.Sum256(compressed)
	want := x.SpanDigest(id)
	if want.Algorithm() != digest.SHA256 || want.Encoded() != fmt.Sprintf("%x", sum) {
		return fmt.Errorf("%w: span %d", ErrSpanDigest, id)
	}
	return nil
}

// InflateSpan verifies the compressed bytes of span id against its length
// and digest and returns the span's uncompressed bytes (exactly
// SpanUncompressedRange long), in dst when it has the capacity, else in a
// new slice. It is safe for any zTOC that passed OpenLayerIndex or
// NewLayerIndex: the length is bounded by Limits.MaxSpanSize, and corrupt
// input (or a checkpoint that is not a real block boundary) gives an error
// (ErrCorruptStream, ErrTruncated, ErrMalformed), never a panic. The bytes
// are those of the layer only once the zTOC passed Verify: until then a
// forged checkpoint window can change them (see README.md).
func (x *LayerIndex) InflateSpan(id SpanID, compressed, dst []byte) ([]byte, error) {
	if err := x.VerifySpan(id, compressed); err != nil {
		return nil, err
	}
	return x.inflateVerified(id, compressed, dst)
}

// InflateVerifiedSpan is InflateSpan for compressed bytes the caller has
// already checked with VerifySpan (e.g. a cache that verified them when it
// stored them). Only their length is checked again.
func (x *LayerIndex) InflateVerifiedSpan(id SpanID, compressed, dst []byte) ([]byte, error) {
	return x.inflateVerified(id, compressed, dst)
}

// inflateVerified is InflateSpan for bytes already verified against span
// id's digest.
func (x *LayerIndex) inflateVerified(id SpanID, compressed, dst []byte) ([]byte, error) {
	if id < 0 || int(id) >= x.nspans {
		return nil, fmt.Errorf("%w: span %d of %d", ErrMalformed, id, x.nspans)
	}
	start, end := x.SpanCompressedRange(id)
	if int64(len(compressed)) != end-start {
		return nil, fmt.Errorf("%w: span %d has %d bytes, want %d", ErrSpanDigest, id, len(compressed), end-start)
	}
	u0, u1 := x.SpanUncompressedRange(id)
	if u1-u0 < 0 || u1-u0 > x.lim.MaxSpanSize {
		// Cannot happen for an index that passed checkZtoc; never allocate
		// what a zTOC merely claims.
		return nil, overLimit(true, "ztoc: span %d of %d bytes", id, u1-u0)
	}
	n := int(u1 - u0)
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	if x.cps == nil {
		copy(dst, compressed)
		return dst, nil
	}
	win := x.windows.Get().(*[WindowSize]byte)
	defer x.windows.Put(win)
	w, err := x.cps.Window(int(id), win[:])
	if err != nil {
		return nil, fmt.Errorf("ztoc: read window of span %d: %w", id, err)
	}
	c := x.cps.Points[id]
	d, err := flate.ResumeGzip(bytes.NewReader(compressed), c.In, c.Bits, c.Out, w)
	if err != nil {
		return nil, fmt.Errorf("ztoc: resume span %d: %w", id, mapFlateErr(err))
	}
	if _, err := io.ReadFull(d, dst); err != nil {
		return nil, fmt.Errorf("ztoc: inflate span %d: %w", id, mapFlateErr(err))
	}
	return dst, nil
}

// CheckWindow checks the window of checkpoint id (which span id inflates
// from) against prev, the inflated bytes of span id-1 (as InflateSpan
// returns them): the window must end with prev's last min(32 KiB, len(prev))
// bytes. A difference wraps ErrVerify. It catches a forged window whenever
// two adjacent spans are inflated together, at the cost of a 32 KiB
// comparison; only Verify proves every window. Uncompressed layers have no
// windows (nil).
func (x *LayerIndex) CheckWindow(id SpanID, prev []byte) error {
	if x.cps == nil {
		return nil
	}
	if id <= 0 || int(id) >= x.nspans {
		return fmt.Errorf("%w: span %d of %d has no previous span", ErrMalformed, id, x.nspans)
	}
	if a, b := x.SpanUncompressedRange(id - 1); int64(len(prev)) != b-a {
		return fmt.Errorf("ztoc: check window %d: span %d has %d bytes, want %d", id, id-1, len(prev), b-a)
	}
	win := x.windows.Get().(*[WindowSize]byte)
	defer x.windows.Put(win)
	w, err := x.cps.Window(int(id), win[:])
	if err != nil {
		return fmt.Errorf("ztoc: read window of span %d: %w", id, err)
	}
	n := min(len(prev), WindowSize)
	if !bytes.Equal(w[WindowSize-n:], prev[len(prev)-n:]) {
		return fmt.Errorf("ztoc: checkpoint %d: its window differs from the last %d bytes of span %d: %w", id, n, id-1, ErrVerify)
	}
	return nil
}

// Lookup returns the index of the entry named name (any spelling that cleans
// to the same path).
func (x *LayerIndex) Lookup(name string) (int, bool) {
	i, ok := x.byPath[CleanName(name)]
	return int(i), ok
}

// LookupBefore returns the last entry named name (any spelling that cleans
// to the same path) that comes before entry i in the stream: what the name
// refers to while entry i is being extracted.
func (x *LayerIndex) LookupBefore(name string, i int) (int, bool) {
	c := CleanName(name)
	if d, ok := x.dups[c]; ok {
		k := sort.Search(len(d), func(k int) bool { return int(d[k]) >= i }) - 1
		if k < 0 {
			return 0, false
		}
		return int(d[k]), true
	}
	j, ok := x.byPath[c]
	if !ok || int(j) >= i {
		return 0, false
	}
	return int(j), true
}

// maxLinkDepth bounds hard-link chains.
const maxLinkDepth = 8

// Resolve follows hard links from entry i to the regular file holding the
// data. A hard link refers to the entry of its link name that precedes it
// in the stream, as in an extraction (a later entry of the same name
// replaces the name, not the linked file); a link to a name that does not
// exist yet fails, as it would when extracting.
func (x *LayerIndex) Resolve(i int) (int, error) {
	e := x.z.TOC.FileMetadata
	if i < 0 || i >= len(e) {
		return 0, fmt.Errorf("%w: entry %d of %d", ErrNotExist, i, len(e))
	}
	for depth := 0; depth < maxLinkDepth; depth++ {
		switch e[i].Type {
		case TypeReg:
			return i, nil
		case TypeHardlink:
			j, ok := x.LookupBefore(e[i].Linkname, i)
			if !ok {
				return 0, fmt.Errorf("%w: hard link %q to %q, which no entry before it names", ErrNotExist, e[i].Name, e[i].Linkname)
			}
			i = j
		default:
			return 0, fmt.Errorf("%w: %q is a %s, not a regular file", ErrNotExist, e[i].Name, e[i].Type)
		}
	}
	return 0, fmt.Errorf("%w: hard link chain too long at %q", ErrInvalidEntry, e[i].Name)
}

// SpanSource supplies compressed span bytes, e.g. from a cache or registry
// range requests. FetchSpans returns the exact compressed bytes of spans
// first..last (each SpanCompressedRange long), fetched with one range read
// when they are not cached. The Reader verifies every span's digest, unless
// the source is a VerifyingSource.
type SpanSource interface {
	FetchSpans(ctx context.Context, first, last SpanID) ([][]byte, error)
}

// VerifyingSource is a SpanSource that returns only spans it has verified
// against the digests of the same LayerIndex (e.g. to tell a corrupt cache
// entry from a bad layer); the Reader then does not hash them again.
type VerifyingSource interface {
	SpanSource
	VerifiesSpans() bool
}

// ReaderAtSource adapts the compressed layer as an io.ReaderAt: a run of
// spans is read with one ReadAt.
func ReaderAtSource(x *LayerIndex, r io.ReaderAt) SpanSource { return &readerAtSource{x: x, r: r} }

type readerAtSource struct {
	x *LayerIndex
	r io.ReaderAt
}

func (s *readerAtSource) FetchSpans(_ context.Context, first, last SpanID) ([][]byte, error) {
	c0, _ := s.x.SpanCompressedRange(first)
	_, c1 := s.x.SpanCompressedRange(last)
	buf := make([]byte, c1-c0)
	n, err := s.r.ReadAt(buf, c0)
	if n < len(buf) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("ztoc: read spans %d-%d [%d, %d): %w: %w", first, last, c0, c1, ErrTruncated, err)
	}
	return SplitSpans(s.x, first, last, buf), nil
}

// SplitSpans cuts the compressed bytes of the contiguous spans first..last
// (starting at span first's compressed start) into one slice per span.
func SplitSpans(x *LayerIndex, first, last SpanID, buf []byte) [][]byte {
	c0, _ := x.SpanCompressedRange(first)
	out := make([][]byte, 0, last-first+1)
	for id := first; id <= last; id++ {
		s, e := x.SpanCompressedRange(id)
		out = append(out, buf[s-c0:e-c0:e-c0])
	}
	return out
}
