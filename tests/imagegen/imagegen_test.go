package imagegen

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// tiny is an image without busybox (so that its bytes depend on nothing
// outside this module) that still uses every compression and kind of entry.
func tiny() Options {
	return Options{
		Name: "tiny", Seed: 7, MemberSize: 16 << 10, GzipBlockSize: 64 << 10,
		Layers: []LayerSpec{
			{Compression: GzipParallel, Zoo: true, SmallFiles: 25, Random: []int64{70_000}, Compressible: []int64{100_000}},
			{Compression: GzipMultiMember, SmallFiles: 10, Compressible: []int64{50_000, 60_000}},
			{Compression: Zstd, SmallFiles: 5},
			{Compression: Uncompressed, SmallFiles: 5},
			{Compression: Gzip, Zoo: true, Whiteouts: 6, Opaque: 2, Replacements: 4},
		},
	}
}

// goldenTinyManifest is the manifest digest of tiny(). It changes when the
// generator's output changes (then raise GeneratorVersion) or when go.mod
// moves klauspost/compress or klauspost/pgzip to a version that compresses
// differently.
const goldenTinyManifest = "sha256:4b3c33df61e69fc3726f90267b622bc214a79e46d84e75a8335416c8dd949df3"

// readTree returns every file of dir (path -> sha256).
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		s := sha256.Sum256(b)
		files[rel] = hex.EncodeToString(s[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestGenerateDeterministic generates the same images twice, the second time
// with GOMAXPROCS 1, and compares every file of the layouts.
func TestGenerateDeterministic(t *testing.T) {
	docker := tiny()
	docker.MediaTypes = Docker
	docker.Layers[2].Compression = Gzip
	tests := []struct {
		name string
		opts Options
	}{
		{"tiny", tiny()},
		{"tiny-docker", docker},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Generate(t.TempDir(), tc.opts)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			prev := runtime.GOMAXPROCS(1)
			b, err := Generate(t.TempDir(), tc.opts)
			runtime.GOMAXPROCS(prev)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			fa, fb := readTree(t, a.Dir), readTree(t, b.Dir)
			if len(fa) != len(fb) {
				t.Errorf("layouts have %d and %d files", len(fa), len(fb))
			}
			for name, sa := range fa {
				if fb[name] != sa {
					t.Errorf("%s differs between two generations (%.12s, %.12s)", name, sa, fb[name])
				}
			}
			if a.ManifestDigest != b.ManifestDigest {
				t.Errorf("manifest digests %s and %s differ", a.ManifestDigest, b.ManifestDigest)
			}
		})
	}
}

// TestGolden pins the bytes of an image that depends on nothing outside the
// module, so that nondeterminism across machines and runs shows up.
func TestGolden(t *testing.T) {
	img, err := Generate(t.TempDir(), tiny())
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if got := img.ManifestDigest.String(); got != goldenTinyManifest {
		t.Errorf("manifest digest of tiny() = %s, want %s (see goldenTinyManifest)", got, goldenTinyManifest)
	}
}

// layerEntries decompresses a layer blob and returns its tar headers and the
// number of gzip members.
func layerEntries(t *testing.T, img *Image, l Layer) ([]*tar.Header, int) {
	t.Helper()
	raw, err := os.ReadFile(img.BlobPath(l.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(raw); got != l.Digest || int64(len(raw)) != l.Size {
		t.Fatalf("blob %s has digest %s and size %d, want size %d", l.Digest, got, len(raw), l.Size)
	}
	var r io.Reader = bytes.NewReader(raw)
	members := 0
	switch l.Compression {
	case Gzip, GzipParallel, GzipMultiMember:
		// Count members by reading them one at a time.
		br := bufio.NewReader(bytes.NewReader(raw))
		var all bytes.Buffer
		for {
			zr, err := gzip.NewReader(br)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("gzip member %d: %v", members, err)
			}
			zr.Multistream(false)
			if _, err := io.Copy(&all, zr); err != nil {
				t.Fatalf("gzip member %d: %v", members, err)
			}
			members++
		}
		r = &all
	case Zstd:
		zr, err := zstd.NewReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompress %s: %v", l.Digest, err)
	}
	if got := digest.FromBytes(data); got != l.DiffID || int64(len(data)) != l.DiffSize {
		t.Errorf("layer %s: tar digest %s size %d, want DiffID %s size %d", l.Digest, got, len(data), l.DiffID, l.DiffSize)
	}
	var hdrs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		hdrs = append(hdrs, h)
	}
	return hdrs, members
}

