package layerstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/ztoc"
)

// ErrLayerMismatch is returned when a layer streamed from the registry does
// not have the digest, size or DiffID its image says.
var ErrLayerMismatch = errors.New("layerstore: layer content does not match the image")

// layerStreamer opens a whole layer blob; remote.Blob implements it.
type layerStreamer interface {
	Open(ctx context.Context) (io.ReadCloser, error)
}

// BuildResult describes a zTOC built from a layer.
type BuildResult struct {
	Layer      remote.Layer
	ZtocDigest digest.Digest
	ZtocSize   int64
	Spans      int
	Took       time.Duration
}

// buildLayerIndex streams the layer once, builds its zTOC, caches every span
// on the way, checks digest, size and DiffID against the image, and stores
// the zTOC (local store; shared store in the background).
func (s *Store) buildLayerIndex(ctx context.Context, ref reference.Named, img *remote.Image, desc remote.Layer, blob layerStreamer, log *logrus.Entry) (digest.Digest, error) {
	select {
	case s.buildSem <- struct{}{}:
		defer func() { <-s.buildSem }()
	case <-ctx.Done():
		return "", ctx.Err()
	}
	res, err := s.BuildLayer(ctx, ref, desc, blob, true, nil)
	if err != nil {
		log.WithError(err).Warn("Indexing the layer failed")
		return "", err
	}
	log.WithFields(logrus.Fields{"ztoc": res.ZtocDigest, "spans": res.Spans, "took": res.Took.Round(time.Millisecond)}).Info("Indexed layer")
	s.metrics.built.Inc()
	s.afterBuild(ref, img)
	return res.ZtocDigest, nil
}

// BuildLayer streams one layer through the zTOC builder. With cacheSpans the
// compressed spans go into the span cache as they stream. progress, when set,
// receives the compressed bytes read so far. The zTOC is stored in the local
// artifact store and mapped to the layer.
func (s *Store) BuildLayer(ctx context.Context, ref reference.Named, desc remote.Layer, blob layerStreamer, cacheSpans bool, progress func(int64)) (*BuildResult, error) {
	start := time.Now()
	rc, err := blob.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	opts := ztoc.BuildOptions{SpanSize: int64(s.cfg.Index.SpanSize), OnProgress: progress, Limits: s.limits()}
	// Spans are cached as they stream, under a group of their own until
	// the zTOC (which names their layout) is known.
	staging := fmt.Sprintf("build-%s-%d", desc.Digest.Encoded()[:32], time.Now().UnixNano())
	if cacheSpans {
		opts.OnSpan = func(id ztoc.SpanID, data []byte) error {
			err := s.spans.Put(diskcache.Key{Group: staging, Name: "c" + strconv.Itoa(int(id))}, data)
			if err != nil && !errors.Is(err, diskcache.ErrFull) {
				s.log.WithError(err).WithField("layer", desc.Digest).Warn("Could not cache span while indexing")
			}
			return nil
		}
		defer s.spans.RemoveGroup(staging) // what was not moved
	}
	res, err := ztoc.Build(ctx, rc, opts)
	if err != nil {
		return nil, fmt.Errorf("index layer %s: %w", desc.Digest, err)
	}
	var mismatch error
	switch {
	case res.Digest != desc.Digest:
		mismatch = fmt.Errorf("%w: blob has digest %s, manifest says %s", ErrLayerMismatch, res.Digest, desc.Digest)
	case res.Size != desc.Size:
		mismatch = fmt.Errorf("%w: blob has %d bytes, manifest says %d", ErrLayerMismatch, res.Size, desc.Size)
	case desc.DiffID != "" && res.DiffID != desc.DiffID:
		mismatch = fmt.Errorf("%w: DiffID %s, config says %s", ErrLayerMismatch, res.DiffID, desc.DiffID)
	}
	if mismatch != nil {
		return nil, mismatch
	}
	// lazypull's native layout: the zTOC without its windows (fetched
	// whole at lookup), and the windows apart (fetched with their spans).
	data, windows, err := ztoc.MarshalNative(res.Ztoc, ztoc.WithLimits(s.limits()))
	if err != nil {
		return nil, fmt.Errorf("encode zTOC of %s: %w", desc.Digest, err)
	}
	zd := digest.FromBytes(data)
	wd := digest.FromBytes(windows)
	if windows != nil {
		if err := s.local.WriteBlob(ctx, wd, windows); err != nil {
			return nil, err
		}
	}
	if err := s.local.WriteBlob(ctx, zd, data); err != nil {
		return nil, err
	}
	if cacheSpans {
		if err := s.spans.RenameGroup(staging, spanGroup(desc.Digest, zd)); err != nil {
			s.log.WithError(err).WithField("layer", desc.Digest).Warn("Keeping the spans cached while indexing")
		}
	}
	key := artifact.LayerKey(desc.Digest, int64(s.cfg.Index.SpanSize))
	if err := s.local.WriteRef(ctx, artifact.LayerRef, key, zd); err != nil {
		return nil, err
	}
	s.shareFor(ref, func(ctx context.Context) error { return s.putShared(ctx, key, zd) })
	return &BuildResult{Layer: desc, ZtocDigest: zd, ZtocSize: int64(len(data)), Spans: int(res.Ztoc.CompressionInfo.MaxSpanID) + 1, Took: time.Since(start)}, nil
}

