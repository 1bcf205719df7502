package flate

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// litLens returns literal/length code lengths for nlit symbols with the
// given symbols set.
func litLens(nlit int, set map[int]uint8) []uint8 {
	l := make([]uint8, nlit)
	for s, n := range set {
		l[s] = n
	}
	return l
}

// rawHeader writes a dynamic block header with explicit counts and
// code-length code lengths, leaving the code lengths to the caller.
func rawHeader(w *bitWriter, hlit, hdist, hclen int, cl [19]uint8) []uint32 {
	w.bits(1, 1)
	w.bits(2, 2)
	w.bits(uint64(hlit), 5)
	w.bits(uint64(hdist), 5)
	w.bits(uint64(hclen), 4)
	for _, s := range clOrder[:hclen+4] {
		w.bits(uint64(cl[s]), 3)
	}
	return canonical(cl[:])
}

func TestCorruptRaw(t *testing.T) {
	// abLens: 'a' 1 bit, 'b' 2 bits, end of block 2 bits.
	abLens := litLens(257, map[int]uint8{'a': 1, 'b': 2, 256: 2})
	tests := []struct {
		name  string
		build func(w *bitWriter)
		want  error
	}{
		{"reserved block type", func(w *bitWriter) { w.bits(1, 1); w.bits(3, 2); w.bits(0, 16) }, ErrCorrupt},
		{"stored length mismatch", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(0, 2)
			w.align()
			w.b = append(w.b, 5, 0, 0xfa, 0xfe, 1, 2, 3, 4, 5)
		}, ErrCorrupt},
		{"fixed distance too far back", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(1, 2)
			w.fixedSym('a')
			w.fixedMatch(3, 2)
			w.fixedSym(256)
		}, ErrCorrupt},
		{"distance with no output", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(1, 2)
			w.fixedMatch(3, 1)
			w.fixedSym(256)
		}, ErrCorrupt},
		{"fixed symbol 286", func(w *bitWriter) { w.bits(1, 1); w.bits(1, 2); w.fixedSym(286); w.bits(0, 16) }, ErrCorrupt},
		{"fixed symbol 287", func(w *bitWriter) { w.bits(1, 1); w.bits(1, 2); w.fixedSym(287); w.bits(0, 16) }, ErrCorrupt},
		{"fixed distance 30", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(1, 2)
			w.fixedSym('a')
			w.fixedSym(257)
			w.code(30, 5)
			w.bits(0, 16)
		}, ErrCorrupt},
		{"fixed distance 31", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(1, 2)
			w.fixedSym('a')
			w.fixedSym(257)
			w.code(31, 5)
			w.bits(0, 16)
		}, ErrCorrupt},
		{"too many literal/length codes", func(w *bitWriter) { rawHeader(w, 30, 0, 15, flatCL); w.bits(0, 64) }, ErrCorrupt},
		{"too many distance codes", func(w *bitWriter) { rawHeader(w, 0, 30, 15, flatCL); w.bits(0, 64) }, ErrCorrupt},
		{"over-subscribed code-length code", func(w *bitWriter) {
			var cl [19]uint8
			for i := range cl {
				cl[i] = 1
			}
			rawHeader(w, 0, 0, 15, cl)
			w.bits(0, 64)
		}, ErrCorrupt},
		{"incomplete code-length code", func(w *bitWriter) {
			cl := [19]uint8{0: 2, 1: 2, 18: 2}
			rawHeader(w, 0, 0, 15, cl)
			w.bits(0, 64)
		}, ErrCorrupt},
		{"repeat with no previous length", func(w *bitWriter) {
			cl := [19]uint8{0: 1, 16: 1}
			codes := rawHeader(w, 0, 0, 15, cl)
			w.code(codes[16], 1)
			w.bits(0, 64)
		}, ErrCorrupt},
		{"repeat past the end", func(w *bitWriter) {
			cl := [19]uint8{1: 1, 18: 1}
			codes := rawHeader(w, 0, 0, 15, cl)
			w.code(codes[18], 1)
			w.bits(127, 7) // 138 zeros
			w.code(codes[18], 1)
			w.bits(127, 7) // 276
			w.code(codes[18], 1)
			w.bits(0, 7) // 287 > 258
			w.bits(0, 32)
		}, ErrCorrupt},
		{"over-subscribed literal/length code", func(w *bitWriter) {
			w.dynamicHeader(true, litLens(257, map[int]uint8{'a': 1, 'b': 1, 256: 1}), []uint8{1}, flatCL)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"incomplete literal/length code", func(w *bitWriter) {
			w.dynamicHeader(true, litLens(257, map[int]uint8{'a': 2, 256: 2}), []uint8{1}, flatCL)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"incomplete distance code", func(w *bitWriter) {
			w.dynamicHeader(true, abLens, []uint8{2, 2, 2}, flatCL)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"over-subscribed distance code", func(w *bitWriter) {
			w.dynamicHeader(true, abLens, []uint8{1, 1, 1}, flatCL)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"no end-of-block code", func(w *bitWriter) {
			w.dynamicHeader(true, litLens(257, map[int]uint8{'a': 1, 'b': 1}), []uint8{1}, flatCL)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"length with no distance codes", func(w *bitWriter) {
			lc, _ := w.dynamicHeader(true, litLens(258, map[int]uint8{'a': 1, 257: 2, 256: 2}), []uint8{0}, flatCL)
			w.code(lc['a'], 1)
			w.code(lc[257], 2)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"unassigned code of a one-code table", func(w *bitWriter) {
			w.dynamicHeader(true, litLens(257, map[int]uint8{256: 1}), []uint8{0}, flatCL)
			w.bits(1, 1) // the code "1" is unassigned
			w.bits(0, 32)
		}, ErrCorrupt},
		{"unassigned distance of a one-code table", func(w *bitWriter) {
			lc, _ := w.dynamicHeader(true, litLens(258, map[int]uint8{'a': 1, 257: 2, 256: 2}), []uint8{1}, flatCL)
			w.code(lc['a'], 1)
			w.code(lc[257], 2)
			w.bits(1, 1)
			w.bits(0, 32)
		}, ErrCorrupt},
		{"empty input", func(w *bitWriter) {}, ErrTruncated},
		{"no final block", func(w *bitWriter) { w.stored(false, []byte("abc")) }, ErrTruncated},
		{"stored block cut short", func(w *bitWriter) {
			w.stored(true, []byte("abcdef"))
			w.b = w.b[:len(w.b)-2]
		}, ErrTruncated},
		{"fixed block without end", func(w *bitWriter) { w.bits(1, 1); w.bits(1, 2); w.fixedSym('a') }, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w bitWriter
			tt.build(&w)
			comp := w.bytes()
			if _, err := stdInflate(comp); err == nil {
				t.Fatalf("compress/flate accepts the test stream")
			}
			for _, rd := range readers {
				_, err := io.ReadAll(NewRaw(rd.wrap(bytes.NewReader(comp))))
				if !errors.Is(err, tt.want) {
					t.Errorf("reader %s: error %v (%s), want %v", rd.name, err, errKind(err), tt.want)
				}
			}
		})
	}
}

// TestEveryPrefixIsTruncated cuts valid streams at every length: each prefix
// must fail with ErrTruncated after returning a prefix of the output.
func TestEveryPrefixIsTruncated(t *testing.T) {
	var w bitWriter
	w.stored(false, []byte("stored bytes"))
	w.fixedLiterals(false, []byte("fixed"))
	lc, dc := w.dynamicHeader(false, litLens(258, map[int]uint8{'x': 1, 257: 2, 256: 2}), []uint8{1}, flatCL)
	w.code(lc['x'], 1)
	w.code(lc[257], 2)
	w.code(dc[0], 1)
	w.code(lc[256], 2)
	w.stored(true, nil)
	raw := bytes.Clone(w.bytes())
	data := []byte("stored bytesfixedxxxx")
	mixed := genMixed(61, 8<<10)
	member := gzipMember(gzipHeader([]byte("ex"), "n", "c", true, 0), raw, data)
	streams := map[string]struct {
		comp, data []byte
		gzip       bool
	}{
		"raw hand-built": {raw, data, false},
		"gzip two members": {append(bytes.Clone(member), gzipBytes(t, mixed, 6)...),
			append(bytes.Clone(data), mixed...), true},
	}
	for name, s := range streams {
		for n := 0; n < len(s.comp); n++ {
			var d *Decoder
			if s.gzip {
				d = NewGzip(bytes.NewReader(s.comp[:n]))
			} else {
				d = NewRaw(bytes.NewReader(s.comp[:n]))
			}
			got, err := io.ReadAll(d)
			if s.gzip && n == len(member) {
				// A complete one-member stream.
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("%s cut after the first member: %d bytes, %v", name, len(got), err)
				}
				continue
			}
			if !errors.Is(err, ErrTruncated) || !bytes.HasPrefix(s.data, got) {
				t.Fatalf("%s cut at %d of %d: %d bytes, error %v (%s); want a prefix of the output and ErrTruncated",
					name, n, len(s.comp), len(got), err, errKind(err))
			}
		}
	}
}