// TestLayers checks every layer of tiny(): blob and tar digests, media type,
// gzip member counts, tar order (parents before children, hard-link targets
// before links) and the entry kinds the zoo promises.
func TestLayers(t *testing.T) {
	img, err := Generate(t.TempDir(), tiny())
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	wantMedia := map[Compression]string{
		Gzip: MediaTypeOCILayerGzip, GzipParallel: MediaTypeOCILayerGzip, GzipMultiMember: MediaTypeOCILayerGzip,
		Zstd: MediaTypeOCILayerZstd, Uncompressed: MediaTypeOCILayer,
	}
	seen := make(map[string]bool)
	for i, l := range img.Layers {
		if l.MediaType != wantMedia[l.Compression] {
			t.Errorf("layer %d (%s) media type %s, want %s", i+1, l.Compression, l.MediaType, wantMedia[l.Compression])
		}
		hdrs, members := layerEntries(t, img, l)
		if len(hdrs) != l.Entries {
			t.Errorf("layer %d has %d entries, metadata says %d", i+1, len(hdrs), l.Entries)
		}
		switch l.Compression {
		case Gzip, GzipParallel:
			if members != 1 {
				t.Errorf("layer %d (%s) has %d gzip members, want 1", i+1, l.Compression, members)
			}
		case GzipMultiMember:
			if want := int((l.DiffSize + 16<<10 - 1) / (16 << 10)); members != want {
				t.Errorf("layer %d has %d gzip members, want %d", i+1, members, want)
			}
		}
		names := make(map[string]bool)
		for _, h := range hdrs {
			name := strings.TrimSuffix(h.Name, "/")
			if dir := path.Dir(name); dir != "." && !names[dir] {
				t.Errorf("layer %d: %s comes before its directory", i+1, h.Name)
			}
			if h.Typeflag == tar.TypeLink && !names[h.Linkname] {
				t.Errorf("layer %d: hard link %s comes before its target %s", i+1, h.Name, h.Linkname)
			}
			names[name] = true
			base := path.Base(name)
			switch {
			case base == OpaqueMarker:
				seen["opaque"] = true
			case strings.HasPrefix(base, WhiteoutPrefix):
				seen["whiteout"] = true
			}
			seen["type "+string(h.Typeflag)] = true
			if h.Format == tar.FormatPAX {
				seen["pax"] = true
			}
			if len(h.Name) > 255 {
				seen["path>255"] = true
			}
			if len(base) > 100 {
				seen["name>100"] = true
			}
			if len(h.Linkname) > 100 {
				seen["linkname>100"] = true
			}
			if h.ModTime.Nanosecond() != 0 {
				seen["subsecond"] = true
			}
			if h.Mode&0o4000 != 0 {
				seen["setuid"] = true
			}
			if h.Mode&0o2000 != 0 {
				seen["setgid"] = true
			}
			if h.Mode&0o1000 != 0 {
				seen["sticky"] = true
			}
			for k := range h.PAXRecords {
				if strings.HasPrefix(k, "SCHILY.xattr.security.capability") {
					seen["capability"] = true
				}
				if strings.HasPrefix(k, "SCHILY.xattr.user.") {
					seen["user xattr"] = true
				}
			}
			if h.Typeflag == tar.TypeReg && h.Size == 0 && !strings.HasPrefix(base, ".wh.") {
				seen["empty"] = true
			}
			if h.Typeflag == tar.TypeReg && h.Size > 0 && h.Size%512 == 0 {
				seen["size%512"] = true
			}
			if h.Typeflag == tar.TypeSymlink && strings.HasPrefix(h.Linkname, "/") {
				seen["absolute symlink"] = true
			}
			if h.Typeflag == tar.TypeSymlink && !strings.HasPrefix(h.Linkname, "/") {
				seen["relative symlink"] = true
			}
			if h.Uid != 0 && h.Uname != "" {
				seen["named owner"] = true
			}
		}
	}
	for _, want := range []string{"opaque", "whiteout", "type 0", "type 1", "type 2", "type 3", "type 4", "type 5", "type 6",
		"pax", "path>255", "name>100", "linkname>100", "subsecond", "setuid", "setgid", "sticky", "capability",
		"user xattr", "empty", "size%512", "absolute symlink", "relative symlink", "named owner"} {
		if !seen[want] {
			t.Errorf("no layer has an entry with %s", want)
		}
	}
}

