package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/manifest"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is a resolved single-platform image.
type Image struct {
	// Ref is the reference that was resolved (":latest" added to bare
	// names).
	Ref reference.Named
	// IndexDigest and Index are the manifest list / OCI index the
	// reference pointed to, when it pointed to one ("" / nil otherwise).
	IndexDigest digest.Digest
	Index       []byte
	// Manifest is the image manifest as served, ManifestDigest its digest
	// (computed; verified when Ref is by digest), MediaType its media type.
	Manifest       []byte
	ManifestDigest digest.Digest
	MediaType      string
	// Annotations are the manifest's annotations (e.g. a SOCI v2 index
	// digest under com.amazon.soci.index-digest).
	Annotations map[string]string
	// Config is the verified image configuration, ConfigDigest its digest.
	Config       []byte
	ConfigDigest digest.Digest
	// Layers are the manifest's layers, bottom first, with the DiffIDs of
	// the configuration.
	Layers []Layer
}

// Layer is one layer of an Image.
type Layer struct {
	Digest      digest.Digest
	Size        int64
	MediaType   string
	Annotations map[string]string
	// DiffID is the digest of the uncompressed layer, from the config.
	DiffID digest.Digest
}

// Accept lists.
var (
	imageManifestTypes = []string{ocispec.MediaTypeImageManifest, manifest.DockerV2Schema2MediaType}
	listTypes          = []string{ocispec.MediaTypeImageIndex, manifest.DockerV2ListMediaType}
)

// Resolve fetches the manifest of ref (a tag or a digest; bare names get
// ":latest"), picks the host platform's manifest from a manifest list or OCI
// index the way podman does, and fetches and verifies the image config.
func (c *Client) Resolve(ctx context.Context, ref reference.Named) (*Image, error) {
	ref = reference.TagNameOnly(ref)
	var tagOrDigest string
	switch r := ref.(type) {
	case reference.Canonical:
		tagOrDigest = r.Digest().String()
	case reference.Tagged:
		tagOrDigest = r.Tag()
	}
	img, err := c.resolve(ctx, ref, tagOrDigest)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", ref.String(), err)
	}
	return img, nil
}

