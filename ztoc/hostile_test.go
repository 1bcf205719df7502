package ztoc

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tests/gzipbomb"
)

// TestOneBlockBombIsAValidStream: the bomb generator is right (so that the
// tests below fail for the reason they claim): a small bomb inflates with
// the standard library to the zeros it says.
func TestOneBlockBombIsAValidStream(t *testing.T) {
	r, n := gzipbomb.OneBlock(4002)
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("stdlib gzip: %v", err)
	}
	if int64(len(got)) != n || !bytes.Equal(got, make([]byte, n)) {
		t.Fatalf("bomb inflates to %d bytes (zero: %v), want %d zeros", len(got), bytes.Equal(got, make([]byte, len(got))), n)
	}
}

// bombLayer is a layer of two gzip members: a tar header for a file of the
// bomb's size, then the bomb (one deflate block) as the file's data and the
// end-of-archive zeros.
func bombLayer(t testing.TB, matches int64) io.Reader {
	t.Helper()
	bomb, n := gzipbomb.OneBlock(matches)
	size := (n - 1024) / 512 * 512
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	tw.Flush() // no data, no end marker: the bomb supplies both
	return io.MultiReader(bytes.NewReader(gzipMembers(t, hdr.Bytes(), 6, 0)), bomb)
}

// allocatedDuring returns the bytes allocated while f ran.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestBuildRefusesOneBlockBomb: indexing a layer whose second member is
// ONE deflate block of 5 GB (5 MB compressed) fails with ErrLimit as soon
// as a span would pass Limits.MaxSpanSize, having read little of the
// stream and allocated a bounded amount, with and without OnSpan.
func TestBuildRefusesOneBlockBomb(t *testing.T) {
	const fiveGB = 5_000_000_000/258/4*4 + 2
	for _, onSpan := range []bool{false, true} {
		t.Run(fmt.Sprintf("OnSpan=%v", onSpan), func(t *testing.T) {
			cr := &countingReader{r: bombLayer(t, fiveGB)}
			opts := BuildOptions{}
			lim := DefaultLimits()
			if onSpan {
				// The compressed bytes of the current span are buffered for
				// OnSpan; a smaller span limit keeps the test quick.
				opts.OnSpan = func(SpanID, []byte) error { return nil }
				lim.MaxSpanSize = 8 << 20
				opts.Limits = lim
			}
			var err error
			alloc := allocatedDuring(func() { _, err = Build(context.Background(), cr, opts) })
			if !errors.Is(err, ErrLimit) {
				t.Fatalf("Build of a 5 GB one-block bomb = %v, want ErrLimit", err)
			}
			if !strings.Contains(err.Error(), "no deflate block boundary") {
				t.Errorf("error %q does not say why", err)
			}
			// It stops within a few MiB of input past MaxSpanSize/1032.
			if cr.n > 8<<20 {
				t.Errorf("Build read %d compressed bytes of the bomb before refusing it", cr.n)
			}
			if bound := uint64(lim.MaxSpanSize/4 + 32<<20); alloc > bound {
				t.Errorf("Build allocated %d bytes, more than %d", alloc, bound)
			}
			t.Logf("refused after %d compressed bytes, %d bytes allocated: %v", cr.n, alloc, err)
		})
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// manyEntriesLayer is a layer of n empty files (n a multiple of chunk): one
// gzip member of chunk tar headers repeated, then one with the
// end-of-archive marker. Three million entries take about 8 MB.
func manyEntriesLayer(t testing.TB, n, chunk int) io.Reader {
	t.Helper()
	var hdrs bytes.Buffer
	tw := tar.NewWriter(&hdrs)
	for i := 0; i < chunk; i++ {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d/f%07d", i), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1e9, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	tw.Flush()
	member := gzipMembers(t, hdrs.Bytes(), 1, 0)
	parts := make([]io.Reader, 0, n/chunk+1)
	for i := 0; i < n/chunk; i++ {
		parts = append(parts, bytes.NewReader(member))
	}
	parts = append(parts, bytes.NewReader(gzipMembers(t, make([]byte, 1024), 9, 0)))
	return io.MultiReader(parts...)
}

// TestBuildRefusesMillionsOfEntries: a layer of 3 million entries fails
// with ErrLimit at Limits.MaxEntries, and what Build allocates grows with
// the limit, not with the layer.
func TestBuildRefusesMillionsOfEntries(t *testing.T) {
	lim := Limits{MaxEntries: 20_000}
	var err error
	alloc := allocatedDuring(func() {
		_, err = Build(context.Background(), manyEntriesLayer(t, 3_000_000, 2_000), BuildOptions{Limits: lim})
	})
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "more than 20000 entries") {
		t.Fatalf("Build of 3 million entries = %v, want ErrLimit at 20000 entries", err)
	}
	// archive/tar and the file table take under 2 KiB per entry read (4 KiB
	// under the race detector, whose sync.Pool drops buffers); without the
	// limit this layer would take over 4 GB.
	if bound := uint64(lim.MaxEntries) * 8192; alloc > bound {
		t.Errorf("Build allocated %d bytes for %d entries, more than %d", alloc, lim.MaxEntries, bound)
	}
	t.Logf("%d bytes allocated (%d per entry of the limit)", alloc, alloc/uint64(lim.MaxEntries))
	if DefaultMaxEntries >= 3_000_000 {
		t.Errorf("the default entry limit %d admits this layer", DefaultMaxEntries)
	}
}

// TestDecodeRefusesMillionsOfEntries: a zTOC from outside that claims 3
// million entries is refused by the default limits before the decoder
// allocates anything for them.
func TestDecodeRefusesMillionsOfEntries(t *testing.T) {
	b := hostileZtocs(t)["entries-3M"]
	var derr error
	alloc := allocatedDuring(func() { _, derr = Unmarshal(b) })
	if !errors.Is(derr, ErrLimit) || !strings.Contains(derr.Error(), "3000000 elements") {
		t.Fatalf("Unmarshal of a zTOC claiming 3 million entries = %v, want ErrLimit", derr)
	}
	if alloc > 1<<20 {
		t.Errorf("Unmarshal allocated %d bytes before refusing it", alloc)
	}
	if _, _, err := Decode(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrLimit) {
		t.Errorf("Decode = %v, want ErrLimit", err)
	}
}

// TestBuildEntryLimits: names, PAX records and xattrs beyond the limits.
func TestBuildEntryLimits(t *testing.T) {
	mt := time.Unix(1e9, 0)
	layer := func(h tar.Header) []byte {
		h.ModTime, h.Typeflag, h.Mode, h.Format = mt, tar.TypeReg, 0o644, tar.FormatPAX
		return gzipMembers(t, tarBytes(t, []testEntry{{hdr: h}}), 6, 0)
	}
	many := map[string]string{}
	for i := 0; i < 40; i++ {
		many[fmt.Sprintf("SCHILY.xattr.user.k%02d", i)] = "v"
	}
	lim := Limits{MaxNameLen: 100, MaxPAXRecords: 30, MaxPAXBytes: 4096, MaxXattrSize: 1000}
	for _, tc := range []struct {
		name string
		hdr  tar.Header
		want string
	}{
		{"long name", tar.Header{Name: strings.Repeat("n", 101)}, "name of 101 bytes"},
		{"long link name", tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: strings.Repeat("t", 200)}, "link name"},
		{"many PAX records", tar.Header{Name: "p", PAXRecords: many}, "PAX records exceed"},
		{"big xattr", tar.Header{Name: "x", PAXRecords: map[string]string{"SCHILY.xattr.user.big": strings.Repeat("v", 1001)}}, "xattr"},
		{"long xattr name", tar.Header{Name: "x", PAXRecords: map[string]string{"SCHILY.xattr." + strings.Repeat("u", 256): "v"}}, "xattr name"},
		{"PAX bytes", tar.Header{Name: "x", PAXRecords: map[string]string{"comment": strings.Repeat("c", 5000)}}, "PAX records of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := layer(tc.hdr)
			if tc.hdr.Typeflag == tar.TypeSymlink {
				h := tc.hdr
				h.ModTime, h.Mode, h.Format = mt, 0o777, tar.FormatPAX
				blob = gzipMembers(t, tarBytes(t, []testEntry{{hdr: h}}), 6, 0)
			}
			_, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{Limits: lim})
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want ErrLimit mentioning %q", err, tc.want)
			}
			if strings.Contains(tc.want, "xattr name") {
				return // XATTR_NAME_MAX is not a setting
			}
			if _, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{}); err != nil {
				t.Errorf("Build with the default limits = %v", err)
			}
		})
	}
}