// TestExpectedTree checks the overlay semantics of the expected tree of
// tiny(): what the top layer deletes is gone, opaque directories hold only
// the new files, replaced paths have their new type, and the zoo's kinds are
// all there.
func TestExpectedTree(t *testing.T) {
	img, err := Generate(t.TempDir(), tiny())
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	tree, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	top, _ := layerEntries(t, img, img.Layers[len(img.Layers)-1])
	deleted, opaque := 0, 0
	for _, h := range top {
		name := strings.TrimSuffix(h.Name, "/")
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == OpaqueMarker:
			opaque++
			for p := range tree {
				if strings.HasPrefix(p, dir+"/") && !strings.Contains(p, "/opaque-new-") {
					t.Errorf("%s is in opaque directory %s but not from the top layer", p, dir)
				}
			}
		case strings.HasPrefix(base, WhiteoutPrefix):
			deleted++
			gone := path.Join(dir, strings.TrimPrefix(base, WhiteoutPrefix))
			for p := range tree {
				if p == gone || strings.HasPrefix(p, gone+"/") {
					t.Errorf("%s is in the expected tree, but the top layer deletes %s", p, gone)
				}
			}
		}
	}
	if deleted != 6 || opaque != 2 {
		t.Errorf("top layer has %d whiteouts and %d opaque markers, want 6 and 2", deleted, opaque)
	}
	types := make(map[fstree.Type]bool)
	groups := 0
	for p, n := range tree {
		types[n.Type] = true
		if n.LinkGroup == p {
			groups++
		}
		if n.Type == fstree.TypeFile && len(n.SHA256) != 64 {
			t.Errorf("%s: file without sha256", p)
		}
	}
	for _, typ := range []fstree.Type{fstree.TypeDir, fstree.TypeFile, fstree.TypeSymlink, fstree.TypeChar, fstree.TypeBlock, fstree.TypeFIFO} {
		if !types[typ] {
			t.Errorf("expected tree has no %s", typ)
		}
	}
	if groups < 2 {
		t.Errorf("expected tree has %d hard-link groups, want at least 2", groups)
	}
	if n := tree["layer5/zoo/hard-a"]; n.LinkGroup != "layer5/zoo/hard-a" || tree["layer5/zoo/sticky/hard-c"].LinkGroup != "layer5/zoo/hard-a" {
		t.Errorf("layer5/zoo/hard-a link group %q, want it shared with sticky/hard-c", n.LinkGroup)
	}
	// Layer 1's hard-b was deleted by the top layer: hard-a is in a group
	// only if hard-c survived (its directory may have been made opaque).
	wantGroup := ""
	if _, ok := tree["layer1/zoo/sticky/hard-c"]; ok {
		wantGroup = "layer1/zoo/hard-a"
	}
	if got := tree["layer1/zoo/hard-a"].LinkGroup; got != wantGroup {
		t.Errorf("layer1/zoo/hard-a link group = %q, want %q", got, wantGroup)
	}
	for p, n := range tree {
		if n.LinkGroup == "" {
			continue
		}
		leader, ok := tree[n.LinkGroup]
		if !ok || leader.SHA256 != n.SHA256 || leader.Mode != n.Mode || leader.LinkGroup != n.LinkGroup {
			t.Errorf("%s: link group %q has a different or missing leader", p, n.LinkGroup)
		}
	}
	if _, ok := tree["layer1/zoo/hard-b"]; ok {
		t.Error("layer1/zoo/hard-b survived its whiteout")
	}
}

