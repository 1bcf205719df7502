package flate

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"strings"
	"testing"
)

// Seeds beyond testdata/fuzz: a few valid streams built in code.
func fuzzSeeds(tb testing.TB) [][]byte {
	var w bitWriter
	w.stored(false, []byte("stored"))
	w.fixedLiterals(false, []byte("fixed"))
	lc, dc := w.dynamicHeader(true, litLens(258, map[int]uint8{'x': 1, 257: 2, 256: 2}), []uint8{1}, flatCL)
	w.code(lc['x'], 1)
	w.code(lc[257], 2)
	w.code(dc[0], 1)
	w.code(lc[256], 2)
	return [][]byte{w.bytes(), deflateBytes(tb, genMixed(1, 4<<10), 6), deflateBytes(tb, []byte("hello hello hello"), 1)}
}

func FuzzInflateRaw(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, stdErr := stdInflate(data)
		got, err := io.ReadAll(NewRaw(bytes.NewReader(data)))
		if stdErr == nil && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("compress/flate decodes %d bytes; we got %d bytes, %v", len(want), len(got), err)
		}
		if stdErr != nil && err == nil {
			t.Fatalf("compress/flate fails (%v); we decoded %d bytes without error", stdErr, len(got))
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) {
			t.Fatalf("error %v is neither ErrCorrupt nor ErrTruncated", err)
		}
	})
}

func FuzzGzip(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(gzipMember(gzipHeader(nil, "", "", false, 0), s, mustInflate(f, s)))
		f.Add(gzipMember(gzipHeader([]byte("xx"), "name", "comment", true, 0), s, mustInflate(f, s)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, stdErr := stdGunzip(data)
		d := NewGzip(bytes.NewReader(data))
		var headers [][]byte
		prevEnd := int64(0)
		d.OnBoundary(func(b Boundary, _ []byte) error {
			if b.MemberStart {
				headers = append(headers, data[prevEnd:b.In])
			}
			if b.Final {
				prevEnd = b.In + gzipTrailerLen
			}
			return nil
		})
		got, err := io.ReadAll(d)
		switch {
		case stdErr == nil && err != nil:
			// RFC 1952 (and zlib) reject reserved header flags; compress/gzip
			// ignores them.
			if errors.Is(err, ErrCorrupt) && strings.Contains(err.Error(), "reserved flags") {
				return
			}
			t.Fatalf("compress/gzip decodes %d bytes; we fail: %v", len(want), err)
		case stdErr == nil && !bytes.Equal(got, want):
			t.Fatalf("compress/gzip decodes %d bytes; we got %d different bytes", len(want), len(got))
		case stdErr != nil && err == nil:
			// compress/gzip limits FNAME and FCOMMENT to 511 bytes.
			if errors.Is(stdErr, gzip.ErrHeader) && anyLongString(headers) {
				return
			}
			t.Fatalf("compress/gzip fails (%v); we decoded %d bytes without error", stdErr, len(got))
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrChecksum) {
			t.Fatalf("error %v is not one of the package's sentinels", err)
		}
	})
}