// hostileGeometry returns a gzip zTOC (of sampleZtoc's entries) with the
// given checkpoints and sizes.
func hostileGeometry(t testing.TB, compressed, uncompressed int64, points []Checkpoint) *Ztoc {
	t.Helper()
	z := sampleZtoc(t)
	z.CompressedArchiveSize, z.UncompressedArchiveSize = compressed, uncompressed
	windows := make([][]byte, len(points))
	var buf bytes.Buffer
	if err := EncodeCheckpoints(&buf, DefaultSpanSize, points, windows); err != nil {
		t.Fatal(err)
	}
	z.CompressionInfo.Checkpoints = buf.Bytes()
	z.CompressionInfo.SpanDigests = make([]digest.Digest, len(points))
	for i := range points {
		z.CompressionInfo.SpanDigests[i] = digest.FromString(fmt.Sprint(i))
	}
	z.CompressionInfo.MaxSpanID = SpanID(len(points) - 1)
	return z
}

// TestOpenRefusesHostileGeometry: zTOCs whose spans would need absurd
// memory (the 2^49-byte span of issue 10, which panicked in make([]byte))
// or claim more than DEFLATE can produce are refused when opened, with
// ErrLimit and ErrMalformed, both as a buffer and as a file.
func TestOpenRefusesHostileGeometry(t *testing.T) {
	const huge = int64(1) << 49
	tarZ := func(spanSize, size int64) *Ztoc {
		z := sampleZtoc(t)
		z.CompressionInfo.Algorithm = Uncompressed
		z.CompressedArchiveSize, z.UncompressedArchiveSize = size, size
		z.CompressionInfo.Checkpoints, _ = EncodeTarZinfo(spanSize, size)
		n := tarMaxSpanID(spanSize, size) + 1
		z.CompressionInfo.SpanDigests = make([]digest.Digest, n)
		for i := range z.CompressionInfo.SpanDigests {
			z.CompressionInfo.SpanDigests[i] = digest.FromString("s")
		}
		z.CompressionInfo.MaxSpanID = SpanID(n - 1)
		return z
	}
	farData := sampleZtoc(t) // 4 MiB of "headers" in front of the last entry
	farData.UncompressedArchiveSize += 4 << 20
	farData.TOC.FileMetadata[7].UncompressedOffset += 4 << 20
	for _, tc := range []struct {
		name string
		z    *Ztoc
		lim  Limits
		want string
	}{
		{"header run of 4 MiB", farData, Limits{}, "tar headers in front"},
		{"2^49-byte last span", hostileGeometry(t, 1e12, huge, []Checkpoint{{In: 10}, {In: 70_000, Out: 4 << 20}}), Limits{}, "span 1"},
		{"2^49-byte middle span", hostileGeometry(t, 1e12, huge+100, []Checkpoint{{In: 10}, {In: 70_000, Out: huge}}), Limits{}, "span 0"},
		{"layer ratio", hostileGeometry(t, 100_000, 200_000_000, []Checkpoint{{In: 10}}), Limits{}, "ratio"},
		{"span ratio", hostileGeometry(t, 10_000_000, 60<<20, []Checkpoint{{In: 10}, {In: 20_000, Out: 30 << 20}, {In: 9_000_000, Out: 31 << 20}}), Limits{}, "ratio"},
		{"span longer than a raised limit", hostileGeometry(t, 1e9, 5<<20, []Checkpoint{{In: 10}}), Limits{MaxSpanSize: 4 << 20}, "span 0"},
		{"compressed span too long", hostileGeometry(t, 200<<20, 300<<20, []Checkpoint{{In: 10}, {In: 100 << 20, Out: 100 << 20}}), Limits{}, "span 0"},
		{"too many spans", hostileGeometry(t, 1e6, 8<<20, []Checkpoint{{In: 10}, {In: 100, Out: 1 << 20}, {In: 200, Out: 2 << 20}}), Limits{MaxSpans: 2}, "exceed"},
		{"tar span 2^40", tarZ(1<<40, 5<<20), Limits{}, "span size"},
		{"entries", sampleZtoc(t), Limits{MaxEntries: 7}, "limit of 7"},
		{"metadata", sampleZtoc(t), Limits{MaxMetadataBytes: 1000}, "metadata limit"},
		{"name", sampleZtoc(t), Limits{MaxNameLen: 10}, "exceeds the 10-byte limit"},
		{"PAX records", sampleZtoc(t), Limits{MaxPAXRecords: 2}, "limit of 2"},
		{"xattr", sampleZtoc(t), Limits{MaxXattrSize: 4}, "xattr"},
		{"zTOC size", sampleZtoc(t), Limits{MaxZtocSize: 4096}, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrLimit) || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s = %v, want ErrLimit and ErrMalformed mentioning %q", what, err, tc.want)
				}
			}
			_, err := NewLayerIndex(tc.z, nil, 0, WithLimits(tc.lim))
			check("NewLayerIndex", err)
			b, err := encode(tc.z, 1<<16) // no validation: a forger's bytes
			if err != nil {
				t.Fatal(err)
			}
			_, err = OpenLayerIndex(bytes.NewReader(b), int64(len(b)), WithLimits(tc.lim))
			check("OpenLayerIndex", err)
			_, err = Unmarshal(b, WithLimits(tc.lim))
			check("Unmarshal", err)
		})
	}
	// The same zTOCs within the limits open.
	if _, err := NewLayerIndex(sampleZtoc(t), nil, 0); err != nil {
		t.Errorf("NewLayerIndex(sample) = %v", err)
	}
}