func TestValidate(t *testing.T) {
	ok := Options{Layers: []LayerSpec{{}}}
	tests := []struct {
		name   string
		opts   Options
		wantOK bool
	}{
		{"minimal", ok, true},
		{"presets", Small(), true},
		{"no layers", Options{}, false},
		{"media types", Options{MediaTypes: "v1", Layers: []LayerSpec{{}}}, false},
		{"compression", Options{Layers: []LayerSpec{{Compression: "lz4"}}}, false},
		{"docker zstd", Options{MediaTypes: Docker, Layers: []LayerSpec{{Compression: Zstd}}}, false},
		{"absolute dir", Options{Layers: []LayerSpec{{Dir: "/abs"}}}, false},
		{"dotdot dir", Options{Layers: []LayerSpec{{Dir: "../x"}}}, false},
		{"same dir", Options{Layers: []LayerSpec{{Dir: "a"}, {Dir: "a"}}}, false},
		{"whiteouts in base", Options{Layers: []LayerSpec{{Whiteouts: 1}}}, false},
		{"negative size", Options{Layers: []LayerSpec{{Random: []int64{-1}}}}, false},
		{"small block", Options{GzipBlockSize: 1024, Layers: []LayerSpec{{}}}, false},
	}
	for _, tc := range tests {
		err := tc.opts.Validate()
		if (err == nil) != tc.wantOK {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.wantOK)
		}
		if err != nil && !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: Validate() error %v does not wrap ErrInvalidOptions", tc.name, err)
		}
	}
	for _, name := range []string{"small", "E2E", "bench1g"} {
		o, err := Preset(name)
		if err != nil {
			t.Errorf("Preset(%q): %v", name, err)
			continue
		}
		if err := o.Validate(); err != nil {
			t.Errorf("Preset(%q).Validate() = %v", name, err)
		}
	}
	if _, err := Preset("huge"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Preset(huge) error = %v, want ErrInvalidOptions", err)
	}
}

func TestGenerateErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(dir, tiny()); !errors.Is(err, ErrNotEmpty) {
		t.Errorf("Generate(non-empty dir) error = %v, want ErrNotEmpty", err)
	}
	o := tiny()
	o.Layers[0].Busybox = true
	o.Busybox = "/bin/true" // dynamically linked on Debian
	if _, err := Generate(t.TempDir(), o); !errors.Is(err, ErrBusyboxNotStatic) {
		t.Errorf("Generate(dynamic busybox) error = %v, want ErrBusyboxNotStatic", err)
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNoImage) {
		t.Errorf("Load(empty dir) error = %v, want ErrNoImage", err)
	}
}

// TestCached checks reuse, regeneration on another key, and removal of the
// old version.
func TestCached(t *testing.T) {
	dir := t.TempDir()
	a, err := Cached(dir, tiny())
	if err != nil {
		t.Fatalf("Cached: %v", err)
	}
	meta := filepath.Join(a.Dir, MetadataFile)
	marker := []byte(`{"touched": true}`)
	// Reuse must not rewrite the layout: mark the metadata's blob set as
	// seen by writing a file the generator never writes.
	if err := os.WriteFile(filepath.Join(a.Dir, "marker"), marker, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := Cached(dir, tiny())
	if err != nil {
		t.Fatalf("Cached again: %v", err)
	}
	if b.Dir != a.Dir || b.ManifestDigest != a.ManifestDigest {
		t.Errorf("second Cached = %s %s, want %s %s", b.Dir, b.ManifestDigest, a.Dir, a.ManifestDigest)
	}
	if _, err := os.Stat(filepath.Join(b.Dir, "marker")); err != nil {
		t.Errorf("second Cached regenerated the image: %v", err)
	}
	if tr, err := b.ExpectedTree(); err != nil || len(tr) == 0 {
		t.Errorf("ExpectedTree of a cached image = %d paths, %v", len(tr), err)
	}

	// A missing blob makes the entry invalid.
	if err := os.Remove(a.BlobPath(a.Layers[0].Digest)); err != nil {
		t.Fatal(err)
	}
	c, err := Cached(dir, tiny())
	if err != nil {
		t.Fatalf("Cached after damage: %v", err)
	}
	if _, err := os.Stat(c.BlobPath(c.Layers[0].Digest)); err != nil {
		t.Errorf("Cached did not regenerate a damaged image: %v", err)
	}

	o := tiny()
	o.Seed++
	d, err := Cached(dir, o)
	if err != nil {
		t.Fatalf("Cached(other seed): %v", err)
	}
	if d.Dir == a.Dir {
		t.Errorf("another seed reused %s", a.Dir)
	}
	if _, err := os.Stat(meta); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old version %s not removed (stat: %v)", a.Dir, err)
	}
	var img Image
	b2, _ := os.ReadFile(filepath.Join(d.Dir, MetadataFile))
	if err := json.Unmarshal(b2, &img); err != nil || img.Options.Seed != o.Seed {
		t.Errorf("metadata of the new version: seed %d, %v; want seed %d", img.Options.Seed, err, o.Seed)
	}
}
