package flate

import "encoding/binary"

// patternDist[d] is the smallest multiple of d that is at least 8: the
// distance at which a match of distance d < 8 repeats in whole words.
var patternDist = [8]int{0, 8, 8, 9, 8, 10, 12, 14}

// inflate decodes the current Huffman block until its end-of-block code (then
// reports the boundary) or until the output buffer is full.
func (d *Decoder) inflate() error {
	for {
		if d.w > d.outLim {
			return nil
		}
		if d.inEnd-d.inPos < 8 && !d.eof {
			d.readMore(8)
		}
		if d.inEnd-d.inPos >= 8 && d.inflateFast() {
			continue
		}
		done, err := d.inflateSlow()
		if err != nil {
			return err
		}
		if done {
			return d.endBlock()
		}
	}
}

// inflateFast is the hot loop. It runs while 8 input bytes can be loaded and
// one more match fits in the output, and returns true when one of those
// limits stopped it. It leaves everything unusual to inflateSlow (end of
// block, invalid codes, distances too far back) and returns false before
// consuming such a symbol.
//
// After each refill bitbuf holds at least 56 valid bits: enough for a length
// code with its extra bits (15+5) and a distance code with its extra bits
// (15+13).
func (d *Decoder) inflateFast() bool {
	in := d.in[:d.inEnd]
	out := d.out
	lt, dt := d.lt, d.dt
	bb, nb, ip, w := d.bitbuf, d.nbits, d.inPos, d.w
	lo, outLim := d.histLo, d.outLim
	limits := true
	for ip <= len(in)-8 && w <= outLim {
		bb |= binary.LittleEndian.Uint64(in[ip:]) << (nb & 63)
		ip += int((63 - nb) >> 3)
		nb |= 56

		e := lt[bb&litMask]
		if e&flagSub != 0 {
			e = lt[(e>>valueShift+uint32(bb>>litPrimaryBits)&(1<<(e>>entryLenShift&15)-1))&(litTableSize-1)]
		}
		if int32(e) < 0 {
			n := e & entryTotalMask
			bb >>= n
			nb -= uint(n)
			out[w] = byte(e >> valueShift)
			w++
			// A second literal fits in the 41 bits left.
			e = lt[bb&litMask]
			if e&flagSub != 0 {
				e = lt[(e>>valueShift+uint32(bb>>litPrimaryBits)&(1<<(e>>entryLenShift&15)-1))&(litTableSize-1)]
			}
			if int32(e) >= 0 {
				continue
			}
			n = e & entryTotalMask
			bb >>= n
			nb -= uint(n)
			out[w] = byte(e >> valueShift)
			w++
			// A third one if its code happens to fit in the bits left (a
			// code whose length is at most nb was looked up with valid bits).
			e = lt[bb&litMask]
			if e&flagSub != 0 {
				e = lt[(e>>valueShift+uint32(bb>>litPrimaryBits)&(1<<(e>>entryLenShift&15)-1))&(litTableSize-1)]
			}
			if n = e & entryTotalMask; int32(e) < 0 && uint(n) <= nb {
				bb >>= n
				nb -= uint(n)
				out[w] = byte(e >> valueShift)
				w++
			}
			continue
		}
		if e&(flagEOB|flagInvalid) != 0 {
			limits = false
			break
		}
		n := e & entryTotalMask
		length := int(e>>valueShift) + int((bb&(1<<n-1))>>(e>>entryLenShift&15))
		bb2 := bb >> n
		nb2 := nb - uint(n)

		e = dt[bb2&distMask]
		if e&flagSub != 0 {
			e = dt[(e>>valueShift+uint32(bb2>>distPrimaryBits)&(1<<(e>>entryLenShift&15)-1))&(distTableSize-1)]
		}
		if e&flagInvalid != 0 {
			limits = false
			break
		}
		n = e & entryTotalMask
		dist := int(e>>valueShift) + int((bb2&(1<<n-1))>>(e>>entryLenShift&15))
		if dist > w-lo {
			limits = false
			break
		}
		bb = bb2 >> n
		nb = nb2 - uint(n)

		// Copy in 8- or 16-byte words; the last word may write up to 15
		// bytes past the match, into free space (outLim leaves room).
		src := w - dist
		switch {
		case dist >= 16:
			for i := 0; i < length; i += 16 {
				v0 := binary.LittleEndian.Uint64(out[src+i:])
				v1 := binary.LittleEndian.Uint64(out[src+i+8:])
				binary.LittleEndian.PutUint64(out[w+i:], v0)
				binary.LittleEndian.PutUint64(out[w+i+8:], v1)
			}
		case dist >= 8:
			for i := 0; i < length; i += 8 {
				binary.LittleEndian.PutUint64(out[w+i:], binary.LittleEndian.Uint64(out[src+i:]))
			}
		default:
			// Overlapping short distance: the output repeats with period
			// dist. Write 8 bytes one by one, then copy words from
			// patternDist[dist] (a multiple of dist, at least 8) back.
			o := out[w : w+8]
			s := out[src : src+8]
			for i := range o {
				o[i] = s[i]
			}
			back := patternDist[dist&7]
			for i := 8; i < length; i += 8 {
				binary.LittleEndian.PutUint64(out[w+i:], binary.LittleEndian.Uint64(out[w+i-back:]))
			}
		}
		w += length
	}
	d.bitbuf, d.nbits, d.inPos, d.w = bb, nb, ip, w
	return limits
}

// inflateSlow decodes one symbol, reading input byte by byte, so that the
// last symbols before the end of the input decode without reading past it.
// It reports whether the symbol was the end of the block.
func (d *Decoder) inflateSlow() (bool, error) {
	d.fillBest(maxCodeLen + 5)
	e := d.lt[d.bitbuf&litMask]
	if e&flagSub != 0 {
		e = d.lt[(e>>valueShift+uint32(d.bitbuf>>litPrimaryBits)&(1<<(e>>entryLenShift&15)-1))&(litTableSize-1)]
	}
	if e&flagInvalid != 0 {
		return false, d.invalidCode(e, "literal/length")
	}
	n := uint(e & entryTotalMask)
	if d.nbits < n {
		return false, d.truncErr("a literal/length code")
	}
	if int32(e) < 0 {
		d.consume(n)
		d.out[d.w] = byte(e >> valueShift)
		d.w++
		return false, nil
	}
	if e&flagEOB != 0 {
		d.consume(n)
		return true, nil
	}
	length := int(e>>valueShift) + int((d.bitbuf&(1<<n-1))>>(e>>entryLenShift&15))
	d.consume(n)

	d.fillBest(maxCodeLen + 13)
	e = d.dt[d.bitbuf&distMask]
	if e&flagSub != 0 {
		e = d.dt[(e>>valueShift+uint32(d.bitbuf>>distPrimaryBits)&(1<<(e>>entryLenShift&15)-1))&(distTableSize-1)]
	}
	if e&flagInvalid != 0 {
		return false, d.invalidCode(e, "distance")
	}
	n = uint(e & entryTotalMask)
	if d.nbits < n {
		return false, d.truncErr("a distance code")
	}
	dist := int(e>>valueShift) + int((d.bitbuf&(1<<n-1))>>(e>>entryLenShift&15))
	if dist > d.w-d.histLo {
		return false, d.corrupt("distance %d too far back (%d bytes of history)", dist, d.w-d.histLo)
	}
	d.consume(n)
	src := d.w - dist
	for i := 0; i < length; i++ {
		d.out[d.w+i] = d.out[src+i]
	}
	d.w += length
	return false, nil
}
