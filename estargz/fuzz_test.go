package estargz

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/tocindex/toctest"
	"github.com/lazypull/lazypull/ztoc"
)

// FuzzParseFooter parses arbitrary footers: never a panic, and an offset
// it returns is inside the blob.
func FuzzParseFooter(f *testing.F) {
	tb := makeBlob(f, toctest.Files(9, 10<<10))
	f.Add(tb.blob[len(tb.blob)-FooterSize:], int64(len(tb.blob)))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		off, err := ParseFooter(b, size)
		if err == nil && (off <= 0 || off >= size-FooterSize) {
			t.Fatalf("ParseFooter = %d for a %d-byte blob", off, size)
		}
	})
}

// FuzzOpen decodes arbitrary TOC JSON as an eStargz layer's TOC (the TOC
// member and footer rebuilt around it, so that the digest matches) and,
// when it is accepted, reads every file and verifies the whole layer:
// errors are fine, panics and wrong sizes are not.
func FuzzOpen(f *testing.F) {
	tb := makeBlob(f, toctest.Files(10, 70<<10))
	size := int64(len(tb.blob))
	off, err := ParseFooter(tb.blob[size-FooterSize:], size)
	if err != nil {
		f.Fatal(err)
	}
	_, _, raw, err := readTOCMember(tb.blob[off:size-FooterSize], 1<<30)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"version":1,"entries":[{"name":"a","type":"reg","size":5,"offset":0,"chunkDigest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"name":"a","type":"reg","size":9,"offset":10,"innerOffset":4},{"type":"chunk","offset":10,"chunkOffset":2,"innerOffset":1}]}`))
	data := tb.blob[:off]
	f.Fuzz(func(t *testing.T, toc []byte) {
		if len(toc) > 1<<20 {
			return
		}
		var member bytes.Buffer
		zw := gzip.NewWriter(&member)
		tw := tar.NewWriter(zw)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: TOCName, Size: int64(len(toc))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(toc)
		tw.Close()
		zw.Close()
		tocOff := int64(len(data))
		blob := append(append(bytes.Clone(data), member.Bytes()...), footerBytes(tocOff)...)
		l, err := Open(blob[tocOff:], tocOff, int64(len(blob)), digest.FromBytes(toc), Options{Limits: ztoc.Limits{MaxEntries: 4096}, SpanTarget: 4096})
		if err != nil {
			return
		}
		if got, err := toctest.Contents(l.Index, blob); err == nil {
			for _, e := range l.Entries() {
				if d, ok := got[e.Name]; ok && int64(len(d)) != e.UncompressedSize {
					t.Fatalf("%s: %d bytes, the TOC says %d", e.Name, len(d), e.UncompressedSize)
				}
			}
		}
		_, _ = l.VerifyLayer(context.Background(), bytes.NewReader(blob), tocindex.Want{Digest: digest.FromBytes(blob), TarSize: -1})
	})
}

// footerBytes is the 51-byte eStargz footer for a TOC at off.
func footerBytes(off int64) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.NoCompression)
	zw.Extra = append([]byte{'S', 'G', 22, 0}, fmt.Sprintf("%016xSTARGZ", off)...)
	zw.Close()
	return buf.Bytes()
}
