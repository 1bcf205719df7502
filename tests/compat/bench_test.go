package compat

import (
	"bufio"
	"compress/gzip"
	"context"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	sociztoc "github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/lazypull/lazypull/ztoc"
)

// cpuTime returns the CPU time the process used so far. Next to the
// wall-clock MB/s of b.SetBytes the benchmark reports MB per CPU second,
// which other load on a shared machine disturbs less. (lazypull's builder
// hashes on a second goroutine and SOCI's reads the layer three times, so
// the two measures differ.)
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBuild compares, on the same file (BenchLayer, 238 MB of gzip,
// read from the page cache), lazypull's zTOC builder with compress/gzip
// inflating to io.Discard, with SOCI's whole builder (cgo zlib for the
// checkpoints, then a sha256 pass for the span digests and a compress/gzip
// + archive/tar pass for the file table) and with SOCI's zlib checkpoint
// pass alone. MB/s counts compressed input. Run it with
//
//	go test -run '^$' -bench BenchmarkBuild -benchmem
func BenchmarkBuild(b *testing.B) {
	l, err := BenchLayer()
	if err != nil {
		b.Fatal(err)
	}
	mb := float64(l.Size) / 1e6
	run := func(name string, op func(b *testing.B)) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(l.Size)
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				op(b)
			}
			b.ReportMetric(mb*float64(b.N)/(cpuTime()-cpu0).Seconds(), "MB/cpu-s")
		})
	}
	run("stdlib-gzip-discard", func(b *testing.B) {
		f, err := os.Open(l.Path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(bufio.NewReaderSize(f, 1<<20)) // as large a buffer as Build's
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	})
	run("lazypull-ztoc", func(b *testing.B) {
		f, err := os.Open(l.Path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, err := ztoc.Build(context.Background(), f, ztoc.BuildOptions{}); err != nil {
			b.Fatal(err)
		}
	})
	// SOCI's checkpoint pass alone: zlib inflating with Z_BLOCK and copying
	// windows (what the cgo part of SOCI's builder costs).
	run("soci-zlib-checkpoints", func(b *testing.B) {
		zinfo, err := compression.NewZinfoFromFile(compression.Gzip, l.Path, ztoc.DefaultSpanSize)
		if err != nil {
			b.Fatal(err)
		}
		zinfo.Close()
	})
	run("soci-ztoc", func(b *testing.B) {
		_, err := sociztoc.NewBuilder(sociBuildTool).BuildZtoc(l.Path, ztoc.DefaultSpanSize, sociztoc.WithCompression(compression.Gzip))
		if err != nil {
			b.Fatal(err)
		}
	})
}
