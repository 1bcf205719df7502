package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/ztoc"
)

// ErrLayerBad is returned for reads of a layer whose content was found to
// differ from what the image says (span, blob or DiffID mismatch).
var ErrLayerBad = errors.New("layerstore: layer failed verification")

// layer is one served layer, shared by every image reference that has it.
type layer struct {
	s         *Store
	digest    digest.Digest
	size      int64
	mediaType string
	diffID    digest.Digest
	// ztocDigest identifies the index; source says where it came from
	// ("local", "shared", "registry", "built").
	ztocDigest digest.Digest
	source     string

	x      *ztoc.LayerIndex
	file   *os.File // the zTOC, read for checkpoint windows
	src    *spanSource
	reader *ztoc.Reader
	// header holds the compressed bytes before span 0 (the gzip header),
	// which belong to no span.
	header  []byte
	mounted time.Time
	log     *logrus.Entry

	mu sync.Mutex // guards the fields below
	// refs are the image references this layer was looked up through, most
	// recent last; their repositories are the registry sources of its blob.
	refs  []reference.Named
	blobs []blobSource
	uses  int
	pf    prefetchState

	bad atomic.Pointer[string]
	// hot marks spans read on demand (prefetch starts near them).
	hot []atomic.Bool
	// checked marks entries whose tar header was checked against the zTOC
	// (on the first read of each file).
	checked    []atomic.Bool
	reads      atomic.Int64
	readBytes  atomic.Int64
	readErrors atomic.Int64
	verified   atomic.Bool
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
func (l *layer) sources() []blobSource {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]blobSource, len(l.blobs))
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

// markBad takes the layer out of service: every later read fails with EIO,
// and the artifacts that described it are dropped so the next lookup starts
// afresh.
func (l *layer) markBad(reason string) {
	if !l.bad.CompareAndSwap(nil, &reason) {
		return
	}
	l.log.WithField("reason", reason).Error("Layer failed verification: reads fail from now on, its index and cached spans are dropped")
	l.s.dropLayer(l)
}

func (l *layer) badErr() error {
	if r := l.bad.Load(); r != nil {
		return fmt.Errorf("%w: %s: %s", ErrLayerBad, l.digest, *r)
	}
	return nil
}

// use and release count the host's references (ALS `use` and rmdir).
func (l *layer) use() {
	l.mu.Lock()
	l.uses++
	first := l.uses == 1
	l.mu.Unlock()
	if first {
		l.s.spans.Pin(l.digest)
		l.s.local.Pin(l.ztocDigest)
	}
}

func (l *layer) release() {
	l.mu.Lock()
	if l.uses == 0 {
		l.mu.Unlock()
		return
	}
	l.uses--
	last := l.uses == 0
	l.mu.Unlock()
	if last {
		l.s.spans.Unpin(l.digest)
		l.s.local.Unpin(l.ztocDigest)
	}
}

// Entries implements alsfs.LayerContent.
func (l *layer) Entries() []ztoc.FileMetadata { return l.x.Entries() }

// ReadFile implements alsfs.LayerContent.
func (l *layer) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if err := l.badErr(); err != nil {
		l.readErrors.Add(1)
		return 0, err
	}
	start := time.Now()
	m := &l.x.Entries()[i]
	if j, err := l.x.Resolve(i); err == nil {
		m = &l.x.Entries()[j]
		// Before the first byte of a file is served, the tar header in front
		// of its data must be this file's: a zTOC with moved offsets or wrong
		// sizes never serves wrong bytes.
		if !l.checked[j].Load() {
			if err := l.reader.CheckHeader(ctx, j, off, int64(len(p))); err != nil {
				l.readErrors.Add(1)
				l.s.metrics.readErrors.Inc()
				if errors.Is(err, ztoc.ErrHeaderMismatch) {
					l.markBad(err.Error())
				}
				return 0, err
			}
			l.checked[j].Store(true)
		}
	}
	if off < m.UncompressedSize && len(p) > 0 {
		end := min(off+int64(len(p)), m.UncompressedSize)
		for id := l.x.SpanOf(m.UncompressedOffset + off); id <= l.x.SpanOf(m.UncompressedOffset+end-1); id++ {
			l.hot[id].Store(true)
		}
	}
	n, err := l.reader.ReadFile(ctx, i, p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		l.readErrors.Add(1)
		l.s.metrics.readErrors.Inc()
		if errors.Is(err, ztoc.ErrSpanDigest) {
			l.markBad(err.Error())
		}
		l.log.WithError(err).WithField("file", m.Name).Warn("Read failed")
		return n, err
	}
	l.reads.Add(1)
	l.readBytes.Add(int64(n))
	l.s.metrics.observeRead(time.Since(start), n)
	return n, err
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
		spans, err := l.src.FetchSpans(ctx, first, last)
		if err != nil {
			return n, err
		}
		for i, data := range spans {
			s0, s1 := l.x.SpanCompressedRange(first + ztoc.SpanID(i))
			lo, hi := max(pos, s0), min(end, s1)
			if lo < hi {
				copy(p[lo-off:hi-off], data[lo-s0:hi-s0])
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
// depends on how the host identifies the layer.
type layerView struct {
	l    *layer
	info []byte
}

var _ alsfs.Layer = layerView{}

func (v layerView) Info() ([]byte, error) { return v.info, nil }

func (v layerView) Blob() (io.ReaderAt, int64) { return blobReader{v.l}, v.l.size }

func (v layerView) Content() (alsfs.LayerContent, error) {
	if err := v.l.badErr(); err != nil {
		return nil, err
	}
	return v.l, nil
}

// newLayerFromIndex assembles a layer around an opened zTOC.
func (s *Store) newLayer(desc remote.Layer, ztocDigest digest.Digest, source string, f *os.File, x *ztoc.LayerIndex, log *logrus.Entry) *layer {
	l := &layer{
		s:          s,
		digest:     desc.Digest,
		size:       desc.Size,
		mediaType:  desc.MediaType,
		diffID:     desc.DiffID,
		ztocDigest: ztocDigest,
		source:     source,
		x:          x,
		file:       f,
		mounted:    time.Now(),
		log:        log,
		hot:        make([]atomic.Bool, x.NumSpans()),
		checked:    make([]atomic.Bool, len(x.Entries())),
	}
	l.src = &spanSource{
		layer:      l,
		x:          x,
		cache:      s.spans,
		log:        log,
		demand:     &s.demand,
		lastDemand: &s.lastDemand,
		blobs:      l.sources,
		flights:    make(map[ztoc.SpanID]*spanFlight),
	}
	l.reader = ztoc.NewReader(x, l.src, s.memSpans)
	return l
}
