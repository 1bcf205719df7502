package layerstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/estargz"
	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/zstdchunked"
	"github.com/lazypull/lazypull/ztoc"
)

// Reasons a layer is not served (the host then pulls it normally).
var (
	// ErrNotServed is returned for layers lazypull leaves to the host: too
	// small, not in the image, unsupported compression, no index.
	ErrNotServed = errors.New("layerstore: layer not served lazily")
	// ErrNoIndex is returned when no zTOC exists for a layer and none may
	// be built now.
	ErrNoIndex = errors.New("layerstore: no index for layer")
)

// TOCRefPrefix marks image references looked up by the containers/storage
// plugin (storage_driver): their layers are identified by a pseudo TOC
// digest in a namespace of their own (see infoJSON).
const TOCRefPrefix = "lazypull-toc:"

// Lookup implements alsfs.Resolver: it resolves the image, finds or builds
// the layer's zTOC and returns the layer, or an error that makes the host
// pull the layer itself.
func (s *Store) Lookup(ctx context.Context, refStr string, dgst digest.Digest) (alsfs.Layer, error) {
	start := time.Now()
	// A pull is under way: background fetches wait until it is done.
	s.sched.Touch()
	identity := identityLegacy
	if r, ok := strings.CutPrefix(refStr, TOCRefPrefix); ok {
		identity, refStr = identityPseudoTOC, r
	}
	log := s.log.WithFields(logrus.Fields{"ref": refStr, "layer": dgst})
	v, err := s.lookup(ctx, refStr, dgst, identity, log)
	if err != nil {
		s.metrics.lookups.WithLabelValues("not_served").Inc()
		log.WithError(err).Info("Layer not served lazily; the host pulls it")
		return nil, err
	}
	s.metrics.lookups.WithLabelValues("served").Inc()
	log.WithFields(logrus.Fields{"source": v.l.source, "took": time.Since(start).Round(time.Millisecond)}).Info("Serving layer lazily")
	return v, nil
}

func (s *Store) lookup(ctx context.Context, refStr string, dgst digest.Digest, identity layerIdentity, log *logrus.Entry) (*layerView, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotServed, err)
	}
	if refStr == "" {
		// The store mounted without ":ref": only layers already known, and
		// trusted (an index not verified serves its repository only).
		l := s.findLayer(dgst, "")
		if l == nil {
			return nil, fmt.Errorf("%w: unknown layer without an image reference", ErrNotServed)
		}
		if l.tocDigest == dgst && identity == identityLegacy {
			identity = identityTOC
		}
		return l.newView(identity, nil)
	}
	ref, err := reference.ParseNormalizedNamed(refStr)
	if err != nil {
		return nil, fmt.Errorf("%w: image reference %q: %w", ErrNotServed, refStr, err)
	}
	// Every lookup proves, with the credentials of this pull, that the image
	// can be read: cached artifacts never let anyone mount a private image.
	img, err := s.resolveImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	desc, byTOC, found := layerOf(img, dgst)
	if !found {
		return nil, fmt.Errorf("%w: %s is neither a layer nor a layer's TOC digest of %s", ErrNotServed, dgst, ref)
	}
	if byTOC && identity == identityLegacy {
		// containers/storage >= 1.54 asks by TOC digest.
		identity = identityTOC
	}
	if desc.Size < int64(s.cfg.Index.MinLayerSize) {
		return nil, fmt.Errorf("%w: layer of %d bytes is below index.min_layer_size", ErrNotServed, desc.Size)
	}
	format, toc, err := formatOf(desc)
	if err != nil {
		return nil, err
	}
	blob, err := s.client.Blob(ref, desc.Digest, desc.Size)
	if err != nil {
		return nil, fmt.Errorf("layer blob: %w", err)
	}
	var l *layer
	switch format {
	case formatEstargz, formatZstdChunked:
		l, err = s.tocLayerFor(ctx, desc, format, toc, blob, log.WithField("format", format))
	default:
		l, err = s.layerFor(ctx, ref, img, desc, blob, log)
	}
	if err != nil {
		return nil, err
	}
	l.addSource(ref, blob)
	s.fill.add(l)
	// What the image's containers read first is recorded into its start-up
	// profile; what earlier runs read is fetched now.
	rec := s.prof.recorderFor(img.ManifestDigest, ref)
	s.replayProfile(img.ManifestDigest, ref, l)
	return l.newView(identity, func(first, last int) { s.noteRead(rec, l, first, last) })
}