func (c *Client) resolve(ctx context.Context, ref reference.Named, tagOrDigest string) (*Image, error) {
	desc, data, err := c.getManifest(ctx, ref, tagOrDigest, append(append([]string(nil), imageManifestTypes...), listTypes...))
	if err != nil {
		return nil, err
	}
	img := &Image{Ref: ref}
	if manifest.MIMETypeIsMultiImage(desc.MediaType) {
		list, err := manifest.ListFromBlob(data, desc.MediaType)
		if err != nil {
			return nil, fmt.Errorf("parse manifest list %s: %w", desc.Digest, ErrInvalidResponse)
		}
		instance, err := list.ChooseInstance(c.platformContext())
		if err != nil {
			return nil, fmt.Errorf("manifest list %s: %w (%w)", desc.Digest, ErrNotFound, err)
		}
		img.IndexDigest, img.Index = desc.Digest, data
		if desc, data, err = c.getManifest(ctx, ref, instance.String(), imageManifestTypes); err != nil {
			return nil, err
		}
		if manifest.MIMETypeIsMultiImage(desc.MediaType) {
			return nil, fmt.Errorf("manifest list %s points to another list %s: %w", img.IndexDigest, desc.Digest, ErrUnsupported)
		}
	}
	switch desc.MediaType {
	case ocispec.MediaTypeImageManifest, manifest.DockerV2Schema2MediaType:
	default:
		return nil, fmt.Errorf("manifest %s of type %q: %w", desc.Digest, desc.MediaType, ErrUnsupported)
	}
	m, err := manifest.FromBlob(data, desc.MediaType)
	if err != nil {
		return nil, fmt.Errorf("parse manifest %s: %w (%w)", desc.Digest, ErrInvalidResponse, err)
	}
	var extra struct {
		SchemaVersion int               `json:"schemaVersion"`
		Annotations   map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &extra); err != nil || extra.SchemaVersion != 2 {
		return nil, fmt.Errorf("manifest %s: schemaVersion %d: %w", desc.Digest, extra.SchemaVersion, ErrUnsupported)
	}
	img.Manifest, img.ManifestDigest, img.MediaType, img.Annotations = data, desc.Digest, desc.MediaType, extra.Annotations

	cfg := m.ConfigInfo()
	if cfg.Size > c.opts.MaxManifestSize {
		return nil, fmt.Errorf("config %s of %d bytes: %w", cfg.Digest, cfg.Size, ErrTooLarge)
	}
	img.ConfigDigest = cfg.Digest
	if img.Config, err = c.getBlob(ctx, ref, cfg.Digest, c.opts.MaxManifestSize, &c.stats.manifestBytes); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if cfg.Size >= 0 && int64(len(img.Config)) != cfg.Size {
		return nil, fmt.Errorf("config %s: %d bytes, manifest says %d: %w", cfg.Digest, len(img.Config), cfg.Size, ErrInvalidResponse)
	}
	var config struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(img.Config, &config); err != nil {
		return nil, fmt.Errorf("parse config %s: %w (%w)", cfg.Digest, ErrInvalidResponse, err)
	}
	layers := m.LayerInfos()
	if len(config.RootFS.DiffIDs) != len(layers) {
		return nil, fmt.Errorf("manifest %s has %d layers, config %s %d diff_ids: %w",
			desc.Digest, len(layers), cfg.Digest, len(config.RootFS.DiffIDs), ErrInvalidResponse)
	}
	for i, l := range layers {
		if err := l.Digest.Validate(); err != nil || l.Size < 0 {
			return nil, fmt.Errorf("manifest %s layer %d: digest %q size %d: %w", desc.Digest, i, l.Digest, l.Size, ErrInvalidResponse)
		}
		img.Layers = append(img.Layers, Layer{
			Digest:      l.Digest,
			Size:        l.Size,
			MediaType:   l.MediaType,
			Annotations: l.Annotations,
			DiffID:      config.RootFS.DiffIDs[i],
		})
	}
	return img, nil
}

// GetManifest fetches the manifest (or index) tagOrDigest of repo with any
// supported media type. The descriptor's digest is computed (and verified
// when tagOrDigest is a digest); its media type comes from Content-Type, or
// from the content when the registry sends none.
func (c *Client) GetManifest(ctx context.Context, repo reference.Named, tagOrDigest string) (ocispec.Descriptor, []byte, error) {
	desc, data, err := c.getManifest(ctx, repo, tagOrDigest, append(append([]string(nil), imageManifestTypes...), listTypes...))
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("get manifest %s of %s: %w", tagOrDigest, repo.Name(), err)
	}
	return desc, data, nil
}

// getManifest fetches manifest tagOrDigest of ref's repository from ref's
// endpoints (mirrors first), with retries.
func (c *Client) getManifest(ctx context.Context, ref reference.Named, tagOrDigest string, accept []string) (ocispec.Descriptor, []byte, error) {
	var (
		desc ocispec.Descriptor
		data []byte
	)
	key := "" // a tag's failures are not remembered
	if strings.Contains(tagOrDigest, ":") {
		key = tagOrDigest
	}
	err := c.retry(ctx, func(int) error {
		return c.onEndpoints(ctx, ref, pullActions, key, "manifest "+tagOrDigest, func(ctx context.Context, rc *repoClient) error {
			var err error
			desc, data, err = rc.getManifest(ctx, tagOrDigest, accept)
			return err
		})
	})
	return desc, data, err
}

