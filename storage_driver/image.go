package storagedriver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/manifest"
	"github.com/containers/storage"
	digest "github.com/opencontainers/go-digest"
)

// imageMetadata is the JSON containers/image keeps in Image.Metadata: the
// sizes of the concatenated signatures (its storageImageMetadata).
type imageMetadata struct {
	SignatureSizes  []int                   `json:"signature-sizes,omitempty"`
	SignaturesSizes map[digest.Digest][]int `json:"signatures-sizes,omitempty"`
}

// imageOptions returns the image record's data as containers/image v5.36's
// storage destination writes it: creation date from the config; the config
// under its digest; the manifest under "manifest-<digest>" and "manifest"
// (and a manifest list it came from under its own digest); signatures.
func imageOptions(p *plan) (*storage.ImageOptions, error) {
	o := &storage.ImageOptions{CreationDate: p.created}
	o.BigData = append(o.BigData, storage.ImageBigDataOption{
		Key: p.configDigest.String(), Data: p.config, Digest: digest.Canonical.FromBytes(p.config),
	})
	if !bytes.Equal(p.topManifest, p.manifest) {
		td, err := manifest.Digest(p.topManifest)
		if err != nil {
			return nil, fmt.Errorf("manifest list digest: %w", err)
		}
		o.BigData = append(o.BigData, storage.ImageBigDataOption{
			Key: manifestKey(td), Data: p.topManifest, Digest: td,
		})
	}
	o.BigData = append(o.BigData,
		storage.ImageBigDataOption{Key: manifestKey(p.manifestDigest), Data: p.manifest, Digest: p.manifestDigest},
		storage.ImageBigDataOption{Key: storage.ImageDigestBigDataKey, Data: p.manifest, Digest: p.manifestDigest},
	)
	meta := imageMetadata{SignaturesSizes: map[digest.Digest][]int{}}
	if len(p.signatures) > 0 {
		var all []byte
		sizes := make([]int, 0, len(p.signatures))
		for _, s := range p.signatures {
			all = append(all, s...)
			sizes = append(sizes, len(s))
		}
		meta.SignatureSizes = sizes
		meta.SignaturesSizes[p.manifestDigest] = sizes
		sum := digest.Canonical.FromBytes(all)
		o.BigData = append(o.BigData,
			storage.ImageBigDataOption{Key: "signatures", Data: all, Digest: sum},
			storage.ImageBigDataOption{Key: "signature-" + p.manifestDigest.Encoded(), Data: all, Digest: sum},
		)
	}
	m, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("image metadata: %w", err)
	}
	o.Metadata = string(m)
	return o, nil
}

// manifestKey is the BigData key of a manifest by digest
// ("manifest-sha256:...").
func manifestKey(d digest.Digest) string {
	return storage.ImageDigestManifestBigDataNamePrefix + "-" + d.String()
}

// commitImage creates (or updates) the image record on top of the pulled
// layers and names it ref, as containers/image's storage destination does.
func commitImage(store storage.Store, ref reference.Named, p *plan, layers []LayerResult) (string, error) {
	ids := make([]LayerIdentity, len(layers))
	top := ""
	for i, l := range layers {
		ids[i] = l.Identity
		top = l.ID
	}
	id := ImageID(p.configDigest, ids)
	opts, err := imageOptions(p)
	if err != nil {
		return "", err
	}
	img, err := store.CreateImage(id, nil, top, "", opts)
	existed := false
	if errors.Is(err, storage.ErrDuplicateID) {
		existed = true
		if img, err = store.Image(id); err != nil {
			return "", fmt.Errorf("read image %s: %w", id, err)
		}
		if img.TopLayer != top {
			return "", fmt.Errorf("image %s exists with top layer %s, not %s: %w", id, img.TopLayer, top, storage.ErrDuplicateID)
		}
		for _, bd := range opts.BigData {
			if err := store.SetImageBigData(id, bd.Key, bd.Data, manifest.Digest); err != nil {
				return "", fmt.Errorf("image %s: save %s: %w", id, bd.Key, err)
			}
		}
		if err := store.SetMetadata(id, opts.Metadata); err != nil {
			return "", fmt.Errorf("image %s: save metadata: %w", id, err)
		}
	} else if err != nil {
		return "", fmt.Errorf("create image %s: %w", id, err)
	}
	if err := store.AddNames(img.ID, []string{ref.String()}); err != nil {
		if !existed {
			if _, derr := store.DeleteImage(img.ID, true); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove incomplete image: %w", derr))
			}
		}
		return "", fmt.Errorf("name image %s %s: %w", img.ID, ref, err)
	}
	return img.ID, nil
}