// layerOf finds the layer dgst names in img: its compressed digest, or
// (byTOC) the TOC digest its descriptor's annotation gives.
func layerOf(img *remote.Image, dgst digest.Digest) (desc remote.Layer, byTOC, found bool) {
	for _, d := range img.Layers {
		if d.Digest == dgst {
			return d, false, true
		}
	}
	for _, d := range img.Layers {
		if _, toc, err := formatOf(d); err == nil && toc == dgst {
			return d, true, true
		}
	}
	return remote.Layer{}, false, false
}

// formatOf tells how a layer can be served: through the TOC it carries
// (eStargz and zstd:chunked, whose descriptors carry its digest; the
// annotations containers/storage's toc.GetTOCDigest reads), or through a
// zTOC (gzip and uncompressed tar).
func formatOf(d remote.Layer) (format string, toc digest.Digest, err error) {
	e, isEstargz := d.Annotations[estargz.AnnotationTOCDigest]
	z, isZstd := d.Annotations[zstdchunked.AnnotationTOCDigest]
	switch {
	case isEstargz && isZstd:
		return "", "", fmt.Errorf("%w: the layer carries both an eStargz and a zstd:chunked TOC digest", ErrNotServed)
	case isEstargz && gzipMediaType(d.MediaType):
		format, toc = formatEstargz, digest.Digest(e)
	case isZstd && d.MediaType == zstdchunked.MediaType:
		format, toc = formatZstdChunked, digest.Digest(z)
	case servableMediaType(d.MediaType):
		if d.MediaType == ocispec.MediaTypeImageLayer || d.MediaType == "application/vnd.docker.image.rootfs.diff.tar" {
			return formatTar, "", nil
		}
		return formatGzip, "", nil
	default:
		return "", "", fmt.Errorf("%w: media type %s", ErrNotServed, d.MediaType)
	}
	if err := toc.Validate(); err != nil || toc.Algorithm() != digest.SHA256 {
		return "", "", fmt.Errorf("%w: %s TOC digest %q", ErrNotServed, format, toc)
	}
	return format, toc, nil
}

// servableMediaType reports whether layers of this media type can be
// indexed by a zTOC: gzip and uncompressed tar (Docker and OCI spellings).
func servableMediaType(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageLayer, "application/vnd.docker.image.rootfs.diff.tar":
		return true
	}
	return gzipMediaType(mt)
}

// gzipMediaType reports whether mt is a gzip layer (Docker and OCI
// spellings).
func gzipMediaType(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerNonDistributableGzip, //nolint:staticcheck // still seen in the wild
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return true
	}
	return false
}

// imageEntry is a resolved image, reused for the lookups of its layers.
type imageEntry struct {
	img     *remote.Image
	expires time.Time
	cred    string // CredentialID it was resolved with
}

// maxAuthorized bounds Store.authorized.
const maxAuthorized = 4096

// credentialID is the ID of the credential ref is read with now ("" when
// the store has no credentials).
func (s *Store) credentialID(ref reference.Named) (string, error) {
	if s.opts.CredentialID == nil {
		return "", nil
	}
	id, err := s.opts.CredentialID(ref)
	if err != nil {
		return "", fmt.Errorf("credentials for %s: %w", ref, err)
	}
	return id, nil
}

// Reauthorize implements alsfs.Reauthorizer: a layer directory of ref
// already served stays served while ref is read with the credential that
// last proved access to it (reading the auth files, no registry request);
// after a logout or a login as someone else, access is proved again with
// the registry, and a refusal (or no answer) takes the directory away.
func (s *Store) Reauthorize(ctx context.Context, refStr string, _ digest.Digest) error {
	ref, err := reference.ParseNormalizedNamed(strings.TrimPrefix(refStr, TOCRefPrefix))
	if err != nil {
		return fmt.Errorf("image reference %q: %w", refStr, err)
	}
	cred, err := s.credentialID(ref)
	if err != nil {
		return err
	}
	s.mu.Lock()
	granted, ok := s.authorized[ref.String()]
	s.mu.Unlock()
	if ok && granted == cred {
		return nil
	}
	_, err = s.resolveImage(ctx, ref)
	return err
}

