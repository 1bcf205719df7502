package layerstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/estargz"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/zstdchunked"
	"github.com/lazypull/lazypull/ztoc"
)

// tocSpanTarget is the compressed size the regions of eStargz and
// zstd:chunked layers (a member or frame per chunk of a file, a frame per
// tar header run) are grouped to into spans: a read fetches at least this
// much around what it needs, and the span cache holds a few files per
// entry, not one per chunk.
const tocSpanTarget = 512 << 10

// tocScope is the key, beside the blob digest, of a layer served through
// its own TOC in Store.layers: one blob may be described by different TOCs
// (different annotations point at different frames), and each TOC digest
// is a layer identity of its own to containers/storage.
func tocScope(toc digest.Digest) string { return tocLayerScopePrefx + toc.String() }

// tocLayerFor returns the layer desc served through its own TOC (format
// estargz or zstd:chunked, TOC digest toc), loading it once however many
// lookups ask at the same time. The TOC is the image's own (its digest is
// in the manifest): such a layer serves every image that names the same
// blob and TOC digest.
func (s *Store) tocLayerFor(ctx context.Context, desc remote.Layer, format string, toc digest.Digest, blob *remote.Blob, log *logrus.Entry) (*layer, error) {
	key := layerKey{desc.Digest, tocScope(toc)}
	if l := s.loaded(key); l != nil && l.spans.Bad() == "" {
		return l, nil
	}
	v, err, _ := s.layerSF.Do(desc.Digest.String()+key.scope, func() (any, error) {
		if l := s.loaded(key); l != nil && l.spans.Bad() == "" {
			return l, nil
		}
		l, err := s.loadTOCLayer(ctx, desc, format, toc, blob, log)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		l.scope = key.scope
		old := s.layers[key]
		s.layers[key] = l
		s.mu.Unlock()
		if old != nil {
			s.replaceLayer(old, l)
		}
		s.startupPrefetch(l)
		return l, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*layer), nil
}

// loaded returns the layer loaded under key, or nil.
func (s *Store) loaded(key layerKey) *layer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.layers[key]
}

// loadTOCLayer reads the layer's TOC from the registry (the footer when the
// annotations do not place it, then everything from the TOC to the blob's
// end in one request), checks it against toc and opens the layer. A TOC
// that is not the image's, or that the format or the limits refuse, makes
// the layer not served (the host pulls it, and checks it, itself).
func (s *Store) loadTOCLayer(ctx context.Context, desc remote.Layer, format string, toc digest.Digest, blob blobSource, log *logrus.Entry) (*layer, error) {
	lim := s.limits()
	read := func(off, n int64, what string) ([]byte, error) {
		if off < 0 || n <= 0 || off+n > desc.Size {
			return nil, fmt.Errorf("%w: %s at %d (%d bytes) outside the %d-byte blob", ErrNotServed, what, off, n, desc.Size)
		}
		if n > lim.WithDefaults().MaxZtocSize {
			return nil, fmt.Errorf("%w: %s of %d bytes (%w)", ErrNotServed, what, n, ztoc.ErrLimit)
		}
		bufs, err := blob.ReadRanges(ctx, []remote.Range{{Offset: off, Length: n}})
		if err != nil {
			return nil, fmt.Errorf("read the layer's %s: %w", what, err)
		}
		return bufs[0], nil
	}
	refuse := func(err error) (*layer, error) {
		if errors.Is(err, estargz.ErrTOCDigest) || errors.Is(err, zstdchunked.ErrTOCDigest) {
			log.WithError(err).Warn("The layer's TOC is not the one its image names; not serving it")
		}
		return nil, fmt.Errorf("%w: %w", ErrNotServed, err)
	}
	idx := &tocIndex{tocDigest: toc, tarSize: unknownTarSize}
	switch format {
	case formatEstargz:
		footer, err := read(desc.Size-estargz.FooterSize, estargz.FooterSize, "eStargz footer")
		if err != nil {
			return nil, err
		}
		off, err := estargz.ParseFooter(footer, desc.Size)
		if err != nil {
			return refuse(err)
		}
		tail, err := read(off, desc.Size-off, "eStargz TOC")
		if err != nil {
			return nil, err
		}
		l, err := estargz.Open(tail, off, desc.Size, toc, estargz.Options{Limits: lim, SpanTarget: tocSpanTarget})
		if err != nil {
			return refuse(err)
		}
		idx.x, idx.tail, idx.compression = l.Index, tail, compressionGzip
		if v, ok := desc.Annotations[estargz.AnnotationUncompressedSize]; ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return refuse(fmt.Errorf("annotation %s %q", estargz.AnnotationUncompressedSize, v))
			}
			// Checked by the whole-layer verification.
			idx.tarSize = n
		}
	case formatZstdChunked:
		loc, ok, err := zstdchunked.Locate(desc.Annotations, desc.Size)
		if err != nil {
			return refuse(err)
		}
		if !ok {
			footer, err := read(desc.Size-zstdchunked.FooterSize, zstdchunked.FooterSize, "zstd:chunked footer")
			if err != nil {
				return nil, err
			}
			if loc, err = zstdchunked.LocateFooter(footer, desc.Size); err != nil {
				return refuse(err)
			}
		}
		tail, err := read(loc.TailOffset(), desc.Size-loc.TailOffset(), "zstd:chunked TOC")
		if err != nil {
			return nil, err
		}
		l, err := zstdchunked.Open(tail, loc, desc.Size, toc, zstdchunked.Options{Limits: lim, SpanTarget: tocSpanTarget})
		if err != nil {
			return refuse(err)
		}
		idx.x, idx.tail, idx.compression, idx.tarSize = l.Index, tail, compressionZstd, l.TarSize
	default:
		return nil, fmt.Errorf("%w: format %q has no TOC", ErrNotServed, format)
	}
	layout := digest.FromString(fmt.Sprintf("%s/%s/%d", format, toc, tocSpanTarget))
	l := s.newLayer(layerParts{desc: desc, tocDigest: toc, source: indexSourceOwnTOC, idx: idx, indexID: layout}, log.WithField("toc", toc))
	// The TOC (and footer) just read are the last span: no fetch for the
	// blob or the verification.
	if err := l.spans.Seed(idx.x.TailSpan(), idx.tail); err != nil {
		log.WithError(err).Warn("Caching the layer's TOC")
	}
	idx.tail = nil
	log.WithFields(logrus.Fields{"entries": len(idx.x.Entries()), "spans": idx.x.NumSpans(), "startup_bytes": idx.x.StartupEnd()}).Debug("Opened the layer's own TOC")
	return l, nil
}

// startupPrefetch fetches, at ReadAhead priority, the spans of the files an
// eStargz image marks as needed at start-up (those before its prefetch
// landmark), as soon as the layer is served.
func (s *Store) startupPrefetch(l *layer) {
	t, ok := l.idx.(*tocIndex)
	if !ok || t.x.StartupEnd() == 0 {
		return
	}
	last := t.x.SpanOf(t.x.StartupEnd() - 1)
	s.background(func(ctx context.Context) {
		if err := l.spans.Fetch(ctx, 0, last, spans.ReadAhead); err != nil && ctx.Err() == nil {
			l.log.WithError(err).Debug("Prefetching the prioritized files")
		}
	})
}
