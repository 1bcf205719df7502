package ztoc

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The benchmarks of this file run on one generated layer (about 100 MiB of
// tar, 55 MB of gzip at level 6 by compress/gzip): text-like, binary-like
// and incompressible files of 1 KiB to 8 MiB. It is generated once and kept
// in os.TempDir(), so only the first -bench run pays for it; `go test`
// without -bench never generates it.

// benchLayerVersion changes whenever the generated layer would change.
const benchLayerVersion = 1

// benchLayerSize is the approximate size of the tar stream.
const benchLayerSize = 100 << 20

var (
	benchOnce  sync.Once
	benchBlob  []byte
	benchError error
)

// benchLayer returns the benchmark layer blob.
func benchLayer(b *testing.B) []byte {
	b.Helper()
	benchOnce.Do(func() {
		name := filepath.Join(os.TempDir(), fmt.Sprintf("lazypull-ztoc-bench-v%d-%d.tar.gz", benchLayerVersion, benchLayerSize))
		if blob, err := os.ReadFile(name); err == nil {
			benchBlob = blob
			return
		}
		var buf bytes.Buffer
		if benchError = writeBenchLayer(&buf, benchLayerSize); benchError != nil {
			return
		}
		benchBlob = buf.Bytes()
		tmp := name + fmt.Sprintf(".tmp%d", os.Getpid())
		if err := os.WriteFile(tmp, benchBlob, 0o644); err == nil {
			_ = os.Rename(tmp, name) // a failure only costs a regeneration next time
		}
	})
	if benchError != nil {
		b.Fatalf("generate benchmark layer: %v", benchError)
	}
	return benchBlob
}

// writeBenchLayer writes a deterministic gzip tar layer of about size bytes
// of tar to w.
func writeBenchLayer(w io.Writer, size int64) error {
	zw, err := gzip.NewWriterLevel(w, 6)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	rng := rand.New(rand.NewPCG(7, 11))
	words := benchVocabulary(rng)
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	var data []byte
	for i, total := 0, int64(0); total < size; i++ {
		var n int
		switch x := rng.IntN(100); {
		case x < 3: // big: 1 to 8 MiB
			n = 1<<20 + rng.IntN(7<<20)
		case x < 20:
			n = 64<<10 + rng.IntN(448<<10)
		default:
			n = 1<<10 + rng.IntN(63<<10)
		}
		kind := rng.IntN(100)
		switch {
		case kind < 45:
			data = benchText(rng, words, data[:0], n)
		case kind < 75:
			data = benchBinary(rng, data[:0], n)
		default:
			data = benchRandom(rng, data[:0], n)
		}
		hdr := &tar.Header{Name: fmt.Sprintf("usr/share/bench/d%02d/f%05d", i%37, i), Mode: 0o644,
			Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
		total += int64(len(data)) + 512
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func benchVocabulary(rng *rand.Rand) []string {
	words := make([]string, 2000)
	for i := range words {
		n := 2 + rng.IntN(9)
		w := make([]byte, n)
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w)
	}
	return words
}

// benchText appends n bytes of prose-like lines (Zipf-distributed words).
func benchText(rng *rand.Rand, words []string, dst []byte, n int) []byte {
	z := rand.NewZipf(rng, 1.1, 2, uint64(len(words)-1))
	for line := 0; len(dst) < n; line++ {
		dst = fmt.Appendf(dst, "%6d ", line)
		for k := 4 + rng.IntN(10); k > 0; k-- {
			dst = append(dst, words[z.Uint64()]...)
			dst = append(dst, ' ')
		}
		dst = append(dst, '\n')
	}
	return dst[:n]
}

// benchBinary appends n bytes that look like machine code: a few opcode
// patterns with random immediates and offsets.
func benchBinary(rng *rand.Rand, dst []byte, n int) []byte {
	ops := [][]byte{{0x48, 0x89, 0xe5}, {0x48, 0x8b, 0x45}, {0xe8}, {0x0f, 0x84}, {0x89, 0x7d}, {0xc3}, {0x55}, {0x41, 0x57}}
	var imm [4]byte
	for len(dst) < n {
		op := ops[rng.IntN(len(ops))]
		dst = append(dst, op...)
		switch len(op) {
		case 1, 2:
			binary.LittleEndian.PutUint32(imm[:], uint32(rng.IntN(1<<16)))
			dst = append(dst, imm[:]...)
		default:
			dst = append(dst, byte(rng.IntN(64)))
		}
	}
	return dst[:n]
}

// benchRandom appends n incompressible bytes (already-compressed data).
func benchRandom(rng *rand.Rand, dst []byte, n int) []byte {
	for len(dst) < n {
		dst = binary.LittleEndian.AppendUint64(dst, rng.Uint64())
	}
	return dst[:n]
}

// cpuTime returns the CPU time the process used so far. The machine may be
// shared, so next to wall-clock MB/s the benchmarks report MB per CPU
// second, which other load disturbs less.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBuild measures the builder against compress/gzip inflating the
// same bytes to io.Discard, both reading the layer from memory. MB/s counts
// compressed input. The builder also reports the zTOC size as a share of
// the layer ("index-%") and the bytes it allocates per MB of layer
// ("B/MB-built"). Verify is measured on the same blob ("lazypull-verify").
func BenchmarkBuild(b *testing.B) {
	blob := benchLayer(b)
	mb := float64(len(blob)) / 1e6
	b.Run("stdlib-gzip-discard", func(b *testing.B) {
		b.SetBytes(int64(len(blob)))
		b.ReportAllocs()
		cpu0 := cpuTime()
		for b.Loop() {
			zr, err := gzip.NewReader(bytes.NewReader(blob))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, zr); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(mb*float64(b.N)/(cpuTime()-cpu0).Seconds(), "MB/cpu-s")
	})
	b.Run("lazypull-ztoc", func(b *testing.B) {
		b.SetBytes(int64(len(blob)))
		b.ReportAllocs()
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		cpu0 := cpuTime()
		var z *Ztoc
		for b.Loop() {
			res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{})
			if err != nil {
				b.Fatal(err)
			}
			z = res.Ztoc
		}
		cpu := cpuTime() - cpu0
		runtime.ReadMemStats(&ms1)
		zb, err := Marshal(z)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(mb*float64(b.N)/cpu.Seconds(), "MB/cpu-s")
		b.ReportMetric(100*float64(len(zb))/float64(len(blob)), "index-%")
		b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(b.N)/mb, "B/MB-built")
	})
	// Whole-layer verification of the zTOC against the same blob: one pass
	// like the builder, comparing instead of collecting.
	b.Run("lazypull-verify", func(b *testing.B) {
		x, _ := benchIndex(b)
		opts := VerifyOptions{Digest: sha(blob)}
		b.SetBytes(int64(len(blob)))
		b.ReportAllocs()
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		cpu0 := cpuTime()
		for b.Loop() {
			if _, err := x.Verify(context.Background(), bytes.NewReader(blob), opts); err != nil {
				b.Fatal(err)
			}
		}
		cpu := cpuTime() - cpu0
		runtime.ReadMemStats(&ms1)
		b.ReportMetric(mb*float64(b.N)/cpu.Seconds(), "MB/cpu-s")
		b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(b.N)/mb, "B/MB-verified")
	})
}