// forgetAuthorization drops what proved access to ref.
func (s *Store) forgetAuthorization(ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.authorized, ref)
	delete(s.images, ref)
}

// sameRef reports whether the reference string of a layer directory names
// ref.
func sameRef(refStr string, ref reference.Named) bool {
	r, err := reference.ParseNormalizedNamed(strings.TrimPrefix(refStr, TOCRefPrefix))
	return err == nil && r.String() == ref.String()
}

// resolveImage fetches manifest and config of ref with the credentials as
// they are now (no token obtained earlier), merging concurrent resolutions
// of the same reference and reusing a result for registry.resolve_cache_ttl
// while ref is read with the same credential.
func (s *Store) resolveImage(ctx context.Context, ref reference.Named) (*remote.Image, error) {
	key := ref.String()
	cred, err := s.credentialID(ref)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", ref, err)
	}
	cached := func() *remote.Image {
		s.mu.Lock()
		defer s.mu.Unlock()
		if e, ok := s.images[key]; ok && e.cred == cred && time.Now().Before(e.expires) {
			return e.img
		}
		return nil
	}
	if img := cached(); img != nil {
		return img, nil
	}
	v, err, _ := s.imageSF.Do(key+"\x00"+cred, func() (any, error) {
		// A resolution that ended between the look above and this one
		// left its result: no second one.
		if img := cached(); img != nil {
			return img, nil
		}
		// Prove access with the credentials as they are now, not with a
		// token obtained before a logout or another user's login.
		if err := s.client.Reauthenticate(ref); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", ref, err)
		}
		img, err := s.client.Resolve(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", ref, err)
		}
		s.mu.Lock()
		s.images[key] = &imageEntry{img: img, expires: time.Now().Add(time.Duration(s.cfg.Registry.ResolveCacheTTL)), cred: cred}
		if len(s.authorized) >= maxAuthorized {
			clear(s.authorized) // proved again at the next lookups
		}
		s.authorized[key] = cred
		s.mu.Unlock()
		return img, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*remote.Image), nil
}

// layerKey names a loaded layer: its digest, and for a layer whose index
// is not trusted (not built or verified here) the repository it was found
// through, the only one it serves.
type layerKey struct {
	digest digest.Digest
	scope  string // "" for a trusted index
}

// scopeOf is the repository an untrusted index found for ref serves.
func scopeOf(ref reference.Named) string { return reference.TrimNamed(ref).Name() }

// trustsIndexesFor reports whether verification.trust_indexes_for names
// repository scope: a prefix ending in "/" or the repository itself.
func (s *Store) trustsIndexesFor(scope string) bool {
	for _, t := range s.cfg.Verify.TrustIndexesFor {
		if scope == strings.TrimSuffix(t, "/") || (strings.HasSuffix(t, "/") && strings.HasPrefix(scope, t)) {
			return true
		}
	}
	return false
}

// knownLayer returns the loaded layer dgst that serves images of repository
// scope: the one with a trusted index, else the one scoped to it; nil when
// there is none.
func (s *Store) knownLayer(dgst digest.Digest, scope string) *layer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.layers[layerKey{dgst, ""}]; l != nil {
		return l
	}
	if scope == "" {
		return nil
	}
	return s.layers[layerKey{dgst, scope}]
}