// putShared copies local zTOC zd to the shared repository, with the
// windows blob of a native one when it is here (one fetched window by
// window came from the shared repository, which has it), and maps key to
// it there.
func (s *Store) putShared(ctx context.Context, key string, zd digest.Digest) error {
	data, err := s.local.ReadBlob(ctx, zd)
	if err != nil {
		return err
	}
	x, err := ztoc.NewLayerIndexFromBytes(data, ztoc.WithLimits(s.limits()))
	if err != nil {
		return err
	}
	if wd, _, native := x.NativeWindows(); native && s.local.HasBlob(wd) {
		windows, err := s.local.ReadBlob(ctx, wd)
		if err != nil {
			return err
		}
		if err := s.shared.WriteBlob(ctx, wd, windows); err != nil {
			return err
		}
	}
	if err := s.shared.WriteBlob(ctx, zd, data); err != nil {
		return err
	}
	return s.shared.WriteRef(ctx, artifact.LayerRef, key, zd)
}

// shareFor shares artifacts of ref's image (share) when artifacts.share
// allows it for the image.
func (s *Store) shareFor(ref reference.Named, fn func(ctx context.Context) error) {
	if s.mayShare(ref) {
		s.share(fn)
	}
}

// share runs fn against the shared artifact store in the background (a
// store goroutine, canceled on Close), when one is configured.
func (s *Store) share(fn func(ctx context.Context) error) {
	if s.shared == nil {
		return
	}
	s.background(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if err := fn(ctx); err != nil {
			s.log.WithError(err).WithField("repository", s.sharedN).Warn("Sharing artifacts failed; other machines will index themselves")
			return
		}
		s.metrics.shared.Inc()
	})
}

// buildInBackground indexes a layer for next time while the host pulls it
// normally now (index.on_demand = "background").
func (s *Store) buildInBackground(ref reference.Named, img *remote.Image, desc remote.Layer, blob layerStreamer, log *logrus.Entry) {
	s.mu.Lock()
	if s.building[desc.Digest] {
		s.mu.Unlock()
		return
	}
	s.building[desc.Digest] = true
	s.mu.Unlock()
	s.background(func(ctx context.Context) {
		defer func() {
			s.mu.Lock()
			delete(s.building, desc.Digest)
			s.mu.Unlock()
		}()
		if _, err := s.buildLayerIndex(ctx, ref, img, desc, blob, log); err == nil {
			// Spans stay cached for a later lazy pull of the layer.
			log.Info("Indexed layer in the background for the next pull")
		}
	})
}

