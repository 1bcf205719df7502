package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/ztoc"
)

// Layer formats, as status and logs name them.
const (
	formatGzip         = "gzip"         // gzip tar, served through a zTOC
	formatTar          = "tar"          // uncompressed tar, through a zTOC
	formatEstargz      = "estargz"      // eStargz, through its own TOC
	formatZstdChunked  = "zstd:chunked" // zstd:chunked, through its own TOC
	compressionNone    = 0              // containers/storage pkg/archive values
	compressionGzip    = 2
	compressionZstd    = 4
	unknownTarSize     = -1
	indexSourceOwnTOC  = "toc" // layerIndex source of eStargz and zstd:chunked
	tocLayerScopePrefx = "@toc="
)

// layerIndex is what a served layer is indexed by: its file table (a
// regular file's data is [UncompressedOffset, +UncompressedSize) of the
// stream the layout's spans inflate to), the span geometry the span manager
// works with, and the whole-layer check. A zTOC (ztocIndex) indexes gzip and
// tar layers; eStargz and zstd:chunked layers carry their own TOC
// (tocIndex).
type layerIndex interface {
	// Format names the layer's format (formatGzip, ...).
	Format() string
	// Entries is the file table, in tar order.
	Entries() []ztoc.FileMetadata
	// Layout is the span geometry, verification and inflation.
	Layout() spans.Layout
	// CompressedSpanOf returns the span holding compressed offset off.
	CompressedSpanOf(off int64) int
	// Prefix is the blob's bytes before span 0, which belong to no span
	// (read when the layer was opened).
	Prefix() []byte
	// TarSize is the length of the layer's tar stream, unknownTarSize when
	// the index does not say.
	TarSize() int64
	// Compression is how the blob is compressed (compressionGzip, ...).
	Compression() int
	// VerifyLayer checks the whole layer, its compressed blob read from r
	// in order, against the image (digest, DiffID) and the index; it
	// returns what it found, for the log. An error wrapping
	// errVerifyMismatch means the layer is not what the image says; others
	// are the reader's. onCheckpoint, when not nil, is called with n as
	// soon as the index's checkpoints 0..n-1 are proven to be the stream's
	// (a zTOC's; an index without checkpoints never calls it).
	VerifyLayer(ctx context.Context, r io.Reader, digest, diffID digest.Digest, onCheckpoint func(n int)) (string, error)
	// Close releases what the index holds open.
	Close() error
}

// errVerifyMismatch is wrapped by VerifyLayer errors that condemn the layer.
var errVerifyMismatch = errors.New("the layer does not match its image")

// hasWindows reports whether the layer's spans inflate from checkpoint
// windows (a gzip zTOC), which an untrusted index must have proven before
// its bytes are served (proof.go).
func (z *ztocIndex) hasWindows() bool { return z.Format() == formatGzip }

// ztocIndex is a zTOC opened from the local artifact store.
type ztocIndex struct {
	x       *ztoc.LayerIndex
	file    *os.File      // the zTOC, read for checkpoint windows
	windows *windowSource // a native zTOC's windows, or nil
	header  []byte        // the gzip header before span 0
}

var _ layerIndex = (*ztocIndex)(nil)

func (z *ztocIndex) Format() string {
	if z.x.Ztoc().CompressionInfo.Algorithm == ztoc.Uncompressed {
		return formatTar
	}
	return formatGzip
}

func (z *ztocIndex) Entries() []ztoc.FileMetadata { return z.x.Entries() }
func (z *ztocIndex) Layout() spans.Layout         { return ztocLayout{x: z.x, ws: z.windows} }
func (z *ztocIndex) Prefix() []byte               { return z.header }
func (z *ztocIndex) TarSize() int64               { return z.x.Ztoc().UncompressedArchiveSize }

func (z *ztocIndex) CompressedSpanOf(off int64) int { return int(z.x.CompressedSpanOf(off)) }

func (z *ztocIndex) Close() error {
	err := z.file.Close()
	if z.windows != nil && z.windows.local != nil {
		err = errors.Join(err, z.windows.local.Close())
	}
	return err
}

func (z *ztocIndex) Compression() int {
	if z.Format() == formatTar {
		return compressionNone
	}
	return compressionGzip
}

