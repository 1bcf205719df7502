package flate

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

// readers wraps compressed input in the io.Reader shapes the decoder must
// cope with.
var readers = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"plain", func(r io.Reader) io.Reader { return r }},
	{"onebyte", iotest.OneByteReader},
	{"half", iotest.HalfReader},
	{"dataerr", iotest.DataErrReader},
}

// levelCase is one test input compressed by compress/flate at one level.
type levelCase struct {
	name  string
	level int
	data  []byte
	raw   []byte // raw deflate stream
}

var (
	levelCasesOnce sync.Once
	levelCasesList []levelCase
)

// levelCases compresses inputs of several kinds at every compress/flate
// level (once per test binary: it is the slow part).
func levelCases(t *testing.T) []levelCase {
	levelCasesOnce.Do(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		inputs := []struct {
			name string
			data []byte
		}{
			{"empty", nil},
			{"byte", []byte{'x'}},
			{"text", genText(rng, 100<<10)},
			{"binary", genBinary(rng, 300<<10)},
			{"random", genRandom(rng, 70<<10)},
			{"zeros", make([]byte, 200<<10)},
			{"mixed", genMixed(3, 1<<20)},
		}
		for _, in := range inputs {
			for level := flate.HuffmanOnly; level <= flate.BestCompression; level++ {
				levelCasesList = append(levelCasesList, levelCase{in.name, level, in.data, deflateBytes(t, in.data, level)})
			}
		}
	})
	return levelCasesList
}

func TestRawMatchesStdlib(t *testing.T) {
	for _, c := range levelCases(t) {
		for _, rd := range readers {
			if rd.name != "plain" && (len(c.data) > 200<<10 || c.level%3 != 0) {
				continue // slow readers on some inputs only
			}
			got, err := io.ReadAll(NewRaw(rd.wrap(bytes.NewReader(c.raw))))
			if err != nil || !bytes.Equal(got, c.data) {
				t.Errorf("%s level %d reader %s: got %d bytes, err %v; want %d bytes identical to the input",
					c.name, c.level, rd.name, len(got), err, len(c.data))
			}
		}
	}
}

func TestGzipMatchesStdlib(t *testing.T) {
	for _, c := range levelCases(t) {
		comp := gzipMember(gzipHeader(nil, "", "", false, 0), c.raw, c.data)
		if std, err := stdGunzip(comp); err != nil || !bytes.Equal(std, c.data) {
			t.Fatalf("%s level %d: compress/gzip rejects the test stream: %v", c.name, c.level, err)
		}
		var b bytes.Buffer
		n, err := NewGzip(bytes.NewReader(comp)).WriteTo(&b)
		if err != nil || n != int64(len(c.data)) || !bytes.Equal(b.Bytes(), c.data) {
			t.Errorf("%s level %d WriteTo: got %d bytes (n=%d), err %v; want %d identical bytes",
				c.name, c.level, b.Len(), n, err, len(c.data))
		}
	}
}