// findLayer returns the loaded layer a layer directory of the FUSE tree
// names: by compressed digest (knownLayer), or a layer with its own TOC by
// that TOC's digest (podman >= 5.1's lookups) or by its blob's (podman
// 4.x's); nil when there is none. Good layers are preferred.
func (s *Store) findLayer(dgst digest.Digest, scope string) *layer {
	if l := s.knownLayer(dgst, scope); l != nil {
		return l
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var found *layer
	for k, l := range s.layers {
		if l.tocDigest != "" && (l.tocDigest == dgst || k.digest == dgst) {
			if found == nil || found.spans.Bad() != "" {
				found = l
			}
		}
	}
	return found
}

// refScope returns the scope of a reference string as the FUSE tree passes
// it ("" when it names no image).
func refScope(refStr string) string {
	refStr = strings.TrimPrefix(refStr, TOCRefPrefix)
	ref, err := reference.ParseNormalizedNamed(refStr)
	if err != nil {
		return ""
	}
	return scopeOf(ref)
}

// layerFor returns the served layer for desc, loading it (finding or
// building its zTOC) once however many lookups ask at the same time. A
// layer loaded for another repository with an index not trusted yet does
// not serve ref: then one more load looks for an index for ref's
// repository.
func (s *Store) layerFor(ctx context.Context, ref reference.Named, img *remote.Image, desc remote.Layer, blob *remote.Blob, log *logrus.Entry) (*layer, error) {
	scope := scopeOf(ref)
	for _, key := range []string{desc.Digest.String(), desc.Digest.String() + "@" + scope} {
		if l := s.knownLayer(desc.Digest, scope); l != nil && l.spans.Bad() == "" {
			return l, nil
		}
		v, err, _ := s.layerSF.Do(key, func() (any, error) {
			if l := s.knownLayer(desc.Digest, scope); l != nil && l.spans.Bad() == "" {
				return l, nil
			}
			l, err := s.loadLayer(ctx, ref, img, desc, blob, log)
			if err != nil {
				return nil, err
			}
			s.mu.Lock()
			k := layerKey{desc.Digest, l.scope}
			old := s.layers[k]
			s.layers[k] = l
			s.mu.Unlock()
			if old != nil {
				s.replaceLayer(old, l)
			}
			return l, nil
		})
		if err != nil {
			return nil, err
		}
		l := v.(*layer)
		s.mu.Lock()
		lscope := l.scope
		s.mu.Unlock()
		if lscope == "" || lscope == scope {
			return l, nil
		}
	}
	return nil, fmt.Errorf("%w: no index for %s usable for %s", ErrNotServed, desc.Digest, scope)
}

// replaceLayer hands the host's references of a layer found bad over to its
// replacement (the host releases them through the same path). The old
// layer keeps serving errors through the directories the kernel still
// holds; it closes once they are released.
func (s *Store) replaceLayer(old, l *layer) {
	old.mu.Lock()
	uses := old.uses
	views := old.views
	old.mu.Unlock()
	for i := 0; i < uses; i++ {
		l.use(s)
		old.release(s)
	}
	if views == 0 {
		old.close()
		return
	}
	s.background(func(ctx context.Context) {
		// Close the old layer once the kernel let go of its directories
		// (or the store closes).
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for old.idleFor(time.Now()) == 0 {
			select {
			case <-ctx.Done():
				old.close()
				return
			case <-t.C:
			}
		}
		old.close()
	})
}

// loadLayer finds the layer's zTOC (local store, shared store, the image's
// registry), or builds it, and opens it.
func (s *Store) loadLayer(ctx context.Context, ref reference.Named, img *remote.Image, desc remote.Layer, blob *remote.Blob, log *logrus.Entry) (*layer, error) {
	found, err := s.findZtoc(ctx, ref, img, desc, log)
	if errors.Is(err, ErrNoIndex) {
		switch s.cfg.Index.OnDemand {
		case "sync":
			found.digest, err = s.buildLayerIndex(ctx, ref, img, desc, blob, log)
			found.source, found.trusted = "built", true
		case "background":
			s.buildInBackground(ref, img, desc, blob, log)
		}
	}
	if err != nil {
		return nil, err
	}
	l, err := s.openLayer(ctx, ref, desc, found, blob, log)
	if err != nil {
		return nil, err
	}
	l.addSource(ref, blob)
	if found.trusted {
		// Built here from the layer itself (digest, DiffID and every header
		// checked while streaming), or verified here before.
		l.verified.Store(true)
		return l, nil
	}
	// An index from elsewhere serves this repository only until the layer
	// is verified in full; the metadata the tree applies for hard links
	// must be the layer's before anything is served.
	s.mu.Lock()
	l.scope = scopeOf(ref)
	s.mu.Unlock()
	if err := l.checkHardLinks(ctx); err != nil {
		l.close()
		return nil, fmt.Errorf("%w: %w", ErrNotServed, err)
	}
	return l, nil
}

// openLayer opens zTOC zd from the local store and checks it fits desc. A
// zTOC that cannot be decoded or does not fit the layer is dropped so the
// next lookup finds or builds another; one that merely could not be used now
// (the registry failed to send the layer's header) is kept.
func (s *Store) openLayer(ctx context.Context, ref reference.Named, desc remote.Layer, found ztocFound, blob blobSource, log *logrus.Entry) (*layer, error) {
	zd := found.digest
	f, size, err := s.local.Open(zd)
	if err != nil {
		return nil, err
	}
	unusable := func(err error) (*layer, error) {
		f.Close()
		log.WithError(err).Warn("Dropping unusable index")
		s.forgetZtoc(desc.Digest, zd)
		return nil, err
	}
	ws := &windowSource{cache: s.spans, group: spanGroup(desc.Digest, zd), ctx: s.ctx}
	x, err := ztoc.OpenLayerIndex(f, size, ztoc.WithLimits(s.limits()), ztoc.WithWindows(ws))
	if err != nil {
		return unusable(fmt.Errorf("open zTOC %s: %w", zd, err))
	}
	if got := x.Ztoc().CompressedArchiveSize; got != desc.Size {
		return unusable(fmt.Errorf("zTOC %s describes %d compressed bytes, the layer has %d", zd, got, desc.Size))
	}
	if wd, wsize, ok := x.NativeWindows(); ok {
		if found.trusted && !s.local.HasBlob(wd) {
			// Built (or verified) here with its windows, which are gone
			// (evicted): build again rather than fetch them from nowhere.
			return unusable(fmt.Errorf("zTOC %s: its windows %s are no longer here", zd, wd))
		}
		s.windowsFor(ws, x, wd, wsize, ref)
	} else {
		ws = nil
	}
	// The bytes before span 0 (the gzip header) belong to no span: keep them.
	var header []byte
	if start, _ := x.SpanCompressedRange(0); start > 0 {
		bufs, err := blob.ReadRanges(ctx, []remote.Range{{Offset: 0, Length: start}})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read layer header: %w", err)
		}
		header = bufs[0]
	}
	idx := &ztocIndex{x: x, file: f, windows: ws, header: header}
	// An index built or verified here needs no proof; nor does one from a
	// repository whose indexes the operator vouches for: served at random
	// before verification (which still runs, and still marks a forged
	// index bad).
	prove := s.cfg.Verify.ProveCheckpoints && !found.trusted && !s.trustsIndexesFor(scopeOf(ref))
	l := s.newLayer(layerParts{desc: desc, ztocDigest: zd, source: found.source, idx: idx, indexID: zd, prove: prove}, log.WithField("ztoc", zd))
	if ws != nil {
		ws.proofPending = func() bool { return l.proof.needed && !l.verified.Load() }
	}
	return l, nil
}

