package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	stargz "github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

// Annotations stargz-snapshotter's converters put on eStargz layers.
const (
	estargzTOCAnnotation  = "containerd.io/snapshot/stargz/toc.digest"
	estargzSizeAnnotation = "io.containers.estargz.uncompressed-size"
)

// ConvertEstargz writes into dst an OCI image layout of the image in layout
// src (its first manifest) with every gzip layer at least minSize bytes
// converted to eStargz by stargz-snapshotter's estargz package, the
// converter ctr-remote, nerdctl and BuildKit use (podman cannot push
// eStargz: containers/image has no eStargz compressor): the layer's
// descriptor gets the TOC digest and uncompressed-size annotations, the
// config the new DiffIDs. Other blobs are hard-linked or copied.
func ConvertEstargz(src, dst string, minSize int64, opts ...stargz.Option) error {
	blobs := filepath.Join(dst, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	read := func(d digest.Digest) ([]byte, error) {
		return os.ReadFile(filepath.Join(src, "blobs", d.Algorithm().String(), d.Encoded()))
	}
	write := func(data []byte) (digest.Digest, error) {
		d := digest.FromBytes(data)
		return d, os.WriteFile(filepath.Join(blobs, d.Encoded()), data, 0o644)
	}
	idxData, err := os.ReadFile(filepath.Join(src, "index.json"))
	if err != nil {
		return err
	}
	var idx map[string]any
	if err := json.Unmarshal(idxData, &idx); err != nil {
		return fmt.Errorf("%w: index.json: %w", ErrLayout, err)
	}
	mans, _ := idx["manifests"].([]any)
	if len(mans) == 0 {
		return fmt.Errorf("%w: no manifest", ErrLayout)
	}
	mdesc := mans[0].(map[string]any)
	mdata, err := read(digest.Digest(mdesc["digest"].(string)))
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(mdata, &m); err != nil {
		return fmt.Errorf("%w: manifest: %w", ErrLayout, err)
	}
	cdesc := m["config"].(map[string]any)
	cdata, err := read(digest.Digest(cdesc["digest"].(string)))
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(cdata, &cfg); err != nil {
		return fmt.Errorf("%w: config: %w", ErrLayout, err)
	}
	diffIDs := cfg["rootfs"].(map[string]any)["diff_ids"].([]any)
	for i, l := range m["layers"].([]any) {
		ld := l.(map[string]any)
		d := digest.Digest(ld["digest"].(string))
		data, err := read(d)
		if err != nil {
			return err
		}
		mt, _ := ld["mediaType"].(string)
		if int64(len(data)) < minSize || (mt != "application/vnd.oci.image.layer.v1.tar+gzip" && mt != "application/vnd.docker.image.rootfs.diff.tar.gzip") {
			if _, err := write(data); err != nil {
				return err
			}
			continue
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return err
		}
		tarStream, err := io.ReadAll(zr)
		if err != nil {
			return err
		}
		b, err := stargz.Build(io.NewSectionReader(bytes.NewReader(tarStream), 0, int64(len(tarStream))), opts...)
		if err != nil {
			return fmt.Errorf("estargz layer %d: %w", i, err)
		}
		blob, err := io.ReadAll(b)
		b.Close()
		if err != nil {
			return err
		}
		zr, err = gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, zr)
		if err != nil {
			return err
		}
		nd, err := write(blob)
		if err != nil {
			return err
		}
		ld["digest"], ld["size"] = nd.String(), len(blob)
		ld["annotations"] = map[string]any{estargzTOCAnnotation: b.TOCDigest().String(), estargzSizeAnnotation: strconv.FormatInt(n, 10)}
		diffIDs[i] = b.DiffID().String()
	}
	cdata, err = json.Marshal(cfg)
	if err != nil {
		return err
	}
	cd, err := write(cdata)
	if err != nil {
		return err
	}
	cdesc["digest"], cdesc["size"] = cd.String(), len(cdata)
	mdata, err = json.Marshal(m)
	if err != nil {
		return err
	}
	md, err := write(mdata)
	if err != nil {
		return err
	}
	mdesc["digest"], mdesc["size"] = md.String(), len(mdata)
	idx["manifests"] = []any{mdesc}
	idxData, err = json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dst, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dst, "index.json"), idxData, 0o644)
}
