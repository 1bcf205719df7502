package alsfs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/lazypull/lazypull/ztoc"
	digest "github.com/opencontainers/go-digest"
)

// tarContent is a LayerContent read from real tar bytes: Entries from
// archive/tar's headers, file data straight from the tar stream.
type tarContent struct {
	entries []ztoc.FileMetadata
	data    []byte
}

var _ LayerContent = (*tarContent)(nil)

// countingReader tells where in the stream archive/tar is.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

var tarTypes = map[byte]string{
	tar.TypeReg: ztoc.TypeReg, tar.TypeDir: ztoc.TypeDir, tar.TypeSymlink: ztoc.TypeSymlink,
	tar.TypeLink: ztoc.TypeHardlink, tar.TypeChar: ztoc.TypeChar, tar.TypeBlock: ztoc.TypeBlock,
	tar.TypeFifo: ztoc.TypeFifo,
}

func newTarContent(t testing.TB, data []byte) *tarContent {
	t.Helper()
	cr := &countingReader{r: bytes.NewReader(data)}
	tr := tar.NewReader(cr)
	c := &tarContent{data: data}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read test tar: %v", err)
		}
		typ, ok := tarTypes[h.Typeflag]
		if !ok {
			t.Fatalf("test tar: unexpected type %q", h.Typeflag)
		}
		c.entries = append(c.entries, ztoc.FileMetadata{
			Name: h.Name, Type: typ, UncompressedOffset: cr.n, UncompressedSize: h.Size,
			Linkname: h.Linkname, Mode: h.Mode, UID: uint32(h.Uid), GID: uint32(h.Gid),
			Uname: h.Uname, Gname: h.Gname, ModTime: h.ModTime,
			Devmajor: h.Devmajor, Devminor: h.Devminor, PAXRecords: h.PAXRecords,
		})
	}
	return c
}

func (c *tarContent) Entries() []ztoc.FileMetadata { return c.entries }

func (c *tarContent) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	e := &c.entries[i]
	if off >= e.UncompressedSize {
		return 0, io.EOF
	}
	start := e.UncompressedOffset + off
	n := copy(p, c.data[start:e.UncompressedOffset+e.UncompressedSize])
	if off+int64(n) == e.UncompressedSize {
		return n, io.EOF
	}
	return n, nil
}

// tarEntry describes an entry of a test tar.
type tarEntry struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	link     string
	data     []byte
	major    int64
	minor    int64
	mtime    time.Time
	xattrs   map[string]string
}

var testTime = time.Date(2023, 5, 6, 7, 8, 9, 123456789, time.UTC)

func writeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			Size: int64(len(e.data)), Devmajor: e.major, Devminor: e.minor, ModTime: e.mtime,
			Format: tar.FormatPAX,
		}
		if h.ModTime.IsZero() {
			h.ModTime = testTime
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = make(map[string]string)
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("write tar header %q: %v", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatalf("write tar data %q: %v", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("close tar: %v", err)
	}
	return buf.Bytes()
}

// testLayer is a Layer with fixed parts.
type testLayer struct {
	info    []byte
	blob    []byte
	content LayerContent
}

func (l *testLayer) Info() ([]byte, error)          { return l.info, nil }
func (l *testLayer) Blob() (io.ReaderAt, int64)     { return bytes.NewReader(l.blob), int64(len(l.blob)) }
func (l *testLayer) Content() (LayerContent, error) { return l.content, nil }
func (l *testLayer) Release()                       {}

func newTestLayer(t testing.TB, entries []tarEntry) *testLayer {
	data := writeTar(t, entries)
	return &testLayer{
		info:    []byte(fmt.Sprintf(`{"compressed-diff-digest":%q,"compressed-size":%d}`, digest.FromBytes(data), len(data))),
		blob:    data,
		content: newTarContent(t, data),
	}
}

// testResolver serves fixed layers and counts calls.
type testResolver struct {
	mu       sync.Mutex
	layers   map[viewKey]Layer
	lookups  map[viewKey]int
	uses     map[viewKey]int
	releases map[viewKey]int
	// gate, if set, is received from before each Lookup answers.
	gate chan struct{}
	// fail makes Lookup of a key fail while set.
	fail map[viewKey]error
	// dropped counts Layer.Release calls, by key.
	dropped map[viewKey]int
}

// countedLayer counts the filesystem's Release of a looked up layer.
type countedLayer struct {
	Layer
	r   *testResolver
	key viewKey
}

func (l *countedLayer) Release() {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	l.r.dropped[l.key]++
}

// layerReleases returns how often layers looked up under (ref, d) were
// released by the filesystem.
func (r *testResolver) layerReleases(ref string, d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped[viewKey{ref, d}]
}

var _ Resolver = (*testResolver)(nil)

func newTestResolver() *testResolver {
	return &testResolver{
		layers: map[viewKey]Layer{}, lookups: map[viewKey]int{}, uses: map[viewKey]int{},
		releases: map[viewKey]int{}, fail: map[viewKey]error{}, dropped: map[viewKey]int{},
	}
}

func (r *testResolver) add(ref string, d digest.Digest, l Layer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.layers[viewKey{ref, d}] = l
}

func (r *testResolver) setFail(ref string, d digest.Digest, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.fail, viewKey{ref, d})
	} else {
		r.fail[viewKey{ref, d}] = err
	}
}

func (r *testResolver) Lookup(ctx context.Context, ref string, d digest.Digest) (Layer, error) {
	key := viewKey{ref, d}
	r.mu.Lock()
	r.lookups[key]++
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fail[key]; err != nil {
		return nil, err
	}
	l, ok := r.layers[key]
	if !ok {
		return nil, fmt.Errorf("layer %s of %q: %w", d, ref, os.ErrNotExist)
	}
	return &countedLayer{Layer: l, r: r, key: key}, nil
}

func (r *testResolver) Use(ref string, d digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.uses[viewKey{ref, d}]++
}

func (r *testResolver) Release(ref string, d digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.releases[viewKey{ref, d}]++
}

func (r *testResolver) counts(ref string, d digest.Digest) (lookups, uses, releases int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := viewKey{ref, d}
	return r.lookups[k], r.uses[k], r.releases[k]
}

// canMount skips tests that need to mount FUSE or overlay filesystems.
func canMount(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
}

// mountTest mounts a filesystem under t.TempDir and unmounts it in
// t.Cleanup.
func mountTest(t testing.TB, r Resolver, opts Options) (*Server, string) {
	t.Helper()
	canMount(t)
	mnt := t.TempDir()
	s, err := Mount(mnt, r, opts)
	if err != nil {
		t.Fatalf("Mount(%s) = %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	return s, mnt
}

// layerDigest is a digest used as a layer name in tests.
func layerDigest(s string) digest.Digest { return digest.FromString(s) }