// windowsFor sets up where the windows of native zTOC x come from: the
// local blob when it is here, else the shared repository and the image's
// own repository (the blob is content-addressed, every window checked).
func (s *Store) windowsFor(ws *windowSource, x *ztoc.LayerIndex, d digest.Digest, size int64, ref reference.Named) {
	ws.digest, ws.size = d, size
	ws.setIndex(x)
	if s.local.HasBlob(d) {
		if f, n, err := s.local.Open(d); err == nil && n == size {
			ws.local = f
			return
		} else if err == nil {
			f.Close()
		}
	}
	if reg := s.sharedReg; reg != nil {
		ws.remotes = append(ws.remotes, func() (spans.Source, error) { return reg.BlobRanges(d, size) })
	}
	ws.remotes = append(ws.remotes, func() (spans.Source, error) { return s.client.Blob(ref, d, size) })
}

// ztocFound is a zTOC found for a layer, and where.
type ztocFound struct {
	digest digest.Digest
	source string // "local", "shared", "registry", "built"
	// trusted is set for a zTOC built here from the layer, or verified here
	// against it: it serves every image with the layer. Others serve the
	// repository they were found through until the layer is verified.
	trusted bool
}

// findZtoc looks for the layer's zTOC: local store (trusted, then found
// earlier for this repository), shared store, the image's own registry
// (SOCI v2 annotation, then v1 referrers). Whatever is found elsewhere is
// copied into the local store, scoped to the repository.
func (s *Store) findZtoc(ctx context.Context, ref reference.Named, img *remote.Image, desc remote.Layer, log *logrus.Entry) (ztocFound, error) {
	spanSize := int64(s.cfg.Index.SpanSize)
	layerKey := artifact.LayerKey(desc.Digest, spanSize)
	scopedKey := artifact.ScopedLayerKey(scopeOf(ref), desc.Digest, spanSize)
	imageKey := artifact.ImageKey(img.ManifestDigest, spanSize)

	// 1. Local store, trusted: the layer's mapping, or the SOCI index of
	// the image built here. An index may name a zTOC evicted since.
	zd, err := s.findIn(ctx, s.local, layerKey, imageKey, desc.Digest)
	if err == nil && !s.local.HasBlob(zd) {
		err = fmt.Errorf("zTOC %s: %w", zd, artifact.ErrNotFound)
	}
	if err == nil {
		return ztocFound{zd, "local", true}, nil
	}
	if !errors.Is(err, artifact.ErrNotFound) {
		log.WithError(err).Warn("Local artifact store")
	}
	// 2. Local store, found earlier for this repository.
	if zd, err := s.local.ReadRef(ctx, artifact.LayerRef, scopedKey); err == nil && s.local.HasBlob(zd) {
		return ztocFound{zd, "local", false}, nil
	}
	// 3. The fleet's shared store.
	if s.shared != nil {
		// Bounded as a whole: an unreachable repository costs a lookup
		// this long at most, then nothing while its circuit is open.
		sctx, cancel := context.WithTimeout(ctx, s.sharedTimeout())
		zd, err := s.findIn(sctx, s.shared, layerKey, imageKey, desc.Digest)
		if err == nil {
			err = s.copyToLocal(sctx, s.shared, zd, scopedKey)
			cancel()
			if err == nil {
				return ztocFound{zd, "shared", false}, nil
			}
			log.WithError(err).Warn("Copying zTOC from the shared artifact store failed")
		} else {
			cancel()
			if !errors.Is(err, artifact.ErrNotFound) {
				log.WithError(err).Warn("Shared artifact store unavailable")
			}
		}
	}
	// 4. A SOCI index in the image's registry.
	idx, err := s.registryIndex(ctx, ref, img)
	if err != nil {
		log.WithError(err).Debug("No SOCI index in the image's registry")
	} else if zdesc, ok := idx.ZtocFor(desc.Digest); ok {
		// lazypull's native layout pushed beside it: a small meta, windows
		// fetched with their spans. Either is as good as the registry.
		if nd, err := digest.Parse(zdesc.Annotations[ztoc.AnnotationNativeZtoc]); err == nil {
			if n, err := strconv.ParseInt(zdesc.Annotations[ztoc.AnnotationNativeZtocSize], 10, 64); err == nil && n > 0 {
				zdesc.Digest, zdesc.Size = nd, n
			}
		}
		if zdesc.Size > s.limits().MaxZtocSize {
			return ztocFound{}, fmt.Errorf("%w: zTOC %s of %d bytes is above the limit", ErrNoIndex, zdesc.Digest, zdesc.Size)
		}
		data, err := s.client.GetBlob(ctx, ref, zdesc.Digest)
		if err != nil {
			return ztocFound{}, fmt.Errorf("fetch zTOC %s: %w", zdesc.Digest, err)
		}
		if err := s.local.WriteBlob(ctx, zdesc.Digest, data); err != nil {
			return ztocFound{}, err
		}
		if err := s.local.WriteRef(ctx, artifact.LayerRef, scopedKey, zdesc.Digest); err != nil {
			return ztocFound{}, err
		}
		return ztocFound{zdesc.Digest, "registry", false}, nil
	}
	return ztocFound{}, ErrNoIndex
}

