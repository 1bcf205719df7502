// Package gzipbomb writes hostile gzip streams for tests: valid DEFLATE
// that inflates without bound from a few bytes, streamed, never held in
// memory. ztoc's and the layer store's limits are tested against it.
package gzipbomb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// bitWriter writes a DEFLATE bit stream (least significant bit first).
type bitWriter struct {
	buf   []byte
	acc   uint64
	nbits uint
}

// bits writes the n low bits of v.
func (w *bitWriter) bits(v uint64, n uint) {
	w.acc |= v << w.nbits
	w.nbits += n
	for w.nbits >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.nbits -= 8
	}
}

// code writes a Huffman code of n bits, most significant bit first.
func (w *bitWriter) code(c uint64, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.bits(c>>uint(i)&1, 1)
	}
}

// flush pads the last byte with zero bits.
func (w *bitWriter) flush() {
	if w.nbits > 0 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc, w.nbits = 0, 0
	}
}

// OneBlock returns a gzip member holding ONE dynamic deflate block that
// inflates to 1 + 258*matches zero bytes, and that length. The block's
// codes are: length 258 (symbol 285) and distance 1 one bit each, literal 0
// and end-of-block two bits each; so after a literal 0 every match is two
// zero bits and the body is zero bytes, which are streamed, not stored:
// 5 GB of output take about 5 MB of input and no memory.
func OneBlock(matches int64) (io.Reader, int64) {
	if matches%4 != 2 {
		panic("matches must be 2 mod 4 so that the body is byte aligned")
	}
	w := &bitWriter{}
	w.bits(1, 1)  // BFINAL
	w.bits(2, 2)  // dynamic Huffman
	w.bits(29, 5) // HLIT: 286 literal/length codes
	w.bits(0, 5)  // HDIST: 1 distance code
	w.bits(15, 4) // HCLEN: 19 code length codes
	clen := [19]uint64{}
	order := []int{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
	lens := map[int]uint64{18: 1, 1: 2, 2: 2} // canonical: 18 -> 0, 1 -> 10, 2 -> 11
	for i, sym := range order {
		clen[i] = lens[sym]
		w.bits(clen[i], 3)
	}
	cl := map[int][2]uint64{18: {0, 1}, 1: {2, 2}, 2: {3, 2}}
	put := func(sym int) { w.code(cl[sym][0], uint(cl[sym][1])) }
	zeros := func(n int) { // n in [11, 138]
		put(18)
		w.bits(uint64(n-11), 7)
	}
	put(2)          // literal 0: length 2
	zeros(138)      // literals 1..138
	zeros(117)      // 139..255
	put(2)          // 256 (end of block): length 2
	zeros(28)       // 257..284
	put(1)          // 285 (length 258): length 1
	put(1)          // distance code 0 (distance 1): length 1
	w.code(0b10, 2) // literal 0 (codes: 285 -> 0, 0 -> 10, 256 -> 11)
	w.bits(0, 2*2)  // two matches
	if w.nbits != 0 {
		panic(fmt.Sprintf("bomb header is not byte aligned (%d bits left)", w.nbits))
	}
	head := append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, w.buf...)
	body := (matches - 2) / 4
	t := &bitWriter{}
	t.code(0b11, 2) // end of block
	t.flush()
	out := 1 + 258*matches
	crc := crc32.NewIEEE()
	zero := make([]byte, 1<<20)
	for left := out; left > 0; left -= int64(len(zero)) {
		crc.Write(zero[:min(left, int64(len(zero)))])
	}
	tail := binary.LittleEndian.AppendUint32(t.buf, crc.Sum32())
	tail = binary.LittleEndian.AppendUint32(tail, uint32(out))
	return io.MultiReader(bytes.NewReader(head), io.LimitReader(zeroReader{}, body), bytes.NewReader(tail)), out
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