// TestHandBuilt decodes streams written bit by bit, which compress/flate
// never produces, and compares with compress/flate.
func TestHandBuilt(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	big := genRandom(rng, 65535)
	tests := []struct {
		name  string
		build func(w *bitWriter)
		want  []byte
	}{
		{"stored empty", func(w *bitWriter) { w.stored(true, nil) }, nil},
		{"stored 1", func(w *bitWriter) { w.stored(true, []byte{7}) }, []byte{7}},
		{"stored 65535", func(w *bitWriter) { w.stored(true, big) }, big},
		{"stored many sizes", func(w *bitWriter) {
			for n := 0; n < 300; n += 7 {
				w.stored(false, big[:n])
			}
			w.stored(true, big[:1000])
		}, func() []byte {
			var b []byte
			for n := 0; n < 300; n += 7 {
				b = append(b, big[:n]...)
			}
			return append(b, big[:1000]...)
		}()},
		{"fixed literals", func(w *bitWriter) { w.fixedLiterals(true, []byte("hello, world")) }, []byte("hello, world")},
		{"fixed empty", func(w *bitWriter) { w.fixedLiterals(true, nil) }, nil},
		{"fixed all bytes", func(w *bitWriter) {
			var b []byte
			for i := 0; i < 256; i++ {
				b = append(b, byte(i))
			}
			w.fixedLiterals(true, b)
		}, func() []byte {
			var b []byte
			for i := 0; i < 256; i++ {
				b = append(b, byte(i))
			}
			return b
		}()},
		{"fixed overlapping matches", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(1, 2)
			w.fixedSym('a')
			w.fixedMatch(10, 1)
			w.fixedSym('b')
			w.fixedMatch(7, 2)
			w.fixedSym(256)
		}, []byte("aaaaaaaaaaababababa")},
		{"fixed max length 258 via 285 and 284+31", func(w *bitWriter) {
			w.bits(1, 1)
			w.bits(1, 2)
			w.fixedSym('z')
			w.fixedSym(285)
			w.code(0, 5)
			w.fixedSym(284)
			w.bits(31, 5)
			w.code(0, 5)
			w.fixedSym(256)
		}, bytes.Repeat([]byte("z"), 1+258+258)},
		{"stored then fixed then stored", func(w *bitWriter) {
			w.stored(false, []byte("ab"))
			w.fixedLiterals(false, []byte("cd"))
			w.stored(true, []byte("ef"))
		}, []byte("abcdef")},
		{"dynamic with single one-bit distance code", func(w *bitWriter) {
			// 254 codes of 8 bits and 4 of 9 bits: complete.
			lit := make([]uint8, 258)
			for i := range lit {
				lit[i] = 8
			}
			lit[254], lit[255], lit[256], lit[257] = 9, 9, 9, 9
			dist := []uint8{1}
			lc, _ := w.dynamicHeader(true, lit, dist, flatCL)
			w.code(lc['q'], 8)
			w.code(lc[257], 9) // length 3
			w.code(0, 1)       // distance 1
			w.code(lc[256], 9)
		}, []byte("qqqq")},
		{"dynamic with no distance codes", func(w *bitWriter) {
			lit := make([]uint8, 257)
			lit['a'], lit['b'], lit[256] = 1, 2, 2
			lc, _ := w.dynamicHeader(true, lit, []uint8{0}, flatCL)
			for _, c := range []byte("abba") {
				w.code(lc[c], uint(lit[c]))
			}
			w.code(lc[256], 2)
		}, []byte("abba")},
		{"dynamic with only end of block", func(w *bitWriter) {
			lit := make([]uint8, 257)
			lit[256] = 1
			lc, _ := w.dynamicHeader(true, lit, []uint8{0}, flatCL)
			w.code(lc[256], 1)
		}, nil},
		{"dynamic with 15-bit codes", func(w *bitWriter) {
			// Lengths 1,2,...,14,15,15 for 16 symbols: complete, deep subtables.
			lit := make([]uint8, 257+29)
			syms := []int{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 256, 285, 'n'}
			for i, s := range syms {
				lit[s] = uint8(min(i+1, 15))
			}
			dist := make([]uint8, 30)
			for i := range dist[:16] {
				dist[i] = uint8(min(i+1, 15))
			}
			lc, dc := w.dynamicHeader(true, lit, dist, flatCL)
			for _, c := range []byte("nmlkjihgfedcba") {
				w.code(lc[c], uint(lit[c]))
			}
			w.code(lc[285], 15) // length 258
			w.code(dc[0], 1)    // distance 1
			w.code(lc[285], 15) // length 258
			w.code(dc[15], 15)  // distance code 15: 193 + 6 extra bits
			w.bits(5, 6)
			w.code(lc[256], uint(lit[256]))
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w bitWriter
			tt.build(&w)
			comp := w.bytes()
			want, err := stdInflate(comp)
			if err != nil {
				t.Fatalf("compress/flate rejects the test stream: %v", err)
			}
			if tt.want != nil && !bytes.Equal(want, tt.want) {
				t.Fatalf("compress/flate decodes %q, the test expects %q", want, tt.want)
			}
			for _, rd := range readers {
				got, err := io.ReadAll(NewRaw(rd.wrap(bytes.NewReader(comp))))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("reader %s: got %q, %v; want %q, nil", rd.name, trunc(got), err, trunc(want))
				}
			}
		})
	}
}

