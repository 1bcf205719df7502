package imagegen

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
)

// Media types the generator writes.
const (
	MediaTypeOCIIndex        = "application/vnd.oci.image.index.v1+json"
	MediaTypeOCIManifest     = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIConfig       = "application/vnd.oci.image.config.v1+json"
	MediaTypeOCILayer        = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeOCILayerGzip    = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeOCILayerZstd    = "application/vnd.oci.image.layer.v1.tar+zstd"
	MediaTypeDockerManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerConfig    = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer     = "application/vnd.docker.image.rootfs.diff.tar"
	MediaTypeDockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	AnnotationRefName        = "org.opencontainers.image.ref.name"
	layoutRefName            = "latest"
	imageLayoutVersion       = `{"imageLayoutVersion":"1.0.0"}`
	defaultPath              = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

func layerMediaType(mt MediaTypes, c Compression) string {
	gz := c == Gzip || c == GzipParallel || c == GzipMultiMember
	switch {
	case mt == Docker && gz:
		return MediaTypeDockerLayerGzip
	case mt == Docker:
		return MediaTypeDockerLayer
	case gz:
		return MediaTypeOCILayerGzip
	case c == Zstd:
		return MediaTypeOCILayerZstd
	}
	return MediaTypeOCILayer
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Manifest is an image manifest (OCI or Docker schema2; same fields).
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Index is an OCI image index (index.json of a layout).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType,omitempty"`
	Manifests     []Descriptor `json:"manifests"`
}

type imageConfig struct {
	Created      string        `json:"created"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       runtimeConfig `json:"config"`
	RootFS       rootFS        `json:"rootfs"`
	History      []history     `json:"history"`
}

type runtimeConfig struct {
	Env        []string `json:"Env"`
	Cmd        []string `json:"Cmd"`
	WorkingDir string   `json:"WorkingDir"`
}

type rootFS struct {
	Type    string          `json:"type"`
	DiffIDs []digest.Digest `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// writeManifest writes the config, the manifest, index.json and oci-layout
// of img, whose layers are written.
func writeManifest(img *Image, mt MediaTypes) error {
	cfg := imageConfig{
		Created:      baseTime.Format(time.RFC3339),
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config:       runtimeConfig{Env: []string{defaultPath}, Cmd: img.Options.cmd(), WorkingDir: "/"},
		RootFS:       rootFS{Type: "layers"},
	}
	for i, l := range img.Layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
		cfg.History = append(cfg.History, history{
			Created:   baseTime.Add(time.Duration(i) * 24 * time.Hour).Format(time.RFC3339),
			CreatedBy: fmt.Sprintf("imagegen layer %d (%s)", i+1, l.Compression),
		})
	}
	cfgDesc, err := writeJSONBlob(img.Dir, cfg)
	if err != nil {
		return err
	}
	m := Manifest{SchemaVersion: 2, MediaType: MediaTypeOCIManifest, Config: cfgDesc}
	m.Config.MediaType = MediaTypeOCIConfig
	if mt == Docker {
		m.MediaType, m.Config.MediaType = MediaTypeDockerManifest, MediaTypeDockerConfig
	}
	for _, l := range img.Layers {
		m.Layers = append(m.Layers, Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
	}
	mDesc, err := writeJSONBlob(img.Dir, m)
	if err != nil {
		return err
	}
	mDesc.MediaType = m.MediaType
	mDesc.Annotations = map[string]string{AnnotationRefName: layoutRefName}
	img.ConfigDigest, img.ManifestDigest = cfgDesc.Digest, mDesc.Digest
	img.ManifestMediaType, img.ManifestSize = m.MediaType, mDesc.Size

	idx, err := json.Marshal(Index{SchemaVersion: 2, MediaType: MediaTypeOCIIndex, Manifests: []Descriptor{mDesc}})
	if err != nil {
		return fmt.Errorf("imagegen: encode index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(img.Dir, "index.json"), idx, 0o644); err != nil {
		return fmt.Errorf("imagegen: %w", err)
	}
	if err := os.WriteFile(filepath.Join(img.Dir, "oci-layout"), []byte(imageLayoutVersion), 0o644); err != nil {
		return fmt.Errorf("imagegen: %w", err)
	}
	return nil
}

// writeJSONBlob stores v as a JSON blob and returns its descriptor (without
// media type).
func writeJSONBlob(dir string, v any) (Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Descriptor{}, fmt.Errorf("imagegen: encode blob: %w", err)
	}
	d := digest.FromBytes(b)
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Encoded()), b, 0o644); err != nil {
		return Descriptor{}, fmt.Errorf("imagegen: %w", err)
	}
	return Descriptor{Digest: d, Size: int64(len(b))}, nil
}

// cacheKey identifies what Generate makes of o with the given busybox.
func cacheKey(o Options, busyboxSum string) (string, error) {
	b, err := json.Marshal(struct {
		Version int     `json:"version"`
		Arch    string  `json:"arch"`
		Options Options `json:"options"`
		Busybox string  `json:"busybox"`
	}{GeneratorVersion, runtime.GOARCH, o, busyboxSum})
	if err != nil {
		return "", fmt.Errorf("imagegen: cache key: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}