// findIn looks a layer's zTOC up in one backend: by layer, then through the
// image's SOCI index.
func (s *Store) findIn(ctx context.Context, b artifact.Backend, layerKey, imageKey string, layer digest.Digest) (digest.Digest, error) {
	zd, err := b.ReadRef(ctx, artifact.LayerRef, layerKey)
	if err == nil {
		return zd, nil
	}
	if !errors.Is(err, artifact.ErrNotFound) {
		return "", err
	}
	id, err := b.ReadRef(ctx, artifact.ImageRef, imageKey)
	if err != nil {
		return "", err
	}
	data, err := b.ReadBlob(ctx, id)
	if err != nil {
		return "", err
	}
	idx, err := ztoc.ParseIndex(data)
	if err != nil {
		return "", fmt.Errorf("SOCI index %s: %w", id, err)
	}
	zdesc, ok := idx.ZtocFor(layer)
	if !ok {
		return "", fmt.Errorf("layer %s not in SOCI index %s: %w", layer, id, artifact.ErrNotFound)
	}
	return zdesc.Digest, nil
}

// copyToLocal copies zTOC zd from b into the local store and maps key to
// it.
func (s *Store) copyToLocal(ctx context.Context, b artifact.Backend, zd digest.Digest, key string) error {
	if got, err := s.local.ReadRef(ctx, artifact.LayerRef, key); err == nil && got == zd {
		return nil
	}
	data, err := b.ReadBlob(ctx, zd)
	if err != nil {
		return err
	}
	if int64(len(data)) > s.limits().MaxZtocSize {
		return fmt.Errorf("zTOC %s of %d bytes is above the limit", zd, len(data))
	}
	if err := s.local.WriteBlob(ctx, zd, data); err != nil {
		return err
	}
	return s.local.WriteRef(ctx, artifact.LayerRef, key, zd)
}

