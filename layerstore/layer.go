package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/ztoc"
)

// ErrLayerBad is returned for reads of a layer whose content was found to
// differ from what the image says (span, blob or DiffID mismatch).
var ErrLayerBad = spans.ErrLayerBad

// layer is one served layer, shared by every image reference that has it:
// what it is (digest, sizes, DiffID), how it is indexed (a zTOC, or the TOC
// an eStargz or zstd:chunked layer carries), the span manager that owns its
// bytes, and who uses it. The Store owns layers; a layer knows nothing of
// the Store.
type layer struct {
	digest    digest.Digest
	size      int64
	mediaType string
	diffID    digest.Digest
	// ztocDigest identifies a zTOC index in the artifact store ("" for a
	// layer with its own TOC); tocDigest is that TOC's digest ("" for a
	// zTOC). source says where the index came from ("local", "shared",
	// "registry", "built", "toc").
	ztocDigest digest.Digest
	tocDigest  digest.Digest
	// indexID names the index that cut the layer into spans: the zTOC's
	// digest, or for a layer with its own TOC a digest of its format, TOC
	// digest and span target (spans of another index are other ranges).
	indexID digest.Digest
	source  string
	idx     layerIndex
	spans   *spans.Manager
	// group is the layer's group in the span cache (layer and index: spans
	// cached under another index's layout are never mixed in).
	group   string
	mounted time.Time
	log     *logrus.Entry
	metrics *metrics
	// cache is the span cache (the layer's files there: see passthrough.go)
	// and backing writes backing files; nil: no passthrough.
	cache   *diskcache.Cache
	backing *backingWriter
	// onBad takes the layer out of service (set by the Store); verifyNow
	// verifies the whole layer at Demand priority (set by the Store; the
	// file `blob` of a layer with its own TOC waits for it).
	onBad     func(reason string)
	verifyNow func(ctx context.Context) error
	// startProof starts the layer's verification run if need be, fetching
	// spans up to id at Demand priority (set by the Store); proof is what
	// it has proven (proof.go).
	startProof func(id int) *verifyRun
	proof      proofState

	// checks records the zTOC entries whose tar headers were checked (a
	// file before its first byte is served, a hard link before its
	// metadata is); nil for a layer with its own TOC, whose metadata is
	// the image's.
	checks     *ztoc.HeaderChecks
	reads      atomic.Int64
	readErrors atomic.Int64
	verified   atomic.Bool
	// dropped is set once the Store took a bad layer out of service.
	dropped atomic.Bool

	mu sync.Mutex // guards the fields below
	// refs are the image references this layer was looked up through, most
	// recent last; their repositories are the registry sources of its blob.
	refs  []reference.Named
	blobs []blobSource
	// uses counts the host's references (ALS `use` and rmdir), views the
	// layer directories the FUSE tree serves it through.
	uses, views int
	// idleSince is when uses and views last dropped to zero.
	idleSince time.Time
	closed    bool

	// scope is, while the layer's index is not trusted, the repository it
	// serves; for a layer with its own TOC, tocLayerScopePrefx and the
	// TOC digest (its key in Store.layers). Guarded by Store.mu.
	scope string
}

// blobSource reads byte ranges of one layer blob from a registry.
// remote.Blob implements it; tests substitute fakes for faults a registry
// cannot produce on demand.
type blobSource interface {
	spans.Source
}

// addSource records that the layer was found through ref, whose repository
// can serve its blob.
func (l *layer) addSource(ref reference.Named, b blobSource) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range l.refs {
		if r.String() == ref.String() {
			l.refs = append(l.refs[:i], l.refs[i+1:]...)
			l.blobs = append(l.blobs[:i], l.blobs[i+1:]...)
			break
		}
	}
	l.refs = append(l.refs, ref)
	l.blobs = append(l.blobs, b)
}

// sources returns the registry sources, most recently used reference first.
func (l *layer) sources() []spans.Source {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]spans.Source, len(l.blobs))
	for i, b := range l.blobs {
		out[len(out)-1-i] = b
	}
	return out
}

// latestRef returns the reference the layer was last looked up through.
func (l *layer) latestRef() reference.Named {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refs[len(l.refs)-1]
}

func (l *layer) badErr() error {
	if r := l.spans.Bad(); r != "" {
		return fmt.Errorf("%w: %s: %s", ErrLayerBad, l.digest, r)
	}
	return nil
}

// Entries implements alsfs.LayerContent.
func (l *layer) Entries() []ztoc.FileMetadata { return l.idx.Entries() }