// VerifyLayer runs ztoc's Verify: the blob's digest and size, the DiffID,
// every checkpoint (in, out, bits, window) against the real deflate stream
// and every entry against its own tar header.
func (z *ztocIndex) VerifyLayer(ctx context.Context, r io.Reader, d, diffID digest.Digest, onCheckpoint func(int)) (string, error) {
	opts := ztoc.VerifyOptions{Digest: d, DiffID: diffID, OnCheckpoint: onCheckpoint}
	if z.windows != nil {
		opts.OnWindow = z.windows.keep
	}
	res, err := z.x.Verify(ctx, r, opts)
	if errors.Is(err, ztoc.ErrVerify) {
		err = fmt.Errorf("%w: %w", errVerifyMismatch, err)
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("digest, DiffID %s, %d checkpoints and %d tar headers match", res.DiffID, res.Checkpoints, res.Entries), nil
}

// ztocLayout adapts a zTOC to the span manager.
type ztocLayout struct {
	x  *ztoc.LayerIndex
	ws *windowSource // a native zTOC's windows, fetched with the spans; or nil
}

var (
	_ spans.Layout   = ztocLayout{}
	_ spans.Preparer = ztocLayout{}
)

// Prepare implements spans.Preparer.
func (z ztocLayout) Prepare(ids []int) {
	if z.ws != nil {
		z.ws.Prepare(ids)
	}
}

func (z ztocLayout) NumSpans() int { return z.x.NumSpans() }

func (z ztocLayout) CompressedRange(id int) (int64, int64) {
	return z.x.SpanCompressedRange(ztoc.SpanID(id))
}

func (z ztocLayout) UncompressedRange(id int) (int64, int64) {
	return z.x.SpanUncompressedRange(ztoc.SpanID(id))
}

func (z ztocLayout) SpanOf(off int64) int { return int(z.x.SpanOf(off)) }

func (z ztocLayout) Verify(id int, c []byte) error { return z.x.VerifySpan(ztoc.SpanID(id), c) }

func (z ztocLayout) Inflate(id int, c, dst []byte) ([]byte, error) {
	return z.x.InflateVerifiedSpan(ztoc.SpanID(id), c, dst)
}

// tocIndex is the TOC an eStargz or zstd:chunked layer carries, checked
// against the TOC digest of the layer's annotation.
type tocIndex struct {
	x           *tocindex.Index
	tocDigest   digest.Digest
	tarSize     int64
	compression int
	// tail are the blob's bytes from the TOC on, read when the layer was
	// opened: the last span, seeded into the span cache.
	tail []byte
}

var _ layerIndex = (*tocIndex)(nil)

func (t *tocIndex) Format() string                 { return t.x.Format() }
func (t *tocIndex) Entries() []ztoc.FileMetadata   { return t.x.Entries() }
func (t *tocIndex) Layout() spans.Layout           { return tocLayout{t.x} }
func (t *tocIndex) CompressedSpanOf(off int64) int { return t.x.CompressedSpanOf(off) }
func (t *tocIndex) Prefix() []byte                 { return nil }
func (t *tocIndex) TarSize() int64                 { return t.tarSize }
func (t *tocIndex) Compression() int               { return t.compression }
func (t *tocIndex) Close() error                   { return nil }

// VerifyLayer checks digest, size and DiffID, every tar header against the
// TOC and every chunk's place in the tar stream; then every span's
// compressed bytes are checked against their sha256 on later fetches.
func (t *tocIndex) VerifyLayer(ctx context.Context, r io.Reader, d, diffID digest.Digest, _ func(int)) (string, error) {
	res, err := t.x.VerifyLayer(ctx, r, tocindex.Want{Digest: d, DiffID: diffID, TarSize: t.tarSize})
	if errors.Is(err, tocindex.ErrVerify) {
		err = fmt.Errorf("%w: %w", errVerifyMismatch, err)
	}
	if err != nil {
		return "", err
	}
	if err := t.x.TrustSpans(res.SpanSums); err != nil {
		return "", err
	}
	return fmt.Sprintf("digest, DiffID %s, %d tar headers and every chunk's place match the TOC", res.DiffID, len(t.x.Entries())), nil
}

// tocLayout adapts a TOC index to the span manager: an Inflate that finds a
// chunk not matching its digest reports the span corrupt.
type tocLayout struct{ *tocindex.Index }

var _ spans.Layout = tocLayout{}

func (t tocLayout) Inflate(id int, c, dst []byte) ([]byte, error) {
	out, err := t.Index.Inflate(id, c, dst)
	if errors.Is(err, tocindex.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", spans.ErrSpanCorrupt, err)
	}
	return out, err
}
