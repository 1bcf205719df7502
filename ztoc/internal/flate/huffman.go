package flate

import (
	"errors"
	"math/bits"
)

// Decoding tables.
//
// A table is indexed by the next bits of the input, least significant bit
// first (deflate packs Huffman codes most significant bit first, so the
// index of a code is its bit-reversed value). The first level has 1<<primary
// entries; codes longer than primary bits go through a pointer entry to a
// second-level subtable indexed by the bits after the first primary ones.
//
// Every entry is one uint32:
//
//	bits  0-4   total: bits to consume = code length + extra bits
//	bits  8-11  code length (pointer entries: subtable index bits;
//	            invalid entries: bits needed to know the code is invalid)
//	bit   12    end of block
//	bit   13    pointer to a subtable
//	bit   14    invalid symbol or unassigned code
//	bits 16-30  value: literal byte, length base, distance base, code-length
//	            symbol, or subtable offset
//	bit   31    literal (so that int32(e) < 0 tests it)
//
// The extra bits of a length or distance are the total-codeLen bits that
// follow the code: value + (bits & (1<<total-1)) >> codeLen.
const (
	entryTotalMask = 0x1f
	entryLenShift  = 8
	flagEOB        = 1 << 12
	flagSub        = 1 << 13
	flagInvalid    = 1 << 14
	valueShift     = 16
	flagLiteral    = 1 << 31

	maxCodeLen = 15

	litPrimaryBits  = 11
	litMask         = 1<<litPrimaryBits - 1
	litTableSize    = 1 << 12 // primary 2048 + at most 912 subtable entries (57 x 16)
	distPrimaryBits = 8
	distMask        = 1<<distPrimaryBits - 1
	distTableSize   = 1 << 10 // primary 256 + at most 416 subtable entries
	clPrimaryBits   = 7       // code-length codes are at most 7 bits: no subtables
	clTableSize     = 1 << clPrimaryBits

	numLitSyms  = 288 // including the invalid 286 and 287 of the fixed code
	numDistSyms = 32  // including the invalid 30 and 31 of the fixed code
	numCLSyms   = 19
	eobSym      = 256
	maxLitCodes = 286
	maxDistCode = 30
)

var (
	errOversubscribed = errors.New("over-subscribed")
	errIncomplete     = errors.New("incomplete")
	errTableOverflow  = errors.New("subtables overflow the table") // cannot happen for valid codes
)

// Per-symbol entry templates: value and flags, with the number of extra bits
// in the total field. buildTable adds the code length.
var (
	litSyms  [numLitSyms]uint32
	distSyms [numDistSyms]uint32
	clSyms   [numCLSyms]uint32

	fixedLit  [litTableSize]uint32
	fixedDist [distTableSize]uint32
)

// clOrder is the order in which the code-length code lengths are transmitted
// (RFC 1951 3.2.7).
var clOrder = [numCLSyms]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

func init() {
	for s := 0; s < 256; s++ {
		litSyms[s] = flagLiteral | uint32(s)<<valueShift
	}
	litSyms[eobSym] = flagEOB
	for s := 257; s <= 264; s++ {
		litSyms[s] = uint32(s-254) << valueShift // lengths 3..10, no extra bits
	}
	for s := 265; s <= 284; s++ {
		extra := uint32(s-265)/4 + 1
		base := (4+uint32(s-265)%4)<<extra + 3
		litSyms[s] = base<<valueShift | extra
	}
	litSyms[285] = 258 << valueShift
	litSyms[286] = flagInvalid
	litSyms[287] = flagInvalid

	for c := uint32(0); c < 4; c++ {
		distSyms[c] = (c + 1) << valueShift
	}
	for c := uint32(4); c < maxDistCode; c++ {
		extra := (c - 2) / 2
		base := (2+c&1)<<extra + 1
		distSyms[c] = base<<valueShift | extra
	}
	distSyms[30] = flagInvalid
	distSyms[31] = flagInvalid

	for s := uint32(0); s < 16; s++ {
		clSyms[s] = s << valueShift
	}
	clSyms[16] = 16<<valueShift | 2
	clSyms[17] = 17<<valueShift | 3
	clSyms[18] = 18<<valueShift | 7

	var lens [numLitSyms]uint8
	for s := range lens {
		switch {
		case s < 144:
			lens[s] = 8
		case s < 256:
			lens[s] = 9
		case s < 280:
			lens[s] = 7
		default:
			lens[s] = 8
		}
	}
	if err := buildTable(fixedLit[:], litPrimaryBits, lens[:], litSyms[:]); err != nil {
		panic("flate: fixed literal/length table: " + err.Error())
	}
	var dlens [numDistSyms]uint8
	for s := range dlens {
		dlens[s] = 5
	}
	if err := buildTable(fixedDist[:], distPrimaryBits, dlens[:], distSyms[:]); err != nil {
		panic("flate: fixed distance table: " + err.Error())
	}
}

