package imagegen

import (
	"bytes"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
)

// TestContentCompressionRatios checks that each content kind compresses about
// as much as the data it imitates, and that content is reproducible.
func TestContentCompressionRatios(t *testing.T) {
	const size = 1 << 20
	tests := []struct {
		kind     contentKind
		name     string
		min, max float64 // compressed/uncompressed
	}{
		{kindText, "text", 0.25, 0.45},
		{kindSource, "source", 0.20, 0.40},
		{kindJSON, "json", 0.20, 0.40},
		{kindELF, "elf", 0.35, 0.60},
		{kindPacked, "packed", 0.99, 1.01},
		{kindRandom, "random", 0.99, 1.01},
		{kindZeros, "zeros", 0, 0.01},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := content{kind: tc.kind, seed: 42, size: size}
			var raw bytes.Buffer
			if err := c.writeTo(&raw); err != nil {
				t.Fatalf("writeTo: %v", err)
			}
			if raw.Len() != size {
				t.Fatalf("writeTo wrote %d bytes, want %d", raw.Len(), size)
			}
			var again bytes.Buffer
			if err := c.writeTo(&again); err != nil {
				t.Fatalf("writeTo: %v", err)
			}
			if sha256.Sum256(raw.Bytes()) != sha256.Sum256(again.Bytes()) {
				t.Errorf("content %s is not reproducible", tc.name)
			}
			var z bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&z, gzipLevel)
			zw.Write(raw.Bytes())
			zw.Close()
			ratio := float64(z.Len()) / float64(size)
			t.Logf("%s: ratio %.3f", tc.name, ratio)
			if ratio < tc.min || ratio > tc.max {
				t.Errorf("gzip ratio of %s = %.3f, want %.2f..%.2f", tc.name, ratio, tc.min, tc.max)
			}
		})
	}
}

// TestContentPrefixes checks that every kind writes exactly the asked size
// and that a shorter file of the same seed is a prefix of a longer one (the
// stream does not depend on how it is cut into chunks).
func TestContentPrefixes(t *testing.T) {
	sizes := []int64{0, 1, 3, 7, 64, 65, 1000, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 17}
	for kind := kindText; kind <= kindZeros; kind++ {
		var longest []byte
		for i := len(sizes) - 1; i >= 0; i-- {
			var b bytes.Buffer
			if err := (content{kind: kind, seed: 9, size: sizes[i]}).writeTo(&b); err != nil {
				t.Fatalf("kind %d size %d: writeTo: %v", kind, sizes[i], err)
			}
			if int64(b.Len()) != sizes[i] {
				t.Errorf("kind %d size %d: wrote %d bytes", kind, sizes[i], b.Len())
			}
			if longest == nil {
				longest = b.Bytes()
			} else if !bytes.HasPrefix(longest, b.Bytes()) {
				t.Errorf("kind %d: %d bytes are not a prefix of %d bytes of the same seed", kind, sizes[i], len(longest))
			}
		}
	}
	if err := (content{kind: kindZeros + 1, size: 1}).writeTo(io.Discard); err == nil {
		t.Error("writeTo(unknown kind) succeeded, want an error")
	}
}
