package imagegen

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Compression is how a layer blob is compressed.
type Compression string

// The layer compressions the generator writes. All are deterministic for a
// given input and module versions (see the package documentation).
const (
	// Gzip is one gzip member written by klauspost/compress/gzip at level 6
	// on one goroutine, like the layers docker and buildkit push.
	Gzip Compression = "gzip"
	// GzipParallel is one gzip member written by klauspost/pgzip at level 6
	// with a fixed block size (Options.GzipBlockSize), compressed by several
	// goroutines; blocks are sync-flushed, like the layers containers/image
	// pushes.
	GzipParallel Compression = "gzip-parallel"
	// GzipMultiMember is several gzip members concatenated, each holding
	// Options.MemberSize bytes of the tar stream, compressed in parallel.
	GzipMultiMember Compression = "gzip-multimember"
	// Zstd is one zstd stream written by klauspost/compress/zstd at its
	// default level on one goroutine.
	Zstd Compression = "zstd"
	// Uncompressed is the plain tar stream.
	Uncompressed Compression = "none"
)

// MediaTypes selects the media types of the manifest, config and layers.
type MediaTypes string

// The manifest flavours the generator writes.
const (
	// OCI uses application/vnd.oci.image.* media types (the default).
	OCI MediaTypes = "oci"
	// Docker uses Docker schema2 media types; it has no zstd layer type.
	Docker MediaTypes = "docker"
)

// DefaultBusybox is where a static busybox is taken from (Debian package
// busybox-static).
const DefaultBusybox = "/bin/busybox"

// BusyboxApplets are the commands linked to /bin/busybox in every image that
// includes busybox.
var BusyboxApplets = []string{"sh", "cat", "sha256sum", "ls", "find", "head", "wc", "dd", "stat"}

// Options describes an image completely: the same Options (and the same
// busybox binary) always give a byte-identical image layout.
type Options struct {
	// Name names the image in cache directories and in the layout's
	// org.opencontainers.image.ref.name annotation ("latest" when empty).
	Name string `json:"name"`
	// Seed feeds every pseudo-random choice.
	Seed uint64 `json:"seed"`
	// Layers lists the layers, base first.
	Layers []LayerSpec `json:"layers"`
	// MediaTypes is OCI (default when empty) or Docker.
	MediaTypes MediaTypes `json:"media_types,omitempty"`
	// Busybox is the static busybox copied into layers with Busybox set;
	// default DefaultBusybox.
	Busybox string `json:"busybox,omitempty"`
	// Cmd is the image's default command; default ["/bin/sh"].
	Cmd []string `json:"cmd,omitempty"`
	// GzipBlockSize is the pgzip block size of GzipParallel layers in bytes;
	// default 1 MiB.
	GzipBlockSize int `json:"gzip_block_size,omitempty"`
	// MemberSize is the number of tar bytes per gzip member of
	// GzipMultiMember layers; default 8 MiB.
	MemberSize int `json:"member_size,omitempty"`
}

// LayerSpec describes the content of one layer. Everything the layer adds
// lives under Dir, except busybox (bin/, etc/ and the usual top-level
// directories) and the whiteouts, opaque directories and replacements, which
// act on what the layers below left.
type LayerSpec struct {
	// Compression of the blob; default Gzip.
	Compression Compression `json:"compression,omitempty"`
	// Dir is the directory (relative, slash-separated) the layer's content
	// goes to; default "layer<N>" with N the 1-based layer number.
	Dir string `json:"dir,omitempty"`
	// Busybox adds /bin/busybox, its applet symlinks, /etc/passwd, /etc/group
	// and the directories a container needs (tmp, proc, sys, dev, root).
	Busybox bool `json:"busybox,omitempty"`
	// Zoo adds one entry of every kind under Dir/zoo: every tar type (regular,
	// dir, relative/absolute/dangling symlinks, hard links, char and block
	// devices, FIFOs), setuid/setgid/sticky modes, several owners, long names
	// and paths (PAX), sub-second mtimes, xattrs (user.* and
	// security.capability), empty and 512-multiple files.
	Zoo bool `json:"zoo,omitempty"`
	// SmallFiles is the number of small files (64 B to 1 MiB, most under
	// 64 KiB): source-like text, prose and logs, JSON, ELF-like binaries and
	// already-compressed data, spread over a directory tree.
	SmallFiles int `json:"small_files,omitempty"`
	// Random lists the sizes in bytes of big incompressible files.
	Random []int64 `json:"random,omitempty"`
	// Compressible lists the sizes in bytes of big compressible files
	// (alternately ELF-like libraries and text/log files).
	Compressible []int64 `json:"compressible,omitempty"`
	// Zeros lists the sizes in bytes of files of zeros (use one above 4 GiB to
	// test huge files; it compresses to about 1/1000).
	Zeros []int64 `json:"zeros,omitempty"`
	// Whiteouts is the number of paths of the layers below (files, symlinks,
	// devices, hard links, whole directories) the layer deletes with
	// .wh.<name> entries.
	Whiteouts int `json:"whiteouts,omitempty"`
	// Opaque is the number of directories of the layers below the layer makes
	// opaque (.wh..wh..opq) and refills with two new files each.
	Opaque int `json:"opaque,omitempty"`
	// Replacements is the number of paths of the layers below the layer
	// replaces without a whiteout: files by new content, files by
	// directories or symlinks, a directory by a file.
	Replacements int `json:"replacements,omitempty"`
}

