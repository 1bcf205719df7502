package flate

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// gzip header fields (RFC 1952 2.3).
const (
	gzipID1     = 0x1f
	gzipID2     = 0x8b
	gzipDeflate = 8

	flagHCRC     = 1 << 1
	flagExtra    = 1 << 2
	flagName     = 1 << 3
	flagComment  = 1 << 4
	flagReserved = 0xe0

	gzipHeaderLen  = 10
	gzipTrailerLen = 8
)

// readMemberHeader reads a gzip member header and reports the MemberStart
// boundary after it. After a member, the end of the input is the clean end
// of the stream.
func (d *Decoder) readMemberHeader() error {
	d.alignAndRewind()
	first := d.members == 0 && !d.resumed
	if d.inEnd-d.inPos < gzipHeaderLen {
		d.readMore(gzipHeaderLen)
	}
	avail := d.inEnd - d.inPos
	if avail == 0 && d.eof && d.rerr == nil {
		if first {
			return fmt.Errorf("flate: empty gzip stream: %w", ErrTruncated)
		}
		d.flushSink(d.inBase + int64(d.inEnd))
		d.st = stDone
		return io.EOF
	}
	h := d.in[d.inPos:d.inEnd]
	if (avail > 0 && h[0] != gzipID1) || (avail > 1 && h[1] != gzipID2) {
		if first {
			return d.corrupt("not a gzip stream (magic %x)", h[:min(avail, 2)])
		}
		return d.corrupt("data after gzip member %d is not a gzip member (starts with %x)", d.members, h[:min(avail, 2)])
	}
	p, err := d.take(gzipHeaderLen, "a gzip header")
	if err != nil {
		return err
	}
	if p[2] != gzipDeflate {
		return d.corrupt("gzip compression method %d (only 8, deflate, exists)", p[2])
	}
	flg := p[3]
	if flg&flagReserved != 0 {
		return d.corrupt("gzip header has reserved flags %#02x set", flg&flagReserved)
	}
	hcrc := crc32.Update(0, crc32.IEEETable, p)
	if flg&flagExtra != 0 {
		p, err := d.take(2, "a gzip header")
		if err != nil {
			return err
		}
		hcrc = crc32.Update(hcrc, crc32.IEEETable, p)
		p, err = d.take(int(binary.LittleEndian.Uint16(p)), "a gzip header extra field")
		if err != nil {
			return err
		}
		hcrc = crc32.Update(hcrc, crc32.IEEETable, p)
	}
	if flg&flagName != 0 {
		if hcrc, err = d.skipString(hcrc, "a gzip header file name"); err != nil {
			return err
		}
	}
	if flg&flagComment != 0 {
		if hcrc, err = d.skipString(hcrc, "a gzip header comment"); err != nil {
			return err
		}
	}
	if flg&flagHCRC != 0 {
		p, err := d.take(2, "a gzip header CRC")
		if err != nil {
			return err
		}
		if got := binary.LittleEndian.Uint16(p); got != uint16(hcrc) {
			return fmt.Errorf("flate: gzip header CRC %#04x, computed %#04x, at input offset %d: %w",
				got, uint16(hcrc), d.InputOffset(), ErrChecksum)
		}
	}

	d.st = stBlock
	d.checkSum = true
	d.crc = 0
	d.crcPos = d.w
	d.histLo = d.w
	d.memberStart = d.outBase + int64(d.w)
	return d.boundary(Boundary{In: d.InputOffset(), Out: d.memberStart, MemberStart: true})
}

// skipString consumes a zero-terminated header field, adding it to the
// header CRC.
func (d *Decoder) skipString(hcrc uint32, what string) (uint32, error) {
	for {
		if d.inPos == d.inEnd {
			d.readMore(1)
			if d.inPos == d.inEnd {
				return hcrc, d.truncErr(what)
			}
		}
		p := d.in[d.inPos:d.inEnd]
		if i := bytes.IndexByte(p, 0); i >= 0 {
			d.inPos += i + 1
			return crc32.Update(hcrc, crc32.IEEETable, p[:i+1]), nil
		}
		d.inPos = d.inEnd
		hcrc = crc32.Update(hcrc, crc32.IEEETable, p)
	}
}

// readTrailer reads a member's CRC-32 and ISIZE and checks them if the whole
// member was decoded here.
func (d *Decoder) readTrailer() error {
	d.alignAndRewind()
	p, err := d.take(gzipTrailerLen, "a gzip trailer")
	if err != nil {
		return err
	}
	if d.checkSum {
		d.updateCRC()
		wantCRC, wantSize := binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])
		size := uint32(d.outBase + int64(d.w) - d.memberStart)
		if d.crc != wantCRC {
			return fmt.Errorf("flate: gzip member %d: CRC-32 %#08x, trailer says %#08x: %w",
				d.members, d.crc, wantCRC, ErrChecksum)
		}
		if size != wantSize {
			return fmt.Errorf("flate: gzip member %d: size %d mod 2^32, trailer says %d: %w",
				d.members, size, wantSize, ErrChecksum)
		}
	}
	d.members++
	d.st = stHeader
	return nil
}
