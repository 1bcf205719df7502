package flate

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"
)

// benchCorpus is a gzip stream (level 6, compress/gzip) and its size.
type benchCorpus struct {
	name string
	comp []byte
	size int64
}

var (
	benchOnce    sync.Once
	benchCorpora []benchCorpus
)

func corpora(b *testing.B) []benchCorpus {
	benchOnce.Do(func() {
		rng := rand.New(rand.NewPCG(42, 42))
		inputs := []struct {
			name string
			data []byte
		}{
			{"mixed-64MiB", genMixed(2024, 64<<20)},
			{"compressible-32MiB", genText(rng, 32<<20)},
			{"incompressible-32MiB", genRandom(rng, 32<<20)},
		}
		for _, in := range inputs {
			benchCorpora = append(benchCorpora, benchCorpus{in.name, gzipBytes(b, in.data, 6), int64(len(in.data))})
		}
	})
	return benchCorpora
}

// clock is a wall-clock and process-CPU-time start point. The machine is
// shared, so next to the wall-clock MB/s of b.SetBytes the benchmarks also
// report throughput per CPU second of the process, which other load on the
// machine disturbs less.
type clock struct {
	wall time.Time
	cpu  time.Duration
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startClock() clock { return clock{time.Now(), cpuTime()} }

// report adds the compressed-input throughput (wall clock) and the output
// throughput per CPU second.
func (c clock) report(b *testing.B, compressed, uncompressed int64) {
	n := float64(b.N)
	b.ReportMetric(float64(compressed)*n/time.Since(c.wall).Seconds()/1e6, "in-MB/s")
	if cpu := (cpuTime() - c.cpu).Seconds(); cpu > 0 {
		b.ReportMetric(float64(uncompressed)*n/cpu/1e6, "out-MB/cpu-s")
	}
}

// checkpointHook copies a window every span bytes of output, as a zTOC
// builder does.
func checkpointHook(span int64) func(Boundary, []byte) error {
	last := int64(-1)
	var windows [][]byte
	return func(bd Boundary, window []byte) error {
		if bd.Final || (last >= 0 && bd.Out-last <= span) {
			return nil
		}
		w := make([]byte, WindowSize)
		copy(w[WindowSize-len(window):], window)
		windows = append(windows, w)
		last = bd.Out
		return nil
	}
}

func BenchmarkGunzip(b *testing.B) {
	for _, c := range corpora(b) {
		b.Run(c.name+"/stdlib", func(b *testing.B) {
			b.SetBytes(c.size)
			clk := startClock()
			for b.Loop() {
				zr, err := gzip.NewReader(bytes.NewReader(c.comp))
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, zr); err != nil || n != c.size {
					b.Fatalf("got %d bytes, %v", n, err)
				}
			}
			clk.report(b, int64(len(c.comp)), c.size)
		})
		b.Run(c.name+"/WriteTo", func(b *testing.B) {
			b.SetBytes(c.size)
			clk := startClock()
			for b.Loop() {
				if n, err := NewGzip(bytes.NewReader(c.comp)).WriteTo(io.Discard); err != nil || n != c.size {
					b.Fatalf("got %d bytes, %v", n, err)
				}
			}
			clk.report(b, int64(len(c.comp)), c.size)
		})
		b.Run(c.name+"/WriteTo+checkpoints", func(b *testing.B) {
			b.SetBytes(c.size)
			clk := startClock()
			for b.Loop() {
				d := NewGzip(bytes.NewReader(c.comp))
				d.OnBoundary(checkpointHook(4 << 20))
				if n, err := d.WriteTo(io.Discard); err != nil || n != c.size {
					b.Fatalf("got %d bytes, %v", n, err)
				}
			}
			clk.report(b, int64(len(c.comp)), c.size)
		})
	}
}

// BenchmarkResumeSpan resumes at a checkpoint in the middle of the mixed
// corpus and inflates one 4 MiB span from only its compressed bytes.
func BenchmarkResumeSpan(b *testing.B) {
	c := corpora(b)[0]
	var cps []checkpoint
	d := NewGzip(bytes.NewReader(c.comp))
	last := int64(-1)
	d.OnBoundary(func(bd Boundary, window []byte) error {
		if !bd.Final && (last < 0 || bd.Out-last > 4<<20) {
			cps = append(cps, checkpoint{bd, bytes.Clone(window)})
			last = bd.Out
		}
		return nil
	})
	if _, err := d.WriteTo(io.Discard); err != nil {
		b.Fatal(err)
	}
	cp, next := cps[len(cps)/2], cps[len(cps)/2+1]
	start := cp.In
	if cp.Bits > 0 {
		start--
	}
	span := c.comp[start:next.In]
	size := next.Out - cp.Out
	buf := make([]byte, size)
	b.SetBytes(size)
	clk := startClock()
	for b.Loop() {
		d, err := ResumeGzip(bytes.NewReader(span), cp.In, cp.Bits, cp.Out, cp.window)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(d, buf); err != nil {
			b.Fatal(err)
		}
	}
	clk.report(b, int64(len(span)), size)
}
