package zstdchunked

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrFrame is returned by NextFrame for bytes that are not a whole zstd
// frame (RFC 8878 section 3.1).
var ErrFrame = errors.New("zstdchunked: not a zstd frame")

// Magic numbers of RFC 8878.
const (
	frameMagic        = 0xFD2FB528
	skippableMagic    = 0x184D2A50 // the low 4 bits are free
	skippableMask     = 0xFFFFFFF0
	maxBlockSize      = 128 << 10 // Block_Maximum_Size
	skippableHdrSize  = 8
	frameHeaderMaxLen = 4 + 1 + 1 + 4 + 8
)

// Frame is one frame found by NextFrame.
type Frame struct {
	// Length is the frame's length in bytes, header to checksum.
	Length int64
	// Skippable is set for a skippable frame (user data a decoder skips);
	// Data is then its payload.
	Skippable bool
	Data      []byte
	// ContentSize is the frame's declared decompressed size, -1 when the
	// header does not declare it.
	ContentSize int64
	// Blocks is the number of blocks of a zstd frame.
	Blocks int
}

// NextFrame parses the frame at the start of b without decompressing it:
// the header, every block header (type, size, last flag) and the optional
// checksum. It fails with ErrFrame unless b starts with a whole frame.
func NextFrame(b []byte) (Frame, error) {
	bad := func(format string, args ...any) (Frame, error) {
		return Frame{}, fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
	}
	if len(b) < 4 {
		return bad("%d bytes", len(b))
	}
	magic := binary.LittleEndian.Uint32(b)
	if magic&skippableMask == skippableMagic {
		if len(b) < skippableHdrSize {
			return bad("skippable frame header of %d bytes", len(b))
		}
		n := int64(binary.LittleEndian.Uint32(b[4:]))
		if n > int64(len(b))-skippableHdrSize {
			return bad("skippable frame of %d bytes, %d left", n, len(b)-skippableHdrSize)
		}
		return Frame{Length: skippableHdrSize + n, Skippable: true, Data: b[skippableHdrSize : skippableHdrSize+n], ContentSize: 0}, nil
	}
	if magic != frameMagic {
		return bad("magic %#08x", magic)
	}
	if len(b) < 5 {
		return bad("no frame header")
	}
	fhd := b[4]
	fcsFlag := fhd >> 6
	single := fhd&0x20 != 0
	if fhd&0x08 != 0 {
		return bad("reserved bit set in the frame header")
	}
	checksum := fhd&0x04 != 0
	dictLen := [4]int{0, 1, 2, 4}[fhd&3]
	fcsLen := [4]int{0, 2, 4, 8}[fcsFlag]
	if fcsFlag == 0 && single {
		fcsLen = 1
	}
	pos := 5
	if !single {
		pos++ // Window_Descriptor
	}
	pos += dictLen
	if len(b) < pos+fcsLen {
		return bad("frame header of %d bytes, %d present", pos+fcsLen, len(b))
	}
	f := Frame{ContentSize: -1}
	switch fcsLen {
	case 1:
		f.ContentSize = int64(b[pos])
	case 2:
		f.ContentSize = int64(binary.LittleEndian.Uint16(b[pos:])) + 256
	case 4:
		f.ContentSize = int64(binary.LittleEndian.Uint32(b[pos:]))
	case 8:
		v := binary.LittleEndian.Uint64(b[pos:])
		if v > 1<<62 {
			return bad("content size %d", v)
		}
		f.ContentSize = int64(v)
	}
	pos += fcsLen
	for {
		if len(b)-pos < 3 {
			return bad("block header at %d of %d bytes", pos, len(b))
		}
		h := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		pos += 3
		last := h&1 != 0
		size := int(h >> 3)
		switch (h >> 1) & 3 {
		case 0: // Raw
			if size > maxBlockSize {
				return bad("raw block of %d bytes", size)
			}
		case 1: // RLE: one byte repeated size times
			if size > maxBlockSize {
				return bad("RLE block of %d bytes", size)
			}
			size = 1
		case 2: // Compressed
			if size > maxBlockSize {
				return bad("compressed block of %d bytes", size)
			}
			if size == 0 {
				return bad("empty compressed block")
			}
		default:
			return bad("reserved block type")
		}
		if len(b)-pos < size {
			return bad("block of %d bytes at %d, %d left", size, pos, len(b)-pos)
		}
		pos += size
		f.Blocks++
		if last {
			break
		}
	}
	if checksum {
		if len(b)-pos < 4 {
			return bad("no room for the checksum")
		}
		pos += 4
	}
	f.Length = int64(pos)
	return f, nil
}

// CheckFrames checks that b is a whole number of frames (zstd or
// skippable) and returns how many there are.
func CheckFrames(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		f, err := NextFrame(b)
		if err != nil {
			return n, fmt.Errorf("frame %d: %w", n, err)
		}
		b = b[f.Length:]
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: no frame", ErrFrame)
	}
	return n, nil
}