// TestInflateSpanHostileCheckpoints: a zTOC that passed OpenLayerIndex but
// whose checkpoints are not block boundaries (digests re-signed) never
// panics or allocates past the span's length when inflating; it errors or
// gives bytes Verify refuses.
func TestInflateSpanHostileCheckpoints(t *testing.T) {
	f := tamperFixture(t)
	for shift := int64(-3); shift <= 3; shift++ {
		for bits := uint8(0); bits < 8; bits++ {
			z := cloneZtoc(f.res.Ztoc)
			editCheckpoints(t, z, func(p []Checkpoint, w [][]byte) ([]Checkpoint, [][]byte) {
				p[3].In += shift
				p[3].Bits = bits
				return p, w
			})
			resign(t, z, f.blob)
			x, err := NewLayerIndex(z, nil, 0)
			if err != nil {
				continue
			}
			c0, c1 := x.SpanCompressedRange(3)
			u0, u1 := x.SpanUncompressedRange(3)
			out, err := x.InflateSpan(3, f.blob[c0:c1], nil)
			if err == nil && int64(len(out)) != u1-u0 {
				t.Errorf("shift %d bits %d: InflateSpan gave %d bytes, want %d", shift, bits, len(out), u1-u0)
			}
		}
	}
}

// panickySource panics in its first FetchSpans, after signalling entry and
// waiting for release; later calls read the blob.
type panickySource struct {
	inner    SpanSource
	entered  chan struct{}
	release  chan struct{}
	panicked bool
	mu       sync.Mutex
}

