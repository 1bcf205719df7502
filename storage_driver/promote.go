package storagedriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containers/storage"
	"github.com/containers/storage/pkg/ioutils"
	"github.com/containers/storage/pkg/lockfile"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore"
	"github.com/lazypull/lazypull/layerstore/control"
)

// ErrNotVerified is returned by Promote when the layer store has not (yet)
// verified a lazily served layer of the image.
var ErrNotVerified = errors.New("storagedriver: layer not verified by the layer store")

// ErrCannotVerify is returned by Promote, at once rather than at its
// deadline, when the layer store will never verify a layer of the image as
// things stand: it cannot serve it (not running, the image gone from the
// registry, ...), it found it bad, or it neither prefetches nor verifies it
// (prefetch and verification off in its configuration).
var ErrCannotVerify = errors.New("storagedriver: the layer store cannot verify the layer")

// StatusFunc returns the layer store's status (control.Client.Status).
type StatusFunc func(ctx context.Context) (*control.Status, error)

// PromoteResult lists what Promote did.
type PromoteResult struct {
	// Promoted are the layers (by pseudo TOC digest) that got their DiffID.
	Promoted []digest.Digest
	// Verified are the lazily served layers identified by DiffID already
	// (IdentityDiffID), by blob digest, that the layer store has verified.
	Verified []digest.Digest
	// Already counts lazily pulled layers of the image that had it.
	Already int
}

// lazyLayer is a layer of the image served by the layer store.
type lazyLayer struct {
	id     string
	blob   digest.Digest // the digest the layer store serves it by
	diffID digest.Digest // to record, for a TOC-identified layer
	als    string        // the layer's directory in the layer store, if known
}

// Promote turns the lazily served layers of image (a name or ID in store)
// into ordinary, DiffID-identified layers once the layer store has fetched
// each of them completely and verified it as a whole (blob digest, DiffID
// from the image config, every tar header against the zTOC): the layer
// record gets its expected DiffID as uncompressed digest. From then on every
// containers/storage and containers/image version reads the image — podman
// 4.x lists, inspects, runs and saves it — and later ordinary pulls may
// reuse the layer, which is now as trustworthy as a downloaded one. The
// content is still served by the layer store. Lazily served layers that are
// identified by DiffID already (IdentityDiffID) are only waited for.
//
// Promote first asks the layer store to serve every such layer (a lookup of
// the layer's directory in its mount, as containers/storage does, so that a
// restarted store takes it up again), then waits up to wait for the store to
// verify them (it verifies a layer once its background prefetch or
// verification has fetched it all). It fails at once, with ErrCannotVerify
// and the reason, when the store cannot serve a layer, found one bad, or
// will not fetch one (prefetch and verification both off); a layer still
// unverified at the deadline is ErrNotVerified. Nothing of the image is
// changed unless every layer is verified.
func Promote(ctx context.Context, store storage.Store, image string, status StatusFunc, wait time.Duration) (*PromoteResult, error) {
	img, err := store.Image(image)
	if err != nil {
		return nil, fmt.Errorf("promote %s: %w", image, err)
	}
	res := &PromoteResult{}
	var todo []lazyLayer
	driverHome := filepath.Join(store.GraphRoot(), store.GraphDriverName())
	for id := img.TopLayer; id != ""; {
		l, err := store.Layer(id)
		if err != nil {
			return nil, fmt.Errorf("promote %s: layer %s: %w", image, id, err)
		}
		als := alsPath(driverHome, id)
		switch {
		case l.TOCDigest != "":
			want, _ := l.Flags[layerstore.ExpectedLayerDiffIDFlag].(string)
			switch {
			case l.UncompressedDigest != "":
				res.Already++
			case want != "":
				d, err := digest.Parse(want)
				if err != nil {
					return nil, fmt.Errorf("promote %s: layer %s: flag %s: %w", image, id, layerstore.ExpectedLayerDiffIDFlag, err)
				}
				todo = append(todo, lazyLayer{id: id, blob: l.TOCDigest, diffID: d, als: als})
			}
		case als != "" && l.CompressedDigest != "":
			todo = append(todo, lazyLayer{id: id, blob: l.CompressedDigest, als: als})
		}
		id = l.Parent
	}
	if len(todo) == 0 {
		return res, nil
	}
	deadline := time.Now().Add(wait)
	asked := false
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("promote %s: %w", image, err)
		}
		st, err := status(ctx)
		if err != nil {
			return nil, fmt.Errorf("promote %s: %w: layer store status: %w", image, ErrCannotVerify, err)
		}
		byDigest := make(map[string]control.LayerStatus, len(st.Layers))
		for _, l := range st.Layers {
			byDigest[l.Digest] = l
		}
		var waiting []string
		for _, p := range todo {
			ls, ok := byDigest[p.blob.String()]
			switch {
			case ok && ls.Bad != "":
				return nil, fmt.Errorf("promote %s: %w: layer %s failed verification: %s", image, ErrCannotVerify, p.blob, ls.Bad)
			case !ok && p.als != "":
				// Not served now (a restarted store): ask for it, as
				// containers/storage does when it looks a layer up.
				if err := askToServe(p.als); err != nil {
					return nil, fmt.Errorf("promote %s: %w: layer %s: %w", image, ErrCannotVerify, p.blob, err)
				}
				waiting = append(waiting, fmt.Sprintf("%s (asked the store to serve it)", p.blob))
			case !ok:
				waiting = append(waiting, fmt.Sprintf("%s (not served now)", p.blob))
			case !ls.Verified && ls.Prefetch == "off" && asked:
				return nil, fmt.Errorf("promote %s: %w: layer %s is neither prefetched nor verified by the layer store (prefetch.enabled and verification.enabled are off in its configuration); %d/%d spans fetched", image, ErrCannotVerify, p.blob, ls.SpansCached, ls.Spans)
			case !ls.Verified:
				proof := ""
				if ls.Proving {
					proof = fmt.Sprintf(", %d/%d spans proven", ls.SpansProven, ls.Spans)
				}
				waiting = append(waiting, fmt.Sprintf("%s (%d/%d spans fetched, prefetch %s%s)", p.blob, ls.SpansCached, ls.Spans, ls.Prefetch, proof))
			}
		}
		if len(waiting) == 0 {
			break
		}
		if !asked {
			// A layer the store serves but does not fetch may still be
			// taken up by a lookup (a fill that stopped starts again): ask
			// once before calling it hopeless.
			for _, p := range todo {
				if p.als != "" {
					if err := askToServe(p.als); err != nil {
						return nil, fmt.Errorf("promote %s: %w: layer %s: %w", image, ErrCannotVerify, p.blob, err)
					}
				}
			}
			asked = true
			continue
		}
		if time.Now().After(deadline) {
			sort.Strings(waiting)
			return nil, fmt.Errorf("promote %s: %w: %s", image, ErrNotVerified, strings.Join(waiting, ", "))
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("promote %s: %w", image, ctx.Err())
		case <-t.C:
		}
	}
	diffIDs := make(map[string]digest.Digest, len(todo))
	for _, p := range todo {
		if p.diffID != "" {
			diffIDs[p.id] = p.diffID
		}
	}
	if len(diffIDs) > 0 {
		if err := promoteRecords(store, diffIDs); err != nil {
			return nil, fmt.Errorf("promote %s: %w", image, err)
		}
	}
	for _, p := range todo {
		if p.diffID != "" {
			res.Promoted = append(res.Promoted, p.blob)
		} else {
			res.Verified = append(res.Verified, p.blob)
		}
	}
	return res, nil
}

