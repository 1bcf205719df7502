package tocindex

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc"
)

// DefaultSpanTarget is the default Options.SpanTarget: regions are grouped
// into spans of about this many compressed bytes.
const DefaultSpanTarget = 512 << 10

// Chunk is one piece of a regular file's data as the TOC places it.
type Chunk struct {
	// Entry is the regular file (an index into Layer.Entries).
	Entry int
	// FileOffset is where in the file the chunk's data belongs.
	FileOffset int64
	// Size is the chunk's length (uncompressed).
	Size int64
	// Offset is the compressed offset of the gzip member or zstd frame the
	// chunk's data starts in; Inner is the chunk's offset in what the region
	// starting there decompresses to (eStargz innerOffset; 0 otherwise).
	Offset, Inner int64
	// Digest is the sha256 of the chunk's data.
	Digest digest.Digest
}

// Layer is a format's parsed TOC, the input of Build.
type Layer struct {
	// Format names the format ("estargz", "zstd:chunked").
	Format string
	// BlobSize is the compressed blob's length.
	BlobSize int64
	// Entries is the file table in tar order (chunk entries of the TOC are
	// not entries). Build sets UncompressedOffset of every regular file;
	// UncompressedSize is the file's size.
	Entries []ztoc.FileMetadata
	// Chunks place every byte of every non-empty regular file.
	Chunks []Chunk
	// Boundaries are compressed offsets, besides 0 and the chunks' Offset,
	// where a member or frame starts (the end of a file's last frame, the
	// TOC, the footer): the regions are cut there.
	Boundaries []int64
	// Tail is where the trailing metadata (TOC, footer) starts; the regions
	// from Tail on form the last span, whatever its size. BlobSize when
	// there is none.
	Tail int64
	// TailBytes, when set, are the blob's bytes from Tail on, already
	// checked by the format (the TOC's digest): the last span's fetches are
	// checked against their sha256 from the start.
	TailBytes []byte
	// Codec decompresses the regions.
	Codec Codec
	// ModTimeRound is the precision of the TOC's modification times
	// (eStargz: a second; 0: exact); VerifyLayer rounds the tar headers'
	// times alike.
	ModTimeRound time.Duration
	// Prioritized is the number of leading entries the image marks as
	// needed at start-up (eStargz's prefetch landmark), 0 for none.
	Prioritized int
}

// Options tune Build.
type Options struct {
	// SpanTarget is the compressed size spans are grouped to (a region is
	// never split). Default DefaultSpanTarget.
	SpanTarget int64
	// Limits bound the TOC: entries, names, PAX records (ztoc's), the
	// number of spans, and the length of every region and span
	// (MaxSpanSize, compressed and uncompressed; the tail may be as long as
	// MaxZtocSize).
	Limits ztoc.Limits
}

// region is a run of whole members or frames between two boundaries.
type region struct {
	start  int64
	pieces []piece // sorted by inner
}

// piece is a chunk as its region holds it.
type piece struct {
	chunk       int32
	inner, size int64
	v           int64 // offset in the virtual stream
	sum         [sha256.Size]byte
}

// end is how much of the region's output the piece needs.
func (p *piece) end() int64 { return p.inner + p.size }

// span is regions r0..r1-1: compressed [c0, c1), virtual [u0, u1).
type span struct {
	r0, r1 int
	c0, c1 int64
	u0, u1 int64
}

// Index is a layer's random-access index built from its TOC. It implements
// the span geometry layerstore/spans works with. Safe for concurrent use.
type Index struct {
	format   string
	size     int64
	entries  []ztoc.FileMetadata
	chunks   []Chunk
	regions  []region
	spans    []span
	codec    Codec
	modRound time.Duration
	startup  int64 // virtual end of the prioritized files' data
	tailSpan int
	tailSum  *[sha256.Size]byte
	// trusted holds every span's compressed sha256 once VerifyLayer found
	// the layer good (TrustSpans).
	trusted atomic.Pointer[[][sha256.Size]byte]
}