func (p *panickySource) FetchSpans(ctx context.Context, a, b SpanID) ([][]byte, error) {
	p.mu.Lock()
	first := !p.panicked
	p.panicked = true
	p.mu.Unlock()
	if first {
		close(p.entered)
		<-p.release
		panic("boom: inflating a crafted span")
	}
	return p.inner.FetchSpans(ctx, a, b)
}

// TestReaderFlightsCompleteAfterPanic: a reader whose fetch panics does not
// leave its spans in flight: a second reader waiting for the same span gets
// an error (not a hang), and a third one reads the span afterwards.
func TestReaderFlightsCompleteAfterPanic(t *testing.T) {
	f := tamperFixture(t)
	x, err := NewLayerIndex(f.res.Ztoc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	src := &panickySource{inner: ReaderAtSource(x, bytes.NewReader(f.blob)), entered: make(chan struct{}), release: make(chan struct{})}
	cache := NewSpanCache(64 << 20)
	r := NewReader(x, src, cache)
	buf := make([]byte, 100)
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		r.ReadAt(context.Background(), buf, 0)
	}()
	<-src.entered
	waiter := make(chan error, 1)
	go func() {
		_, err := r.ReadAt(context.Background(), make([]byte, 100), 0)
		waiter <- err
	}()
	// The waiter has joined the flight when the cache counted its miss.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, misses := cache.Stats(); misses >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second reader never looked the span up")
		}
		time.Sleep(time.Millisecond)
	}
	close(src.release)
	if p := <-panicked; p == nil {
		t.Fatal("the first reader did not panic")
	}
	select {
	case err := <-waiter:
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("the waiting reader got %v, want the abandoned flight's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting reader hangs on a span whose fetch panicked")
	}
	if _, err := r.ReadAt(context.Background(), buf, 0); err != nil || !bytes.Equal(buf, f.raw[:100]) {
		t.Errorf("a later read = %v (bytes equal: %v)", err, bytes.Equal(buf, f.raw[:100]))
	}
}

