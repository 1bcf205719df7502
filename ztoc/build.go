package ztoc

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"path"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc/internal/flate"
)

// BuildOptions configures Build. The zero value builds with SOCI's defaults.
type BuildOptions struct {
	// SpanSize is the number of uncompressed bytes after which a new
	// checkpoint is added at the next block boundary. Default DefaultSpanSize.
	SpanSize int64
	// BuildToolIdentifier is recorded in the zTOC. Default BuildToolIdentifier.
	BuildToolIdentifier string
	// OnSpan, when set, receives the exact compressed bytes of every span as
	// soon as the span is complete (so a cache can be filled in the same
	// pass). The slice is only valid during the call. An error aborts Build.
	OnSpan func(id SpanID, compressed []byte) error
	// OnProgress, when set, is called with the number of compressed bytes
	// consumed so far, about every MiB.
	OnProgress func(compressedBytes int64)
	// Limits bounds the layer (entries, names, PAX records, span length,
	// inflate ratio, zTOC size); the zero value means DefaultLimits. Build
	// fails with ErrLimit as soon as the layer exceeds one, so its memory
	// stays bounded whatever the stream holds: about the zTOC it returns
	// (at most Limits.MaxZtocSize plus the file table, at most
	// Limits.MaxMetadataBytes) plus one span (Limits.MaxSpanSize) when
	// OnSpan is set.
	Limits Limits
}

// BuildResult is what one pass over a layer yields.
type BuildResult struct {
	// Ztoc is the index, with the checkpoint blob in CompressionInfo.
	Ztoc *Ztoc
	// Digest and Size describe the layer blob as read (compressed).
	Digest digest.Digest
	Size   int64
	// DiffID is the sha256 of the uncompressed tar stream.
	DiffID digest.Digest
	// UncompressedSize is the length of the uncompressed tar stream.
	UncompressedSize int64
}

// Magic numbers of layer compressions.
var (
	gzipMagic  = []byte{0x1f, 0x8b}
	zstdMagic  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	bzip2Magic = []byte("BZh")
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
)

// Build reads a layer blob once, from r, and returns its zTOC together with
// the layer's digest, size and DiffID. Gzip layers (single or multi-member)
// get checkpoints by SOCI's rule; uncompressed tar layers get fixed spans;
// other compressions fail with ErrUnsupportedCompression. A layer beyond
// opts.Limits (a deflate block too long to place a checkpoint in, too many
// entries, ...) fails with ErrLimit; the returned zTOC always opens with
// NewLayerIndex under the same limits.
func Build(ctx context.Context, r io.Reader, opts BuildOptions) (*BuildResult, error) {
	if opts.SpanSize <= 0 {
		opts.SpanSize = DefaultSpanSize
	}
	opts.Limits = opts.Limits.withDefaults()
	if opts.BuildToolIdentifier == "" {
		opts.BuildToolIdentifier = BuildToolIdentifier
	}
	br := bufio.NewReaderSize(r, 1<<20)
	head, err := br.Peek(512)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("ztoc: read layer header: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return buildGzip(ctx, br, opts)
	case bytes.HasPrefix(head, zstdMagic):
		return nil, fmt.Errorf("%w: zstd", ErrUnsupportedCompression)
	case bytes.HasPrefix(head, bzip2Magic):
		return nil, fmt.Errorf("%w: bzip2", ErrUnsupportedCompression)
	case bytes.HasPrefix(head, xzMagic):
		return nil, fmt.Errorf("%w: xz", ErrUnsupportedCompression)
	case isTarHeader(head):
		return buildTar(ctx, br, opts)
	case len(head) == 0:
		return nil, fmt.Errorf("%w: empty layer", ErrTruncated)
	default:
		return nil, fmt.Errorf("%w: unknown format (magic % x)", ErrUnsupportedCompression, head[:min(len(head), 4)])
	}
}

