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

// StatusFunc returns the layer store's status (control.Client.Status).
type StatusFunc func(ctx context.Context) (*control.Status, error)

// PromoteResult lists what Promote did.
type PromoteResult struct {
	// Promoted are the layers (by pseudo TOC digest) that got their DiffID.
	Promoted []digest.Digest
	// Already counts lazily pulled layers of the image that had it.
	Already int
}

// Promote turns the lazily served layers of image (a name or ID in store)
// into ordinary, DiffID-identified layers once the layer store has fetched
// each of them completely and verified it as a whole (blob digest, DiffID
// from the image config, every tar header against the zTOC): the layer
// record gets its expected DiffID as uncompressed digest. From then on every
// containers/storage and containers/image version reads the image — podman
// 4.x lists, inspects, runs and saves it — and later ordinary pulls may
// reuse the layer, which is now as trustworthy as a downloaded one. The
// content is still served by the layer store.
//
// Promote waits up to wait for the layer store to finish (it verifies a
// layer once its background prefetch has fetched it all; prefetch must be
// enabled); a layer found bad, or still unverified at the deadline, is an
// error and nothing of the image is changed.
func Promote(ctx context.Context, store storage.Store, image string, status StatusFunc, wait time.Duration) (*PromoteResult, error) {
	img, err := store.Image(image)
	if err != nil {
		return nil, fmt.Errorf("promote %s: %w", image, err)
	}
	res := &PromoteResult{}
	type pending struct {
		id     string
		toc    digest.Digest
		diffID digest.Digest
	}
	var todo []pending
	for id := img.TopLayer; id != ""; {
		l, err := store.Layer(id)
		if err != nil {
			return nil, fmt.Errorf("promote %s: layer %s: %w", image, id, err)
		}
		if l.TOCDigest != "" {
			want, _ := l.Flags[layerstore.ExpectedLayerDiffIDFlag].(string)
			switch {
			case l.UncompressedDigest != "":
				res.Already++
			case want != "":
				d, err := digest.Parse(want)
				if err != nil {
					return nil, fmt.Errorf("promote %s: layer %s: flag %s: %w", image, id, layerstore.ExpectedLayerDiffIDFlag, err)
				}
				todo = append(todo, pending{id: id, toc: l.TOCDigest, diffID: d})
			}
		}
		id = l.Parent
	}
	if len(todo) == 0 {
		return res, nil
	}
	deadline := time.Now().Add(wait)
	for {
		st, err := status(ctx)
		if err != nil {
			return nil, fmt.Errorf("promote %s: layer store status: %w", image, err)
		}
		byDigest := make(map[string]control.LayerStatus, len(st.Layers))
		for _, l := range st.Layers {
			byDigest[l.Digest] = l
		}
		var waiting []string
		for _, p := range todo {
			ls, ok := byDigest[p.toc.String()]
			switch {
			case ok && ls.Bad != "":
				return nil, fmt.Errorf("promote %s: layer %s failed verification: %s", image, p.toc, ls.Bad)
			case !ok:
				waiting = append(waiting, fmt.Sprintf("%s (not served now)", p.toc))
			case !ls.Verified:
				waiting = append(waiting, fmt.Sprintf("%s (%d/%d spans fetched, prefetch %s)", p.toc, ls.SpansCached, ls.Spans, ls.Prefetch))
			}
		}
		if len(waiting) == 0 {
			break
		}
		if time.Now().After(deadline) {
			sort.Strings(waiting)
			return nil, fmt.Errorf("promote %s: %w: %s", image, ErrNotVerified, strings.Join(waiting, ", "))
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	diffIDs := make(map[string]digest.Digest, len(todo))
	for _, p := range todo {
		diffIDs[p.id] = p.diffID
	}
	if err := promoteRecords(store, diffIDs); err != nil {
		return nil, fmt.Errorf("promote %s: %w", image, err)
	}
	for _, p := range todo {
		res.Promoted = append(res.Promoted, p.toc)
	}
	return res, nil
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