// ReadFile implements alsfs.LayerContent. i is a regular file (the FUSE
// tree resolved hard links).
func (l *layer) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if err := l.badErr(); err != nil {
		l.readErrors.Add(1)
		return 0, err
	}
	start := time.Now()
	m := &l.idx.Entries()[i]
	if m.Type != ztoc.TypeReg {
		return 0, fmt.Errorf("%w: %q is a %s, not a regular file", ztoc.ErrNotExist, m.Name, m.Type)
	}
	// Before the first byte of a file is served, the tar header in front
	// of its data must be this file's in every field: a zTOC with moved
	// offsets, wrong sizes or made-up metadata never serves wrong bytes.
	if err := l.checkEntry(ctx, i, off, int64(len(p))); err != nil {
		l.readFailed(err, m.Name)
		return 0, err
	}
	if off >= m.UncompressedSize {
		return 0, io.EOF
	}
	want := min(int64(len(p)), m.UncompressedSize-off)
	// Inflated bytes of an unverified zTOC are the layer's only from a
	// proven checkpoint on (proof.go).
	if err := l.awaitProof(ctx, l.idx.Layout().SpanOf(m.UncompressedOffset+off+want-1)); err != nil {
		l.readFailed(err, m.Name)
		return 0, err
	}
	n, err := l.spans.ReadAt(ctx, p[:want], m.UncompressedOffset+off)
	if err == io.EOF && int64(n) == want {
		err = nil
	}
	if err != nil {
		l.readFailed(err, m.Name)
		return n, err
	}
	if want < int64(len(p)) {
		err = io.EOF
	}
	l.reads.Add(1)
	l.metrics.observeRead(time.Since(start), n)
	return n, err
}

// checkEntry checks zTOC entry i against its own tar header run (once: the
// result is remembered), fetching the spans that hold it, and those of a
// read of n bytes at off in the file that follows when they are adjacent
// (all of a small file's), in one request. A mismatch takes the layer out
// of service. A layer with its own TOC has nothing to check here: the TOC
// is the image's (checked against its digest), every chunk is checked on
// inflation, and the tar headers against the TOC by the whole-layer
// verification.
func (l *layer) checkEntry(ctx context.Context, i int, off, n int64) error {
	z, ok := l.idx.(*ztocIndex)
	if !ok {
		return nil
	}
	if checked, err := l.checks.Result(i); checked {
		return err
	}
	x := z.x
	m := &x.Entries()[i]
	hs, he := x.HeaderRange(i)
	a, c := x.SpanOf(hs), x.SpanOf(max(he-1, hs))
	var fileEnd ztoc.SpanID
	if m.Type == ztoc.TypeReg && m.UncompressedSize > 0 {
		fileEnd = x.SpanOf(m.UncompressedOffset + m.UncompressedSize - 1)
	}
	switch {
	case m.Type == ztoc.TypeReg && m.UncompressedSize > 0 && fileEnd-c <= 1:
		// A small file (in at most two spans past its header's) is read
		// whole, at once: programs read them whole.
		c = max(c, fileEnd)
	case m.Type == ztoc.TypeReg && off >= 0 && off < m.UncompressedSize && n > 0:
		b, end := x.SpanOf(m.UncompressedOffset+off), x.SpanOf(m.UncompressedOffset+min(off+n, m.UncompressedSize)-1)
		if b-c <= 1 {
			c = max(c, end)
		}
	}
	if err := l.spans.Fetch(ctx, int(a), int(c), spans.Demand); err != nil {
		return fmt.Errorf("read the tar header of %q: %w", m.Name, err)
	}
	// Header bytes inflated from a forged window could be forged too:
	// check only bytes of proven spans (proof.go).
	if err := l.awaitProof(ctx, int(x.SpanOf(max(he-1, hs)))); err != nil {
		return fmt.Errorf("read the tar header of %q: %w", m.Name, err)
	}
	run := make([]byte, he-hs)
	if _, err := l.spans.Peek(ctx, run, hs); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the tar header of %q: %w", m.Name, err)
	}
	err := x.CheckHeaderRun(i, run)
	l.checks.Record(i, err)
	if errors.Is(err, ztoc.ErrHeaderMismatch) {
		l.markBadFn(err.Error())
	}
	return err
}

// checkHardLinks checks the tar headers of the hard links whose metadata
// differs from that of the file they link to: the FUSE tree applies a hard
// link's mode, owner, mtime and xattrs to that file, as an extraction
// does, so such metadata must be the layer's before the tree is served (a
// zTOC could otherwise make a file setuid root). A hard link whose metadata
// equals its target's adds nothing the target's own entry does not claim
// (and that is checked before the file's first byte). Headers in the same
// spans are fetched once.
func (l *layer) checkHardLinks(ctx context.Context) error {
	z, ok := l.idx.(*ztocIndex)
	if !ok {
		return nil // a layer with its own TOC: see checkEntry
	}
	es := z.x.Entries()
	for i := range es {
		e := &es[i]
		if e.Type != ztoc.TypeHardlink {
			continue
		}
		if j, ok := z.x.LookupBefore(e.Linkname, i); ok && sameInodeMetadata(e, &es[j]) {
			continue
		}
		if err := l.checkEntry(ctx, i, 0, 0); err != nil {
			return err
		}
	}
	return nil
}