func trunc(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

func TestGzipMembersAndHeaders(t *testing.T) {
	text := []byte(strings.Repeat("lazy pulling of image layers ", 2000))
	raw := deflateBytes(t, text, 6)
	empty := deflateBytes(t, nil, 6)
	hdrs := map[string][]byte{
		"plain":     gzipHeader(nil, "", "", false, 0),
		"extra":     gzipHeader([]byte("AB\x02\x00hi"), "", "", false, 0),
		"emptyext":  gzipHeader([]byte{}, "", "", false, 0),
		"name":      gzipHeader(nil, "layer.tar", "", false, 0),
		"comment":   gzipHeader(nil, "", "a comment", false, 0),
		"hcrc":      gzipHeader(nil, "", "", true, 0),
		"all":       gzipHeader(bytes.Repeat([]byte("x"), 5000), "name", "comment", true, 0),
		"text flag": gzipHeader(nil, "", "", false, 1),
	}
	for name, h := range hdrs {
		t.Run(name, func(t *testing.T) {
			stream := gzipMember(h, raw, text)
			stream = append(stream, gzipMember(hdrs["plain"], empty, nil)...)
			stream = append(stream, gzipMember(h, raw, text)...)
			want := append(append([]byte{}, text...), text...)
			if std, err := stdGunzip(stream); err != nil || !bytes.Equal(std, want) {
				t.Fatalf("compress/gzip: %d bytes, %v", len(std), err)
			}
			for _, rd := range readers {
				d := NewGzip(rd.wrap(bytes.NewReader(stream)))
				r := decodeAll(t, d, stream, 0)
				if r.err != nil || !bytes.Equal(r.out, want) {
					t.Errorf("reader %s: got %d bytes, %v; want %d bytes", rd.name, len(r.out), r.err, len(want))
				}
				if !bytes.Equal(r.consumed, stream) {
					t.Errorf("reader %s: OnConsumed got %d bytes at EOF, want all %d", rd.name, len(r.consumed), len(stream))
				}
				var starts []int64
				for _, c := range r.cps {
					if c.MemberStart {
						starts = append(starts, c.In)
					}
				}
				wantStarts := []int64{int64(len(h)),
					int64(len(h) + len(raw) + 8 + 10),
					int64(len(h) + len(raw) + 8 + 10 + len(empty) + 8 + len(h))}
				if !equalInts(starts, wantStarts) {
					t.Errorf("reader %s: member starts at %v, want %v", rd.name, starts, wantStarts)
				}
			}
		})
	}
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestGzipErrors(t *testing.T) {
	data := genMixed(5, 200<<10)
	good := gzipBytes(t, data, 6)
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[len(b)+i] ^= 0x20
		return b
	}
	badHCRC := gzipHeader(nil, "n", "", true, 0)
	badHCRC[len(badHCRC)-1] ^= 1
	tests := []struct {
		name  string
		input []byte
		want  error
		// stdAccepts marks inputs compress/gzip accepts although RFC 1952
		// (and zlib) reject them.
		stdAccepts bool
	}{
		{"empty", nil, ErrTruncated, false},
		{"crc flipped", flip(-8), ErrChecksum, false},
		{"crc flipped high byte", flip(-5), ErrChecksum, false},
		{"isize flipped", flip(-4), ErrChecksum, false},
		{"isize flipped high byte", flip(-1), ErrChecksum, false},
		{"header crc", gzipMember(badHCRC, deflateBytes(t, nil, 6), nil), ErrChecksum, false},
		{"not gzip", []byte("hello world, this is not gzip"), ErrCorrupt, false},
		{"method 7", append([]byte{0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 0}, good[10:]...), ErrCorrupt, false},
		{"reserved flag", gzipMember(gzipHeader(nil, "", "", false, 0x20), deflateBytes(t, nil, 6), nil), ErrCorrupt, true},
		{"garbage after member", append(bytes.Clone(good), "garbage"...), ErrCorrupt, false},
		{"zero after member", append(bytes.Clone(good), 0), ErrCorrupt, false},
		{"partial magic after member", append(bytes.Clone(good), 0x1f), ErrTruncated, false},
		{"truncated second header", append(bytes.Clone(good), good[:7]...), ErrTruncated, false},
		{"truncated trailer", good[:len(good)-3], ErrTruncated, false},
		{"truncated data", good[:len(good)/2], ErrTruncated, false},
		{"truncated header", good[:5], ErrTruncated, false},
		{"truncated name", gzipHeader(nil, "name", "", false, 0)[:12], ErrTruncated, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := io.ReadAll(NewGzip(bytes.NewReader(tt.input)))
			if !errors.Is(err, tt.want) {
				t.Errorf("error %v (%s), want %v", err, errKind(err), tt.want)
			}
			if _, stdErr := stdGunzip(tt.input); (stdErr == nil) != tt.stdAccepts {
				t.Errorf("compress/gzip error %v, the test expects it to accept the input: %v", stdErr, tt.stdAccepts)
			}
		})
	}
}

func TestReadErrorIsReturned(t *testing.T) {
	comp := gzipBytes(t, genMixed(9, 100<<10), 6)
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(comp[:len(comp)/2]), iotest.ErrReader(boom))
	_, err := io.ReadAll(NewGzip(r))
	if !errors.Is(err, boom) {
		t.Errorf("error %v, want the reader's error %v", err, boom)
	}
}

func TestBoundaryCallbackError(t *testing.T) {
	data := genMixed(11, 1<<20)
	comp := gzipBytes(t, data, 6)
	stop := errors.New("stop")
	d := NewGzip(bytes.NewReader(comp))
	var at Boundary
	d.OnBoundary(func(b Boundary, _ []byte) error {
		if b.Out > 100<<10 {
			at = b
			return stop
		}
		return nil
	})
	got, err := io.ReadAll(d)
	if !errors.Is(err, stop) {
		t.Fatalf("error %v, want the callback's error", err)
	}
	if int64(len(got)) != at.Out || !bytes.Equal(got, data[:at.Out]) {
		t.Errorf("got %d bytes before the error, want the %d bytes before the boundary", len(got), at.Out)
	}
}

func TestResumeArgs(t *testing.T) {
	tests := []struct {
		in   int64
		bits uint8
		out  int64
	}{{10, 8, 0}, {0, 3, 0}, {-1, 0, 0}, {10, 0, -5}}
	for _, tt := range tests {
		if _, err := ResumeGzip(bytes.NewReader(nil), tt.in, tt.bits, tt.out, nil); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("ResumeGzip(in=%d, bits=%d, out=%d) error %v, want ErrCheckpoint", tt.in, tt.bits, tt.out, err)
		}
	}
}