// afterBuild writes the image's SOCI index once every layer that gets an
// index has one, so the whole image is found with one mapping (locally and
// in the shared store), and with artifacts.push_to_image_registry pushes it
// to the image's repository as a referrer, in the background.
func (s *Store) afterBuild(ref reference.Named, img *remote.Image) {
	layers, err := s.ImageIndexLayers(s.ctx, img)
	if err != nil {
		return // not all layers indexed yet
	}
	if _, err := s.StoreImageIndex(s.ctx, ref, img, layers); err != nil {
		s.log.WithError(err).WithField("ref", ref).Warn("Storing the image's SOCI index")
		return
	}
	if !s.cfg.Artifacts.PushToImageRegistry {
		return
	}
	s.background(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if err := s.pushIndex(ctx, ref, img, layers); err != nil {
			s.log.WithError(err).WithField("ref", ref).Warn("Pushing the SOCI index to the image's repository failed (artifacts.push_to_image_registry)")
			return
		}
		s.log.WithField("ref", ref).Info("Pushed the SOCI index to the image's repository")
	})
}

// ImageIndexLayers returns the SOCI index entries of img's layers, or an
// error when a layer that should have a zTOC has none in the local store.
func (s *Store) ImageIndexLayers(ctx context.Context, img *remote.Image) ([]ztoc.IndexLayer, error) {
	spanSize := int64(s.cfg.Index.SpanSize)
	var out []ztoc.IndexLayer
	for _, d := range img.Layers {
		if !s.needsZtoc(d) {
			continue
		}
		zd, err := s.local.ReadRef(ctx, artifact.LayerRef, artifact.LayerKey(d.Digest, spanSize))
		if err != nil {
			return nil, err
		}
		f, size, err := s.local.Open(zd)
		if err != nil {
			return nil, err
		}
		f.Close()
		out = append(out, ztoc.IndexLayer{
			ZtocDigest:     zd,
			ZtocSize:       size,
			LayerDigest:    d.Digest,
			LayerMediaType: d.MediaType,
			SpanSize:       spanSize,
			DiffID:         d.DiffID,
		})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no layer of %s gets an index", artifact.ErrNotFound, img.ManifestDigest)
	}
	return out, nil
}

// StoreImageIndex builds a SOCI v1 index for img, stores it locally, maps the
// image to it, and shares index and zTOCs in the background.
func (s *Store) StoreImageIndex(ctx context.Context, ref reference.Named, img *remote.Image, layers []ztoc.IndexLayer) ([]byte, error) {
	subject := ocispec.Descriptor{MediaType: img.MediaType, Digest: img.ManifestDigest, Size: int64(len(img.Manifest))}
	data, desc, err := ztoc.BuildIndexV1(layers, subject, nil)
	if err != nil {
		return nil, fmt.Errorf("build SOCI index: %w", err)
	}
	if err := s.local.WriteBlob(ctx, desc.Digest, data); err != nil {
		return nil, err
	}
	key := artifact.ImageKey(img.ManifestDigest, int64(s.cfg.Index.SpanSize))
	if err := s.local.WriteRef(ctx, artifact.ImageRef, key, desc.Digest); err != nil {
		return nil, err
	}
	s.shareFor(ref, func(ctx context.Context) error {
		for _, l := range layers {
			if err := s.putShared(ctx, artifact.LayerKey(l.LayerDigest, l.SpanSize), l.ZtocDigest); err != nil {
				return err
			}
		}
		if err := s.shared.WriteBlob(ctx, desc.Digest, data); err != nil {
			return err
		}
		return s.shared.WriteRef(ctx, artifact.ImageRef, key, desc.Digest)
	})
	return data, nil
}

// IndexProgress receives the progress of IndexImage; all methods may be
// called concurrently for different layers.
type IndexProgress interface {
	LayerStarted(l remote.Layer)
	LayerProgress(l remote.Layer, compressedBytes int64)
	LayerDone(l remote.Layer, res *BuildResult, reused bool, err error)
}

// needsZtoc reports whether layer d is served through a zTOC: a gzip or tar
// layer not below index.min_layer_size (eStargz and zstd:chunked layers
// carry their own TOC).
func (s *Store) needsZtoc(d remote.Layer) bool {
	if d.Size < int64(s.cfg.Index.MinLayerSize) {
		return false
	}
	f, _, err := formatOf(d)
	return err == nil && (f == formatGzip || f == formatTar)
}

