package imagegen

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// GeneratorVersion changes whenever the generator's output for the same
// Options changes; Cached regenerates images made by another version.
const GeneratorVersion = 1

// Names of the files the generator adds to an image layout next to
// index.json (OCI layout readers ignore unknown files).
const (
	MetadataFile = "imagegen.json"
	TreeFile     = "imagegen-tree.json"
)

// Errors of the generator.
var (
	// ErrBusyboxNotStatic is returned when the busybox to copy into an image
	// needs a dynamic loader (install busybox-static).
	ErrBusyboxNotStatic = errors.New("imagegen: busybox is not statically linked")
	// ErrNotEmpty is returned by Generate when the target directory has files.
	ErrNotEmpty = errors.New("imagegen: layout directory is not empty")
	// ErrNoImage is returned by Load when a directory holds no generated image.
	ErrNoImage = errors.New("imagegen: no generated image in directory")
)

// Image is a generated image layout and what is known about it.
type Image struct {
	// Dir is the OCI image layout directory.
	Dir string `json:"-"`
	// Key identifies the generator version, options and busybox that made
	// the image.
	Key              string  `json:"key"`
	GeneratorVersion int     `json:"generator_version"`
	Options          Options `json:"options"`
	BusyboxSHA256    string  `json:"busybox_sha256,omitempty"`

	ManifestDigest    digest.Digest `json:"manifest_digest"`
	ManifestMediaType string        `json:"manifest_media_type"`
	ManifestSize      int64         `json:"manifest_size"`
	ConfigDigest      digest.Digest `json:"config_digest"`
	Layers            []Layer       `json:"layers"`

	tree fstree.Tree // expected tree; loaded from TreeFile on first use
}

// Layer describes one layer blob of an image.
type Layer struct {
	Digest      digest.Digest `json:"digest"`
	DiffID      digest.Digest `json:"diff_id"`
	MediaType   string        `json:"media_type"`
	Compression Compression   `json:"compression"`
	// Size is the blob's size in bytes, DiffSize the tar stream's.
	Size     int64 `json:"size"`
	DiffSize int64 `json:"diff_size"`
	// Entries counts the tar entries, including whiteouts.
	Entries int `json:"entries"`
}

// CompressedSize returns the sum of the layer blob sizes.
func (img *Image) CompressedSize() int64 {
	var n int64
	for _, l := range img.Layers {
		n += l.Size
	}
	return n
}

// DiffSize returns the sum of the uncompressed layer sizes.
func (img *Image) DiffSize() int64 {
	var n int64
	for _, l := range img.Layers {
		n += l.DiffSize
	}
	return n
}

// BlobPath returns the path of blob d in the layout.
func (img *Image) BlobPath(d digest.Digest) string {
	return filepath.Join(img.Dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// ExpectedTree returns the file tree a container engine shows when it stacks
// the image's layers (whiteouts and opaque directories applied with overlay
// semantics). The root directory is not part of it.
func (img *Image) ExpectedTree() (fstree.Tree, error) {
	if img.tree == nil {
		t, err := fstree.ReadFile(filepath.Join(img.Dir, TreeFile))
		if err != nil {
			return nil, fmt.Errorf("imagegen: expected tree of %s: %w", img.Dir, err)
		}
		img.tree = t
	}
	return img.tree.Clone(), nil
}

// Load opens an image written by Generate.
func Load(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoImage, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("imagegen: load: %w", err)
	}
	img := &Image{Dir: dir}
	if err := json.Unmarshal(b, img); err != nil {
		return nil, fmt.Errorf("imagegen: load %s: %w", dir, err)
	}
	return img, nil
}

// Generate writes the image o describes as an OCI image layout into dir,
// which must not exist or be empty. After a failure dir may hold part of a
// layout (Cached generates under a temporary name for that reason).
func Generate(dir string, o Options) (*Image, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if names, err := os.ReadDir(dir); err == nil && len(names) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotEmpty, dir)
	}
	blobDir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return nil, fmt.Errorf("imagegen: %w", err)
	}
	busybox, busyboxSum, err := readBusybox(o)
	if err != nil {
		return nil, err
	}
	key, err := cacheKey(o, busyboxSum)
	if err != nil {
		return nil, err
	}

	// Phase 1: decide every layer's entries. Whiteouts and replacements pick
	// from the tree the layers below leave.
	layers := make([][]*entry, len(o.Layers))
	state := newModel()
	for i := range o.Layers {
		entries, err := newLayerBuilder(&o, i, state, busybox).build()
		if err != nil {
			return nil, err
		}
		if err := state.apply(i, entries); err != nil {
			return nil, err
		}
		layers[i] = entries
	}

	// Phase 2: write the layers, two at a time (each compressor may use
	// several goroutines itself). Writing fills in file digests.
	img := &Image{Dir: dir, Key: key, GeneratorVersion: GeneratorVersion, Options: o,
		BusyboxSHA256: busyboxSum, Layers: make([]Layer, len(o.Layers))}
	mt := o.mediaTypes()
	var g errgroup.Group
	g.SetLimit(min(2, runtime.GOMAXPROCS(0)))
	for i, entries := range layers {
		g.Go(func() error {
			c := o.Layers[i].compression()
			l, err := writeLayer(blobDir, entries, c, &o)
			if err != nil {
				return fmt.Errorf("imagegen: layer %d: %w", i+1, err)
			}
			l.Compression = c
			l.MediaType = layerMediaType(mt, c)
			img.Layers[i] = l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Phase 3: the expected tree, now with content digests.
	final := newModel()
	for i, entries := range layers {
		if err := final.apply(i, entries); err != nil {
			return nil, err
		}
	}
	img.tree = final.result()
	if err := img.tree.WriteFile(filepath.Join(dir, TreeFile)); err != nil {
		return nil, err
	}
	if err := writeManifest(img, mt); err != nil {
		return nil, err
	}
	meta, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("imagegen: encode metadata: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, MetadataFile), meta, 0o644); err != nil {
		return nil, fmt.Errorf("imagegen: %w", err)
	}
	return img, nil
}

// readBusybox returns the busybox binary and its sha256 when a layer needs
// it.
func readBusybox(o Options) ([]byte, string, error) {
	need := false
	for _, l := range o.Layers {
		need = need || l.Busybox
	}
	if !need {
		return nil, "", nil
	}
	name := o.busybox()
	f, err := elf.Open(name)
	if err != nil {
		return nil, "", fmt.Errorf("imagegen: busybox: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, "", fmt.Errorf("%w: %s", ErrBusyboxNotStatic, name)
		}
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, "", fmt.Errorf("imagegen: busybox: %w", err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:]), nil
}

// countingHash hashes and counts what is written to it.
type countingHash struct {
	h hash.Hash
	n int64
}

func newCountingHash() *countingHash { return &countingHash{h: sha256.New()} }

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

func (c *countingHash) digest() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, c.h.Sum(nil))
}