// Build checks a parsed TOC against the blob's geometry and the limits and
// returns its Index. Errors wrap ErrMalformed (or ztoc.ErrLimit).
func Build(l Layer, o Options) (*Index, error) {
	lim := o.Limits.WithDefaults()
	target := o.SpanTarget
	if target <= 0 {
		target = DefaultSpanTarget
	}
	bad := func(format string, args ...any) (*Index, error) {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	if l.Codec == nil {
		return bad("no codec")
	}
	if l.BlobSize <= 0 {
		return bad("blob of %d bytes", l.BlobSize)
	}
	if l.Tail <= 0 || l.Tail > l.BlobSize {
		return bad("tail at %d outside the blob (%d bytes)", l.Tail, l.BlobSize)
	}
	if l.TailBytes != nil && int64(len(l.TailBytes)) != l.BlobSize-l.Tail {
		return bad("%d tail bytes for the %d bytes from %d", len(l.TailBytes), l.BlobSize-l.Tail, l.Tail)
	}
	if len(l.Entries) > lim.MaxEntries {
		return nil, fmt.Errorf("%w: %d entries exceed the limit of %d (%w)", ErrMalformed, len(l.Entries), lim.MaxEntries, ztoc.ErrLimit)
	}
	if l.Prioritized < 0 || l.Prioritized > len(l.Entries) {
		return bad("%d prioritized entries of %d", l.Prioritized, len(l.Entries))
	}
	for i := range l.Entries {
		e := &l.Entries[i]
		if err := checkEntry(lim, e); err != nil {
			return nil, fmt.Errorf("%w: entry %d (%q): %w", ErrMalformed, i, e.Name, err)
		}
		e.UncompressedOffset = 0
	}
	if len(l.Chunks) > lim.MaxSpans*64 {
		return nil, fmt.Errorf("%w: %d chunks (%w)", ErrMalformed, len(l.Chunks), ztoc.ErrLimit)
	}

	// Regions: cut at 0, every boundary, every chunk's offset and the tail.
	starts := make([]int64, 0, len(l.Boundaries)+len(l.Chunks)+2)
	starts = append(starts, 0, l.Tail)
	starts = append(starts, l.Boundaries...)
	for i := range l.Chunks {
		starts = append(starts, l.Chunks[i].Offset)
	}
	slices.Sort(starts)
	starts = slices.Compact(starts)
	if starts[len(starts)-1] == l.BlobSize {
		starts = starts[:len(starts)-1] // a tail of nothing
	}
	for _, s := range starts {
		if s < 0 || s >= l.BlobSize {
			return bad("region at %d outside the blob (%d bytes)", s, l.BlobSize)
		}
	}
	x := &Index{
		format:   l.Format,
		size:     l.BlobSize,
		entries:  l.Entries,
		chunks:   l.Chunks,
		regions:  make([]region, len(starts)),
		codec:    l.Codec,
		modRound: l.ModTimeRound,
	}
	for i, s := range starts {
		x.regions[i].start = s
	}
	for ci := range l.Chunks {
		c := &l.Chunks[ci]
		if c.Entry < 0 || c.Entry >= len(l.Entries) || l.Entries[c.Entry].Type != ztoc.TypeReg {
			return bad("chunk %d belongs to entry %d, not a regular file", ci, c.Entry)
		}
		if c.Size <= 0 || c.FileOffset < 0 || c.Inner < 0 || c.Size > lim.MaxSpanSize || c.Inner > lim.MaxSpanSize {
			return bad("chunk %d of %q: size %d at %d, inner offset %d", ci, l.Entries[c.Entry].Name, c.Size, c.FileOffset, c.Inner)
		}
		sum, err := sha256Of(c.Digest)
		if err != nil {
			return bad("chunk %d of %q: %v", ci, l.Entries[c.Entry].Name, err)
		}
		r, ok := slices.BinarySearchFunc(x.regions, c.Offset, func(r region, off int64) int { return cmpInt(r.start, off) })
		if !ok {
			return bad("chunk %d of %q at %d", ci, l.Entries[c.Entry].Name, c.Offset)
		}
		x.regions[r].pieces = append(x.regions[r].pieces, piece{chunk: int32(ci), inner: c.Inner, size: c.Size, sum: sum})
	}
	tailRegion := sort.Search(len(x.regions), func(i int) bool { return x.regions[i].start >= l.Tail })
	var v int64
	chunkV := make([]int64, len(l.Chunks))
	for ri := range x.regions {
		r := &x.regions[ri]
		clen := x.regionEnd(ri) - r.start
		maxLen := lim.MaxSpanSize
		if ri >= tailRegion {
			maxLen = lim.MaxZtocSize
		}
		if clen > maxLen {
			return nil, fmt.Errorf("%w: region at %d of %d bytes exceeds the limit of %d (%w)", ErrMalformed, r.start, clen, maxLen, ztoc.ErrLimit)
		}
		slices.SortFunc(r.pieces, func(a, b piece) int { return cmpInt(a.inner, b.inner) })
		for pi := range r.pieces {
			p := &r.pieces[pi]
			if pi > 0 && p.inner < r.pieces[pi-1].end() {
				return bad("chunks overlap in the region at %d", r.start)
			}
			p.v = v
			chunkV[p.chunk] = v
			v += p.size
		}
		if n := len(r.pieces); n > 0 && r.pieces[n-1].end() > lim.MaxSpanSize {
			return nil, fmt.Errorf("%w: region at %d needs %d uncompressed bytes (%w)", ErrMalformed, r.start, r.pieces[n-1].end(), ztoc.ErrLimit)
		}
	}
	if err := x.placeFiles(chunkV); err != nil {
		return nil, err
	}
	if err := x.cutSpans(tailRegion, target, lim); err != nil {
		return nil, err
	}
	x.tailSpan = len(x.spans) - 1
	if l.TailBytes != nil && l.Tail < l.BlobSize {
		sum := sha256.Sum256(l.TailBytes)
		x.tailSum = &sum
	}
	for i := 0; i < l.Prioritized; i++ {
		if e := &x.entries[i]; e.Type == ztoc.TypeReg && e.UncompressedSize > 0 {
			x.startup = max(x.startup, e.UncompressedOffset+e.UncompressedSize)
		}
	}
	return x, nil
}

// placeFiles checks that every regular file's chunks cover it exactly and
// lie back to back in the virtual stream, and sets its UncompressedOffset.
func (x *Index) placeFiles(chunkV []int64) error {
	order := make([]int32, len(x.chunks))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		ca, cb := &x.chunks[a], &x.chunks[b]
		if ca.Entry != cb.Entry {
			return ca.Entry - cb.Entry
		}
		return cmpInt(ca.FileOffset, cb.FileOffset)
	})
	covered := make([]bool, len(x.entries))
	for i := 0; i < len(order); {
		e := x.chunks[order[i]].Entry
		m := &x.entries[e]
		var off int64
		start := chunkV[order[i]]
		for ; i < len(order) && x.chunks[order[i]].Entry == e; i++ {
			c := &x.chunks[order[i]]
			if c.FileOffset != off || chunkV[order[i]] != start+off {
				return fmt.Errorf("%w: the chunks of %q do not cover it in order (chunk at %d, want %d)", ErrMalformed, m.Name, c.FileOffset, off)
			}
			off += c.Size
		}
		if off != m.UncompressedSize {
			return fmt.Errorf("%w: the chunks of %q cover %d bytes, the file has %d", ErrMalformed, m.Name, off, m.UncompressedSize)
		}
		m.UncompressedOffset = start
		covered[e] = true
	}
	for i := range x.entries {
		if m := &x.entries[i]; m.Type == ztoc.TypeReg && m.UncompressedSize > 0 && !covered[i] {
			return fmt.Errorf("%w: no chunk holds the data of %q", ErrMalformed, m.Name)
		}
	}
	return nil
}