// LayerFormat describes how a layer is served, for `lazypull index`.
type LayerFormat struct {
	Layer remote.Layer
	// Format is "gzip" or "tar" (served through a zTOC), "estargz" or
	// "zstd:chunked" (through their own TOC), or the media type of a
	// layer that is not served lazily.
	Format string
	// TOCDigest is the digest of the layer's own TOC.
	TOCDigest digest.Digest
	// NeedsIndex is set for layers served through a zTOC; Note says why
	// the others need none.
	NeedsIndex bool
	Note       string
}

// LayerFormats describes how each layer of img is served.
func (s *Store) LayerFormats(img *remote.Image) []LayerFormat {
	out := make([]LayerFormat, 0, len(img.Layers))
	for _, d := range img.Layers {
		f, toc, err := formatOf(d)
		lf := LayerFormat{Layer: d, Format: f, TOCDigest: toc}
		switch {
		case err != nil:
			lf.Format, lf.Note = d.MediaType, "not served lazily: "+err.Error()
		case d.Size < int64(s.cfg.Index.MinLayerSize):
			lf.Note = fmt.Sprintf("pulled normally: %d bytes, below index.min_layer_size (%s)", d.Size, s.cfg.Index.MinLayerSize)
		case toc != "":
			lf.Note = fmt.Sprintf("carries its own TOC (%s): served without an index", toc)
		default:
			lf.NeedsIndex = true
		}
		out = append(out, lf)
	}
	return out
}

// IndexImageResult is what IndexImage produced.
type IndexImageResult struct {
	Image *remote.Image
	// Formats says how every layer is served.
	Formats []LayerFormat
	// Layers are the zTOCs of the image's indexed layers.
	Layers []ztoc.IndexLayer
	// Index is the SOCI v1 index and IndexDigest its digest.
	Index       []byte
	IndexDigest digest.Digest
	// Pushed is set when the index was pushed to the image's repository.
	Pushed bool
}

