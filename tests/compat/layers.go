package compat

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
)

// Layer is one generated layer blob on disk.
type Layer struct {
	// Name names the shape ("mixed-gzip", "uncompressed", ...).
	Name string
	// Path is the blob's file.
	Path string
	// Size is the blob's size in bytes.
	Size int64
	// Uncompressed reports a plain tar blob.
	Uncompressed bool
	// MultiMember reports a blob of several concatenated gzip members.
	MultiMember bool
	// Padded reports a tar stream with zero records after its end-of-archive
	// marker (as GNU tar writes it).
	Padded bool
}

// compatMemberSize is the tar bytes per gzip member of the multi-member
// layer: not a multiple of the span size nor of a tar block, so that
// members start inside spans and inside files.
const compatMemberSize = 3<<20 + 12345

// mib is a mebibyte.
const mib = int64(1) << 20

// CompatImage describes the image whose layers the compatibility tests
// index: one layer per shape.
func CompatImage() imagegen.Options {
	return imagegen.Options{
		Name:       "compat",
		Seed:       20260,
		MemberSize: compatMemberSize,
		Layers: []imagegen.LayerSpec{
			// At least 50 MB compressed: text, source, JSON, ELF-like and
			// already-compressed small files, big compressible and random
			// files, and every entry kind (hard links, symlinks, devices,
			// FIFOs, PAX long names and link targets, xattrs, sub-second
			// times).
			{Compression: imagegen.Gzip, Dir: "mixed", Zoo: true, SmallFiles: 1200,
				Random: []int64{24 * mib, 8 * mib}, Compressible: []int64{40 * mib, 3*mib + 1}},
			{Compression: imagegen.Gzip, Dir: "many/small", Zoo: true, SmallFiles: 4000},
			{Compression: imagegen.Gzip, Dir: "incompressible", SmallFiles: 20,
				Random: []int64{40 * mib, 5*mib + 777}},
			{Compression: imagegen.GzipMultiMember, Dir: "multi", Zoo: true, SmallFiles: 800,
				Random: []int64{6 * mib}, Compressible: []int64{16 * mib}},
			// pgzip: blocks cut every MiB and sync-flushed (empty stored
			// blocks), like containers/image pushes.
			{Compression: imagegen.GzipParallel, Dir: "parallel", Zoo: true, SmallFiles: 600,
				Random: []int64{4 * mib}, Compressible: []int64{20 * mib}},
			{Compression: imagegen.Uncompressed, Dir: "plain", Zoo: true, SmallFiles: 400,
				Random: []int64{5 * mib}, Compressible: []int64{6 * mib}},
		},
	}
}

// IndexImage describes the small image SOCI's index builder indexes in the
// SOCI index tests: a gzip layer with every entry kind, a multi-member gzip
// layer and an uncompressed one.
func IndexImage() imagegen.Options {
	return imagegen.Options{
		Name:       "compat-index",
		Seed:       20261,
		MemberSize: 256 << 10,
		Layers: []imagegen.LayerSpec{
			{Compression: imagegen.Gzip, Dir: "base", Zoo: true, SmallFiles: 150, Compressible: []int64{3 * mib}},
			{Compression: imagegen.GzipMultiMember, Dir: "app", SmallFiles: 80, Random: []int64{mib}},
			{Compression: imagegen.Uncompressed, Dir: "top", SmallFiles: 40},
		},
	}
}

// BenchImage describes the image of the builder benchmark: one gzip layer
// (level 6, one member, like docker and buildkit push) of 238 MB, 427 MB
// of tar: 6000 small files of every kind (text, source, JSON,
// ELF-like, already compressed), big compressible files (ELF-like and
// text/logs) and big incompressible ones.
func BenchImage() imagegen.Options {
	return imagegen.Options{
		Name: "compat-bench",
		Seed: 20262,
		Layers: []imagegen.LayerSpec{
			{Compression: imagegen.Gzip, Dir: "opt/bench", SmallFiles: 6000,
				Random:       []int64{48 * mib, 24 * mib, 8 * mib},
				Compressible: []int64{96 * mib, 64 * mib, 32 * mib}},
		},
	}
}

// BenchLayer returns the builder benchmark's layer (BenchImage), generating
// it into the cache directory (imagegen.CacheDir) on first use.
func BenchLayer() (Layer, error) {
	img, err := imagegen.Cached(imagegen.CacheDir(), BenchImage())
	if err != nil {
		return Layer{}, fmt.Errorf("compat: generate benchmark layer: %w", err)
	}
	l := img.Layers[0]
	return Layer{Name: "bench-gzip", Path: img.BlobPath(l.Digest), Size: l.Size}, nil
}