// cutSpans groups the regions into spans of about target compressed bytes
// (and at most 4*target of chunk data unless one region has more); the
// regions from tailRegion on form the last span.
func (x *Index) cutSpans(tailRegion int, target int64, lim ztoc.Limits) error {
	var cur *span
	for ri := range x.regions {
		r0, r1 := x.regions[ri].start, x.regionEnd(ri)
		u0, u1 := x.regionVirtual(ri)
		if cur != nil && ri != tailRegion && (ri > tailRegion || (cur.c1-cur.c0+r1-r0 <= target && cur.u1-cur.u0+u1-u0 <= 4*target)) {
			cur.r1, cur.c1, cur.u1 = ri+1, r1, u1
			continue
		}
		if len(x.spans) >= lim.MaxSpans {
			return fmt.Errorf("%w: more than %d spans (%w)", ErrMalformed, lim.MaxSpans, ztoc.ErrLimit)
		}
		if cur != nil {
			u0 = cur.u1
		}
		x.spans = append(x.spans, span{r0: ri, r1: ri + 1, c0: r0, c1: r1, u0: u0, u1: u1})
		cur = &x.spans[len(x.spans)-1]
	}
	for i := range x.spans {
		if s := &x.spans[i]; s.u1-s.u0 > lim.MaxSpanSize {
			return fmt.Errorf("%w: span at %d holds %d bytes of data (%w)", ErrMalformed, s.c0, s.u1-s.u0, ztoc.ErrLimit)
		}
	}
	return nil
}

