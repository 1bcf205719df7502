package flate

import (
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// WindowSize is the size of the deflate history: the most output a
// back-reference can reach, and the most a checkpoint needs.
const WindowSize = 32768

const (
	maxMatch  = 258
	inBufSize = 256 << 10
	// outBufSize is WindowSize of history plus 1 MiB of fresh output plus
	// room for one match copied 16 bytes at a time.
	outBufSize = WindowSize + 1<<20 + maxMatch + 32
)

// Boundary describes a point in the compressed stream where decoding can be
// resumed: the end of a DEFLATE block, or (gzip only) the start of a member's
// deflate data, just after its header.
type Boundary struct {
	// In is the compressed offset of the first full byte after the boundary,
	// counted from the start of the input stream (for a resumed decoder:
	// absolute, from the start of the blob). If the boundary lies at
	// absolute bit position P, In = ceil(P/8).
	In int64
	// Bits is the number (0..7) of high bits of byte In-1 that belong to the
	// next block: (8 - P%8) % 8. 0 means the boundary is byte aligned.
	Bits uint8
	// Out is the uncompressed offset at the boundary, counted across all
	// gzip members.
	Out int64
	// Final reports that the block that just ended had BFINAL set: the
	// deflate stream (gzip member) ends here. A resume cannot start at a
	// final boundary (a trailer or nothing follows, not a block).
	Final bool
	// MemberStart reports a boundary just after a gzip member header, before
	// the member's first block (zlib reports the same point; SOCI's
	// checkpoint 0 is the one of the first member, In = header length,
	// Out = 0). It is never Final, and resuming there works like at any
	// other non-final boundary.
	MemberStart bool
}

type state uint8

const (
	stPrime   state = iota // resumed: drop the bits of byte In-1 that belong to the previous block
	stHeader               // a gzip member header (or, after a member, clean EOF)
	stBlock                // a block header
	stStored               // inside a stored block
	stHuffman              // inside a Huffman-coded block
	stTrailer              // a gzip member trailer
	stDone                 // end of a raw stream
)

// Decoder decompresses a raw deflate or gzip stream. It is an io.Reader and
// an io.WriterTo. Make one with NewGzip, NewRaw, ResumeGzip or ResumeRaw; the
// zero value is not usable. A Decoder is not safe for concurrent use. Its
// buffers (about 1.3 MiB) go back to a pool once the stream ended or failed
// and all output was read.
type Decoder struct {
	r    io.Reader
	gzip bool

	// Input: in[:inEnd] holds bytes read from r; in[0] is at absolute
	// offset inBase. bitbuf holds nbits not yet consumed bits, the next
	// one lowest; bits above nbits are zero or the real bits of in[inPos:].
	in     []byte
	inPos  int
	inEnd  int
	inBase int64
	bitbuf uint64
	nbits  uint
	eof    bool  // r returned an error; nothing more will be read
	rerr   error // that error when it is not io.EOF
	sink   func([]byte)
	sunk   int64 // absolute offset up to which input was given to sink

	// Output: out[rpos:w] is decoded but not yet delivered; out[:w] is
	// history; out[0] is at absolute output offset outBase. histLo is the
	// lowest index a back-reference may reach (start of the current member,
	// or of the resume window).
	out     []byte
	w       int
	rpos    int
	outLim  int // the Huffman decoders run while w <= outLim
	outBase int64
	histLo  int

	// Current gzip member.
	resumed     bool // started at a checkpoint, inside a member
	checkSum    bool // CRC-32 and ISIZE are checked (member decoded from its start)
	crc         uint32
	crcPos      int   // out[crcPos:w] is not yet in crc
	memberStart int64 // absolute output offset of the member's first byte
	members     int   // members whose trailer was read

	// Current block.
	st        state
	final     bool
	stored    int // bytes of the stored block still to copy
	lt        *[litTableSize]uint32
	dt        *[distTableSize]uint32
	primeDrop uint

	onBoundary func(Boundary, []byte) error
	err        error // sticky; io.EOF at the end of the stream

	dynLit  [litTableSize]uint32
	dynDist [distTableSize]uint32
	clTable [clTableSize]uint32
	lens    [maxLitCodes + maxDistCode]uint8
}

var (
	inPool  = sync.Pool{New: func() any { b := make([]byte, inBufSize); return &b }}
	outPool = sync.Pool{New: func() any { b := make([]byte, outBufSize); return &b }}
)

func newDecoder(r io.Reader, gzip bool) *Decoder {
	d := &Decoder{r: r, gzip: gzip}
	d.in = *inPool.Get().(*[]byte)
	d.out = *outPool.Get().(*[]byte)
	d.outLim = len(d.out) - maxMatch - 32
	return d
}

// release returns the buffers to their pools once the decoder reached a
// terminal state and delivered all its output.
func (d *Decoder) release() {
	if d.in == nil {
		return
	}
	in, out := d.in, d.out
	d.inBase = d.InputOffset()
	d.in, d.out = nil, nil
	d.inPos, d.inEnd, d.bitbuf, d.nbits = 0, 0, 0, 0
	d.outBase += int64(d.w)
	d.w, d.rpos, d.crcPos, d.histLo = 0, 0, 0, 0
	inPool.Put(&in)
	outPool.Put(&out)
}

// NewGzip returns a Decoder for a gzip stream of one or more members
// (RFC 1952). Every member's header (FEXTRA, FNAME, FCOMMENT and FHCRC are
// parsed; the header CRC is checked), CRC-32 and ISIZE are checked; members
// follow each other until the end of r. Empty input, or anything after a
// member that is not another member, is an error.
func NewGzip(r io.Reader) *Decoder {
	d := newDecoder(r, true)
	d.st = stHeader
	return d
}

// NewRaw returns a Decoder for one raw deflate stream (RFC 1951, no header or
// trailer). It ends at the stream's final block; input after it is not
// consumed (see InputOffset).
func NewRaw(r io.Reader) *Decoder {
	d := newDecoder(r, false)
	d.st = stBlock
	return d
}

// ResumeGzip returns a Decoder that continues a gzip stream at a checkpoint:
// a non-final Boundary (in, bits, out) reported by an earlier decode.
//
// r yields the compressed bytes from absolute offset in-1 when bits > 0 (the
// bits high bits of that byte belong to the next block), else from in.
// window is the output before the checkpoint: its last min(out, 32768) bytes
// are used (so both an exact window and SOCI's zero-padded 32 KiB one work).
// The member the checkpoint is in cannot have its CRC-32 and ISIZE checked
// and its trailer is skipped; members that start later are fully checked.
// Boundary offsets are absolute: In from the start of the blob, Out from the
// start of the uncompressed stream.
//
// A span is typically fed only its own compressed bytes: output is produced
// as far as they reach, and the missing input is reported (ErrTruncated) only
// when more output is asked for.
func ResumeGzip(r io.Reader, in int64, bits uint8, out int64, window []byte) (*Decoder, error) {
	return resume(r, in, bits, out, window, true)
}

// ResumeRaw is ResumeGzip for a raw deflate stream: it ends at the stream's
// final block.
func ResumeRaw(r io.Reader, in int64, bits uint8, out int64, window []byte) (*Decoder, error) {
	return resume(r, in, bits, out, window, false)
}

func resume(r io.Reader, in int64, bits uint8, out int64, window []byte, gzip bool) (*Decoder, error) {
	switch {
	case bits > 7:
		return nil, fmt.Errorf("resume with %d bits: %w", bits, ErrCheckpoint)
	case in < 0 || (bits > 0 && in < 1):
		return nil, fmt.Errorf("resume at input offset %d with %d bits: %w", in, bits, ErrCheckpoint)
	case out < 0:
		return nil, fmt.Errorf("resume at output offset %d: %w", out, ErrCheckpoint)
	}
	if len(window) > WindowSize {
		window = window[len(window)-WindowSize:]
	}
	if int64(len(window)) > out {
		window = window[len(window)-int(out):]
	}
	d := newDecoder(r, gzip)
	n := copy(d.out, window)
	d.w, d.rpos, d.crcPos = n, n, n
	d.outBase = out - int64(n)
	d.resumed = true
	d.st = stBlock
	d.inBase = in
	if bits > 0 {
		d.inBase = in - 1
		d.primeDrop = 8 - uint(bits)
		d.st = stPrime
	}
	d.sunk = d.inBase
	return d, nil
}

// OnBoundary registers fn, called synchronously at every Boundary, before
// any output after it is returned by Read or WriteTo. window holds the last
// min(Out, 32768) bytes of output before the boundary; it is valid only
// during the call. A non-nil error from fn stops decoding: the output before
// the boundary is still delivered, then Read returns the error, wrapped.
// fn must not call the Decoder's methods. Register it before the first Read.
func (d *Decoder) OnBoundary(fn func(b Boundary, window []byte) error) {
	d.onBoundary = fn
}

// OnConsumed registers sink, which receives every compressed input byte
// exactly once, in order, once the decoder has consumed it: when fn of
// OnBoundary is called for a Boundary, sink has received exactly the bytes
// from the start of the input up to In (byte In-1 is shared with the next
// block when Bits > 0). At the end of a gzip stream sink has received all
// input; at the end of a raw stream, everything up to the end of the final
// block. p is valid only during the call; sink must not call the Decoder's
// methods. Register it before the first Read.
func (d *Decoder) OnConsumed(sink func(p []byte)) {
	d.sink = sink
}

// InputOffset returns the absolute offset just past the last compressed byte
// the decoder consumed, even partially. After a raw stream ended, it is the
// end of the deflate data.
func (d *Decoder) InputOffset() int64 {
	return d.inBase + int64(d.inPos) - int64(d.nbits>>3)
}

// Read reads decompressed bytes into p. It returns io.EOF at the end of the
// stream; errors are sticky and returned once all output before them has
// been read.
func (d *Decoder) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if d.rpos == d.w {
		if d.err == nil {
			d.decode()
		}
		if d.rpos == d.w {
			d.release()
			return 0, d.err
		}
	}
	n := copy(p, d.out[d.rpos:d.w])
	d.rpos += n
	return n, nil
}