// sameInodeMetadata reports whether hard link h claims nothing for the
// shared inode beyond what its target t claims.
func sameInodeMetadata(h, t *ztoc.FileMetadata) bool {
	if h.Mode != t.Mode || h.UID != t.UID || h.GID != t.GID || !h.ModTime.Equal(t.ModTime) {
		return false
	}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") && t.PAXRecords[k] != v {
			return false
		}
	}
	return true
}

// readFailed counts and logs a failed read; interrupted reads are the
// reader's business, not the layer's.
func (l *layer) readFailed(err error, name string) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	l.readErrors.Add(1)
	l.metrics.readErrors.Inc()
	l.log.WithError(err).WithField("file", name).Warn("Read failed")
}

// markBadFn is set by the Store: it takes the layer out of service.
func (l *layer) markBadFn(reason string) {
	if l.onBad != nil {
		l.onBad(reason)
	}
}

// blobReader serves the file `blob`: the compressed layer, from the span
// cache or the registry, every span verified. A layer with its own TOC,
// whose digests cover uncompressed data only, serves it once the layer was
// verified as a whole (the host reads `blob` whole anyway: to push, save or
// commit); from then on every span's bytes are checked against their sha256.
type blobReader struct{ l *layer }

var _ alsfs.ContextReaderAt = blobReader{}

func (b blobReader) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(context.Background(), p, off)
}

func (b blobReader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	l := b.l
	if err := l.badErr(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= l.size {
		return 0, io.EOF
	}
	if _, ok := l.idx.(*tocIndex); ok && !l.verified.Load() {
		if l.verifyNow == nil {
			return 0, fmt.Errorf("%w: the layer is not verified yet", ErrLayerBad)
		}
		if err := l.verifyNow(ctx); err != nil {
			return 0, fmt.Errorf("verify the layer before serving its blob: %w", err)
		}
	}
	header := l.idx.Prefix()
	end := min(off+int64(len(p)), l.size)
	n := 0
	if off < int64(len(header)) {
		n += copy(p, header[off:min(end, int64(len(header)))])
	}
	if pos := off + int64(n); pos < end {
		lay := l.idx.Layout()
		first, last := l.idx.CompressedSpanOf(pos), l.idx.CompressedSpanOf(end-1)
		data, err := l.spans.Compressed(ctx, first, last, spans.Demand)
		if err != nil {
			return n, err
		}
		for i, d := range data {
			s0, s1 := lay.CompressedRange(first + i)
			lo, hi := max(pos, s0), min(end, s1)
			if lo < hi {
				copy(p[lo-off:hi-off], d[lo-s0:hi-s0])
			}
		}
		n = int(end - off)
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// layerView is a layer as one image reference sees it: the `info` file
// depends on how the host identifies the layer. Release gives back the
// reference the lookup took.
type layerView struct {
	l       *layer
	info    []byte
	content viewContent
	release func()
	once    sync.Once
}

var _ alsfs.Layer = (*layerView)(nil)

func (v *layerView) Info() ([]byte, error) { return v.info, nil }

func (v *layerView) Blob() (io.ReaderAt, int64) { return blobReader{v.l}, v.l.size }

func (v *layerView) Content() (alsfs.LayerContent, error) {
	if err := v.l.badErr(); err != nil {
		return nil, err
	}
	return v.content, nil
}

// Release implements alsfs.Layer.
func (v *layerView) Release() { v.once.Do(v.release) }

// spanGroup names a layer's spans in the span cache: the layer and the
// index that cut them.
func spanGroup(layer, indexDigest digest.Digest) string {
	return layer.Algorithm().String() + "-" + layer.Encoded() + "-" + indexDigest.Encoded()[:16]
}

// layerParts are what a layer is made of.
type layerParts struct {
	desc       remote.Layer
	ztocDigest digest.Digest
	tocDigest  digest.Digest
	source     string
	idx        layerIndex
	// indexID is layer.indexID.
	indexID digest.Digest
	// prove: the index comes from elsewhere and nobody vouches for it, so
	// its inflate checkpoints are proven before a span is served from one
	// (verification.prove_checkpoints; see proof.go).
	prove bool
}