// regionEnd is where region ri ends in the blob.
func (x *Index) regionEnd(ri int) int64 {
	if ri+1 < len(x.regions) {
		return x.regions[ri+1].start
	}
	return x.size
}

// regionVirtual is region ri's range of the virtual stream (empty when it
// holds no chunk data).
func (x *Index) regionVirtual(ri int) (int64, int64) {
	p := x.regions[ri].pieces
	if len(p) == 0 {
		// Empty, at the virtual offset where the next data starts.
		for j := ri - 1; j >= 0; j-- {
			if q := x.regions[j].pieces; len(q) > 0 {
				return q[len(q)-1].v + q[len(q)-1].size, q[len(q)-1].v + q[len(q)-1].size
			}
		}
		return 0, 0
	}
	return p[0].v, p[len(p)-1].v + p[len(p)-1].size
}

// Format names the layer's format.
func (x *Index) Format() string { return x.format }

// BlobSize is the compressed blob's length.
func (x *Index) BlobSize() int64 { return x.size }

// Entries returns the file table (regular files' UncompressedOffset in the
// virtual stream). The caller must not change it.
func (x *Index) Entries() []ztoc.FileMetadata { return x.entries }

// VirtualSize is the length of the virtual stream: all chunk data.
func (x *Index) VirtualSize() int64 {
	if len(x.spans) == 0 {
		return 0
	}
	return x.spans[len(x.spans)-1].u1
}

// StartupEnd is where the data of the files the image marks as needed at
// start-up ends in the virtual stream (0 when it marks none).
func (x *Index) StartupEnd() int64 { return x.startup }

// NumSpans returns the number of spans.
func (x *Index) NumSpans() int { return len(x.spans) }

// TailSpan returns the span holding the trailing metadata (the last).
func (x *Index) TailSpan() int { return x.tailSpan }

// CompressedRange is span id's byte range [start, end) of the blob.
func (x *Index) CompressedRange(id int) (int64, int64) { return x.spans[id].c0, x.spans[id].c1 }

// UncompressedRange is span id's range [start, end) of the virtual stream;
// empty for spans without chunk data.
func (x *Index) UncompressedRange(id int) (int64, int64) { return x.spans[id].u0, x.spans[id].u1 }

// SpanOf returns the span holding virtual offset off (the last span for
// offsets at or past the end).
func (x *Index) SpanOf(off int64) int {
	i := sort.Search(len(x.spans), func(i int) bool { return x.spans[i].u1 > off })
	return min(i, len(x.spans)-1)
}

// CompressedSpanOf returns the span holding compressed offset off.
func (x *Index) CompressedSpanOf(off int64) int {
	i := sort.Search(len(x.spans), func(i int) bool { return x.spans[i].c1 > off })
	return min(i, len(x.spans)-1)
}

// TrustSpans records the sha256 of every span's compressed bytes, found by
// VerifyLayer; Verify checks every later fetch against them.
func (x *Index) TrustSpans(sums [][sha256.Size]byte) error {
	if len(sums) != len(x.spans) {
		return fmt.Errorf("tocindex: %d span digests for %d spans", len(sums), len(x.spans))
	}
	x.trusted.Store(&sums)
	return nil
}

// Trusted reports whether every span's compressed bytes are checked against
// their sha256 (after TrustSpans).
func (x *Index) Trusted() bool { return x.trusted.Load() != nil }

// Verify checks span id's fetched compressed bytes: their length, their
// sha256 once known (TrustSpans, and the tail from the start), else the
// format's structure region by region. The chunks' digests are checked by
// Inflate. Errors wrap ErrCorrupt.
func (x *Index) Verify(id int, b []byte) error {
	s := &x.spans[id]
	if int64(len(b)) != s.c1-s.c0 {
		return fmt.Errorf("%w: span %d has %d bytes, want %d", ErrCorrupt, id, len(b), s.c1-s.c0)
	}
	var want *[sha256.Size]byte
	if sums := x.trusted.Load(); sums != nil {
		want = &(*sums)[id]
	} else if id == x.tailSpan && x.tailSum != nil {
		want = x.tailSum
	}
	if want != nil {
		if got := sha256.Sum256(b); !bytes.Equal(got[:], want[:]) {
			return fmt.Errorf("%w: span %d does not match its digest", ErrCorrupt, id)
		}
		return nil
	}
	for ri := s.r0; ri < s.r1; ri++ {
		r0, r1 := x.regions[ri].start-s.c0, x.regionEnd(ri)-s.c0
		if err := x.codec.CheckRegion(b[r0:r1]); err != nil {
			return fmt.Errorf("%w: span %d, region at %d: %w", ErrCorrupt, id, x.regions[ri].start, err)
		}
	}
	return nil
}