func mustInflate(tb testing.TB, raw []byte) []byte {
	b, err := stdInflate(raw)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// anyLongString reports whether one of the gzip headers has a file name or
// comment of 512 bytes or more (with its terminating zero).
func anyLongString(headers [][]byte) bool {
	for _, h := range headers {
		flg, p := h[3], h[gzipHeaderLen:]
		if flg&flagExtra != 0 {
			p = p[2+(int(p[0])|int(p[1])<<8):]
		}
		for _, f := range []byte{flagName, flagComment} {
			if flg&f == 0 {
				continue
			}
			i := bytes.IndexByte(p, 0)
			if i >= 511 {
				return true
			}
			p = p[i+1:]
		}
	}
	return false
}

// FuzzResume compresses the fuzzed content with compress/gzip into two
// members, flushing every few bytes so that there are many blocks, or takes
// it as a gzip stream when asIs is set; then it resumes at the boundary
// chosen by idx: to the end of the stream, and for exactly the span to the
// next boundary.
func FuzzResume(f *testing.F) {
	f.Add([]byte("hello, hello, hello world"), int8(6), uint16(0), uint16(1), false)
	f.Add(genMixed(7, 40<<10), int8(1), uint16(3), uint16(2000), false)
	f.Add(genMixed(8, 50<<10), int8(9), uint16(7), uint16(100), false)
	f.Add(genMixed(9, 30<<10), int8(0), uint16(1), uint16(5000), false)
	f.Fuzz(func(t *testing.T, content []byte, level int8, idx, split uint16, asIs bool) {
		stream, data := content, []byte(nil)
		if asIs {
			var err error
			if data, err = stdGunzip(stream); err != nil {
				return
			}
		} else {
			if len(content) > 64<<10 {
				content = content[:64<<10]
			}
			lvl := (int(level)%12+12)%12 - 2 // HuffmanOnly (-2) .. BestCompression (9)
			cut := int(split) % (len(content) + 1)
			every := 256 + int(split)%8192 // not less: the checks are quadratic in the number of blocks
			stream = append(flushedGzip(t, content[:cut], lvl, every), flushedGzip(t, content[cut:], lvl, every)...)
			data = content
		}
		full := decodeAll(t, NewGzip(bytes.NewReader(stream)), stream, 0)
		if full.err != nil {
			if asIs && errors.Is(full.err, ErrCorrupt) && strings.Contains(full.err.Error(), "reserved flags") {
				return
			}
			t.Fatalf("full decode: %v", full.err)
		}
		if !bytes.Equal(full.out, data) {
			t.Fatalf("full decode: %d bytes differ from the %d expected", len(full.out), len(data))
		}
		cps := resumable(full.cps)
		if len(cps) == 0 {
			return
		}
		cp := cps[int(idx)%len(cps)]
		start := spanStart(cp.Boundary)
		d, err := ResumeGzip(bytes.NewReader(stream[start:]), cp.In, cp.Bits, cp.Out, cp.window)
		if err != nil {
			t.Fatal(err)
		}
		r := decodeAll(t, d, stream[start:], start)
		if r.err != nil || !bytes.Equal(r.out, data[cp.Out:]) {
			t.Fatalf("resume at %+v: %d bytes, %v; want the %d-byte tail", cp.Boundary, len(r.out), r.err, len(data)-int(cp.Out))
		}
		if i := int(idx)%len(cps) + 1; i < len(cps) {
			checkSpan(t, stream, data, cp, cps[i])
		}
	})
}

// flushedGzip compresses data into one gzip member, flushing (ending the
// block and adding an empty stored block) after every `every` bytes.
func flushedGzip(t *testing.T, data []byte, level, every int) []byte {
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	for len(data) > 0 {
		n := min(every, len(data))
		if _, err := zw.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		if err := zw.Flush(); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// FuzzDynamicBlock builds a dynamic block whose code lengths come from the
// fuzzer (so that table construction sees arbitrary complete, incomplete and
// over-subscribed codes, and deep subtables), followed by fuzzed body bits,
// and compares with compress/flate.
func FuzzDynamicBlock(f *testing.F) {
	f.Add(uint8(0), uint8(0), []byte{1, 2, 2}, []byte{0xff, 0x00})
	f.Add(uint8(29), uint8(29), bytes.Repeat([]byte{9}, 400), []byte("body bits"))
	f.Add(uint8(2), uint8(3), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15}, []byte{0x12, 0x34, 0x56})
	f.Add(uint8(40), uint8(9), []byte{0, 1, 2, 3, 0, 0, 7, 200, 31, 9, 9, 9, 9, 100, 3, 1, 2}, []byte("some body bits..."))
	f.Fuzz(func(t *testing.T, hlit, hdist uint8, lens, body []byte) {
		nlit, ndist := 257+int(hlit%30), 1+int(hdist%32)
		all := make([]uint8, nlit+ndist)
		if hlit >= 30 {
			// Complete codes (with an end-of-block code), shaped by lens.
			completeLens(all[:nlit], eobSym, int(hlit), lens)
			completeLens(all[nlit:], 0, int(hdist), lens[len(lens)/2:])
		} else {
			for i := range all {
				if i < len(lens) {
					all[i] = lens[i] % 16
				}
			}
		}
		var w bitWriter
		w.bits(1, 1)
		w.bits(2, 2)
		w.bits(uint64(nlit-257), 5)
		w.bits(uint64(ndist-1), 5)
		w.bits(19-4, 4)
		for _, s := range clOrder {
			w.bits(uint64(flatCL[s]), 3)
		}
		clCodes := canonical(flatCL[:])
		for _, l := range all {
			w.code(clCodes[l], 4)
		}
		comp := append(w.bytes(), body...)
		want, stdErr := stdInflate(comp)
		got, err := io.ReadAll(NewRaw(bytes.NewReader(comp)))
		if stdErr == nil && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("compress/flate decodes %d bytes; we got %d bytes, %v", len(want), len(got), err)
		}
		if stdErr != nil && err == nil {
			t.Fatalf("compress/flate fails (%v); we decoded %d bytes without error", stdErr, len(got))
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) {
			t.Fatalf("error %v is neither ErrCorrupt nor ErrTruncated", err)
		}
	})
}

// completeLens sets lens to the code lengths of a complete prefix code with
// at most 15 bits: the leaves of a binary tree grown by splitting the leaf
// that each shape byte picks. The first leaf goes to symbol first, the
// others to the next free symbols from offset. A single symbol gets the
// one-bit code.
func completeLens(lens []uint8, first, offset int, shape []byte) {
	for i := range lens {
		lens[i] = 0
	}
	if len(lens) < 2 {
		lens[0] = 1 // the one-code code RFC 1951 allows
		return
	}
	depths := []uint8{1, 1}
	for _, b := range shape {
		if len(depths) >= len(lens) {
			break
		}
		if j := int(b) % len(depths); depths[j] < 15 {
			depths[j]++
			depths = append(depths, depths[j])
		}
	}
	lens[first%len(lens)] = depths[0]
	s := offset
	for _, d := range depths[1:] {
		for s%len(lens) == first%len(lens) || lens[s%len(lens)] != 0 {
			s++
		}
		lens[s%len(lens)] = d
	}
}
