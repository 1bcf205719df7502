package flate

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// multiMember returns a gzip stream of several members compressed in
// different ways (dynamic, fixed-heavy, stored, Huffman-only, empty) and its
// decompressed content.
func multiMember(t testing.TB) ([]byte, []byte) {
	parts := []struct {
		data  []byte
		level int
	}{
		{genMixed(21, 700<<10), 6},
		{genMixed(22, 300<<10), flate.BestSpeed},
		{genMixed(23, 200<<10), flate.NoCompression},
		{nil, 6},
		{genMixed(24, 150<<10), flate.HuffmanOnly},
		{genMixed(25, 400<<10), flate.BestCompression},
	}
	var stream, data []byte
	for _, p := range parts {
		stream = append(stream, gzipBytes(t, p.data, p.level)...)
		data = append(data, p.data...)
	}
	return stream, data
}

// spanStart is where the compressed bytes of a span starting at cp begin.
func spanStart(cp Boundary) int64 {
	if cp.Bits > 0 {
		return cp.In - 1
	}
	return cp.In
}

// resumable returns the boundaries a resume may start at.
func resumable(cps []checkpoint) []checkpoint {
	var r []checkpoint
	for _, c := range cps {
		if !c.Final {
			r = append(r, c)
		}
	}
	return r
}

func TestResumeEveryBoundary(t *testing.T) {
	stream, data := multiMember(t)
	full := decodeAll(t, NewGzip(bytes.NewReader(stream)), stream, 0)
	if full.err != nil || !bytes.Equal(full.out, data) {
		t.Fatalf("full decode: %d bytes, %v", len(full.out), full.err)
	}
	finals, starts := 0, 0
	for _, c := range full.cps {
		if c.Final {
			finals++
		}
		if c.MemberStart {
			starts++
		}
		if want := min(c.Out, WindowSize); int64(len(c.window)) != want || !bytes.Equal(c.window, data[c.Out-want:c.Out]) {
			t.Fatalf("boundary %+v: window of %d bytes is not the last %d bytes of output", c.Boundary, len(c.window), want)
		}
	}
	if finals != 6 || starts != 6 {
		t.Errorf("%d final and %d member-start boundaries, want 6 and 6", finals, starts)
	}
	cps := resumable(full.cps)
	if len(cps) < 25 {
		t.Fatalf("only %d boundaries: the test needs a stream with many blocks", len(cps))
	}
	crossing := 0
	step := 1
	if testing.Short() || raceEnabled {
		step = 5
	}
	for i := 0; i < len(cps); i += step {
		cp := cps[i]
		start := spanStart(cp.Boundary)

		// To the end of the stream, with the exact window.
		d, err := ResumeGzip(bytes.NewReader(stream[start:]), cp.In, cp.Bits, cp.Out, cp.window)
		if err != nil {
			t.Fatal(err)
		}
		r := decodeAll(t, d, stream[start:], start)
		if r.err != nil || !bytes.Equal(r.out, data[cp.Out:]) {
			t.Fatalf("resume at %+v: %d bytes, %v; want the %d bytes of the tail", cp.Boundary, len(r.out), r.err, len(data)-int(cp.Out))
		}
		// It reports the same boundaries as the full decode.
		var later []checkpoint
		for _, c := range full.cps {
			if c.In > cp.In || (c.In == cp.In && c.Out > cp.Out) || (c.In == cp.In && c.MemberStart && !cp.MemberStart) {
				later = append(later, c)
			}
		}
		if len(r.cps) != len(later) {
			t.Fatalf("resume at %+v: %d boundaries, want %d", cp.Boundary, len(r.cps), len(later))
		}
		for j := range later {
			if r.cps[j].Boundary != later[j].Boundary || !bytes.Equal(r.cps[j].window, later[j].window) {
				t.Fatalf("resume at %+v: boundary %d is %+v, want %+v (or its window differs)",
					cp.Boundary, j, r.cps[j].Boundary, later[j].Boundary)
			}
		}

		// Only the span to the next resumable boundary, with SOCI's 32 KiB
		// zero-padded window, read with exactly the span's length.
		if i+1 < len(cps) {
			checkSpan(t, stream, data, cp, cps[i+1])
		}
		// A longer span, which often crosses member boundaries (trailer,
		// header) without a checkpoint at the member start.
		if i+4 < len(cps) {
			checkSpan(t, stream, data, cp, cps[i+4])
			for _, c := range full.cps {
				if c.Final && c.In > cp.In && c.In < cps[i+4].In && !cps[i+4].MemberStart {
					crossing++
					break
				}
			}
		}
	}
	t.Logf("%d resumable boundaries, %d spans checked across a member end", len(cps), crossing)
	if crossing == 0 {
		t.Error("no checked span crosses a member end mid-way")
	}
}