// ErrInvalidOptions is returned (wrapped) when Options cannot describe an
// image.
var ErrInvalidOptions = errors.New("imagegen: invalid options")

// Validate reports every problem of o at once.
func (o Options) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, args...)...))
	}
	if len(o.Layers) == 0 {
		add("no layers")
	}
	switch o.MediaTypes {
	case "", OCI, Docker:
	default:
		add("unknown media types %q", o.MediaTypes)
	}
	if o.GzipBlockSize < 0 || (o.GzipBlockSize > 0 && o.GzipBlockSize <= 32<<10) {
		add("gzip block size %d must be above 32 KiB", o.GzipBlockSize)
	}
	if o.MemberSize < 0 {
		add("member size %d is negative", o.MemberSize)
	}
	dirs := make(map[string]int)
	for i, l := range o.Layers {
		n := i + 1
		switch l.Compression {
		case "", Gzip, GzipParallel, GzipMultiMember, Uncompressed:
		case Zstd:
			if o.MediaTypes == Docker {
				add("layer %d: Docker media types have no zstd layer type", n)
			}
		default:
			add("layer %d: unknown compression %q", n, l.Compression)
		}
		dir := l.dir(i)
		if dir == "" || path.IsAbs(dir) || path.Clean(dir) != dir || strings.HasPrefix(dir, "..") {
			add("layer %d: directory %q must be a clean relative path", n, l.Dir)
		}
		if prev, ok := dirs[dir]; ok {
			add("layer %d: directory %q already used by layer %d", n, dir, prev)
		}
		dirs[dir] = n
		if l.SmallFiles < 0 || l.Whiteouts < 0 || l.Opaque < 0 || l.Replacements < 0 {
			add("layer %d: negative count", n)
		}
		for _, sizes := range [][]int64{l.Random, l.Compressible, l.Zeros} {
			for _, s := range sizes {
				if s < 0 {
					add("layer %d: negative file size %d", n, s)
				}
			}
		}
		if i == 0 && (l.Whiteouts > 0 || l.Opaque > 0 || l.Replacements > 0) {
			add("layer 1: whiteouts, opaque directories and replacements need a layer below")
		}
	}
	return errors.Join(errs...)
}

func (l LayerSpec) dir(i int) string {
	if l.Dir == "" {
		return fmt.Sprintf("layer%d", i+1)
	}
	return l.Dir
}

func (l LayerSpec) compression() Compression {
	if l.Compression == "" {
		return Gzip
	}
	return l.Compression
}

func (o Options) mediaTypes() MediaTypes {
	if o.MediaTypes == "" {
		return OCI
	}
	return o.MediaTypes
}

func (o Options) busybox() string {
	if o.Busybox == "" {
		return DefaultBusybox
	}
	return o.Busybox
}

func (o Options) cmd() []string {
	if len(o.Cmd) == 0 {
		return []string{"/bin/sh"}
	}
	return o.Cmd
}

func (o Options) gzipBlockSize() int {
	if o.GzipBlockSize == 0 {
		return 1 << 20
	}
	return o.GzipBlockSize
}

func (o Options) memberSize() int {
	if o.MemberSize == 0 {
		return 8 << 20
	}
	return o.MemberSize
}

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