// getManifest does one attempt to fetch manifest tagOrDigest from r.
func (r *repoClient) getManifest(ctx context.Context, tagOrDigest string, accept []string) (ocispec.Descriptor, []byte, error) {
	want, byDigest := digest.Digest(tagOrDigest), strings.Contains(tagOrDigest, ":")
	if byDigest {
		if err := want.Validate(); err != nil {
			return ocispec.Descriptor{}, nil, fmt.Errorf("digest %q: %w", tagOrDigest, ErrUnsupported)
		}
	}
	var (
		data        []byte
		contentType string
	)
	err := func() error {
		ctx, cancel := context.WithTimeout(ctx, r.c.opts.RequestTimeout)
		defer cancel()
		resp, err := awaitHeaders(r.c.opts.FirstByteTimeout, cancel, func() (*http.Response, error) {
			resp, _, err := r.do(ctx, http.MethodGet, r.url("manifests/"+tagOrDigest, nil),
				http.Header{"Accept": {strings.Join(accept, ", ")}})
			return resp, err
		})
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return responseError(resp)
		}
		contentType = resp.Header.Get("Content-Type")
		data, err = readLimited(resp, r.c.opts.MaxManifestSize, &r.c.stats.manifestBytes)
		return err
	}()
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	desc := ocispec.Descriptor{MediaType: manifestMediaType(contentType, data), Size: int64(len(data))}
	if byDigest {
		if err := verifyDigest(data, want); err != nil {
			return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: %w", want, err)
		}
		desc.Digest = want
	} else {
		desc.Digest = digest.FromBytes(data)
	}
	if strings.HasPrefix(desc.MediaType, "application/vnd.docker.distribution.manifest.v1") {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: schema1 (%s): %w", desc.Digest, desc.MediaType, ErrUnsupported)
	}
	return desc, data, nil
}

// manifestMediaType is the media type from Content-Type, or guessed from the
// content when the header is missing or generic.
func manifestMediaType(contentType string, data []byte) string {
	mt, _, err := mime.ParseMediaType(contentType)
	switch {
	case err != nil, mt == "", mt == "text/plain", mt == "application/json", mt == "application/octet-stream":
		return manifest.GuessMIMEType(data)
	}
	return manifest.NormalizedMIMEType(mt)
}

// readLimited reads resp's body, refusing more than limit bytes.
func readLimited(resp *http.Response, limit int64, counter *atomic.Int64) ([]byte, error) {
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%d bytes, limit %d: %w", resp.ContentLength, limit, ErrTooLarge)
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(countBody(resp.Body, counter), limit+1))
	if err != nil {
		return nil, truncated(err)
	}
	if n > limit {
		return nil, fmt.Errorf("more than %d bytes: %w", limit, ErrTooLarge)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return nil, truncated(nil)
	}
	return buf.Bytes(), nil
}

// GetBlob fetches a small blob (at most Options.MaxBlobInMemory bytes) into
// memory and verifies its digest.
func (c *Client) GetBlob(ctx context.Context, repo reference.Named, dgst digest.Digest) ([]byte, error) {
	data, err := c.getBlob(ctx, repo, dgst, c.opts.MaxBlobInMemory, &c.stats.fullBytes)
	if err != nil {
		return nil, fmt.Errorf("get blob %s of %s: %w", dgst, repo.Name(), err)
	}
	return data, nil
}

func (c *Client) getBlob(ctx context.Context, repo reference.Named, dgst digest.Digest, limit int64, counter *atomic.Int64) ([]byte, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("digest %q: %w", dgst, ErrUnsupported)
	}
	b := &Blob{c: c, repo: repo, digest: dgst, size: -1}
	var data []byte
	err := c.retry(ctx, func(int) error {
		return c.onEndpoints(ctx, repo, pullActions, dgst.String(), "blob", func(ctx context.Context, rc *repoClient) error {
			ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
			defer cancel()
			resp, err := awaitHeaders(rc.firstByte, cancel, func() (*http.Response, error) { return b.get(ctx, rc, "") })
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return responseError(resp)
			}
			if data, err = readLimited(resp, limit, counter); err != nil {
				return err
			}
			// A mirror serving other content is left out for this blob.
			return verifyDigest(data, dgst)
		})
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}