// layerNames names CompatImage's layers, in order.
var layerNames = []string{"mixed-gzip", "small-files-gzip", "incompressible-gzip", "multimember-gzip", "pgzip", "uncompressed"}

// tarRecordSize is GNU tar's default record size (blocking factor 20): it
// pads every archive to a multiple of it.
const tarRecordSize = 20 * 512

// Layers returns every layer shape of the compatibility tests, generating
// what the cache directory (imagegen.CacheDir) does not hold yet: the layers
// of CompatImage, and three layers derived from its uncompressed one: the
// tar padded like GNU tar pads it ("gnu-padded-tar"), that padded tar
// compressed by the standard library's gzip with a file name in the gzip
// header ("stdlib-gzip-fname"), and the tar cut into small gzip members
// with an extra header field, like BGZF ("small-members-gzip").
func Layers() ([]Layer, error) {
	img, err := imagegen.Cached(imagegen.CacheDir(), CompatImage())
	if err != nil {
		return nil, fmt.Errorf("compat: generate layers: %w", err)
	}
	var out []Layer
	var plain string
	for i, l := range img.Layers {
		p := img.BlobPath(l.Digest)
		out = append(out, Layer{
			Name:         layerNames[i],
			Path:         p,
			Size:         l.Size,
			Uncompressed: l.Compression == imagegen.Uncompressed,
			MultiMember:  l.Compression == imagegen.GzipMultiMember,
		})
		if l.Compression == imagegen.Uncompressed {
			plain = p
		}
	}
	if plain == "" {
		return nil, errors.New("compat: the image has no uncompressed layer")
	}
	base := img.Dir + "-derived"
	// Layers derived from older versions of the image are of no more use.
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(img.Dir), CompatImage().Name+"-*-derived"))
	for _, o := range old {
		if o != base {
			_ = os.RemoveAll(o) // a failure only wastes space
		}
	}
	padded := filepath.Join(base, "gnu-padded.tar")
	if err := derive(padded, func(w io.Writer) error { return padTar(w, plain) }); err != nil {
		return nil, err
	}
	gz := filepath.Join(base, "stdlib-fname.tar.gz")
	if err := derive(gz, func(w io.Writer) error { return stdlibGzip(w, padded) }); err != nil {
		return nil, err
	}
	members := filepath.Join(base, "small-members.tar.gz")
	if err := derive(members, func(w io.Writer) error { return smallMembers(w, plain) }); err != nil {
		return nil, err
	}
	for _, d := range []Layer{
		{Name: "gnu-padded-tar", Path: padded, Uncompressed: true, Padded: true},
		{Name: "stdlib-gzip-fname", Path: gz, Padded: true},
		{Name: "small-members-gzip", Path: members, MultiMember: true},
	} {
		fi, err := os.Stat(d.Path)
		if err != nil {
			return nil, fmt.Errorf("compat: %w", err)
		}
		d.Size = fi.Size()
		out = append(out, d)
	}
	return out, nil
}

// derive writes path with write unless it exists, through a temporary file
// renamed into place (a deterministic write, so concurrent runs agree).
func derive(path string, write func(io.Writer) error) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("compat: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("compat: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("compat: derive %s: %w", filepath.Base(path), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("compat: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("compat: %w", err)
	}
	return nil
}

// padTar copies the tar stream in src to w and pads it with zeros to the
// next multiple of tarRecordSize, as GNU tar does with its default blocking
// factor (a whole record when the stream is already a multiple, so that
// the shape always has padding).
func padTar(w io.Writer, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return err
	}
	pad := tarRecordSize - n%tarRecordSize
	_, err = w.Write(make([]byte, pad))
	return err
}

// stdlibGzip compresses src with compress/gzip at level 6, with a file name
// and a modification time in the header (so checkpoint 0 is not at offset
// 10).
func stdlibGzip(w io.Writer, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(w, 6)
	if err != nil {
		return err
	}
	zw.Name = "layer.tar"
	zw.ModTime = time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC)
	if _, err := io.Copy(zw, bytes.NewReader(data)); err != nil {
		return err
	}
	return zw.Close()
}

// smallMemberSize is the input of each member of the small-members layer
// (BGZF's block size).
const smallMemberSize = 65280

// smallMembers compresses src into one gzip member (level 6, compress/gzip)
// per smallMemberSize bytes, each with an extra header field as BGZF
// writes one, so that most checkpoints fall right after a member header,
// where zlib's window still holds the previous member's output.
func smallMembers(w io.Writer, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), smallMemberSize)
		zw, err := gzip.NewWriterLevel(w, 6)
		if err != nil {
			return err
		}
		zw.Extra = []byte{'B', 'C', 2, 0, 0, 0} // BGZF's subfield (its block size left 0)
		if _, err := zw.Write(data[:n]); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}
