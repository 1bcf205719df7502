package flate

import "encoding/binary"

// readBlockHeader reads BFINAL and BTYPE and what follows up to the block's
// data: LEN/NLEN of a stored block, the code definitions of a dynamic one.
func (d *Decoder) readBlockHeader() error {
	v, err := d.getBits(3, "a block header")
	if err != nil {
		return err
	}
	d.final = v&1 != 0
	switch v >> 1 {
	case 0:
		d.alignAndRewind()
		p, err := d.take(4, "a stored block header")
		if err != nil {
			return err
		}
		n, nn := binary.LittleEndian.Uint16(p), binary.LittleEndian.Uint16(p[2:])
		if n != ^nn {
			return d.corrupt("stored block length %#04x does not match its complement %#04x", n, nn)
		}
		d.stored = int(n)
		d.st = stStored
	case 1:
		d.lt, d.dt = &fixedLit, &fixedDist
		d.st = stHuffman
	case 2:
		if err := d.readDynamic(); err != nil {
			return err
		}
		d.lt, d.dt = &d.dynLit, &d.dynDist
		d.st = stHuffman
	default:
		return d.corrupt("reserved block type 3")
	}
	return nil
}

// readDynamic reads the code definitions of a dynamic Huffman block
// (RFC 1951 3.2.7) and builds the block's tables.
func (d *Decoder) readDynamic() error {
	v, err := d.getBits(14, "a dynamic block header")
	if err != nil {
		return err
	}
	nlit := int(v&31) + 257
	ndist := int(v>>5&31) + 1
	nclen := int(v>>10) + 4
	if nlit > maxLitCodes {
		return d.corrupt("%d literal/length codes (at most %d)", nlit, maxLitCodes)
	}
	if ndist > maxDistCode {
		return d.corrupt("%d distance codes (at most %d)", ndist, maxDistCode)
	}
	var clLens [numCLSyms]uint8
	for i := 0; i < nclen; i++ {
		l, err := d.getBits(3, "code length code lengths")
		if err != nil {
			return err
		}
		clLens[clOrder[i]] = uint8(l)
	}
	if err := buildTable(d.clTable[:], clPrimaryBits, clLens[:], clSyms[:]); err != nil {
		return d.corrupt("code length code is %v", err)
	}

	n := nlit + ndist
	lens := d.lens[:n]
	for i := 0; i < n; {
		d.fillBest(clPrimaryBits + 7)
		e := d.clTable[d.bitbuf&(clTableSize-1)]
		if e&flagInvalid != 0 {
			return d.invalidCode(e, "code length")
		}
		total := uint(e & entryTotalMask)
		if d.nbits < total {
			return d.truncErr("code lengths")
		}
		sym := uint8(e >> valueShift)
		extra := int((d.bitbuf & (1<<total - 1)) >> (e >> entryLenShift & 15))
		d.consume(total)
		if sym < 16 {
			lens[i] = sym
			i++
			continue
		}
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return d.corrupt("code length repeat with no previous length")
			}
			rep, val = 3+extra, lens[i-1]
		case 17:
			rep = 3 + extra
		default:
			rep = 11 + extra
		}
		if i+rep > n {
			return d.corrupt("code length repeat runs %d past the %d lengths", i+rep-n, n)
		}
		for end := i + rep; i < end; i++ {
			lens[i] = val
		}
	}
	if lens[eobSym] == 0 {
		return d.corrupt("literal/length code has no end-of-block code")
	}
	if err := buildTable(d.dynLit[:], litPrimaryBits, lens[:nlit], litSyms[:]); err != nil {
		return d.corrupt("literal/length code is %v", err)
	}
	if err := buildTable(d.dynDist[:], distPrimaryBits, lens[nlit:], distSyms[:]); err != nil {
		return d.corrupt("distance code is %v", err)
	}
	return nil
}

// invalidCode reports an invalid table entry: corrupt input if the bits that
// make it invalid are all there, else truncated input.
func (d *Decoder) invalidCode(e uint32, what string) error {
	if d.nbits < uint(e>>entryLenShift&15) {
		return d.truncErr(what + " code")
	}
	return d.corrupt("invalid %s code", what)
}

// copyStored copies stored-block bytes to the output while there is room.
func (d *Decoder) copyStored() error {
	for d.stored > 0 {
		space := len(d.out) - d.w
		if space == 0 {
			return nil
		}
		if d.inPos == d.inEnd {
			d.readMore(1)
			if d.inPos == d.inEnd {
				return d.truncErr("a stored block")
			}
		}
		n := min(d.stored, d.inEnd-d.inPos, space)
		copy(d.out[d.w:], d.in[d.inPos:d.inPos+n])
		d.w += n
		d.inPos += n
		d.stored -= n
	}
	return d.endBlock()
}
