package ztoc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// testWindow returns a deterministic window of n bytes for checkpoint i.
func testWindow(i, n int) []byte {
	w := make([]byte, n)
	for j := range w {
		w[j] = byte(i*31 + j*7 + 1)
	}
	return w
}

// testPoints are three valid checkpoints (the third with bits).
var testPoints = []Checkpoint{
	{In: 10, Out: 0},
	{In: 70_000, Out: 4<<20 + 17, Bits: 3},
	{In: 140_001, Out: 8<<20 + 100, Bits: 7},
}

// encodeTestBlob encodes points with testWindow windows; window 0 is short
// (stream start) to exercise front padding.
func encodeTestBlob(t testing.TB, spanSize int64, points []Checkpoint) []byte {
	t.Helper()
	windows := make([][]byte, len(points))
	for i := range points {
		n := WindowSize
		if i == 0 {
			n = 100
		}
		windows[i] = testWindow(i, n)
	}
	var buf bytes.Buffer
	if err := EncodeCheckpoints(&buf, spanSize, points, windows); err != nil {
		t.Fatalf("EncodeCheckpoints: %v", err)
	}
	return buf.Bytes()
}

// wantWindow is the stored (front-padded) form of testWindow.
func wantWindow(i int) []byte {
	if i == 0 {
		return append(make([]byte, WindowSize-100), testWindow(0, 100)...)
	}
	return testWindow(i, WindowSize)
}

func TestCheckpointsRoundTripV2(t *testing.T) {
	blob := encodeTestBlob(t, DefaultSpanSize, testPoints)
	if got, want := len(blob), checkpointHeaderSize+len(testPoints)*checkpointRecordSize; got != want {
		t.Fatalf("blob length = %d, want %d", got, want)
	}
	tab, err := ParseCheckpoints(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		t.Fatalf("ParseCheckpoints: %v", err)
	}
	if tab.Version != 2 || tab.SpanSize != DefaultSpanSize || !reflect.DeepEqual(tab.Points, testPoints) {
		t.Fatalf("ParseCheckpoints = v%d span %d %+v, want v2 span %d %+v", tab.Version, tab.SpanSize, tab.Points, DefaultSpanSize, testPoints)
	}
	dst := make([]byte, WindowSize+5)
	for i := range testPoints {
		got, err := tab.Window(i, dst)
		if err != nil {
			t.Fatalf("Window(%d): %v", i, err)
		}
		if !bytes.Equal(got, wantWindow(i)) {
			t.Errorf("Window(%d) differs from the encoded window", i)
		}
	}
}

func TestCheckpointsGolden(t *testing.T) {
	blob := encodeTestBlob(t, DefaultSpanSize, testPoints[:2])
	checkGolden(t, "checkpoints_v2.golden", blob)
}

// v1Blob hand-builds a version-1 blob: header count n, then n-1 records.
func v1Blob(spanSize int64, stored []Checkpoint) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(stored)+1))
	b = binary.LittleEndian.AppendUint64(b, uint64(spanSize))
	for i, p := range stored {
		b = binary.LittleEndian.AppendUint64(b, uint64(p.In))
		b = binary.LittleEndian.AppendUint64(b, uint64(p.Out))
		b = append(b, p.Bits)
		b = append(b, testWindow(i+1, WindowSize)...)
	}
	return b
}

func TestParseCheckpointsV1(t *testing.T) {
	blob := v1Blob(1<<20, testPoints[1:])
	tab, err := ParseCheckpoints(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		t.Fatalf("ParseCheckpoints(v1): %v", err)
	}
	want := []Checkpoint{{In: 10}, testPoints[1], testPoints[2]}
	if tab.Version != 1 || tab.SpanSize != 1<<20 || !reflect.DeepEqual(tab.Points, want) {
		t.Fatalf("ParseCheckpoints(v1) = v%d span %d %+v, want v1 span %d %+v", tab.Version, tab.SpanSize, tab.Points, 1<<20, want)
	}
	dst := make([]byte, WindowSize)
	for i := range dst {
		dst[i] = 0xff
	}
	got, err := tab.Window(0, dst)
	if err != nil || !bytes.Equal(got, make([]byte, WindowSize)) {
		t.Errorf("Window(0) of v1 = non-zero window, err %v; want all zeros", err)
	}
	for i := 1; i < 3; i++ {
		got, err := tab.Window(i, dst)
		if err != nil || !bytes.Equal(got, testWindow(i, WindowSize)) {
			t.Errorf("Window(%d) of v1: err %v, window equal %v; want the stored window", i, err, err == nil && bytes.Equal(got, testWindow(i, WindowSize)))
		}
	}

	// The smallest v1 blob: only the header, checkpoint 0 implied.
	hdrOnly := v1Blob(1<<20, nil)
	tab, err = ParseCheckpoints(bytes.NewReader(hdrOnly), int64(len(hdrOnly)))
	if err != nil || tab.Version != 1 || len(tab.Points) != 1 {
		t.Fatalf("ParseCheckpoints(12-byte v1) = %+v, %v; want v1 with 1 checkpoint", tab, err)
	}
}

