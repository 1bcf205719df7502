package ztoc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"testing"
)

// Fuzz targets for the wire decoders. Each must never panic, must report
// every failure as ErrMalformed, and must decode its own re-encoding of a
// successfully decoded input to an equal value. Seed corpora live in
// testdata/fuzz/<FuzzName>/ (written by TestFuzzSeeds with -update).

// smallZtocs returns small valid zTOC buffers for seeds: gzip with the
// 12-byte v1 checkpoint blob, uncompressed with a TarZinfo, and no entries.
func smallZtocs(t testing.TB) map[string][]byte {
	t.Helper()
	gz := sampleZtoc(t)
	gz.CompressionInfo.Checkpoints = v1Blob(DefaultSpanSize, nil)
	gz.CompressionInfo.MaxSpanID = 0
	gz.CompressionInfo.SpanDigests = gz.CompressionInfo.SpanDigests[:1]

	tarZ := sampleZtoc(t)
	tarZ.CompressionInfo.Algorithm = Uncompressed
	tarZ.CompressedArchiveSize = tarZ.UncompressedArchiveSize
	tarZ.CompressionInfo.Checkpoints, _ = EncodeTarZinfo(DefaultSpanSize, tarZ.CompressedArchiveSize)
	tarZ.CompressionInfo.MaxSpanID = SpanID(tarMaxSpanID(DefaultSpanSize, tarZ.CompressedArchiveSize))
	tarZ.CompressionInfo.SpanDigests = tarZ.CompressionInfo.SpanDigests[:tarZ.CompressionInfo.MaxSpanID+1]

	empty := sampleZtoc(t)
	empty.TOC.FileMetadata = nil
	empty.CompressionInfo = gz.CompressionInfo

	out := make(map[string][]byte)
	for name, z := range map[string]*Ztoc{"gzip-v1blob": gz, "uncompressed": tarZ, "empty-toc": empty} {
		b, err := Marshal(z)
		if err != nil {
			t.Fatalf("seed %s: %v", name, err)
		}
		out[name] = b
	}
	return out
}

// hostileZtocs returns zTOC buffers a forger would write (not validated
// when encoded): a 2^49-byte span, a ratio beyond DEFLATE's, 3 million
// entries claimed, 4 MiB of "headers" in front of an entry. Each must be
// refused with ErrLimit.
func hostileZtocs(t testing.TB) map[string][]byte {
	t.Helper()
	const huge = int64(1) << 49
	far := sampleZtoc(t)
	far.UncompressedArchiveSize += 4 << 20
	far.TOC.FileMetadata[7].UncompressedOffset += 4 << 20
	out := make(map[string][]byte)
	for name, z := range map[string]*Ztoc{
		"span-2^49":  hostileGeometry(t, 1e12, huge, []Checkpoint{{In: 10}, {In: 70_000, Out: 4 << 20}}),
		"ratio":      hostileGeometry(t, 100_000, 200_000_000, []Checkpoint{{In: 10}}),
		"header-run": far,
	} {
		b, err := encode(z, 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	many, err := Marshal(sampleZtoc(t))
	if err != nil {
		t.Fatal(err)
	}
	w := &wire{head: many, size: uint64(len(many))}
	root, _ := w.root()
	toc, _, _ := w.tableField(root, slotZtocTOC)
	vec, _, _ := w.refField(toc, 0)
	binary.LittleEndian.PutUint32(many[vec:], 3_000_000)
	out["entries-3M"] = many
	return out
}

// TestHostileSeedsRefused keeps the hostile seeds honest: each is refused
// for a limit.
func TestHostileSeedsRefused(t *testing.T) {
	for name, b := range hostileZtocs(t) {
		if _, err := Unmarshal(b); !errors.Is(err, ErrLimit) {
			t.Errorf("Unmarshal(%s) = %v, want ErrLimit", name, err)
		}
	}
}

// checkpointSeeds uses printable windows so that the seed files (Go-quoted
// text) stay about as small as the blobs.
func checkpointSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	win := bytes.Repeat([]byte("w"), WindowSize)
	var v2 bytes.Buffer
	if err := EncodeCheckpoints(&v2, 1<<16, testPoints[:2], [][]byte{win, win}); err != nil {
		t.Fatal(err)
	}
	v1 := bytes.Clone(v2.Bytes()[:checkpointHeaderSize+checkpointRecordSize])
	v1 = append(v1[:checkpointHeaderSize], v2.Bytes()[checkpointHeaderSize+checkpointRecordSize:]...)
	return map[string][]byte{
		"v1-header-only": v1Blob(1<<20, nil),
		"v1-one-stored":  v1,
		"v2-two":         v2.Bytes(),
	}
}

func tarZinfoSeeds(t testing.TB) map[string][]byte {
	a, _ := EncodeTarZinfo(DefaultSpanSize, 10<<20)
	b, _ := EncodeTarZinfo(1, 0)
	return map[string][]byte{"default": a, "empty": b}
}

func indexSeeds(t testing.TB) map[string][]byte {
	v1, _, err := BuildIndexV1(testLayers(), testSubject, nil)
	if err != nil {
		t.Fatal(err)
	}
	v2, _, err := BuildIndexV2(testLayers(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"v1": v1, "v2": v2, "soci-v1-prefetch": []byte(sociV1Index)}
}

// TestFuzzSeeds checks (or, with -update, writes) the seed corpora.
func TestFuzzSeeds(t *testing.T) {
	seeds := map[string]map[string][]byte{
		"FuzzUnmarshalZtoc":    smallZtocs(t),
		"FuzzDecodeZtoc":       smallZtocs(t),
		"FuzzParseCheckpoints": checkpointSeeds(t),
		"FuzzParseTarZinfo":    tarZinfoSeeds(t),
		"FuzzParseIndex":       indexSeeds(t),
	}
	for target, files := range seeds {
		for name, data := range files {
			checkGolden(t, filepath.Join("fuzz", target, name), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)))
		}
	}
}

