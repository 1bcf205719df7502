package ztoc

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// verifyFuzzFixture is one small gzip layer (several spans and members,
// hard link, xattrs), its serialized zTOC and every entry's content.
type verifyFuzzFixture struct {
	f    *fixture
	zb   []byte
	data map[int][]byte // entry -> file content
}

func newVerifyFuzzFixture(t testing.TB) *verifyFuzzFixture {
	f := newFixture(t, genEntries(31, 12, 48<<10), func(r []byte) []byte { return gzipMembers(t, r, 6, 20<<10) }, 8<<10)
	zb, err := Marshal(f.res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	data := map[int][]byte{}
	tr := tar.NewReader(bytes.NewReader(f.raw))
	for i := 0; ; i++ {
		if _, err := tr.Next(); err != nil {
			break
		}
		if data[i], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	return &verifyFuzzFixture{f: f, zb: zb, data: data}
}

// patchZtoc applies patches to a copy of zb: each 5 bytes of patches are a
// little-endian offset (modulo the length) and a byte XORed there.
func patchZtoc(zb, patches []byte) []byte {
	out := bytes.Clone(zb)
	for len(patches) >= 5 {
		off := binary.LittleEndian.Uint32(patches) % uint32(len(out))
		out[off] ^= patches[4]
		patches = patches[5:]
	}
	return out
}

// FuzzVerify edits a genuine zTOC at arbitrary bytes (checkpoint positions
// and windows, the file table, digests, sizes) and checks the promise of
// Verify: whatever zTOC opens, inflating its spans and checking its headers
// never panics, and if Verify accepts it against the real layer, it serves
// exactly the layer: every span inflates to the layer's bytes, every file
// reads as in the tar, and the file table equals the genuine one.
func FuzzVerify(f *testing.F) {
	fx := newVerifyFuzzFixture(f)
	f.Add([]byte{})
	cpStart := bytes.Index(fx.zb, fx.f.res.Ztoc.CompressionInfo.Checkpoints[:64])
	le := func(off int, b byte) []byte { return append(binary.LittleEndian.AppendUint32(nil, uint32(off)), b) }
	f.Add(le(cpStart+checkpointHeaderSize+checkpointRecordSize+checkpointPosSize+WindowSize-10, 0x20)) // window of checkpoint 1
	f.Add(le(cpStart+checkpointHeaderSize+checkpointRecordSize+8, 1))                                  // out of checkpoint 1
	f.Add(le(cpStart+checkpointHeaderSize+checkpointRecordSize+16, 3))                                 // bits of checkpoint 1
	f.Add(le(bytes.Index(fx.zb, []byte("file-0003")), 'X'^'f'))                                        // a name
	f.Add(le(len(fx.zb)-100, 0xff))
	// Small spans: the fixture's are 8 KiB, and a zTOC claiming the default
	// 64 MiB would only make each run slow.
	lim := Limits{MaxSpanSize: 1 << 20}
	f.Fuzz(func(t *testing.T, patches []byte) {
		zb := patchZtoc(fx.zb, patches)
		x, err := OpenLayerIndex(bytes.NewReader(zb), int64(len(zb)), WithLimits(lim))
		if err != nil {
			return
		}
		ctx := context.Background()
		blob, raw := fx.f.blob, fx.f.raw
		r := NewReader(x, ReaderAtSource(x, bytes.NewReader(blob)), nil)
		for i := range x.Entries() {
			_ = r.CheckEntry(ctx, i)
		}
		spansOK := true
		for id := SpanID(0); int(id) < x.NumSpans(); id++ {
			c0, c1 := x.SpanCompressedRange(id)
			u0, u1 := x.SpanUncompressedRange(id)
			if c1 > int64(len(blob)) {
				spansOK = false
				continue
			}
			got, err := x.InflateSpan(id, blob[c0:c1], nil)
			if err == nil && int64(len(got)) != u1-u0 {
				t.Fatalf("InflateSpan(%d) gave %d bytes, want %d", id, len(got), u1-u0)
			}
			if err != nil || u1 > int64(len(raw)) || !bytes.Equal(got, raw[u0:u1]) {
				spansOK = false
			}
		}
		_, err = x.Verify(ctx, bytes.NewReader(blob), fx.f.opts())
		if err != nil {
			if !errors.Is(err, ErrVerify) {
				t.Fatalf("Verify = %v, want nil or ErrVerify", err)
			}
			return
		}
		// Verified: it must serve the layer exactly.
		if !spansOK {
			t.Fatal("Verify accepted a zTOC whose spans do not inflate to the layer's bytes")
		}
		if err := CompareTOC(x.Entries(), fx.f.res.Ztoc.TOC.FileMetadata); err != nil {
			t.Fatalf("Verify accepted a zTOC whose file table differs: %v", err)
		}
		for i, m := range x.Entries() {
			if err := r.CheckEntry(ctx, i); err != nil {
				t.Fatalf("Verify accepted a zTOC whose entry %q fails CheckEntry: %v", m.Name, err)
			}
			if m.Type != TypeReg {
				continue
			}
			got := make([]byte, m.UncompressedSize)
			if _, err := r.ReadFile(ctx, i, got, 0); err != nil && err != io.EOF {
				t.Fatalf("ReadFile(%q) of a verified zTOC: %v", m.Name, err)
			}
			if !bytes.Equal(got, fx.data[i]) {
				t.Fatalf("a verified zTOC serves %q wrong", m.Name)
			}
		}
	})
}