// alsPath returns the layer store directory of the layer id that the overlay
// driver (home) recorded when it created the layer from the Additional Layer
// Store, or "" for other layers.
func alsPath(driverHome, id string) string {
	b, err := os.ReadFile(filepath.Join(driverHome, id, "additionallayer"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// askToServe looks the layer directory als up in the layer store's mount,
// which makes the store serve the layer (and its background fetch start) if
// it does not now; the error says why it cannot.
func askToServe(als string) error {
	if _, err := os.Stat(filepath.Join(als, "info")); err != nil {
		return fmt.Errorf("the layer store does not serve it (its log says why): %w", err)
	}
	return nil
}

// promoteRecords sets "diff-digest" of the given layer records in the
// store's layers.json, under the layer store's lock, recording the write so
// that every user of the store reloads (containers/storage has no API to
// change a layer's uncompressed digest).
func promoteRecords(store storage.Store, diffIDs map[string]digest.Digest) error {
	dir := filepath.Join(store.GraphRoot(), store.GraphDriverName()+"-layers")
	lk, err := lockfile.GetLockFile(filepath.Join(dir, "layers.lock"))
	if err != nil {
		return err
	}
	lk.Lock()
	defer lk.Unlock()
	path := filepath.Join(dir, "layers.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var records []map[string]json.RawMessage
	if err := json.Unmarshal(data, &records); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	found := 0
	for _, r := range records {
		var id string
		if json.Unmarshal(r["id"], &id) != nil {
			continue
		}
		d, ok := diffIDs[id]
		if !ok {
			continue
		}
		v, _ := json.Marshal(d.String())
		r["diff-digest"] = v
		found++
	}
	if found != len(diffIDs) {
		return fmt.Errorf("%d of %d layer records not in %s", len(diffIDs)-found, len(diffIDs), path)
	}
	out, err := json.Marshal(records)
	if err != nil {
		return err
	}
	if _, err := lk.RecordWrite(); err != nil {
		return err
	}
	return ioutils.AtomicWriteFile(path, out, 0o600)
}