// WriteTo writes all remaining decompressed output to w, straight from the
// decoder's buffer. It returns nil at the end of the stream.
func (d *Decoder) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if d.rpos < d.w {
			n, err := w.Write(d.out[d.rpos:d.w])
			if n < 0 || n > d.w-d.rpos {
				return total, fmt.Errorf("flate: writer returned invalid count %d", n)
			}
			d.rpos += n
			total += int64(n)
			if err == nil && d.rpos < d.w {
				err = io.ErrShortWrite
			}
			if err != nil {
				return total, err
			}
		}
		if d.err != nil {
			d.release()
			if d.err == io.EOF {
				return total, nil
			}
			return total, d.err
		}
		d.decode()
	}
}

// decode runs the state machine until output is pending or the stream ended
// or failed. All previous output has been delivered (rpos == w).
func (d *Decoder) decode() {
	if d.w > d.outLim {
		d.slide()
	}
	for d.err == nil && d.rpos == d.w {
		d.err = d.advance()
	}
}

// slide moves the last WindowSize bytes of history to the front of out.
func (d *Decoder) slide() {
	d.updateCRC()
	keep := min(d.w, WindowSize)
	shift := d.w - keep
	copy(d.out, d.out[shift:d.w])
	d.w, d.rpos, d.crcPos = keep, keep, keep
	d.outBase += int64(shift)
	d.histLo = max(0, d.histLo-shift)
}