// requireMalformed fails unless err wraps ErrMalformed.
func requireMalformed(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("%s failed with %v, which does not wrap ErrMalformed", what, err)
	}
}

func FuzzUnmarshalZtoc(f *testing.F) {
	for _, b := range smallZtocs(f) {
		f.Add(b)
	}
	for _, b := range hostileZtocs(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		z, err := Unmarshal(data)
		if err != nil {
			requireMalformed(t, "Unmarshal", err)
			return
		}
		b, err := Marshal(z)
		if err != nil {
			t.Fatalf("Marshal of a decoded zTOC: %v", err)
		}
		z2, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("Unmarshal(Marshal(z)): %v", err)
		}
		if d := diffZtoc(z2, z); d != "" {
			t.Fatalf("Unmarshal(Marshal(z)) != z: %s", d)
		}
	})
}

func FuzzDecodeZtoc(f *testing.F) {
	for _, b := range smallZtocs(f) {
		f.Add(b)
	}
	for _, b := range hostileZtocs(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		z, sr, err := Decode(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			requireMalformed(t, "Decode", err)
			return
		}
		blob, err := io.ReadAll(sr)
		if err != nil {
			t.Fatal(err)
		}
		z.CompressionInfo.Checkpoints = blob
		u, err := Unmarshal(data)
		if err != nil {
			t.Fatalf("Decode succeeded but Unmarshal failed: %v", err)
		}
		if d := diffZtoc(z, u); d != "" {
			t.Fatalf("Decode and Unmarshal disagree: %s", d)
		}
		b, err := Marshal(z)
		if err != nil {
			t.Fatalf("Marshal of a decoded zTOC: %v", err)
		}
		z2, _, err := Decode(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("Decode(Marshal(z)): %v", err)
		}
		z2.CompressionInfo.Checkpoints = blob
		if d := diffZtoc(z2, z); d != "" {
			t.Fatalf("Decode(Marshal(z)) != z: %s", d)
		}
	})
}

func FuzzParseCheckpoints(f *testing.F) {
	for _, b := range checkpointSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := ParseCheckpoints(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			requireMalformed(t, "ParseCheckpoints", err)
			return
		}
		windows := make([][]byte, tab.NumSpans())
		for i := range windows {
			if windows[i], err = tab.Window(i, make([]byte, WindowSize)); err != nil {
				t.Fatalf("Window(%d): %v", i, err)
			}
		}
		var buf bytes.Buffer
		if err := EncodeCheckpoints(&buf, tab.SpanSize, tab.Points, windows); err != nil {
			t.Fatalf("EncodeCheckpoints of a parsed table: %v", err)
		}
		if tab.Version == 2 && !bytes.Equal(buf.Bytes(), data) {
			t.Fatal("re-encoded v2 blob differs from the input")
		}
		again, err := ParseCheckpoints(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatalf("ParseCheckpoints(EncodeCheckpoints(t)): %v", err)
		}
		if again.SpanSize != tab.SpanSize || !reflect.DeepEqual(again.Points, tab.Points) {
			t.Fatalf("round trip changed the table: %+v, want %+v", again.Points, tab.Points)
		}
	})
}

func FuzzParseTarZinfo(f *testing.F) {
	for _, b := range tarZinfoSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spanSize, size, err := ParseTarZinfo(data)
		if err != nil {
			requireMalformed(t, "ParseTarZinfo", err)
			return
		}
		b, err := EncodeTarZinfo(spanSize, size)
		if err != nil {
			t.Fatalf("EncodeTarZinfo(%d, %d): %v", spanSize, size, err)
		}
		s2, n2, err := ParseTarZinfo(b)
		if err != nil || s2 != spanSize || n2 != size {
			t.Fatalf("ParseTarZinfo(EncodeTarZinfo(%d, %d)) = %d, %d, %v", spanSize, size, s2, n2, err)
		}
	})
}

func FuzzParseIndex(f *testing.F) {
	for _, b := range indexSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := ParseIndex(data)
		if err != nil {
			requireMalformed(t, "ParseIndex", err)
			return
		}
		b, _, err := ix.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed index: %v", err)
		}
		ix2, err := ParseIndex(b)
		if err != nil {
			t.Fatalf("ParseIndex(Marshal(ix)): %v", err)
		}
		b2, _, err := ix2.Marshal()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("Marshal(ParseIndex(Marshal(ix))) differs (err %v):\n%s\n%s", err, b, b2)
		}
	})
}
