package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
// what it is (digest, sizes, DiffID), how it is indexed (zTOC), the span
// manager that owns its bytes, and who uses it. The Store owns layers; a
// layer knows nothing of the Store.
type layer struct {
	digest    digest.Digest
	size      int64
	mediaType string
	diffID    digest.Digest
	// ztocDigest identifies the index; source says where it came from
	// ("local", "shared", "registry", "built").
	ztocDigest digest.Digest
	source     string
	x          *ztoc.LayerIndex
	file       *os.File      // the zTOC, read for checkpoint windows
	windows    *windowSource // a native zTOC's windows, or nil
	spans      *spans.Manager
	// group is the layer's group in the span cache (layer and zTOC: spans
	// cached under another index's layout are never mixed in).
	group string
	// header holds the compressed bytes before span 0 (the gzip header),
	// which belong to no span.
	header  []byte
	mounted time.Time
	log     *logrus.Entry
	metrics *metrics
	// cache is the span cache (the layer's files there: see passthrough.go)
	// and backing writes backing files; nil: no passthrough.
	cache   *diskcache.Cache
	backing *backingWriter
	// onBad takes the layer out of service (set by the Store).
	onBad func(reason string)

	// checks records the entries whose tar headers were checked against
	// the zTOC (a file before its first byte is served, a hard link before
	// its metadata is).
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
	// serves (its key in Store.layers). Guarded by Store.mu.
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
func (l *layer) Entries() []ztoc.FileMetadata { return l.x.Entries() }

// ReadFile implements alsfs.LayerContent. i is a regular file (the FUSE
// tree resolved hard links).
func (l *layer) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if err := l.badErr(); err != nil {
		l.readErrors.Add(1)
		return 0, err
	}
	start := time.Now()
	m := &l.x.Entries()[i]
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

// checkEntry checks entry i against its own tar header run (once: the
// result is remembered), fetching the spans that hold it, and those of a
// read of n bytes at off in the file that follows when they are adjacent
// (all of a small file's), in one request. A mismatch takes the layer out
// of service.
func (l *layer) checkEntry(ctx context.Context, i int, off, n int64) error {
	if checked, err := l.checks.Result(i); checked {
		return err
	}
	m := &l.x.Entries()[i]
	hs, he := l.x.HeaderRange(i)
	a, c := l.x.SpanOf(hs), l.x.SpanOf(max(he-1, hs))
	var fileEnd ztoc.SpanID
	if m.Type == ztoc.TypeReg && m.UncompressedSize > 0 {
		fileEnd = l.x.SpanOf(m.UncompressedOffset + m.UncompressedSize - 1)
	}
	switch {
	case m.Type == ztoc.TypeReg && m.UncompressedSize > 0 && fileEnd-c <= 1:
		// A small file (in at most two spans past its header's) is read
		// whole, at once: programs read them whole.
		c = max(c, fileEnd)
	case m.Type == ztoc.TypeReg && off >= 0 && off < m.UncompressedSize && n > 0:
		b, end := l.x.SpanOf(m.UncompressedOffset+off), l.x.SpanOf(m.UncompressedOffset+min(off+n, m.UncompressedSize)-1)
		if b-c <= 1 {
			c = max(c, end)
		}
	}
	if err := l.spans.Fetch(ctx, int(a), int(c), spans.Demand); err != nil {
		return fmt.Errorf("read the tar header of %q: %w", m.Name, err)
	}
	run := make([]byte, he-hs)
	if _, err := l.spans.Peek(ctx, run, hs); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the tar header of %q: %w", m.Name, err)
	}
	err := l.x.CheckHeaderRun(i, run)
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
	es := l.x.Entries()
	for i := range es {
		e := &es[i]
		if e.Type != ztoc.TypeHardlink {
			continue
		}
		if j, ok := l.x.LookupBefore(e.Linkname, i); ok && sameInodeMetadata(e, &es[j]) {
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
// cache or the registry, every span verified.
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
	end := min(off+int64(len(p)), l.size)
	n := 0
	if off < int64(len(l.header)) {
		n += copy(p, l.header[off:min(end, int64(len(l.header)))])
	}
	if pos := off + int64(n); pos < end {
		first, last := l.x.CompressedSpanOf(pos), l.x.CompressedSpanOf(end-1)
		data, err := l.spans.Compressed(ctx, int(first), int(last), spans.Demand)
		if err != nil {
			return n, err
		}
		for i, d := range data {
			s0, s1 := l.x.SpanCompressedRange(first + ztoc.SpanID(i))
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

// ztocLayout adapts a zTOC to the span manager.
type ztocLayout struct {
	x  *ztoc.LayerIndex
	ws *windowSource // a native zTOC's windows, fetched with the spans; or nil
}

var _ spans.Preparer = ztocLayout{}

// Prepare implements spans.Preparer.
func (z ztocLayout) Prepare(ids []int) {
	if z.ws != nil {
		z.ws.Prepare(ids)
	}
}

var _ spans.Layout = ztocLayout{}

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

// spanGroup names a layer's spans in the span cache: the layer and the
// zTOC that cut them.
func spanGroup(layer, ztocDigest digest.Digest) string {
	return layer.Algorithm().String() + "-" + layer.Encoded() + "-" + ztocDigest.Encoded()[:16]
}

// layerParts are what a layer is made of.
type layerParts struct {
	desc       remote.Layer
	ztocDigest digest.Digest
	source     string
	file       *os.File
	x          *ztoc.LayerIndex
	windows    *windowSource
	header     []byte
}
