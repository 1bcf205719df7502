package zstdchunked

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/tocindex/toctest"
	"github.com/lazypull/lazypull/ztoc"
)

// FuzzNextFrame walks arbitrary bytes as zstd frames: never a panic, and a
// frame found is within the input.
func FuzzNextFrame(f *testing.F) {
	tb := makeBlob(f, toctest.Files(7, 40<<10))
	f.Add(tb.blob)
	f.Add(tb.blob[len(tb.blob)-FooterSize:])
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	f.Add(enc.EncodeAll(bytes.Repeat([]byte("lazy"), 50000), nil))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := NextFrame(b)
		if err == nil && (fr.Length < 4 || fr.Length > int64(len(b))) {
			t.Fatalf("NextFrame = length %d of %d bytes", fr.Length, len(b))
		}
		n, err := CheckFrames(b)
		if err == nil && n == 0 {
			t.Fatal("CheckFrames found no frame and no error")
		}
		_ = (Codec{}).CheckRegion(b)
	})
}

// FuzzOpen decodes arbitrary TOC JSON as a zstd:chunked layer's TOC (the
// metadata frames and footer rebuilt around it, so that the digest matches)
// and, when it is accepted, reads every file and verifies the whole layer:
// errors are fine, panics and wrong bytes are not.
func FuzzOpen(f *testing.F) {
	tb := makeBlob(f, toctest.Files(8, 70<<10))
	loc, _, err := Locate(tb.annotations, int64(len(tb.blob)))
	if err != nil {
		f.Fatal(err)
	}
	d, _ := decodeAll()
	raw, err := d.DecodeAll(tb.blob[loc.TOC.offset:loc.TOC.end()], make([]byte, 0, loc.TOC.ulength))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"version":1,"entries":[{"type":"reg","name":"a","size":5,"offset":0,"endOffset":10,"digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"type":"chunk","name":"a","chunkSize":9}]}`))
	data := tb.blob[:loc.TailOffset()]
	enc, _ := zstd.NewWriter(nil)
	f.Fuzz(func(t *testing.T, toc []byte) {
		if len(toc) > 1<<20 {
			return
		}
		comp := enc.EncodeAll(toc, nil)
		blob := append(bytes.Clone(data), skippable(comp)...)
		tocOff := int64(len(data)) + skippableHdrSize
		footer := make([]byte, FooterDataSize)
		for i, v := range []int64{tocOff, int64(len(comp)), int64(len(toc)), manifestType} {
			binary.LittleEndian.PutUint64(footer[8*i:], uint64(v))
		}
		copy(footer[56:], footerMagic)
		blob = append(blob, skippable(footer)...)
		ann := map[string]string{AnnotationTOCPosition: fmt.Sprintf("%d:%d:%d:1", tocOff, len(comp), len(toc))}
		loc, ok, err := Locate(ann, int64(len(blob)))
		if err != nil || !ok {
			return // an empty TOC has no position
		}
		l, err := Open(blob[loc.TailOffset():], loc, int64(len(blob)), digest.FromBytes(comp), Options{Limits: ztoc.Limits{MaxEntries: 4096}, SpanTarget: 4096})
		if err != nil {
			return
		}
		got, err := toctest.Contents(l.Index, blob)
		if err == nil {
			for name, data := range got {
				for _, e := range l.Entries() {
					if e.Name == name && int64(len(data)) != e.UncompressedSize {
						t.Fatalf("%s: %d bytes, the TOC says %d", name, len(data), e.UncompressedSize)
					}
				}
			}
		}
		_, _ = l.VerifyLayer(context.Background(), bytes.NewReader(blob), tocindex.Want{Digest: digest.FromBytes(blob), TarSize: -1})
	})
}

func skippable(data []byte) []byte {
	h := make([]byte, skippableHdrSize, skippableHdrSize+len(data))
	binary.LittleEndian.PutUint32(h, skippableMagic)
	binary.LittleEndian.PutUint32(h[4:], uint32(len(data)))
	return append(h, data...)
}
