package storagedriver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containers/image/v5/pkg/blobinfocache/none"
	"github.com/containers/image/v5/pkg/compression"
	"github.com/containers/image/v5/types"
	"github.com/containers/storage"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore"
)

// download fetches the blob of layer i into a file under lp.tmp, checking
// its size and digest against the manifest and, decompressing it on the way,
// its DiffID against the config. It returns the file and the (now trusted)
// DiffID.
func (lp *layerPuller) download(ctx context.Context, i int) (string, digest.Digest, error) {
	blob := lp.plan.layers[i]
	rc, _, err := lp.src.GetBlob(ctx, blob, none.NoCache)
	if err != nil {
		return "", "", fmt.Errorf("fetch blob: %w", err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(lp.tmp, "layer-")
	if err != nil {
		return "", "", fmt.Errorf("temporary file: %w", err)
	}
	name := f.Name()
	size, blobDigest, diffID, err := copyAndDigest(f, rc)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write %s: %w", name, cerr)
	}
	if err != nil {
		os.Remove(name)
		return "", "", err
	}
	switch {
	case blob.Size >= 0 && size != blob.Size:
		err = fmt.Errorf("%w: got %d bytes, the manifest says %d", ErrDigestMismatch, size, blob.Size)
	case blobDigest != blob.Digest:
		err = fmt.Errorf("%w: got %s", ErrDigestMismatch, blobDigest)
	case lp.plan.diffID(i) != "" && diffID != lp.plan.diffID(i):
		err = fmt.Errorf("%w: got %s, the config says %s", ErrDiffIDMismatch, diffID, lp.plan.diffID(i))
	}
	if err != nil {
		os.Remove(name)
		return "", "", err
	}
	return name, diffID, nil
}

// copyAndDigest copies r to w and returns the number of bytes, their
// sha256 digest and the sha256 digest of their decompressed form (the
// DiffID; r itself when it is not compressed). Decompression runs beside the
// copy, so the DiffID costs no second pass.
func copyAndDigest(w io.Writer, r io.Reader) (int64, digest.Digest, digest.Digest, error) {
	blobHash := digest.Canonical.Digester()
	pr, pw := io.Pipe()
	type result struct {
		d   digest.Digest
		err error
	}
	done := make(chan result, 1)
	go func() { // owned by copyAndDigest, which waits for it below
		d, err := diffIDOf(pr)
		pr.CloseWithError(err) // lets the copy below fail instead of blocking
		done <- result{d, err}
	}()
	n, err := io.Copy(io.MultiWriter(w, blobHash.Hash(), pw), r)
	pw.CloseWithError(err) // nil: the decompressor sees EOF
	res := <-done
	if err != nil {
		if res.err != nil && errors.Is(err, io.ErrClosedPipe) {
			err = res.err
		}
		return 0, "", "", fmt.Errorf("read blob: %w", err)
	}
	if res.err != nil {
		return 0, "", "", fmt.Errorf("decompress blob: %w", res.err)
	}
	return n, blobHash.Digest(), res.d, nil
}

// diffIDOf returns the digest of r's decompressed content and consumes r to
// its end (data after the compressed stream included).
func diffIDOf(r io.Reader) (digest.Digest, error) {
	dr, _, err := compression.AutoDecompress(r)
	if err != nil {
		return "", err
	}
	h := digest.Canonical.Digester()
	_, err = io.Copy(h.Hash(), dr)
	if cerr := dr.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return "", err
	}
	return h.Digest(), nil
}

// commitAll creates the layers in order, each on top of the previous one.
func (lp *layerPuller) commitAll(ctx context.Context) ([]LayerResult, error) {
	results := make([]LayerResult, len(lp.plan.layers))
	parent := ""
	for i, blob := range lp.plan.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		res, err := lp.commit(ctx, i, parent)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, blob.Digest, err)
		}
		res.Index, res.Digest, res.Size = i, blob.Digest, blob.Size
		results[i] = res
		lp.log.WithFields(map[string]any{"layer": blob.Digest, "id": res.ID, "source": res.Source}).Debug("Layer in the store")
		if lp.opts.Progress != nil {
			lp.opts.Progress(res)
		}
		parent = res.ID
	}
	return results, nil
}

// commit puts layer i on top of parent, reusing a layer with the same ID.
func (lp *layerPuller) commit(ctx context.Context, i int, parent string) (LayerResult, error) {
	pl := &lp.prepared[i]
	id := LayerID(parent, pl.identity)
	if lp.hasLayer(id) {
		return LayerResult{ID: id, Identity: pl.identity, Source: SourceReused}, nil
	}
	switch {
	case pl.al != nil:
		res, err := lp.putLazy(i, parent, id, pl)
		if err == nil {
			return res, nil
		}
		// Whatever went wrong with the layer store (a daemon restarted
		// meanwhile, an unsafe identity), the layer can still be pulled.
		lp.log.WithError(err).WithField("layer", lp.plan.layers[i].Digest).Warn("Pulling the layer instead of serving it lazily")
		return lp.pullNow(ctx, i, parent)
	case pl.file != "":
		return lp.putFile(parent, id, i, pl)
	default:
		// The blob is in the store, but under another parent: fetch it.
		return lp.pullNow(ctx, i, parent)
	}
}

// hasLayer reports whether the store has a layer with this ID.
func (lp *layerPuller) hasLayer(id string) bool {
	storeMu.Lock()
	defer storeMu.Unlock()
	l, err := lp.store.Layer(id)
	return err == nil && l != nil
}

