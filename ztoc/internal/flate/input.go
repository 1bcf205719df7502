package flate

import "io"

// maxZeroReads bounds how often r may return (0, nil) in a row.
const maxZeroReads = 100

// bitPos returns the absolute bit position of the next unconsumed bit.
func (d *Decoder) bitPos() int64 {
	return (d.inBase+int64(d.inPos))<<3 - int64(d.nbits)
}

// readMore reads from r until at least want bytes are buffered after inPos,
// the buffer is full, or r fails. Bytes already consumed are passed to the
// sink and dropped from the buffer first; the bytes whose bits are still in
// bitbuf stay, so that alignAndRewind can give them back.
func (d *Decoder) readMore(want int) {
	if d.eof {
		return
	}
	d.flushSink(d.inBase + int64(d.inPos) - int64(d.nbits>>3))
	if keep := d.inPos - int((d.nbits+7)>>3); keep > 0 {
		n := copy(d.in, d.in[keep:d.inEnd])
		d.inBase += int64(keep)
		d.inPos -= keep
		d.inEnd = n
	}
	zero := 0
	for d.inEnd-d.inPos < want && d.inEnd < len(d.in) {
		n, err := d.r.Read(d.in[d.inEnd:])
		if n < 0 || n > len(d.in)-d.inEnd {
			d.eof, d.rerr = true, io.ErrShortBuffer
			return
		}
		d.inEnd += n
		if err != nil {
			d.eof = true
			if err != io.EOF {
				d.rerr = err
			}
			return
		}
		if n == 0 {
			if zero++; zero >= maxZeroReads {
				d.eof, d.rerr = true, io.ErrNoProgress
				return
			}
		}
	}
}

// flushSink passes the input up to absolute offset upto to the sink.
func (d *Decoder) flushSink(upto int64) {
	if upto <= d.sunk {
		return
	}
	if d.sink != nil {
		d.sink(d.in[d.sunk-d.inBase : upto-d.inBase])
	}
	d.sunk = upto
}

// fillBest loads whole bytes into bitbuf until it holds at least n bits
// (n <= 56) or the input is exhausted.
func (d *Decoder) fillBest(n uint) {
	for d.nbits < n {
		if d.inPos == d.inEnd {
			d.readMore(1)
			if d.inPos == d.inEnd {
				return
			}
		}
		d.bitbuf |= uint64(d.in[d.inPos]) << d.nbits
		d.inPos++
		d.nbits += 8
	}
}

func (d *Decoder) consume(n uint) {
	d.bitbuf >>= n
	d.nbits -= n
}

// getBits consumes and returns the next n bits (n <= 32).
func (d *Decoder) getBits(n uint, what string) (uint32, error) {
	d.fillBest(n)
	if d.nbits < n {
		return 0, d.truncErr(what)
	}
	v := uint32(d.bitbuf & (1<<n - 1))
	d.consume(n)
	return v, nil
}

// alignAndRewind drops the bits up to the next byte boundary and gives the
// whole bytes still in bitbuf back to the input buffer, switching to byte
// reads (stored blocks, gzip trailers and headers).
func (d *Decoder) alignAndRewind() {
	d.consume(d.nbits & 7)
	d.inPos -= int(d.nbits >> 3)
	d.bitbuf, d.nbits = 0, 0
}

// take returns the next n bytes (n <= len(in)) and consumes them. Bits must
// have been rewound (nbits == 0).
func (d *Decoder) take(n int, what string) ([]byte, error) {
	if d.inEnd-d.inPos < n {
		d.readMore(n)
		if d.inEnd-d.inPos < n {
			return nil, d.truncErr(what)
		}
	}
	p := d.in[d.inPos : d.inPos+n]
	d.inPos += n
	return p, nil
}