// isTarHeader reports whether b starts with a tar header block with a valid
// checksum (or an all-zero block, the end of an empty archive).
func isTarHeader(b []byte) bool {
	if len(b) < 512 {
		return false
	}
	b = b[:512]
	var sum, zero int64
	for i, c := range b {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
		if c != 0 {
			zero++
		}
	}
	if zero == 8 { // only the checksum field's spaces: an all-zero block
		return true
	}
	field := strings.TrimRight(strings.TrimLeft(string(b[148:156]), " \x00"), " \x00")
	var want int64
	if _, err := fmt.Sscanf(field, "%o", &want); err != nil {
		return false
	}
	return want == sum
}

// builder holds the state of one pass over a gzip layer.
type builder struct {
	opts    BuildOptions
	points  []Checkpoint
	windows [][]byte
	last    int64 // Out of the last checkpoint

	spans *spanHasher
}

func buildGzip(ctx context.Context, r io.Reader, opts BuildOptions) (*BuildResult, error) {
	lim := &opts.Limits
	blob := newAsyncHash()
	defer blob.stop()
	b := &builder{opts: opts, spans: newSpanHasher(opts.OnSpan, lim)}
	defer b.spans.stop()
	entries := &entryCollector{lim: lim}

	dec := flate.NewGzip(r)
	var consumed int64
	nextProgress := int64(1 << 20)
	dec.OnConsumed(func(p []byte) {
		blob.write(p)
		b.spans.write(p)
		consumed += int64(len(p))
		if opts.OnProgress != nil && consumed >= nextProgress {
			opts.OnProgress(consumed)
			nextProgress = consumed + 1<<20
		}
	})
	dec.OnBoundary(func(bd flate.Boundary, window []byte) error {
		if bd.Final {
			return nil
		}
		// SOCI's (zran's) rule: a checkpoint at the start of the deflate
		// data (out == 0), then whenever the output since the last one
		// exceeds the span size.
		// (zran also adds further checkpoints at out == 0 when the first
		// blocks are empty; those would be empty spans, which the checkpoint
		// format does not allow, so they are skipped.)
		if len(b.points) > 0 && bd.Out-b.last <= opts.SpanSize {
			return nil
		}
		// Every checkpoint adds a 32 KiB window to the zTOC (and to memory
		// until Build returns).
		if len(b.points) >= lim.MaxSpans {
			return overLimit(false, "ztoc: more than %d spans", lim.MaxSpans)
		}
		if size := int64(len(b.points)+1)*checkpointRecordSize + entries.encodedSize; size > lim.MaxZtocSize {
			return overLimit(false, "ztoc: the zTOC would exceed %d bytes at %d spans and %d entries", lim.MaxZtocSize, len(b.points)+1, len(entries.list))
		}
		if len(b.points) > 0 {
			if err := b.spans.checkRatio(bd.In, bd.Out-b.last); err != nil {
				return err
			}
		}
		w := make([]byte, WindowSize)
		copy(w[WindowSize-len(window):], window)
		b.points = append(b.points, Checkpoint{In: bd.In, Out: bd.Out, Bits: bd.Bits})
		b.windows = append(b.windows, w)
		b.last = bd.Out
		return b.spans.cut(bd.In, bd.Bits)
	})

	uncompressed := newAsyncHash()
	defer uncompressed.stop()
	// No span may grow past MaxSpanSize: a checkpoint must come before.
	// Checked as the output arrives, so a deflate block of gigabytes (a
	// "bomb") fails after MaxSpanSize bytes, not at its end.
	spanLimit := func(pos int64, p []byte) error {
		if end := pos + int64(len(p)); end-b.last > lim.MaxSpanSize {
			return overLimit(false, "ztoc: no deflate block boundary between uncompressed offsets %d and %d: a span would exceed %d bytes",
				b.last, end, lim.MaxSpanSize)
		}
		return b.spans.err
	}
	walker := &tarWalker{r: dec, hash: uncompressed, onData: spanLimit}
	if _, err := walker.walk(ctx, entries.add); err != nil {
		return nil, mapFlateErr(err)
	}
	if len(b.points) == 0 {
		return nil, fmt.Errorf("%w: no deflate block boundary found", ErrCorruptStream)
	}
	if err := b.spans.finish(walker.pos - b.last); err != nil {
		return nil, err
	}
	if walker.pos/lim.MaxRatio > consumed {
		return nil, overLimit(false, "ztoc: %d bytes inflate to %d, beyond the ratio limit of %d", consumed, walker.pos, lim.MaxRatio)
	}
	var cps bytes.Buffer
	if err := EncodeCheckpoints(&cps, opts.SpanSize, b.points, b.windows); err != nil {
		return nil, fmt.Errorf("ztoc: encode checkpoints: %w", err)
	}
	b.windows = nil // in cps now
	size := consumed
	z := &Ztoc{
		Version:                 Version,
		BuildToolIdentifier:     opts.BuildToolIdentifier,
		CompressedArchiveSize:   size,
		UncompressedArchiveSize: walker.pos,
		TOC:                     TOC{FileMetadata: entries.list},
		CompressionInfo: CompressionInfo{
			Algorithm:   Gzip,
			MaxSpanID:   SpanID(len(b.points) - 1),
			SpanDigests: b.spans.digests,
			Checkpoints: cps.Bytes(),
		},
	}
	if _, err := checkZtoc(z, bytes.NewReader(z.CompressionInfo.Checkpoints), int64(cps.Len()), lim, nil); err != nil {
		return nil, fmt.Errorf("ztoc: built an index that fails its own checks: %w", err)
	}
	return &BuildResult{
		Ztoc:             z,
		Digest:           blob.digest(),
		Size:             size,
		DiffID:           uncompressed.digest(),
		UncompressedSize: walker.pos,
	}, nil
}