// benchIndex builds and serializes the benchmark layer's zTOC once.
func benchIndex(b *testing.B) (*LayerIndex, []byte) {
	b.Helper()
	blob := benchLayer(b)
	res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{})
	if err != nil {
		b.Fatal(err)
	}
	zb, err := Marshal(res.Ztoc)
	if err != nil {
		b.Fatal(err)
	}
	x, err := OpenLayerIndex(bytes.NewReader(zb), int64(len(zb)))
	if err != nil {
		b.Fatal(err)
	}
	return x, blob
}

// BenchmarkReadCold4K measures the latency of a cold random 4 KiB read of a
// file: a new Reader with an empty SpanCache each time, so every read
// fetches its span (from memory) and inflates it from its checkpoint (the
// whole span, about 4 MiB of output, as the span is then cached).
func BenchmarkReadCold4K(b *testing.B) {
	x, blob := benchIndex(b)
	var files []int
	for i, m := range x.Entries() {
		if m.Type == TypeReg && m.UncompressedSize >= 4096 {
			files = append(files, i)
		}
	}
	src := ReaderAtSource(x, bytes.NewReader(blob))
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	ctx := context.Background()
	spans := 0
	for b.Loop() {
		i := files[rng.IntN(len(files))]
		m := &x.Entries()[i]
		off := rng.Int64N(m.UncompressedSize - 4096 + 1)
		cache := NewSpanCache(64 << 20)
		r := NewReader(x, src, cache)
		if n, err := r.ReadFile(ctx, i, buf, off); err != nil || n != len(buf) {
			b.Fatalf("ReadFile(%q, %d) = %d, %v", m.Name, off, n, err)
		}
		_, misses := cache.Stats()
		spans += int(misses)
	}
	b.ReportMetric(float64(spans)/float64(b.N), "spans/op")
}

// BenchmarkReadWarm measures sequential reads (128 KiB at a time) of the
// layer's biggest file through a Reader whose spans are all cached.
func BenchmarkReadWarm(b *testing.B) {
	x, blob := benchIndex(b)
	big := -1
	for i, m := range x.Entries() {
		if m.Type == TypeReg && (big < 0 || m.UncompressedSize > x.Entries()[big].UncompressedSize) {
			big = i
		}
	}
	size := x.Entries()[big].UncompressedSize
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(blob)), NewSpanCache(1<<30))
	buf := make([]byte, 128<<10)
	ctx := context.Background()
	read := func() {
		for off := int64(0); off < size; {
			n, err := r.ReadFile(ctx, big, buf, off)
			off += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	read() // warm the cache
	b.SetBytes(size)
	for b.Loop() {
		read()
	}
}