// checkSpan resumes at cp with only the compressed bytes up to next.In and a
// zero-padded window, reads exactly the span's output, then expects
// ErrTruncated for more.
func checkSpan(t *testing.T, stream, data []byte, cp, next checkpoint) {
	t.Helper()
	padded := make([]byte, WindowSize)
	copy(padded[WindowSize-len(cp.window):], cp.window)
	start := spanStart(cp.Boundary)
	d, err := ResumeGzip(iotest.HalfReader(bytes.NewReader(stream[start:next.In])), cp.In, cp.Bits, cp.Out, padded)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, next.Out-cp.Out)
	if _, err := io.ReadFull(d, got); err != nil || !bytes.Equal(got, data[cp.Out:next.Out]) {
		t.Fatalf("span %+v .. %+v: %v (or wrong bytes)", cp.Boundary, next.Boundary, err)
	}
	n, err := io.ReadFull(d, make([]byte, 1))
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("span %+v .. %+v: reading past the span: %d bytes, %v; want ErrTruncated", cp.Boundary, next.Boundary, n, err)
	}
}

func TestResumeRaw(t *testing.T) {
	data := genMixed(31, 1<<20)
	for _, level := range []int{flate.BestSpeed, 6, flate.NoCompression} {
		comp := deflateBytes(t, data, level)
		full := decodeAll(t, NewRaw(bytes.NewReader(comp)), comp, 0)
		if full.err != nil || !bytes.Equal(full.out, data) {
			t.Fatalf("level %d: full decode: %d bytes, %v", level, len(full.out), full.err)
		}
		if !bytes.Equal(full.consumed, comp) {
			t.Errorf("level %d: sink got %d bytes at EOF, want %d", level, len(full.consumed), len(comp))
		}
		for _, cp := range resumable(full.cps) {
			start := spanStart(cp.Boundary)
			d, err := ResumeRaw(bytes.NewReader(comp[start:]), cp.In, cp.Bits, cp.Out, cp.window)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if _, err := d.WriteTo(&b); err != nil || !bytes.Equal(b.Bytes(), data[cp.Out:]) {
				t.Fatalf("level %d: resume at %+v: %d bytes, %v", level, cp.Boundary, b.Len(), err)
			}
			if got := d.InputOffset(); got != int64(len(comp)) {
				t.Errorf("level %d: resume at %+v: InputOffset %d at the end, want %d", level, cp.Boundary, got, len(comp))
			}
		}
	}
}