// TestLimitsDefaults: the zero value means the documented defaults, and no
// limit can pass the format's ceiling.
func TestLimitsDefaults(t *testing.T) {
	d := DefaultLimits()
	want := Limits{
		MaxZtocSize: DefaultMaxZtocSize, MaxEntries: DefaultMaxEntries, MaxMetadataBytes: DefaultMaxMetadataBytes,
		MaxNameLen: DefaultMaxNameLen, MaxPAXRecords: DefaultMaxPAXRecords, MaxPAXBytes: DefaultMaxPAXBytes,
		MaxXattrSize: DefaultMaxXattrSize, MaxSpans: DefaultMaxSpans, MaxSpanSize: DefaultMaxSpanSize,
		MaxRatio: DefaultMaxRatio, MaxIndexSize: DefaultMaxIndexSize,
	}
	if d != want {
		t.Errorf("DefaultLimits() = %+v, want %+v", d, want)
	}
	high := Limits{MaxZtocSize: math.MaxInt64, MaxRatio: 1 << 20}.withDefaults()
	if high.MaxZtocSize != MaxZtocSize || high.MaxRatio != DeflateMaxRatio {
		t.Errorf("limits past the format ceilings = %d, %d; want %d, %d", high.MaxZtocSize, high.MaxRatio, MaxZtocSize, DeflateMaxRatio)
	}
	if l := (Limits{MaxEntries: 5}).withDefaults(); l.MaxEntries != 5 || l.MaxSpans != DefaultMaxSpans {
		t.Errorf("a partly set Limits = %+v", l)
	}
}
