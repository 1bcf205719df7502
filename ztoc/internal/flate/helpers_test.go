package flate

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// genText returns n bytes of word soup drawn from a small vocabulary, which
// compresses like source code or text.
func genText(rng *rand.Rand, n int) []byte {
	words := []string{"the", "layer", "file", "func", "return", "err", "nil", "if", "for", "range",
		"package", "import", "struct", "int64", "byte", "offset", "span", "checkpoint", "window",
		"decoder", "\n", "\t", "{", "}", "(", ")", ":=", "=", "//", "x", "i", "0", "1", "42"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(3) == 0 {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

// genBinary returns n bytes shaped like executable code or tables: records of
// small integers with repeating structure and some noise.
func genBinary(rng *rand.Rand, n int) []byte {
	b := make([]byte, 0, n+16)
	var rec [16]byte
	for len(b) < n {
		binary.LittleEndian.PutUint32(rec[0:], uint32(len(b)/16))
		binary.LittleEndian.PutUint32(rec[4:], uint32(rng.IntN(256)))
		binary.LittleEndian.PutUint32(rec[8:], 0x00400000+uint32(rng.IntN(4096))*4)
		binary.LittleEndian.PutUint32(rec[12:], uint32(rng.IntN(3)))
		b = append(b, rec[:]...)
	}
	return b[:n]
}

func genRandom(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// genMixed returns n bytes alternating text-like, binary-like, random and
// zero sections of 16 KiB to 1 MiB, deterministically from seed.
func genMixed(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	out := make([]byte, 0, n)
	for len(out) < n {
		size := min(16<<10+rng.IntN(1<<20), n-len(out))
		switch k := rng.IntN(10); {
		case k < 5:
			out = append(out, genText(rng, size)...)
		case k < 8:
			out = append(out, genBinary(rng, size)...)
		case k < 9:
			out = append(out, genRandom(rng, size)...)
		default:
			out = append(out, make([]byte, size)...)
		}
	}
	return out
}

func gzipBytes(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func deflateBytes(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := flate.NewWriter(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkpoint is a Boundary with a copy of its window.
type checkpoint struct {
	Boundary
	window []byte
}

// decoded is what decodeAll saw.
type decoded struct {
	out      []byte
	cps      []checkpoint
	consumed []byte // what OnConsumed received
	err      error
}

// decodeAll decodes everything from d with Read, collecting every boundary
// with its window and checking the OnConsumed contract at each of them
// against input (whose first byte is at absolute offset base).
func decodeAll(t testing.TB, d *Decoder, input []byte, base int64) decoded {
	t.Helper()
	var r decoded
	var sinkErr error
	d.OnConsumed(func(p []byte) { r.consumed = append(r.consumed, p...) })
	d.OnBoundary(func(b Boundary, window []byte) error {
		if sinkErr == nil && (b.In-base > int64(len(input)) || !bytes.Equal(r.consumed, input[:b.In-base])) {
			sinkErr = fmt.Errorf("at boundary %+v the sink got %d bytes, want the %d bytes up to In",
				b, len(r.consumed), b.In-base)
		}
		r.cps = append(r.cps, checkpoint{b, bytes.Clone(window)})
		return nil
	})
	r.out, r.err = io.ReadAll(d)
	if sinkErr != nil {
		t.Fatal(sinkErr)
	}
	return r
}

// bitWriter writes a deflate bit stream, least significant bit first.
type bitWriter struct {
	b     []byte
	acc   uint64
	nbits uint
}

func (w *bitWriter) bits(v uint64, n uint) {
	w.acc |= v << w.nbits
	w.nbits += n
	for w.nbits >= 8 {
		w.b = append(w.b, byte(w.acc))
		w.acc >>= 8
		w.nbits -= 8
	}
}

// code writes a Huffman code of length n, most significant bit first.
func (w *bitWriter) code(c uint32, n uint) {
	w.bits(uint64(bits.Reverse32(c)>>(32-n)), n)
}

// align pads to a byte boundary with zero bits.
func (w *bitWriter) align() {
	if w.nbits > 0 {
		w.bits(0, 8-w.nbits)
	}
}

func (w *bitWriter) bytes() []byte {
	w.align()
	return w.b
}

// stored writes a stored block holding data.
func (w *bitWriter) stored(final bool, data []byte) {
	w.bits(b2u(final), 1)
	w.bits(0, 2)
	w.align()
	w.b = binary.LittleEndian.AppendUint16(w.b, uint16(len(data)))
	w.b = binary.LittleEndian.AppendUint16(w.b, ^uint16(len(data)))
	w.b = append(w.b, data...)
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// fixedLitCode returns the fixed Huffman code of a literal/length symbol.
func fixedLitCode(sym int) (uint32, uint) {
	switch {
	case sym < 144:
		return uint32(0x30 + sym), 8
	case sym < 256:
		return uint32(0x190 + sym - 144), 9
	case sym < 280:
		return uint32(sym - 256), 7
	default:
		return uint32(0xc0 + sym - 280), 8
	}
}

// fixedSym writes a symbol of the fixed literal/length code.
func (w *bitWriter) fixedSym(sym int) {
	c, n := fixedLitCode(sym)
	w.code(c, n)
}

// fixedLiterals writes a fixed-Huffman block of literals.
func (w *bitWriter) fixedLiterals(final bool, data []byte) {
	w.bits(b2u(final), 1)
	w.bits(1, 2)
	for _, c := range data {
		w.fixedSym(int(c))
	}
	w.fixedSym(256)
}

// fixedMatch writes a match of length 3..10 (symbols 257..264) and a
// distance 1..4 (codes 0..3) in a fixed block.
func (w *bitWriter) fixedMatch(length, dist int) {
	w.fixedSym(254 + length)
	w.code(uint32(dist-1), 5)
}

// canonical returns the canonical codes for lens.
func canonical(lens []uint8) []uint32 {
	var count [16]int
	for _, l := range lens {
		count[l]++
	}
	count[0] = 0
	var next [16]uint32
	code := uint32(0)
	for l := 1; l < 16; l++ {
		code = (code + uint32(count[l-1])) << 1
		next[l] = code
	}
	codes := make([]uint32, len(lens))
	for s, l := range lens {
		if l != 0 {
			codes[s] = next[l]
			next[l]++
		}
	}
	return codes
}

// dynamicHeader writes the header of a dynamic block that sends every code
// length literally (symbols 0..15, no repeats) with the code-length code
// clLens. It returns the canonical literal/length and distance codes.
func (w *bitWriter) dynamicHeader(final bool, litLens, distLens []uint8, clLens [19]uint8) ([]uint32, []uint32) {
	w.bits(b2u(final), 1)
	w.bits(2, 2)
	w.bits(uint64(len(litLens)-257), 5)
	w.bits(uint64(len(distLens)-1), 5)
	w.bits(19-4, 4)
	for _, s := range clOrder {
		w.bits(uint64(clLens[s]), 3)
	}
	clCodes := canonical(clLens[:])
	for _, l := range append(append([]uint8{}, litLens...), distLens...) {
		w.code(clCodes[l], uint(clLens[l]))
	}
	return canonical(litLens), canonical(distLens)
}

// flatCL is a complete code-length code: symbols 0..15 with 4 bits each,
// the repeat symbols 16..18 unused.
var flatCL = [19]uint8{4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0}

// gzipHeader returns a gzip member header with the given optional fields.
func gzipHeader(extra []byte, name, comment string, hcrc bool, flagsOr byte) []byte {
	h := []byte{0x1f, 0x8b, 8, flagsOr, 1, 2, 3, 4, 0, 3}
	if extra != nil {
		h[3] |= flagExtra
		h = binary.LittleEndian.AppendUint16(h, uint16(len(extra)))
		h = append(h, extra...)
	}
	if name != "" {
		h[3] |= flagName
		h = append(append(h, name...), 0)
	}
	if comment != "" {
		h[3] |= flagComment
		h = append(append(h, comment...), 0)
	}
	if hcrc {
		h[3] |= flagHCRC
		h = binary.LittleEndian.AppendUint16(h, uint16(crc32.ChecksumIEEE(h)))
	}
	return h
}

// gzipMember wraps a raw deflate stream of data into a gzip member.
func gzipMember(header, deflated, data []byte) []byte {
	m := append(append([]byte{}, header...), deflated...)
	m = binary.LittleEndian.AppendUint32(m, crc32.ChecksumIEEE(data))
	return binary.LittleEndian.AppendUint32(m, uint32(len(data)))
}

// stdGunzip decodes a multi-member gzip stream with compress/gzip.
func stdGunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// stdInflate decodes a raw deflate stream with compress/flate.
func stdInflate(b []byte) ([]byte, error) {
	return io.ReadAll(flate.NewReader(bytes.NewReader(b)))
}

// errKind names the sentinel err wraps, for messages.
func errKind(err error) string {
	for _, s := range []error{ErrCorrupt, ErrChecksum, ErrTruncated, ErrCheckpoint, io.EOF} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	if err == nil {
		return "nil"
	}
	return "other: " + err.Error()
}