func buildTar(ctx context.Context, r io.Reader, opts BuildOptions) (*BuildResult, error) {
	lim := &opts.Limits
	if opts.SpanSize > lim.MaxSpanSize {
		return nil, overLimit(false, "ztoc: span size %d exceeds the %d-byte limit", opts.SpanSize, lim.MaxSpanSize)
	}
	blob := newAsyncHash()
	defer blob.stop()
	spans := newSpanHasher(opts.OnSpan, lim)
	defer spans.stop()
	entries := &entryCollector{lim: lim}
	if err := spans.cut(0, 0); err != nil {
		return nil, err
	}
	lastCut := int64(0)
	walker := &tarWalker{r: r, hash: blob, onData: func(pos int64, p []byte) error {
		// Fixed spans: a new span starts at every multiple of SpanSize.
		for len(p) > 0 {
			if pos%opts.SpanSize == 0 && pos != lastCut {
				if len(spans.digests)+1 >= lim.MaxSpans {
					return overLimit(false, "ztoc: more than %d spans", lim.MaxSpans)
				}
				if err := spans.cut(pos, 0); err != nil {
					return err
				}
				lastCut = pos
			}
			n := min(int64(len(p)), opts.SpanSize-pos%opts.SpanSize)
			spans.write(p[:n])
			pos += n
			p = p[n:]
		}
		return nil
	}}
	if _, err := walker.walk(ctx, entries.add); err != nil {
		return nil, err
	}
	if err := spans.finish(0); err != nil {
		return nil, err
	}
	info, err := EncodeTarZinfo(opts.SpanSize, walker.pos)
	if err != nil {
		return nil, err
	}
	d := blob.digest()
	z := &Ztoc{
		Version:                 Version,
		BuildToolIdentifier:     opts.BuildToolIdentifier,
		CompressedArchiveSize:   walker.pos,
		UncompressedArchiveSize: walker.pos,
		TOC:                     TOC{FileMetadata: entries.list},
		CompressionInfo: CompressionInfo{
			Algorithm:   Uncompressed,
			MaxSpanID:   SpanID(len(spans.digests) - 1),
			SpanDigests: spans.digests,
			Checkpoints: info,
		},
	}
	if _, err := checkZtoc(z, bytes.NewReader(info), int64(len(info)), lim, nil); err != nil {
		return nil, fmt.Errorf("ztoc: built an index that fails its own checks: %w", err)
	}
	return &BuildResult{Ztoc: z, Digest: d, Size: walker.pos, DiffID: d, UncompressedSize: walker.pos}, nil
}

// mapFlateErr maps the inflater's sentinels onto this package's.
func mapFlateErr(err error) error {
	switch {
	case errors.Is(err, flate.ErrChecksum):
		return fmt.Errorf("%w: %w", ErrChecksum, err)
	case errors.Is(err, flate.ErrTruncated), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	case errors.Is(err, flate.ErrCorrupt):
		return fmt.Errorf("%w: %w", ErrCorruptStream, err)
	}
	return err
}

