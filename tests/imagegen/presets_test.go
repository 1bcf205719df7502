package imagegen

import (
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// TestPresets generates (or reuses from CacheDir()) the E2E and Bench1G
// images and checks the properties other tests and the benchmarks rely on.
// The first run on a machine takes about a minute; later runs reuse the
// cache.
func TestPresets(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the presets take a minute to generate on a cold cache")
	}
	if raceEnabled {
		t.Skip("the race detector makes generating 1.4 GB of images take many minutes; run without -race")
	}
	const mb = 1_000_000
	tests := []struct {
		opts             Options
		minSize, maxSize int64 // compressed image
		minLayer         int64 // every layer but the small ones
		small            int   // layers below 10 MiB
		minFiles         int
	}{
		{E2E(), 300 * mb, 400 * mb, 10 * mib, 1, 3000},
		{Bench1G(), 900 * mb, 1150 * mb, 50 * mb, 1, 6000},
	}
	for _, tc := range tests {
		t.Run(tc.opts.Name, func(t *testing.T) {
			start := time.Now()
			img, err := Cached(CacheDir(), tc.opts)
			if err != nil {
				t.Fatalf("Cached: %v", err)
			}
			t.Logf("%s: %d layers, %d bytes compressed, %d uncompressed, in %s after %v",
				tc.opts.Name, len(img.Layers), img.CompressedSize(), img.DiffSize(), img.Dir, time.Since(start).Round(time.Millisecond))
			if s := img.CompressedSize(); s < tc.minSize || s > tc.maxSize {
				t.Errorf("compressed size %d, want %d..%d", s, tc.minSize, tc.maxSize)
			}
			small := 0
			for i, l := range img.Layers {
				t.Logf("layer %d: %s %d bytes (%d uncompressed, %d entries)", i+1, l.Compression, l.Size, l.DiffSize, l.Entries)
				switch {
				case l.Size < 10*mib:
					small++
				case l.Size < tc.minLayer:
					t.Errorf("layer %d has %d bytes, want at least %d or below 10 MiB", i+1, l.Size, tc.minLayer)
				case l.Size > 400*mb:
					t.Errorf("layer %d has %d bytes, want at most 400 MB", i+1, l.Size)
				}
			}
			if small != tc.small {
				t.Errorf("%d layers below 10 MiB, want %d", small, tc.small)
			}
			tree, err := img.ExpectedTree()
			if err != nil {
				t.Fatal(err)
			}
			files := 0
			types := make(map[fstree.Type]bool)
			for _, n := range tree {
				types[n.Type] = true
				if n.Type == fstree.TypeFile {
					files++
				}
			}
			if files < tc.minFiles {
				t.Errorf("%d files, want at least %d", files, tc.minFiles)
			}
			for _, typ := range []fstree.Type{fstree.TypeDir, fstree.TypeFile, fstree.TypeSymlink, fstree.TypeChar, fstree.TypeBlock, fstree.TypeFIFO} {
				if !types[typ] {
					t.Errorf("no %s in the expected tree", typ)
				}
			}
			top := img.Options.Layers[len(img.Options.Layers)-1]
			if top.Whiteouts == 0 || top.Opaque == 0 {
				t.Errorf("top layer has %d whiteouts and %d opaque directories, want some of both", top.Whiteouts, top.Opaque)
			}
			if tree["bin/busybox"].Type != fstree.TypeFile || tree["bin/sh"].Target != "busybox" {
				t.Error("no busybox with a /bin/sh link")
			}
		})
	}
}