func TestParseCheckpointsMalformed(t *testing.T) {
	good := encodeTestBlob(t, DefaultSpanSize, testPoints)
	rec := func(i int) int { return checkpointHeaderSize + i*checkpointRecordSize }
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	put64 := func(b []byte, off int, v int64) []byte { binary.LittleEndian.PutUint64(b[off:], uint64(v)); return b }
	tests := []struct {
		name string
		blob []byte
	}{
		{"empty", nil},
		{"short header", good[:11]},
		{"truncated", good[:len(good)-1]},
		{"one byte too long", append(bytes.Clone(good), 0)},
		{"count zero", mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b, 0); return b[:12] })},
		{"count negative", mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b, 0xffffffff); return b })},
		{"count too large", mut(func(b []byte) []byte { binary.LittleEndian.PutUint32(b, 7); return b })},
		{"span size zero", mut(func(b []byte) []byte { return put64(b, 4, 0) })},
		{"first out not zero", mut(func(b []byte) []byte { return put64(b, rec(0)+8, 5) })},
		{"in decreasing", mut(func(b []byte) []byte { return put64(b, rec(2), 69_999) })},
		{"in equal", mut(func(b []byte) []byte { return put64(b, rec(2), 70_000) })},
		{"out equal", mut(func(b []byte) []byte { return put64(b, rec(2)+8, 4<<20+17) })},
		{"negative in", mut(func(b []byte) []byte { return put64(b, rec(0), -1) })},
		{"bits 8", mut(func(b []byte) []byte { b[rec(1)+16] = 8; return b })},
		{"bits at offset 0", mut(func(b []byte) []byte { put64(b, rec(0), 0); b[rec(0)+16] = 1; return b })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := ParseCheckpoints(bytes.NewReader(tt.blob), int64(len(tt.blob)))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseCheckpoints = %+v, %v; want ErrMalformed", tab, err)
			}
		})
	}
}

func TestEncodeCheckpointsRejects(t *testing.T) {
	win := [][]byte{nil, nil}
	tests := []struct {
		name     string
		spanSize int64
		points   []Checkpoint
		windows  [][]byte
	}{
		{"no points", 1, nil, nil},
		{"span size zero", 0, testPoints[:2], win},
		{"window count", 1, testPoints[:2], win[:1]},
		{"window too long", 1, testPoints[:1], [][]byte{make([]byte, WindowSize+1)}},
		{"out not increasing", 1, []Checkpoint{{In: 10}, {In: 20}}, win},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := EncodeCheckpoints(&buf, tt.spanSize, tt.points, tt.windows); err == nil {
				t.Fatalf("EncodeCheckpoints succeeded (%d bytes), want an error", buf.Len())
			}
		})
	}
}