// pullNow downloads layer i and puts it on top of parent.
func (lp *layerPuller) pullNow(ctx context.Context, i int, parent string) (LayerResult, error) {
	file, diffID, err := lp.download(ctx, i)
	if err != nil {
		return LayerResult{}, err
	}
	pl := &lp.prepared[i]
	if pl.al != nil {
		pl.al.Release()
		pl.al = nil
	}
	pl.identity, pl.file = LayerIdentity{DiffID: diffID}, file
	id := LayerID(parent, pl.identity)
	if lp.hasLayer(id) {
		return LayerResult{ID: id, Identity: pl.identity, Source: SourceReused}, nil
	}
	return lp.putFile(parent, id, i, pl)
}

// putLazy creates the layer from the Additional Layer Store and checks the
// identity the store gave it.
func (lp *layerPuller) putLazy(i int, parent, id string, pl *preparedLayer) (LayerResult, error) {
	storeMu.Lock()
	defer storeMu.Unlock()
	layer, err := pl.al.PutAs(id, parent, nil)
	if errors.Is(err, storage.ErrDuplicateID) { // created meanwhile by a concurrent pull
		return LayerResult{ID: id, Identity: pl.identity, Source: SourceReused}, nil
	}
	if err != nil {
		return LayerResult{}, fmt.Errorf("create layer %s from the Additional Layer Store: %w", id, err)
	}
	if pl.identity.ByTOC() {
		err = checkLazyIdentity(layer, lp.plan.layers[i].Digest, lp.plan.diffID(i))
	} else {
		err = checkLazyDiffID(layer, lp.plan.layers[i], pl.identity.DiffID)
	}
	if err == nil {
		err = persistLayer(lp.store, layer)
	}
	if err != nil {
		if derr := lp.store.DeleteLayer(id); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove layer %s: %w", id, derr))
		}
		return LayerResult{}, err
	}
	return LayerResult{ID: id, Identity: pl.identity, Source: SourceLazy}, nil
}

// checkLazyIdentity checks that a layer created from the Additional Layer
// Store carries only the pseudo-TOC identity: a compressed or uncompressed
// digest would put unverified content into containers/storage's
// de-duplication indexes.
func checkLazyIdentity(l *storage.Layer, blob, wantDiffID digest.Digest) error {
	switch {
	case l.CompressedDigest != "" || l.UncompressedDigest != "":
		return fmt.Errorf("%w: compressed digest %q, uncompressed digest %q", ErrUnsafeIdentity, l.CompressedDigest, l.UncompressedDigest)
	case l.TOCDigest != blob:
		return fmt.Errorf("%w: TOC digest %q, want %s", ErrUnsafeIdentity, l.TOCDigest, blob)
	}
	got, _ := l.Flags[layerstore.ExpectedLayerDiffIDFlag].(string)
	if got == "" || (wantDiffID != "" && got != wantDiffID.String()) {
		return fmt.Errorf("%w: flag %s is %q, the config says %q", ErrUnsafeIdentity, layerstore.ExpectedLayerDiffIDFlag, got, wantDiffID)
	}
	return nil
}

// checkLazyDiffID checks that a layer created from the Additional Layer
// Store for IdentityDiffID carries the record a download of blob would
// write: its compressed digest and size, the config's DiffID, the tar
// stream's exact length (containers/storage takes it as the layer's size
// instead of walking its files, and buildah as the size of the uncompressed
// blob), and no TOC digest.
func checkLazyDiffID(l *storage.Layer, blob types.BlobInfo, diffID digest.Digest) error {
	switch {
	case l.TOCDigest != "":
		return fmt.Errorf("%w: TOC digest %q on a layer asked for by DiffID", ErrUnsafeIdentity, l.TOCDigest)
	case l.CompressedDigest != blob.Digest || (blob.Size >= 0 && l.CompressedSize != blob.Size):
		return fmt.Errorf("%w: compressed digest %q size %d, want %s size %d", ErrUnsafeIdentity, l.CompressedDigest, l.CompressedSize, blob.Digest, blob.Size)
	case l.UncompressedDigest != diffID:
		return fmt.Errorf("%w: uncompressed digest %q, the config says %s", ErrUnsafeIdentity, l.UncompressedDigest, diffID)
	case l.UncompressedSize <= 0:
		return fmt.Errorf("%w: unknown uncompressed size %d", ErrUnsafeIdentity, l.UncompressedSize)
	}
	return nil
}

// putFile extracts the verified blob of layer i into a new layer.
func (lp *layerPuller) putFile(parent, id string, i int, pl *preparedLayer) (LayerResult, error) {
	f, err := os.Open(pl.file)
	if err != nil {
		return LayerResult{}, fmt.Errorf("open downloaded blob: %w", err)
	}
	defer f.Close()
	blob := lp.plan.layers[i]
	fi, err := f.Stat()
	if err != nil {
		return LayerResult{}, fmt.Errorf("downloaded blob: %w", err)
	}
	size := fi.Size()
	storeMu.Lock()
	defer storeMu.Unlock()
	_, _, err = lp.store.PutLayer(id, parent, nil, "", false, &storage.LayerOptions{
		OriginalDigest:     blob.Digest,
		OriginalSize:       &size,
		UncompressedDigest: pl.identity.DiffID,
	}, f)
	if err != nil && !errors.Is(err, storage.ErrDuplicateID) {
		return LayerResult{}, fmt.Errorf("create layer %s: %w", id, err)
	}
	os.Remove(pl.file)
	pl.file = "" // consumed
	return LayerResult{ID: id, Identity: pl.identity, Source: SourcePulled}, nil
}