// Inflate returns span id's chunk data from its compressed bytes, in dst
// when it has room, after checking every chunk's sha256. Errors wrap
// ErrCorrupt: the bytes are not the span.
func (x *Index) Inflate(id int, b, dst []byte) ([]byte, error) {
	s := &x.spans[id]
	if int64(len(b)) != s.c1-s.c0 {
		return nil, fmt.Errorf("%w: span %d has %d bytes, want %d", ErrCorrupt, id, len(b), s.c1-s.c0)
	}
	n := s.u1 - s.u0
	if int64(cap(dst)) >= n {
		dst = dst[:n]
	} else {
		dst = make([]byte, n)
	}
	var scratch []byte
	for ri := s.r0; ri < s.r1; ri++ {
		r := &x.regions[ri]
		if len(r.pieces) == 0 {
			continue
		}
		src := b[r.start-s.c0 : x.regionEnd(ri)-s.c0]
		if len(r.pieces) == 1 && r.pieces[0].inner == 0 {
			p := &r.pieces[0]
			out := dst[p.v-s.u0 : p.v-s.u0+p.size]
			if err := x.codec.DecodePrefix(src, out); err != nil {
				return nil, fmt.Errorf("%w: span %d, region at %d: %w", ErrCorrupt, id, r.start, err)
			}
			if err := checkPiece(p, out); err != nil {
				return nil, x.pieceErr(id, p, err)
			}
			continue
		}
		need := r.pieces[len(r.pieces)-1].end()
		if int64(cap(scratch)) < need {
			scratch = make([]byte, need)
		}
		out := scratch[:need]
		if err := x.codec.DecodePrefix(src, out); err != nil {
			return nil, fmt.Errorf("%w: span %d, region at %d: %w", ErrCorrupt, id, r.start, err)
		}
		for pi := range r.pieces {
			p := &r.pieces[pi]
			data := out[p.inner:p.end()]
			if err := checkPiece(p, data); err != nil {
				return nil, x.pieceErr(id, p, err)
			}
			copy(dst[p.v-s.u0:], data)
		}
	}
	return dst, nil
}

func checkPiece(p *piece, data []byte) error {
	if got := sha256.Sum256(data); !bytes.Equal(got[:], p.sum[:]) {
		return fmt.Errorf("sha256:%x, want sha256:%x", got, p.sum)
	}
	return nil
}

func (x *Index) pieceErr(id int, p *piece, err error) error {
	c := &x.chunks[p.chunk]
	return fmt.Errorf("%w: span %d: chunk at %d of %q: %w", ErrCorrupt, id, c.FileOffset, x.entries[c.Entry].Name, err)
}

// sha256Of returns the bytes of a sha256 digest.
func sha256Of(d digest.Digest) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	// Validate first: Algorithm panics on a digest without a colon.
	if err := d.Validate(); err != nil {
		return sum, err
	}
	if d.Algorithm() != digest.SHA256 {
		return sum, fmt.Errorf("digest %.80q is not sha256", d)
	}
	if _, err := hex.Decode(sum[:], []byte(d.Encoded())); err != nil {
		return sum, err
	}
	return sum, nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkEntry checks what the FUSE tree relies on besides ztoc's limits.
func checkEntry(lim ztoc.Limits, e *ztoc.FileMetadata) error {
	switch e.Type {
	case ztoc.TypeReg:
		if e.UncompressedSize < 0 {
			return fmt.Errorf("negative size %d", e.UncompressedSize)
		}
	case ztoc.TypeDir, ztoc.TypeSymlink, ztoc.TypeHardlink, ztoc.TypeChar, ztoc.TypeBlock, ztoc.TypeFifo:
		if e.UncompressedSize != 0 {
			return fmt.Errorf("a %s with %d bytes of data", e.Type, e.UncompressedSize)
		}
	default:
		return fmt.Errorf("unknown type %q", e.Type)
	}
	if e.Name == "" {
		return fmt.Errorf("empty name")
	}
	return lim.CheckEntry(e)
}