// tarWalker reads a tar stream once, recording every entry with the offset
// of its data, and feeds every byte (padding included) to hash.
type tarWalker struct {
	r      io.Reader
	hash   *asyncHash
	onData func(pos int64, p []byte) error // optional, sees every byte
	pos    int64
	err    error
	// entries counts the headers walk passed to its callback.
	entries int
}

func (w *tarWalker) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.hash.write(p[:n])
		if w.onData != nil {
			if herr := w.onData(w.pos, p[:n]); herr != nil {
				w.err = herr
				return 0, herr
			}
		}
		w.pos += int64(n)
	}
	return n, err
}

// walk reads the tar stream to its end, calling onEntry for every header
// with the offset of the entry's data. It returns the offset just after the
// end-of-archive marker (where SOCI's uncompressed archive size stops);
// w.pos is then the end of the whole stream.
func (w *tarWalker) walk(ctx context.Context, onEntry func(i int, h *tar.Header, dataOffset int64) error) (tarEnd int64, err error) {
	tr := tar.NewReader(w)
	for i := 0; ; i++ {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if w.err != nil {
				return 0, w.err
			}
			return 0, fmt.Errorf("ztoc: read tar entry %d: %w", i, wrapTarErr(err))
		}
		if err := onEntry(i, hdr, w.pos); err != nil {
			return 0, err
		}
		w.entries++
	}
	tarEnd = w.pos
	// Read the rest (end-of-archive blocks and record padding) so the DiffID
	// and sizes cover the whole stream, and the gzip trailer gets checked.
	if _, err := io.Copy(io.Discard, w); err != nil {
		if w.err != nil {
			return 0, w.err
		}
		return 0, fmt.Errorf("ztoc: read end of layer: %w", err)
	}
	return tarEnd, nil
}

// entryCollector turns tar headers into the file table, within limits.
type entryCollector struct {
	lim         *Limits
	list        []FileMetadata
	metadata    int64 // estimated memory of list
	encodedSize int64 // estimated size of list in a zTOC
}

func (c *entryCollector) add(i int, h *tar.Header, dataOffset int64) error {
	if len(c.list) >= c.lim.MaxEntries {
		return overLimit(false, "ztoc: more than %d entries", c.lim.MaxEntries)
	}
	m, err := metadataFromHeader(h, dataOffset)
	if err != nil {
		return fmt.Errorf("ztoc: tar entry %d: %w", i, err)
	}
	if err := c.lim.checkEntry(&m); err != nil {
		return overLimit(false, "ztoc: tar entry %d (%.100q): %v", i, m.Name, err)
	}
	cost := entryCost(&m)
	if c.metadata += cost; c.metadata > c.lim.MaxMetadataBytes {
		return overLimit(false, "ztoc: the file table exceeds %d bytes of memory at entry %d", c.lim.MaxMetadataBytes, i)
	}
	c.encodedSize += cost // about what the entry takes in the flatbuffer too
	if c.encodedSize > c.lim.MaxZtocSize {
		return overLimit(false, "ztoc: the zTOC would exceed %d bytes at entry %d", c.lim.MaxZtocSize, i)
	}
	c.list = append(c.list, m)
	return nil
}