// IndexImage builds the SOCI artifacts of an image (`lazypull index`): every
// layer that gets an index is streamed once through the zTOC builder (layers
// in parallel, index.parallel at a time; layers already indexed locally are
// reused), the zTOCs and a SOCI v1 index go into the local artifact store,
// and with push into the image's repository as a referrer of the image
// manifest (OCI referrers API, or the sha256-<hex> tag fallback).
func (s *Store) IndexImage(ctx context.Context, refStr string, push bool, progress IndexProgress) (*IndexImageResult, error) {
	ref, err := reference.ParseNormalizedNamed(refStr)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", refStr, err)
	}
	img, err := s.resolveImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	spanSize := int64(s.cfg.Index.SpanSize)
	sem := make(chan struct{}, s.cfg.Index.Parallel)
	errs := make([]error, len(img.Layers))
	var wg sync.WaitGroup
	formats := s.LayerFormats(img)
	for i, d := range img.Layers {
		if !formats[i].NeedsIndex {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			progress.LayerStarted(d)
			if zd, err := s.local.ReadRef(ctx, artifact.LayerRef, artifact.LayerKey(d.Digest, spanSize)); err == nil {
				progress.LayerDone(d, &BuildResult{Layer: d, ZtocDigest: zd}, true, nil)
				return
			}
			blob, err := s.client.Blob(ref, d.Digest, d.Size)
			if err == nil {
				var res *BuildResult
				res, err = s.BuildLayer(ctx, ref, d, blob, false, func(n int64) { progress.LayerProgress(d, n) })
				progress.LayerDone(d, res, false, err)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	res := &IndexImageResult{Image: img, Formats: formats}
	needed := false
	for _, f := range formats {
		needed = needed || f.NeedsIndex
	}
	if !needed {
		return res, nil // nothing to index: no SOCI index either
	}
	layers, err := s.ImageIndexLayers(ctx, img)
	if err != nil {
		return nil, err
	}
	data, err := s.StoreImageIndex(ctx, ref, img, layers)
	if err != nil {
		return nil, err
	}
	res.Layers, res.Index, res.IndexDigest = layers, data, digest.FromBytes(data)
	if push {
		if err := s.pushIndex(ctx, ref, img, layers); err != nil {
			return res, err
		}
		res.Pushed = true
	}
	return res, nil
}

// pushIndex pushes the image's index to its repository in SOCI's format:
// every zTOC with its windows inline (indexes are kept here in lazypull's
// native layout), the index's config and a SOCI v1 index naming them, as a
// referrer of the image manifest.
func (s *Store) pushIndex(ctx context.Context, ref reference.Named, img *remote.Image, layers []ztoc.IndexLayer) error {
	soci := make([]ztoc.IndexLayer, len(layers))
	for i, l := range layers {
		data, native, err := s.sociZtoc(l.ZtocDigest)
		if err != nil {
			return fmt.Errorf("zTOC of %s: %w", l.LayerDigest, err)
		}
		d := digest.FromBytes(data)
		if err := s.client.PushBlob(ctx, ref, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			return fmt.Errorf("push zTOC %s: %w", d, err)
		}
		soci[i] = l
		soci[i].ZtocDigest, soci[i].ZtocSize = d, int64(len(data))
		if native {
			// The native layout beside it, for lazypull: the meta is what
			// a lookup fetches, the windows come with their spans.
			if err := s.pushNative(ctx, ref, l.ZtocDigest); err != nil {
				return err
			}
			soci[i].Annotations = map[string]string{
				ztoc.AnnotationNativeZtoc:     l.ZtocDigest.String(),
				ztoc.AnnotationNativeZtocSize: strconv.FormatInt(l.ZtocSize, 10),
			}
		}
	}
	subject := ocispec.Descriptor{MediaType: img.MediaType, Digest: img.ManifestDigest, Size: int64(len(img.Manifest))}
	index, _, err := ztoc.BuildIndexV1(soci, subject, nil)
	if err != nil {
		return fmt.Errorf("build SOCI index: %w", err)
	}
	if err := s.client.PushBlob(ctx, ref, ztoc.EmptyConfigDigest, int64(len(ztoc.EmptyConfig)), bytes.NewReader(ztoc.EmptyConfig)); err != nil {
		return fmt.Errorf("push SOCI index config: %w", err)
	}
	if _, err := s.client.PushReferrer(ctx, ref, ocispec.MediaTypeImageManifest, index); err != nil {
		return fmt.Errorf("push SOCI index: %w", err)
	}
	return nil
}

// sociZtoc returns local zTOC zd in SOCI's format (converting one in the
// native layout, whose windows blob must be here; native reports that).
func (s *Store) sociZtoc(zd digest.Digest) (data []byte, native bool, err error) {
	f, size, err := s.local.Open(zd)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	x, err := ztoc.OpenLayerIndex(f, size, ztoc.WithLimits(s.limits()))
	if err != nil {
		return nil, false, err
	}
	wd, wsize, native := x.NativeWindows()
	if !native {
		data, err := s.local.ReadBlob(context.Background(), zd)
		return data, false, err
	}
	w, n, err := s.local.Open(wd)
	if err != nil {
		return nil, true, fmt.Errorf("windows of %s: %w", zd, err)
	}
	defer w.Close()
	if n != wsize {
		return nil, true, fmt.Errorf("windows of %s: %d bytes, want %d", zd, n, wsize)
	}
	x, err = ztoc.OpenLayerIndex(f, size, ztoc.WithLimits(s.limits()), ztoc.WithWindows(w))
	if err != nil {
		return nil, true, err
	}
	data, err = x.MarshalSOCI()
	return data, true, err
}

// pushNative pushes local native zTOC zd and its windows blob to ref's
// repository.
func (s *Store) pushNative(ctx context.Context, ref reference.Named, zd digest.Digest) error {
	meta, err := s.local.ReadBlob(ctx, zd)
	if err != nil {
		return err
	}
	x, err := ztoc.NewLayerIndexFromBytes(meta, ztoc.WithLimits(s.limits()))
	if err != nil {
		return err
	}
	wd, _, _ := x.NativeWindows()
	windows, err := s.local.ReadBlob(ctx, wd)
	if err != nil {
		return fmt.Errorf("windows of %s: %w", zd, err)
	}
	for _, b := range []struct {
		d    digest.Digest
		data []byte
	}{{wd, windows}, {zd, meta}} {
		if err := s.client.PushBlob(ctx, ref, b.d, int64(len(b.data)), bytes.NewReader(b.data)); err != nil {
			return fmt.Errorf("push %s: %w", b.d, err)
		}
	}
	return nil
}