// writeLayer writes the entries as a tar stream compressed as c into a new
// blob of blobDir.
func writeLayer(blobDir string, entries []*entry, c Compression, o *Options) (Layer, error) {
	f, err := os.CreateTemp(blobDir, ".layer-*")
	if err != nil {
		return Layer{}, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name()) // fails harmlessly once renamed
	}()
	blob := newCountingHash()
	bw := bufio.NewWriterSize(io.MultiWriter(f, blob), 1<<20)
	zw, err := newCompressor(c, bw, o)
	if err != nil {
		return Layer{}, err
	}
	zwOpen := true
	defer func() {
		if zwOpen {
			zw.Close() // stops the compressor's goroutines; the output is discarded
		}
	}()
	diff := newCountingHash()
	tw := tar.NewWriter(io.MultiWriter(zw, diff))
	for _, e := range entries {
		if err := writeEntry(tw, e); err != nil {
			return Layer{}, fmt.Errorf("entry %s: %w", e.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return Layer{}, err
	}
	zwOpen = false
	if err := zw.Close(); err != nil {
		return Layer{}, err
	}
	if err := bw.Flush(); err != nil {
		return Layer{}, err
	}
	if err := f.Chmod(0o644); err != nil {
		return Layer{}, err
	}
	if err := f.Close(); err != nil {
		return Layer{}, err
	}
	d := blob.digest()
	if err := os.Rename(f.Name(), filepath.Join(blobDir, d.Encoded())); err != nil {
		return Layer{}, err
	}
	return Layer{Digest: d, DiffID: diff.digest(), Size: blob.n, DiffSize: diff.n, Entries: len(entries)}, nil
}

// writeEntry writes e's header and content, and records the content's sha256
// in e.
func writeEntry(tw *tar.Writer, e *entry) error {
	hdr, err := header(e)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg || e.kind != entNormal {
		return nil
	}
	h := sha256.New()
	if err := e.data.writeTo(io.MultiWriter(tw, h)); err != nil {
		return err
	}
	e.node.SHA256 = hex.EncodeToString(h.Sum(nil))
	return nil
}

// header builds the tar header of e.
func header(e *entry) (*tar.Header, error) {
	n := e.node
	hdr := &tar.Header{
		Name:    e.tarName(),
		Mode:    int64(n.Mode & fstree.ModeMask),
		Uid:     n.UID,
		Gid:     n.GID,
		Uname:   e.uname,
		Gname:   e.gname,
		ModTime: time.Unix(0, n.MtimeNs),
	}
	if e.pax {
		hdr.Format = tar.FormatPAX
	} else if n.MtimeNs%int64(time.Second) != 0 {
		return nil, fmt.Errorf("sub-second mtime without PAX")
	}
	for k, v := range n.Xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = make(map[string]string)
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = string(v)
	}
	switch {
	case e.kind == entWhiteout || e.kind == entOpaque:
		hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid = tar.TypeReg, 0o644, 0, 0
		hdr.Uname, hdr.Gname, hdr.PAXRecords = "", "", nil
	case e.kind == entHardlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeLink, e.link
	default:
		switch n.Type {
		case fstree.TypeDir:
			hdr.Typeflag = tar.TypeDir
		case fstree.TypeFile:
			hdr.Typeflag, hdr.Size = tar.TypeReg, e.data.size
		case fstree.TypeSymlink:
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, n.Target
		case fstree.TypeChar, fstree.TypeBlock:
			hdr.Typeflag = tar.TypeChar
			if n.Type == fstree.TypeBlock {
				hdr.Typeflag = tar.TypeBlock
			}
			hdr.Devmajor, hdr.Devminor = int64(n.DevMajor), int64(n.DevMinor)
		case fstree.TypeFIFO:
			hdr.Typeflag = tar.TypeFifo
		default:
			return nil, fmt.Errorf("no tar type for %s", n.Type)
		}
	}
	return hdr, nil
}