// wrapTarErr classifies archive/tar's errors.
func wrapTarErr(err error) error {
	switch {
	case errors.Is(err, tar.ErrHeader), errors.Is(err, tar.ErrFieldTooLong), errors.Is(err, tar.ErrInsecurePath):
		return fmt.Errorf("%w: %w", ErrInvalidEntry, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", ErrTruncated, mapFlateErr(err))
	}
	return mapFlateErr(err)
}

func metadataFromHeader(h *tar.Header, dataOffset int64) (FileMetadata, error) {
	var typ string
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		typ = TypeReg
	case tar.TypeDir:
		typ = TypeDir
	case tar.TypeSymlink:
		typ = TypeSymlink
	case tar.TypeLink:
		typ = TypeHardlink
	case tar.TypeChar:
		typ = TypeChar
	case tar.TypeBlock:
		typ = TypeBlock
	case tar.TypeFifo:
		typ = TypeFifo
	case tar.TypeGNUSparse:
		return FileMetadata{}, fmt.Errorf("%w: %q is a sparse file", ErrInvalidEntry, h.Name)
	default:
		return FileMetadata{}, fmt.Errorf("%w: %q has unsupported type %q", ErrInvalidEntry, h.Name, h.Typeflag)
	}
	if err := CheckName(h.Name); err != nil {
		return FileMetadata{}, err
	}
	if typ == TypeHardlink {
		if err := CheckName(h.Linkname); err != nil {
			return FileMetadata{}, fmt.Errorf("hard link target: %w", err)
		}
	}
	if h.Size < 0 || (typ != TypeReg && h.Size != 0 && typ != TypeHardlink) {
		return FileMetadata{}, fmt.Errorf("%w: %q has size %d", ErrInvalidEntry, h.Name, h.Size)
	}
	if h.Uid < 0 || h.Uid > math.MaxUint32 || h.Gid < 0 || h.Gid > math.MaxUint32 {
		return FileMetadata{}, fmt.Errorf("%w: %q has uid/gid %d/%d", ErrInvalidEntry, h.Name, h.Uid, h.Gid)
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return FileMetadata{}, fmt.Errorf("%w: %q is a sparse file", ErrInvalidEntry, h.Name)
		}
	}
	var pax map[string]string
	if len(h.PAXRecords) > 0 {
		pax = h.PAXRecords
	}
	return FileMetadata{
		Name:               h.Name,
		Type:               typ,
		UncompressedOffset: dataOffset,
		UncompressedSize:   h.Size,
		Linkname:           h.Linkname,
		Mode:               h.Mode,
		UID:                uint32(h.Uid),
		GID:                uint32(h.Gid),
		Uname:              h.Uname,
		Gname:              h.Gname,
		ModTime:            h.ModTime,
		Devmajor:           h.Devmajor,
		Devminor:           h.Devminor,
		PAXRecords:         pax,
	}, nil
}

// CheckName reports whether a tar entry name is acceptable: not empty, no NUL
// byte and no ".." element (leading "/" and "./" are fine: extraction strips
// them). Layers with other names are refused rather than served differently
// from how containers/storage would extract them.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidEntry)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: name %q contains NUL", ErrInvalidEntry, name)
	case slices.Contains(strings.Split(name, "/"), ".."):
		return fmt.Errorf("%w: name %q contains \"..\"", ErrInvalidEntry, name)
	}
	return nil
}

// CleanName returns the canonical form of a tar entry name: no leading "/"
// or "./", no trailing "/", "" for the root.
func CleanName(name string) string {
	c := path.Clean("/" + name)
	return strings.TrimPrefix(c, "/")
}

// asyncHash computes a sha256 in its own goroutine, so hashing overlaps
// inflating on a second core. write copies p.
type asyncHash struct {
	ch   chan []byte
	done chan struct{}
	h    hash.Hash
	pool chan []byte
	cur  []byte
	sum  digest.Digest
}

const asyncChunk = 256 << 10

func newAsyncHash() *asyncHash {
	a := &asyncHash{ch: make(chan []byte, 16), done: make(chan struct{}), h: sha256.New(), pool: make(chan []byte, 20)}
	go func() {
		defer close(a.done)
		for b := range a.ch {
			a.h.Write(b)
			select {
			case a.pool <- b[:0]:
			default:
			}
		}
	}()
	return a
}

func (a *asyncHash) write(p []byte) {
	for len(p) > 0 {
		if a.cur == nil {
			select {
			case a.cur = <-a.pool:
			default:
				a.cur = make([]byte, 0, asyncChunk)
			}
		}
		n := copy(a.cur[len(a.cur):cap(a.cur)], p)
		a.cur = a.cur[:len(a.cur)+n]
		p = p[n:]
		if len(a.cur) == cap(a.cur) {
			a.ch <- a.cur
			a.cur = nil
		}
	}
}