// Small is a fast image for unit tests (about 3 MB compressed, half of it
// busybox): a gzip base layer with busybox and every entry kind, a
// multi-member gzip layer, and a top layer with whiteouts, an opaque
// directory, replacements and its own entry zoo.
func Small() Options {
	return Options{
		Name:       "small",
		Seed:       1,
		MemberSize: 64 << 10,
		Layers: []LayerSpec{
			{Compression: Gzip, Dir: "usr/lib/base", Busybox: true, Zoo: true, SmallFiles: 100,
				Random: []int64{128 * kib}, Compressible: []int64{256 * kib}},
			{Compression: GzipMultiMember, Dir: "usr/lib/app", SmallFiles: 60,
				Random: []int64{64 * kib}, Compressible: []int64{128 * kib}},
			{Compression: GzipParallel, Dir: "var/top", Zoo: true, SmallFiles: 10,
				Whiteouts: 8, Opaque: 2, Replacements: 6},
		},
	}
}

// E2E is the end-to-end test image (about 355 MB compressed, thousands of
// files): five layers, four of them above 10 MiB compressed (so that they get
// indexed) and one small layer below 10 MiB, with every entry kind in the base
// and in the top layer, and whiteouts, opaque directories and replacements in
// the top layer.
func E2E() Options {
	return Options{
		Name: "e2e",
		Seed: 2,
		Layers: []LayerSpec{
			{Compression: GzipParallel, Dir: "usr/lib/base", Busybox: true, Zoo: true, SmallFiles: 2500,
				Random: []int64{48 * mib, 32 * mib}, Compressible: []int64{40 * mib, 24 * mib}},
			{Compression: GzipMultiMember, Dir: "usr/lib/app", SmallFiles: 1500,
				Random: []int64{64 * mib, 16 * mib}, Compressible: []int64{32 * mib}},
			{Compression: Gzip, Dir: "opt/data", SmallFiles: 1000,
				Random: []int64{56 * mib}, Compressible: []int64{16 * mib}},
			{Compression: Gzip, Dir: "srv/small", SmallFiles: 300},
			{Compression: GzipParallel, Dir: "var/top", Zoo: true, SmallFiles: 200,
				Random: []int64{14 * mib}, Whiteouts: 40, Opaque: 4, Replacements: 12},
		},
	}
}

// Bench1G is the benchmark image: about 995 MB compressed (1.5 GB
// uncompressed), a realistic mix of small files, big compressible and
// incompressible files in five layers of 65 to 385 MB compressed and a 9 MB
// top layer with whiteouts.
func Bench1G() Options {
	return Options{
		Name: "bench1g",
		Seed: 3,
		Layers: []LayerSpec{
			{Compression: GzipParallel, Dir: "usr/lib/base", Busybox: true, Zoo: true, SmallFiles: 3000,
				Random: []int64{24 * mib}, Compressible: []int64{48 * mib, 32 * mib}},
			{Compression: GzipParallel, Dir: "usr/lib/runtime", SmallFiles: 2000,
				Random: []int64{144 * mib, 56 * mib}, Compressible: []int64{160 * mib, 112 * mib, 48 * mib}},
			{Compression: GzipParallel, Dir: "opt/app", SmallFiles: 1500,
				Random: []int64{96 * mib, 64 * mib}, Compressible: []int64{128 * mib, 96 * mib}},
			{Compression: GzipMultiMember, Dir: "opt/models", SmallFiles: 500,
				Random: []int64{112 * mib}, Compressible: []int64{64 * mib}},
			{Compression: Gzip, Dir: "srv/data", SmallFiles: 1000,
				Random: []int64{32 * mib}, Compressible: []int64{48 * mib}},
			{Compression: GzipParallel, Dir: "var/top", SmallFiles: 300,
				Random: []int64{6 * mib}, Whiteouts: 60, Opaque: 3, Replacements: 20},
		},
	}
}

// Preset returns the preset called name ("small", "e2e" or "bench1g").
func Preset(name string) (Options, error) {
	switch strings.ToLower(name) {
	case "small":
		return Small(), nil
	case "e2e":
		return E2E(), nil
	case "bench1g":
		return Bench1G(), nil
	}
	return Options{}, fmt.Errorf("%w: unknown preset %q (small, e2e, bench1g)", ErrInvalidOptions, name)
}