// TestResumeChecksLaterMembers: the CRC of a member that starts after the
// resume point is checked, the one of the member resumed in is not.
func TestResumeChecksLaterMembers(t *testing.T) {
	a, b := genMixed(41, 300<<10), genMixed(42, 300<<10)
	first := gzipBytes(t, a, 6)
	stream := append(bytes.Clone(first), gzipBytes(t, b, 6)...)
	stream[len(stream)-8] ^= 1 // CRC of the second member
	firstBad := append(bytes.Clone(first), stream[len(first):]...)
	firstBad[len(first)-8] ^= 1 // CRC of the first member too
	full := decodeAll(t, NewGzip(bytes.NewReader(stream)), stream, 0)
	if !errors.Is(full.err, ErrChecksum) {
		t.Fatalf("full decode: %v, want ErrChecksum", full.err)
	}
	var inFirst, inSecond *checkpoint
	for i, c := range full.cps {
		if c.Final || c.MemberStart {
			continue
		}
		if c.In < int64(len(first)) && inFirst == nil && c.Out > 0 {
			inFirst = &full.cps[i]
		}
		if c.In > int64(len(first)) && inSecond == nil && c.Out > int64(len(a)) {
			inSecond = &full.cps[i]
		}
	}
	if inFirst == nil || inSecond == nil {
		t.Fatal("no mid-member boundaries")
	}
	tests := []struct {
		name  string
		input []byte
		cp    *checkpoint
		want  error
	}{
		{"second member corrupt, resumed in first", stream, inFirst, ErrChecksum},
		{"first member corrupt, resumed in first", append(bytes.Clone(first[:len(first)-8]), firstBad[len(first)-8:len(first)]...), inFirst, nil},
		{"both corrupt, resumed in second", firstBad, inSecond, nil},
	}
	for _, tt := range tests {
		start := spanStart(tt.cp.Boundary)
		d, err := ResumeGzip(bytes.NewReader(tt.input[start:]), tt.cp.In, tt.cp.Bits, tt.cp.Out, tt.cp.window)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, d)
		if (tt.want == nil && err != nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestResumeShortWindow: a window shorter than 32 KiB at the stream start,
// given exactly or zero-padded, both work.
func TestResumeShortWindow(t *testing.T) {
	data := genText(rand.New(rand.NewPCG(51, 51)), 200<<10)
	// A stored block of 5000 bytes, then compress/flate's output with those
	// bytes as preset dictionary: the first boundary has a 5000-byte window
	// that the next blocks refer to.
	var w bitWriter
	w.stored(false, data[:5000])
	b := bytes.NewBuffer(w.bytes())
	zw, err := flate.NewWriterDict(b, 6, data[:5000])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data[5000:]); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	comp := b.Bytes()
	full := decodeAll(t, NewRaw(bytes.NewReader(comp)), comp, 0)
	if full.err != nil || !bytes.Equal(full.out, data) {
		t.Fatalf("full decode: %d bytes, %v", len(full.out), full.err)
	}
	cp := full.cps[0]
	if cp.Out != 5000 || len(cp.window) != 5000 {
		t.Fatalf("first boundary %+v with a %d-byte window, want Out 5000", cp.Boundary, len(cp.window))
	}
	padded := append(make([]byte, WindowSize-5000), cp.window...)
	for name, win := range map[string][]byte{"exact": cp.window, "padded": padded} {
		d, err := ResumeRaw(bytes.NewReader(comp[spanStart(cp.Boundary):]), cp.In, cp.Bits, cp.Out, win)
		if err != nil {
			t.Fatal(err)
		}
		r := decodeAll(t, d, comp[spanStart(cp.Boundary):], spanStart(cp.Boundary))
		if r.err != nil || !bytes.Equal(r.out, data[5000:]) {
			t.Errorf("%s window: %d bytes, %v", name, len(r.out), r.err)
		}
		if len(r.cps) > 0 && len(r.cps[0].window) != min(int(r.cps[0].Out), WindowSize) {
			t.Errorf("%s window: next boundary %+v has a %d-byte window", name, r.cps[0].Boundary, len(r.cps[0].window))
		}
	}
	// A too-short window makes references before it fail cleanly.
	d, _ := ResumeRaw(bytes.NewReader(comp[spanStart(cp.Boundary):]), cp.In, cp.Bits, cp.Out, cp.window[4990:])
	if _, err := io.Copy(io.Discard, d); !errors.Is(err, ErrCorrupt) {
		t.Errorf("10-byte window: error %v, want ErrCorrupt (distance too far back)", err)
	}
}
