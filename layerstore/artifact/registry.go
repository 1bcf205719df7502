package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/layerstore/remote"
)

// RegistryClient is what the registry backend needs of a registry client;
// *remote.Client implements it.
type RegistryClient interface {
	GetBlob(ctx context.Context, repo reference.Named, dgst digest.Digest) ([]byte, error)
	PushBlob(ctx context.Context, repo reference.Named, dgst digest.Digest, size int64, r io.Reader) error
	GetManifest(ctx context.Context, repo reference.Named, tagOrDigest string) (ocispec.Descriptor, []byte, error)
	PutManifest(ctx context.Context, repo reference.Named, tagOrDigest, mediaType string, data []byte) (digest.Digest, error)
	Blob(repo reference.Named, dgst digest.Digest, size int64) (*remote.Blob, error)
}

var _ RegistryClient = (*remote.Client)(nil)

// Registry keeps artifacts in one repository of an OCI registry, shared by a
// fleet: blobs are pushed as blobs; a mapping is a tag
// ("lazypull-<kind>-<key>") on a small OCI manifest whose only layer is the
// target blob.
type Registry struct {
	c    RegistryClient
	repo reference.Named
}

var _ Backend = (*Registry)(nil)

// Artifact and config media types of mapping manifests.
const (
	MediaTypeMapping = "application/vnd.lazypull.mapping.v1+json"
	mediaTypeTarget  = "application/octet-stream"
)

// NewRegistry returns the backend for repository repo ("host/path").
func NewRegistry(c RegistryClient, repo reference.Named) *Registry {
	return &Registry{c: c, repo: reference.TrimNamed(repo)}
}

func tagFor(kind RefKind, key string) (string, error) {
	if !validKind(kind) {
		return "", fmt.Errorf("artifact: unknown mapping kind %q", kind)
	}
	if len(key) != 64 {
		return "", fmt.Errorf("artifact: invalid mapping key %q", key)
	}
	return "lazypull-" + string(kind) + "-" + key, nil
}

func notFound(err error) error {
	if errors.Is(err, remote.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// BlobRanges returns the blob d (of size bytes) of the repository for range
// reads (e.g. windows of a native zTOC, one at a time).
func (r *Registry) BlobRanges(d digest.Digest, size int64) (*remote.Blob, error) {
	return r.c.Blob(r.repo, d, size)
}

// ReadBlob implements Backend.
func (r *Registry) ReadBlob(ctx context.Context, d digest.Digest) ([]byte, error) {
	data, err := r.c.GetBlob(ctx, r.repo, d)
	if err != nil {
		return nil, fmt.Errorf("artifact: blob %s from %s: %w", d, r.repo, notFound(err))
	}
	if err := verify(d, data); err != nil {
		return nil, err
	}
	return data, nil
}

// WriteBlob implements Backend.
func (r *Registry) WriteBlob(ctx context.Context, d digest.Digest, data []byte) error {
	if err := verify(d, data); err != nil {
		return err
	}
	if err := r.c.PushBlob(ctx, r.repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
		return fmt.Errorf("artifact: push blob %s to %s: %w", d, r.repo, err)
	}
	return nil
}

// ReadRef implements Backend.
func (r *Registry) ReadRef(ctx context.Context, kind RefKind, key string) (digest.Digest, error) {
	tag, err := tagFor(kind, key)
	if err != nil {
		return "", err
	}
	_, data, err := r.c.GetManifest(ctx, r.repo, tag)
	if err != nil {
		return "", fmt.Errorf("artifact: %s mapping %s in %s: %w", kind, key, r.repo, notFound(err))
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return "", fmt.Errorf("artifact: %s mapping %s: %w", kind, key, err)
	}
	if m.ArtifactType != MediaTypeMapping || len(m.Layers) != 1 {
		return "", fmt.Errorf("artifact: %s mapping %s is not a lazypull mapping", kind, key)
	}
	d := m.Layers[0].Digest
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("artifact: %s mapping %s: %w", kind, key, err)
	}
	return d, nil
}

// emptyConfig is the config blob of mapping manifests.
var emptyConfig = []byte("{}")

// WriteRef implements Backend. The target blob must exist in the repository
// (registries refuse manifests that name missing blobs).
func (r *Registry) WriteRef(ctx context.Context, kind RefKind, key string, target digest.Digest) error {
	tag, err := tagFor(kind, key)
	if err != nil {
		return err
	}
	cfg := digest.FromBytes(emptyConfig)
	if err := r.c.PushBlob(ctx, r.repo, cfg, int64(len(emptyConfig)), bytes.NewReader(emptyConfig)); err != nil {
		return fmt.Errorf("artifact: push config to %s: %w", r.repo, err)
	}
	// The target's size is needed for the descriptor: read it back (small).
	data, err := r.c.GetBlob(ctx, r.repo, target)
	if err != nil {
		return fmt.Errorf("artifact: mapping target %s: %w", target, notFound(err))
	}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: MediaTypeMapping,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: cfg, Size: int64(len(emptyConfig))},
		Layers:       []ocispec.Descriptor{{MediaType: mediaTypeTarget, Digest: target, Size: int64(len(data))}},
		Annotations:  map[string]string{"io.github.lazypull.mapping": string(kind)},
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := r.c.PutManifest(ctx, r.repo, tag, ocispec.MediaTypeImageManifest, b); err != nil {
		return fmt.Errorf("artifact: tag %s in %s: %w", tag, r.repo, err)
	}
	return nil
}