// registryIndex finds a SOCI index for img in its registry, once per image
// manifest (the answer, found or not, is kept while the image is cached):
// the v2 annotation on the manifest, else v1 referrers (the OCI referrers
// API, or the sha256-<hex> tag fallback).
func (s *Store) registryIndex(ctx context.Context, ref reference.Named, img *remote.Image) (*ztoc.Index, error) {
	// Referrers live in a repository: the same manifest elsewhere may have
	// other (or no) indexes.
	key := scopeOf(ref) + "@" + img.ManifestDigest.String()
	v, err, _ := s.indexSF.Do(key, func() (any, error) {
		s.mu.Lock()
		e, ok := s.registryIndexes[key]
		s.mu.Unlock()
		if ok && time.Now().Before(e.expires) {
			return e, nil
		}
		e = s.searchRegistryIndex(ctx, ref, img)
		e.expires = time.Now().Add(time.Duration(s.cfg.Registry.ResolveCacheTTL))
		s.mu.Lock()
		s.registryIndexes[key] = e
		s.mu.Unlock()
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	e := v.(*registryIndexEntry)
	return e.idx, e.err
}

type registryIndexEntry struct {
	idx     *ztoc.Index
	err     error
	expires time.Time
}

func (s *Store) searchRegistryIndex(ctx context.Context, ref reference.Named, img *remote.Image) *registryIndexEntry {
	var tried []string
	// SOCI v2: the image manifest names its index.
	if d, ok := img.Annotations[ztoc.AnnotationSociIndexDigest]; ok {
		if idx, err := s.fetchSociIndex(ctx, ref, digest.Digest(d)); err == nil {
			return &registryIndexEntry{idx: idx}
		} else {
			tried = append(tried, fmt.Sprintf("v2 index %s: %v", d, err))
		}
	}
	// SOCI v1: referrers of the image manifest.
	refs, err := s.client.Referrers(ctx, ref, img.ManifestDigest, ztoc.MediaTypeSociIndexV1)
	if err != nil {
		tried = append(tried, fmt.Sprintf("referrers: %v", err))
	}
	for _, d := range ztoc.SelectSociV1Indexes(refs) {
		idx, err := s.fetchSociIndex(ctx, ref, d.Digest)
		if err == nil {
			return &registryIndexEntry{idx: idx}
		}
		tried = append(tried, fmt.Sprintf("v1 index %s: %v", d.Digest, err))
	}
	if len(tried) == 0 {
		return &registryIndexEntry{err: fmt.Errorf("%w: the registry has no SOCI index for %s", ErrNoIndex, img.ManifestDigest)}
	}
	return &registryIndexEntry{err: fmt.Errorf("%w: %s", ErrNoIndex, strings.Join(tried, "; "))}
}

func (s *Store) fetchSociIndex(ctx context.Context, ref reference.Named, d digest.Digest) (*ztoc.Index, error) {
	_, data, err := s.client.GetManifest(ctx, ref, d.String())
	if err != nil {
		return nil, err
	}
	return ztoc.ParseIndex(data)
}

// forgetZtoc drops a zTOC that turned out unusable or wrong (every mapping
// to it reads as missing once the blob is gone).
func (s *Store) forgetZtoc(layer, zd digest.Digest) {
	_ = s.local.DeleteBlob(zd)
	if got, err := s.local.ReadRef(context.Background(), artifact.LayerRef, artifact.LayerKey(layer, int64(s.cfg.Index.SpanSize))); err == nil && got == zd {
		_ = s.local.DeleteRef(artifact.LayerRef, artifact.LayerKey(layer, int64(s.cfg.Index.SpanSize)))
	}
}