// buildTable fills table with the decoding table of the canonical Huffman
// code whose code lengths are lens (symbol s has length lens[s], 0 = unused);
// symbol s decodes to the template syms[s]. The code must be complete, with
// the exceptions RFC 1951 and zlib allow: no codes at all, or a single code
// of one bit. Unassigned codes of such a table decode to invalid entries.
func buildTable(table []uint32, primary uint, lens []uint8, syms []uint32) error {
	var count [maxCodeLen + 1]int
	for _, l := range lens {
		count[l]++
	}
	count[0] = 0
	maxLen := 0
	for l := maxCodeLen; l > 0; l-- {
		if count[l] != 0 {
			maxLen = l
			break
		}
	}
	left := 1
	for l := 1; l <= maxCodeLen; l++ {
		left = left<<1 - count[l]
		if left < 0 {
			return errOversubscribed
		}
	}
	pfill := 1 << primary
	if left > 0 {
		if maxLen > 1 {
			return errIncomplete
		}
		inv := flagInvalid | uint32(maxLen)<<entryLenShift
		for i := range table[:pfill] {
			table[i] = inv
		}
		if maxLen == 0 {
			return nil
		}
	}

	// Symbols in canonical order: by code length, then by symbol.
	var start [maxCodeLen + 2]int
	for l := 1; l <= maxCodeLen; l++ {
		start[l+1] = start[l] + count[l]
	}
	var sorted [numLitSyms]uint16
	for s, l := range lens {
		if l != 0 {
			sorted[start[l]] = uint16(s)
			start[l]++
		}
	}

	i, code := 0, 0
	l := 1
	for ; l <= maxLen && l <= int(primary); l++ {
		for n := count[l]; n > 0; n-- {
			e := syms[sorted[i]] + uint32(l)<<entryLenShift + uint32(l)
			for j := int(bits.Reverse16(uint16(code)) >> (16 - l)); j < pfill; j += 1 << l {
				table[j] = e
			}
			i++
			code++
		}
		code <<= 1
	}
	if maxLen <= int(primary) {
		return nil
	}

	// Long codes. Canonical codes sharing their first primary bits are
	// consecutive, so each subtable is built in one go; its size is the depth
	// at which the codes still to come fill the subtree under the prefix.
	var remaining [maxCodeLen + 1]int
	copy(remaining[:], count[:])
	next := pfill
	curPrefix, subBits, subStart := -1, 0, 0
	for ; l <= maxLen; l++ {
		for ; remaining[l] > 0; remaining[l]-- {
			rev := int(bits.Reverse16(uint16(code)) >> (16 - l))
			prefix := rev & (pfill - 1)
			if prefix != curPrefix {
				curPrefix = prefix
				subBits = l - int(primary)
				slots := 1 << subBits
				for {
					slots -= remaining[int(primary)+subBits]
					if slots <= 0 || int(primary)+subBits >= maxLen {
						break
					}
					subBits++
					slots <<= 1
				}
				subStart = next
				next += 1 << subBits
				if next > len(table) {
					return errTableOverflow
				}
				table[prefix] = flagSub | uint32(subStart)<<valueShift | uint32(subBits)<<entryLenShift
			}
			e := syms[sorted[i]] + uint32(l)<<entryLenShift + uint32(l)
			for j := rev >> primary; j < 1<<subBits; j += 1 << (l - int(primary)) {
				table[subStart+j] = e
			}
			i++
			code++
		}
		code <<= 1
	}
	return nil
}