// digest flushes and returns the final digest; the hash stops.
func (a *asyncHash) digest() digest.Digest {
	if a.sum != "" {
		return a.sum
	}
	if len(a.cur) > 0 {
		a.ch <- a.cur
		a.cur = nil
	}
	close(a.ch)
	<-a.done
	a.sum = digest.NewDigest(digest.SHA256, a.h)
	return a.sum
}

// stop ends the goroutine if digest was not called (error paths).
func (a *asyncHash) stop() {
	if a.sum == "" {
		a.cur = nil
		a.digest()
	}
}

// spanHasher cuts the compressed stream into spans and hashes each one. The
// first span starts at the first cut; bytes before it (the gzip header) belong
// to no span. When the next span starts one byte before the cut (a checkpoint
// with pending bits), that byte is hashed into both spans.
type spanHasher struct {
	lim     *Limits
	started bool
	pos     int64 // stream offset of the next byte written
	start   int64 // stream offset of the current span's first byte
	h       hash.Hash
	lastB   byte
	buf     []byte // span bytes, kept only for onSpan
	onSpan  func(SpanID, []byte) error
	digests []digest.Digest
	// check, when set, receives every span's digest as it completes (Verify).
	check func(SpanID, digest.Digest) error
	// err is set once the current span exceeds lim.MaxSpanSize compressed
	// bytes (write cannot return it; the caller polls it).
	err error
}

func newSpanHasher(onSpan func(SpanID, []byte) error, lim *Limits) *spanHasher {
	return &spanHasher{h: sha256.New(), onSpan: onSpan, lim: lim}
}

func (s *spanHasher) write(p []byte) {
	if len(p) == 0 || s.err != nil {
		return
	}
	if s.started {
		if s.pos+int64(len(p))-s.start > s.lim.MaxSpanSize {
			s.err = overLimit(false, "ztoc: span %d exceeds %d compressed bytes", len(s.digests), s.lim.MaxSpanSize)
			s.buf = nil
			return
		}
		s.h.Write(p)
		if s.onSpan != nil {
			s.buf = append(s.buf, p...)
		}
	}
	s.pos += int64(len(p))
	s.lastB = p[len(p)-1]
}

// checkRatio checks the span that a cut at in would end, of u uncompressed
// bytes, against the inflate ratio limit.
func (s *spanHasher) checkRatio(in, u int64) error {
	if c := in - s.start; c > 0 && u/c > s.lim.MaxRatio {
		return overLimit(false, "ztoc: span %d inflates %d bytes to %d, beyond the ratio limit of %d", len(s.digests), c, u, s.lim.MaxRatio)
	}
	return nil
}

// cut ends the current span at offset in and starts the next one at in, or
// at in-1 when bits > 0. All bytes before in must have been written.
func (s *spanHasher) cut(in int64, bits uint8) error {
	if s.err != nil {
		return s.err
	}
	if in != s.pos {
		return fmt.Errorf("ztoc: internal error: span cut at %d, stream at %d", in, s.pos)
	}
	if s.started {
		if err := s.emit(); err != nil {
			return err
		}
	}
	s.started = true
	s.start = in
	s.h.Reset()
	s.buf = s.buf[:0]
	if bits > 0 {
		s.start--
		s.h.Write([]byte{s.lastB})
		if s.onSpan != nil {
			s.buf = append(s.buf, s.lastB)
		}
	}
	return nil
}

func (s *spanHasher) emit() error {
	id := SpanID(len(s.digests))
	d := digest.NewDigest(digest.SHA256, s.h)
	s.digests = append(s.digests, d)
	if s.check != nil {
		if err := s.check(id, d); err != nil {
			return err
		}
	}
	if s.onSpan != nil {
		if err := s.onSpan(id, s.buf); err != nil {
			return fmt.Errorf("ztoc: span %d: %w", id, err)
		}
	}
	return nil
}

// finish ends the last span, of u uncompressed bytes, at the end of the
// stream.
func (s *spanHasher) finish(u int64) error {
	if s.err != nil {
		return s.err
	}
	if !s.started {
		return fmt.Errorf("%w: no span", ErrCorruptStream)
	}
	if err := s.checkRatio(s.pos, u); err != nil {
		return err
	}
	s.started = false
	return s.emit()
}

func (s *spanHasher) stop() { s.buf = nil }