func (d *Decoder) updateCRC() {
	if d.checkSum {
		d.crc = crc32.Update(d.crc, crc32.IEEETable, d.out[d.crcPos:d.w])
	}
	d.crcPos = d.w
}

// advance makes one step of the state machine.
func (d *Decoder) advance() error {
	switch d.st {
	case stPrime:
		d.fillBest(8)
		if d.nbits < 8 {
			return d.truncErr("the first byte of a resumed span")
		}
		d.consume(d.primeDrop)
		d.st = stBlock
		return nil
	case stHeader:
		return d.readMemberHeader()
	case stBlock:
		return d.readBlockHeader()
	case stStored:
		return d.copyStored()
	case stHuffman:
		return d.inflate()
	case stTrailer:
		return d.readTrailer()
	default:
		return io.EOF
	}
}

// endBlock reports the boundary at the end of the current block.
func (d *Decoder) endBlock() error {
	pos := d.bitPos()
	b := Boundary{
		In:    (pos + 7) >> 3,
		Bits:  uint8((8 - pos&7) & 7),
		Out:   d.outBase + int64(d.w),
		Final: d.final,
	}
	switch {
	case !d.final:
		d.st = stBlock
	case d.gzip:
		d.st = stTrailer
	default:
		d.st = stDone
	}
	return d.boundary(b)
}

func (d *Decoder) boundary(b Boundary) error {
	d.flushSink(b.In)
	if d.onBoundary == nil {
		return nil
	}
	lo := max(0, d.w-WindowSize)
	if err := d.onBoundary(b, d.out[lo:d.w:d.w]); err != nil {
		return fmt.Errorf("flate: boundary callback at input offset %d: %w", b.In, err)
	}
	return nil
}

func (d *Decoder) corrupt(format string, args ...any) error {
	return fmt.Errorf("flate: %s at input offset %d: %w", fmt.Sprintf(format, args...), d.InputOffset(), ErrCorrupt)
}

// truncErr reports that the input ended (or failed) inside what.
func (d *Decoder) truncErr(what string) error {
	if d.rerr != nil {
		return fmt.Errorf("flate: reading %s at input offset %d: %w", what, d.inBase+int64(d.inEnd), d.rerr)
	}
	return fmt.Errorf("flate: input ends in %s at offset %d: %w", what, d.inBase+int64(d.inEnd), ErrTruncated)
}