func TestSpanRangesAndSpanOf(t *testing.T) {
	tab := &CheckpointTable{Points: testPoints, Version: 2}
	const csize, usize = 200_000, 9 << 20
	tests := []struct {
		id             SpanID
		c0, c1, u0, u1 int64
	}{
		{0, 10, 70_000, 0, 4<<20 + 17},
		{1, 69_999, 140_001, 4<<20 + 17, 8<<20 + 100},
		{2, 140_000, csize, 8<<20 + 100, usize},
	}
	for _, tt := range tests {
		c0, c1, u0, u1, err := tab.SpanRanges(tt.id, csize, usize)
		if err != nil || c0 != tt.c0 || c1 != tt.c1 || u0 != tt.u0 || u1 != tt.u1 {
			t.Errorf("SpanRanges(%d) = %d %d %d %d, %v; want %d %d %d %d", tt.id, c0, c1, u0, u1, err, tt.c0, tt.c1, tt.u0, tt.u1)
		}
	}
	// Uncompressed size before the last checkpoint: empty last span.
	if _, _, u0, u1, err := tab.SpanRanges(2, csize, 8<<20); err != nil || u0 != u1 {
		t.Errorf("SpanRanges(2) with short uncompressed size = [%d, %d), %v; want an empty range", u0, u1, err)
	}
	for _, id := range []SpanID{-1, 3} {
		if _, _, _, _, err := tab.SpanRanges(id, csize, usize); err == nil {
			t.Errorf("SpanRanges(%d) succeeded, want an error", id)
		}
	}
	if _, _, _, _, err := tab.SpanRanges(2, 100, usize); !errors.Is(err, ErrMalformed) {
		t.Errorf("SpanRanges(2) with compressed size before the checkpoint: %v, want ErrMalformed", err)
	}
	offs := []struct {
		off  int64
		want SpanID
	}{{-5, 0}, {0, 0}, {4<<20 + 16, 0}, {4<<20 + 17, 1}, {8<<20 + 99, 1}, {8<<20 + 100, 2}, {1 << 40, 2}}
	for _, tt := range offs {
		if got := tab.SpanOf(tt.off); got != tt.want {
			t.Errorf("SpanOf(%d) = %d, want %d", tt.off, got, tt.want)
		}
	}
}

func TestWindowErrors(t *testing.T) {
	blob := encodeTestBlob(t, 1, testPoints[:1])
	tab, err := ParseCheckpoints(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Window(0, make([]byte, WindowSize-1)); err == nil {
		t.Error("Window with a short buffer succeeded, want an error")
	}
	if _, err := tab.Window(1, make([]byte, WindowSize)); err == nil {
		t.Error("Window(1) of a 1-checkpoint table succeeded, want an error")
	}
	// A reader that lost its tail after parsing: the read error surfaces.
	tab.r = bytes.NewReader(blob[:len(blob)-1])
	if _, err := tab.Window(0, make([]byte, WindowSize)); !errors.Is(err, ErrTruncated) {
		t.Errorf("Window on a truncated reader: %v, want ErrTruncated", err)
	}
}

func TestTarZinfo(t *testing.T) {
	b, err := EncodeTarZinfo(DefaultSpanSize, 123_456_789)
	if err != nil {
		t.Fatalf("EncodeTarZinfo: %v", err)
	}
	spanSize, size, err := ParseTarZinfo(b)
	if err != nil || spanSize != DefaultSpanSize || size != 123_456_789 {
		t.Fatalf("ParseTarZinfo = %d, %d, %v; want %d, %d", spanSize, size, err, DefaultSpanSize, 123_456_789)
	}
	for _, tt := range []struct{ spanSize, size, want int64 }{
		{4, 0, -1}, {4, 1, 0}, {4, 4, 0}, {4, 5, 1}, {4, 8, 1},
	} {
		if got := tarMaxSpanID(tt.spanSize, tt.size); got != tt.want {
			t.Errorf("tarMaxSpanID(%d, %d) = %d, want %d", tt.spanSize, tt.size, got, tt.want)
		}
	}
	if _, err := EncodeTarZinfo(0, 1); err == nil {
		t.Error("EncodeTarZinfo(span 0) succeeded, want an error")
	}

	wrongVersion := bytes.Clone(b)
	w := &wire{head: wrongVersion, size: uint64(len(wrongVersion))}
	root, _ := w.root()
	pos, ok, _ := w.field(root, 0, 4)
	if !ok {
		t.Fatal("version field absent")
	}
	binary.LittleEndian.PutUint32(wrongVersion[pos:], 1)
	zeroSpan, _ := func() ([]byte, error) {
		pos, _, _ := w.field(root, 1, 8)
		c := bytes.Clone(b)
		binary.LittleEndian.PutUint64(c[pos:], 0)
		return c, nil
	}()
	bad := map[string][]byte{
		"empty":         nil,
		"truncated":     b[:len(b)-4],
		"wrong version": wrongVersion,
		"zero span":     zeroSpan,
		"too large":     make([]byte, maxTarZinfoSize+1),
	}
	for name, in := range bad {
		if _, _, err := ParseTarZinfo(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseTarZinfo(%s) = %v, want ErrMalformed", name, err)
		}
	}
}

// checkGolden compares got with testdata/name, rewriting it under -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (regenerate with -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (%d vs %d bytes); if intended, regenerate with -update", path, len(got), len(want))
	}
}
